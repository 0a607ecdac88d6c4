//! The top-level driver: initialisation (the GCMD/GSTS handshakes of VT-d spec §11.4.4
//! and §11.4.5, root table and invalidation set-up of chapter 6), domains, device
//! attachment in legacy and scalable mode (requests without PASID, and with a PASID in
//! scalable mode), map/unmap with completed invalidation, fault draining, and the page
//! request queue with page group responses (§7.5, §7.7).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::caps::{Features, Mode, TranslationKind};
use crate::context::{
    pasid_dir_index, pasid_table_index, ContextEntry, PasidDirEntry, PasidEntry, RootEntry,
    ScalableContextEntry, ScalableRootEntry, PE0_P,
};
use crate::error::{Error, Result, TimeoutKind, Unsupported};
use crate::fault::{
    group_response, FaultRecord, FaultReport, PageGroup, PageRequest, PageRequestError,
    ResponseCode, MAX_GROUP_INDEX,
};
use crate::inv::{
    self, teardown_steps, ContextInvalidation, Descriptor, InvalidationPlan, IotlbInvalidation,
    PlannerConfig, TeardownStep, TeardownTarget,
};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::pagetable::{LargePages, Prot, SecondLevel, Translation, Unmapped};
use crate::prq::{PageRequestQueue, PrqReport};
use crate::qi::InvalidationQueue;
use crate::regs::{self, field_get, field_prep, poll_until, PollTimeout, RegisterIo};

/// Which translation table mode to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeChoice {
    /// Scalable when ECAP.SMTS, ECAP.SLTS and ECAP.QI; legacy otherwise.
    Auto,
    /// Force a mode (refused if unsupported).
    Fixed(Mode),
}

/// How invalidations are issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationChoice {
    /// Queued when ECAP.QI, register-based otherwise.
    Auto,
    /// CCMD_REG and the IOTLB registers (legacy mode only).
    Register,
    /// The invalidation queue (refused without ECAP.QI).
    Queued,
}

/// Driver configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    /// Translation table mode.
    pub mode: ModeChoice,
    /// Invalidation interface.
    pub invalidation: InvalidationChoice,
    /// Invalidation queue size: 2^qs 4KB pages.
    pub queue_pages_log2: u8,
    /// Bytes of the mapped register block (DRHD size); IRO and FRO must lie inside.
    pub register_bytes: usize,
    /// Page-selective invalidations per unmap before domain-selective is used.
    pub max_page_invalidations: usize,
    /// Set up the page request queue in scalable mode when the unit reports ECAP.PRS
    /// (context entries then get PRE, page requests reach
    /// [`Vtd::drain_page_requests`]). Without it, or without ECAP.PRS, the unit answers
    /// every page request itself (Invalid Request).
    pub page_requests: bool,
    /// Page request queue size: 2^n 4KB pages of 128 descriptors each.
    pub prq_pages_log2: u8,
}

impl Default for VtdConfig {
    fn default() -> Self {
        Self {
            mode: ModeChoice::Auto,
            invalidation: InvalidationChoice::Auto,
            queue_pages_log2: 0,
            register_bytes: 4096,
            max_page_invalidations: inv::DEFAULT_MAX_PAGE_INVALIDATIONS,
            page_requests: true,
            prq_pages_log2: 0,
        }
    }
}

/// Handle of a domain (a DID and a second-level page table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(usize);

#[derive(Debug)]
struct Domain {
    did: u16,
    /// `None` for a pass-through domain.
    pt: Option<SecondLevel>,
    /// Requesters attached for their requests without PASID.
    devices: Vec<u16>,
    /// (requester, PASID) pairs attached.
    pasids: Vec<(u16, u32)>,
}

/// Per-requester scalable-mode structures: the PASID directory and the PASID tables
/// linked from it, by directory index (PASID bits `[19:6]`). Tables are allocated when a
/// PASID of their range is first attached and freed with the directory when the
/// requester is detached.
#[derive(Debug)]
struct PasidTables {
    dir: PhysAddr,
    tables: BTreeMap<usize, PhysAddr>,
}

/// The PASID the driver programs as RID_PASID: requests without PASID use its entry.
pub const RID_PASID: u32 = 0;

/// Largest PASID value (PASIDs are 20 bits).
pub const MAX_PASID: u32 = 0xf_ffff;

#[derive(Debug)]
enum Invalidator {
    Register { iotlb_base: usize },
    Queued(InvalidationQueue),
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdStats {
    /// IOTLB invalidations issued (page-, domain- or global).
    pub iotlb_invalidations: u64,
    /// Context-cache invalidations issued.
    pub context_invalidations: u64,
    /// Invalidation batches waited for.
    pub waits: u64,
}

const PAGE: usize = 4096;

/// An initialised remapping unit.
#[derive(Debug)]
pub struct Vtd<R: RegisterIo, M: DmaMemory, T: PollTimeout> {
    regs: R,
    mem: M,
    timeout: T,
    features: Features,
    mode: Mode,
    levels: u8,
    address_bits: u8,
    root: PhysAddr,
    /// Legacy: context table per bus. Scalable: index `bus * 2 + (devfn >= 128)`.
    context_tables: BTreeMap<u16, PhysAddr>,
    pasid: BTreeMap<u16, PasidTables>,
    /// Bytes of a PASID directory, and its PDTS encoding.
    pasid_dir_bytes: usize,
    pdts: u64,
    domains: Vec<Option<Domain>>,
    used_dids: BTreeSet<u16>,
    /// Requesters attached for requests without PASID.
    attached: BTreeMap<u16, DomainId>,
    /// (requester, PASID) pairs attached.
    pasid_attached: BTreeMap<(u16, u32), DomainId>,
    inv: Invalidator,
    prq: Option<PageRequestQueue>,
    planner: PlannerConfig,
    drain: bool,
    /// Counters.
    pub stats: VtdStats,
}

impl<R: RegisterIo, M: DmaMemory, T: PollTimeout> Vtd<R, M, T> {
    /// Probe and initialise:
    /// 1. read VER/CAP/ECAP, check the IOTLB and fault registers lie in the mapped block,
    ///    choose the mode, invalidation interface and page-table depth (refusing what
    ///    the hardware lacks);
    /// 2. turn translation and queued invalidation off if firmware left them on;
    /// 3. allocate an empty root table, write RTADDR (with TTM) and GCMD.SRTP, wait for
    ///    GSTS.RTPS;
    /// 4. with QI: program IQA/IQT, set GCMD.QIE, wait for GSTS.QIES;
    /// 5. in scalable mode with ECAP.PRS and [`VtdConfig::page_requests`]: program the
    ///    page request queue (PQH = PQT = 0, PQA) with its interrupt masked (PECTL.IM);
    /// 6. global context-cache (and PASID-cache) and IOTLB invalidation, write-buffer
    ///    flush with CAP.RWBF;
    /// 7. set GCMD.TE and wait for GSTS.TES. Every DMA now faults until a device is
    ///    attached.
    pub fn new(mut regs: R, mut mem: M, timeout: T, config: VtdConfig) -> Result<Self> {
        let features = Features::probe(&mut regs);
        let (cap, ecap) = (features.cap, features.ecap);
        if regs::iotlb_reg(ecap.iro) + 16 > config.register_bytes
            || regs::frcd_reg(cap.fro, cap.nfr) > config.register_bytes
        {
            return Err(Unsupported::RegisterLayout.into());
        }
        let mode = match config.mode {
            ModeChoice::Auto if features.preferred_mode() == Mode::Scalable && ecap.qi => {
                Mode::Scalable
            }
            ModeChoice::Auto => Mode::Legacy,
            ModeChoice::Fixed(m) => m,
        };
        features.check_mode(mode)?;
        if mode == Mode::Scalable {
            features.check_translation(TranslationKind::SecondLevel)?;
        }
        let queued = match config.invalidation {
            InvalidationChoice::Auto => ecap.qi,
            InvalidationChoice::Register => false,
            InvalidationChoice::Queued => true,
        };
        if !queued {
            features.check_register_invalidation()?;
        }
        if queued || mode == Mode::Scalable {
            // Scalable mode needs PASID-cache invalidation, which only QI can issue.
            features.check_queued_invalidation()?;
        }
        if mode == Mode::Scalable && !queued {
            return Err(Unsupported::QueuedInvalidation.into());
        }
        let levels = features.choose_levels()?;
        let address_bits = features.address_bits(levels);
        // A PASID directory covers every PASID ECAP.PSS allows (one page at least):
        // 2^(bits - 6) entries of 8 bytes, PDTS = log2(entries) - 7 (§9.4).
        let dir_entries = if ecap.pasid {
            (1usize << features.pasid_bits().saturating_sub(6)).max(PAGE / 8)
        } else {
            PAGE / 8
        };
        let pdts = u64::from(dir_entries.trailing_zeros()) - 7;
        let root = mem.alloc_zeroed(PAGE, PAGE).ok_or(Error::OutOfMemory)?;
        let inv = if queued {
            Invalidator::Queued(InvalidationQueue::new(
                &mut mem,
                config.queue_pages_log2,
                mode == Mode::Scalable,
                ecap.c,
            )?)
        } else {
            Invalidator::Register {
                iotlb_base: regs::iotlb_reg(ecap.iro),
            }
        };
        let prq = if config.page_requests && mode == Mode::Scalable && ecap.prs {
            Some(PageRequestQueue::new(&mut mem, config.prq_pages_log2)?)
        } else {
            None
        };
        let mut planner = PlannerConfig::from_cap(&cap);
        planner.max_page_invalidations = config.max_page_invalidations;
        let mut v = Self {
            regs,
            mem,
            timeout,
            features,
            mode,
            levels,
            address_bits,
            root,
            context_tables: BTreeMap::new(),
            pasid: BTreeMap::new(),
            pasid_dir_bytes: dir_entries * 8,
            pdts,
            domains: Vec::new(),
            used_dids: BTreeSet::new(),
            attached: BTreeMap::new(),
            pasid_attached: BTreeMap::new(),
            inv,
            prq,
            planner,
            drain: cap.drd && cap.dwd,
            stats: VtdStats::default(),
        };
        v.flush_table(root, PAGE);
        let gsts = v.regs.read32(regs::GSTS);
        if gsts & regs::GCMD_TE != 0 {
            v.gcmd_persistent(regs::GCMD_TE, false)?;
        }
        if gsts & regs::GCMD_QIE != 0 {
            v.gcmd_persistent(regs::GCMD_QIE, false)?;
        }
        let ttm = match mode {
            Mode::Legacy => regs::TTM_LEGACY,
            Mode::Scalable => regs::TTM_SCALABLE,
        };
        v.regs
            .write64(regs::RTADDR, root.0 | field_prep(regs::RTADDR_TTM, ttm));
        v.gcmd_one_shot(regs::GCMD_SRTP, true)?;
        if let Invalidator::Queued(q) = &mut v.inv {
            q.program(&mut v.regs);
            v.gcmd_persistent(regs::GCMD_QIE, true)?;
        }
        if let Some(q) = &v.prq {
            // Polling only: the page request event stays masked.
            v.regs.write32(regs::PECTL, regs::PECTL_IM);
            q.program(&mut v.regs);
        }
        let mut global = alloc::vec![Descriptor::context_cache(ContextInvalidation::Global)];
        if mode == Mode::Scalable {
            global.push(Descriptor::pasid_cache(inv::PC_G_GLOBAL, 0, 0));
        }
        global.push(Descriptor::iotlb(IotlbInvalidation::Global, v.drain));
        v.invalidate(&global)?;
        v.write_buffer_flush()?;
        v.gcmd_persistent(regs::GCMD_TE, true)?;
        Ok(v)
    }

    /// Decoded capabilities.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether queued invalidation is in use.
    pub fn queued_invalidation(&self) -> bool {
        matches!(self.inv, Invalidator::Queued(_))
    }

    /// Second-level depth used for domains.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// Width of the PASIDs [`Vtd::attach_pasid`] takes: ECAP.PSS + 1 in scalable mode
    /// with ECAP.PASID (at most 20), else 0.
    pub fn pasid_bits(&self) -> u8 {
        if self.mode == Mode::Scalable && self.features.ecap.pasid {
            self.features.pasid_bits()
        } else {
            0
        }
    }

    /// Whether the page request queue is set up (scalable mode, ECAP.PRS and
    /// [`VtdConfig::page_requests`]).
    pub fn page_requests_enabled(&self) -> bool {
        self.prq.is_some()
    }

    /// Register access (for tests and diagnostics).
    pub fn regs(&mut self) -> &mut R {
        &mut self.regs
    }

    /// Memory provider.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    fn flush_table(&self, pa: PhysAddr, len: usize) {
        if !self.features.ecap.c {
            self.mem.flush(pa, len);
        }
    }

    /// Set or clear a persistent GCMD bit (TE, QIE, ...) and wait for GSTS to follow.
    /// GCMD is written from GSTS without the one-shot bits (§11.4.4).
    fn gcmd_persistent(&mut self, bit: u32, on: bool) -> Result<()> {
        let status = self.regs.read32(regs::GSTS) & !regs::GSTS_ONE_SHOT;
        let v = if on { status | bit } else { status & !bit };
        self.regs.publish_barrier();
        self.regs.write32(regs::GCMD, v);
        let want = if on { bit } else { 0 };
        let regs = &mut self.regs;
        if poll_until(&mut self.timeout, || regs.read32(regs::GSTS) & bit == want) {
            Ok(())
        } else {
            Err(Error::Timeout(TimeoutKind::GlobalStatus(bit)))
        }
    }

    /// Issue a one-shot GCMD command (SRTP: wait for RTPS set; WBF: wait for WBFS clear).
    fn gcmd_one_shot(&mut self, bit: u32, wait_set: bool) -> Result<()> {
        let status = self.regs.read32(regs::GSTS) & !regs::GSTS_ONE_SHOT;
        self.regs.publish_barrier();
        self.regs.write32(regs::GCMD, status | bit);
        let regs = &mut self.regs;
        if poll_until(&mut self.timeout, || {
            (regs.read32(regs::GSTS) & bit != 0) == wait_set
        }) {
            Ok(())
        } else {
            Err(Error::Timeout(TimeoutKind::GlobalStatus(bit)))
        }
    }

    /// Flush write buffers when CAP.RWBF requires it (§6.8).
    fn write_buffer_flush(&mut self) -> Result<()> {
        if self.features.cap.rwbf {
            self.gcmd_one_shot(regs::GCMD_WBF, false)?;
        }
        Ok(())
    }

    /// Perform `descs` and wait until all completed: through the queue (one wait
    /// descriptor for the batch) or register by register.
    fn invalidate(&mut self, descs: &[Descriptor]) -> Result<()> {
        for d in descs {
            match d.kind() {
                inv::TYPE_IOTLB | inv::TYPE_PASID_IOTLB => self.stats.iotlb_invalidations += 1,
                inv::TYPE_CONTEXT_CACHE => self.stats.context_invalidations += 1,
                _ => {}
            }
        }
        self.stats.waits += 1;
        match &mut self.inv {
            Invalidator::Queued(q) => {
                q.submit_and_wait(&mut self.regs, &self.mem, &mut self.timeout, descs)
            }
            Invalidator::Register { iotlb_base } => {
                let base = *iotlb_base;
                for d in descs {
                    register_invalidate(&mut self.regs, &mut self.timeout, base, d)?;
                }
                Ok(())
            }
        }
    }

    /// Create a domain with the lowest free domain-id (from 1: DID 0 is reserved when
    /// CAP.CM = 1 and kept free otherwise too) and an empty second-level table.
    pub fn create_domain(&mut self) -> Result<DomainId> {
        let large = LargePages {
            l2m: self.features.cap.sl_2m,
            l1g: self.features.cap.sl_1g,
        };
        let did = self.free_did()?;
        let pt = SecondLevel::new(
            &mut self.mem,
            self.levels,
            self.address_bits,
            large,
            self.features.ecap.c,
        )?;
        self.insert_domain(did, Some(pt))
    }

    /// Create a pass-through domain (needs ECAP.PT): requests of attached devices are
    /// not translated (legacy TT = 10b, scalable PGTT = 100b). It has no page table;
    /// map and unmap are refused.
    pub fn create_pass_through_domain(&mut self) -> Result<DomainId> {
        self.features
            .check_translation(TranslationKind::PassThrough)?;
        let did = self.free_did()?;
        self.insert_domain(did, None)
    }

    fn free_did(&self) -> Result<u16> {
        let max = self.features.cap.domains().min(1 << 16);
        (1..max)
            .map(|d| d as u16)
            .find(|d| !self.used_dids.contains(d))
            .ok_or(Error::InvalidDomainId(0))
    }

    fn insert_domain(&mut self, did: u16, pt: Option<SecondLevel>) -> Result<DomainId> {
        self.used_dids.insert(did);
        let d = Domain {
            did,
            pt,
            devices: Vec::new(),
            pasids: Vec::new(),
        };
        if let Some(i) = self.domains.iter().position(Option::is_none) {
            self.domains[i] = Some(d);
            Ok(DomainId(i))
        } else {
            self.domains.push(Some(d));
            Ok(DomainId(self.domains.len() - 1))
        }
    }

    /// Destroy a domain with no attached devices: invalidate its IOTLB entries
    /// (domain-selective, waited for), then free its page table and domain-id. A domain
    /// that requesters are attached to is refused with [`Error::AlreadyAttached`], one
    /// that PASIDs are attached to with [`Error::PasidsAttached`].
    pub fn destroy_domain(&mut self, id: DomainId) -> Result<()> {
        let d = self.domain(id)?;
        if !d.devices.is_empty() {
            return Err(Error::AlreadyAttached);
        }
        if !d.pasids.is_empty() {
            return Err(Error::PasidsAttached);
        }
        let did = d.did;
        self.invalidate(&[Descriptor::iotlb(
            IotlbInvalidation::Domain(did),
            self.drain,
        )])?;
        if let Some(pt) = self
            .domains
            .get_mut(id.0)
            .and_then(Option::take)
            .and_then(|d| d.pt)
        {
            // SAFETY: no context or PASID entry points at the table (no devices are
            // attached; detach cleared their entries) and the IOTLB and paging-structure
            // caches for its DID were invalidated just above.
            unsafe { pt.destroy(&mut self.mem) };
        }
        self.used_dids.remove(&did);
        Ok(())
    }

    fn domain(&self, id: DomainId) -> Result<&Domain> {
        self.domains
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(Error::NoSuchDomain)
    }

    fn domain_mut(&mut self, id: DomainId) -> Result<&mut Domain> {
        self.domains
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchDomain)
    }

    /// Domain-id of a domain.
    pub fn did(&self, id: DomainId) -> Result<u16> {
        Ok(self.domain(id)?.did)
    }

    fn words(&self, pa: PhysAddr, n: usize) -> Words {
        // SAFETY: every address passed here is a live table this driver allocated from
        // `self.mem` (root, context, PASID directory or table), at least `n` words long
        // from `pa`; tables are freed only after their last use.
        unsafe { Words::new(&self.mem, pa, n) }
    }

    /// The context table for `bus`/`devfn`, allocated and linked from the root table if
    /// missing.
    fn context_table(&mut self, bus: u8, devfn: u8) -> Result<PhysAddr> {
        let key = match self.mode {
            Mode::Legacy => u16::from(bus),
            Mode::Scalable => u16::from(bus) * 2 + u16::from(devfn >= 128),
        };
        if let Some(&t) = self.context_tables.get(&key) {
            return Ok(t);
        }
        let t = self
            .mem
            .alloc_zeroed(PAGE, PAGE)
            .ok_or(Error::OutOfMemory)?;
        let root = self.words(self.root, 512);
        let i = usize::from(bus) * 2;
        match self.mode {
            Mode::Legacy => root.store(i, RootEntry::new(t.0).0[0]),
            Mode::Scalable => {
                let mut e = ScalableRootEntry([root.load(i), root.load(i + 1)]);
                if devfn < 128 {
                    e.set_lower(t.0);
                    root.store(i, e.0[0]);
                } else {
                    e.set_upper(t.0);
                    root.store(i + 1, e.0[1]);
                }
            }
        }
        self.flush_table(PhysAddr(self.root.0 + i as u64 * 8), 16);
        self.context_tables.insert(key, t);
        Ok(t)
    }

    /// Words of the context entry of `bus`/`devfn` (2 in legacy mode, 4 in scalable).
    fn context_entry(&mut self, bus: u8, devfn: u8) -> Result<(Words, PhysAddr)> {
        let t = self.context_table(bus, devfn)?;
        let (n, idx) = match self.mode {
            Mode::Legacy => (2, usize::from(devfn)),
            Mode::Scalable => (4, usize::from(devfn % 128)),
        };
        let pa = PhysAddr(t.0 + (idx * n * 8) as u64);
        Ok((self.words(pa, n), pa))
    }

    /// Write a multi-word entry whose word 0 holds Present: the other words first, then
    /// word 0, so the hardware never sees a present entry with stale fields.
    fn publish_entry(&mut self, w: &Words, pa: PhysAddr, value: &[u64]) {
        for (i, v) in value.iter().enumerate().skip(1) {
            w.store(i, *v);
        }
        self.flush_table(pa, value.len() * 8);
        self.regs.publish_barrier();
        w.store(0, value[0]);
        self.flush_table(pa, 8);
    }

    /// The PASID entry for domain `did` with table `slptptr` (`None`: pass-through).
    fn pasid_entry_for(&self, did: u16, slptptr: Option<u64>) -> PasidEntry {
        let pe = match slptptr {
            Some(p) => PasidEntry::second_level(did, p, self.levels),
            None => PasidEntry::pass_through(did),
        };
        if self.features.ecap.smpwcs {
            // Page walks snoop CPU caches where the hardware can (§9.6 PWSNP).
            pe.with_pwsnp()
        } else {
            pe
        }
    }

    /// Words of the PASID entry of `pasid` in requester `sid`'s PASID table. With
    /// `alloc`, a missing PASID table is allocated (zeroed: every entry not present) and
    /// linked from the directory; without, a missing table gives `None`.
    fn pasid_slot(
        &mut self,
        sid: u16,
        pasid: u32,
        alloc: bool,
    ) -> Result<Option<(Words, PhysAddr)>> {
        let di = pasid_dir_index(pasid);
        let tables = self.pasid.get(&sid).ok_or(Error::RequesterNotAttached)?;
        let (dir, known) = (tables.dir, tables.tables.get(&di).copied());
        let table = match known {
            Some(t) => t,
            None if !alloc => return Ok(None),
            None => {
                let t = self
                    .mem
                    .alloc_zeroed(PAGE, PAGE)
                    .ok_or(Error::OutOfMemory)?;
                self.flush_table(t, PAGE);
                self.regs.publish_barrier();
                let de = PhysAddr(dir.0 + (di * 8) as u64);
                self.words(de, 1).store(0, PasidDirEntry::new(t.0).0);
                self.flush_table(de, 8);
                if let Some(p) = self.pasid.get_mut(&sid) {
                    p.tables.insert(di, t);
                }
                t
            }
        };
        let pa = PhysAddr(table.0 + (pasid_table_index(pasid) * 64) as u64);
        Ok(Some((self.words(pa, 8), pa)))
    }

    /// Tear down the PASID entry of (`sid`, `pasid`) that carries domain-id `did`, in
    /// the order of [`inv::teardown_steps`]: clear Present; PASID-cache invalidation
    /// (PASID-selective), IOTLB invalidation of the DID and PASID-based IOTLB
    /// invalidation, waited for; then zero the entry. No device-TLB invalidation: the
    /// driver never sets DTE, so no device caches translations through these entries.
    fn teardown_pasid_entry(
        &mut self,
        w: &Words,
        pa: PhysAddr,
        did: u16,
        sid: u16,
        pasid: u32,
    ) -> Result<()> {
        let steps = teardown_steps(&TeardownTarget {
            mode: Mode::Scalable,
            did,
            sid,
            pasid,
            device_tlb: None,
        });
        let mut batch = Vec::new();
        for step in steps {
            match step {
                TeardownStep::ClearPresent => {
                    w.store(0, w.load(0) & !PE0_P);
                    self.flush_table(pa, 8);
                }
                TeardownStep::Invalidate(d) => batch.push(d),
                TeardownStep::Wait => self.invalidate(&batch)?,
                TeardownStep::ClearEntry => {
                    for i in 0..8 {
                        w.store(i, 0);
                    }
                    self.flush_table(pa, 64);
                }
            }
        }
        Ok(())
    }

    /// After a PASID entry went from not present to present: with CAP.CM the hardware
    /// may have cached the not-present entry, so the PASID cache and the domain's IOTLB
    /// are invalidated (§6.1); otherwise write buffers are flushed if CAP.RWBF.
    fn published_pasid_entry(&mut self, did: u16, pasid: u32) -> Result<()> {
        if self.features.cap.cm {
            self.invalidate(&[
                Descriptor::pasid_cache(inv::PC_G_PASID, did, pasid),
                Descriptor::iotlb(IotlbInvalidation::Domain(did), self.drain),
            ])
        } else {
            self.write_buffer_flush()
        }
    }

    /// Attach requester `bus:devfn` to a domain (a pass-through domain gets TT = 10b or
    /// PGTT = 100b instead of a table pointer). Legacy mode: a context entry with
    /// TT = 00b, the domain's DID, AW and SLPTPTR. Scalable mode: a PASID directory
    /// covering every PASID ECAP.PSS allows, the PASID table of RID_PASID (0) whose entry
    /// has PGTT = second-level, and a scalable context entry pointing at them (PASIDE
    /// with ECAP.PASID, so [`Vtd::attach_pasid`] can add PASIDs; PRE when the page
    /// request queue is set up). With CAP.CM the not-present to present change is
    /// invalidated (DID 0 for the context cache, §6.1); otherwise write buffers are
    /// flushed if CAP.RWBF.
    pub fn attach(&mut self, dom: DomainId, bus: u8, devfn: u8) -> Result<()> {
        let sid = u16::from(bus) << 8 | u16::from(devfn);
        if self.attached.contains_key(&sid) {
            return Err(Error::AlreadyAttached);
        }
        let (did, slptptr) = {
            let d = self.domain(dom)?;
            (d.did, d.pt.as_ref().map(|p| p.root().0))
        };
        let (w, pa) = self.context_entry(bus, devfn)?;
        if w.load(0) & 1 != 0 {
            return Err(Error::AlreadyAttached);
        }
        match self.mode {
            Mode::Legacy => {
                let e = match slptptr {
                    Some(p) => ContextEntry::translated(did, p, self.levels),
                    None => ContextEntry::pass_through(did, self.levels),
                };
                self.publish_entry(&w, pa, &e.0);
            }
            Mode::Scalable => {
                let dir = self
                    .mem
                    .alloc_zeroed(self.pasid_dir_bytes, PAGE)
                    .ok_or(Error::OutOfMemory)?;
                let Some(table) = self.mem.alloc_zeroed(PAGE, PAGE) else {
                    // SAFETY: `dir` was just allocated and never published.
                    unsafe { self.mem.free(dir, self.pasid_dir_bytes, PAGE) };
                    return Err(Error::OutOfMemory);
                };
                self.flush_table(dir, self.pasid_dir_bytes);
                self.flush_table(table, PAGE);
                let pe = self.pasid_entry_for(did, slptptr);
                let rp = PhysAddr(table.0 + (pasid_table_index(RID_PASID) * 64) as u64);
                let pw = self.words(rp, 8);
                self.publish_entry(&pw, rp, &pe.0);
                let de = PhysAddr(dir.0 + (pasid_dir_index(RID_PASID) * 8) as u64);
                self.words(de, 1).store(0, PasidDirEntry::new(table.0).0);
                self.flush_table(de, 8);
                let mut ce = ScalableContextEntry::new(dir.0, self.pdts, RID_PASID);
                if self.features.ecap.pasid {
                    ce = ce.with_pasid_enable();
                }
                if self.prq.is_some() {
                    ce = ce.with_page_requests();
                }
                self.publish_entry(&w, pa, &ce.0);
                let mut tables = BTreeMap::new();
                tables.insert(pasid_dir_index(RID_PASID), table);
                self.pasid.insert(sid, PasidTables { dir, tables });
            }
        }
        self.attached.insert(sid, dom);
        self.domain_mut(dom)?.devices.push(sid);
        if self.features.cap.cm {
            let mut d = alloc::vec![Descriptor::context_cache(ContextInvalidation::Device {
                did: 0,
                sid,
                fm: 0
            })];
            if self.mode == Mode::Scalable {
                d.push(Descriptor::pasid_cache(inv::PC_G_PASID, did, RID_PASID));
            }
            d.push(Descriptor::iotlb(
                IotlbInvalidation::Domain(did),
                self.drain,
            ));
            self.invalidate(&d)?;
        } else {
            self.write_buffer_flush()?;
        }
        Ok(())
    }

    /// Route requests of `bus:devfn` that carry `pasid` through a domain (scalable mode
    /// only; legacy mode has no PASID tables). The requester must be attached itself
    /// ([`Vtd::attach`] made its context entry and PASID directory). Writes a PASID entry
    /// with PGTT = second-level (010b), the domain's DID, AW and SLPTPTR (PGTT = 100b for
    /// a pass-through domain), allocating and linking the PASID table of the PASID's
    /// directory index first if needed. Refused: PASIDs ECAP.PASID / ECAP.PSS do not
    /// allow ([`Unsupported::Pasid`]), RID_PASID itself (it is the requester's entry for
    /// requests without PASID), and a second attach of the same (requester, PASID).
    pub fn attach_pasid(&mut self, dom: DomainId, bus: u8, devfn: u8, pasid: u32) -> Result<()> {
        if self.mode != Mode::Scalable {
            return Err(Unsupported::ScalableMode.into());
        }
        if pasid == RID_PASID {
            return Err(Error::InvalidField("PASID (RID_PASID)"));
        }
        self.features.check_pasid(pasid)?;
        let sid = u16::from(bus) << 8 | u16::from(devfn);
        let (did, slptptr) = {
            let d = self.domain(dom)?;
            (d.did, d.pt.as_ref().map(|p| p.root().0))
        };
        if self.pasid_attached.contains_key(&(sid, pasid)) {
            return Err(Error::AlreadyAttached);
        }
        if !self.attached.contains_key(&sid) {
            return Err(Error::RequesterNotAttached);
        }
        let Some((w, pa)) = self.pasid_slot(sid, pasid, true)? else {
            return Err(Error::OutOfMemory);
        };
        if w.load(0) & PE0_P != 0 {
            return Err(Error::AlreadyAttached);
        }
        let pe = self.pasid_entry_for(did, slptptr);
        self.publish_entry(&w, pa, &pe.0);
        self.pasid_attached.insert((sid, pasid), dom);
        self.domain_mut(dom)?.pasids.push((sid, pasid));
        self.published_pasid_entry(did, pasid)
    }

    /// Stop routing requests of `bus:devfn` with `pasid`, following the teardown order
    /// of [`inv::teardown_steps`]: clear the PASID entry's Present bit, invalidate the
    /// PASID cache (PASID-selective) and the IOTLB (the DID's second-level translations
    /// and PASID-based), wait for completion, then clear the entry. Returns after that;
    /// the requester's other PASIDs and its requests without PASID are untouched. The
    /// PASID table stays linked until the requester is detached.
    pub fn detach_pasid(&mut self, bus: u8, devfn: u8, pasid: u32) -> Result<()> {
        if self.mode != Mode::Scalable {
            return Err(Unsupported::ScalableMode.into());
        }
        let sid = u16::from(bus) << 8 | u16::from(devfn);
        let dom = *self
            .pasid_attached
            .get(&(sid, pasid))
            .ok_or(Error::NoSuchDomain)?;
        let did = self.domain(dom)?.did;
        let Some((w, pa)) = self.pasid_slot(sid, pasid, false)? else {
            return Err(Error::NoSuchDomain);
        };
        self.teardown_pasid_entry(&w, pa, did, sid, pasid)?;
        self.pasid_attached.remove(&(sid, pasid));
        self.domain_mut(dom)?.pasids.retain(|&x| x != (sid, pasid));
        Ok(())
    }

    /// Whether any PASID of requester `sid` is attached.
    fn has_pasids(&self, sid: u16) -> bool {
        self.pasid_attached
            .range((sid, 0)..=(sid, u32::MAX))
            .next()
            .is_some()
    }

    /// Move the requests without PASID of an attached requester to another domain,
    /// keeping its PASID attachments (and, in scalable mode, its context entry and PASID
    /// structures). Scalable mode: the RID_PASID entry is torn down in the order of
    /// [`inv::teardown_steps`] for the old domain-id and written again for the new
    /// domain; legacy mode: [`Vtd::detach`] then [`Vtd::attach`] (on a failure of the
    /// second step the requester is left detached). Requests without PASID fault while
    /// the entry is being replaced.
    pub fn reattach(&mut self, dom: DomainId, bus: u8, devfn: u8) -> Result<()> {
        let sid = u16::from(bus) << 8 | u16::from(devfn);
        let old = *self.attached.get(&sid).ok_or(Error::NoSuchDomain)?;
        let (did, slptptr) = {
            let d = self.domain(dom)?;
            (d.did, d.pt.as_ref().map(|p| p.root().0))
        };
        if old == dom {
            return Ok(());
        }
        if self.mode == Mode::Legacy {
            self.detach(bus, devfn)?;
            return self.attach(dom, bus, devfn);
        }
        let old_did = self.domain(old)?.did;
        let Some((w, pa)) = self.pasid_slot(sid, RID_PASID, false)? else {
            return Err(Error::RequesterNotAttached);
        };
        self.teardown_pasid_entry(&w, pa, old_did, sid, RID_PASID)?;
        let pe = self.pasid_entry_for(did, slptptr);
        self.publish_entry(&w, pa, &pe.0);
        self.attached.insert(sid, dom);
        self.domain_mut(old)?.devices.retain(|&s| s != sid);
        self.domain_mut(dom)?.devices.push(sid);
        self.published_pasid_entry(did, RID_PASID)
    }

    /// Detach `bus:devfn` following the teardown order of [`inv::teardown_steps`]:
    /// clear Present, invalidate (PASID cache / context cache, IOTLB), wait, then clear
    /// the entry and free the PASID structures. Refused with [`Error::PasidsAttached`]
    /// while PASIDs of the requester are attached: they live in its PASID directory.
    pub fn detach(&mut self, bus: u8, devfn: u8) -> Result<()> {
        let sid = u16::from(bus) << 8 | u16::from(devfn);
        let dom = *self.attached.get(&sid).ok_or(Error::NoSuchDomain)?;
        if self.has_pasids(sid) {
            return Err(Error::PasidsAttached);
        }
        let did = self.domain(dom)?.did;
        let (ctx, ctx_pa) = self.context_entry(bus, devfn)?;
        // In scalable mode the RID_PASID entry is torn down first, then the context entry.
        let target_words = match self.mode {
            Mode::Scalable => {
                let Some((w, pa)) = self.pasid_slot(sid, RID_PASID, false)? else {
                    return Err(Error::RequesterNotAttached);
                };
                (w, pa, 8)
            }
            Mode::Legacy => (ctx, ctx_pa, 2),
        };
        let steps = teardown_steps(&TeardownTarget {
            mode: self.mode,
            did,
            sid,
            pasid: RID_PASID,
            device_tlb: None,
        });
        let mut batch = Vec::new();
        for step in steps {
            match step {
                TeardownStep::ClearPresent => {
                    let (w, pa, _) = &target_words;
                    w.store(0, w.load(0) & !1);
                    self.flush_table(*pa, 8);
                }
                TeardownStep::Invalidate(d) => batch.push(d),
                TeardownStep::Wait => {
                    if self.mode == Mode::Scalable {
                        // The context entry goes too: clear its Present bit before the
                        // same wait, with a device-selective context-cache invalidation.
                        ctx.store(0, ctx.load(0) & !1);
                        self.flush_table(ctx_pa, 8);
                        batch.push(Descriptor::context_cache(ContextInvalidation::Device {
                            did,
                            sid,
                            fm: 0,
                        }));
                    }
                    self.invalidate(&batch)?;
                }
                TeardownStep::ClearEntry => {
                    let (w, pa, n) = &target_words;
                    for i in 0..*n {
                        w.store(i, 0);
                    }
                    self.flush_table(*pa, n * 8);
                    if let Some(p) = self.pasid.remove(&sid) {
                        for i in 0..4 {
                            ctx.store(i, 0);
                        }
                        self.flush_table(ctx_pa, 32);
                        // SAFETY: the context entry pointing at these tables is cleared
                        // and the caches that could hold them were invalidated above.
                        unsafe {
                            for t in p.tables.values() {
                                self.mem.free(*t, PAGE, PAGE);
                            }
                            self.mem.free(p.dir, self.pasid_dir_bytes, PAGE);
                        }
                    }
                }
            }
        }
        self.attached.remove(&sid);
        self.domain_mut(dom)?.devices.retain(|&s| s != sid);
        Ok(())
    }

    /// Map `size` bytes at `iova` to `pa` in a domain. With CAP.CM the new range is
    /// invalidated as well (not-present entries may be cached); otherwise write buffers
    /// are flushed if CAP.RWBF.
    pub fn map(&mut self, dom: DomainId, iova: u64, pa: u64, size: u64, prot: Prot) -> Result<()> {
        let d = self
            .domains
            .get_mut(dom.0)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchDomain)?;
        d.pt.as_mut()
            .ok_or(Error::PassThroughDomain)?
            .map(&mut self.mem, iova, pa, size, prot)?;
        let did = d.did;
        if self.features.cap.cm {
            let plan = InvalidationPlan::new(&self.planner, did, iova, size, false);
            self.run_plan(&plan)
        } else {
            self.write_buffer_flush()
        }
    }

    fn run_plan(&mut self, plan: &InvalidationPlan) -> Result<()> {
        let descs: Vec<Descriptor> = plan
            .invalidations()
            .into_iter()
            .map(|i| Descriptor::iotlb(i, self.drain))
            .collect();
        if descs.is_empty() {
            return Ok(());
        }
        self.invalidate(&descs)
    }

    /// Unmap `iova..iova+size` of a domain. Returns after the IOTLB invalidation that
    /// covers the removed mappings completed (page-selective where CAP.PSI allows,
    /// domain-selective above the configured count; IH only when no table was split or
    /// unlinked), and then releases the tables the unmap emptied.
    pub fn unmap(&mut self, dom: DomainId, iova: u64, size: u64) -> Result<Unmapped> {
        let d = self
            .domains
            .get_mut(dom.0)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchDomain)?;
        let u =
            d.pt.as_mut()
                .ok_or(Error::PassThroughDomain)?
                .unmap(&mut self.mem, iova, size)?;
        let did = d.did;
        if u.bytes > 0 || u.tables_retired > 0 {
            let plan = InvalidationPlan::new(&self.planner, did, iova, size, u.leaf_only());
            self.run_plan(&plan)?;
            let domain = self.domains.get_mut(dom.0).and_then(Option::as_mut);
            if let Some(pt) = domain.and_then(|d| d.pt.as_mut()) {
                // SAFETY: the invalidation covering the unmapped range (IH clear when
                // tables were unlinked) completed above.
                unsafe { pt.release_retired(&mut self.mem) };
            }
        }
        Ok(u)
    }

    /// Look up an IOVA in a domain's table.
    pub fn translate(&self, dom: DomainId, iova: u64) -> Result<Option<Translation>> {
        let pt = self.domain(dom)?.pt.as_ref();
        Ok(pt
            .ok_or(Error::PassThroughDomain)?
            .translate(&self.mem, iova))
    }

    /// Turn translation off (GCMD.TE = 0, waiting for GSTS.TES to clear): DMA is then
    /// no longer remapped. Tables stay allocated; [`Vtd::new`] on the same unit starts
    /// afresh.
    pub fn disable_translation(&mut self) -> Result<()> {
        self.gcmd_persistent(regs::GCMD_TE, false)
    }

    /// Deliver every pending fault record (starting at FSTS.FRI, wrapping over CAP.NFR
    /// registers), clearing each by writing 1 to F, then clear FSTS.PFO and report
    /// whether faults were lost.
    pub fn drain_faults(&mut self, mut f: impl FnMut(FaultRecord)) -> FaultReport {
        let mut report = FaultReport::default();
        let fsts = self.regs.read32(regs::FSTS);
        let (fro, nfr) = (self.features.cap.fro, self.features.cap.nfr);
        if fsts & regs::FSTS_PPF != 0 {
            let start = field_get(regs::FSTS_FRI, u64::from(fsts)) as u16 % nfr;
            for k in 0..nfr {
                let i = (start + k) % nfr;
                let o = regs::frcd_reg(fro, i);
                let hi = self.regs.read64(o + 8);
                let Some(rec) = FaultRecord::decode(i, self.regs.read64(o), hi) else {
                    break;
                };
                // F is RW1C in bit 127 (bit 31 of the record's last dword).
                self.regs.write32(o + 12, 1 << 31);
                report.records += 1;
                f(rec);
            }
        }
        if fsts & regs::FSTS_PFO != 0 {
            self.regs.write32(regs::FSTS, regs::FSTS_PFO);
            report.overflowed = true;
        }
        report
    }

    /// Deliver every page request in the page request queue (from PQH to PQT), decoded
    /// ([`PageRequest`]) or, for a descriptor that is not a page request, its decode
    /// error; then advance PQH. `overflowed` reports PRS.PRO (requests the hardware
    /// dropped, answering those that ended a group itself), which is cleared. Without a
    /// page request queue nothing is delivered.
    ///
    /// Each group whose last request (`last_in_group`) arrived needs one
    /// [`Vtd::page_group_response`].
    pub fn drain_page_requests(
        &mut self,
        f: impl FnMut(core::result::Result<PageRequest, PageRequestError>),
    ) -> PrqReport {
        match &self.prq {
            Some(q) => q.drain(&mut self.regs, &self.mem, f),
            None => PrqReport::default(),
        }
    }

    /// Answer a page request group: submit the page group response descriptor (§7.7.1)
    /// through the invalidation queue and wait for it to complete. Refused without a
    /// page request queue ([`Unsupported::PageRequests`]), and for a group index or PASID
    /// wider than its field.
    pub fn page_group_response(&mut self, group: PageGroup, code: ResponseCode) -> Result<()> {
        if self.prq.is_none() {
            return Err(Unsupported::PageRequests.into());
        }
        if group.index > MAX_GROUP_INDEX {
            return Err(Error::InvalidField("PRGI"));
        }
        if group.pasid.is_some_and(|p| p > MAX_PASID) {
            return Err(Error::InvalidField("PASID"));
        }
        self.invalidate(&[group_response(&group, code)])
    }
}

/// Issue one context-cache or IOTLB descriptor through the registers.
fn register_invalidate<R: RegisterIo, T: PollTimeout>(
    regs: &mut R,
    timeout: &mut T,
    iotlb_base: usize,
    d: &Descriptor,
) -> Result<()> {
    let g = field_get(inv::DESC_G, d.0[0]);
    let did = field_get(inv::DESC_DID, d.0[0]) as u16;
    match d.kind() {
        inv::TYPE_CONTEXT_CACHE => {
            let c = match g {
                regs::GRAN_GLOBAL => ContextInvalidation::Global,
                regs::GRAN_DOMAIN => ContextInvalidation::Domain(did),
                _ => ContextInvalidation::Device {
                    did,
                    sid: field_get(inv::CC_SID, d.0[0]) as u16,
                    fm: field_get(inv::CC_FM, d.0[0]) as u8,
                },
            };
            inv::context_invalidate_register(regs, timeout, c)
        }
        inv::TYPE_IOTLB => {
            let i = match g {
                regs::GRAN_GLOBAL => IotlbInvalidation::Global,
                regs::GRAN_DOMAIN => IotlbInvalidation::Domain(did),
                _ => IotlbInvalidation::Page {
                    did,
                    addr: d.0[1] & inv::DESC_ADDR,
                    am: field_get(inv::DESC_AM, d.0[1]) as u8,
                    ih: d.0[1] & inv::DESC_IH != 0,
                },
            };
            let drain = d.0[0] & inv::IOTLB_DR != 0;
            inv::iotlb_invalidate_register(regs, timeout, iotlb_base, i, drain)
        }
        _ => Err(Unsupported::QueuedInvalidation.into()),
    }
}

#[cfg(test)]
#[path = "vtd_tests.rs"]
mod tests;
