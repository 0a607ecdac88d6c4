//! DMA memory seam: where tables and queues come from.
//!
//! An IOMMU reads its tables (SMMUv3 stream tables, context descriptors and page tables;
//! VT-d root, context and PASID tables and page tables) and command or invalidation
//! queues from memory, and writes event, page request and status records. [`DmaMemory`]
//! hands out zeroed, aligned, physically contiguous regions and tells the driver how the
//! CPU reaches them, so the same code runs on the host (heap memory, [`IdentityHeap`])
//! and on bare metal (identity-mapped RAM, where [`IdentityHeap`] also works if the
//! global allocator's memory is visible to the device). [`Words`] accesses such a region
//! as 64-bit words that are never torn.

use core::sync::atomic::{AtomicU64, Ordering};

/// An address as the device sees it (a physical address, or an IPA under SMMU stage 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysAddr(pub u64);

/// Provider of memory the device can read and write.
///
/// # Safety
/// Implementations promise that:
/// - `alloc_zeroed(size, align)` returns the address of `size` bytes aligned to `align`,
///   all zero, physically contiguous, and used by nothing else until passed to `free`;
/// - for every address `pa` inside a live region, `virt(pa)` returns a pointer through
///   which the CPU can read and write that byte, valid until the region is freed;
/// - after `flush(pa, len)` returns, the device observes the CPU's earlier writes to
///   those bytes (a no-op for coherent hardware, for example VT-d ECAP.C = 1; `clflush`
///   otherwise). Drivers that never call `flush` (the SMMUv3 driver, which requires
///   IDR0.COHACC and orders its writes with barriers only) need memory coherent with the
///   device's accesses.
pub unsafe trait DmaMemory {
    /// Allocate `size` zeroed bytes aligned to `align` (both powers of two).
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr>;

    /// Return a region.
    ///
    /// # Safety
    /// `pa`, `size` and `align` must come from one earlier `alloc_zeroed` call, and neither
    /// the CPU nor the device may access the region afterwards.
    unsafe fn free(&mut self, pa: PhysAddr, size: usize, align: usize);

    /// CPU pointer to the byte at `pa`.
    fn virt(&self, pa: PhysAddr) -> *mut u8;

    /// Make CPU writes to `pa..pa+len` visible to a device whose table walks do not
    /// snoop CPU caches (a VT-d remapping unit with ECAP.C = 0, VT-d spec §11.4.3). The
    /// VT-d driver calls it after table and queue updates when ECAP.C = 0. The default
    /// does nothing, which is right for coherent hardware.
    fn flush(&self, pa: PhysAddr, len: usize) {
        let _ = (pa, len);
    }
}

/// [`DmaMemory`] backed by the global allocator with physical address = pointer value.
///
/// Right for host tests and benchmarks, and for bare-metal images that identity-map RAM
/// whose heap the device reaches coherently (QEMU `virt` SMMUv3, COHACC = 1; QEMU's
/// intel-iommu reads guest memory directly, so it needs no cache flushes even though it
/// reports ECAP.C = 0).
#[derive(Debug, Default)]
pub struct IdentityHeap {
    /// Bytes currently allocated (for tests and leak checks).
    pub live_bytes: usize,
    /// Regions currently allocated.
    pub live_regions: usize,
}

impl IdentityHeap {
    /// A new provider.
    pub const fn new() -> Self {
        Self {
            live_bytes: 0,
            live_regions: 0,
        }
    }
}

// SAFETY: regions come from `alloc_zeroed` of the global allocator with the requested
// layout, so they are zeroed, aligned, contiguous in the (identity-mapped) address space
// and exclusively owned until `free`; `virt` is the identity; the default `flush` is a
// no-op, correct for coherent hardware and for QEMU's emulation.
unsafe impl DmaMemory for IdentityHeap {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        if size == 0 {
            return None;
        }
        let layout = core::alloc::Layout::from_size_align(size, align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return None;
        }
        self.live_bytes += size;
        self.live_regions += 1;
        Some(PhysAddr(p as u64))
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize, align: usize) {
        let Ok(layout) = core::alloc::Layout::from_size_align(size, align) else {
            return;
        };
        self.live_bytes -= size;
        self.live_regions -= 1;
        // SAFETY: the caller passes a region from `alloc_zeroed` with this layout.
        unsafe { alloc::alloc::dealloc(pa.0 as *mut u8, layout) }
    }

    fn virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as *mut u8
    }
}

/// A pointer to little-endian 64-bit words shared with the device.
///
/// Every access is a single-copy-atomic 64-bit load or store: the device may read any
/// entry at any time, so a word must never be torn (the SMMUv3's STE/CD update rules and
/// VT-d spec §6.5.3 "Guidance to software for invalidations" rely on 64-bit atomic
/// updates of entries). Indices are bounds-checked.
#[derive(Clone, Copy, Debug)]
pub struct Words {
    ptr: *mut u64,
    len: usize,
}

impl Words {
    /// Words of the region at `pa`, `len` words long.
    ///
    /// # Safety
    /// `pa` must be 8-byte aligned and inside a live region of `mem` at least `len` words
    /// long, and the returned value must not outlive that region.
    pub unsafe fn new<M: DmaMemory + ?Sized>(mem: &M, pa: PhysAddr, len: usize) -> Self {
        Self {
            ptr: mem.virt(pa) as *mut u64,
            len,
        }
    }

    /// Word `i` (panics if `i` is out of bounds).
    #[inline(always)]
    pub fn load(&self, i: usize) -> u64 {
        u64::from_le(self.atomics()[i].load(Ordering::Relaxed))
    }

    /// Store `v` into word `i` (panics if `i` is out of bounds).
    #[inline(always)]
    pub fn store(&self, i: usize, v: u64) {
        self.atomics()[i].store(v.to_le(), Ordering::Relaxed)
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no words.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The words as atomics, for loops over a range with one bounds check and for
    /// accesses with other orderings. Values are little-endian.
    #[inline(always)]
    pub fn atomics(&self) -> &[AtomicU64] {
        // SAFETY: `new`'s contract makes `ptr[0..len]` valid, aligned shared memory for
        // as long as this value is used; `AtomicU64` has the layout of `u64`.
        unsafe { core::slice::from_raw_parts(self.ptr as *const AtomicU64, self.len) }
    }
}

/// First-fit allocator of aligned ranges of a physically contiguous window (for
/// [`DmaMemory`] providers over memory they were given, such as a simulation's RAM or
/// a process's DMA pool).
#[derive(Debug)]
pub struct RangeAllocator {
    /// Free ranges: start → length.
    free: alloc::collections::BTreeMap<u64, u64>,
    live: u64,
}

impl RangeAllocator {
    /// All of `start..start+len` free.
    pub fn new(start: u64, len: u64) -> Self {
        let mut free = alloc::collections::BTreeMap::new();
        if len > 0 {
            free.insert(start, len);
        }
        RangeAllocator { free, live: 0 }
    }

    /// Bytes currently allocated.
    pub fn live_bytes(&self) -> u64 {
        self.live
    }

    /// Allocates `size` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let (start, len, at) = self.free.iter().find_map(|(&start, &len)| {
            let at = start.checked_add(align - 1)? & !(align - 1);
            (at.checked_add(size)? <= start + len).then_some((start, len, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        if at + size < start + len {
            self.free.insert(at + size, start + len - (at + size));
        }
        self.live += size;
        Some(at)
    }

    /// Returns a range, merging it with free neighbours.
    ///
    /// # Panics
    /// If the range overlaps free memory (a double free).
    pub fn free(&mut self, start: u64, size: u64) {
        let freed = size;
        let mut start = start;
        let mut size = size;
        if let Some((&p, &plen)) = self.free.range(..=start).next_back() {
            assert!(p + plen <= start, "double free of {start:#x}");
            if p + plen == start {
                self.free.remove(&p);
                start = p;
                size += plen;
            }
        }
        if let Some((&n, &nlen)) = self.free.range(start..).next() {
            assert!(start + size <= n, "double free of {start:#x}");
            if start + size == n {
                self.free.remove(&n);
                size += nlen;
            }
        }
        self.free.insert(start, size);
        self.live -= freed.min(self.live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_heap_alignment_and_zero() {
        let mut m = IdentityHeap::new();
        for (size, align) in [(1 << 16, 1 << 16), (1 << 13, 1 << 12)] {
            let pa = m.alloc_zeroed(size, align).unwrap();
            assert_eq!(pa.0 % align as u64, 0);
            let words = size / 8;
            // SAFETY: the region is live and `size` bytes long.
            let w = unsafe { Words::new(&m, pa, words) };
            assert_eq!(w.len(), words);
            assert!(!w.is_empty());
            assert!((0..words).all(|i| w.load(i) == 0));
            w.store(5, 0x1122_3344_5566_7788);
            assert_eq!(w.load(5), 0x1122_3344_5566_7788);
            // SAFETY: the byte is within the live region; little-endian in memory.
            let b = unsafe { *(m.virt(PhysAddr(pa.0 + 40))) };
            assert_eq!(b, 0x88);
            assert_eq!(m.live_regions, 1);
            m.flush(pa, size); // the default no-op
                               // SAFETY: freeing the region allocated above, no longer used.
            unsafe { m.free(pa, size, align) };
            assert_eq!((m.live_bytes, m.live_regions), (0, 0));
        }
        assert!(m.alloc_zeroed(0, 8).is_none());
        assert!(
            m.alloc_zeroed(8, 3).is_none(),
            "non-power-of-two alignment refused"
        );
    }

    #[test]
    #[should_panic]
    fn words_are_bounds_checked() {
        let mut m = IdentityHeap::new();
        let pa = m.alloc_zeroed(64, 8).unwrap();
        // SAFETY: the region is live and 8 words long (leaked by the panic below).
        let w = unsafe { Words::new(&m, pa, 8) };
        w.load(8);
    }

    #[test]
    fn allocator_aligns_splits_and_merges() {
        let mut a = RangeAllocator::new(0x1000, 0x10000);
        let x = a.alloc(0x1000, 0x4000).unwrap();
        assert_eq!(x, 0x4000);
        let y = a.alloc(0x3000, 0x1000).unwrap();
        assert_eq!(y, 0x1000);
        assert_eq!(a.alloc(0x20000, 0x1000), None);
        assert_eq!(a.live_bytes(), 0x4000);
        a.free(x, 0x1000);
        assert_eq!(
            a.live_bytes(),
            0x3000,
            "only the freed bytes leave the count"
        );
        a.free(y, 0x3000);
        assert_eq!(a.live_bytes(), 0);
        assert_eq!(a.alloc(0x10000, 0x1000), Some(0x1000));
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut a = RangeAllocator::new(0, 0x4000);
        let x = a.alloc(0x1000, 0x1000).unwrap();
        a.free(x, 0x1000);
        a.free(x, 0x1000);
    }
}
