//! Physical page allocator for DMA buffers and device page tables.
//!
//! RAM is identity-mapped (physical address == virtual address), so an
//! allocation can be used by the CPU at its physical address.  Pages are
//! handed out from the free RAM ranges in increasing address order and are
//! never reused: the image runs its scenarios once and exits.

use alloc::vec::Vec;
use core::fmt;

use crate::cache;

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;

/// A half-open physical address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// The allocator has no free range that can hold the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory {
    /// Requested size in bytes.
    pub size: u64,
    /// Requested alignment in bytes.
    pub align: u64,
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of memory allocating 0x{:x} bytes aligned to 0x{:x}",
            self.size, self.align
        )
    }
}

/// Allocator of zeroed, page-aligned physical memory.
pub struct FrameAllocator {
    free: Vec<PhysRange>,
    allocated: u64,
}

impl FrameAllocator {
    /// An allocator over `ram` minus `reserved` (both lists of ranges).
    ///
    /// # Safety
    /// Every byte of `ram` outside `reserved` must be RAM that is mapped
    /// read-write (identity) and not used by anything else for the rest of
    /// the run.
    pub unsafe fn new(ram: &[PhysRange], reserved: &[PhysRange]) -> Self {
        let mut free: Vec<PhysRange> = Vec::new();
        for r in ram {
            let mut pieces = alloc::vec![PhysRange {
                start: r.start.next_multiple_of(PAGE_SIZE),
                end: r.end & !(PAGE_SIZE - 1),
            }];
            for hole in reserved {
                let hole = PhysRange {
                    start: hole.start & !(PAGE_SIZE - 1),
                    end: hole.end.next_multiple_of(PAGE_SIZE),
                };
                let mut next = Vec::new();
                for p in pieces {
                    if hole.end <= p.start || hole.start >= p.end {
                        next.push(p);
                        continue;
                    }
                    if hole.start > p.start {
                        next.push(PhysRange {
                            start: p.start,
                            end: hole.start,
                        });
                    }
                    if hole.end < p.end {
                        next.push(PhysRange {
                            start: hole.end,
                            end: p.end,
                        });
                    }
                }
                pieces = next;
            }
            free.extend(pieces.into_iter().filter(|p| !p.is_empty()));
        }
        free.sort_by_key(|r| r.start);
        Self { free, allocated: 0 }
    }

    /// The free ranges left.
    pub fn free_ranges(&self) -> &[PhysRange] {
        &self.free
    }

    /// Bytes handed out so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// Allocates `size` bytes (rounded up to whole pages) aligned to `align`
    /// (a power of two, at least a page), zeroed and written back to memory,
    /// and returns the physical address.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, OutOfMemory> {
        let err = OutOfMemory { size, align };
        if size == 0 || !align.is_power_of_two() {
            return Err(err);
        }
        let align = align.max(PAGE_SIZE);
        let size = size.checked_next_multiple_of(PAGE_SIZE).ok_or(err)?;
        for i in 0..self.free.len() {
            let Some(range) = self.free.get(i).copied() else {
                break;
            };
            let Some(start) = range.start.checked_next_multiple_of(align) else {
                continue;
            };
            let Some(end) = start.checked_add(size) else {
                continue;
            };
            if end > range.end {
                continue;
            }
            // Keep the alignment gap as its own free range.
            if let Some(slot) = self.free.get_mut(i) {
                slot.start = end;
            }
            if start > range.start {
                self.free.insert(
                    i,
                    PhysRange {
                        start: range.start,
                        end: start,
                    },
                );
            }
            self.free.retain(|r| !r.is_empty());
            self.allocated += size;
            let len = usize::try_from(size).map_err(|_| err)?;
            let addr = usize::try_from(start).map_err(|_| err)?;
            // SAFETY: the range was free RAM, mapped read-write (contract of
            // `new`), and is now owned by the caller alone.
            unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len) };
            cache::clean_invalidate(addr, len);
            return Ok(start);
        }
        Err(err)
    }

    /// Allocates a DMA buffer of `len` bytes (page-aligned, zeroed).
    pub fn alloc_dma(&mut self, len: usize) -> Result<DmaBuffer, OutOfMemory> {
        self.alloc_dma_aligned(len, PAGE_SIZE)
    }

    /// Allocates a DMA buffer of `len` bytes aligned to `align` (a power of
    /// two, at least a page), zeroed; for example a 2 MiB block an IOMMU
    /// maps with one descriptor.
    pub fn alloc_dma_aligned(&mut self, len: usize, align: u64) -> Result<DmaBuffer, OutOfMemory> {
        let phys = self.alloc(len as u64, align)?;
        Ok(DmaBuffer { phys, len })
    }
}

/// A buffer in RAM shared with a DMA-capable device.
///
/// Call [`DmaBuffer::sync_for_device`] after the CPU wrote it and before the
/// device accesses it, and [`DmaBuffer::sync_for_cpu`] after the device
/// wrote it and before the CPU reads it.
pub struct DmaBuffer {
    phys: u64,
    len: usize,
}

impl DmaBuffer {
    /// Physical address of the buffer (what a device uses when DMA is not
    /// translated).
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has zero length.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer owns `len` bytes of identity-mapped RAM at
        // `phys`, handed out once by the frame allocator.
        unsafe { core::slice::from_raw_parts(self.phys as usize as *const u8, self.len) }
    }

    /// The buffer's contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.phys as usize as *mut u8, self.len) }
    }

    /// Makes CPU writes visible to a device and drops cached copies, so that
    /// the device may read or write the buffer.
    pub fn sync_for_device(&self) {
        cache::clean_invalidate(self.phys as usize, self.len);
    }

    /// Makes device writes visible to the CPU.
    pub fn sync_for_cpu(&self) {
        cache::clean_invalidate(self.phys as usize, self.len);
    }
}
