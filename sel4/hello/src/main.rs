//! The smallest seL4 root task of the project: it proves that the kernel built by
//! `cargo xtask` boots, that the generated bindings speak its ABI, and that a user-level
//! task can find the VT-d registers in the device memory the kernel hands over.
//!
//! It prints through `seL4_DebugPutChar`, reads bootinfo, creates a notification from
//! untyped memory, mints a badged copy, signals and waits on it, then ends QEMU through
//! the `isa-debug-exit` device (I/O port 0xf4) with the root task's I/O port capability.
//! Output follows the project's image convention: `PASS <name>` or `FAIL <name>: <why>`
//! per check, then `<N> passed, <M> failed`.
#![no_std]
#![no_main]

use core::fmt::Write;

use sel4_sys_gen::{
    cap_data, cap_type, init, nb_recv, set_ipc_buffer, signal, wait, BootInfo, Cap, CapRights,
    DebugConsole, ObjectType, Word,
};

/// QEMU's `isa-debug-exit` device, as configured on the command line
/// (`-device isa-debug-exit,iobase=0xf4,iosize=4`). Writing `v` ends QEMU with status
/// `(v << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Written on success: QEMU exits with status 1.
const EXIT_SUCCESS: u8 = 0;
/// Written on failure: QEMU exits with status 3.
const EXIT_FAILURE: u8 = 1;

/// Physical address of the VT-d remapping unit's registers on QEMU q35
/// (`-device intel-iommu`).
const VTD_REGISTERS: Word = 0xfed9_0000;

/// Size of the root task's stack (the kernel gives the root task none).
const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

#[no_mangle]
static mut ROOT_STACK: Stack = Stack([0; STACK_SIZE]);

// The kernel starts the root task at its ELF entry with the bootinfo pointer in rdi and
// no stack: point rsp at the top of ROOT_STACK (16-byte aligned, as the SysV ABI wants
// before a call) and enter Rust with rdi untouched.
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    lea rsp, [rip + ROOT_STACK + {size}]",
    "    xor ebp, ebp",
    "    call {main}",
    "    ud2",
    size = const STACK_SIZE,
    main = sym root_main,
);

macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(DebugConsole, $($arg)*);
    }};
}

/// Counts the checks that ran.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn check(&mut self, name: &str, result: Result<(), &str>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                say!("PASS {name}");
            }
            Err(why) => {
                self.failed += 1;
                say!("FAIL {name}: {why}");
            }
        }
    }
}

extern "C" fn root_main(bootinfo: *const BootInfo) -> ! {
    say!("sel4-hello: root task running, bootinfo at {bootinfo:p}");
    // SAFETY: the kernel passes the address of the bootinfo frame it mapped read-only
    // into the root task's VSpace, where it stays for the task's life.
    let bi = unsafe { &*bootinfo };
    // SAFETY: bootinfo names the IPC buffer the kernel set up for this (only) thread,
    // mapped read-write for the task's life.
    unsafe { set_ipc_buffer(bi.ipc_buffer) };

    let mut tally = Tally::default();
    tally.check("sel4-boot", Ok(()));
    tally.check("sel4-bootinfo", bootinfo_report(bi));
    tally.check("sel4-notification", notification_round_trip(bi));

    say!("{} passed, {} failed", tally.passed, tally.failed);
    exit(if tally.failed == 0 {
        EXIT_SUCCESS
    } else {
        EXIT_FAILURE
    })
}

/// Prints the untyped memory bootinfo lists and the device untyped covering the VT-d
/// registers.
fn bootinfo_report(bi: &BootInfo) -> Result<(), &'static str> {
    let untyped = bi.untyped;
    let (first, end) = (untyped.start, untyped.end);
    let list = bi.untypeds();
    let devices = list.iter().filter(|d| d.is_device()).count();
    say!(
        "bootinfo: {} untypeds in slots {first}..{end} ({devices} device, {} RAM), \
         root CNode 2^{} slots, empty slots {}..{}",
        list.len(),
        list.len() - devices,
        bi.init_thread_cnode_size_bits,
        { bi.empty.start },
        { bi.empty.end },
    );
    if list.is_empty() {
        return Err("no untyped memory in bootinfo");
    }
    match list
        .iter()
        .enumerate()
        .find(|(_, d)| d.is_device() && d.contains(VTD_REGISTERS))
    {
        Some((i, d)) => say!(
            "bootinfo: VT-d registers {VTD_REGISTERS:#x} are in device untyped slot {} \
             (paddr {:#x}, 2^{} bytes)",
            first + i as Word,
            d.paddr(),
            { d.size_bits },
        ),
        None => say!("bootinfo: no device untyped covers {VTD_REGISTERS:#x}"),
    }
    Ok(())
}

/// Retypes a notification out of RAM untyped, mints a badged copy, signals through the
/// copy and waits on the original: exercises Untyped Retype and CNode Mint (both carry an
/// extra cap and, for Mint, message registers beyond the first four in the IPC buffer),
/// Send and Recv.
fn notification_round_trip(bi: &BootInfo) -> Result<(), &'static str> {
    const BADGE: Word = 0x5a;
    let ram = bi
        .untypeds()
        .iter()
        .position(|d| !d.is_device() && d.size_bits >= 12)
        .ok_or("no RAM untyped")?;
    let untyped: Cap<cap_type::Untyped> = Cap::from_cptr(bi.untyped.start + ram as Word);
    let slot = bi.empty.start;
    // The root CNode's guard fills the rest of the word, so a slot is named by its
    // index at full word depth.
    let depth = Word::from(Word::BITS);
    untyped
        .retype(ObjectType::Notification, 0, init::CNODE, 0, 0, slot, 1)
        .map_err(|_| "Untyped Retype failed")?;
    let ntfn: Cap<cap_type::Notification> = Cap::from_cptr(slot);
    init::CNODE
        .mint(
            slot + 1,
            depth,
            init::CNODE,
            slot,
            depth,
            CapRights::ALL,
            cap_data::badge(BADGE),
        )
        .map_err(|_| "CNode Mint failed")?;
    let badged: Cap<cap_type::Notification> = Cap::from_cptr(slot + 1);

    // Nothing signalled yet: a poll finds nothing.
    if nb_recv(ntfn.cptr()).badge != 0 {
        return Err("fresh notification was already signalled");
    }
    signal(badged);
    let got = wait(ntfn);
    say!("notification: signalled through badge {BADGE:#x}, woke with {got:#x}");
    if got == BADGE {
        Ok(())
    } else {
        Err("wrong badge")
    }
}

/// Ends QEMU through `isa-debug-exit`. Without that device the write has no effect, so
/// the task then suspends itself.
fn exit(code: u8) -> ! {
    if let Err(e) = init::IO_PORT.out8(DEBUG_EXIT_PORT, code) {
        say!("sel4-hello: I/O port write failed: {e:?}");
    }
    say!("sel4-hello: still running after the exit request (no isa-debug-exit device?)");
    loop {
        let _ = sel4_sys_gen::invoke(
            init::TCB.cptr(),
            sel4_sys_gen::InvocationLabel::TCBSuspend,
            &[],
            &[],
        );
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FAIL sel4-hello: panic: {info}");
    exit(EXIT_FAILURE)
}
