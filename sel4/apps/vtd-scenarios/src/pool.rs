//! The DMA pool init granted: physically contiguous RAM mapped at a known address, from
//! which the VT-d driver takes its tables and queues and the scenarios their device
//! buffers.

use alloc::rc::Rc;
use core::cell::RefCell;

use iommu_hwio::dma::{DmaMemory, PhysAddr, RangeAllocator};

#[derive(Debug)]
struct Inner {
    vaddr: u64,
    paddr: u64,
    size: u64,
    ranges: RefCell<RangeAllocator>,
}

/// A handle on the pool (clones share it).
#[derive(Debug, Clone)]
pub struct Pool(Rc<Inner>);

impl Pool {
    /// The pool of `size` bytes at physical `paddr`, mapped at `vaddr`.
    pub fn new(vaddr: u64, paddr: u64, size: u64) -> Self {
        Pool(Rc::new(Inner {
            vaddr,
            paddr,
            size,
            ranges: RefCell::new(RangeAllocator::new(paddr, size)),
        }))
    }

    /// A zeroed page-aligned device buffer of `pages` pages.
    pub fn buffer(&self, pages: u64) -> Option<Buffer> {
        let mut me = self.clone();
        let pa = me.alloc_zeroed((pages * 4096) as usize, 4096)?;
        Some(Buffer {
            pa: pa.0,
            va: self.virt(pa),
            len: pages * 4096,
        })
    }
}

// SAFETY: regions come from a range allocator over the pool, which init granted to this
// process alone (fresh frames, physically contiguous, mapped write-back at `vaddr`), so
// they are contiguous, aligned and exclusively owned until freed; they are zeroed here
// before being handed out. QEMU's VT-d reads guest memory directly, so no flush is
// needed (the driver calls `flush` anyway when ECAP.C = 0, which is a no-op here).
unsafe impl DmaMemory for Pool {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        let pa = self
            .0
            .ranges
            .borrow_mut()
            .alloc(size as u64, align as u64)?;
        let va = self.virt(PhysAddr(pa));
        // SAFETY: `va..va+size` is the CPU view of the range just allocated, inside the
        // pool's mapping.
        unsafe { core::ptr::write_bytes(va, 0, size) };
        Some(PhysAddr(pa))
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize, _align: usize) {
        self.0.ranges.borrow_mut().free(pa.0, size as u64);
    }

    fn virt(&self, pa: PhysAddr) -> *mut u8 {
        assert!(
            pa.0 >= self.0.paddr && pa.0 < self.0.paddr + self.0.size,
            "address {:#x} outside the DMA pool",
            pa.0
        );
        (self.0.vaddr + (pa.0 - self.0.paddr)) as *mut u8
    }
}

/// A device buffer in the pool.
#[derive(Debug, Clone, Copy)]
pub struct Buffer {
    /// Physical address.
    pub pa: u64,
    va: *mut u8,
    /// Bytes.
    pub len: u64,
}

impl Buffer {
    /// Fills the first `len` bytes with a pattern derived from `seed`.
    pub fn fill(&self, len: u64, seed: u8) {
        for i in 0..len.min(self.len) {
            // SAFETY: `i` is inside the buffer, which this process owns; volatile
            // because a device reads it.
            unsafe { self.va.add(i as usize).write_volatile(pattern(seed, i)) };
        }
    }

    /// Sets the whole buffer to `byte`.
    pub fn clear(&self, byte: u8) {
        for i in 0..self.len {
            // SAFETY: as in `fill`.
            unsafe { self.va.add(i as usize).write_volatile(byte) };
        }
    }

    /// Whether the first `len` bytes hold the pattern of `seed`.
    pub fn holds(&self, len: u64, seed: u8) -> bool {
        (0..len.min(self.len)).all(|i| self.byte(i) == pattern(seed, i))
    }

    /// Whether every byte is `byte`.
    pub fn all(&self, byte: u8) -> bool {
        (0..self.len).all(|i| self.byte(i) == byte)
    }

    fn byte(&self, i: u64) -> u8 {
        // SAFETY: `i` is inside the buffer; volatile because a device writes it.
        unsafe { self.va.add(i as usize).read_volatile() }
    }
}

/// Byte `i` of the pattern of `seed`.
pub fn pattern(seed: u8, i: u64) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8
}
