//! The VT-d scenario process of the seL4 image.
//!
//! init starts it in its own VSpace and CSpace with exactly: the register frame of each
//! VT-d unit the ACPI DMAR table lists (and the table), the first page of BAR0 of each
//! edu device (init enabled their bus mastering), a pool of DMA memory, the VT-d fault
//! interrupt as a notification, and an endpoint to init. It runs the scenarios of
//! [`scenarios`], printing `PASS <name>` / `FAIL <name>: <why>` and, for every fault
//! record the hardware produced, `RECORD <iommu> <scenario> <record>` (compared with the
//! simulation's VT-d model by `cargo xtask test`), then reports its counts to init.
#![no_std]
#![no_main]

extern crate alloc;

mod pool;
mod scenarios;

use sel4_rt::start::{report, StartInfo, IPC_BUFFER_VADDR, START_MAGIC};
use sel4_rt::sys::{self, call, nb_send, set_ipc_buffer, yield_now, IpcBuffer, MessageInfo, Word};
use sel4_rt::{say, Tally};

// init starts the thread at the ELF entry with rsp at the top of its stack (16-byte
// aligned) and the start-up record's address in rdi; the call makes the stack look as
// the SysV ABI expects at a function's entry.
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    xor ebp, ebp",
    "    call {main}",
    "    ud2",
    main = sym process_main,
);

extern "C" fn process_main(info: *const StartInfo) -> ! {
    // SAFETY: init mapped this thread's IPC buffer read-write at IPC_BUFFER_VADDR for
    // the process's life and configured the TCB with it; the process has one thread.
    unsafe { set_ipc_buffer(IPC_BUFFER_VADDR as *mut IpcBuffer) };
    sel4_rt::heap::init();
    // SAFETY: init maps the start-up record read-only at the address it passes in rdi
    // for the process's life.
    let info = unsafe { &*info };
    if info.magic != START_MAGIC {
        say!("FAIL vtd-scenarios: no start-up record at {info:p}");
        stop();
    }
    let endpoint = info.report_endpoint;
    say!(
        "{}: running as its own process (start-up record at {info:p}, {} device frames, \
         {} KiB DMA memory at {:#x}, TSC {} ticks/us)",
        info.name(),
        info.device_count,
        info.dma.size >> 10,
        info.dma.paddr,
        info.tsc_per_us
    );
    // Call init (it answers with ReplyRecv), then give up the CPU once.
    let _ = call(endpoint, MessageInfo::new(report::HELLO, 0, 0, 0), [0; 4]);
    yield_now();

    let mut tally = Tally::default();
    tally.check("own-cspace", own_cspace());
    scenarios::run(info, &mut tally);

    // init is waiting in Recv whenever this process runs (it has the higher priority),
    // so a non-blocking send reaches it.
    nb_send(
        endpoint,
        MessageInfo::new(report::NOTE, 0, 0, 1),
        [tally.passed as Word, 0, 0, 0],
    );
    let counts = [tally.passed as Word, tally.failed as Word, 1, 0];
    let _ = call(endpoint, MessageInfo::new(report::DONE, 0, 0, 3), counts);
    stop()
}

/// The process holds none of the root task's capabilities: the slot where the root
/// task keeps its I/O port capability is empty here, and the slots past the ones init
/// filled are empty too.
fn own_cspace() -> Result<(), &'static str> {
    let io_port = sys::init::IO_PORT;
    match io_port.in8(0x61) {
        Err(sys::Error::InvalidCapability) | Err(sys::Error::FailedLookup) => {}
        Err(_) => return Err("I/O port read refused, but not for lack of a capability"),
        Ok(_) => return Err("the process can reach the I/O ports"),
    }
    let untyped: sys::Cap<sys::cap_type::Untyped> = sys::Cap::from_cptr(100);
    match untyped.retype(sys::ObjectType::Endpoint, 0, sys::init::CNODE, 0, 0, 200, 1) {
        Ok(()) => Err("the process holds untyped memory"),
        Err(_) => {
            say!(
                "vtd-scenarios: own CSpace: slot {} (the root task's I/O ports) and slot 100 \
                 are empty here",
                io_port.cptr()
            );
            Ok(())
        }
    }
}

/// Nothing left to do: wait for init to end the system.
fn stop() -> ! {
    loop {
        yield_now();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FAIL vtd-scenarios: panic: {info}");
    // A fault reaches init through the fault endpoint, which fails the run.
    // SAFETY: ud2 raises an invalid-opcode exception, nothing else.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}
