//! A behavioural model of an SMMU's register interface for host tests: CR0ACK and
//! IRQ_CTRLACK follow their registers, a PROD write consumes the command queue from
//! memory (recording each command), selected opcodes can be made to fail with
//! CERROR_ILL, and events can be injected into the event queue.

extern crate std;

use std::collections::HashMap;
use std::vec::Vec;

use crate::cmd::Command;
use crate::features::{IdRegs, QEMU_7_2_IDREGS};
use crate::queue::QueueIndex;
use crate::regs::{self, RegisterIo};

pub(crate) struct FakeSmmu {
    regs: HashMap<usize, u64>,
    pub id: IdRegs,
    /// Every command consumed, in order.
    pub commands: Vec<Command>,
    /// Opcode answered with `fail_code` (CERROR_ILL by default).
    pub fail_opcode: Option<u8>,
    /// CMDQ_CONS.ERR value reported for `fail_opcode`.
    pub fail_code: u8,
    /// Fail only the first time.
    pub fail_once: bool,
    /// CR0ACK never follows CR0.
    pub stuck_ack: bool,
    /// CMDQ_CONS never moves.
    pub stuck_cons: bool,
    error_pending: bool,
    /// Register writes in order.
    pub writes: Vec<(usize, u64)>,
}

impl FakeSmmu {
    pub fn new() -> Self {
        Self::with_id(QEMU_7_2_IDREGS)
    }

    pub fn with_id(id: IdRegs) -> Self {
        Self {
            regs: HashMap::new(),
            id,
            commands: Vec::new(),
            fail_opcode: None,
            fail_code: 1,
            fail_once: false,
            stuck_ack: false,
            stuck_cons: false,
            error_pending: false,
            writes: Vec::new(),
        }
    }

    fn get(&self, o: usize) -> u64 {
        *self.regs.get(&o).unwrap_or(&0)
    }

    fn ring(&self, base_reg: usize) -> (*mut u64, QueueIndex) {
        let b = self.get(base_reg);
        (
            (b & regs::Q_BASE_ADDR) as *mut u64,
            QueueIndex::new((b & regs::Q_BASE_LOG2SIZE) as u8),
        )
    }

    fn process(&mut self) {
        if self.stuck_cons
            || self.error_pending
            || self.get(regs::CR0) as u32 & regs::CR0_CMDQEN == 0
        {
            return;
        }
        let (ring, q) = self.ring(regs::CMDQ_BASE);
        let prod = self.get(regs::CMDQ_PROD) as u32;
        let mut cons = q.idx_wrap(self.get(regs::CMDQ_CONS) as u32);
        while !q.empty(prod, cons) {
            let i = q.idx(cons) as usize * 2;
            // SAFETY: the ring was allocated by the driver from `IdentityHeap` (identity
            // mapped), is live for the test and holds `entries * 2` words.
            let w = unsafe { [u64::from_le(*ring.add(i)), u64::from_le(*ring.add(i + 1))] };
            let op = (w[0] & 0xff) as u8;
            if Some(op) == self.fail_opcode {
                self.error_pending = true;
                if self.fail_once {
                    self.fail_opcode = None;
                }
                let err = u32::from(self.fail_code) << 24;
                self.regs.insert(regs::CMDQ_CONS, u64::from(cons | err));
                let g = self.get(regs::GERROR) as u32 ^ regs::GERROR_CMDQ_ERR;
                self.regs.insert(regs::GERROR, u64::from(g));
                return;
            }
            self.commands
                .push(Command::decode(w).expect("driver wrote a valid command"));
            cons = q.inc(cons, 1);
        }
        self.regs.insert(regs::CMDQ_CONS, u64::from(cons));
    }

    /// Toggle GERROR bits (raise global errors).
    pub fn raise_gerror(&mut self, bits: u32) {
        let g = self.get(regs::GERROR) as u32 ^ bits;
        self.regs.insert(regs::GERROR, u64::from(g));
    }

    /// Write an event record at PROD, as the SMMU would; on a full queue drop it and
    /// toggle OVFLG.
    pub fn push_event(&mut self, rec: [u64; 4]) {
        let (ring, q) = self.ring(regs::EVENTQ_BASE);
        let prod = self.get(regs::EVENTQ_PROD) as u32;
        let cons = self.get(regs::EVENTQ_CONS) as u32;
        if q.full(prod, cons) {
            self.regs
                .insert(regs::EVENTQ_PROD, u64::from(prod ^ regs::Q_OVERFLOW_FLAG));
            return;
        }
        let i = q.idx(prod) as usize * 4;
        for (k, w) in rec.iter().enumerate() {
            // SAFETY: the ring is the driver's live, identity-mapped event queue with
            // `entries * 4` words.
            unsafe { *ring.add(i + k) = w.to_le() };
        }
        self.regs
            .insert(regs::EVENTQ_PROD, u64::from(q.inc(prod, 1)));
    }
}

impl RegisterIo for FakeSmmu {
    fn read32(&mut self, o: usize) -> u32 {
        match o {
            regs::IDR0 => self.id.idr[0],
            regs::IDR1 => self.id.idr[1],
            regs::IDR2 => self.id.idr[2],
            regs::IDR3 => self.id.idr[3],
            regs::IDR4 => self.id.idr[4],
            regs::IDR5 => self.id.idr[5],
            regs::AIDR => self.id.aidr,
            regs::CR0ACK if self.stuck_ack => 0x5a,
            regs::CR0ACK => self.get(regs::CR0) as u32,
            regs::IRQ_CTRLACK => self.get(regs::IRQ_CTRL) as u32,
            _ => self.get(o) as u32,
        }
    }

    fn write32(&mut self, o: usize, v: u32) {
        self.writes.push((o, u64::from(v)));
        self.regs.insert(o, u64::from(v));
        match o {
            regs::CMDQ_PROD | regs::CR0 => self.process(),
            regs::GERRORN
                if (self.get(regs::GERROR) ^ u64::from(v)) as u32 & regs::GERROR_CMDQ_ERR == 0 =>
            {
                self.error_pending = false;
                let c = self.get(regs::CMDQ_CONS) & !(0x7f << 24);
                self.regs.insert(regs::CMDQ_CONS, c);
                self.process();
            }
            _ => {}
        }
    }

    fn read64(&mut self, o: usize) -> u64 {
        self.get(o)
    }

    fn write64(&mut self, o: usize, v: u64) {
        self.writes.push((o, v));
        self.regs.insert(o, v);
    }
}
