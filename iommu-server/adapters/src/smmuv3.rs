//! [`Hardware`] over the SMMUv3 driver ([`smmuv3::Smmu`]).
//!
//! - A [`HwDomain`] is a driver stage-1 domain: an ASID (the lowest free one, from 1),
//!   one CD and an AArch64 4KB page table.
//! - A stream is a StreamID. Attaching it without a PASID points its STE at the domain's
//!   CD (stage-1 translation), or, on an SMMU with substreams, writes the domain's CD into
//!   slot 0 of the stream's CD table; detaching makes the STE abort the stream's traffic
//!   (silently, as the SMMU does for Config = abort), or clears slot 0 while PASIDs stay
//!   attached. Both return after the CFGI + CMD_SYNC of the update completed.
//! - PASIDs are SubstreamIDs: on an SMMU with substreams (IDR1.SSIDSIZE > 0) attaching
//!   with a PASID writes the domain's CD into that slot of the stream's CD table
//!   ([`Smmu::attach_pasid`]) and [`Hardware::device_info`] reports the table's width.
//!   Without substreams (QEMU 7.2: SSIDSIZE = 0) attaching with a PASID is `Unsupported`
//!   and no PASID support is reported.
//! - Map and unmap go to the domain's table; unmap returns only after the TLB
//!   invalidation (range TLBI with IDR3.RIL, else per page or per ASID) and its CMD_SYNC
//!   completed.
//! - Faults come from the event queue. A lost record (EVENTQ_PROD.OVFLG toggled, or, as
//!   on QEMU 7.2, GERROR.EVENTQ_ABT_ERR) is counted as one lost fault: the SMMU reports
//!   that records were lost, not how many.
//! - PRI page requests: on an SMMU with IDR0.PRI the driver sets up the PRI queue and
//!   [`Hardware::device_info`] reports PRI (QEMU 7.2 has no PRI). [`Hardware::drain_faults`]
//!   delivers each PRI queue record after the event records, as one [`HwFault`] of kind
//!   [`FaultKind::PageRequest`]: its page address, SubstreamID as PASID, `READ` for a
//!   request for read access only, `LAST_IN_GROUP` on the group's last request, reason
//!   0, and as `group` the PRG index with [`PRI_GROUP`] set. Answers are counted per
//!   (StreamID, SubstreamID, PRG index) as [`crate::groups`] describes; the group's one
//!   response is CMD_PRI_RESP (Success; Deny for an invalid request; Fail) followed by
//!   CMD_SYNC. A PRI queue overflow (PRIQ_PROD.OVFLG, or GERROR.PRIQ_ABT_ERR) counts as
//!   one lost fault.
//! - Stalls: a stalled transaction's fault record (Stall = 1) is delivered as a page
//!   request whose group is its STAG and answered with CMD_RESUME (retry on success,
//!   abort otherwise) on an SMMU whose stall model allows stalling; elsewhere (QEMU:
//!   STALL_MODEL = 0b01) answering it is `Unsupported`. The driver's CDs do not ask for
//!   stalls (CD.S = 0), so [`Hardware::device_info`] does not report stalls.

use alloc::collections::BTreeMap;

use iommu_server::{Hardware, HwDomain, HwFault, StreamId};
use ipc_protocol::iommu::{DeviceInfo, IommuKind, PageResponseCode, Perm};
use ipc_protocol::pasid::Pasid;
use ipc_protocol::records::{fault_flags, FaultKind};
use ipc_protocol::Error;
use smmuv3::cmd::{Command, PriResponse, ResumeAction};
use smmuv3::event::{Event, StreamRef, TranslationFault};
use smmuv3::features::StallModel;
use smmuv3::priq::PriRecord;
use smmuv3::{DmaMemory, DomainId, MemAttr, PollTimeout, Prot, RegisterIo, Smmu, SmmuConfig};

use crate::groups::{OpenGroups, Requested};

/// Page sizes the driver's tables use: 4KB pages, 2MB and 1GB blocks.
const PAGE_SIZES: u64 = (1 << 12) | (1 << 21) | (1 << 30);

/// Stream reported for records that name none (F_VMS_FETCH, IMPLEMENTATION DEFINED and
/// unknown types): iommu-server counts them as unrouted.
pub const NO_STREAM: StreamId = StreamId::MAX;

/// Set in [`HwFault::group`] of a PRI page request (the PRG index is below it); clear for
/// a stalled transaction (the STAG).
pub const PRI_GROUP: u32 = 1 << 31;

/// A PRI page request group: StreamID, SubstreamID, PRG index.
type PriGroup = (StreamId, Option<Pasid>, u16);

#[derive(Debug, Clone, Copy)]
struct Domain {
    id: DomainId,
    asid: u16,
}

/// [`Hardware`] over one SMMUv3.
pub struct SmmuHardware<R: RegisterIo, M: DmaMemory, T: PollTimeout> {
    smmu: Smmu<R, M, T>,
    va_bits: u8,
    domains: BTreeMap<u32, Domain>,
    next_domain: u32,
    /// (StreamID, PASID) → the domain it is attached to.
    attached: BTreeMap<(StreamId, Option<Pasid>), u32>,
    /// PRI page request groups with requests delivered and not all answered.
    groups: OpenGroups<PriGroup>,
}

impl<R: RegisterIo, M: DmaMemory, T: PollTimeout> SmmuHardware<R, M, T> {
    /// Probes and initialises the SMMU with `config` (see [`Smmu::new`]).
    pub fn new(regs: R, mem: M, timeout: T, config: SmmuConfig) -> Result<Self, smmuv3::Error> {
        let smmu = Smmu::new(regs, mem, timeout, config)?;
        Ok(Self::from_driver(smmu, config.va_bits))
    }

    /// Wraps an initialised driver whose domains use `va_bits`-bit IOVAs (its
    /// [`SmmuConfig::va_bits`]) and which has no domains yet.
    pub fn from_driver(smmu: Smmu<R, M, T>, va_bits: u8) -> Self {
        Self {
            smmu,
            va_bits,
            domains: BTreeMap::new(),
            next_domain: 1,
            attached: BTreeMap::new(),
            groups: OpenGroups::default(),
        }
    }

    /// The driver (for diagnostics).
    pub fn driver(&mut self) -> &mut Smmu<R, M, T> {
        &mut self.smmu
    }

    /// The ASID of a domain.
    pub fn asid(&self, domain: HwDomain) -> Option<u16> {
        self.domains.get(&domain.0).map(|d| d.asid)
    }

    fn domain(&self, domain: HwDomain) -> Result<DomainId, Error> {
        self.domains
            .get(&domain.0)
            .map(|d| d.id)
            .ok_or(Error::NotFound)
    }

    /// The lowest ASID no domain uses (ASID 0 is left alone), within the SMMU's width.
    fn free_asid(&self) -> Result<u16, Error> {
        let max: u16 = if self.smmu.features().asid16 {
            u16::MAX
        } else {
            0xff
        };
        let mut used: alloc::vec::Vec<u16> = self.domains.values().map(|d| d.asid).collect();
        used.sort_unstable();
        let mut candidate = 1u16;
        for a in used {
            if a == candidate {
                candidate = candidate.checked_add(1).ok_or(Error::NoSpace)?;
            } else if a > candidate {
                break;
            }
        }
        if candidate > max {
            return Err(Error::NoSpace);
        }
        Ok(candidate)
    }
}

/// A driver error as iommu-server reports it.
pub fn to_error(e: smmuv3::Error) -> Error {
    use smmuv3::Error as E;
    match e {
        E::Unsupported(_) => Error::Unsupported,
        E::Misaligned
        | E::OutOfRange
        | E::InvalidPermissions
        | E::InvalidStreamId(_)
        | E::InvalidSubstreamId(_)
        | E::InvalidAsid(_)
        | E::InvalidField(_)
        | E::BadLength => Error::Invalid,
        E::NotAttached { .. } => Error::NotFound,
        E::AlreadyMapped { .. } => Error::Exists,
        E::OutOfMemory => Error::NoSpace,
        E::NoSuchDomain => Error::NotFound,
        E::Timeout(_) => Error::Timeout,
        E::Command { .. } | E::GlobalError(_) => Error::HardwareError,
    }
}

/// The stage-1 permissions of `perm`. AArch64 stage-1 descriptors cannot express
/// write-only, so a mapping must allow reads.
pub fn to_prot(perm: Perm) -> Result<Prot, Error> {
    if !perm.is_valid() {
        return Err(Error::Invalid);
    }
    if !perm.contains(Perm::READ) {
        return Err(Error::Unsupported);
    }
    Ok(Prot {
        read: true,
        write: perm.contains(Perm::WRITE),
        exec: perm.contains(Perm::EXEC),
        unprivileged: !perm.contains(Perm::PRIVILEGED),
        attr: MemAttr::Normal,
    })
}

fn stream_fault(stream: StreamRef, kind: FaultKind, reason: u8) -> HwFault {
    HwFault {
        stream: stream.sid,
        pasid: stream.ssid,
        kind,
        flags: if stream.ssid.is_some() {
            fault_flags::PASID_VALID
        } else {
            0
        },
        reason: u32::from(reason),
        address: 0,
        group: 0,
    }
}

fn access_flags(read: bool, privileged: bool, instruction: bool) -> u16 {
    let mut flags = 0;
    if read {
        flags |= fault_flags::READ;
    }
    if privileged {
        flags |= fault_flags::PRIVILEGED;
    }
    if instruction {
        flags |= fault_flags::EXEC;
    }
    flags
}

fn translation_fault(f: &TranslationFault, kind: FaultKind, reason: u8) -> HwFault {
    let mut h = stream_fault(f.stream, kind, reason);
    h.flags |= access_flags(f.access.read, f.access.privileged, f.access.instruction);
    h.address = f.access.addr;
    if f.stall {
        // A stalled transaction waits for CMD_RESUME with its STAG.
        h.kind = FaultKind::PageRequest;
        h.group = u32::from(f.stag);
    }
    h
}

/// A PRI queue record as iommu-server's page request.
pub fn page_request(r: &PriRecord) -> HwFault {
    let flags = Requested {
        read: r.read,
        write: r.write,
        exec: r.exec,
        privileged: r.privileged,
        pasid: r.ssid.is_some(),
        last: r.last,
    }
    .flags();
    HwFault {
        stream: r.sid,
        pasid: r.ssid,
        kind: FaultKind::PageRequest,
        flags,
        reason: 0,
        address: r.addr,
        group: PRI_GROUP | u32::from(r.prg_index),
    }
}

/// An event record as iommu-server's fault.
pub fn to_fault(e: &Event) -> HwFault {
    let code = e.code();
    match e {
        Event::Translation(f) => translation_fault(f, FaultKind::Translation, code),
        Event::Permission(f) => translation_fault(f, FaultKind::Permission, code),
        Event::AddrSize(f) | Event::Access(f) | Event::WalkEabt { fault: f, .. } => {
            translation_fault(f, FaultKind::Other, code)
        }
        Event::BadStreamId(s) | Event::BadSte(s) | Event::BadSubstreamId(s) | Event::BadCd(s) => {
            stream_fault(*s, FaultKind::BadConfig, code)
        }
        Event::SteFetch { stream, .. } | Event::CdFetch { stream, .. } => {
            stream_fault(*stream, FaultKind::Other, code)
        }
        Event::StreamDisabled(s) | Event::CfgConflict { stream: s, .. } => {
            stream_fault(*s, FaultKind::Other, code)
        }
        Event::Uut { stream, access }
        | Event::BadAtsTreq { stream, access }
        | Event::TranslForbidden { stream, access } => {
            let mut h = stream_fault(*stream, FaultKind::Other, code);
            h.flags |= access_flags(access.read, access.privileged, access.instruction);
            h.address = access.addr;
            h
        }
        Event::TlbConflict { stream, addr, .. } | Event::PageRequest { stream, addr, .. } => {
            let mut h = stream_fault(*stream, FaultKind::Other, code);
            h.address = *addr;
            h
        }
        Event::VmsFetch { .. } | Event::ImplementationDefined { .. } | Event::Unknown { .. } => {
            HwFault {
                stream: NO_STREAM,
                pasid: None,
                kind: FaultKind::Other,
                flags: 0,
                reason: u32::from(code),
                address: 0,
                group: 0,
            }
        }
    }
}

impl<R: RegisterIo, M: DmaMemory, T: PollTimeout> Hardware for SmmuHardware<R, M, T> {
    fn device_info(&self, _stream: StreamId) -> DeviceInfo {
        DeviceInfo {
            iommu: IommuKind::Smmuv3,
            pasid_bits: self.smmu.ssid_bits(),
            // ATS is not enabled in STEs (EATS = 0); the driver's CDs do not ask for
            // stalls (CD.S = 0).
            pri: self.smmu.pri_enabled(),
            ats: false,
            stall: false,
            iova_bits: self.va_bits,
            page_sizes: PAGE_SIZES,
        }
    }

    fn domain_alloc(&mut self) -> Result<HwDomain, Error> {
        let asid = self.free_asid()?;
        let id = self.smmu.create_domain(asid).map_err(to_error)?;
        let handle = self.next_domain;
        self.next_domain = self.next_domain.checked_add(1).ok_or(Error::NoSpace)?;
        self.domains.insert(handle, Domain { id, asid });
        Ok(HwDomain(handle))
    }

    fn domain_free(&mut self, domain: HwDomain) -> Result<(), Error> {
        let id = self.domain(domain)?;
        if self.attached.values().any(|&d| d == domain.0) {
            return Err(Error::Busy);
        }
        // Invalidates the ASID (TLBI_NH_ASID + CMD_SYNC) before freeing the tables.
        self.smmu.destroy_domain(id).map_err(to_error)?;
        self.domains.remove(&domain.0);
        Ok(())
    }

    fn map(
        &mut self,
        domain: HwDomain,
        iova: u64,
        pa: u64,
        len: u64,
        perm: Perm,
    ) -> Result<(), Error> {
        let id = self.domain(domain)?;
        let prot = to_prot(perm)?;
        self.smmu.map(id, iova, pa, len, prot).map_err(to_error)
    }

    fn unmap(&mut self, domain: HwDomain, iova: u64, len: u64) -> Result<(), Error> {
        let id = self.domain(domain)?;
        // Returns after TLBI + CMD_SYNC.
        self.smmu.unmap(id, iova, len).map(|_| ()).map_err(to_error)
    }

    fn attach(
        &mut self,
        stream: StreamId,
        pasid: Option<Pasid>,
        domain: HwDomain,
    ) -> Result<(), Error> {
        let id = self.domain(domain)?;
        match pasid {
            None => self.smmu.attach(stream, id),
            Some(p) => self.smmu.attach_pasid(stream, p, id),
        }
        .map_err(to_error)?;
        self.attached.insert((stream, pasid), domain.0);
        Ok(())
    }

    fn detach(&mut self, stream: StreamId, pasid: Option<Pasid>) -> Result<(), Error> {
        if !self.attached.contains_key(&(stream, pasid)) {
            return Err(Error::NotFound);
        }
        // Config = abort or a cleared CD, then CFGI + CMD_SYNC.
        match pasid {
            None => self.smmu.detach(stream),
            Some(p) => self.smmu.detach_pasid(stream, p),
        }
        .map_err(to_error)?;
        self.attached.remove(&(stream, pasid));
        Ok(())
    }

    fn drain_faults(&mut self, sink: &mut dyn FnMut(HwFault)) -> u32 {
        let mut lost = 0u32;
        // One queue's worth per drain; a few more rounds pick up records written while
        // the previous ones were handed out.
        for _ in 0..4 {
            let report = self.smmu.drain_events(|e| sink(to_fault(&e)));
            if report.lost_records() {
                lost = lost.saturating_add(1);
            }
            if report.events == 0 {
                break;
            }
        }
        for _ in 0..4 {
            let mut requests = alloc::vec::Vec::new();
            let report = self.smmu.drain_page_requests(|r| requests.push(r));
            for r in &requests {
                self.groups.delivered((r.sid, r.ssid, r.prg_index), r.last);
            }
            if report.lost_records() {
                lost = lost.saturating_add(1);
                // Requests were dropped: the SMMU answered the groups whose last request
                // was among them.
                self.groups.overflowed();
            }
            for r in &requests {
                sink(page_request(r));
            }
            if report.events == 0 {
                break;
            }
        }
        lost
    }

    fn page_response(
        &mut self,
        stream: StreamId,
        pasid: Option<Pasid>,
        group: u32,
        code: PageResponseCode,
    ) -> Result<(), Error> {
        if group & PRI_GROUP != 0 {
            if !self.smmu.pri_enabled() {
                return Err(Error::Unsupported);
            }
            let index = u16::try_from(group & !PRI_GROUP)
                .ok()
                .filter(|&i| u64::from(i) <= smmuv3::priq::PRIQ_1_PRG_IDX)
                .ok_or(Error::Invalid)?;
            let Some(code) = self.groups.answer((stream, pasid, index), code)? else {
                return Ok(());
            };
            let resp = match code {
                PageResponseCode::Success => PriResponse::Success,
                PageResponseCode::Invalid => PriResponse::Deny,
                PageResponseCode::Failure => PriResponse::Fail,
            };
            return self
                .smmu
                .command_sync(&[Command::PriResp {
                    sid: stream,
                    ssid: pasid,
                    grpid: index,
                    resp,
                }])
                .map_err(to_error);
        }
        // CMD_RESUME is only a command on an SMMU that can stall.
        let can_stall = matches!(
            self.smmu.features().stall_model,
            StallModel::StallAndTerminate | StallModel::StallForced
        );
        if !can_stall {
            return Err(Error::Unsupported);
        }
        let stag = u16::try_from(group).map_err(|_| Error::Invalid)?;
        let action = match code {
            PageResponseCode::Success => ResumeAction::Retry,
            PageResponseCode::Invalid | PageResponseCode::Failure => ResumeAction::Abort,
        };
        self.smmu
            .command_sync(&[Command::Resume {
                sid: stream,
                stag,
                action,
            }])
            .map_err(to_error)
    }
}
