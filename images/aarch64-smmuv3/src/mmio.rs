//! Volatile access to memory-mapped device registers.
//!
//! Accesses are single `LDR`/`STR` instructions with a plain base register
//! (no writeback, no pair), written in assembly so that the compiler cannot
//! merge, split or reorder them, and so that a hypervisor trapping them gets
//! a complete syndrome.

use core::arch::asm;
use core::fmt;

/// A region of device registers, identity-mapped as Device-nGnRE.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mmio {
    base: usize,
    len: usize,
}

impl fmt::Debug for Mmio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mmio(0x{:x}+0x{:x})", self.base, self.len)
    }
}

impl Mmio {
    /// Creates an accessor for `len` bytes of registers at `base`.
    ///
    /// # Safety
    /// `[base, base + len)` must be device registers mapped (identity) as
    /// Device memory for as long as the accessor and its copies are used, and
    /// reads and writes through it must not break memory safety (for example,
    /// by starting DMA into memory the program uses).
    pub const unsafe fn new(base: usize, len: usize) -> Self {
        Self { base, len }
    }

    /// Physical (= virtual) address of the first register.
    pub const fn base(&self) -> usize {
        self.base
    }

    /// Length of the region in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-region of this one, or `None` if it does not fit.
    pub fn subregion(&self, offset: usize, len: usize) -> Option<Mmio> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Mmio {
            base: self.base + offset,
            len,
        })
    }

    /// Address of the register at `offset`; panics on an out-of-range or
    /// misaligned offset, which is a bug in the caller.
    fn addr(&self, offset: usize, size: usize) -> usize {
        assert!(
            offset % size == 0 && offset.checked_add(size).is_some_and(|end| end <= self.len),
            "register access at offset 0x{offset:x} (size {size}) outside {self:?}"
        );
        self.base + offset
    }

    /// Reads an 8-bit register.
    pub fn read8(&self, offset: usize) -> u8 {
        let addr = self.addr(offset, 1);
        let v: u32;
        // SAFETY: `addr` is inside the register region (checked above) that
        // the constructor's contract guarantees is mapped Device memory.
        unsafe {
            asm!("ldrb {v:w}, [{a}]", v = out(reg) v, a = in(reg) addr, options(nostack, preserves_flags))
        };
        v as u8
    }

    /// Reads a 16-bit register.
    pub fn read16(&self, offset: usize) -> u16 {
        let addr = self.addr(offset, 2);
        let v: u32;
        // SAFETY: as in `read8`; the address is 2-byte aligned.
        unsafe {
            asm!("ldrh {v:w}, [{a}]", v = out(reg) v, a = in(reg) addr, options(nostack, preserves_flags))
        };
        v as u16
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: usize) -> u32 {
        let addr = self.addr(offset, 4);
        let v: u32;
        // SAFETY: as in `read8`; the address is 4-byte aligned.
        unsafe {
            asm!("ldr {v:w}, [{a}]", v = out(reg) v, a = in(reg) addr, options(nostack, preserves_flags))
        };
        v
    }

    /// Reads a 64-bit register.
    pub fn read64(&self, offset: usize) -> u64 {
        let addr = self.addr(offset, 8);
        let v: u64;
        // SAFETY: as in `read8`; the address is 8-byte aligned.
        unsafe {
            asm!("ldr {v}, [{a}]", v = out(reg) v, a = in(reg) addr, options(nostack, preserves_flags))
        };
        v
    }

    /// Writes an 8-bit register.
    pub fn write8(&self, offset: usize, value: u8) {
        let addr = self.addr(offset, 1);
        // SAFETY: as in `read8`.
        unsafe {
            asm!("strb {v:w}, [{a}]", v = in(reg) u32::from(value), a = in(reg) addr, options(nostack, preserves_flags))
        };
    }

    /// Writes a 16-bit register.
    pub fn write16(&self, offset: usize, value: u16) {
        let addr = self.addr(offset, 2);
        // SAFETY: as in `read16`.
        unsafe {
            asm!("strh {v:w}, [{a}]", v = in(reg) u32::from(value), a = in(reg) addr, options(nostack, preserves_flags))
        };
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: usize, value: u32) {
        let addr = self.addr(offset, 4);
        // SAFETY: as in `read32`.
        unsafe {
            asm!("str {v:w}, [{a}]", v = in(reg) value, a = in(reg) addr, options(nostack, preserves_flags))
        };
    }

    /// Writes a 64-bit register.
    pub fn write64(&self, offset: usize, value: u64) {
        let addr = self.addr(offset, 8);
        // SAFETY: as in `read64`.
        unsafe {
            asm!("str {v}, [{a}]", v = in(reg) value, a = in(reg) addr, options(nostack, preserves_flags))
        };
    }
}

/// Orders all earlier memory accesses (including normal-memory writes a
/// device is about to read by DMA) before later ones, system-wide.
pub fn dsb_sy() {
    // SAFETY: a barrier has no effect other than ordering.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}
