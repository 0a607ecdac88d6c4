//! Second-level page-table map/unmap cost next to the memory-write floor and next to a
//! public peer, the `x86_64` crate's page-table mapper (`OffsetPageTable`, one 4K page
//! per call, over host memory), and the page-selective invalidations each contiguous
//! unmap needs. Unmap includes unlinking the
//! tables it empties; they are released as spares between rounds (outside the timing).
//!
//! Run with `cargo bench -p vtd --bench pagetable`.

use std::hint::black_box;
use std::time::Instant;

use vtd::caps::{Cap, QEMU_7_2_CAP};
use vtd::inv::{InvalidationPlan, PlannerConfig};
use vtd::pagetable::{LargePages, Prot, SecondLevel, Unmapped, PAGE_SIZE};
use vtd::{DmaMemory, IdentityHeap};

struct Case {
    name: &'static str,
    /// Pages per map call.
    n: u64,
    /// Map calls per round (contiguous IOVA ranges, one after the other).
    calls: u64,
    rounds: u32,
}

struct Row {
    map_ns: f64,
    unmap_ns: f64,
    floor_ns: f64,
    peer_map_ns: f64,
    peer_unmap_ns: f64,
    last: Unmapped,
}

/// Page-table frames for the `x86_64` crate's mapper: zeroed 4K-aligned heap blocks whose
/// address serves as the physical address (the mapper is built with offset 0). Kept for
/// the whole run, as the mapper never returns them.
struct HeapFrames(Vec<*mut u8>);

// SAFETY: every frame returned is a fresh, zeroed, 4K-aligned 4K block, unused elsewhere
// and never freed while the mapper lives.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB>
    for HeapFrames
{
    fn allocate_frame(
        &mut self,
    ) -> Option<x86_64::structures::paging::PhysFrame<x86_64::structures::paging::Size4KiB>> {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return None;
        }
        self.0.push(p);
        Some(x86_64::structures::paging::PhysFrame::containing_address(
            x86_64::PhysAddr::new(p as u64),
        ))
    }
}

impl Drop for HeapFrames {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        for &p in &self.0 {
            // SAFETY: allocated in allocate_frame with this layout; the mapper is gone.
            unsafe { std::alloc::dealloc(p, layout) };
        }
    }
}

/// The peer: map `calls` ranges of `n` pages one page at a time with the `x86_64`
/// crate's `OffsetPageTable`, then unmap them; best ns per page over the rounds.
fn run_peer(case: &Case, base: u64) -> (f64, f64) {
    use x86_64::structures::paging::{
        Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
    };
    let mut frames = HeapFrames(Vec::new());
    let root = frames.allocate_frame_for_root().expect("root table");
    // SAFETY: `root` is a zeroed, 4K-aligned block owned by `frames` for the run; with
    // offset 0 every table address the mapper follows is such a block.
    let mut mapper =
        unsafe { OffsetPageTable::new(&mut *(root as *mut PageTable), x86_64::VirtAddr::new(0)) };
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    let span = case.n * PAGE_SIZE;
    let (mut best_map, mut best_unmap) = (f64::MAX, f64::MAX);
    for _ in 0..case.rounds {
        let t = Instant::now();
        for k in 0..case.calls {
            for i in 0..case.n {
                let va = base + k * span + i * PAGE_SIZE;
                let page =
                    Page::<Size4KiB>::containing_address(x86_64::VirtAddr::new(black_box(va)));
                let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(
                    0x1_0000_1000 + k * span + i * PAGE_SIZE,
                ));
                // SAFETY: these tables are never loaded into CR3; the mapping describes
                // nothing the program touches. The flush (INVLPG) is not executed.
                unsafe { mapper.map_to(page, frame, flags, &mut frames) }
                    .expect("peer map")
                    .ignore();
            }
        }
        let m = t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        for k in 0..case.calls {
            for i in 0..case.n {
                let va = base + k * span + i * PAGE_SIZE;
                let page =
                    Page::<Size4KiB>::containing_address(x86_64::VirtAddr::new(black_box(va)));
                mapper.unmap(page).expect("peer unmap").1.ignore();
            }
        }
        let u = t.elapsed().as_nanos() as f64;
        let pages = (case.calls * case.n) as f64;
        best_map = best_map.min(m / pages);
        best_unmap = best_unmap.min(u / pages);
    }
    (best_map, best_unmap)
}

trait RootFrame {
    fn allocate_frame_for_root(&mut self) -> Option<*mut u8>;
}

impl RootFrame for HeapFrames {
    fn allocate_frame_for_root(&mut self) -> Option<*mut u8> {
        use x86_64::structures::paging::FrameAllocator;
        self.allocate_frame()
            .map(|f| f.start_address().as_u64() as *mut u8)
    }
}

fn run(case: &Case) -> Row {
    let mut mem = IdentityHeap::new();
    let cap = Cap::decode(QEMU_7_2_CAP);
    // QEMU's shape (3 levels, 39-bit, 2MB/1GB leaves allowed); a 4-level table would add
    // one walk step per table change.
    let large = LargePages {
        l2m: cap.sl_2m,
        l1g: cap.sl_1g,
    };
    let mut pt = SecondLevel::new(&mut mem, 3, 39, large, true).expect("page table");
    // Emptied tables are kept as spares, as a long-running server would configure it.
    pt.set_spare_limit(1024);
    let span = case.n * PAGE_SIZE;
    let base = 0x10_0000_0000u64 >> 3; // 2^33: room for every case below 2^39
    let mut best_map = f64::MAX;
    let mut best_unmap = f64::MAX;
    let mut last = Unmapped::default();
    for _ in 0..case.rounds {
        let t = Instant::now();
        for k in 0..case.calls {
            let iova = base + k * span;
            // Output offset by one page: only 4KB leaves fit, as intended.
            pt.map(
                &mut mem,
                black_box(iova),
                0x1_0000_1000 + k * span,
                span,
                Prot::READ_WRITE,
            )
            .expect("map");
        }
        let m = t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        for k in 0..case.calls {
            last = pt
                .unmap(&mut mem, black_box(base + k * span), span)
                .expect("unmap");
        }
        let u = t.elapsed().as_nanos() as f64;
        // SAFETY: no remapping hardware uses these tables.
        unsafe { pt.release_retired(&mut mem) };
        let pages = (case.calls * case.n) as f64;
        best_map = best_map.min(m / pages);
        best_unmap = best_unmap.min(u / pages);
    }
    assert_eq!(last.leaves, case.n, "{}: wrong leaf size used", case.name);

    // Floor: one plain 64-bit store per page, over a buffer of the same entry count.
    let words = case.n as usize;
    let bytes = (words * 8).max(4096);
    let buf = mem.alloc_zeroed(bytes, 4096).expect("buffer");
    let p = mem.virt(buf) as *mut u64;
    let mut best_floor = f64::MAX;
    for _ in 0..case.rounds {
        let t = Instant::now();
        for k in 0..case.calls {
            let d = black_box(0x3 | (k << 12));
            for i in 0..words {
                // SAFETY: `p` points at `words` live u64s of `buf`.
                unsafe { core::ptr::write_volatile(p.add(i), d + ((i as u64) << 12)) };
            }
        }
        let f = t.elapsed().as_nanos() as f64;
        best_floor = best_floor.min(f / (case.calls * case.n) as f64);
    }
    // SAFETY: `buf` came from `alloc_zeroed` with this layout and is no longer used.
    unsafe { mem.free(buf, bytes, 4096) };
    // SAFETY: no remapping hardware uses these tables.
    unsafe { pt.destroy(&mut mem) };
    let (peer_map_ns, peer_unmap_ns) = run_peer(case, base);
    Row {
        map_ns: best_map,
        unmap_ns: best_unmap,
        floor_ns: best_floor,
        peer_map_ns,
        peer_unmap_ns,
        last,
    }
}

fn main() {
    let cases = [
        Case {
            name: "1 x 4K page",
            n: 1,
            calls: 4096,
            rounds: 30,
        },
        Case {
            name: "256 x 4K pages",
            n: 256,
            calls: 64,
            rounds: 30,
        },
        Case {
            name: "262144 x 4K pages",
            n: 262_144,
            calls: 1,
            rounds: 8,
        },
    ];
    let cap = Cap::decode(QEMU_7_2_CAP);
    let planner = PlannerConfig::from_cap(&cap);
    let uncapped = PlannerConfig {
        max_page_invalidations: usize::MAX,
        ..planner
    };
    println!(
        "{:<19} {:>12} {:>14} {:>12} {:>9} {:>10} {:>11} {:>11} {:>13} {:>13}",
        "case",
        "map ns/page",
        "unmap ns/page",
        "floor ns/st",
        "map/floor",
        "x86_64 map",
        "x86_64 unmap",
        "PSI aligned",
        "PSI +1 page",
        "+1 uncapped"
    );
    for c in &cases {
        let r = run(c);
        let span = c.n * PAGE_SIZE;
        let aligned = InvalidationPlan::new(&planner, 1, 1 << 30, span, true);
        let shifted = InvalidationPlan::new(&planner, 1, (1 << 30) + PAGE_SIZE, span, true);
        let shifted_all = InvalidationPlan::new(&uncapped, 1, (1 << 30) + PAGE_SIZE, span, true);
        let kind = |p: &InvalidationPlan| match p {
            InvalidationPlan::Domain(_) => "DSI",
            _ => "PSI",
        };
        println!(
            "{:<19} {:>12.2} {:>14.2} {:>12.2} {:>9.2} {:>10.2} {:>12.2} {:>7} {} {:>9} {} {:>9} {}",
            c.name,
            r.map_ns,
            r.unmap_ns,
            r.floor_ns,
            r.map_ns / r.floor_ns,
            r.peer_map_ns,
            r.peer_unmap_ns,
            aligned.count(),
            kind(&aligned),
            shifted.count(),
            kind(&shifted),
            shifted_all.count(),
            kind(&shifted_all),
        );
        assert_eq!(r.last.bytes, span);
    }
    println!(
        "QEMU 7.2 CAP: PSI=1, MAMV={}; 'PSI aligned' starts the range at 1GB, '+1 page' one \
         page later; above {} page-selective invalidations the driver uses one \
         domain-selective (DSI); 'uncapped' shows the page-selective count without that \
         fallback. Floor = one volatile 64-bit store per page. x86_64 = the x86_64 \
         crate's OffsetPageTable mapping the same pages one call per page.",
        cap.mamv, planner.max_page_invalidations
    );
}
