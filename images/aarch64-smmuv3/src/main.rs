//! Bare-metal aarch64 test image for QEMU's `virt` machine with an SMMUv3.
//!
//! Boots at EL1, enables an identity map, finds the device tree QEMU placed
//! at the start of RAM, enumerates PCIe through ECAM (assigning bus numbers
//! and BARs), and runs DMA scenarios on QEMU `edu` devices.  Each scenario
//! prints `PASS <name>` or `FAIL <name>: <reason>`; the run ends with
//! `<N> passed, <M> failed` and a semihosting exit whose status QEMU returns:
//!
//! | status | meaning                                          |
//! |--------|--------------------------------------------------|
//! | 0      | every scenario passed                            |
//! | 1      | at least one scenario failed                     |
//! | 2      | setup failed (no usable device tree, ...) or panic |
//! | 3      | unexpected exception                             |
//!
//! `-append` words (the device tree's `/chosen/bootargs`) that check this:
//! `inject=fail` adds a failing scenario, `inject=panic` panics and
//! `inject=exception` reads an unmapped guard page before the scenarios run.

#![no_std]
#![no_main]

extern crate alloc;

use aarch64_smmuv3_image::{
    console, edu, harness, mmu, pci, println, scenarios, semihosting, time,
};

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use aarch64_smmuv3_image::fdt::Fdt;
use aarch64_smmuv3_image::frames::{FrameAllocator, PhysRange};
use aarch64_smmuv3_image::harness::{Context, EduDevice, SmmuInfo, Tally};
use aarch64_smmuv3_image::mmio::Mmio;
use aarch64_smmuv3_image::mmu::{AddressSpace, ImageLayout, MemType};
use aarch64_smmuv3_image::platform::{PciSpace, Platform, UartSource};

/// Every scenario passed.
const EXIT_PASS: u32 = 0;
/// At least one scenario failed.
const EXIT_FAIL: u32 = 1;
/// Setup failed or the image panicked.
const EXIT_SETUP: u32 = 2;

#[no_mangle]
extern "C" fn rust_main(x0: u64, entry_el: u64) -> ! {
    let layout = ImageLayout::get();
    let space = match AddressSpace::enable_for_image(&layout) {
        Ok(space) => space,
        Err(_) => {
            // No heap without the MMU: report without formatting into memory.
            semihosting::write_str(
                "FAIL setup: cannot build the identity map of the image\n0 passed, 1 failed\n",
            );
            semihosting::exit(EXIT_SETUP)
        }
    };
    let status = match setup_and_run(x0, entry_el, &layout, space) {
        Ok(tally) if tally.failed == 0 && tally.passed > 0 => EXIT_PASS,
        Ok(_) => EXIT_FAIL,
        Err(reason) => {
            println!("FAIL setup: {reason}");
            println!("0 passed, 1 failed");
            EXIT_SETUP
        }
    };
    println!("exit status {status}");
    semihosting::exit(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("PANIC: {info}");
    println!("exit status {EXIT_SETUP}");
    semihosting::exit(EXIT_SETUP)
}

/// Where the device tree was found.
struct DtbLocation {
    addr: u64,
    via: &'static str,
}

/// Finds the device tree: the address in `x0` if it holds one (the Linux
/// boot protocol), else the start of RAM, where QEMU places it for an ELF
/// image ("bare-metal" boot, docs/system/arm/virt.rst; hw/arm/boot.c puts
/// it there when it fits below the image's lowest address).  Only the area
/// between the start of RAM and the image is searched: it is mapped
/// read-only and the image never writes it.
fn locate_dtb(x0: u64, layout: &ImageLayout) -> Result<(&'static [u8], DtbLocation), String> {
    let area = layout.ram_base..layout.image_start;
    let mut candidates = Vec::new();
    if x0 != 0 {
        if area.contains(&x0) && x0 % 8 == 0 {
            candidates.push(DtbLocation {
                addr: x0,
                via: "x0",
            });
        } else {
            println!("boot: x0 = 0x{x0:x} is not in the device tree area, ignored");
        }
    }
    candidates.push(DtbLocation {
        addr: layout.ram_base,
        via: "start of RAM",
    });
    let mut errors = String::new();
    for c in candidates {
        let len = (area.end - c.addr) as usize;
        // SAFETY: [c.addr, area.end) lies in the device tree area below the
        // image, mapped read-only for the whole run and written by no one.
        let bytes: &'static [u8] =
            unsafe { core::slice::from_raw_parts(c.addr as usize as *const u8, len) };
        match Fdt::total_size(bytes) {
            Ok(total) if total <= len => return Ok((bytes.get(..total).unwrap_or(bytes), c)),
            Ok(total) => {
                errors += &format!(
                    " {} (0x{:x}): totalsize 0x{total:x} too large;",
                    c.via, c.addr
                )
            }
            Err(e) => errors += &format!(" {} (0x{:x}): {e};", c.via, c.addr),
        }
    }
    Err(format!("no device tree found:{errors}"))
}

/// Maps `r` except the part that overlaps `hole`.
fn map_except(
    space: &mut AddressSpace,
    r: PhysRange,
    hole: PhysRange,
    ty: MemType,
) -> Result<(), mmu::MapError> {
    if hole.end <= r.start || hole.start >= r.end {
        return space.map(r.start, r.end, ty);
    }
    if r.start < hole.start {
        space.map(r.start, hole.start, ty)?;
    }
    if hole.end < r.end {
        space.map(hole.end, r.end, ty)?;
    }
    Ok(())
}

fn setup_and_run(
    x0: u64,
    entry_el: u64,
    layout: &ImageLayout,
    mut space: AddressSpace,
) -> Result<Tally, String> {
    let (dtb, location) = locate_dtb(x0, layout)?;
    let fdt = Fdt::new(dtb).map_err(|e| format!("device tree at 0x{:x}: {e}", location.addr))?;
    let mut platform = Platform::from_fdt(fdt).map_err(|e| format!("{e}"))?;

    // The rest of RAM, read-write.
    let image = PhysRange {
        start: layout.ram_base,
        end: layout.image_end,
    };
    for r in &platform.ram {
        map_except(&mut space, *r, image, MemType::RW).map_err(|e| format!("mapping RAM: {e}"))?;
    }

    if let Some((uart, _)) = platform.uart {
        space
            .map(uart.base, uart.end(), MemType::Device)
            .map_err(|e| format!("mapping the UART: {e}"))?;
        // SAFETY: the PL011's register page was just mapped as Device memory.
        console::use_pl011(unsafe { Mmio::new(uart.base as usize, 0x1000) });
    }
    println!();
    println!("aarch64-smmuv3 test image");
    println!(
        "boot: x0 at entry = 0x{x0:x}; device tree at 0x{:x} ({} bytes, found via {})",
        location.addr,
        dtb.len(),
        location.via
    );
    println!(
        "boot: entered at EL{entry_el}, running at EL1, MMU on (identity map, {}-bit physical addresses), image 0x{:x}..0x{:x}",
        space.pa_bits(),
        layout.image_start,
        layout.image_end
    );
    for r in &platform.ram {
        println!("dtb: memory 0x{:x}..0x{:x}", r.start, r.end);
    }
    match platform.uart {
        Some((uart, source)) => println!(
            "dtb: PL011 UART at {uart} (from {})",
            match source {
                UartSource::StdoutPath => "/chosen/stdout-path",
                UartSource::Compatible => "compatible \"arm,pl011\"",
            }
        ),
        None => println!("dtb: no PL011 UART, console on semihosting"),
    }
    if !platform.bootargs.is_empty() {
        println!("dtb: bootargs \"{}\"", platform.bootargs);
    }

    let smmu = match &platform.smmu {
        Some(node) => {
            space
                .map(node.regs.base, node.regs.end(), MemType::Device)
                .map_err(|e| format!("mapping the SMMU: {e}"))?;
            let irqs: Vec<String> = node
                .interrupts
                .iter()
                .map(|(name, irq)| format!("{name}={}", irq.intid))
                .collect();
            println!(
                "dtb: SMMUv3 at {} interrupts (GIC INTIDs) {} {}",
                node.regs,
                irqs.join(" "),
                if node.dma_coherent {
                    "dma-coherent"
                } else {
                    "not coherent"
                }
            );
            Some(SmmuInfo {
                // SAFETY: the SMMU's register region was just mapped as Device
                // memory; this accessor only reads it (the SMMU scenarios
                // program the SMMU through the `smmuv3` driver, one at a time).
                regs: unsafe { Mmio::new(node.regs.base as usize, node.regs.size as usize) },
                base: node.regs.base,
                size: node.regs.size,
                page_size: node.regs.size / 2,
                eventq_irq: node.interrupt("eventq"),
                priq_irq: node.interrupt("priq"),
                cmdq_sync_irq: node.interrupt("cmdq-sync"),
                gerror_irq: node.interrupt("gerror"),
                dma_coherent: node.dma_coherent,
            })
        }
        None => {
            println!("dtb: no SMMUv3 (start QEMU with -M virt,iommu=smmuv3)");
            None
        }
    };

    let mut host = platform
        .pci
        .take()
        .ok_or_else(|| String::from("no pci-host-ecam-generic node in the device tree"))?;
    space
        .map(host.ecam.base, host.ecam.end(), MemType::Device)
        .map_err(|e| format!("mapping the ECAM: {e}"))?;
    println!(
        "dtb: PCIe ECAM at {} buses {:02x}..={:02x}",
        host.ecam, host.bus_start, host.bus_end
    );
    let mut usable = Vec::new();
    for w in &host.windows {
        let kind = match w.space {
            PciSpace::Io => "io",
            PciSpace::Mem32 => "mem32",
            PciSpace::Mem64 => "mem64",
        };
        let pref = if w.prefetchable { " prefetchable" } else { "" };
        let mut note = "";
        let mut keep = true;
        if w.space != PciSpace::Io {
            if let Err(e) = space.map(w.cpu_base, w.cpu_base + w.size, MemType::Device) {
                println!("dtb: PCIe window at 0x{:x} not usable: {e}", w.cpu_base);
                keep = false;
            }
        } else {
            note = " (I/O BARs are not assigned)";
        }
        println!(
            "dtb: PCIe {kind}{pref} window: CPU {} = bus 0x{:x}{note}",
            w.cpu_region(),
            w.pci_base
        );
        if keep {
            usable.push(*w);
        }
    }
    host.windows = usable;
    for m in &host.iommu_map {
        println!(
            "dtb: iommu-map: requester IDs 0x{:04x}..0x{:04x} -> IOMMU phandle 0x{:x} stream IDs 0x{:x}..",
            m.rid_base,
            u64::from(m.rid_base) + u64::from(m.length),
            m.iommu,
            m.sid_base
        );
    }

    // Free RAM: everything but the device tree area, the image and the
    // memory reservation block's entries.
    let mut reserved = platform.reserved.clone();
    reserved.push(image);
    reserved.push(PhysRange {
        start: location.addr,
        end: location.addr + dtb.len() as u64,
    });
    // SAFETY: RAM outside the reserved ranges was mapped read-write above and
    // nothing else uses it.
    let mut frames = unsafe { FrameAllocator::new(&platform.ram, &reserved) };
    let free: u64 = frames.free_ranges().iter().map(PhysRange::len).sum();
    println!(
        "boot: {} MiB of RAM for DMA buffers and tables, {} page-table pages used",
        free >> 20,
        space.tables_used()
    );

    let clock =
        time::Clock::new().ok_or_else(|| String::from("CNTFRQ_EL0 is 0: no time source"))?;

    let inject = platform
        .bootargs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("inject="))
        .collect::<Vec<_>>();

    // SAFETY: the ECAM region was mapped as Device memory above.
    let ecam_regs = unsafe { Mmio::new(host.ecam.base as usize, host.ecam.size as usize) };
    let ecam = pci::Ecam::new(ecam_regs, host.bus_start, host.bus_end);
    let iommu_phandle = platform.smmu.as_ref().and_then(|s| s.phandle);
    let topology = pci::enumerate(&ecam, &host, iommu_phandle);
    topology.print();

    let mut edus = Vec::new();
    for f in &topology.functions {
        if f.vendor_id != edu::VENDOR_ID || f.device_id != edu::DEVICE_ID {
            continue;
        }
        let Some(bar0) = f.bar(0).filter(|b| b.kind != pci::BarKind::Io) else {
            println!("edu {}: BAR0 is not a memory BAR", f.bdf);
            continue;
        };
        let Some(cpu) = bar0.cpu_addr else {
            println!("edu {}: BAR0 not assigned", f.bdf);
            continue;
        };
        // SAFETY: BAR0 was assigned inside a host window that is mapped as
        // Device memory, and memory decoding is enabled.
        let regs = unsafe { Mmio::new(cpu as usize, bar0.size.min(edu::BAR0_SIZE) as usize) };
        let Some(driver) = edu::Edu::new(regs) else {
            println!("edu {}: BAR0 too small (0x{:x})", f.bdf, bar0.size);
            continue;
        };
        edus.push(EduDevice {
            bdf: f.bdf,
            requester_id: f.rid(),
            stream_id: f.stream_id,
            bar0_phys: cpu,
            edu: driver,
        });
    }

    let mut scenarios: Vec<harness::Scenario> = scenarios::ALL.to_vec();
    for what in &inject {
        match *what {
            "fail" => scenarios.push(scenarios::INJECTED_FAILURE),
            "panic" => panic!("panic requested with inject=panic"),
            "exception" => {
                println!(
                    "inject=exception: reading the unmapped guard page at 0x{:x}",
                    layout.stack_guard
                );
                // SAFETY: deliberately faults; the exception handler reports
                // it and ends the run, so the read never returns.
                let v = unsafe { (layout.stack_guard as usize as *const u64).read_volatile() };
                println!("the guard page was readable ({v:#x})");
            }
            other => println!("boot: unknown inject={other} ignored"),
        }
    }

    let mut ctx = Context {
        smmu,
        edus,
        pci: &topology,
        pci_host: &host,
        frames: &mut frames,
        clock,
        fdt,
    };
    println!();
    let tally = harness::run(&mut ctx, &scenarios);
    Ok(tally)
}
