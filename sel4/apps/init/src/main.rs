//! init, the root task of the seL4 image.
//!
//! It owns everything the kernel hands over at boot and gives each process of its
//! system description ([`system::SYSTEM`]) exactly what the description lists:
//!
//! 1. finds the machine: PCI functions (through the I/O ports), the ACPI DMAR table
//!    (through firmware memory mapped from device untypeds), the TSC rate (against the
//!    PIT);
//! 2. builds each process with its own CSpace, VSpace and TCB ([`system::build`]),
//!    loading its ELF into fresh frames;
//! 3. serves their reports and faults on one endpoint: a `HELLO` (Call) is answered
//!    with ReplyRecv, a `NOTE` arrives by NBSend, a `DONE` (Call, answered with Reply)
//!    carries the process's pass/fail counts, a fault (the fault badge) fails the
//!    process;
//! 4. prints the closing `<N> passed, <M> failed` line and ends QEMU through
//!    `isa-debug-exit`.
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod objects;
mod pci;
mod system;
mod tsc;
mod vspace;

use alloc::vec::Vec;

use sel4_rt::root::exit_qemu;
use sel4_rt::start::report;
use sel4_rt::sys::{
    cap_type, init, recv, reply, reply_recv, set_ipc_buffer, BootInfo, Cap, MessageInfo,
    ObjectType, Word,
};
use sel4_rt::Bdf;
use sel4_rt::{say, Tally};

use objects::Objects;
use system::{Machine, FAULT_BADGE, SYSTEM};
use vspace::Window;

/// init's window for mapping frames: the second 512 GiB slot of its PML4, which the
/// kernel leaves empty (the image and bootinfo sit in the first).
const WINDOW_BASE: u64 = 0x80_0000_0000;
const WINDOW_PAGES: u64 = 512;

sel4_rt::root_task_entry!(root_main);

extern "C" fn root_main(bootinfo: *const BootInfo) -> ! {
    // SAFETY: the kernel passes the address of the bootinfo frame it mapped read-only
    // into the root task's VSpace, where it stays for the task's life.
    let bi = unsafe { &*bootinfo };
    // SAFETY: bootinfo names the IPC buffer the kernel set up for this (only) thread,
    // mapped read-write for the task's life.
    unsafe { set_ipc_buffer(bi.ipc_buffer) };
    sel4_rt::heap::init();
    say!("init: root task running");
    let mut tally = Tally::default();
    if let Err(why) = run(bi, &mut tally) {
        tally.check("init", Err(why));
    }
    say!("{} passed, {} failed", tally.passed, tally.failed);
    exit_qemu(tally.failed == 0)
}

fn run(bi: &BootInfo, tally: &mut Tally) -> Result<(), alloc::string::String> {
    use alloc::format;
    let mut objects = Objects::new(bi);
    let mut window = Window::new(init::VSPACE, WINDOW_BASE, WINDOW_PAGES);
    say!(
        "init: {} untypeds ({} MiB RAM), {} free slots",
        bi.untypeds().len(),
        objects.ram_bytes() >> 20,
        objects.slots.left()
    );

    let config = pci::Config::new(init::IO_PORT);
    let functions = config
        .enumerate()
        .map_err(|e| format!("PCI enumeration: {e:?}"))?;
    for f in &functions {
        match f.bridge {
            Some((sec, sub)) => say!(
                "init: pci {} {:04x}:{:04x} bridge to buses {sec}..={sub}",
                Bdf(f.bdf),
                f.vendor,
                f.device
            ),
            None => say!(
                "init: pci {} {:04x}:{:04x} BAR0 {:#x}",
                Bdf(f.bdf),
                f.vendor,
                f.device,
                f.bar0
            ),
        }
    }
    let dmar = {
        let mut reader = acpi::PhysReader::new(&mut objects, &mut window);
        match acpi::find_dmar(&mut reader) {
            Ok((pa, bytes)) => {
                say!("init: ACPI DMAR at {pa:#x}, {} bytes", bytes.len());
                bytes
            }
            Err(e) => {
                say!("init: {e}");
                Vec::new()
            }
        }
    };
    let tsc_per_us = tsc::ticks_per_us(init::IO_PORT).map_err(|e| format!("TSC: {e}"))?;
    say!("init: TSC runs at {tsc_per_us} ticks/us");
    let machine = Machine {
        pci: functions,
        config,
        dmar,
        tsc_per_us,
    };

    let endpoint: Cap<cap_type::Endpoint> = objects
        .create(ObjectType::Endpoint)
        .map_err(|e| format!("endpoint: {e}"))?;
    let mut running = Vec::new();
    for (i, spec) in SYSTEM.iter().enumerate() {
        let id = i as Word + 1;
        let p = system::build(&mut objects, &mut window, &machine, endpoint, id, spec)
            .map_err(|e| format!("building {}: {e}", spec.name))?;
        say!(
            "init: started {} (process {id}): own CSpace of 2^{} slots with {} caps, own \
             VSpace with {} image frames and {} paging structures, own TCB {:#x}, \
             priority {}",
            p.name,
            system::CSPACE_BITS,
            p.caps,
            p.image_frames,
            p.space.tables,
            p.tcb.cptr(),
            spec.priority
        );
        running.push(Some(p));
    }
    tally.check::<&str>("init-processes", Ok(()));

    // Serve reports until every process is done (or faulted).
    let mut notes = alloc::vec![0u64; running.len()];
    let mut msg = recv(endpoint.cptr());
    loop {
        let id = (msg.badge & !FAULT_BADGE) as usize;
        let Some(Some(p)) = running.get(id.wrapping_sub(1)) else {
            say!("init: message with unknown badge {:#x}", msg.badge);
            msg = recv(endpoint.cptr());
            continue;
        };
        let name = p.name;
        if msg.badge & FAULT_BADGE != 0 {
            tally.check(
                name,
                Err(format!(
                    "process faulted: fault label {}, registers {:#x?}",
                    msg.info.label(),
                    msg.mrs
                )),
            );
            let _ = p.tcb.suspend();
            running[id - 1] = None;
        } else {
            match msg.info.label() {
                report::HELLO => {
                    say!("init: {name} says hello from its own process (badge {id})");
                    msg = reply_recv(endpoint.cptr(), MessageInfo::new(0, 0, 0, 0), [0; 4]);
                    continue;
                }
                report::NOTE => {
                    notes[id - 1] += 1;
                    say!("init: note from {name} (NBSend): {}", msg.mrs[0]);
                }
                report::DONE => {
                    let (passed, failed) = (msg.mrs[0] as usize, msg.mrs[1] as usize);
                    say!("init: {name} finished: {passed} passed, {failed} failed");
                    tally.passed += passed;
                    tally.failed += failed;
                    let sent = msg.mrs[2];
                    tally.check(
                        "init-ipc",
                        if notes[id - 1] == sent {
                            Ok(())
                        } else {
                            Err(format!(
                                "{name} sent {sent} notes with NBSend, {} arrived",
                                notes[id - 1]
                            ))
                        },
                    );
                    reply(MessageInfo::new(0, 0, 0, 0), [0; 4]);
                    running[id - 1] = None;
                }
                other => say!("init: {name} sent unknown label {other}"),
            }
        }
        if running.iter().all(Option::is_none) {
            return Ok(());
        }
        msg = recv(endpoint.cptr());
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FAIL init: panic: {info}");
    exit_qemu(false)
}
