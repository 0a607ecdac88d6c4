//! [`Hardware`] over the VT-d driver ([`vtd::Vtd`]).
//!
//! - A [`HwDomain`] is a driver domain: a domain-id and a second-level page table.
//! - A stream is a PCI requester ID (`bus << 8 | devfn`); attaching it writes its context
//!   entry (legacy mode) or its scalable context entry, PASID directory and RID_PASID
//!   entry (scalable mode).
//! - PASIDs (scalable mode with ECAP.PASID; [`Hardware::device_info`] reports ECAP.PSS + 1
//!   bits, 0 elsewhere): attaching `(stream, Some(pasid))` writes the PASID's entry with
//!   [`Vtd::attach_pasid`], detaching tears it down with [`Vtd::detach_pasid`]. The
//!   driver keeps PASID entries in the requester's PASID directory, so it needs the
//!   requester attached while PASIDs are, where iommu-server treats the attachments as
//!   independent. The adapter bridges that with a *blocking* domain (an empty table, made
//!   on first need, never mapped): a PASID attached to a stream without an attachment of
//!   its own puts the stream's requests without PASID on the blocking domain, a stream
//!   detached while PASIDs remain is moved there ([`Vtd::reattach`]), and the stream is
//!   detached for real with its last PASID. Requests without PASID of such a stream
//!   fault as untranslated ([`FaultKind::Translation`]).
//! - Map and unmap go to the domain's table; unmap returns after the driver's IOTLB
//!   invalidation (queued, ending with a wait descriptor; or register-based) completed.
//!   Detach returns after the context / PASID-cache and IOTLB invalidations completed.
//! - Faults come from the fault recording registers. VT-d's fault reasons do not tell a
//!   missing translation from a refused one (QEMU reports both as reason 5 or 6), so for
//!   those the table of the domain the stream (or its PASID) is attached to is
//!   consulted: a mapping at the address makes it [`FaultKind::Permission`], none
//!   [`FaultKind::Translation`].
//! - Page requests (scalable mode with ECAP.PRS: the driver sets up the page request
//!   queue and [`Hardware::device_info`] reports PRI) are delivered by
//!   [`Hardware::drain_faults`] after the fault records, one [`HwFault`] of kind
//!   [`FaultKind::PageRequest`] per request: its page address, PASID, the page request
//!   group index as `group`, `LAST_IN_GROUP` on the group's last request, `READ` for a
//!   request that asks for read access only, and reason 0 (page requests have no fault
//!   reason). A queue overflow (PRS.PRO) counts as one lost fault, as does a descriptor
//!   that is not a page request.
//! - Page responses: VT-d answers a whole group once (a page group response after its
//!   last request), while iommu-server answers every request it delivered. The adapter
//!   counts, per (stream, PASID, group), the requests delivered and not yet answered, and
//!   sends the group response ([`Vtd::page_group_response`]) as [`crate::groups`]
//!   describes. A response naming no such request is `NotFound`; without a page request
//!   queue [`Hardware::page_response`] is `Unsupported`.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use iommu_hwio::dma::DmaMemory;
use iommu_hwio::mmio::RegisterIo;
use iommu_hwio::poll::PollTimeout;
use iommu_server::{Hardware, HwDomain, HwFault, StreamId};
use ipc_protocol::iommu::{DeviceInfo, IommuKind, PageResponseCode, Perm};
use ipc_protocol::pasid::Pasid;
use ipc_protocol::records::{fault_flags, FaultKind};
use ipc_protocol::Error;
use vtd::fault::{AccessType, FaultRecord, PageGroup, PageRequest, ResponseCode, MAX_GROUP_INDEX};
use vtd::{DomainId, Prot, Vtd};

use crate::groups::{OpenGroups, Requested};

/// Fault reasons (VT-d spec fault-condition tables) the adapter classifies.
mod reason {
    /// 4: input address above the domain's address width.
    pub const ADDRESS_BEYOND_WIDTH: u8 = 0x4;
    /// 5: write not permitted (or not mapped, on QEMU).
    pub const WRITE: u8 = 0x5;
    /// 6: read not permitted (or not mapped, on QEMU).
    pub const READ: u8 = 0x6;
    /// 1..=3, 8..=0xB, 0xD: root or context entry missing, unreadable or invalid.
    pub const fn is_config(r: u8) -> bool {
        matches!(r, 0x1..=0x3 | 0x8..=0xb | 0xd) || is_scalable_config(r)
    }
    /// Scalable-mode root, context, PASID directory and PASID table conditions
    /// (0x30..=0x5F).
    pub const fn is_scalable_config(r: u8) -> bool {
        matches!(r, 0x30..=0x5f)
    }
}

/// [`Hardware`] over one VT-d remapping unit.
pub struct VtdHardware<R: RegisterIo, M: DmaMemory, T: PollTimeout> {
    vtd: Vtd<R, M, T>,
    domains: BTreeMap<u32, DomainId>,
    next_domain: u32,
    /// Requester ID → the domain its requests without PASID are attached to.
    attached: BTreeMap<u16, u32>,
    /// (requester ID, PASID) → the domain.
    pasids: BTreeMap<(u16, u32), u32>,
    /// The blocking domain (see the module documentation), once made.
    blocking: Option<DomainId>,
    /// Requesters whose requests without PASID are on the blocking domain.
    blocked: BTreeSet<u16>,
    /// Page request groups with requests delivered and not all answered.
    groups: OpenGroups<PageGroup>,
}

impl<R: RegisterIo, M: DmaMemory, T: PollTimeout> VtdHardware<R, M, T> {
    /// Wrap an initialised driver (translation on, no device attached).
    pub fn new(vtd: Vtd<R, M, T>) -> Self {
        VtdHardware {
            vtd,
            domains: BTreeMap::new(),
            next_domain: 1,
            attached: BTreeMap::new(),
            pasids: BTreeMap::new(),
            blocking: None,
            blocked: BTreeSet::new(),
            groups: OpenGroups::default(),
        }
    }

    /// The driver (for diagnostics and tests).
    pub fn vtd(&mut self) -> &mut Vtd<R, M, T> {
        &mut self.vtd
    }

    fn domain(&self, d: HwDomain) -> Result<DomainId, Error> {
        self.domains.get(&d.0).copied().ok_or(Error::NotFound)
    }

    fn blocking_domain(&mut self) -> Result<DomainId, Error> {
        if let Some(b) = self.blocking {
            return Ok(b);
        }
        let b = self.vtd.create_domain().map_err(map_error)?;
        self.blocking = Some(b);
        Ok(b)
    }

    /// Whether any PASID of requester `sid` is attached.
    fn has_pasids(&self, sid: u16) -> bool {
        self.pasids
            .range((sid, 0)..=(sid, u32::MAX))
            .next()
            .is_some()
    }

    /// What kind of fault a record is (see the module documentation); `pasid` is the
    /// PASID the faulting request carried.
    fn classify(&self, rec: &FaultRecord, pasid: Option<u32>) -> FaultKind {
        let r = rec.reason.code();
        match r {
            reason::WRITE | reason::READ => {
                let domain = match pasid {
                    Some(p) => self.pasids.get(&(rec.source_id, p)),
                    None => self.attached.get(&rec.source_id),
                };
                let mapped = domain
                    .and_then(|d| self.domains.get(d))
                    .and_then(|&dom| self.vtd.translate(dom, rec.address).ok().flatten());
                if mapped.is_some() {
                    FaultKind::Permission
                } else {
                    FaultKind::Translation
                }
            }
            reason::ADDRESS_BEYOND_WIDTH => FaultKind::Translation,
            r if reason::is_config(r) => FaultKind::BadConfig,
            _ => FaultKind::Other,
        }
    }

    /// A page request as iommu-server's fault, counted in its group.
    fn page_request(&mut self, p: &PageRequest) -> HwFault {
        self.groups.delivered(p.group(), p.last_in_group);
        let flags = Requested {
            read: p.read,
            write: p.write,
            exec: p.execute,
            privileged: p.privileged,
            pasid: p.pasid.is_some(),
            last: p.last_in_group,
        }
        .flags();
        HwFault {
            stream: StreamId::from(p.rid),
            pasid: p.pasid,
            kind: FaultKind::PageRequest,
            flags,
            reason: 0,
            address: p.address,
            group: u32::from(p.group_index),
        }
    }
}

/// The driver's errors in the protocol's terms.
pub fn map_error(e: vtd::Error) -> Error {
    use vtd::Error as V;
    match e {
        V::Unsupported(_) => Error::Unsupported,
        V::Misaligned
        | V::OutOfRange
        | V::InvalidPermissions
        | V::InvalidField(_)
        | V::PassThroughDomain
        | V::Dmar(_) => Error::Invalid,
        V::AlreadyMapped { .. } => Error::Exists,
        V::OutOfMemory | V::InvalidDomainId(_) => Error::NoSpace,
        V::NoSuchDomain | V::RequesterNotAttached => Error::NotFound,
        V::AlreadyAttached | V::PasidsAttached => Error::Busy,
        V::Timeout(_) => Error::Timeout,
        V::Queue(_) | V::InvalidationRefused => Error::HardwareError,
    }
}

/// The driver's "nothing attached there" as the protocol's `NotFound`.
fn map_detach_error(e: vtd::Error) -> Error {
    match e {
        vtd::Error::NoSuchDomain => Error::NotFound,
        e => map_error(e),
    }
}

/// Split a requester ID into bus and devfn.
fn rid(stream: StreamId) -> Result<(u8, u8), Error> {
    let r = u16::try_from(stream).map_err(|_| Error::Invalid)?;
    Ok(((r >> 8) as u8, r as u8))
}

impl<R: RegisterIo, M: DmaMemory, T: PollTimeout> Hardware for VtdHardware<R, M, T> {
    fn device_info(&self, _stream: StreamId) -> DeviceInfo {
        let f = self.vtd.features();
        let mut page_sizes = 1 << 12;
        if f.cap.sl_2m {
            page_sizes |= 1 << 21;
        }
        if f.cap.sl_1g {
            page_sizes |= 1 << 30;
        }
        DeviceInfo {
            iommu: IommuKind::Vtd,
            pasid_bits: self.vtd.pasid_bits(),
            pri: self.vtd.page_requests_enabled(),
            // The driver never enables device-TLBs (DTE stays clear).
            ats: false,
            stall: false,
            iova_bits: f.address_bits(self.vtd.levels()),
            page_sizes,
        }
    }

    fn domain_alloc(&mut self) -> Result<HwDomain, Error> {
        let d = self.vtd.create_domain().map_err(map_error)?;
        let id = self.next_domain;
        self.next_domain = self.next_domain.checked_add(1).ok_or(Error::NoSpace)?;
        self.domains.insert(id, d);
        Ok(HwDomain(id))
    }

    fn domain_free(&mut self, domain: HwDomain) -> Result<(), Error> {
        let d = self.domain(domain)?;
        self.vtd.destroy_domain(d).map_err(map_error)?;
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
        let d = self.domain(domain)?;
        // Second-level entries have no privilege or execute distinction for requests
        // without PASID: PRIVILEGED and EXEC add nothing.
        let prot = Prot {
            read: perm.contains(Perm::READ),
            write: perm.contains(Perm::WRITE),
        };
        self.vtd.map(d, iova, pa, len, prot).map_err(map_error)
    }

    fn unmap(&mut self, domain: HwDomain, iova: u64, len: u64) -> Result<(), Error> {
        let d = self.domain(domain)?;
        self.vtd.unmap(d, iova, len).map(|_| ()).map_err(map_error)
    }

    fn attach(
        &mut self,
        stream: StreamId,
        pasid: Option<Pasid>,
        domain: HwDomain,
    ) -> Result<(), Error> {
        let (bus, devfn) = rid(stream)?;
        let sid = stream as u16;
        let d = self.domain(domain)?;
        let Some(p) = pasid else {
            if self.attached.contains_key(&sid) {
                return Err(Error::Busy);
            }
            if self.blocked.contains(&sid) {
                self.vtd.reattach(d, bus, devfn).map_err(map_error)?;
                self.blocked.remove(&sid);
            } else {
                self.vtd.attach(d, bus, devfn).map_err(map_error)?;
            }
            self.attached.insert(sid, domain.0);
            return Ok(());
        };
        if self.vtd.pasid_bits() == 0 {
            return Err(Error::Unsupported);
        }
        if self.pasids.contains_key(&(sid, p)) {
            return Err(Error::Busy);
        }
        let fresh = !self.attached.contains_key(&sid) && !self.blocked.contains(&sid);
        if fresh {
            let b = self.blocking_domain()?;
            self.vtd.attach(b, bus, devfn).map_err(map_error)?;
            self.blocked.insert(sid);
        }
        if let Err(e) = self.vtd.attach_pasid(d, bus, devfn, p) {
            // Undo the blocking attachment made for this PASID; should that fail too the
            // stream stays blocked, which the next attach or detach takes over.
            if fresh && self.vtd.detach(bus, devfn).is_ok() {
                self.blocked.remove(&sid);
            }
            return Err(map_error(e));
        }
        self.pasids.insert((sid, p), domain.0);
        Ok(())
    }

    fn detach(&mut self, stream: StreamId, pasid: Option<Pasid>) -> Result<(), Error> {
        let (bus, devfn) = rid(stream)?;
        let sid = stream as u16;
        let Some(p) = pasid else {
            if !self.attached.contains_key(&sid) {
                return Err(Error::NotFound);
            }
            if self.has_pasids(sid) {
                let b = self.blocking_domain()?;
                self.vtd.reattach(b, bus, devfn).map_err(map_error)?;
                self.blocked.insert(sid);
            } else {
                self.vtd.detach(bus, devfn).map_err(map_detach_error)?;
            }
            self.attached.remove(&sid);
            return Ok(());
        };
        if !self.pasids.contains_key(&(sid, p)) {
            return Err(Error::NotFound);
        }
        self.vtd
            .detach_pasid(bus, devfn, p)
            .map_err(map_detach_error)?;
        self.pasids.remove(&(sid, p));
        // The PASID's DMA is blocked now. A stream kept attached only for its PASIDs is
        // detached with the last one; should that fail it stays on the blocking domain
        // (its requests without PASID still fault) and the next attach takes it over.
        if self.blocked.contains(&sid)
            && !self.has_pasids(sid)
            && self.vtd.detach(bus, devfn).is_ok()
        {
            self.blocked.remove(&sid);
        }
        Ok(())
    }

    fn drain_faults(&mut self, sink: &mut dyn FnMut(HwFault)) -> u32 {
        let mut records = Vec::new();
        let report = self.vtd.drain_faults(|r| records.push(r));
        let scalable = self.vtd.mode() == vtd::Mode::Scalable;
        for rec in records {
            // In scalable mode requests without PASID are reported with the RID_PASID
            // (0, as the driver programs it): they carried no PASID.
            let pasid = rec.pasid.filter(|&p| !(scalable && p == vtd::RID_PASID));
            let mut flags = 0;
            if rec.access == AccessType::Read {
                flags |= fault_flags::READ;
            }
            if rec.privileged {
                flags |= fault_flags::PRIVILEGED;
            }
            if rec.execute {
                flags |= fault_flags::EXEC;
            }
            if pasid.is_some() {
                flags |= fault_flags::PASID_VALID;
            }
            sink(HwFault {
                stream: StreamId::from(rec.source_id),
                pasid,
                kind: self.classify(&rec, pasid),
                flags,
                reason: u32::from(rec.reason.code()),
                address: rec.address,
                group: 0,
            });
        }
        // FSTS.PFO and PRS.PRO say that records were lost, not how many: at least one.
        let mut lost = u32::from(report.overflowed);
        let mut requests = Vec::new();
        let prq = self.vtd.drain_page_requests(|r| match r {
            Ok(p) => requests.push(p),
            Err(_) => lost = lost.saturating_add(1),
        });
        let faults: Vec<HwFault> = requests.iter().map(|p| self.page_request(p)).collect();
        if prq.overflowed {
            lost = lost.saturating_add(1);
            // Requests were dropped; for the groups whose last request was among them
            // the hardware answered already.
            self.groups.overflowed();
        }
        for f in faults {
            sink(f);
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
        if !self.vtd.page_requests_enabled() {
            return Err(Error::Unsupported);
        }
        let rid = u16::try_from(stream).map_err(|_| Error::Invalid)?;
        let index = u16::try_from(group)
            .ok()
            .filter(|&i| i <= MAX_GROUP_INDEX)
            .ok_or(Error::Invalid)?;
        let key = PageGroup { rid, pasid, index };
        let Some(code) = self.groups.answer(key, code)? else {
            return Ok(());
        };
        let code = match code {
            PageResponseCode::Success => ResponseCode::Success,
            PageResponseCode::Invalid => ResponseCode::InvalidRequest,
            PageResponseCode::Failure => ResponseCode::Failure,
        };
        self.vtd.page_group_response(key, code).map_err(map_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_ids_split_into_bus_and_devfn() {
        assert_eq!(rid(0x0018), Ok((0, 0x18)));
        assert_eq!(rid(0x0100), Ok((1, 0)));
        assert_eq!(rid(0xffff), Ok((0xff, 0xff)));
        assert_eq!(rid(0x1_0000), Err(Error::Invalid));
    }

    #[test]
    fn driver_errors_map_to_protocol_errors() {
        use vtd::error::{QueueError, TimeoutKind};
        assert_eq!(map_error(vtd::Error::Misaligned), Error::Invalid);
        assert_eq!(
            map_error(vtd::Error::AlreadyMapped { iova: 0 }),
            Error::Exists
        );
        assert_eq!(map_error(vtd::Error::OutOfMemory), Error::NoSpace);
        assert_eq!(map_error(vtd::Error::AlreadyAttached), Error::Busy);
        assert_eq!(map_error(vtd::Error::NoSuchDomain), Error::NotFound);
        assert_eq!(
            map_error(vtd::Error::Timeout(TimeoutKind::InvalidationWait)),
            Error::Timeout
        );
        assert_eq!(
            map_error(vtd::Error::Queue(QueueError::Ite)),
            Error::HardwareError
        );
        assert_eq!(
            map_error(vtd::Unsupported::Pasid.into()),
            Error::Unsupported
        );
        assert_eq!(map_error(vtd::Error::PasidsAttached), Error::Busy);
        assert_eq!(map_error(vtd::Error::RequesterNotAttached), Error::NotFound);
        assert_eq!(map_detach_error(vtd::Error::NoSuchDomain), Error::NotFound);
    }

    #[test]
    fn configuration_faults_are_recognised() {
        for r in [1, 2, 3, 8, 9, 0xa, 0xb, 0xd, 0x58] {
            assert!(reason::is_config(r), "{r:#x}");
        }
        for r in [4, 5, 6, 7, 0xc, 0xe, 0x87] {
            assert!(!reason::is_config(r), "{r:#x}");
        }
    }
}
