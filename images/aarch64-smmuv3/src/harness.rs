//! Scenario harness: what a scenario gets, and the runner that prints
//! `PASS <name>` / `FAIL <name>: <reason>` and the closing tally.

use alloc::string::String;
use alloc::vec::Vec;

use crate::edu::Edu;
use crate::fdt::Fdt;
use crate::frames::FrameAllocator;
use crate::mmio::Mmio;
use crate::pci::{Bdf, Topology};
use crate::platform::{Interrupt, PciHost};
use crate::time::Clock;

/// The SMMUv3 as the device tree describes it.  Between scenarios it is
/// disabled (SMMUEN = 0: DMA bypasses translation on QEMU); the SMMU
/// scenarios program it with the `smmuv3` driver (`smmu_rig`).
#[derive(Clone, Debug)]
pub struct SmmuInfo {
    /// All registers: page 0 at offset 0, page 1 at `page_size`.
    pub regs: Mmio,
    /// Physical base address.
    pub base: u64,
    /// Size of the register region.
    pub size: u64,
    /// Size of one register page (the region holds two).
    pub page_size: u64,
    /// Event queue interrupt.
    pub eventq_irq: Option<Interrupt>,
    /// PRI queue interrupt.
    pub priq_irq: Option<Interrupt>,
    /// CMD_SYNC completion interrupt.
    pub cmdq_sync_irq: Option<Interrupt>,
    /// Global error interrupt.
    pub gerror_irq: Option<Interrupt>,
    /// `dma-coherent`: the SMMU's table and queue accesses snoop CPU caches.
    pub dma_coherent: bool,
}

/// One edu device found on the PCIe bus.
#[derive(Clone, Debug)]
pub struct EduDevice {
    /// PCI address.
    pub bdf: Bdf,
    /// Requester ID.
    pub requester_id: u16,
    /// Stream ID at the SMMU (from `iommu-map`), if it is behind one.
    pub stream_id: Option<u32>,
    /// Physical address of BAR0.
    pub bar0_phys: u64,
    /// The driver (BAR0 registers).
    pub edu: Edu,
}

/// Everything a scenario may use.
pub struct Context<'a> {
    /// The SMMUv3, if the machine has one.
    pub smmu: Option<SmmuInfo>,
    /// Every edu device found, in enumeration order.
    pub edus: Vec<EduDevice>,
    /// The enumerated PCIe hierarchy.
    pub pci: &'a Topology,
    /// The PCIe host bridge (ECAM, windows, `iommu-map`).
    pub pci_host: &'a PciHost,
    /// Physical pages (identity-mapped) for DMA buffers and device tables.
    pub frames: &'a mut FrameAllocator,
    /// Time source for timeouts.
    pub clock: Clock,
    /// The device tree QEMU passed.
    pub fdt: Fdt<'a>,
}

/// A scenario's verdict: `Err` carries the reason for `FAIL`.
pub type Verdict = Result<(), String>;

/// A named scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// Name printed after `PASS`/`FAIL`.
    pub name: &'static str,
    /// The scenario.
    pub run: fn(&mut Context<'_>) -> Verdict,
}

/// Tally of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Scenarios that passed.
    pub passed: usize,
    /// Scenarios that failed.
    pub failed: usize,
}

/// Runs `scenarios` in order and prints each verdict and the tally.
pub fn run(ctx: &mut Context<'_>, scenarios: &[Scenario]) -> Tally {
    let mut tally = Tally::default();
    for s in scenarios {
        crate::println!("--- {}", s.name);
        let start = ctx.clock.now();
        let verdict = (s.run)(ctx);
        crate::println!("  ({} ms)", ctx.clock.elapsed_us(start) / 1000);
        match verdict {
            Ok(()) => {
                tally.passed += 1;
                crate::println!("PASS {}", s.name);
            }
            Err(reason) => {
                tally.failed += 1;
                crate::println!("FAIL {}: {reason}", s.name);
            }
        }
    }
    crate::println!("{} passed, {} failed", tally.passed, tally.failed);
    tally
}
