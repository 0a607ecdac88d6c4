//! The top-level driver: initialisation (SMMUv3 spec §6.3 CR0/CR0ACK handshakes and the
//! initialisation order of its "Register usage" guidance), stream configuration, stage-1
//! domains, map/unmap with invalidation, and event draining.
//!
//! # Substreams
//! Without substreams (IDR1.SSIDSIZE = 0, as on QEMU 7.2) a domain owns one CD and an
//! attached stream's STE points at it (S1CDMax = 0). With substreams (and
//! [`SmmuConfig::max_ssid_bits`] > 0) each attached stream owns a CD table (linear up to
//! 10 SubstreamID bits, two-level with 1024-CD leaves above, spec §3.3.2), its STE has
//! S1CDMax = the table's width and S1DSS = 0b10 (non-substream traffic uses CD 0, spec
//! §5.2), and attaching a domain writes the domain's CD into the slot of the SubstreamID:
//! 0 for untagged DMA ([`Smmu::attach`]), the PASID otherwise ([`Smmu::attach_pasid`]).
//! A CD is cleared with a hitless update followed by CFGI_CD + CMD_SYNC; when the last CD
//! of a stream goes, its STE aborts the stream's traffic and the table is freed after the
//! CFGI_STE + CMD_SYNC completed.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::cd::{Cd, CdConfig, CdTable, DEFAULT_MAIR};
use crate::cmd::Command;
use crate::cmdq::{CmdqStats, CommandQueue};
use crate::error::{Error, Result, TimeoutKind, Unsupported};
use crate::event::Event;
use crate::evtq::{DrainReport, EventQueue, OutputQueue, PriQueue, QueueRecord};
use crate::features::{Features, TableEndian};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::pagetable::{PageTable, Prot, Unmapped};
use crate::priq::PriRecord;
use crate::regs::{self, field_prep, poll_until, PollTimeout, RegisterIo};
use crate::ste::{S1Dss, Stage1Ste, Ste, StreamConfig, WalkAttrs};
use crate::strtab::{StreamTable, StreamTableFormat};
use crate::tlbi::{InvalidationPolicy, TlbiPlan, DEFAULT_MAX_PER_PAGE};
use crate::update::{update_entry, CdKind, EntryTarget, SteKind};

/// Stream table format choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTableChoice {
    /// Two-level when supported and wider than one level-2 table, else linear.
    Auto,
    /// Force a format (refused if unsupported).
    Fixed(StreamTableFormat),
}

/// Driver configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuConfig {
    /// log2 of the command queue entries (clamped to IDR1.CMDQS).
    pub cmdq_log2: u8,
    /// log2 of the event queue entries (clamped to IDR1.EVENTQS).
    pub evtq_log2: u8,
    /// log2 of the PRI queue entries (clamped to IDR1.PRIQS); used only on an SMMU with
    /// IDR0.PRI. 0: no PRI queue (page requests are not taken).
    pub priq_log2: u8,
    /// StreamID bits to cover (clamped to IDR1.SIDSIZE).
    pub sid_bits: u8,
    /// Stream table format.
    pub strtab: StreamTableChoice,
    /// What unconfigured StreamIDs do: [`Ste::abort`] (silent) or [`Ste::invalid`]
    /// (C_BAD_STE events). With a two-level table this applies inside level-2 tables
    /// already allocated; StreamIDs whose level-2 table does not exist yet have an invalid
    /// L1 descriptor and are reported as bad configuration events.
    pub unassigned: Ste,
    /// Input address bits of stage-1 domains (25..=48).
    pub va_bits: u8,
    /// Without range invalidation: per-page TLBIs above this count become one
    /// TLBI_NH_ASID.
    pub max_per_page_tlbi: u64,
    /// SubstreamID bits of the per-stream CD tables (clamped to IDR1.SSIDSIZE, and to 10
    /// without IDR0.CD2L); 0 keeps one CD per domain even on an SMMU with substreams.
    pub max_ssid_bits: u8,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        Self {
            cmdq_log2: 8,
            evtq_log2: 7,
            priq_log2: 6,
            sid_bits: 16,
            strtab: StreamTableChoice::Auto,
            unassigned: Ste::abort(),
            va_bits: 48,
            max_per_page_tlbi: DEFAULT_MAX_PER_PAGE,
            max_ssid_bits: 20,
        }
    }
}

/// Handle of a stage-1 domain (an ASID, a CD and a page table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(usize);

#[derive(Debug)]
struct Domain {
    asid: u16,
    /// The domain's own CD (used by streams when there are no substreams).
    cd: CdTable,
    /// What its CD holds (written into streams' CD tables with substreams).
    cd_words: Cd,
    pt: PageTable,
    /// Streams whose STE points at `cd`.
    streams: Vec<u32>,
    /// (StreamID, SubstreamID) slots of streams' CD tables holding its CD.
    substreams: Vec<(u32, u32)>,
}

/// A stream's own CD table (with substreams).
#[derive(Debug)]
struct StreamCds {
    table: CdTable,
    /// The domain in each valid CD slot, by SubstreamID (0: non-substream traffic).
    cds: BTreeMap<u32, DomainId>,
}

/// An initialised SMMU.
#[derive(Debug)]
pub struct Smmu<R: RegisterIo, M: DmaMemory, T: PollTimeout> {
    regs: R,
    mem: M,
    timeout: T,
    features: Features,
    strtab: StreamTable,
    cmdq: CommandQueue,
    evtq: EventQueue,
    /// The PRI queue, on an SMMU with IDR0.PRI when configured.
    priq: Option<PriQueue>,
    domains: Vec<Option<Domain>>,
    /// Per-stream CD tables, by StreamID (with substreams).
    stream_cds: BTreeMap<u32, StreamCds>,
    /// SubstreamID bits of per-stream CD tables; 0: one CD per domain.
    ssid_bits: u8,
    policy: InvalidationPolicy,
    va_bits: u8,
}

struct SteTarget<'a, R: RegisterIo, T: PollTimeout> {
    words: Words,
    sid: u32,
    regs: &'a mut R,
    cmdq: &'a mut CommandQueue,
    timeout: &'a mut T,
}

impl<R: RegisterIo, T: PollTimeout> EntryTarget for SteTarget<'_, R, T> {
    fn read(&self, i: usize) -> u64 {
        self.words.load(i)
    }
    fn write(&mut self, i: usize, v: u64) {
        self.words.store(i, v);
    }
    fn sync(&mut self) -> Result<()> {
        self.cmdq.issue_and_sync(
            self.regs,
            self.timeout,
            &[Command::CfgiSte {
                sid: self.sid,
                leaf: true,
            }],
        )
    }
}

struct CdTarget<'a, R: RegisterIo, T: PollTimeout> {
    words: Words,
    ssid: u32,
    streams: &'a [u32],
    regs: &'a mut R,
    cmdq: &'a mut CommandQueue,
    timeout: &'a mut T,
}

impl<R: RegisterIo, T: PollTimeout> EntryTarget for CdTarget<'_, R, T> {
    fn read(&self, i: usize) -> u64 {
        self.words.load(i)
    }
    fn write(&mut self, i: usize, v: u64) {
        self.words.store(i, v);
    }
    fn sync(&mut self) -> Result<()> {
        if self.streams.is_empty() {
            // No STE points at this CD, so the SMMU cannot hold a copy of it.
            return Ok(());
        }
        let ssid = self.ssid;
        let cmds = self.streams.iter().map(|&sid| Command::CfgiCd {
            sid,
            ssid,
            leaf: true,
        });
        let r = self.cmdq.issue_iter(self.regs, self.timeout, cmds);
        let s = self.cmdq.sync(self.regs, self.timeout);
        r.and(s)
    }
}

fn wait_ack<R: RegisterIo, T: PollTimeout>(
    regs: &mut R,
    timeout: &mut T,
    ack: usize,
    value: u32,
    kind: TimeoutKind,
) -> Result<()> {
    if poll_until(timeout, || regs.read32(ack) == value) {
        Ok(())
    } else {
        Err(Error::Timeout(kind))
    }
}

/// Drains output queue `q` and reports its write abort error (`abort`, a GERROR bit) if it
/// was active, acknowledging it once the queue has been drained: the records before the
/// failed write were handed out and the queue has room again, so the next loss is
/// reported again and command queue waits do not see it as a pending global error.
fn drain_acknowledging<R: RegisterIo, Q: QueueRecord>(
    regs: &mut R,
    q: &mut OutputQueue<Q>,
    abort: u32,
    f: impl FnMut(Q),
) -> DrainReport {
    let gerror = regs.read32(regs::GERROR);
    let gerrorn = regs.read32(regs::GERRORN);
    let aborted = (gerror ^ gerrorn) & abort != 0;
    let mut report = q.drain(regs, f);
    if aborted {
        regs.write32(regs::GERRORN, gerrorn ^ abort);
        report.write_aborted = true;
    }
    report
}

impl<R: RegisterIo, M: DmaMemory, T: PollTimeout> Smmu<R, M, T> {
    /// Probe and initialise the SMMU:
    /// 1. read IDR0..5 and refuse hardware this driver cannot drive safely (non-coherent
    ///    table access, big-endian-only tables, preset tables or queues);
    /// 2. disable it (CR0 = 0, wait for CR0ACK) and turn interrupts off (IRQ_CTRL = 0,
    ///    wait for IRQ_CTRLACK): this driver polls;
    /// 3. acknowledge stale global errors (GERRORN = GERROR);
    /// 4. program CR1 (write-back, inner-shareable tables and queues), CR2 (PTM,
    ///    RECINVSID), the stream table and the queues (a PRI queue only with IDR0.PRI,
    ///    IDR1.PRIQS > 0 and [`SmmuConfig::priq_log2`] > 0);
    /// 5. enable the command queue, issue CFGI_ALL, TLBI_NSNH_ALL (and TLBI_EL2_ALL with
    ///    IDR0.HYP) and CMD_SYNC;
    /// 6. enable the event queue (and the PRI queue), then translation (SMMUEN), each
    ///    acknowledged in CR0ACK.
    pub fn new(mut regs: R, mut mem: M, mut timeout: T, config: SmmuConfig) -> Result<Self> {
        let features = Features::probe(&mut regs);
        if !features.coherent {
            return Err(Unsupported::CoherentAccess.into());
        }
        if matches!(features.endian, TableEndian::Big | TableEndian::Reserved) {
            return Err(Unsupported::LittleEndianTables.into());
        }
        if features.tables_preset || features.queues_preset {
            return Err(Error::InvalidField("preset tables or queues"));
        }
        if features.cmdq_log2 == 0 || features.eventq_log2 == 0 {
            return Err(Unsupported::QueueSize.into());
        }
        if !(25..=48).contains(&config.va_bits) {
            return Err(Error::InvalidField("VA size"));
        }
        let sid_bits = config.sid_bits.min(features.sid_bits);
        let fmt = match config.strtab {
            StreamTableChoice::Fixed(f) => f,
            StreamTableChoice::Auto => {
                if features.two_level_strtab && sid_bits > crate::strtab::STRTAB_SPLIT {
                    StreamTableFormat::TwoLevel
                } else {
                    StreamTableFormat::Linear
                }
            }
        };

        // 2. Disable.
        regs.write32(regs::CR0, 0);
        wait_ack(
            &mut regs,
            &mut timeout,
            regs::CR0ACK,
            0,
            TimeoutKind::Cr0Ack,
        )?;
        regs.write32(regs::IRQ_CTRL, 0);
        wait_ack(
            &mut regs,
            &mut timeout,
            regs::IRQ_CTRLACK,
            0,
            TimeoutKind::IrqCtrlAck,
        )?;
        // 3. Acknowledge stale errors.
        let gerror = regs.read32(regs::GERROR);
        regs.write32(regs::GERRORN, gerror);

        // 4. Tables and queues.
        let strtab = StreamTable::new(&mut mem, &features, fmt, sid_bits, config.unassigned)?;
        let mut cmdq = CommandQueue::new(&mut mem, config.cmdq_log2.min(features.cmdq_log2))?;
        let mut evtq = EventQueue::new(&mut mem, config.evtq_log2.min(features.eventq_log2))?;
        let mut priq = if features.pri && features.priq_log2 > 0 && config.priq_log2 > 0 {
            Some(PriQueue::new(
                &mut mem,
                config.priq_log2.min(features.priq_log2),
            )?)
        } else {
            None
        };
        let cr1 = field_prep(regs::CR1_QUEUE_IC, regs::CR1_CACHE_WB)
            | field_prep(regs::CR1_QUEUE_OC, regs::CR1_CACHE_WB)
            | field_prep(regs::CR1_QUEUE_SH, regs::SH_ISH)
            | field_prep(regs::CR1_TABLE_IC, regs::CR1_CACHE_WB)
            | field_prep(regs::CR1_TABLE_OC, regs::CR1_CACHE_WB)
            | field_prep(regs::CR1_TABLE_SH, regs::SH_ISH);
        regs.write32(regs::CR1, cr1 as u32);
        regs.write32(regs::CR2, regs::CR2_PTM | regs::CR2_RECINVSID);
        regs.write64(regs::STRTAB_BASE, strtab.base_register());
        regs.write32(regs::STRTAB_BASE_CFG, strtab.base_cfg_register());
        cmdq.program(&mut regs);
        evtq.program(&mut regs);
        if let Some(q) = priq.as_mut() {
            q.program(&mut regs);
        }

        // 5. Command queue on; forget anything cached from before.
        regs.publish_barrier();
        regs.write32(regs::CR0, regs::CR0_CMDQEN);
        wait_ack(
            &mut regs,
            &mut timeout,
            regs::CR0ACK,
            regs::CR0_CMDQEN,
            TimeoutKind::Cr0Ack,
        )?;
        let mut inval = alloc::vec![Command::CfgiAll, Command::TlbiNsnhAll];
        if features.hyp {
            inval.push(Command::TlbiEl2All);
        }
        cmdq.issue_and_sync(&mut regs, &mut timeout, &inval)?;

        // 6. Event queue (and PRI queue), then translation.
        let on = regs::CR0_CMDQEN
            | regs::CR0_EVENTQEN
            | if priq.is_some() { regs::CR0_PRIQEN } else { 0 };
        regs.write32(regs::CR0, on);
        wait_ack(
            &mut regs,
            &mut timeout,
            regs::CR0ACK,
            on,
            TimeoutKind::Cr0Ack,
        )?;
        regs.publish_barrier();
        regs.write32(regs::CR0, on | regs::CR0_SMMUEN);
        wait_ack(
            &mut regs,
            &mut timeout,
            regs::CR0ACK,
            on | regs::CR0_SMMUEN,
            TimeoutKind::Cr0Ack,
        )?;

        Ok(Self {
            regs,
            mem,
            timeout,
            features,
            strtab,
            cmdq,
            evtq,
            priq,
            domains: Vec::new(),
            stream_cds: BTreeMap::new(),
            ssid_bits: if features.cd2l {
                config.max_ssid_bits.min(features.ssid_bits).min(20)
            } else {
                config.max_ssid_bits.min(features.ssid_bits).min(10)
            },
            policy: InvalidationPolicy {
                ril: features.ril,
                max_per_page: config.max_per_page_tlbi,
            },
            va_bits: config.va_bits,
        })
    }

    /// Decoded hardware features.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Command queue counters.
    pub fn cmdq_stats(&self) -> CmdqStats {
        self.cmdq.stats
    }

    /// The register interface (for diagnostics).
    pub fn regs_mut(&mut self) -> &mut R {
        &mut self.regs
    }

    /// The memory provider.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Override the invalidation policy (for example to compare RIL = 0 behaviour).
    pub fn set_invalidation_policy(&mut self, p: InvalidationPolicy) {
        self.policy = InvalidationPolicy {
            ril: p.ril && self.features.ril,
            ..p
        };
    }

    /// Issue commands followed by CMD_SYNC and wait for completion.
    pub fn command_sync(&mut self, cmds: &[Command]) -> Result<()> {
        self.cmdq
            .issue_and_sync(&mut self.regs, &mut self.timeout, cmds)
    }

    /// Install `cfg` in the STE of `sid` with a hitless update (the stream leaves any
    /// domain it was attached to). Returns the number of CFGI + CMD_SYNC rounds it took.
    /// Configurations the hardware lacks are refused before anything is written.
    pub fn set_stream(&mut self, sid: u32, cfg: &StreamConfig) -> Result<usize> {
        let ste = Ste::build(cfg, &self.features)?;
        let n = self.write_ste(sid, &ste)?;
        self.detach_from_domains(sid);
        Ok(n)
    }

    /// SubstreamID bits usable with [`Smmu::attach_pasid`] (0: no substreams).
    pub fn ssid_bits(&self) -> u8 {
        self.ssid_bits
    }

    fn write_ste(&mut self, sid: u32, ste: &Ste) -> Result<usize> {
        let slot = self.strtab.slot(&mut self.mem, sid)?;
        if let Some((first, span)) = slot.new_l2 {
            // A new level-2 table: make the SMMU re-read the L1 descriptor.
            self.cmdq.issue_and_sync(
                &mut self.regs,
                &mut self.timeout,
                &[Command::CfgiSteRange {
                    sid: first,
                    range: span - 1,
                }],
            )?;
        }
        // SAFETY: the slot is a 64-byte STE inside the live stream table.
        let words = unsafe { Words::new(&self.mem, slot.addr, 8) };
        let mut t = SteTarget {
            words,
            sid,
            regs: &mut self.regs,
            cmdq: &mut self.cmdq,
            timeout: &mut self.timeout,
        };
        update_entry::<SteKind, _>(&mut t, &ste.0)
    }

    /// After `sid`'s STE was replaced (and its CFGI_STE + CMD_SYNC completed): it is in
    /// no domain any more and its CD table, if it had one, is freed.
    fn detach_from_domains(&mut self, sid: u32) {
        for d in self.domains.iter_mut().flatten() {
            d.streams.retain(|&s| s != sid);
            d.substreams.retain(|&(s, _)| s != sid);
        }
        if let Some(cds) = self.stream_cds.remove(&sid) {
            // SAFETY: the STE no longer points at the table and its invalidation
            // completed (callers run this after the STE update's CFGI_STE + CMD_SYNC).
            unsafe { cds.table.free(&mut self.mem) };
        }
    }

    /// Abort all traffic of `sid` (no events).
    pub fn set_abort(&mut self, sid: u32) -> Result<usize> {
        let n = self.write_ste(sid, &Ste::abort())?;
        self.detach_from_domains(sid);
        Ok(n)
    }

    /// Let `sid` bypass translation.
    pub fn set_bypass(&mut self, sid: u32) -> Result<usize> {
        let n = self.write_ste(sid, &Ste::bypass())?;
        self.detach_from_domains(sid);
        Ok(n)
    }

    /// Create a stage-1 domain tagged `asid`: a page table with the configured VA size and
    /// a single CD (T0SZ, 4KB granule, IPS = OAS, AA64, R = 1, A = 1, the default MAIR).
    pub fn create_domain(&mut self, asid: u16) -> Result<DomainId> {
        self.features.require_stage1()?;
        self.features.check_asid(asid)?;
        if self.domains.iter().flatten().any(|d| d.asid == asid) {
            return Err(Error::InvalidAsid(asid));
        }
        let oa_bits = self.features.oas_bits.min(48);
        let mut pt = PageTable::new(&mut self.mem, self.va_bits, oa_bits)?;
        let cd = match CdTable::single(&mut self.mem) {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: the table was never referenced by any CD.
                unsafe { pt.destroy(&mut self.mem) };
                return Err(e);
            }
        };
        let cfg = CdConfig {
            asid,
            ttb0: pt.root(),
            t0sz: pt.t0sz(),
            walk: WalkAttrs::WB_ISH,
            ips: self.features.oas_encoding().min(5),
            mair: DEFAULT_MAIR,
            affd: false,
            ha: false,
            hd: false,
            aset: true,
            had: false,
        };
        let words = match Cd::build(&cfg, &self.features) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: neither the table nor the CD was ever referenced by the SMMU.
                unsafe {
                    pt.destroy(&mut self.mem);
                    cd.free(&mut self.mem);
                }
                return Err(e);
            }
        };
        // SAFETY: the CD region is live (allocated above).
        unsafe { self.write_cd(cd.base(), 0, &[], &words) }?;
        pt.set_spare_limit(16);
        let d = Domain {
            asid,
            cd,
            cd_words: words,
            pt,
            streams: Vec::new(),
            substreams: Vec::new(),
        };
        let id = match self.domains.iter().position(Option::is_none) {
            Some(i) => {
                self.domains[i] = Some(d);
                i
            }
            None => {
                self.domains.push(Some(d));
                self.domains.len() - 1
            }
        };
        Ok(DomainId(id))
    }

    fn domain(&mut self, id: DomainId) -> Result<&mut Domain> {
        self.domains
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchDomain)
    }

    /// ASID of a domain.
    pub fn domain_asid(&mut self, id: DomainId) -> Result<u16> {
        Ok(self.domain(id)?.asid)
    }

    /// Translate `sid`'s non-substream traffic with the domain: its STE points at the
    /// domain's CD, or, with substreams, the domain's CD goes into slot 0 of the stream's
    /// CD table. Returns the number of CFGI + CMD_SYNC rounds it took.
    pub fn attach(&mut self, sid: u32, id: DomainId) -> Result<usize> {
        if self.ssid_bits > 0 {
            return self.attach_cd(sid, 0, id);
        }
        let base = self.domain(id)?.cd.base();
        let n = self.set_stream(sid, &StreamConfig::Stage1(Stage1Ste::single_cd(base)))?;
        self.domain(id)?.streams.push(sid);
        Ok(n)
    }

    /// Stop translating `sid`'s non-substream traffic: its STE aborts the stream's traffic
    /// (silently), or, with substreams, slot 0 of its CD table is cleared (untagged DMA then
    /// faults with C_BAD_CD) while substreams remain attached.
    pub fn detach(&mut self, sid: u32) -> Result<usize> {
        if self.ssid_bits > 0 {
            return self.detach_cd(sid, 0);
        }
        self.set_abort(sid)
    }

    /// Translate `sid`'s traffic tagged with SubstreamID `ssid` (a PASID, 1 or more: 0
    /// is the slot of untagged traffic) with the domain. Needs substreams.
    pub fn attach_pasid(&mut self, sid: u32, ssid: u32, id: DomainId) -> Result<usize> {
        if self.ssid_bits == 0 {
            return Err(Unsupported::Substreams.into());
        }
        if ssid == 0 {
            return Err(Error::InvalidSubstreamId(ssid));
        }
        self.attach_cd(sid, ssid, id)
    }

    /// Stop translating `sid`'s traffic tagged with `ssid`.
    pub fn detach_pasid(&mut self, sid: u32, ssid: u32) -> Result<usize> {
        if self.ssid_bits == 0 {
            return Err(Unsupported::Substreams.into());
        }
        if ssid == 0 {
            return Err(Error::InvalidSubstreamId(ssid));
        }
        self.detach_cd(sid, ssid)
    }

    /// Writes `cd` into the CD at `addr` (SubstreamID `ssid`) with a hitless update; the
    /// streams in `readers` (whose STEs point at its table) get CFGI_CD + CMD_SYNC after
    /// each step. Returns the number of those rounds.
    ///
    /// # Safety
    /// `addr` must be a live 64-byte CD region of the driver's memory.
    unsafe fn write_cd(
        &mut self,
        addr: PhysAddr,
        ssid: u32,
        readers: &[u32],
        cd: &Cd,
    ) -> Result<usize> {
        // SAFETY: the caller guarantees a live 64-byte region.
        let words = unsafe { Words::new(&self.mem, addr, 8) };
        let mut t = CdTarget {
            words,
            ssid,
            streams: readers,
            regs: &mut self.regs,
            cmdq: &mut self.cmdq,
            timeout: &mut self.timeout,
        };
        update_entry::<CdKind, _>(&mut t, &cd.0)
    }

    /// Writes the domain's CD into slot `ssid` of `sid`'s CD table (created, and the STE
    /// pointed at it, on first use).
    fn attach_cd(&mut self, sid: u32, ssid: u32, id: DomainId) -> Result<usize> {
        let words = self.domain(id)?.cd_words;
        if u64::from(ssid) >> self.ssid_bits != 0 {
            return Err(Error::InvalidSubstreamId(ssid));
        }
        let mut rounds = 0;
        if !self.stream_cds.contains_key(&sid) {
            self.strtab.check_sid(sid)?;
            let table = if self.ssid_bits > 10 {
                CdTable::two_level(&mut self.mem, &self.features, self.ssid_bits)?
            } else {
                CdTable::linear(&mut self.mem, &self.features, self.ssid_bits)?
            };
            self.stream_cds.insert(
                sid,
                StreamCds {
                    table,
                    cds: BTreeMap::new(),
                },
            );
        }
        let cds = self.stream_cds.get_mut(&sid).expect("inserted above");
        let installed = !cds.cds.is_empty();
        let slot = cds.table.slot(&mut self.mem, ssid)?;
        if slot.l1_written && installed {
            // A new level-2 CD table: the SMMU may cache the old L1 descriptor.
            self.cmdq.issue_and_sync(
                &mut self.regs,
                &mut self.timeout,
                &[Command::CfgiCdAll { sid }],
            )?;
            rounds += 1;
        }
        let streams = [sid];
        let readers: &[u32] = if installed { &streams } else { &[] };
        // SAFETY: the slot is a live CD inside the stream's table.
        rounds += unsafe { self.write_cd(slot.addr, ssid, readers, &words) }?;
        let cds = self.stream_cds.get_mut(&sid).expect("inserted above");
        let before = cds.cds.insert(ssid, id);
        if !installed {
            let ste = Ste::build(
                &StreamConfig::Stage1(cds.table.stage1_ste(S1Dss::Substream0)),
                &self.features,
            )?;
            rounds += self.write_ste(sid, &ste)?;
            // The stream leaves any single-CD domain it was in.
            for d in self.domains.iter_mut().flatten() {
                d.streams.retain(|&s| s != sid);
            }
        }
        if let Some(old) = before {
            if let Some(d) = self.domains.get_mut(old.0).and_then(Option::as_mut) {
                d.substreams.retain(|&x| x != (sid, ssid));
            }
        }
        self.domain(id)?.substreams.push((sid, ssid));
        Ok(rounds)
    }

    /// Clears slot `ssid` of `sid`'s CD table; the last one makes the STE abort and
    /// frees the table.
    fn detach_cd(&mut self, sid: u32, ssid: u32) -> Result<usize> {
        let cds = self
            .stream_cds
            .get_mut(&sid)
            .ok_or(Error::NotAttached { sid, ssid })?;
        let Some(&id) = cds.cds.get(&ssid) else {
            return Err(Error::NotAttached { sid, ssid });
        };
        if cds.cds.len() == 1 {
            // The last CD: abort the stream (CFGI_STE + CMD_SYNC), then free the table.
            return self.set_abort(sid);
        }
        let slot = cds.table.slot(&mut self.mem, ssid)?;
        // SAFETY: the slot is a live CD inside the stream's table.
        let rounds = unsafe { self.write_cd(slot.addr, ssid, &[sid], &Cd::invalid()) }?;
        if let Some(cds) = self.stream_cds.get_mut(&sid) {
            cds.cds.remove(&ssid);
        }
        if let Some(d) = self.domains.get_mut(id.0).and_then(Option::as_mut) {
            d.substreams.retain(|&x| x != (sid, ssid));
        }
        Ok(rounds)
    }

    /// Map `[iova, iova + size)` to `[pa, pa + size)` in the domain. New mappings need no
    /// invalidation (the SMMU does not cache invalid entries); the table writes are
    /// ordered before return so DMA started afterwards sees them.
    pub fn map(&mut self, id: DomainId, iova: u64, pa: u64, size: u64, prot: Prot) -> Result<()> {
        let d = self
            .domains
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchDomain)?;
        let r = d.pt.map(&mut self.mem, iova, pa, size, prot);
        if r.is_err() && d.pt.retired_count() > 0 {
            // A failed map rolled back and emptied tables the walk caches may hold.
            let asid = d.asid;
            self.cmdq.issue_and_sync(
                &mut self.regs,
                &mut self.timeout,
                &[Command::TlbiNhAsid { asid, vmid: 0 }],
            )?;
            let d = self.domains[id.0].as_mut().ok_or(Error::NoSuchDomain)?;
            // SAFETY: the TLBI_NH_ASID + CMD_SYNC above completed.
            unsafe { d.pt.release_retired(&mut self.mem) };
        }
        self.regs.publish_barrier();
        r
    }

    /// Unmap `[iova, iova + size)`, invalidate the TLB for what was removed (range
    /// commands with RIL, else per page or per ASID) and wait for CMD_SYNC. Returns what
    /// was removed only after the invalidation completed.
    pub fn unmap(&mut self, id: DomainId, iova: u64, size: u64) -> Result<Unmapped> {
        let d = self
            .domains
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchDomain)?;
        let u = d.pt.unmap(&mut self.mem, iova, size)?;
        if u.is_empty() {
            return Ok(u);
        }
        let plan = TlbiPlan::new(&self.policy, d.asid, 0, &u);
        // Page-table writes must be visible before the invalidation is published.
        self.regs.publish_barrier();
        let r = self
            .cmdq
            .issue_iter(&mut self.regs, &mut self.timeout, plan);
        let s = self.cmdq.sync(&mut self.regs, &mut self.timeout);
        r.and(s)?;
        let d = self.domains[id.0].as_mut().ok_or(Error::NoSuchDomain)?;
        // SAFETY: the CMD_SYNC after the invalidation covering this unmap completed.
        unsafe { d.pt.release_retired(&mut self.mem) };
        Ok(u)
    }

    /// Look up an IOVA in a domain's table.
    pub fn translate(&mut self, id: DomainId, iova: u64) -> Result<Option<u64>> {
        let d = self
            .domains
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(Error::NoSuchDomain)?;
        Ok(d.pt.translate(&self.mem, iova).map(|t| t.pa))
    }

    /// Destroy a domain with no attached streams: invalidate its ASID, free its CD and
    /// tables.
    pub fn destroy_domain(&mut self, id: DomainId) -> Result<()> {
        let d = self.domain(id)?;
        if !d.streams.is_empty() || !d.substreams.is_empty() {
            return Err(Error::InvalidField("domain still has attached streams"));
        }
        let asid = d.asid;
        self.cmdq.issue_and_sync(
            &mut self.regs,
            &mut self.timeout,
            &[Command::TlbiNhAsid { asid, vmid: 0 }],
        )?;
        let d = self.domains[id.0].take().ok_or(Error::NoSuchDomain)?;
        // SAFETY: no STE references the CD (no attached streams) and the ASID's TLB
        // entries were invalidated with a completed CMD_SYNC.
        unsafe {
            d.pt.destroy(&mut self.mem);
            d.cd.free(&mut self.mem);
        }
        Ok(())
    }

    /// Hand pending event records to `f` and acknowledge them. Reports lost records: a
    /// PROD.OVFLG toggle (`overflowed`) or an active GERROR.EVENTQ_ABT_ERR
    /// (`write_aborted`), which is acknowledged once the queue has been drained, so that
    /// the next loss is reported again and command queue waits do not see it as a
    /// pending global error.
    pub fn drain_events(&mut self, f: impl FnMut(Event)) -> DrainReport {
        drain_acknowledging(
            &mut self.regs,
            &mut self.evtq,
            regs::GERROR_EVENTQ_ABT_ERR,
            f,
        )
    }

    /// Whether page requests are taken: the SMMU has IDR0.PRI and its PRI queue is on.
    pub fn pri_enabled(&self) -> bool {
        self.priq.is_some()
    }

    /// Hand pending PRI queue records to `f` and acknowledge them, as
    /// [`drain_events`](Self::drain_events) does for events (with GERROR.PRIQ_ABT_ERR).
    /// Without a PRI queue, reports nothing.
    pub fn drain_page_requests(&mut self, f: impl FnMut(PriRecord)) -> DrainReport {
        match self.priq.as_mut() {
            Some(q) => drain_acknowledging(&mut self.regs, q, regs::GERROR_PRIQ_ABT_ERR, f),
            None => DrainReport::default(),
        }
    }

    /// Active global errors (GERROR ^ GERRORN).
    pub fn global_errors(&mut self) -> u32 {
        (self.regs.read32(regs::GERROR) ^ self.regs.read32(regs::GERRORN)) & regs::GERROR_ERR_MASK
    }

    /// Acknowledge active global errors other than CMDQ_ERR (which the command queue
    /// recovers itself) by toggling them in GERRORN; returns the bits acknowledged. Call
    /// after handling them ([`drain_events`](Self::drain_events) already acknowledges
    /// EVENTQ_ABT_ERR).
    pub fn ack_global_errors(&mut self) -> u32 {
        let gerror = self.regs.read32(regs::GERROR);
        let gerrorn = self.regs.read32(regs::GERRORN);
        let active = (gerror ^ gerrorn) & regs::GERROR_ERR_MASK & !regs::GERROR_CMDQ_ERR;
        if active != 0 {
            self.regs.write32(regs::GERRORN, gerrorn ^ active);
        }
        active
    }

    /// Turn the SMMU off (CR0 = 0, acknowledged). Incoming traffic then follows GBPA.
    pub fn disable(&mut self) -> Result<()> {
        self.regs.write32(regs::CR0, 0);
        wait_ack(
            &mut self.regs,
            &mut self.timeout,
            regs::CR0ACK,
            0,
            TimeoutKind::Cr0Ack,
        )
    }
}
