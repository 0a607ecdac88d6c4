//! The global allocator: a linked-list heap over a static area in the program's `.bss`
//! (which the loader backs with fresh zeroed frames). Each program calls [`init`] once
//! before its first allocation.

use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;

/// Bytes of heap per program.
pub const HEAP_SIZE: usize = 2 << 20;

#[repr(C, align(4096))]
struct Area([u8; HEAP_SIZE]);

static mut AREA: Area = Area([0; HEAP_SIZE]);
static READY: AtomicBool = AtomicBool::new(false);

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands the static area to the allocator (once; later calls do nothing).
pub fn init() {
    if READY.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the swap above lets exactly one caller through, so the area is handed to
    // the allocator once and never touched by anything else.
    unsafe {
        let start = core::ptr::addr_of_mut!(AREA).cast::<u8>();
        HEAP.lock().init(start, HEAP_SIZE);
    }
}
