//! The smallest seL4 root task of the project: it proves that the kernel built by
//! `cargo xtask` boots, that the generated bindings speak its ABI, and that a user-level
//! task can find the VT-d registers in the device memory the kernel hands over.
//!
//! It prints through `seL4_DebugPutChar`, reads bootinfo, creates a notification from
//! untyped memory, mints a badged copy, signals and waits on it, then ends QEMU through
//! the `isa-debug-exit` device (I/O port 0xf4) with the root task's I/O port capability
//! (`sel4_rt::root`).
//! Output follows the project's image convention: `PASS <name>` or `FAIL <name>: <why>`
//! per check, then `<N> passed, <M> failed`.
#![no_std]
#![no_main]

use sel4_rt::root::exit_qemu;
use sel4_rt::sys::{
    cap_data, cap_type, init, nb_recv, set_ipc_buffer, signal, wait, BootInfo, Cap, CapRights,
    ObjectType, Word,
};
use sel4_rt::{say, Tally};

/// Physical address of the VT-d remapping unit's registers on QEMU q35
/// (`-device intel-iommu`).
const VTD_REGISTERS: Word = 0xfed9_0000;

sel4_rt::root_task_entry!(root_main);

extern "C" fn root_main(bootinfo: *const BootInfo) -> ! {
    say!("sel4-hello: root task running, bootinfo at {bootinfo:p}");
    // SAFETY: the kernel passes the address of the bootinfo frame it mapped read-only
    // into the root task's VSpace, where it stays for the task's life.
    let bi = unsafe { &*bootinfo };
    // SAFETY: bootinfo names the IPC buffer the kernel set up for this (only) thread,
    // mapped read-write for the task's life.
    unsafe { set_ipc_buffer(bi.ipc_buffer) };

    let mut tally = Tally::default();
    tally.check::<&str>("sel4-boot", Ok(()));
    tally.check("sel4-bootinfo", bootinfo_report(bi));
    tally.check("sel4-notification", notification_round_trip(bi));

    say!("{} passed, {} failed", tally.passed, tally.failed);
    exit_qemu(tally.failed == 0)
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

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FAIL sel4-hello: panic: {info}");
    exit_qemu(false)
}
