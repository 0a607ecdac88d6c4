//! Page request queue (VT-d spec §7.5 "Handling Requests for Page Requests", registers
//! §11.4.31 - §11.4.35): the hardware writes 256-bit page request descriptors at PQT; software
//! consumes them from PQH and answers each last-in-group request with a page group
//! response descriptor through the invalidation queue
//! ([`crate::fault::page_group_response`]).
//!
//! Only hardware with ECAP.PRS has this queue (QEMU 7.2 does not).

use crate::error::{Error, Result};
use crate::fault::{PageRequest, PageRequestError};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::regs::{self, field_get, field_prep, RegisterIo};

/// Largest PQA.PQS value.
pub const MAX_PQS: u8 = 7;
/// Bytes of a page request descriptor.
pub const PRQ_DESC_BYTES: usize = 32;

/// Result of one drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrqReport {
    /// Descriptors consumed.
    pub requests: u32,
    /// PRS.PRO was set: requests were dropped (and auto-answered by hardware) because the
    /// queue was full. Cleared.
    pub overflowed: bool,
}

/// The page request queue.
#[derive(Debug)]
pub struct PageRequestQueue {
    base: PhysAddr,
    pqs: u8,
    entries: u32,
}

impl PageRequestQueue {
    /// Allocate a queue of 2^`pqs` pages (refused without ECAP.PRS by
    /// [`crate::caps::Features::check_page_requests`], which callers check first).
    pub fn new<M: DmaMemory>(mem: &mut M, pqs: u8) -> Result<Self> {
        if pqs > MAX_PQS {
            return Err(Error::InvalidField("PQA.PQS"));
        }
        let bytes = 4096usize << pqs;
        // Size-aligned, like the invalidation queue.
        let base = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
        Ok(Self {
            base,
            pqs,
            entries: (bytes / PRQ_DESC_BYTES) as u32,
        })
    }

    /// Descriptor slots.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// PQA value.
    pub fn pqa(&self) -> u64 {
        (self.base.0 & regs::PQA_ADDR) | field_prep(regs::PQA_PQS, u64::from(self.pqs))
    }

    /// Program PQH = PQT = 0 and PQA.
    pub fn program<R: RegisterIo>(&self, regs: &mut R) {
        regs.write64(regs::PQH, 0);
        regs.write64(regs::PQT, 0);
        regs.write64(regs::PQA, self.pqa());
    }

    /// Consume every descriptor between PQH and PQT, passing each decoded request (or
    /// its decode error) to `f`, then advance PQH. PRS.PPR is cleared before PQT is read,
    /// so a request written after that read sets it again; PRS.PRO is cleared (and
    /// reported) after the queue was emptied, since the hardware drops every request
    /// while it is set (§7.5.2). Indices read from the hardware are reduced modulo the
    /// queue size, so a bad PQT cannot make the driver read outside the queue.
    pub fn drain<R: RegisterIo, M: DmaMemory>(
        &self,
        regs: &mut R,
        mem: &M,
        mut f: impl FnMut(core::result::Result<PageRequest, PageRequestError>),
    ) -> PrqReport {
        let mut report = PrqReport::default();
        if regs.read32(regs::PRS) & regs::PRS_PPR != 0 {
            regs.write32(regs::PRS, regs::PRS_PPR);
        }
        let idx = |v: u64| (field_get(regs::PQ_INDEX, v) as u32) % self.entries;
        let tail = idx(regs.read64(regs::PQT));
        // The descriptors up to PQT are read only after PQT itself.
        regs.consume_barrier();
        let mut head = idx(regs.read64(regs::PQH));
        while head != tail {
            let pa = PhysAddr(self.base.0 + u64::from(head) * PRQ_DESC_BYTES as u64);
            // SAFETY: `head < entries`, so the 4 words lie inside the live queue
            // allocated in `new` (freed only by `destroy`, which consumes `self`).
            let w = unsafe { Words::new(mem, pa, 4) };
            f(PageRequest::decode([
                w.load(0),
                w.load(1),
                w.load(2),
                w.load(3),
            ]));
            report.requests += 1;
            head = (head + 1) % self.entries;
        }
        // The descriptors are read before PQH hands their slots back to the hardware.
        regs.publish_barrier();
        regs.write64(regs::PQH, u64::from(head) << 5);
        if regs.read32(regs::PRS) & regs::PRS_PRO != 0 {
            report.overflowed = true;
            regs.write32(regs::PRS, regs::PRS_PRO);
        }
        report
    }

    /// Free the queue.
    ///
    /// # Safety
    /// The hardware must no longer write to the queue (PQA reprogrammed or the unit
    /// disabled).
    pub unsafe fn destroy<M: DmaMemory>(self, mem: &mut M) {
        // SAFETY: allocated in `new` with this layout; the caller guarantees the hardware
        // no longer uses it.
        unsafe { mem.free(self.base, 4096 << self.pqs, 4096 << self.pqs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{PRQ0_PP, PRQ1_LPIG, PRQ1_RD};
    use crate::mem::IdentityHeap;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Regs(HashMap<usize, u64>);
    impl RegisterIo for Regs {
        fn read32(&mut self, o: usize) -> u32 {
            *self.0.get(&o).unwrap_or(&0) as u32
        }
        fn write32(&mut self, o: usize, v: u32) {
            if o == regs::PRS {
                let p = self.read32(o) & !v; // RW1C
                self.0.insert(o, p.into());
            } else {
                self.0.insert(o, v.into());
            }
        }
        fn read64(&mut self, o: usize) -> u64 {
            *self.0.get(&o).unwrap_or(&0)
        }
        fn write64(&mut self, o: usize, v: u64) {
            self.0.insert(o, v);
        }
    }

    /// Write a descriptor at PQT as the hardware would.
    fn push(q: &PageRequestQueue, m: &IdentityHeap, r: &mut Regs, d: [u64; 4]) {
        let t = (r.read64(regs::PQT) >> 5) as u32;
        let pa = PhysAddr(q.base.0 + u64::from(t) * 32);
        // SAFETY: slot `t` is inside the live queue.
        let w = unsafe { Words::new(m, pa, 4) };
        for (i, v) in d.iter().enumerate() {
            w.store(i, *v);
        }
        r.write64(regs::PQT, u64::from((t + 1) % q.entries()) << 5);
        let prs = r.read32(regs::PRS) | regs::PRS_PPR;
        r.0.insert(regs::PRS, prs.into());
    }

    #[test]
    fn drains_requests_with_wrap_and_overflow() {
        let mut mem = IdentityHeap::new();
        let q = PageRequestQueue::new(&mut mem, 0).unwrap();
        assert_eq!(q.entries(), 128);
        assert_eq!(q.pqa() & 0xfff, 0);
        let mut r = Regs::default();
        q.program(&mut r);
        let req = [
            1 | PRQ0_PP | (0x18 << 16) | (5 << 32),
            0x4000 | PRQ1_RD | PRQ1_LPIG,
            0,
            0,
        ];
        let mut n = 0;
        for round in 0..3 {
            for _ in 0..100 {
                push(&q, &mem, &mut r, req);
            }
            if round == 2 {
                push(&q, &mem, &mut r, [2, 0, 0, 0]);
                r.0.insert(regs::PRS, u64::from(regs::PRS_PRO | regs::PRS_PPR));
            }
            let rep = q.drain(&mut r, &mem, |x| {
                if let Ok(p) = x {
                    assert_eq!((p.rid, p.pasid, p.address), (0x18, Some(5), 0x4000));
                    n += 1;
                } else {
                    assert_eq!(x, Err(PageRequestError::NotAPageRequest(2)));
                }
            });
            assert_eq!(rep.requests, if round == 2 { 101 } else { 100 });
            assert_eq!(rep.overflowed, round == 2);
            assert_eq!(r.read64(regs::PQH), r.read64(regs::PQT));
            assert_eq!(r.read32(regs::PRS), 0);
        }
        assert_eq!(n, 300);
        // A bogus tail beyond the queue is reduced modulo its size.
        r.write64(regs::PQT, 0x7_ffe0);
        let rep = q.drain(&mut r, &mem, |_| {});
        assert!(rep.requests < q.entries());
        // SAFETY: no hardware uses the queue.
        unsafe { q.destroy(&mut mem) };
        assert_eq!(mem.live_regions, 0);
    }
}
