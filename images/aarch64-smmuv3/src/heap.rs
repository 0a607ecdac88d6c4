//! The global allocator: a bump allocator over a static array.
//!
//! The image allocates little (device lists, messages) and runs once, so
//! freed memory is only reused when it is the most recent allocation (which
//! covers a growing `Vec`).  It must only be used after the MMU is on:
//! allocation uses atomic read-modify-write operations, which need Normal
//! memory.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

const HEAP_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct HeapArea(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the area is only handed out in disjoint pieces by `BumpAllocator`.
unsafe impl Sync for HeapArea {}

static HEAP: HeapArea = HeapArea(UnsafeCell::new([0; HEAP_SIZE]));

struct BumpAllocator {
    /// Offset of the first free byte in `HEAP`.
    next: AtomicUsize,
}

fn heap_base() -> usize {
    HEAP.0.get() as usize
}

// SAFETY: every allocation is a distinct, suitably aligned range inside
// `HEAP` (or null when the heap is exhausted).
unsafe impl GlobalAlloc for BumpAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = heap_base();
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + current).next_multiple_of(layout.align()) - base;
            let Some(end) = start.checked_add(layout.size()) else {
                return ptr::null_mut();
            };
            if end > HEAP_SIZE {
                return ptr::null_mut();
            }
            match self
                .next
                .compare_exchange_weak(current, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(seen) => current = seen,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Give the memory back only if it is the last allocation.
        let offset = ptr as usize - heap_base();
        let end = offset + layout.size();
        let _ = self
            .next
            .compare_exchange(end, offset, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: BumpAllocator = BumpAllocator {
    next: AtomicUsize::new(0),
};

/// Bytes of heap in use.
pub fn used() -> usize {
    ALLOCATOR.next.load(Ordering::Relaxed)
}
