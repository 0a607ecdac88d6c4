//! Data-cache maintenance by virtual address, to the point of coherency.
//!
//! RAM is mapped Normal write-back cacheable, so memory shared with a device
//! that does not snoop the CPU caches needs maintenance:
//! - before a device reads memory the CPU wrote: clean (write dirty lines
//!   back);
//! - around a device writing memory: clean+invalidate before (no dirty line
//!   can later be evicted over the device's data) and after (drop lines that
//!   were speculatively refilled while the device wrote).
//!
//! Clean+invalidate never loses data the CPU wrote, so it is used for both
//! directions.  QEMU's devices and its SMMU access guest memory directly (and
//! the DTB marks them `dma-coherent`), so on QEMU these operations only cost
//! time; they keep the code correct on non-coherent hardware.

use core::arch::asm;

/// Smallest data-cache line size in bytes (`CTR_EL0.DminLine`).
pub fn dcache_line_size() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {v}, ctr_el0", v = out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xf)
}

fn for_each_line(addr: usize, len: usize, mut op: impl FnMut(usize)) {
    if len == 0 {
        return;
    }
    let line = dcache_line_size();
    let mut p = addr & !(line - 1);
    let end = addr.saturating_add(len);
    while p < end {
        op(p);
        p += line;
    }
}

/// Writes dirty cache lines covering `[addr, addr + len)` back to memory.
/// The range must be mapped.
pub fn clean(addr: usize, len: usize) {
    for_each_line(addr, len, |p| {
        // SAFETY: cleaning a line does not change the memory contents the
        // program observes; the range is mapped (caller's contract; an
        // unmapped range faults and is reported, it cannot corrupt memory).
        unsafe { asm!("dc cvac, {p}", p = in(reg) p, options(nostack, preserves_flags)) };
    });
    crate::mmio::dsb_sy();
}

/// Writes back and invalidates cache lines covering `[addr, addr + len)`.
/// The range must be mapped.
pub fn clean_invalidate(addr: usize, len: usize) {
    for_each_line(addr, len, |p| {
        // SAFETY: as in `clean`: the line is written back before it is
        // invalidated, so no data is lost.
        unsafe { asm!("dc civac, {p}", p = in(reg) p, options(nostack, preserves_flags)) };
    });
    crate::mmio::dsb_sy();
}
