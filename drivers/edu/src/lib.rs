//! Driver for QEMU's `edu` educational PCI device (1234:11e8), `no_std`.
//!
//! BAR0 registers used (QEMU `docs/specs/edu.rst`):
//! - 0x00 identification (0xRRrr00ed: major, minor version, 0xed),
//! - 0x04 liveness check (reads back the bitwise inverse of what was written),
//! - 0x80 DMA source, 0x88 DMA destination, 0x90 DMA count,
//! - 0x98 DMA command: bit 0 start/busy, bit 1 direction (1: edu → RAM), bit 2 raise an
//!   interrupt when done (not used: completion is polled).
//!
//! The device's side of a DMA is its internal 4 KiB buffer at device address
//! 0x40000..0x41000; QEMU stops (`hw_error`) on ranges outside it, so they are refused
//! here. QEMU before 8.0 (issue #1254, fixed by "hw: misc: edu: fix 2 off-by-one
//! errors") also stops on a range ending exactly at the buffer's end, so the last byte
//! is never used: a transfer is at most [`MAX_TRANSFER`] bytes. The other side is a bus
//! address: a physical address while the IOMMU lets DMA bypass, an I/O virtual address
//! once it translates. The device masks bus addresses with its `dma_mask` property (28
//! bits by default). A transfer completes on a 100 ms timer, whether or not the IOMMU
//! let it through (a blocked transfer just moves no data).
#![no_std]

use iommu_hwio::mmio::RegisterIo;
use iommu_hwio::poll::{poll_until, PollTimeout};

/// PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x11e8;
/// Device address of the internal DMA buffer.
pub const BUFFER_ADDR: u64 = 0x40000;
/// Size of the internal DMA buffer.
pub const BUFFER_SIZE: u64 = 0x1000;
/// End (exclusive) of the device-side range a transfer may use: one byte short of the
/// buffer end, for QEMU < 8.0.
pub const BUFFER_USABLE_END: u64 = BUFFER_ADDR + BUFFER_SIZE - 1;
/// Longest transfer.
pub const MAX_TRANSFER: u64 = BUFFER_USABLE_END - BUFFER_ADDR;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 1 << 20;
/// Registers the driver touches lie below this offset of BAR0.
pub const REGISTER_BYTES: usize = 0x100;

const REG_IDENT: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
const DMA_START: u64 = 1 << 0;
const DMA_TO_RAM: u64 = 1 << 1;

/// A DMA request the driver did not run, or one that did not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The device-side range is not inside the usable buffer.
    OutsideBuffer {
        /// Device address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Zero-length transfer.
    Empty,
    /// A previous transfer is still running.
    Busy,
    /// The device did not clear the busy bit in time.
    Timeout,
}

impl core::fmt::Display for EduError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutsideBuffer { addr, len } => write!(
                f,
                "edu range {addr:#x}+{len:#x} is outside its usable buffer \
                 {BUFFER_ADDR:#x}..{BUFFER_USABLE_END:#x}"
            ),
            Self::Empty => write!(f, "zero-length DMA"),
            Self::Busy => write!(f, "a DMA transfer is already running"),
            Self::Timeout => write!(f, "DMA did not complete in time"),
        }
    }
}

/// Direction of a transfer, as the device's command register names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// RAM → device buffer: the device reads memory.
    ToDevice,
    /// Device buffer → RAM: the device writes memory.
    FromDevice,
}

/// An edu device behind its BAR0 registers.
#[derive(Debug)]
pub struct Edu<R: RegisterIo> {
    regs: R,
}

impl<R: RegisterIo> Edu<R> {
    /// The driver for the device whose BAR0 registers are `regs`.
    pub fn new(regs: R) -> Self {
        Self { regs }
    }

    /// The identification register.
    pub fn identification(&mut self) -> u32 {
        self.regs.read32(REG_IDENT)
    }

    /// Whether the liveness register reads back the inverse of `value`.
    pub fn liveness_ok(&mut self, value: u32) -> bool {
        self.regs.write32(REG_LIVENESS, value);
        self.regs.read32(REG_LIVENESS) == !value
    }

    /// Whether this looks like an edu: identification ends in 0xed and the liveness
    /// register inverts a value.
    pub fn probe(&mut self) -> bool {
        self.identification() & 0xff == 0xed && self.liveness_ok(0x1234_5678)
    }

    /// The register access it was built with.
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// Whether a DMA transfer is running.
    pub fn dma_busy(&mut self) -> bool {
        self.regs.read64(REG_DMA_CMD) & DMA_START != 0
    }

    fn check_range(edu_addr: u64, len: u64) -> Result<(), EduError> {
        if len == 0 {
            return Err(EduError::Empty);
        }
        let inside = edu_addr >= BUFFER_ADDR
            && edu_addr
                .checked_add(len)
                .is_some_and(|end| end <= BUFFER_USABLE_END);
        if inside {
            Ok(())
        } else {
            Err(EduError::OutsideBuffer {
                addr: edu_addr,
                len,
            })
        }
    }

    /// Starts a transfer of `len` bytes between bus address `bus` and device address
    /// `edu_addr` without waiting for it (for fault floods); see [`Self::transfer`].
    pub fn start(
        &mut self,
        dir: Direction,
        bus: u64,
        edu_addr: u64,
        len: u64,
    ) -> Result<(), EduError> {
        Self::check_range(edu_addr, len)?;
        if self.dma_busy() {
            return Err(EduError::Busy);
        }
        let (src, dst, cmd) = match dir {
            Direction::ToDevice => (bus, edu_addr, 0),
            Direction::FromDevice => (edu_addr, bus, DMA_TO_RAM),
        };
        // The caller made the buffer's contents visible to the device (coherent on
        // x86 and on QEMU); the register writes are ordered after them.
        self.regs.publish_barrier();
        self.regs.write64(REG_DMA_SRC, src);
        self.regs.write64(REG_DMA_DST, dst);
        self.regs.write64(REG_DMA_COUNT, len);
        self.regs.write64(REG_DMA_CMD, cmd | DMA_START);
        Ok(())
    }

    /// Waits until the running transfer is done.
    pub fn wait<T: PollTimeout>(&mut self, timeout: &mut T) -> Result<(), EduError> {
        if poll_until(timeout, || !self.dma_busy()) {
            self.regs.consume_barrier();
            Ok(())
        } else {
            Err(EduError::Timeout)
        }
    }

    /// Runs a transfer and waits for it.
    pub fn transfer<T: PollTimeout>(
        &mut self,
        dir: Direction,
        bus: u64,
        edu_addr: u64,
        len: u64,
        timeout: &mut T,
    ) -> Result<(), EduError> {
        self.start(dir, bus, edu_addr, len)?;
        self.wait(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_hwio::poll::PollBudget;

    /// The registers of an edu whose transfers finish after `busy_polls` reads of the
    /// command register.
    #[derive(Default)]
    struct FakeEdu {
        regs: [u64; 0x20],
        busy_polls: u32,
        writes: [(usize, u64); 8],
        nwrites: usize,
    }

    impl RegisterIo for FakeEdu {
        fn read32(&mut self, offset: usize) -> u32 {
            match offset {
                REG_IDENT => 0x0100_00ed,
                REG_LIVENESS => !(self.regs[offset / 8] as u32),
                _ => self.regs[offset / 8] as u32,
            }
        }
        fn write32(&mut self, offset: usize, value: u32) {
            self.regs[offset / 8] = u64::from(value);
        }
        fn read64(&mut self, offset: usize) -> u64 {
            if offset == REG_DMA_CMD && self.regs[offset / 8] & DMA_START != 0 {
                if self.busy_polls == 0 {
                    self.regs[offset / 8] &= !DMA_START;
                } else {
                    self.busy_polls -= 1;
                }
            }
            self.regs[offset / 8]
        }
        fn write64(&mut self, offset: usize, value: u64) {
            self.regs[offset / 8] = value;
            if self.nwrites < self.writes.len() {
                self.writes[self.nwrites] = (offset, value);
                self.nwrites += 1;
            }
        }
    }

    #[test]
    fn probe_checks_identification_and_liveness() {
        let mut e = Edu::new(FakeEdu::default());
        assert!(e.probe());
        assert_eq!(e.identification(), 0x0100_00ed);
    }

    #[test]
    fn transfers_program_source_destination_count_and_command() {
        let mut e = Edu::new(FakeEdu::default());
        e.transfer(
            Direction::FromDevice,
            0x800_0000,
            BUFFER_ADDR,
            64,
            &mut PollBudget::new(10),
        )
        .unwrap();
        let w = &e.regs.writes[..e.regs.nwrites];
        assert_eq!(
            w,
            [
                (REG_DMA_SRC, BUFFER_ADDR),
                (REG_DMA_DST, 0x800_0000),
                (REG_DMA_COUNT, 64),
                (REG_DMA_CMD, DMA_TO_RAM | DMA_START)
            ]
        );
        e.regs.nwrites = 0;
        e.transfer(
            Direction::ToDevice,
            0x900_0000,
            BUFFER_ADDR + 8,
            8,
            &mut PollBudget::new(10),
        )
        .unwrap();
        assert_eq!(e.regs.writes[0], (REG_DMA_SRC, 0x900_0000));
        assert_eq!(e.regs.writes[1], (REG_DMA_DST, BUFFER_ADDR + 8));
        assert_eq!(e.regs.writes[3], (REG_DMA_CMD, DMA_START));
    }

    #[test]
    fn ranges_outside_the_buffer_are_refused() {
        let mut e = Edu::new(FakeEdu::default());
        let mut t = PollBudget::new(1);
        assert_eq!(
            e.transfer(
                Direction::ToDevice,
                0,
                BUFFER_ADDR,
                MAX_TRANSFER + 1,
                &mut t
            ),
            Err(EduError::OutsideBuffer {
                addr: BUFFER_ADDR,
                len: MAX_TRANSFER + 1
            })
        );
        assert_eq!(
            e.transfer(Direction::ToDevice, 0, BUFFER_ADDR - 1, 1, &mut t),
            Err(EduError::OutsideBuffer {
                addr: BUFFER_ADDR - 1,
                len: 1
            })
        );
        assert_eq!(
            e.transfer(Direction::ToDevice, 0, BUFFER_ADDR, 0, &mut t),
            Err(EduError::Empty)
        );
        assert_eq!(e.regs.nwrites, 0, "nothing was programmed");
        assert!(e
            .transfer(Direction::ToDevice, 0, BUFFER_ADDR, MAX_TRANSFER, &mut t)
            .is_ok());
    }

    #[test]
    fn a_stuck_device_times_out_and_a_busy_one_is_refused() {
        let mut e = Edu::new(FakeEdu {
            busy_polls: 100,
            ..FakeEdu::default()
        });
        assert_eq!(
            e.transfer(
                Direction::ToDevice,
                0,
                BUFFER_ADDR,
                4,
                &mut PollBudget::new(5)
            ),
            Err(EduError::Timeout)
        );
        assert_eq!(
            e.start(Direction::ToDevice, 0, BUFFER_ADDR, 4),
            Err(EduError::Busy)
        );
    }
}
