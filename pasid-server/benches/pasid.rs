//! PASID allocator figures: ns per allocate+free, bytes per live PASID, exhaustion cost.
//! Run with `cargo xtask bench`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ipc_protocol::pasid::*;
use ipc_protocol::{encode_request, Request, MAX_MESSAGE_BYTES};
use pasid_server::{CallerPolicy, Config, PasidServer};

/// Counts live heap bytes, to measure the server's memory from the allocator's side too.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BADGE: u64 = 1;

fn server() -> PasidServer {
    PasidServer::new(Config {
        max_pasid: PASID_MAX,
        callers: vec![CallerPolicy {
            badge: BADGE,
            max_live: u32::MAX,
            max_sets: 16,
            admin: false,
        }],
    })
    .unwrap()
}

fn new_set(s: &mut PasidServer) -> SetId {
    match s.handle(
        BADGE,
        &PasidRequest::CreateSet {
            owner: 1,
            quota: u32::MAX,
        },
    ) {
        Ok(PasidReply::SetCreated { set }) => set,
        r => panic!("{r:?}"),
    }
}

fn best_of<F: FnMut() -> f64>(runs: usize, mut f: F) -> f64 {
    (0..runs).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn main() {
    println!("pasid-server benchmark (best of 5 runs)");
    println!("{:<44} {:>12}", "operation", "ns/op");

    // Allocate + free of one PASID with `live` others allocated, as a library call.
    for live in [0u32, 1_000, 1_000_000] {
        let mut s = server();
        let set = new_set(&mut s);
        let c = s.caller(BADGE).unwrap();
        for _ in 0..live {
            s.alloc(c, set, PasidRange::default()).unwrap();
        }
        let iters = 2_000_000;
        let ns = best_of(5, || {
            let t = Instant::now();
            for _ in 0..iters {
                let p = s.alloc(c, set, black_box(PasidRange::default())).unwrap();
                s.free(c, black_box(p)).unwrap();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        });
        println!(
            "{:<44} {:>12.1}",
            format!("allocate+free, library, {live} live"),
            ns
        );
    }

    // The same through the request path (decode, badge check, handle, encode reply).
    {
        let mut s = server();
        let set = new_set(&mut s);
        let mut alloc_msg = [0u8; MAX_MESSAGE_BYTES];
        let na = encode_request(
            &PasidRequest::Alloc {
                set,
                range: PasidRange::default(),
            },
            &mut alloc_msg,
        )
        .unwrap();
        let mut reply = [0u8; MAX_MESSAGE_BYTES];
        let iters = 1_000_000;
        let ns = best_of(5, || {
            let t = Instant::now();
            for _ in 0..iters {
                let n = s.handle_message(BADGE, black_box(&alloc_msg[..na]), &mut reply);
                let p = match ipc_protocol::decode_reply(
                    PasidRequest::Alloc {
                        set,
                        range: PasidRange::default(),
                    }
                    .label(),
                    &reply[..n],
                ) {
                    Ok(PasidReply::Allocated { pasid, .. }) => pasid,
                    r => panic!("{r:?}"),
                };
                let mut free_msg = [0u8; 16];
                let nf = encode_request(&PasidRequest::Free { pasid: p }, &mut free_msg).unwrap();
                s.handle_message(BADGE, &free_msg[..nf], &mut reply);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        });
        println!(
            "{:<44} {:>12.1}",
            "allocate+free, encoded requests, 0 live", ns
        );
    }

    // Memory per live PASID.
    println!();
    println!(
        "{:<12} {:>14} {:>16} {:>16}",
        "live", "heap bytes", "bytes/PASID", "allocator bytes"
    );
    for live in [1u32, 1_000, PASID_MAX] {
        let before = LIVE.load(Ordering::Relaxed);
        let mut s = server();
        let set = new_set(&mut s);
        let c = s.caller(BADGE).unwrap();
        for _ in 0..live {
            s.alloc(c, set, PasidRange::default()).unwrap();
        }
        let counted = LIVE.load(Ordering::Relaxed) - before;
        let heap = s.heap_bytes();
        println!(
            "{:<12} {:>14} {:>16.1} {:>16}",
            live,
            heap,
            heap as f64 / live as f64,
            counted
        );
        if live == PASID_MAX {
            // Exhaustion: every PASID is out; the next allocation must fail at once.
            let iters = 1_000_000;
            let t = Instant::now();
            for _ in 0..iters {
                assert!(s.alloc(c, set, black_box(PasidRange::default())).is_err());
            }
            let ns = t.elapsed().as_nanos() as f64 / iters as f64;
            // Worst case for the search: a range whose only free slot is at its far end.
            s.free(c, PASID_MAX).unwrap();
            let t = Instant::now();
            for _ in 0..iters {
                let p = s.alloc(c, set, black_box(PasidRange::default())).unwrap();
                s.free(c, p).unwrap();
            }
            let far = t.elapsed().as_nanos() as f64 / iters as f64;
            println!();
            println!(
                "all {} PASIDs allocated: NoSpace in {:.1} ns/op",
                PASID_MAX, ns
            );
            println!(
                "only the last PASID free: allocate+free in {:.1} ns/op",
                far
            );
        }
        drop(s);
    }
}
