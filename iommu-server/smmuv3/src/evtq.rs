//! The event queue reader (SMMUv3 spec §3.5 queues, §6.3 SMMU_EVENTQ_BASE/PROD/CONS,
//! §7.4 "Event queue overflow").
//!
//! The SMMU writes 32-byte records and advances SMMU_EVENTQ_PROD (register page 1). When
//! it had to drop a record because the queue was full it toggles PROD.OVFLG; the reader
//! notices OVFLG differing from its CONS.OVACKFLG, counts the overflow and acknowledges by
//! copying OVFLG into CONS.OVACKFLG with its next CONS write.

use crate::error::{Error, Result};
use crate::event::{Event, EVT_BYTES};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::queue::QueueIndex;
use crate::regs::{self, RegisterIo, Q_OVERFLOW_FLAG};

/// Outcome of one drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Records handed to the callback.
    pub events: u32,
    /// The SMMU reported an overflow since the previous drain: records were lost.
    pub overflowed: bool,
    /// The queue was full when read: the SMMU had no room for further records until this
    /// drain (an SMMU following §7.4 then also reports `overflowed` if it had to drop one).
    pub full: bool,
    /// SMMU_GERROR.EVENTQ_ABT_ERR was active: the SMMU failed to write a record, which was
    /// lost. QEMU 7.2 reports a record dropped on a full queue this way instead of
    /// toggling PROD.OVFLG. Set (and acknowledged) by
    /// [`Smmu::drain_events`](crate::Smmu::drain_events); [`EventQueue::drain`] alone
    /// leaves it false.
    pub write_aborted: bool,
}

impl DrainReport {
    /// Records were lost: an overflow or an event queue write abort was reported.
    pub fn lost_records(&self) -> bool {
        self.overflowed || self.write_aborted
    }
}

/// The event queue.
#[derive(Debug)]
pub struct EventQueue {
    q: QueueIndex,
    base: PhysAddr,
    ring: Words,
    cons: u32,
    /// Overflows seen so far (each means at least one record was lost).
    pub overflows: u64,
    /// Records read so far.
    pub total_events: u64,
}

impl EventQueue {
    /// Allocate a queue of `2^log2` records, aligned to its size.
    pub fn new<M: DmaMemory>(mem: &mut M, log2: u8) -> Result<Self> {
        if log2 > 19 {
            return Err(Error::InvalidField("EVENTQ size"));
        }
        let q = QueueIndex::new(log2);
        let bytes = q.entries() as usize * EVT_BYTES;
        let base = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
        // SAFETY: `base` is a live region of `bytes` bytes owned by this queue.
        let ring = unsafe { Words::new(mem, base, bytes / 8) };
        Ok(Self {
            q,
            base,
            ring,
            cons: 0,
            overflows: 0,
            total_events: 0,
        })
    }

    /// Free the ring.
    ///
    /// # Safety
    /// The SMMU must no longer write the queue (CR0.EVENTQEN = 0 acknowledged).
    pub unsafe fn free<M: DmaMemory>(self, mem: &mut M) {
        let bytes = self.q.entries() as usize * EVT_BYTES;
        // SAFETY: allocated in `new` with this layout; unused per the caller.
        unsafe { mem.free(self.base, bytes, bytes) }
    }

    /// Value for SMMU_EVENTQ_BASE.
    pub fn base_register(&self) -> u64 {
        regs::Q_BASE_RWA | (self.base.0 & regs::Q_BASE_ADDR) | u64::from(self.q.log2())
    }

    /// Base address of the ring.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// Index geometry.
    pub fn geometry(&self) -> QueueIndex {
        self.q
    }

    /// Reset the indices (with the queue disabled) and program base/PROD/CONS.
    pub fn program<R: RegisterIo>(&mut self, regs: &mut R) {
        self.cons = 0;
        regs.write64(regs::EVENTQ_BASE, self.base_register());
        regs.write32(regs::EVENTQ_PROD, 0);
        regs.write32(regs::EVENTQ_CONS, 0);
    }

    /// Hand every pending record to `f`, then acknowledge them (and any overflow).
    /// At most one queue's worth of records is read per call.
    pub fn drain<R: RegisterIo>(&mut self, regs: &mut R, mut f: impl FnMut(Event)) -> DrainReport {
        let prod = regs.read32(regs::EVENTQ_PROD);
        // Records must be read after the PROD value that announced them.
        regs.consume_barrier();
        let mut report = DrainReport::default();
        let ovf = prod & Q_OVERFLOW_FLAG;
        if ovf != self.cons & Q_OVERFLOW_FLAG {
            report.overflowed = true;
            self.overflows += 1;
        }
        let prod_iw = self.q.idx_wrap(prod);
        let used = self.q.used(prod_iw, self.cons);
        report.full = used >= self.q.entries();
        // A corrupt PROD cannot make the reader take more than one queue's worth.
        let mut n = used.min(self.q.entries());
        while n > 0 {
            let i = self.q.idx(self.cons) as usize * 4;
            let w = [
                self.ring.load(i),
                self.ring.load(i + 1),
                self.ring.load(i + 2),
                self.ring.load(i + 3),
            ];
            f(Event::decode(w));
            report.events += 1;
            self.cons = self.q.inc(self.cons, 1);
            n -= 1;
        }
        self.total_events += u64::from(report.events);
        self.cons = (self.cons & !Q_OVERFLOW_FLAG) | ovf;
        if report.events > 0 || report.overflowed {
            regs.write32(regs::EVENTQ_CONS, self.cons);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::mem::IdentityHeap;
    use std::collections::HashMap;
    use std::vec::Vec;

    #[derive(Default)]
    struct Regs(HashMap<usize, u64>);
    impl RegisterIo for Regs {
        fn read32(&mut self, o: usize) -> u32 {
            *self.0.get(&o).unwrap_or(&0) as u32
        }
        fn write32(&mut self, o: usize, v: u32) {
            self.0.insert(o, u64::from(v));
        }
        fn read64(&mut self, o: usize) -> u64 {
            *self.0.get(&o).unwrap_or(&0)
        }
        fn write64(&mut self, o: usize, v: u64) {
            self.0.insert(o, v);
        }
    }

    fn push(q: &EventQueue, pos: u32, code: u8, sid: u32) {
        let i = q.q.idx(pos) as usize * 4;
        q.ring.store(i, u64::from(code) | (u64::from(sid) << 32));
        q.ring.store(i + 1, 0);
        q.ring.store(i + 2, 0x1000 * u64::from(sid));
        q.ring.store(i + 3, 0);
    }

    #[test]
    fn drains_in_order_across_wrap_and_acks() {
        let mut m = IdentityHeap::new();
        let mut q = EventQueue::new(&mut m, 2).unwrap();
        let mut r = Regs::default();
        q.program(&mut r);
        assert_eq!(r.read64(regs::EVENTQ_BASE) & 0x1f, 2);
        assert_eq!(r.read64(regs::EVENTQ_BASE) & regs::Q_BASE_ADDR, q.base().0);
        let mut seen = Vec::new();
        for round in 0..3u32 {
            for k in 0..3 {
                push(&q, q.cons + k, 0x10, round * 10 + k);
            }
            let prod = q.q.inc(q.cons, 3);
            r.write32(regs::EVENTQ_PROD, prod);
            let rep = q.drain(&mut r, |e| seen.push(e.stream().unwrap().sid));
            assert_eq!(
                rep,
                DrainReport {
                    events: 3,
                    ..DrainReport::default()
                }
            );
            assert_eq!(r.read32(regs::EVENTQ_CONS), prod, "CONS acknowledges");
        }
        assert_eq!(seen, [0, 1, 2, 10, 11, 12, 20, 21, 22]);
        assert_eq!(
            q.drain(&mut r, |_| panic!("no events")),
            DrainReport::default()
        );
        // SAFETY: never used by hardware.
        unsafe { q.free(&mut m) };
    }

    #[test]
    fn overflow_is_reported_once_and_acknowledged() {
        let mut m = IdentityHeap::new();
        let mut q = EventQueue::new(&mut m, 2).unwrap();
        let mut r = Regs::default();
        q.program(&mut r);
        for k in 0..4 {
            push(&q, k, 0x04, k);
        }
        // Full queue and the SMMU dropped a record: OVFLG toggled.
        r.write32(regs::EVENTQ_PROD, Q_OVERFLOW_FLAG | 4);
        let rep = q.drain(&mut r, |_| {});
        assert_eq!(
            rep,
            DrainReport {
                events: 4,
                overflowed: true,
                full: true,
                write_aborted: false,
            }
        );
        assert!(rep.lost_records());
        assert_eq!(
            r.read32(regs::EVENTQ_CONS),
            Q_OVERFLOW_FLAG | 4,
            "OVACKFLG copied"
        );
        assert_eq!(q.overflows, 1);
        // No new overflow: flag equal, nothing reported.
        let rep = q.drain(&mut r, |_| {});
        assert!(!rep.overflowed);
        // Overflow toggles back.
        push(&q, 4, 0x04, 9);
        r.write32(regs::EVENTQ_PROD, 5);
        let rep = q.drain(&mut r, |_| {});
        assert_eq!(
            rep,
            DrainReport {
                events: 1,
                overflowed: true,
                ..DrainReport::default()
            }
        );
        assert_eq!(r.read32(regs::EVENTQ_CONS), 5);
        assert_eq!((q.overflows, q.total_events), (2, 5));
        // SAFETY: never used by hardware.
        unsafe { q.free(&mut m) };
    }
}
