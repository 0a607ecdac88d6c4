//! Driver for QEMU's `edu` educational PCI device (1234:11e8).
//!
//! BAR0 registers used:
//! - 0x00 identification (0xRRrr00ed: major, minor version, 0xed),
//! - 0x04 liveness check (reads back the bitwise inverse of what was written),
//! - 0x80 DMA source, 0x88 DMA destination, 0x90 DMA count,
//! - 0x98 DMA command: bit 0 start/busy, bit 1 direction (1: edu -> RAM),
//!   bit 2 raise an interrupt when done (not used: completion is polled).
//!
//! The device's side of a DMA is its internal 4 KiB buffer at device address
//! 0x40000..0x41000; QEMU aborts (`hw_error`) on ranges outside it, so they
//! are refused here.  QEMU before 8.0 (QEMU issue #1254, fixed by "hw: misc:
//! edu: fix 2 off-by-one errors") also aborts on a range that ends exactly
//! at the end of the buffer, so the last byte is never used: a transfer is at
//! most [`MAX_TRANSFER`] bytes and ends at or before [`BUFFER_USABLE_END`].  The other side is a bus address: a physical address while the
//! IOMMU lets DMA bypass, an I/O virtual address once it translates.  The
//! device masks bus addresses with its `dma_mask` property (28 bits by
//! default), so on Arm, where RAM starts at 1 GiB, QEMU must be given
//! `-device edu,dma_mask=0xffffffffffffffff`.  A transfer completes on a
//! 100 ms timer.

use core::fmt;

use crate::mmio::Mmio;
use crate::time::{Clock, Timeout};

/// PCI vendor ID of the edu device.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID of the edu device.
pub const DEVICE_ID: u16 = 0x11e8;
/// Device address of the internal DMA buffer.
pub const BUFFER_ADDR: u64 = 0x40000;
/// Size of the internal DMA buffer.
pub const BUFFER_SIZE: u64 = 0x1000;
/// End (exclusive) of the device-side range a transfer may use: one byte
/// short of the buffer end, for QEMU < 8.0.
pub const BUFFER_USABLE_END: u64 = BUFFER_ADDR + BUFFER_SIZE - 1;
/// Longest transfer QEMU accepts.
pub const MAX_TRANSFER: u64 = BUFFER_USABLE_END - BUFFER_ADDR;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 1 << 20;
/// Default completion timeout: ten times the device's 100 ms DMA timer.
pub const DMA_TIMEOUT_US: u64 = 1_000_000;

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
    /// The device-side range is not inside the internal buffer.
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
    Timeout(Timeout),
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsideBuffer { addr, len } => write!(
                f,
                "edu range 0x{addr:x}+0x{len:x} is outside its usable buffer 0x{BUFFER_ADDR:x}..0x{BUFFER_USABLE_END:x}"
            ),
            Self::Empty => write!(f, "zero-length DMA"),
            Self::Busy => write!(f, "a DMA transfer is already running"),
            Self::Timeout(t) => write!(f, "DMA did not complete: {t}"),
        }
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
        (regs.len() >= 0x100).then_some(Self { regs })
    }

    /// The BAR0 register region.
    pub fn regs(&self) -> Mmio {
        self.regs
    }

    /// The identification register.
    pub fn identification(&self) -> u32 {
        self.regs.read32(REG_IDENT)
    }

    /// Whether the liveness register inverts `value`.
    pub fn liveness_ok(&self, value: u32) -> bool {
        self.regs.write32(REG_LIVENESS, value);
        self.regs.read32(REG_LIVENESS) == !value
    }

    /// Whether a DMA transfer is running.
    pub fn dma_busy(&self) -> bool {
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

    fn run(
        &self,
        clock: &Clock,
        src: u64,
        dst: u64,
        len: u64,
        cmd: u64,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        if self.dma_busy() {
            return Err(EduError::Busy);
        }
        // Buffers were synchronised for the device by the caller (which ends
        // with a DSB), so the device sees the data once the command is written.
        self.regs.write64(REG_DMA_SRC, src);
        self.regs.write64(REG_DMA_DST, dst);
        self.regs.write64(REG_DMA_COUNT, len);
        self.regs.write64(REG_DMA_CMD, cmd | DMA_START);
        clock
            .poll_until(timeout_us, || (!self.dma_busy()).then_some(()))
            .map_err(EduError::Timeout)
    }

    /// Copies `len` bytes from bus address `src` to the device buffer at
    /// device address `edu_addr`, waiting up to `timeout_us` for completion.
    pub fn dma_to_device(
        &self,
        clock: &Clock,
        src: u64,
        edu_addr: u64,
        len: u64,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        Self::check_range(edu_addr, len)?;
        self.run(clock, src, edu_addr, len, 0, timeout_us)
    }

    /// Copies `len` bytes from the device buffer at device address
    /// `edu_addr` to bus address `dst`, waiting up to `timeout_us` for
    /// completion.
    pub fn dma_from_device(
        &self,
        clock: &Clock,
        edu_addr: u64,
        dst: u64,
        len: u64,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        Self::check_range(edu_addr, len)?;
        self.run(clock, edu_addr, dst, len, DMA_TO_RAM, timeout_us)
    }
}
