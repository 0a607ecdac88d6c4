//! The global allocator: power-of-two size classes over a static array.
//!
//! Blocks of 16 B .. 64 KiB are rounded up to a power of two, aligned to
//! their size, and kept on a free list per size class when freed; larger
//! blocks are carved from the same area and only returned when they are the
//! most recent allocation.  It must only be used after the MMU is on: the
//! lock uses an atomic read-modify-write, which needs Normal memory.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

const HEAP_SIZE: usize = 2 << 20;
const MIN_CLASS_SHIFT: u32 = 4;
const MAX_CLASS_SHIFT: u32 = 16;
const CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;

#[repr(C, align(4096))]
struct HeapArea(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the area is only handed out in disjoint blocks by `ClassAllocator`.
unsafe impl Sync for HeapArea {}

static HEAP: HeapArea = HeapArea(UnsafeCell::new([0; HEAP_SIZE]));

struct State {
    /// Offset of the first never-used byte in `HEAP`.
    next: usize,
    /// Head of each size class's free list (0 = empty); the first word of a
    /// free block holds the address of the next one.
    free: [usize; CLASSES],
}

struct ClassAllocator {
    locked: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only accessed while `locked` is held.
unsafe impl Sync for ClassAllocator {}

impl ClassAllocator {
    /// Runs `f` on the state under the lock.  The image runs on one CPU
    /// without interrupts, so the lock is never contended; finding it taken
    /// would mean re-entry, which fails the allocation instead of waiting.
    fn with_state<R>(&self, fail: R, f: impl FnOnce(&mut State) -> R) -> R {
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return fail;
        }
        // SAFETY: the lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.state.get() });
        self.locked.store(false, Ordering::Release);
        r
    }
}

fn heap_base() -> usize {
    HEAP.0.get() as usize
}

/// Size class of a layout, or `None` for large blocks.
fn class_of(layout: &Layout) -> Option<(usize, usize)> {
    let size = layout
        .size()
        .max(layout.align())
        .max(1 << MIN_CLASS_SHIFT)
        .next_power_of_two();
    let shift = size.trailing_zeros();
    (shift <= MAX_CLASS_SHIFT).then(|| ((shift - MIN_CLASS_SHIFT) as usize, size))
}

fn bump(state: &mut State, size: usize, align: usize) -> *mut u8 {
    let base = heap_base();
    let start = (base + state.next).next_multiple_of(align) - base;
    match start.checked_add(size) {
        Some(end) if end <= HEAP_SIZE => {
            state.next = end;
            (base + start) as *mut u8
        }
        _ => ptr::null_mut(),
    }
}

// SAFETY: every block handed out is a distinct, suitably aligned range inside
// `HEAP` (or null), and a block is only reused after it was freed.
unsafe impl GlobalAlloc for ClassAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with_state(ptr::null_mut(), |state| match class_of(&layout) {
            Some((class, size)) => {
                let Some(head) = state.free.get_mut(class) else {
                    return ptr::null_mut();
                };
                if *head != 0 {
                    let block = *head as *mut usize;
                    // SAFETY: `block` is a free block of this class inside the
                    // heap; its first word holds the next free block.
                    *head = unsafe { block.read() };
                    block.cast()
                } else {
                    bump(state, size, size)
                }
            }
            None => bump(state, layout.size(), layout.align()),
        })
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        self.with_state((), |state| match class_of(&layout) {
            Some((class, _)) => {
                if let Some(head) = state.free.get_mut(class) {
                    // SAFETY: the caller returns a block this allocator handed
                    // out for `layout`, at least 16 bytes and 16-byte aligned;
                    // it is unused from now on.
                    unsafe { (block as *mut usize).write(*head) };
                    *head = block as usize;
                }
            }
            None => {
                let offset = block as usize - heap_base();
                if offset + layout.size() == state.next {
                    state.next = offset;
                }
            }
        })
    }
}

#[global_allocator]
static ALLOCATOR: ClassAllocator = ClassAllocator {
    locked: AtomicBool::new(false),
    state: UnsafeCell::new(State {
        next: 0,
        free: [0; CLASSES],
    }),
};

/// Bytes of the heap area ever used.
pub fn high_water() -> usize {
    ALLOCATOR.with_state(0, |s| s.next)
}
