//! Queued invalidation (VT-d spec §6.5.2): the invalidation queue in memory, IQA/IQH/IQT
//! registers (§11.4.21 - §11.4.29), descriptor submission that never overwrites descriptors the
//! hardware has not consumed, and invalidation-wait completion with a timeout.
//!
//! IQH and IQT hold byte offsets in 128-bit units (`[18:4]`); with 256-bit descriptors
//! (IQA.DW = 1, required in scalable mode) the descriptor index is `offset / 32`. The
//! queue keeps one slot empty so that IQH == IQT always means "empty".

use core::sync::atomic::Ordering;

use crate::error::{Error, QueueError, Result, TimeoutKind};
use crate::inv::Descriptor;
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::regs::{self, field_get, field_prep, poll_until, PollTimeout, RegisterIo};

/// Largest IQA.QS value (2^7 = 128 pages).
pub const MAX_QS: u8 = 7;

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Descriptors written (including wait descriptors).
    pub descriptors: u64,
    /// Tail register writes.
    pub tail_writes: u64,
    /// Waits for free space.
    pub full_waits: u64,
}

/// The invalidation queue.
#[derive(Debug)]
pub struct InvalidationQueue {
    base: PhysAddr,
    qs: u8,
    wide: bool,
    entries: u32,
    tail: u32,
    status: PhysAddr,
    seq: u32,
    coherent: bool,
    /// Counters.
    pub stats: QueueStats,
}

impl InvalidationQueue {
    /// Allocate a queue of 2^`qs` 4KB pages with 256-bit descriptors when `wide`, and a
    /// status word for invalidation waits. `coherent`: ECAP.C.
    pub fn new<M: DmaMemory>(mem: &mut M, qs: u8, wide: bool, coherent: bool) -> Result<Self> {
        if qs > MAX_QS {
            return Err(Error::InvalidField("IQA.QS"));
        }
        let bytes = 4096usize << qs;
        // IQA requires the queue to be aligned to its size (§11.4.23).
        let base = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
        let Some(status) = mem.alloc_zeroed(64, 64) else {
            // SAFETY: `base` was just allocated with this layout and never published.
            unsafe { mem.free(base, bytes, bytes) };
            return Err(Error::OutOfMemory);
        };
        Ok(Self {
            base,
            qs,
            wide,
            entries: (bytes / if wide { 32 } else { 16 }) as u32,
            tail: 0,
            status,
            seq: 0,
            coherent,
            stats: QueueStats::default(),
        })
    }

    /// Descriptor slots.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Whether descriptors are 256-bit.
    pub fn wide(&self) -> bool {
        self.wide
    }

    /// IQA value: base, DW, QS.
    pub fn iqa(&self) -> u64 {
        (self.base.0 & regs::IQA_ADDR)
            | if self.wide { regs::IQA_DW } else { 0 }
            | field_prep(regs::IQA_QS, u64::from(self.qs))
    }

    fn shift(&self) -> u32 {
        if self.wide {
            5
        } else {
            4
        }
    }

    /// Program IQT = 0 and IQA (QI must be disabled; the caller then sets GCMD.QIE,
    /// which resets IQH to 0).
    pub fn program<R: RegisterIo>(&mut self, regs: &mut R) {
        self.tail = 0;
        regs.write64(regs::IQT, 0);
        regs.write64(regs::IQA, self.iqa());
    }

    fn head<R: RegisterIo>(&self, regs: &mut R) -> u32 {
        (field_get(regs::IQ_OFFSET, regs.read64(regs::IQH)) << 4 >> self.shift()) as u32
            % self.entries
    }

    fn free_slots(&self, head: u32) -> u32 {
        (head + self.entries - self.tail - 1) % self.entries
    }

    /// Check FSTS for queue errors; on IQE, replace the bad descriptor with a harmless
    /// wait (status write of 0) so the hardware can go on, and clear the error. ITE and
    /// ICE are cleared and reported. Reports the first error seen.
    pub fn check_errors<R: RegisterIo, M: DmaMemory>(&self, regs: &mut R, mem: &M) -> Result<()> {
        let fsts = regs.read32(regs::FSTS);
        if fsts & regs::FSTS_IQE != 0 {
            let index = self.head(regs);
            let info = field_get(regs::IQERCD_IQEI, regs.read64(regs::IQERCD)) as u8;
            // The replacement must itself be valid everywhere: QEMU rejects a wait
            // descriptor with neither SW nor IF, so it writes 0 to the status word
            // (never a sequence number the driver waits for).
            let nop = Descriptor::wait(Some((self.status.0, 0)), false, false);
            self.write_slot(mem, index, &nop);
            regs.publish_barrier();
            regs.write32(regs::FSTS, regs::FSTS_IQE);
            return Err(Error::Queue(QueueError::Iqe { index, info }));
        }
        if fsts & regs::FSTS_ITE != 0 {
            regs.write32(regs::FSTS, regs::FSTS_ITE);
            return Err(Error::Queue(QueueError::Ite));
        }
        if fsts & regs::FSTS_ICE != 0 {
            regs.write32(regs::FSTS, regs::FSTS_ICE);
            return Err(Error::Queue(QueueError::Ice));
        }
        Ok(())
    }

    fn write_slot<M: DmaMemory>(&self, mem: &M, index: u32, d: &Descriptor) {
        let n = if self.wide { 4 } else { 2 };
        let pa = PhysAddr(self.base.0 + u64::from(index) * n as u64 * 8);
        // SAFETY: `index < entries`, so the slot's `n` words lie inside the live queue
        // region allocated in `new` (freed only by `destroy`, which consumes `self`).
        let w = unsafe { Words::new(mem, pa, n) };
        for (i, v) in d.0[..n].iter().enumerate() {
            w.store(i, *v);
        }
        if !self.coherent {
            mem.flush(pa, n * 8);
        }
    }

    /// Write `descs` and advance IQT. Before each descriptor the free space is computed
    /// from IQH; when the queue is full the tail is published and IQH polled (with the
    /// timeout) until a slot frees, so unconsumed descriptors are never overwritten.
    pub fn submit<R: RegisterIo, M: DmaMemory, T: PollTimeout>(
        &mut self,
        regs: &mut R,
        mem: &M,
        timeout: &mut T,
        descs: &[Descriptor],
    ) -> Result<()> {
        let mut head = self.head(regs);
        let mut pending = false;
        for d in descs {
            if self.free_slots(head) == 0 {
                head = self.head(regs);
            }
            if self.free_slots(head) == 0 {
                if pending {
                    self.publish_tail(regs);
                }
                self.stats.full_waits += 1;
                let mut err = Ok(());
                let ok = poll_until(timeout, || {
                    err = self.check_errors(regs, mem);
                    head = self.head(regs);
                    err.is_err() || self.free_slots(head) > 0
                });
                err?;
                if !ok {
                    return Err(Error::Timeout(TimeoutKind::QueueSpace));
                }
            }
            self.write_slot(mem, self.tail, d);
            self.tail = (self.tail + 1) % self.entries;
            self.stats.descriptors += 1;
            pending = true;
        }
        if pending {
            self.publish_tail(regs);
        }
        Ok(())
    }

    fn publish_tail<R: RegisterIo>(&mut self, regs: &mut R) {
        // The descriptors must be visible before the hardware sees the new tail.
        regs.publish_barrier();
        regs.write64(regs::IQT, u64::from(self.tail) << self.shift());
        self.stats.tail_writes += 1;
    }

    fn status_word<M: DmaMemory>(&self, mem: &M) -> u32 {
        // SAFETY: `status` is the live 64-byte region allocated in `new`.
        let w = unsafe { Words::new(mem, self.status, 1) };
        // The hardware writes 32 bits at the (8-byte aligned) status address: the low
        // half of the little-endian word.
        (u64::from_le(w.atomics()[0].load(Ordering::Acquire)) & 0xffff_ffff) as u32
    }

    /// Submit `descs` followed by an invalidation wait (SW + FN) and poll, with the
    /// timeout, until its status write arrives. Queue errors (FSTS.IQE/ITE/ICE) are
    /// reported as [`Error::Queue`].
    pub fn submit_and_wait<R: RegisterIo, M: DmaMemory, T: PollTimeout>(
        &mut self,
        regs: &mut R,
        mem: &M,
        timeout: &mut T,
        descs: &[Descriptor],
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1; // 0 is the initial status value
        }
        let seq = self.seq;
        let wait = Descriptor::wait(Some((self.status.0, seq)), true, false);
        // Any earlier failure must not be confused with this batch.
        self.check_errors(regs, mem)?;
        for chunk in descs.chunks(self.entries as usize / 2) {
            self.submit(regs, mem, timeout, chunk)?;
        }
        self.submit(regs, mem, timeout, &[wait])?;
        let mut err = Ok(());
        let done = poll_until(timeout, || {
            if self.status_word(mem) == seq {
                return true;
            }
            err = self.check_errors(regs, mem);
            err.is_err()
        });
        err?;
        if !done {
            return Err(Error::Timeout(TimeoutKind::InvalidationWait));
        }
        Ok(())
    }

    /// Free the queue memory.
    ///
    /// # Safety
    /// Queued invalidation must be disabled (GSTS.QIES = 0) or the hardware otherwise
    /// stopped from reading the queue and writing the status word.
    pub unsafe fn destroy<M: DmaMemory>(self, mem: &mut M) {
        // SAFETY: both regions were allocated in `new` with these layouts; the caller
        // guarantees the hardware no longer uses them.
        unsafe {
            mem.free(self.base, 4096 << self.qs, 4096 << self.qs);
            mem.free(self.status, 64, 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inv::{ContextInvalidation, IotlbInvalidation, TYPE_IOTLB, TYPE_WAIT};
    use crate::mem::IdentityHeap;
    use crate::model::Model;
    use crate::regs::PollBudget;

    fn enabled(m: &mut Model, q: &mut InvalidationQueue) {
        q.program(m);
        m.write32(regs::GCMD, regs::GCMD_QIE);
    }

    #[test]
    fn iqa_encoding() {
        let mut mem = IdentityHeap::new();
        let q = InvalidationQueue::new(&mut mem, 1, true, true).unwrap();
        assert_eq!(q.entries(), 256);
        assert_eq!(q.iqa() & 0x1fff, 0x801, "8KB queue aligned to 8KB");
        assert_eq!(q.iqa() & 0xfff, 0x801);
        let n = InvalidationQueue::new(&mut mem, 0, false, true).unwrap();
        assert_eq!(n.entries(), 256);
        assert_eq!(n.iqa() & 0xfff, 0);
        assert!(InvalidationQueue::new(&mut mem, 8, false, true).is_err());
        // SAFETY: never enabled.
        unsafe {
            q.destroy(&mut mem);
            n.destroy(&mut mem);
        }
        assert_eq!(mem.live_regions, 0);
    }

    #[test]
    fn wait_completes_and_tail_wraps() {
        for wide in [false, true] {
            let mut mem = IdentityHeap::new();
            let mut m = Model::qemu_legacy();
            let mut q = InvalidationQueue::new(&mut mem, 0, wide, true).unwrap();
            enabled(&mut m, &mut q);
            let mut t = PollBudget::new(100);
            let d = Descriptor::iotlb(IotlbInvalidation::Domain(1), false);
            // 3 descriptors per round over 300 rounds: wraps several times.
            for _ in 0..300 {
                q.submit_and_wait(&mut m, &mem, &mut t, &[d, d]).unwrap();
            }
            assert_eq!(m.descriptors.len(), 900);
            assert_eq!(m.descriptors[0].kind(), TYPE_IOTLB);
            assert_eq!(m.descriptors[2].kind(), TYPE_WAIT);
            assert_eq!(m.read64(regs::IQH), m.read64(regs::IQT));
            assert_eq!(m.read64(regs::IQT) & if wide { 0x1f } else { 0xf }, 0);
        }
    }

    #[test]
    fn never_overwrites_unconsumed_descriptors() {
        let mut mem = IdentityHeap::new();
        let mut m = Model::qemu_legacy();
        let mut q = InvalidationQueue::new(&mut mem, 0, false, true).unwrap();
        enabled(&mut m, &mut q);
        m.consume_limit = Some(0); // hardware stalls
        let d = Descriptor::context_cache(ContextInvalidation::Global);
        let batch = std::vec![d; 300];
        let mut t = PollBudget::new(5);
        assert_eq!(
            q.submit(&mut m, &mem, &mut t, &batch),
            Err(Error::Timeout(TimeoutKind::QueueSpace))
        );
        // Exactly entries - 1 descriptors were written; the tail never caught the head.
        assert_eq!(q.stats.descriptors, 255);
        assert_eq!(m.read64(regs::IQT) >> 4, 255);
        // The hardware resumes: everything already queued is consumed in order.
        m.consume_limit = None;
        m.kick();
        assert_eq!(m.descriptors.len(), 255);
        // A later batch that must wait for space succeeds once the head moves.
        m.consume_limit = Some(10);
        let mut t = PollBudget::new(1000);
        q.submit_and_wait(&mut m, &mem, &mut t, &batch).unwrap();
        assert_eq!(m.descriptors.len(), 255 + 301);
        assert!(q.stats.full_waits > 0);
    }

    #[test]
    fn wait_timeout_and_queue_errors_are_reported() {
        let mut mem = IdentityHeap::new();
        let mut m = Model::qemu_legacy();
        let mut q = InvalidationQueue::new(&mut mem, 0, false, true).unwrap();
        enabled(&mut m, &mut q);
        m.consume_limit = Some(0);
        let mut t = PollBudget::new(10);
        assert_eq!(
            q.submit_and_wait(&mut m, &mem, &mut t, &[]),
            Err(Error::Timeout(TimeoutKind::InvalidationWait))
        );
        m.consume_limit = None;
        m.kick();
        // A descriptor of an undefined type stops the queue with IQE.
        let bad = Descriptor([0xf, 0, 0, 0]);
        let r = q.submit_and_wait(&mut m, &mem, &mut t, &[bad]);
        assert_eq!(r, Err(Error::Queue(QueueError::Iqe { index: 1, info: 0 })));
        assert_eq!(m.read32(regs::FSTS) & regs::FSTS_IQE, 0, "IQE cleared");
        // The queue goes on after recovery.
        q.submit_and_wait(&mut m, &mem, &mut t, &[]).unwrap();
        m.raise_fsts(regs::FSTS_ITE);
        assert_eq!(
            q.submit_and_wait(&mut m, &mem, &mut t, &[]),
            Err(Error::Queue(QueueError::Ite))
        );
        m.raise_fsts(regs::FSTS_ICE);
        assert_eq!(
            q.check_errors(&mut m, &mem),
            Err(Error::Queue(QueueError::Ice))
        );
        assert_eq!(q.check_errors(&mut m, &mem), Ok(()));
    }
}
