//! QEMU's `edu` device through the project's edu driver (`drivers/edu`), over this
//! image's register access ([`Mmio`]) and clock.
//!
//! On Arm, where RAM starts at 1 GiB, QEMU must be given
//! `-device edu,dma_mask=0xffffffffffffffff`: the device masks bus addresses with its
//! `dma_mask` (28 bits by default). The driver's documentation has the device's
//! registers, buffer limits and the QEMU < 8.0 off-by-one it avoids.

use ::edu::Direction;
use iommu_hwio::mmio::RegisterIo;
use iommu_hwio::poll::Deadline;

pub use ::edu::{EduError, BAR0_SIZE, BUFFER_ADDR, DEVICE_ID, MAX_TRANSFER, VENDOR_ID};

use crate::mmio::Mmio;
use crate::time::Clock;

/// Default completion timeout: ten times the device's 100 ms DMA timer.
pub const DMA_TIMEOUT_US: u64 = 1_000_000;

/// [`Mmio`] as the drivers' register seam.
#[derive(Clone, Copy, Debug)]
pub struct Regs(Mmio);

impl RegisterIo for Regs {
    fn read32(&mut self, offset: usize) -> u32 {
        self.0.read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0.write32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.0.read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.0.write64(offset, value)
    }
}

impl iommu_hwio::poll::Clock for Clock {
    fn now_ns(&mut self) -> u64 {
        let ticks = u128::from(self.now());
        u64::try_from(ticks * 1_000_000_000 / u128::from(self.frequency())).unwrap_or(u64::MAX)
    }
}

/// An edu device behind its BAR0.
#[derive(Clone, Copy, Debug)]
pub struct Edu {
    regs: Mmio,
}

impl Edu {
    /// The driver for the device whose BAR0 registers are `regs`.
    pub fn new(regs: Mmio) -> Option<Self> {
        (regs.len() >= ::edu::REGISTER_BYTES).then_some(Self { regs })
    }

    fn driver(&self) -> ::edu::Edu<Regs> {
        ::edu::Edu::new(Regs(self.regs))
    }

    /// The identification register.
    pub fn identification(&self) -> u32 {
        self.driver().identification()
    }

    /// Whether the liveness register inverts `value`.
    pub fn liveness_ok(&self, value: u32) -> bool {
        self.driver().liveness_ok(value)
    }

    fn transfer(
        &self,
        clock: &Clock,
        dir: Direction,
        bus: u64,
        edu_addr: u64,
        len: u64,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        let mut deadline = Deadline::new(*clock, timeout_us.saturating_mul(1000));
        self.driver()
            .transfer(dir, bus, edu_addr, len, &mut deadline)
    }

    /// Copies `len` bytes from bus address `src` to the device buffer at device address
    /// `edu_addr`, waiting up to `timeout_us` for completion.
    pub fn dma_to_device(
        &self,
        clock: &Clock,
        src: u64,
        edu_addr: u64,
        len: u64,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        self.transfer(clock, Direction::ToDevice, src, edu_addr, len, timeout_us)
    }

    /// Copies `len` bytes from the device buffer at device address `edu_addr` to bus
    /// address `dst`, waiting up to `timeout_us` for completion.
    pub fn dma_from_device(
        &self,
        clock: &Clock,
        edu_addr: u64,
        dst: u64,
        len: u64,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        self.transfer(clock, Direction::FromDevice, dst, edu_addr, len, timeout_us)
    }
}
