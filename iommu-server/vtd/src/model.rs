//! A behavioural model of a remapping unit's registers for host tests: GSTS follows GCMD
//! (one-shot SRTP/WBF complete at once), CCMD.ICC and IOTLB_REG.IVT clear with the
//! requested granularity as the actual one, the invalidation queue is consumed from
//! memory (wait descriptors write their status), undefined descriptor types raise
//! FSTS.IQE, fault records and page requests can be injected, and PRS is
//! write-1-to-clear. Knobs make each acknowledgement stall; a watched memory word is
//! sampled as each descriptor is consumed, so tests see what the hardware saw then.
//!
//! Like QEMU 7.2, register-based invalidation is ignored while queued invalidation is
//! enabled (ICC/IVT stay set).

use std::collections::HashMap;
use std::vec::Vec;

use crate::caps::{QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY, QEMU_7_2_ECAP_SCALABLE};
use crate::inv::Descriptor;
use crate::regs::{self, field_get, field_prep, RegisterIo};

pub(crate) struct Model {
    regs: HashMap<usize, u64>,
    pub ver: u32,
    pub cap: u64,
    pub ecap: u64,
    /// GSTS never follows GCMD.
    pub stuck_gsts: bool,
    /// CCMD.ICC never clears.
    pub stuck_ccmd: bool,
    /// IOTLB_REG.IVT never clears.
    pub stuck_iotlb: bool,
    /// Descriptors consumed per register access (None: all; Some(0): stalled queue).
    pub consume_limit: Option<usize>,
    /// Descriptors consumed, in order.
    pub descriptors: Vec<Descriptor>,
    /// CCMD values written with ICC.
    pub ccmd_log: Vec<u64>,
    /// (IVA, IOTLB_REG) pairs written with IVT.
    pub iotlb_log: Vec<(u64, u64)>,
    /// GCMD values written.
    pub gcmd_log: Vec<u32>,
    /// RTADDR latched by the last SRTP.
    pub active_root: Option<u64>,
    /// A memory word to sample whenever a descriptor is consumed.
    pub watch: Option<u64>,
    /// (descriptor type, watched word) at each consumption.
    pub watched: Vec<(u64, u64)>,
}

impl Model {
    pub fn new(cap: u64, ecap: u64) -> Self {
        Self {
            regs: HashMap::new(),
            ver: 0x10,
            cap,
            ecap,
            stuck_gsts: false,
            stuck_ccmd: false,
            stuck_iotlb: false,
            consume_limit: None,
            descriptors: Vec::new(),
            ccmd_log: Vec::new(),
            iotlb_log: Vec::new(),
            gcmd_log: Vec::new(),
            active_root: None,
            watch: None,
            watched: Vec::new(),
        }
    }

    pub fn qemu_legacy() -> Self {
        Self::new(QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY)
    }

    pub fn qemu_scalable() -> Self {
        Self::new(QEMU_7_2_CAP, QEMU_7_2_ECAP_SCALABLE)
    }

    fn get(&self, o: usize) -> u64 {
        *self.regs.get(&o).unwrap_or(&0)
    }

    fn set(&mut self, o: usize, v: u64) {
        self.regs.insert(o, v);
    }

    fn iotlb_base(&self) -> usize {
        regs::iotlb_reg(field_get(crate::caps::ECAP_IRO, self.ecap) as u16)
    }

    fn fro(&self) -> u16 {
        field_get(crate::caps::CAP_FRO, self.cap) as u16
    }

    fn nfr(&self) -> u16 {
        field_get(crate::caps::CAP_NFR, self.cap) as u16 + 1
    }

    fn qi_enabled(&self) -> bool {
        self.get(regs::GSTS) as u32 & regs::GCMD_QIE != 0
    }

    pub fn raise_fsts(&mut self, bits: u32) {
        let f = self.get(regs::FSTS) | u64::from(bits);
        self.set(regs::FSTS, f);
    }

    /// Record a fault in register `index` as the hardware would.
    pub fn inject_fault(&mut self, index: u16, lo: u64, hi: u64) {
        let o = regs::frcd_reg(self.fro(), index);
        if self.get(o + 8) & regs::FRCD_HI_F != 0 {
            self.raise_fsts(regs::FSTS_PFO);
            return;
        }
        self.set(o, lo);
        self.set(o + 8, hi | regs::FRCD_HI_F);
        let fsts = self.get(regs::FSTS);
        if fsts & u64::from(regs::FSTS_PPF) == 0 {
            let f = (fsts & !regs::FSTS_FRI) | field_prep(regs::FSTS_FRI, u64::from(index));
            self.set(regs::FSTS, f | u64::from(regs::FSTS_PPF));
        }
    }

    /// Write a page request descriptor at PQT as the hardware would (§7.5.1): the slot
    /// in the queue PQA names, PQT advanced, PRS.PPR set. A full queue sets PRS.PRO
    /// instead and drops the request.
    pub fn push_page_request(&mut self, words: [u64; 4]) {
        let pqa = self.get(regs::PQA);
        let entries = (4096u64 << (pqa & regs::PQA_PQS)) / 32;
        let head = ((self.get(regs::PQH) & regs::PQ_INDEX) >> 5) % entries;
        let tail = ((self.get(regs::PQT) & regs::PQ_INDEX) >> 5) % entries;
        if (tail + 1) % entries == head {
            let prs = self.get(regs::PRS) | u64::from(regs::PRS_PRO);
            self.set(regs::PRS, prs);
            return;
        }
        let slot = ((pqa & regs::PQA_ADDR) + tail * 32) as *mut u64;
        for (k, w) in words.iter().enumerate() {
            // SAFETY: the queue was allocated by the driver from `IdentityHeap`
            // (identity mapped), is live for the test and holds `entries` slots.
            unsafe { *slot.add(k) = w.to_le() };
        }
        self.set(regs::PQT, ((tail + 1) % entries) << 5);
        let prs = self.get(regs::PRS) | u64::from(regs::PRS_PPR);
        self.set(regs::PRS, prs);
    }

    fn update_ppf(&mut self) {
        let any = (0..self.nfr())
            .any(|i| self.get(regs::frcd_reg(self.fro(), i) + 8) & regs::FRCD_HI_F != 0);
        let f = self.get(regs::FSTS) & !u64::from(regs::FSTS_PPF);
        self.set(
            regs::FSTS,
            f | if any { u64::from(regs::FSTS_PPF) } else { 0 },
        );
    }

    /// Consume queued descriptors (up to `consume_limit`).
    pub fn kick(&mut self) {
        if !self.qi_enabled() || self.get(regs::FSTS) as u32 & regs::FSTS_IQE != 0 {
            return;
        }
        let iqa = self.get(regs::IQA);
        let wide = iqa & regs::IQA_DW != 0;
        let (shift, words) = if wide { (5, 4) } else { (4, 2) };
        let entries = (4096u64 << (iqa & regs::IQA_QS)) >> shift;
        let base = (iqa & regs::IQA_ADDR) as *mut u64;
        let mut head = (self.get(regs::IQH) & regs::IQ_OFFSET) >> shift;
        let tail = (self.get(regs::IQT) & regs::IQ_OFFSET) >> shift;
        let mut n = 0;
        while head != tail && self.consume_limit.is_none_or(|l| n < l) {
            let mut d = Descriptor::default();
            for (k, w) in d.0.iter_mut().take(words).enumerate() {
                // SAFETY: the queue was allocated by the driver from `IdentityHeap`
                // (identity mapped), is live for the test and holds `entries` slots.
                *w = u64::from_le(unsafe { *base.add(head as usize * words + k) });
            }
            let wait_flags = crate::inv::WAIT_SW | crate::inv::WAIT_IF;
            let valid = match d.kind() {
                // Like QEMU 7.2: a wait descriptor must write status or interrupt.
                crate::inv::TYPE_WAIT => d.0[0] & wait_flags != 0,
                1..=9 => true,
                _ => false,
            };
            if !valid || (wide && (d.0[2] | d.0[3]) != 0) {
                self.raise_fsts(regs::FSTS_IQE);
                break;
            }
            if d.kind() == crate::inv::TYPE_WAIT && d.0[0] & crate::inv::WAIT_SW != 0 {
                let addr = (d.0[1] & crate::inv::WAIT_STATUS_ADDR) as *mut u32;
                // SAFETY: the status address is the driver's live, identity-mapped,
                // 4-byte aligned status word.
                unsafe { *addr = ((d.0[0] >> 32) as u32).to_le() };
            }
            if let Some(a) = self.watch {
                // SAFETY: tests watch a word of a live, identity-mapped driver table.
                let v = u64::from_le(unsafe { *(a as *const u64) });
                self.watched.push((d.kind(), v));
            }
            self.descriptors.push(d);
            head = (head + 1) % entries;
            n += 1;
        }
        self.set(regs::IQH, head << shift);
    }
}

impl RegisterIo for Model {
    fn read32(&mut self, o: usize) -> u32 {
        match o {
            regs::VER => self.ver,
            regs::FSTS => {
                self.kick();
                self.get(o) as u32
            }
            _ => self.get(o) as u32,
        }
    }

    fn write32(&mut self, o: usize, v: u32) {
        match o {
            regs::GCMD => {
                self.gcmd_log.push(v);
                self.set(o, u64::from(v));
                if self.stuck_gsts {
                    return;
                }
                let persistent = regs::GCMD_TE
                    | regs::GCMD_QIE
                    | regs::GCMD_IRE
                    | regs::GCMD_CFI
                    | regs::GCMD_EAFL;
                let old = self.get(regs::GSTS) as u32;
                let mut s = (old & !persistent) | (v & persistent);
                if v & regs::GCMD_SRTP != 0 {
                    s |= regs::GCMD_SRTP;
                    self.active_root = Some(self.get(regs::RTADDR));
                }
                if v & regs::GCMD_SFL != 0 {
                    s |= regs::GCMD_SFL;
                }
                // WBF completes at once: WBFS reads 0.
                s &= !regs::GCMD_WBF;
                if v & regs::GCMD_QIE != 0 && old & regs::GCMD_QIE == 0 {
                    self.set(regs::IQH, 0);
                }
                self.set(regs::GSTS, u64::from(s));
            }
            regs::FSTS => {
                let f = self.get(o) & !u64::from(v & regs::FSTS_RW1C);
                self.set(o, f);
                self.kick();
            }
            regs::PRS => {
                let p = self.get(o) & !u64::from(v & (regs::PRS_PPR | regs::PRS_PRO));
                self.set(o, p);
            }
            _ if o % 16 == 12
                && o >= regs::frcd_reg(self.fro(), 0)
                && o < regs::frcd_reg(self.fro(), self.nfr()) =>
            {
                if v & (1 << 31) != 0 {
                    let hi = self.get(o - 4) & !regs::FRCD_HI_F;
                    self.set(o - 4, hi);
                    self.update_ppf();
                }
            }
            _ => self.set(o, u64::from(v)),
        }
    }

    fn read64(&mut self, o: usize) -> u64 {
        match o {
            regs::CAP => self.cap,
            regs::ECAP => self.ecap,
            regs::IQH => {
                self.kick();
                self.get(o)
            }
            _ => self.get(o),
        }
    }

    fn write64(&mut self, o: usize, v: u64) {
        self.set(o, v);
        if o == regs::CCMD && v & regs::CCMD_ICC != 0 {
            self.ccmd_log.push(v);
            if !self.stuck_ccmd && !self.qi_enabled() {
                let g = field_get(regs::CCMD_CIRG, v);
                let done =
                    (v & !regs::CCMD_ICC & !regs::CCMD_CAIG) | field_prep(regs::CCMD_CAIG, g);
                self.set(o, done);
            }
        } else if o == self.iotlb_base() + regs::IOTLB_OFFSET && v & regs::IOTLB_IVT != 0 {
            let iva = self.get(self.iotlb_base() + regs::IVA_OFFSET);
            self.iotlb_log.push((iva, v));
            if !self.stuck_iotlb && !self.qi_enabled() {
                let g = field_get(regs::IOTLB_IIRG, v);
                let done =
                    (v & !regs::IOTLB_IVT & !regs::IOTLB_IAIG) | field_prep(regs::IOTLB_IAIG, g);
                self.set(o, done);
            }
        } else if o == regs::IQT {
            self.kick();
        }
    }
}
