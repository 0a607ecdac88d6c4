//! The output queue readers: the event queue (SMMUv3 spec §3.5 queues, §6.3
//! SMMU_EVENTQ_BASE/PROD/CONS, §7.4 "Event queue overflow") and the PRI queue (§6.3
//! SMMU_PRIQ_BASE/PROD/CONS, chapter 8 "Page request queue"), which differ only in their
//! record size, their registers and how a record decodes.
//!
//! The SMMU writes records and advances the queue's PROD register (register page 1). When
//! it had to drop a record because the queue was full it toggles PROD.OVFLG; the reader
//! notices OVFLG differing from its CONS.OVACKFLG, counts the overflow and acknowledges by
//! copying OVFLG into CONS.OVACKFLG with its next CONS write.

use crate::error::{Error, Result};
use crate::event::{Event, EVT_BYTES};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::priq::{PriRecord, PRIQ_BYTES};
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
    /// SMMU_GERROR.EVENTQ_ABT_ERR (or PRIQ_ABT_ERR) was active: the SMMU failed to write
    /// a record, which was lost. QEMU 7.2 reports an event record dropped on a full queue
    /// this way instead of toggling PROD.OVFLG. Set (and acknowledged) by
    /// [`Smmu::drain_events`](crate::Smmu::drain_events) and
    /// [`Smmu::drain_page_requests`](crate::Smmu::drain_page_requests);
    /// [`OutputQueue::drain`] alone leaves it false.
    pub write_aborted: bool,
}

impl DrainReport {
    /// Records were lost: an overflow or a queue write abort was reported.
    pub fn lost_records(&self) -> bool {
        self.overflowed || self.write_aborted
    }
}

/// A record the SMMU writes into one of its output queues.
pub trait QueueRecord: Sized {
    /// Record size in bytes (a multiple of 8).
    const BYTES: usize;
    /// Offset of the queue's SMMU_*_BASE register.
    const BASE: usize;
    /// Offset of its SMMU_*_PROD register (page 1).
    const PROD: usize;
    /// Offset of its SMMU_*_CONS register (page 1).
    const CONS: usize;
    /// Decodes the record's words (`BYTES / 8` of them); total, never fails.
    fn decode(words: &[u64]) -> Self;
}

impl QueueRecord for Event {
    const BYTES: usize = EVT_BYTES;
    const BASE: usize = regs::EVENTQ_BASE;
    const PROD: usize = regs::EVENTQ_PROD;
    const CONS: usize = regs::EVENTQ_CONS;
    fn decode(w: &[u64]) -> Self {
        Event::decode([w[0], w[1], w[2], w[3]])
    }
}

impl QueueRecord for PriRecord {
    const BYTES: usize = PRIQ_BYTES;
    const BASE: usize = regs::PRIQ_BASE;
    const PROD: usize = regs::PRIQ_PROD;
    const CONS: usize = regs::PRIQ_CONS;
    fn decode(w: &[u64]) -> Self {
        PriRecord::decode([w[0], w[1]])
    }
}

/// The event queue.
pub type EventQueue = OutputQueue<Event>;

/// The PRI queue.
pub type PriQueue = OutputQueue<PriRecord>;

/// An output queue: records of type `T` written by the SMMU, read by the driver.
#[derive(Debug)]
pub struct OutputQueue<T> {
    q: QueueIndex,
    base: PhysAddr,
    ring: Words,
    cons: u32,
    /// Overflows seen so far (each means at least one record was lost).
    pub overflows: u64,
    /// Records read so far.
    pub total_events: u64,
    _record: core::marker::PhantomData<fn() -> T>,
}

impl<T: QueueRecord> OutputQueue<T> {
    const WORDS: usize = T::BYTES / 8;

    /// Allocate a queue of `2^log2` records, aligned to its size.
    pub fn new<M: DmaMemory>(mem: &mut M, log2: u8) -> Result<Self> {
        if log2 > 19 {
            return Err(Error::InvalidField("queue size"));
        }
        let q = QueueIndex::new(log2);
        let bytes = q.entries() as usize * T::BYTES;
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
            _record: core::marker::PhantomData,
        })
    }

    /// Free the ring.
    ///
    /// # Safety
    /// The SMMU must no longer write the queue (its CR0 enable bit clear and
    /// acknowledged).
    pub unsafe fn free<M: DmaMemory>(self, mem: &mut M) {
        let bytes = self.q.entries() as usize * T::BYTES;
        // SAFETY: allocated in `new` with this layout; unused per the caller.
        unsafe { mem.free(self.base, bytes, bytes) }
    }

    /// Value for the queue's SMMU_*_BASE register.
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
        regs.write64(T::BASE, self.base_register());
        regs.write32(T::PROD, 0);
        regs.write32(T::CONS, 0);
    }

    /// Hand every pending record to `f`, then acknowledge them (and any overflow).
    /// At most one queue's worth of records is read per call.
    pub fn drain<R: RegisterIo>(&mut self, regs: &mut R, mut f: impl FnMut(T)) -> DrainReport {
        let prod = regs.read32(T::PROD);
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
        let mut w = [0u64; 4];
        while n > 0 {
            let i = self.q.idx(self.cons) as usize * Self::WORDS;
            for (k, word) in w[..Self::WORDS].iter_mut().enumerate() {
                *word = self.ring.load(i + k);
            }
            f(T::decode(&w[..Self::WORDS]));
            report.events += 1;
            self.cons = self.q.inc(self.cons, 1);
            n -= 1;
        }
        self.total_events += u64::from(report.events);
        self.cons = (self.cons & !Q_OVERFLOW_FLAG) | ovf;
        if report.events > 0 || report.overflowed {
            regs.write32(T::CONS, self.cons);
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
