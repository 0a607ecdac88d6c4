//! An Intel VT-d DMA-remapping unit (VT-d spec, cited "§x.y"; chapter 3 translation, 6
//! caching and invalidation, 7 fault recording and page requests, 9 table formats, 11
//! registers).
//!
//! [`VtdModel`] is the register page a driver programs (it implements [`RegisterIo`]) and
//! the translation engine through which simulated devices' DMA reaches [`PhysMem`]:
//!
//! - registers: VER, CAP and ECAP as configured ([`VtdModelConfig`]: QEMU 7.2's values
//!   for legacy and for `x-scalable-mode=on,x-pasid-mode=on`, or a unit with page
//!   requests, device-TLBs, 8 fault records and 48-bit tables), GCMD/GSTS (TE, SRTP, QIE,
//!   IRE, SIRTP, WBF), RTADDR, CCMD, the IOTLB registers at ECAP.IRO, FSTS/FECTL, the fault
//!   recording registers at CAP.FRO, IQA/IQH/IQT/ICS/IECTL, and PQH/PQT/PQA/PRS/PECTL when
//!   ECAP.PRS;
//! - the invalidation queue, processed from memory when IQT is written: context-cache,
//!   IOTLB (global, domain, page-selective with address mask), PASID-cache, PASID-based
//!   IOTLB, device-TLB, interrupt-entry-cache, wait (status write, completion event) and,
//!   with ECAP.PRS, page group responses; an invalid descriptor sets FSTS.IQE and stops the
//!   queue with IQH at the descriptor (§6.5.2);
//! - DMA ([`VtdModel::dma_read`], [`VtdModel::dma_write`]): legacy root and context
//!   entries, or scalable root and context entries, PASID directory and PASID table, then
//!   3- or 4-level second-level tables with 2MB/1GB leaves and R/W permissions. Three
//!   caches sit in front of the walk: a context cache, a PASID cache and an IOTLB. They
//!   are filled on use and dropped only by the matching invalidation (or SRTP / TE
//!   changes), so a driver that forgets an invalidation sees stale translations, as on
//!   hardware;
//! - faults go into the fault recording registers in the architectural layout with
//!   FSTS.PPF/FRI/PFO maintained;
//! - page requests ([`VtdModel::page_request`]) are written to the page request queue.
//!
//! # Where the model follows QEMU 7.2 rather than the spec
//! The project's models must agree with QEMU wherever both apply (QEMU's fault records
//! are what the agreement check compares), so these QEMU behaviours are kept:
//! - Fault reasons: scalable mode reports the legacy codes for walk faults (5 write, 6
//!   read, 4 beyond the address width, 0xC reserved bits, 3/7 table read errors) instead
//!   of the spec's scalable-mode codes, with PP = 1 and PV = the PASID used (RID_PASID for
//!   requests without PASID); every PASID directory or table problem is 0x58. A
//!   not-present second-level entry is reported as a permission fault (5 or 6), because
//!   the walk checks the R/W bits first.
//! - Fault recording: a fault from a source-id that already has a pending record is not
//!   recorded at all (collapsed, without PFO); a fault finding the next record in use
//!   sets PFO; while PFO is set nothing is recorded. QEMU has one record (CAP.NFR = 0).
//!   FSTS.IQE and PFO are the only write-1-to-clear status bits; IQERCD reads 0.
//! - A permission the IOTLB entry lacks fails the access without a fault record (QEMU
//!   checks the cached permission only in its memory core); a walk always records.
//! - A failing access is retried in 4-byte pieces, each translated (and reported) again,
//!   as QEMU's memory core splits accesses to unassigned memory.
//! - Output addresses in the interrupt range 0xFEE0_0000..=0xFEEF_FFFF fault with 0xE (0x87
//!   when ECAP.SMTS); input addresses there without PASID are interrupt messages, not
//!   DMA (writes are counted, reads return zeros).
//! - Domain-selective context-cache invalidation is performed as global. The IOTLB holds
//!   at most 1024 entries and is emptied when full.
//! - Register-based invalidation is ignored while queued invalidation is enabled (ICC /
//!   IVT stay set); QI can be disabled only when the queue is empty and its last
//!   descriptor was a wait. A wait descriptor must have SW or IF; types 8 and 9 are
//!   invalid unless ECAP.DT with ECAP.PASID, or ECAP.PRS, are reported; descriptor
//!   reserved-bit checks use QEMU's masks (which treat the device-TLB PFSID as reserved);
//!   the upper 128 bits of 256-bit descriptors are not checked.
//! - Requests with PASID are checked against the PASID entry only (QEMU does not look at
//!   the context entry's PASIDE).
//! - Faults found before the walk (root, context, PASID directory or table) are recorded
//!   without a PASID for requests without one, as QEMU does; requests with a PASID (which
//!   no QEMU device sends) get PP = 1 and their PASID there too, as the spec's fault
//!   record describes (§7.2).
//!
//! Where QEMU has no behaviour of its own the model follows the spec and says so: QEMU
//! keeps no PASID cache (it re-reads PASID entries on every walk and ignores
//! PASID-cache and PASID-based IOTLB descriptors); the model caches PASID entries and
//! drops them on PASID-cache invalidation, and drops IOTLB entries made through
//! first-level or nested PASID entries on PASID-based IOTLB invalidation. A wait
//! descriptor with both SW and IF performs both (QEMU stops). Page requests exist only
//! in the model.

use std::sync::{Arc, Mutex, MutexGuard};

use iommu_hwio::mmio::RegisterIo;
use sim_physmem::{OutOfRange, PhysMem};

use crate::Access;

pub mod agreement;
mod queue;
pub mod regs;
mod translate;

#[cfg(test)]
mod adapter_tests;
#[cfg(test)]
mod pasid_tests;
#[cfg(test)]
mod tests;

use regs::RegFile;
pub use translate::{
    FAULT_ADDRESS_BEYOND_WIDTH, FAULT_CONTEXT_INVALID, FAULT_CONTEXT_NOT_PRESENT,
    FAULT_CONTEXT_RESERVED, FAULT_CONTEXT_TABLE_READ, FAULT_INTERRUPT_ADDRESS,
    FAULT_PAGING_ENTRY_READ, FAULT_PAGING_RESERVED, FAULT_PASID_TABLE, FAULT_READ,
    FAULT_ROOT_NOT_PRESENT, FAULT_ROOT_RESERVED, FAULT_ROOT_TABLE_READ, FAULT_SM_INTERRUPT_ADDRESS,
    FAULT_WRITE,
};

/// QEMU 7.2's CAP_REG (measured, see the `vtd` crate's `caps` module).
pub const QEMU_7_2_CAP: u64 = 0x00d2_008c_2226_0206;
/// QEMU 7.2's ECAP_REG in legacy mode.
pub const QEMU_7_2_ECAP_LEGACY: u64 = 0x00f0_0f4a;
/// QEMU 7.2's ECAP_REG with `x-scalable-mode=on,x-pasid-mode=on`.
pub const QEMU_7_2_ECAP_SCALABLE_PASID: u64 = 0x4900_80f0_0f4a;

/// What the modelled unit reports (VER, CAP, ECAP); everything else follows from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdModelConfig {
    /// VER_REG.
    pub ver: u32,
    /// CAP_REG.
    pub cap: u64,
    /// ECAP_REG.
    pub ecap: u64,
}

impl VtdModelConfig {
    /// QEMU 7.2's `intel-iommu` with its default properties, as measured: one fault
    /// record, 39-bit 3-level tables, queued invalidation, pass-through, interrupt
    /// remapping.
    pub const fn qemu_legacy() -> Self {
        VtdModelConfig {
            ver: 0x10,
            cap: QEMU_7_2_CAP,
            ecap: QEMU_7_2_ECAP_LEGACY,
        }
    }

    /// QEMU 7.2 with `x-scalable-mode=on,x-pasid-mode=on`: adds SMTS, SLTS, SRS and PASID
    /// (PSS = 0, one PASID bit).
    pub const fn qemu_scalable() -> Self {
        VtdModelConfig {
            ver: 0x10,
            cap: QEMU_7_2_CAP,
            ecap: QEMU_7_2_ECAP_SCALABLE_PASID,
        }
    }

    /// The same unit with `intremap=off`: QEMU reports ECAP.IR and ECAP.MHMV only with
    /// interrupt remapping (its `vtd_init`); nothing else changes.
    pub const fn intremap_off(self) -> Self {
        VtdModelConfig {
            ecap: self.ecap & !(regs::ECAP_IR | regs::ECAP_MHMV),
            ..self
        }
    }

    /// A unit with what QEMU lacks: page requests (PRS), device-TLBs (DT), 20-bit
    /// PASIDs, 8 fault recording registers and 48-bit (4-level) second-level tables,
    /// otherwise QEMU's layout (FRO, IRO, MAMV, large pages).
    pub const fn full() -> Self {
        let cap = (QEMU_7_2_CAP
            & !(0xff << regs::CAP_NFR_SHIFT)
            & !(0x3f << regs::CAP_MGAW_SHIFT)
            & !(0x1f << regs::CAP_SAGAW_SHIFT))
            | (7 << regs::CAP_NFR_SHIFT)
            | (47 << regs::CAP_MGAW_SHIFT)
            | (0b110 << regs::CAP_SAGAW_SHIFT);
        let ecap = QEMU_7_2_ECAP_SCALABLE_PASID
            | regs::ECAP_DT
            | regs::ECAP_PRS
            | (19 << regs::ECAP_PSS_SHIFT);
        VtdModelConfig {
            ver: 0x10,
            cap,
            ecap,
        }
    }
}

/// What CAP and ECAP say, decoded once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub cap: u64,
    pub ecap: u64,
    /// Byte offset of the fault recording registers.
    pub fro: usize,
    /// Number of fault recording registers.
    pub nfr: u16,
    /// Byte offset of the IOTLB register group.
    pub iotlb: usize,
    /// MGAW in bits: the host address width the model masks addresses with.
    pub aw: u32,
    pub sagaw: u64,
    pub mamv: u8,
    pub qi: bool,
    pub dt: bool,
    pub ir: bool,
    pub pt: bool,
    pub sc: bool,
    pub prs: bool,
    pub pasid: bool,
    pub pasid_bits: u32,
    pub smts: bool,
    pub rwbf: bool,
}

impl Caps {
    fn new(c: &VtdModelConfig) -> Self {
        let (cap, ecap) = (c.cap, c.ecap);
        let nfr = ((cap >> regs::CAP_NFR_SHIFT) & 0xff) as u16 + 1;
        let fro = ((cap >> regs::CAP_FRO_SHIFT) & 0x3ff) as usize * 16;
        let iotlb = ((ecap >> regs::ECAP_IRO_SHIFT) & 0x3ff) as usize * 16;
        assert!(
            fro + 16 * nfr as usize <= regs::REG_BYTES && iotlb + 16 <= regs::REG_BYTES,
            "CAP.FRO/NFR and ECAP.IRO must place their registers inside the register page"
        );
        Caps {
            cap,
            ecap,
            fro,
            nfr,
            iotlb,
            aw: ((cap >> regs::CAP_MGAW_SHIFT) & 0x3f) as u32 + 1,
            sagaw: (cap >> regs::CAP_SAGAW_SHIFT) & 0x1f,
            mamv: ((cap >> regs::CAP_MAMV_SHIFT) & 0x3f) as u8,
            qi: ecap & regs::ECAP_QI != 0,
            dt: ecap & regs::ECAP_DT != 0,
            ir: ecap & regs::ECAP_IR != 0,
            pt: ecap & regs::ECAP_PT != 0,
            sc: ecap & regs::ECAP_SC != 0,
            prs: ecap & regs::ECAP_PRS != 0,
            pasid: ecap & regs::ECAP_PASID != 0,
            pasid_bits: ((ecap >> regs::ECAP_PSS_SHIFT) & 0x1f) as u32 + 1,
            smts: ecap & regs::ECAP_SMTS != 0,
            rwbf: cap & regs::CAP_RWBF != 0,
        }
    }

    /// Mask of the host address width (QEMU's HAW mask with aw-bits = MGAW).
    pub fn haw_mask(&self) -> u64 {
        u64::MAX >> (64 - self.aw.clamp(1, 64))
    }

    /// Whether CAP.SAGAW lists tables of `levels` levels.
    pub fn level_supported(&self, levels: u32) -> bool {
        (2..=6).contains(&levels) && self.sagaw & (1 << (levels - 2)) != 0
    }
}

/// What happened to a detected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultLogged {
    /// Written to this fault recording register.
    Recorded(u16),
    /// Not recorded: a record of the same source-id is pending.
    Collapsed,
    /// Not recorded: the next record was in use; FSTS.PFO was set now.
    Overflow,
    /// Not recorded: FSTS.PFO was already set.
    Lost,
    /// Not recorded: fault processing is disabled (FPD) for this entry and the condition
    /// is a qualified one.
    Suppressed,
}

/// Why a DMA did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// Remapping blocked the access at `iova` with fault reason `reason`.
    Fault {
        /// Address of the first blocked access.
        iova: u64,
        /// Fault reason code (the FR field).
        reason: u8,
        /// What happened to the fault record.
        logged: FaultLogged,
    },
    /// The IOTLB's cached translation lacks the permission (no fault record, as QEMU).
    Denied {
        /// Address of the access.
        iova: u64,
    },
    /// A request with PASID the unit cannot take (legacy mode, no ECAP.PASID, or a
    /// PASID wider than ECAP.PSS allows); blocked without a record.
    PasidUnsupported,
    /// The translated address is not RAM.
    Bus(OutOfRange),
}

/// Counters for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Translations served by the IOTLB.
    pub iotlb_hits: u64,
    /// Page walks performed (including failed ones).
    pub walks: u64,
    /// Context entries served by the context cache.
    pub context_hits: u64,
    /// Context entries read from memory.
    pub context_fetches: u64,
    /// PASID entries served by the PASID cache.
    pub pasid_hits: u64,
    /// PASID entries read from memory.
    pub pasid_fetches: u64,
    /// Fault conditions detected (recorded or not).
    pub faults: u64,
    /// Fault records written.
    pub records: u64,
    /// Accesses refused for a permission the IOTLB entry lacks.
    pub denied: u64,
    /// Fault events (interrupts) generated.
    pub fault_events: u64,
    /// Invalidation completion events (interrupts) generated.
    pub completion_events: u64,
    /// Page request events (interrupts) generated.
    pub page_request_events: u64,
    /// Descriptors processed successfully, by type (index = type).
    pub descriptors: [u64; 16],
    /// Invalidation queue errors raised (FSTS.IQE).
    pub queue_errors: u64,
    /// Register-based context-cache invalidations performed.
    pub register_context_invalidations: u64,
    /// Register-based IOTLB invalidations performed.
    pub register_iotlb_invalidations: u64,
    /// Write buffer flushes.
    pub write_buffer_flushes: u64,
    /// Writes to the interrupt address range (interrupt messages).
    pub interrupt_messages: u64,
}

/// A device-TLB invalidation the unit forwarded (there are no device-TLBs in the
/// simulation; the log lets tests check what a driver asked for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTlbInvalidation {
    /// Source-id of the device.
    pub sid: u16,
    /// PASID, for a PASID-based device-TLB invalidation.
    pub pasid: Option<u32>,
    /// First address.
    pub address: u64,
    /// Bytes covered.
    pub size: u64,
}

/// A page request as a device issues it (PCIe PRI, §7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Requester ID.
    pub rid: u16,
    /// PASID, if the request carries one.
    pub pasid: Option<u32>,
    /// Page address.
    pub address: u64,
    /// Read access requested.
    pub read: bool,
    /// Write access requested.
    pub write: bool,
    /// Execute access requested.
    pub execute: bool,
    /// Privileged access requested.
    pub privileged: bool,
    /// Last request of its group.
    pub last: bool,
    /// Page request group index (9 bits).
    pub group: u16,
}

/// What became of a page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequestOutcome {
    /// Written to the page request queue.
    Queued,
    /// The queue was full: PRS.PRO set; a last-in-group request was answered Success by
    /// the unit itself.
    Overflow,
    /// Page requests are not enabled for the requester (no ECAP.PRS, translation off, not
    /// scalable mode, or the context entry is not present or has PRE clear): answered
    /// Invalid Request by the unit.
    Refused,
}

/// A page group response as the device receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageResponse {
    /// Requester ID.
    pub rid: u16,
    /// PASID, if present.
    pub pasid: Option<u32>,
    /// Page request group index.
    pub group: u16,
    /// Response code (0 success, 1 invalid request, 0xF failure).
    pub code: u8,
    /// Sent by the unit itself (overflow, refused request) rather than by software.
    pub from_hardware: bool,
}

/// A piece of a DMA, within one page.
enum Piece {
    /// `n` bytes at buffer offset `off` go to or from `pa`.
    Translated { pa: u64, off: usize, n: usize },
    /// `n` bytes at buffer offset `off` did not translate.
    Failed { off: usize, n: usize },
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub enabled: bool,
    pub base: u64,
    pub size: u32,
    pub head: u32,
    pub tail: u32,
    pub wide: bool,
    pub last_type: u8,
}

/// The unit's state behind the lock.
pub(crate) struct State {
    pub mem: Arc<PhysMem>,
    pub caps: Caps,
    pub config: VtdModelConfig,
    pub regs: RegFile,
    pub root: u64,
    pub root_scalable: bool,
    pub translation: bool,
    pub qi: Queue,
    pub next_frcd: u16,
    pub caches: translate::Caches,
    pub stats: ModelStats,
    pub device_tlb: Vec<DeviceTlbInvalidation>,
    pub page_responses: Vec<PageResponse>,
}

/// A VT-d remapping unit. Cloning gives another handle to the same unit (one for the
/// driver as its [`RegisterIo`], others for devices).
#[derive(Clone)]
pub struct VtdModel {
    state: Arc<Mutex<State>>,
    mem: Arc<PhysMem>,
}

impl std::fmt::Debug for VtdModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VtdModel({:?})", self.lock().config)
    }
}

impl VtdModel {
    /// A unit in its reset state over `mem`.
    pub fn new(mem: Arc<PhysMem>, config: VtdModelConfig) -> Self {
        let mut s = State {
            mem: mem.clone(),
            caps: Caps::new(&config),
            config,
            regs: RegFile::new(),
            root: 0,
            root_scalable: false,
            translation: false,
            qi: Queue::default(),
            next_frcd: 0,
            caches: translate::Caches::default(),
            stats: ModelStats::default(),
            device_tlb: Vec::new(),
            page_responses: Vec::new(),
        };
        s.define_registers();
        VtdModel {
            state: Arc::new(Mutex::new(s)),
            mem,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a failed test assertion elsewhere) leaves the
        // state consistent enough to inspect.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The RAM the unit reads tables from and devices reach.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.mem
    }

    /// The configuration.
    pub fn config(&self) -> VtdModelConfig {
        self.lock().config
    }

    /// A device's read of `buf.len()` bytes at `iova` (requester `sid`, PASID if tagged).
    /// On a fault the rest of the transfer still goes through remapping (later pages may
    /// translate); `buf` holds zeros where the access failed. The first error is returned.
    pub fn dma_read(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<(), DmaError> {
        let mut s = self.lock();
        s.access(
            sid,
            pasid,
            iova,
            buf.len(),
            Access::Read,
            |mem, piece| match piece {
                Piece::Translated { pa, off, n } => mem.read(pa, &mut buf[off..off + n]),
                Piece::Failed { off, n } => {
                    buf[off..off + n].fill(0);
                    Ok(())
                }
            },
        )
    }

    /// A device's write of `data` at `iova`.
    pub fn dma_write(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<(), DmaError> {
        let mut s = self.lock();
        s.access(
            sid,
            pasid,
            iova,
            data.len(),
            Access::Write,
            |mem, piece| match piece {
                Piece::Translated { pa, off, n } => mem.write(pa, &data[off..off + n]),
                Piece::Failed { .. } => Ok(()),
            },
        )
    }

    /// Translate one access (as the first access of a DMA would): the physical address,
    /// or the error (a fault is reported as for DMA).
    pub fn translate(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, DmaError> {
        self.lock()
            .translate_one(sid, pasid, iova, access == Access::Write)
    }

    /// A device's page request (needs ECAP.PRS).
    pub fn page_request(&self, req: PageRequest) -> PageRequestOutcome {
        self.lock().page_request(req)
    }

    /// Counters.
    pub fn stats(&self) -> ModelStats {
        self.lock().stats
    }

    /// Device-TLB invalidations performed, in order.
    pub fn device_tlb_invalidations(&self) -> Vec<DeviceTlbInvalidation> {
        self.lock().device_tlb.clone()
    }

    /// Page group responses delivered to devices, in order.
    pub fn page_responses(&self) -> Vec<PageResponse> {
        self.lock().page_responses.clone()
    }

    /// Entries in the (context cache, PASID cache, IOTLB).
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (
            s.caches.context.len(),
            s.caches.pasid.len(),
            s.caches.iotlb.len(),
        )
    }

    /// Whether translation is enabled (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.lock().translation
    }
}

impl RegisterIo for VtdModel {
    fn read32(&mut self, offset: usize) -> u32 {
        let s = self.lock();
        if !RegFile::valid(offset, 4) {
            return 0;
        }
        s.regs.read(offset, 4) as u32
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let mut s = self.lock();
        if !RegFile::valid(offset, 4) {
            return;
        }
        s.regs.write(offset, 4, u64::from(value));
        s.after_write(offset, 4);
    }

    fn read64(&mut self, offset: usize) -> u64 {
        let s = self.lock();
        if !RegFile::valid(offset, 8) {
            return 0;
        }
        s.regs.read(offset, 8)
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let mut s = self.lock();
        if !RegFile::valid(offset, 8) {
            return;
        }
        s.regs.write(offset, 8, value);
        s.after_write(offset, 8);
    }
}

use regs::*;

impl State {
    /// Reset values and access semantics of every register (§11.4; the masks are QEMU
    /// 7.2's where the spec leaves a choice).
    fn define_registers(&mut self) {
        let c = self.caps;
        let r = &mut self.regs;
        *r = RegFile::new();
        r.define(VER, 4, u64::from(self.config.ver), 0, 0);
        r.define(CAP, 8, c.cap, 0, 0);
        r.define(ECAP, 8, c.ecap, 0, 0);
        r.define(GCMD, 4, 0, 0xff80_0000, 0);
        r.define_write_only(GCMD, 4, 0xff80_0000);
        r.define(GSTS, 4, 0, 0, 0);
        r.define(RTADDR, 8, 0, 0xffff_ffff_ffff_fc00, 0);
        r.define(CCMD, 8, 0, 0xe000_0003_ffff_ffff, 0);
        r.define_write_only(CCMD, 8, 0x3_ffff_0000);
        r.define(FSTS, 4, 0, 0, u64::from(FSTS_PFO | FSTS_IQE));
        r.define(FECTL, 4, u64::from(CTL_IM), u64::from(CTL_IM), 0);
        r.define(FEDATA, 4, 0, 0xffff, 0);
        r.define(FEADDR, 4, 0, 0xffff_fffc, 0);
        r.define(FEUADDR, 4, 0, 0, 0);
        r.define(PMEN, 4, 0, 0, 0);
        r.define(IQH, 8, 0, 0, 0);
        r.define(IQT, 8, 0, 0x7fff0, 0);
        r.define(IQA, 8, 0, 0xffff_ffff_ffff_f807, 0);
        r.define(ICS, 4, 0, 0, u64::from(ICS_IWC));
        r.define(IECTL, 4, u64::from(CTL_IM), u64::from(CTL_IM), 0);
        r.define(IEDATA, 4, 0, 0xffff_ffff, 0);
        r.define(IEADDR, 4, 0, 0xffff_fffc, 0);
        r.define(IEUADDR, 4, 0, 0, 0);
        r.define(IQERCD, 8, 0, 0, 0);
        r.define(IRTA, 8, 0, 0xffff_ffff_ffff_f80f, 0);
        if c.prs {
            r.define(PQH, 8, 0, PQ_INDEX, 0);
            r.define(PQT, 8, 0, 0, 0);
            r.define(PQA, 8, 0, 0xffff_ffff_ffff_f007, 0);
            r.define(PRS, 4, 0, 0, u64::from(PRS_PPR | PRS_PRO));
            r.define(PECTL, 4, u64::from(CTL_IM), u64::from(CTL_IM), 0);
            r.define(PEDATA, 4, 0, 0xffff_ffff, 0);
            r.define(PEADDR, 4, 0, 0xffff_fffc, 0);
        }
        r.define(c.iotlb + IVA_OFFSET, 8, 0, 0xffff_ffff_ffff_f07f, 0);
        r.define_write_only(c.iotlb + IVA_OFFSET, 8, 0xffff_ffff_ffff_f07f);
        r.define(c.iotlb + IOTLB_OFFSET, 8, 0, 0xb003_ffff_0000_0000, 0);
        for i in 0..c.nfr as usize {
            r.define(c.fro + 16 * i, 8, 0, 0, 0);
            r.define(c.fro + 16 * i + 8, 8, 0, 0, FRCD_F);
        }
    }

    fn fsts(&self) -> u32 {
        self.regs.raw(FSTS, 4) as u32
    }

    fn gsts_update(&mut self, clear: u32, set: u32) {
        self.regs.update(GSTS, 4, u64::from(clear), u64::from(set));
    }

    /// Side effects of a software write of `n` bytes at `o`.
    fn after_write(&mut self, o: usize, n: usize) {
        let iotlb_reg = self.caps.iotlb + IOTLB_OFFSET;
        match (o, n) {
            (GCMD, 4) => self.handle_gcmd(),
            (CCMD, 8) => self.handle_ccmd(),
            (x, 4) if x == CCMD + 4 => self.handle_ccmd(),
            (x, 8) if x == iotlb_reg => self.handle_iotlb(),
            (x, 4) if x == iotlb_reg + 4 => self.handle_iotlb(),
            (FSTS, 4) => self.handle_fsts_write(),
            (FECTL, 4) if self.ctl_fire(FECTL) => self.stats.fault_events += 1,
            (ICS, 4) => {
                let ics = self.regs.raw(ICS, 4) as u32;
                if self.regs.raw(IECTL, 4) as u32 & CTL_IP != 0 && ics & ICS_IWC == 0 {
                    self.regs.update(IECTL, 4, u64::from(CTL_IP), 0);
                }
            }
            (IECTL, 4) if self.ctl_fire(IECTL) => self.stats.completion_events += 1,
            (PECTL, 4) if self.caps.prs && self.ctl_fire(PECTL) => {
                self.stats.page_request_events += 1
            }
            (PRS, 4) if self.caps.prs => {
                let prs = self.regs.raw(PRS, 4) as u32;
                if self.regs.raw(PECTL, 4) as u32 & CTL_IP != 0 && prs & PRS_PPR == 0 {
                    self.regs.update(PECTL, 4, u64::from(CTL_IP), 0);
                }
            }
            (IQT, _) => self.handle_iqt(),
            (IQA, _) => {
                self.qi.wide = self.caps.smts && self.regs.raw(IQA, 8) & IQA_DW != 0;
            }
            // A write to the upper half of a fault record may have cleared F.
            (x, _)
                if x >= self.caps.fro
                    && x < self.caps.fro + 16 * self.caps.nfr as usize
                    && (x - self.caps.fro) % 16 >= 8 =>
            {
                self.update_ppf()
            }
            _ => {}
        }
    }

    /// An event control register write that unmasks a pending interrupt sends it.
    fn ctl_fire(&mut self, reg: usize) -> bool {
        let v = self.regs.raw(reg, 4) as u32;
        if v & CTL_IP != 0 && v & CTL_IM == 0 {
            self.regs.update(reg, 4, u64::from(CTL_IP), 0);
            return true;
        }
        false
    }

    fn handle_fsts_write(&mut self) {
        let pending = self.fsts() & (FSTS_PFO | FSTS_PPF | FSTS_IQE);
        if self.regs.raw(FECTL, 4) as u32 & CTL_IP != 0 && pending == 0 {
            self.regs.update(FECTL, 4, u64::from(CTL_IP), 0);
        }
    }

    /// GCMD_REG write (§11.4.4): act on persistent bits that changed and on one-shot
    /// bits that are set.
    fn handle_gcmd(&mut self) {
        let status = self.regs.raw(GSTS, 4) as u32;
        let val = self.regs.raw(GCMD, 4) as u32;
        let changed = status ^ val;
        if changed & GCMD_TE != 0 {
            let en = val & GCMD_TE != 0;
            self.translation = en;
            if en {
                self.gsts_update(0, GCMD_TE);
            } else {
                self.next_frcd = 0;
                self.gsts_update(GCMD_TE, 0);
            }
            self.caches.reset();
        }
        if val & GCMD_SRTP != 0 {
            let rtaddr = self.regs.raw(RTADDR, 8);
            self.root = rtaddr & self.caps.haw_mask() & !0xfff;
            self.root_scalable = self.caps.smts && rtaddr & RTADDR_SMT != 0;
            self.gsts_update(0, GCMD_SRTP);
            self.caches.reset();
        }
        if changed & GCMD_QIE != 0 && self.caps.qi {
            self.handle_qie(val & GCMD_QIE != 0);
        }
        if val & GCMD_SIRTP != 0 {
            self.gsts_update(0, GCMD_SIRTP);
        }
        if changed & GCMD_IRE != 0 && self.caps.ir {
            if val & GCMD_IRE != 0 {
                self.gsts_update(0, GCMD_IRE);
            } else {
                self.gsts_update(GCMD_IRE, 0);
            }
        }
        if val & GCMD_WBF != 0 && self.caps.rwbf {
            // The flush completes at once: GSTS.WBFS never reads 1.
            self.stats.write_buffer_flushes += 1;
        }
    }

    /// CCMD_REG write (§6.5.1.1).
    fn handle_ccmd(&mut self) {
        let v = self.regs.raw(CCMD, 8);
        if v & CCMD_ICC == 0 || self.qi.enabled {
            return;
        }
        let caig = match (v >> CCMD_CIRG_SHIFT) & 3 {
            1 | 2 => {
                self.caches.invalidate_context_all();
                1
            }
            3 => {
                let sid = ((v >> 16) & 0xffff) as u16;
                let fm = ((v >> 32) & 3) as u8;
                self.caches.invalidate_context_device(sid, fm);
                3
            }
            _ => 0,
        };
        self.stats.register_context_invalidations += 1;
        self.regs.update(
            CCMD,
            8,
            CCMD_ICC | (3 << CCMD_CAIG_SHIFT),
            caig << CCMD_CAIG_SHIFT,
        );
    }

    /// IOTLB_REG write (§6.5.1.2).
    fn handle_iotlb(&mut self) {
        let reg = self.caps.iotlb + IOTLB_OFFSET;
        let v = self.regs.raw(reg, 8);
        if v & IOTLB_IVT == 0 || self.qi.enabled {
            return;
        }
        let did = ((v >> IOTLB_DID_SHIFT) & 0xffff) as u16;
        let iaig = match (v >> IOTLB_IIRG_SHIFT) & 3 {
            1 => {
                self.caches.invalidate_iotlb_all();
                1
            }
            2 => {
                self.caches.invalidate_iotlb_domain(did);
                2
            }
            3 => {
                let iva = self.regs.raw(self.caps.iotlb + IVA_OFFSET, 8);
                let am = (iva & 0x3f) as u8;
                if am > self.caps.mamv {
                    0
                } else {
                    self.caches.invalidate_iotlb_pages(did, iva & !0xfff, am);
                    3
                }
            }
            _ => 0,
        };
        self.stats.register_iotlb_invalidations += 1;
        self.regs.update(
            reg,
            8,
            IOTLB_IVT | (3 << IOTLB_IAIG_SHIFT),
            iaig << IOTLB_IAIG_SHIFT,
        );
    }

    // ----- fault recording (§7.2) -----

    fn frcd_hi(&self, i: u16) -> u64 {
        self.regs.raw(self.caps.fro + 16 * i as usize + 8, 8)
    }

    fn update_ppf(&mut self) {
        let any = (0..self.caps.nfr).any(|i| self.frcd_hi(i) & FRCD_F != 0);
        self.regs.update(
            FSTS,
            4,
            u64::from(FSTS_PPF),
            if any { u64::from(FSTS_PPF) } else { 0 },
        );
    }

    /// A fault event (§7.3): only when no earlier condition is pending; masked events
    /// leave FECTL.IP set.
    fn fault_event(&mut self, pre_fsts: u32) {
        if pre_fsts & (FSTS_PPF | FSTS_PFO | FSTS_IQE) != 0 {
            return;
        }
        self.regs.update(FECTL, 4, 0, u64::from(CTL_IP));
        if self.ctl_fire(FECTL) {
            self.stats.fault_events += 1;
        }
    }

    /// Record a primary fault: source-id, page address, reason, request type and PASID.
    pub(crate) fn report(
        &mut self,
        sid: u16,
        addr: u64,
        reason: u8,
        write: bool,
        pasid: Option<u32>,
    ) -> FaultLogged {
        let fsts = self.fsts();
        if fsts & FSTS_PFO != 0 {
            return FaultLogged::Lost;
        }
        if (0..self.caps.nfr)
            .any(|i| self.frcd_hi(i) & FRCD_F != 0 && self.frcd_hi(i) & 0xffff == u64::from(sid))
        {
            return FaultLogged::Collapsed;
        }
        let i = self.next_frcd;
        if self.frcd_hi(i) & FRCD_F != 0 {
            self.regs.update(FSTS, 4, 0, u64::from(FSTS_PFO));
            return FaultLogged::Overflow;
        }
        let o = self.caps.fro + 16 * i as usize;
        let mut hi = u64::from(sid) | (u64::from(reason) << FRCD_FR_SHIFT);
        if let Some(p) = pasid {
            hi |= FRCD_PP | (u64::from(p & 0xf_ffff) << FRCD_PV_SHIFT);
        }
        if !write {
            hi |= FRCD_T1;
        }
        self.regs.set_raw(o, 8, addr & !0xfff);
        self.regs.set_raw(o + 8, 8, hi | FRCD_F);
        if fsts & FSTS_PPF == 0 {
            self.regs.update(
                FSTS,
                4,
                0xff << FSTS_FRI_SHIFT,
                u64::from(i) << FSTS_FRI_SHIFT,
            );
        }
        self.update_ppf();
        self.next_frcd = (i + 1) % self.caps.nfr;
        self.stats.records += 1;
        self.fault_event(fsts);
        FaultLogged::Recorded(i)
    }

    // ----- DMA -----

    /// One access of a DMA: translate, check the permission, report a fault.
    fn translate_one(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
    ) -> Result<u64, DmaError> {
        match self.translate(sid, pasid, iova, write) {
            translate::Outcome::Translated { pa, read, write: w } => {
                if (write && !w) || (!write && !read) {
                    self.stats.denied += 1;
                    return Err(DmaError::Denied { iova });
                }
                Ok(pa)
            }
            translate::Outcome::Fault(f) => {
                self.stats.faults += 1;
                let logged = if f.fpd && translate::qualified(f.reason) {
                    FaultLogged::Suppressed
                } else {
                    self.report(sid, iova, f.reason, write, f.pasid)
                };
                Err(DmaError::Fault {
                    iova,
                    reason: f.reason,
                    logged,
                })
            }
            translate::Outcome::PasidUnsupported => Err(DmaError::PasidUnsupported),
        }
    }

    /// A DMA of `len` bytes at `iova`, page by page; `io` moves the bytes of each piece
    /// (or handles a piece that did not translate).
    fn access(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        len: usize,
        access: Access,
        mut io: impl FnMut(&PhysMem, Piece) -> Result<(), OutOfRange>,
    ) -> Result<(), DmaError> {
        let write = access == Access::Write;
        let mut first: Option<DmaError> = None;
        let mut off = 0usize;
        while off < len {
            let a = iova.wrapping_add(off as u64);
            let n = (len - off).min(4096 - (a & 0xfff) as usize);
            if pasid.is_none() && translate::in_interrupt_range(a) {
                // Interrupt messages, not memory (no interrupt remapping in the model).
                if write {
                    self.stats.interrupt_messages += 1;
                } else {
                    let _ = io(&self.mem, Piece::Failed { off, n });
                }
                off += n;
                continue;
            }
            match self.translate_one(sid, pasid, a, write) {
                Ok(pa) => {
                    if let Err(e) = io(&self.mem, Piece::Translated { pa, off, n }) {
                        let _ = io(&self.mem, Piece::Failed { off, n });
                        first.get_or_insert(DmaError::Bus(e));
                    }
                }
                Err(e) => {
                    first.get_or_insert(e);
                    let _ = io(&self.mem, Piece::Failed { off, n });
                    // The rest of the piece goes through remapping again, 4 bytes at a time.
                    let mut k = 4 - (a & 3) as usize;
                    while k < n {
                        let _ = self.translate_one(sid, pasid, a + k as u64, write);
                        k += 4;
                    }
                }
            }
            off += n;
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ----- page requests (§7.5) -----

    fn respond_from_hardware(&mut self, r: &PageRequest, code: u8) {
        self.page_responses.push(PageResponse {
            rid: r.rid,
            pasid: r.pasid,
            group: r.group,
            code,
            from_hardware: true,
        });
    }

    fn page_request(&mut self, r: PageRequest) -> PageRequestOutcome {
        let enabled = self.caps.prs
            && self.translation
            && self.root_scalable
            && translate::read_context(self, r.rid)
                .is_ok_and(|ce| ce[0] & translate::SM_CTX_PRE != 0);
        if !enabled {
            if r.last {
                self.respond_from_hardware(&r, 1);
            }
            return PageRequestOutcome::Refused;
        }
        let pqa = self.regs.raw(PQA, 8);
        let base = pqa & self.caps.haw_mask() & !0xfff;
        let entries = ((4096u64 << (pqa & 7)) / 32) as u32;
        let head = ((self.regs.raw(PQH, 8) & PQ_INDEX) >> 5) as u32 % entries;
        let tail = ((self.regs.raw(PQT, 8) & PQ_INDEX) >> 5) as u32 % entries;
        let prs = self.regs.raw(PRS, 4) as u32;
        if prs & PRS_PRO != 0 || (tail + 1) % entries == head {
            self.regs.update(PRS, 4, 0, u64::from(PRS_PRO));
            if r.last {
                self.respond_from_hardware(&r, 0);
            }
            return PageRequestOutcome::Overflow;
        }
        // Page request descriptor (§7.5.1).
        let mut w0 = 1 | (u64::from(r.rid) << 16);
        if let Some(p) = r.pasid {
            w0 |= (1 << 8) | (u64::from(p & 0xf_ffff) << 32);
        }
        if r.execute {
            w0 |= 1 << 52;
        }
        if r.privileged {
            w0 |= 1 << 53;
        }
        let w1 = (r.address & !0xfff)
            | u64::from(r.read)
            | (u64::from(r.write) << 1)
            | (u64::from(r.last) << 2)
            | (u64::from(r.group & 0x1ff) << 3);
        let slot = base + u64::from(tail) * 32;
        let ok = [w0, w1, 0, 0]
            .iter()
            .enumerate()
            .all(|(i, w)| self.mem.write_u64(slot + 8 * i as u64, *w).is_ok());
        if !ok {
            // The queue is not RAM: the request is lost like an overflow.
            self.regs.update(PRS, 4, 0, u64::from(PRS_PRO));
            return PageRequestOutcome::Overflow;
        }
        self.regs
            .set_raw(PQT, 8, (u64::from((tail + 1) % entries) << 5) & PQ_INDEX);
        let pre = prs;
        self.regs.update(PRS, 4, 0, u64::from(PRS_PPR));
        if pre & PRS_PPR == 0 {
            self.regs.update(PECTL, 4, 0, u64::from(CTL_IP));
            if self.ctl_fire(PECTL) {
                self.stats.page_request_events += 1;
            }
        }
        PageRequestOutcome::Queued
    }
}
