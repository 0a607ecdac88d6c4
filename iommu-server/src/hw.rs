//! The hardware seam: what iommu-server needs from an IOMMU driver.
//!
//! Implemented by adapters over the SMMUv3 and VT-d driver libraries, and by the hardware
//! models of the simulation. Every call that changes what a device can reach returns only
//! after the hardware has completed the invalidations it needs (SMMUv3: TLBI/CFGI +
//! CMD_SYNC; VT-d: IOTLB/context/PASID-cache invalidation + wait descriptor), so the server
//! can answer the client, or release memory, as soon as the call returns.

use ipc_protocol::iommu::{DeviceInfo, PageResponseCode, Perm};
use ipc_protocol::pasid::Pasid;
use ipc_protocol::records::FaultKind;
use ipc_protocol::Error;

/// A hardware I/O page table (SMMUv3 stage-1 context, VT-d second-level domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HwDomain(pub u32);

/// How a device is identified to the IOMMU: requester ID (VT-d) or StreamID (SMMUv3).
pub type StreamId = u32;

/// A fault or page request as the hardware reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwFault {
    pub stream: StreamId,
    pub pasid: Option<Pasid>,
    pub kind: FaultKind,
    /// `ipc_protocol::records::fault_flags` bits (read, privileged, exec, last in group).
    pub flags: u16,
    /// The hardware's own code (SMMUv3 event type, VT-d fault reason).
    pub reason: u32,
    pub address: u64,
    /// For page requests: the hardware's group index (PRI PRG index, stall tag), to be
    /// given back in the response.
    pub group: u32,
}

/// What iommu-server asks of the IOMMU.
pub trait Hardware {
    /// What the IOMMU in front of `stream` supports.
    fn device_info(&self, stream: StreamId) -> DeviceInfo;

    /// Creates an empty I/O page table.
    fn domain_alloc(&mut self) -> Result<HwDomain, Error>;

    /// Frees a page table no stream uses any more.
    fn domain_free(&mut self, domain: HwDomain) -> Result<(), Error>;

    /// Maps `len` bytes at `iova` to physical `pa` (all page aligned).
    fn map(
        &mut self,
        domain: HwDomain,
        iova: u64,
        pa: u64,
        len: u64,
        perm: Perm,
    ) -> Result<(), Error>;

    /// Unmaps `len` bytes at `iova`; returns after the IOTLB (and device TLB) invalidation
    /// has completed.
    fn unmap(&mut self, domain: HwDomain, iova: u64, len: u64) -> Result<(), Error>;

    /// Routes the stream's DMA (tagged with `pasid`, or untagged) through `domain`.
    fn attach(
        &mut self,
        stream: StreamId,
        pasid: Option<Pasid>,
        domain: HwDomain,
    ) -> Result<(), Error>;

    /// Stops routing; the stream's DMA (with that PASID) is blocked when this returns,
    /// configuration caches invalidated.
    fn detach(&mut self, stream: StreamId, pasid: Option<Pasid>) -> Result<(), Error>;

    /// Hands every pending fault and page request to `sink`; returns how many the hardware
    /// itself lost (queue overflow).
    fn drain_faults(&mut self, sink: &mut dyn FnMut(HwFault)) -> u32;

    /// Answers a page request group.
    fn page_response(
        &mut self,
        stream: StreamId,
        pasid: Option<Pasid>,
        group: u32,
        code: PageResponseCode,
    ) -> Result<(), Error>;
}

/// A boxed hardware (for example `Box<dyn Hardware>`) is hardware.
impl<H: Hardware + ?Sized> Hardware for alloc::boxed::Box<H> {
    fn device_info(&self, stream: StreamId) -> DeviceInfo {
        (**self).device_info(stream)
    }
    fn domain_alloc(&mut self) -> Result<HwDomain, Error> {
        (**self).domain_alloc()
    }
    fn domain_free(&mut self, domain: HwDomain) -> Result<(), Error> {
        (**self).domain_free(domain)
    }
    fn map(&mut self, d: HwDomain, iova: u64, pa: u64, len: u64, perm: Perm) -> Result<(), Error> {
        (**self).map(d, iova, pa, len, perm)
    }
    fn unmap(&mut self, domain: HwDomain, iova: u64, len: u64) -> Result<(), Error> {
        (**self).unmap(domain, iova, len)
    }
    fn attach(&mut self, s: StreamId, p: Option<Pasid>, d: HwDomain) -> Result<(), Error> {
        (**self).attach(s, p, d)
    }
    fn detach(&mut self, stream: StreamId, pasid: Option<Pasid>) -> Result<(), Error> {
        (**self).detach(stream, pasid)
    }
    fn drain_faults(&mut self, sink: &mut dyn FnMut(HwFault)) -> u32 {
        (**self).drain_faults(sink)
    }
    fn page_response(
        &mut self,
        s: StreamId,
        p: Option<Pasid>,
        group: u32,
        code: PageResponseCode,
    ) -> Result<(), Error> {
        (**self).page_response(s, p, group, code)
    }
}

/// What iommu-server asks of the PASID authority (pasid-server, reached over IPC; or an
/// in-process instance in tests). `owner` is the client the PASID is charged to.
pub trait PasidAuthority {
    /// A private PASID for `owner`, at most `max`.
    fn alloc_private(&mut self, owner: u32, max: Pasid) -> Result<Pasid, Error>;
    /// Releases a PASID allocated for `owner` (lazily, per pasid-server's rules).
    fn free(&mut self, owner: u32, pasid: Pasid) -> Result<(), Error>;
    /// Revokes everything `owner` holds (its client died).
    fn revoke_owner(&mut self, owner: u32) -> Result<(), Error>;
}
