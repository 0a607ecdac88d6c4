//! The command queue driver (SMMUv3 spec §3.5 queues, §6.3 SMMU_CMDQ_BASE/PROD/CONS,
//! §7.1 "Command queue errors").
//!
//! Commands are written into the ring in memory, then published by writing
//! SMMU_CMDQ_PROD. A CMD_SYNC (CS = SIG_NONE) completes when SMMU_CMDQ_CONS moves past
//! it, which the driver polls with a caller-supplied [`PollTimeout`].
//!
//! Errors: when the SMMU meets a command it cannot process it stops with CMDQ_CONS.RD
//! at that command, records the reason in CMDQ_CONS.ERR and toggles GERROR.CMDQ_ERR.
//! Recovery as the spec describes: software fixes the queue and acknowledges by toggling
//! GERRORN.CMDQ_ERR to match, after which consumption restarts at CONS. This driver
//! replaces an illegal or aborted command with a CMD_SYNC (which has no effect of its
//! own), leaves a CMD_SYNC that hit an ATC invalidation timeout in place (so it is
//! retried), acknowledges, keeps waiting, and reports the failure with the queue index
//! and opcode of the failing command.

use crate::cmd::{Command, SyncSignal, CMD_BYTES};
use crate::error::{CommandErrorCode, Error, Result, TimeoutKind};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::queue::QueueIndex;
use crate::regs::{self, PollTimeout, RegisterIo};

/// Counters for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdqStats {
    /// Commands written (including syncs).
    pub commands: u64,
    /// CMD_SYNCs written.
    pub syncs: u64,
    /// Command errors recovered.
    pub errors: u64,
}

/// The command queue.
#[derive(Debug)]
pub struct CommandQueue {
    q: QueueIndex,
    base: PhysAddr,
    ring: Words,
    prod: u32,
    cons: u32,
    /// Counters.
    pub stats: CmdqStats,
}

impl CommandQueue {
    /// Allocate a queue of `2^log2` entries (aligned to its size, as SMMU_CMDQ_BASE needs).
    pub fn new<M: DmaMemory>(mem: &mut M, log2: u8) -> Result<Self> {
        if log2 > 19 {
            return Err(Error::InvalidField("CMDQ size"));
        }
        let q = QueueIndex::new(log2);
        let bytes = (q.entries() as usize * CMD_BYTES).max(32);
        let base = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
        // SAFETY: `base` is a live region of `bytes` bytes owned by this queue.
        let ring = unsafe { Words::new(mem, base, bytes / 8) };
        Ok(Self {
            q,
            base,
            ring,
            prod: 0,
            cons: 0,
            stats: CmdqStats::default(),
        })
    }

    /// Free the ring.
    ///
    /// # Safety
    /// The SMMU must no longer read the queue (CR0.CMDQEN = 0 acknowledged).
    pub unsafe fn free<M: DmaMemory>(self, mem: &mut M) {
        let bytes = (self.q.entries() as usize * CMD_BYTES).max(32);
        // SAFETY: allocated in `new` with this layout; unused per the caller.
        unsafe { mem.free(self.base, bytes, bytes) }
    }

    /// Value for SMMU_CMDQ_BASE.
    pub fn base_register(&self) -> u64 {
        regs::Q_BASE_RWA | (self.base.0 & regs::Q_BASE_ADDR) | u64::from(self.q.log2())
    }

    /// Index geometry.
    pub fn geometry(&self) -> QueueIndex {
        self.q
    }

    /// Producer value last published.
    pub fn prod(&self) -> u32 {
        self.prod
    }

    /// Reset the indices (with the queue disabled) and program base/PROD/CONS.
    pub fn program<R: RegisterIo>(&mut self, regs: &mut R) {
        self.prod = 0;
        self.cons = 0;
        regs.write64(regs::CMDQ_BASE, self.base_register());
        regs.write32(regs::CMDQ_PROD, 0);
        regs.write32(regs::CMDQ_CONS, 0);
    }

    fn write_entry(&self, pos: u32, w: [u64; 2]) {
        let i = self.q.idx(pos) as usize * 2;
        self.ring.store(i, w[0]);
        self.ring.store(i + 1, w[1]);
    }

    /// Check GERROR for a command queue error; recover as the spec describes and return
    /// it. Other active global errors are returned as [`Error::GlobalError`].
    fn check_errors<R: RegisterIo>(&mut self, regs: &mut R) -> Option<Error> {
        let gerror = regs.read32(regs::GERROR);
        let gerrorn = regs.read32(regs::GERRORN);
        let active = (gerror ^ gerrorn) & regs::GERROR_ERR_MASK;
        if active & regs::GERROR_CMDQ_ERR != 0 {
            let cons = regs.read32(regs::CMDQ_CONS);
            let code = CommandErrorCode::from_raw(((cons & regs::CMDQ_CONS_ERR) >> 24) as u8);
            let index = self.q.idx_wrap(cons);
            let slot = self.q.idx(cons) as usize * 2;
            let opcode = (self.ring.load(slot) & 0xff) as u8;
            if code != CommandErrorCode::AtcInvalidationSync {
                self.write_entry(cons, Command::Sync(SyncSignal::None).encode());
            }
            // The replacement must be visible before the SMMU resumes.
            regs.publish_barrier();
            regs.write32(regs::GERRORN, gerrorn ^ regs::GERROR_CMDQ_ERR);
            self.stats.errors += 1;
            return Some(Error::Command {
                code,
                index,
                opcode,
            });
        }
        if active != 0 {
            return Some(Error::GlobalError(active));
        }
        None
    }

    /// Write `cmds` to the ring and publish them, waiting for space when the ring is full.
    pub fn issue<R: RegisterIo, T: PollTimeout>(
        &mut self,
        regs: &mut R,
        timeout: &mut T,
        cmds: &[Command],
    ) -> Result<()> {
        self.issue_iter(regs, timeout, cmds.iter().copied())
    }

    /// As [`issue`](Self::issue), from an iterator (for example a
    /// [`TlbiPlan`](crate::tlbi::TlbiPlan)).
    pub fn issue_iter<R: RegisterIo, T: PollTimeout>(
        &mut self,
        regs: &mut R,
        timeout: &mut T,
        cmds: impl IntoIterator<Item = Command>,
    ) -> Result<()> {
        let mut pending = 0u32;
        let mut first_error = None;
        for c in cmds {
            if !self.q.has_space(self.prod, self.cons, 1) {
                if pending > 0 {
                    self.publish(regs);
                    pending = 0;
                }
                self.wait_space(regs, timeout, &mut first_error)?;
            }
            if c.opcode() == crate::cmd::CMDQ_OP_CMD_SYNC {
                self.stats.syncs += 1;
            }
            self.write_entry(self.prod, c.encode());
            self.prod = self.q.inc(self.prod, 1);
            self.stats.commands += 1;
            pending += 1;
        }
        if pending > 0 {
            self.publish(regs);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn publish<R: RegisterIo>(&mut self, regs: &mut R) {
        // Entries must be visible to the SMMU before the new PROD value.
        regs.publish_barrier();
        regs.write32(regs::CMDQ_PROD, self.prod);
    }

    fn wait_space<R: RegisterIo, T: PollTimeout>(
        &mut self,
        regs: &mut R,
        timeout: &mut T,
        first_error: &mut Option<Error>,
    ) -> Result<()> {
        timeout.start();
        loop {
            self.cons = self.q.idx_wrap(regs.read32(regs::CMDQ_CONS));
            if self.q.has_space(self.prod, self.cons, 1) {
                return Ok(());
            }
            match self.check_errors(regs) {
                Some(e @ Error::Command { .. }) => {
                    first_error.get_or_insert(e);
                }
                Some(e) => return Err(e),
                None => {}
            }
            if timeout.expired() {
                return Err(Error::Timeout(TimeoutKind::CommandQueueSpace));
            }
            core::hint::spin_loop();
        }
    }

    /// Issue a CMD_SYNC (SIG_NONE) and wait until the SMMU consumed it, which means every
    /// earlier command completed. A command error seen while waiting is recovered and
    /// reported after the sync completed.
    pub fn sync<R: RegisterIo, T: PollTimeout>(
        &mut self,
        regs: &mut R,
        timeout: &mut T,
    ) -> Result<()> {
        let mut first_error = self
            .issue(regs, timeout, &[Command::Sync(SyncSignal::None)])
            .err();
        if let Some(e) = first_error {
            if !matches!(e, Error::Command { .. }) {
                return Err(e);
            }
        }
        let target = self.q.inc(self.prod, self.q.entries() * 2 - 1);
        timeout.start();
        loop {
            self.cons = self.q.idx_wrap(regs.read32(regs::CMDQ_CONS));
            if self.q.consumed(self.cons, target) {
                break;
            }
            match self.check_errors(regs) {
                Some(e @ Error::Command { .. }) => {
                    first_error.get_or_insert(e);
                    continue;
                }
                Some(e) => return Err(e),
                None => {}
            }
            if timeout.expired() {
                return Err(Error::Timeout(TimeoutKind::CommandSync));
            }
            core::hint::spin_loop();
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Issue `cmds` followed by a CMD_SYNC and wait for it.
    pub fn issue_and_sync<R: RegisterIo, T: PollTimeout>(
        &mut self,
        regs: &mut R,
        timeout: &mut T,
        cmds: &[Command],
    ) -> Result<()> {
        let r = self.issue(regs, timeout, cmds);
        let s = self.sync(regs, timeout);
        r.and(s)
    }
}
