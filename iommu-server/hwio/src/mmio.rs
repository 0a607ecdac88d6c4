//! The register access seam: [`RegisterIo`], and volatile [`Mmio`] over a
//! memory-mapped register frame.
//!
//! Drivers are generic over [`RegisterIo`]: bare metal uses [`Mmio`], host tests a
//! recording fake or a register model. Offsets are byte offsets from the start of the
//! device's register frame (for an SMMUv3 both 64KB pages, page 1 registers at
//! `0x1_0000 + offset`; for a VT-d remapping unit the page(s) the DRHD reports).

/// Register access seam: bare metal uses [`Mmio`], host tests a recording fake or a
/// register model.
///
/// Offsets are byte offsets from the start of the device's register frame.
pub trait RegisterIo {
    /// 32-bit register read.
    fn read32(&mut self, offset: usize) -> u32;
    /// 32-bit register write.
    fn write32(&mut self, offset: usize, value: u32);
    /// 64-bit register read.
    fn read64(&mut self, offset: usize) -> u64;
    /// 64-bit register write.
    fn write64(&mut self, offset: usize, value: u64);
    /// Make every earlier CPU write to normal memory (tables, queue entries or
    /// descriptors) visible to the device before any later register write: called before
    /// publishing a producer index or queue tail, or enabling translation.
    ///
    /// On x86 ordinary stores are not reordered with later stores (including uncached
    /// MMIO stores), so a fence suffices for coherent hardware; non-coherent hardware
    /// (VT-d ECAP.C = 0) additionally needs cache flushes, which callers do through
    /// [`DmaMemory::flush`](crate::dma::DmaMemory::flush). [`Mmio`] uses an
    /// outer-shareable store barrier on aarch64.
    fn publish_barrier(&mut self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
    /// Order a register read that reports the device's progress (a producer index) before
    /// later CPU reads of memory the device wrote (queue entries).
    fn consume_barrier(&mut self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// Volatile MMIO access to a memory-mapped register frame of a given length (for
/// example an SMMUv3's 128KB frame of two 64KB pages, or a VT-d remapping unit's 4KB
/// register page).
///
/// Every access is checked to be naturally aligned and inside the frame: offsets come
/// from driver constants or from fields the hardware reports, and a hardware value
/// pointing outside the mapping would be a broken device, so the access stops rather
/// than touch unrelated memory.
#[derive(Debug)]
pub struct Mmio {
    base: *mut u8,
    size: usize,
}

// SAFETY: `Mmio` only holds the address of device registers; moving it to another thread
// does not create aliasing of Rust-managed memory.
unsafe impl Send for Mmio {}

impl Mmio {
    /// Wrap the register frame at `base`, `size` bytes long (for example the `reg`
    /// property of an `arm,smmu-v3` device-tree node, or a DRHD's register base and size
    /// from the ACPI DMAR table), identity-mapped as device (uncached) memory.
    ///
    /// # Safety
    /// `base` must point to the device's registers, mapped as device memory for `size`
    /// bytes for the lifetime of the returned value, and no other code may program the
    /// device.
    pub const unsafe fn new(base: *mut u8, size: usize) -> Self {
        Self { base, size }
    }

    /// The base address.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    fn check(&self, offset: usize, width: usize) {
        // Offsets come from the drivers' constants or from hardware fields (VT-d
        // CAP.FRO, ECAP.IRO); a hardware value pointing outside the mapping would be a
        // broken device, so stop rather than touch unrelated memory.
        assert!(
            offset.is_multiple_of(width) && offset + width <= self.size,
            "register offset {offset:#x} outside the mapped register block"
        );
    }
}

impl RegisterIo for Mmio {
    fn read32(&mut self, offset: usize) -> u32 {
        self.check(offset, 4);
        // SAFETY: `new` guarantees `base..base+size` maps the registers; `check` keeps the
        // 4-byte aligned access inside.
        unsafe { core::ptr::read_volatile(self.base.add(offset) as *const u32) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.check(offset, 4);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.base.add(offset) as *mut u32, value) }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        self.check(offset, 8);
        // SAFETY: as in `read32`; 64-bit registers are 8-byte aligned and both the SMMU
        // (SMMUv3 spec §6.2) and VT-d (VT-d spec §11.4 "Register access") support 64-bit
        // single-copy atomic access to them.
        unsafe { core::ptr::read_volatile(self.base.add(offset) as *const u64) }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.check(offset, 8);
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile(self.base.add(offset) as *mut u64, value) }
    }

    fn publish_barrier(&mut self) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: a data memory barrier has no memory-safety effect; outer-shareable store
        // ordering makes table/queue writes visible to the device before the register
        // write.
        unsafe {
            core::arch::asm!("dmb oshst", options(nostack, preserves_flags))
        };
        #[cfg(not(target_arch = "aarch64"))]
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn consume_barrier(&mut self) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: a data memory barrier has no memory-safety effect; it orders the index
        // read before reads of queue entries the device wrote.
        unsafe {
            core::arch::asm!("dmb oshld", options(nostack, preserves_flags))
        };
        #[cfg(not(target_arch = "aarch64"))]
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SMMUv3-sized frame: two 64KB pages, registers in both.
    #[test]
    fn mmio_accesses_a_two_page_frame() {
        const PAGE1: usize = 0x1_0000;
        let mut frame = std::vec![0u64; 2 * PAGE1 / 8];
        {
            // SAFETY: the buffer is 128KB, aligned, and outlives `m` (this block).
            let mut m = unsafe { Mmio::new(frame.as_mut_ptr() as *mut u8, 2 * PAGE1) };
            m.write32(0x20, 0xd);
            m.write64(0x80, 0x4000_0000_8000_0040);
            m.write32(PAGE1 + 0xac, 0x8000_0003);
            assert_eq!(m.read32(0x20), 0xd);
            assert_eq!(m.read64(0x80), 0x4000_0000_8000_0040);
            assert_eq!(m.read32(0x80 + 4), 0x4000_0000);
            assert_eq!(m.read32(PAGE1 + 0xac), 0x8000_0003);
            assert_eq!(m.read64(2 * PAGE1 - 8), 0);
            m.publish_barrier();
            m.consume_barrier();
        }
        assert_eq!(frame[0x20 / 8] & 0xffff_ffff, 0xd);
        assert_eq!(frame[(PAGE1 + 0xac) / 8] >> 32, 0x8000_0003);
    }

    /// A VT-d-sized frame: one 4KB page.
    #[test]
    fn mmio_accesses_a_one_page_frame() {
        let mut frame = std::vec![0u64; 512];
        {
            // SAFETY: the buffer is 4KB, 8-byte aligned, and outlives `m` (this block).
            let mut m = unsafe { Mmio::new(frame.as_mut_ptr() as *mut u8, 4096) };
            m.write32(0x18, 0x8000_0000);
            m.write64(0x20, 0x1234_5000 | 0x400);
            assert_eq!(m.read32(0x18), 0x8000_0000);
            assert_eq!(m.read64(0x20), 0x1234_5400);
            assert_eq!(m.read32(0x20), 0x1234_5400);
            m.publish_barrier();
        }
        assert_eq!(frame[0x18 / 8] & 0xffff_ffff, 0x8000_0000);
    }

    #[test]
    #[should_panic(expected = "outside the mapped register block")]
    fn mmio_refuses_offsets_outside_the_block() {
        let mut frame = std::vec![0u64; 512];
        // SAFETY: the buffer is 4KB; the access below is refused before touching memory.
        let mut m = unsafe { Mmio::new(frame.as_mut_ptr() as *mut u8, 4096) };
        m.read64(4096);
    }

    #[test]
    #[should_panic(expected = "outside the mapped register block")]
    fn mmio_refuses_misaligned_offsets() {
        let mut frame = std::vec![0u64; 512];
        // SAFETY: the buffer is 4KB; the access below is refused before touching memory.
        let mut m = unsafe { Mmio::new(frame.as_mut_ptr() as *mut u8, 4096) };
        m.read32(0x1e);
    }
}
