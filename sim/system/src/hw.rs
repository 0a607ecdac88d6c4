//! The machine's IOMMUs (the hardware models, as the simulation's [`IommuUnit`]s) and
//! the [`Hardware`] iommu-server drives them with: the real driver library behind the
//! `iommu-adapters` seam, over the register frame and memory its capabilities map.

use std::sync::{Arc, Mutex};

use iommu_adapters::smmuv3::SmmuHardware;
use iommu_adapters::vtd::VtdHardware;
use iommu_hwio::poll::PollBudget;
use iommu_models::smmuv3::{self as smmu_models, Config as SmmuModelConfig, Smmuv3};
use iommu_models::vtd::{self as vtd_model, VtdModel, VtdModelConfig};
use iommu_server::{Hardware, HwDomain, HwFault, StreamId};
use ipc_protocol::iommu::{DeviceInfo, PageResponseCode, Perm};
use ipc_protocol::pasid::Pasid;
use ipc_protocol::Error;
use sim::machine::{Access, DmaRequest, IommuUnit, PageRequest, RegisterIo};
use sim::{PhysMem, SimDma, SimMmio};
use system_description::IommuKind;

/// Polls of a hardware wait before the driver gives up (the models complete commands
/// and invalidations when they are issued, so a few polls always suffice).
pub const POLL_BUDGET: u64 = 10_000;

fn access(a: Access) -> iommu_models::Access {
    match a {
        Access::Read => iommu_models::Access::Read,
        Access::Write => iommu_models::Access::Write,
    }
}

/// The VT-d model as the machine's IOMMU. Its interrupt is raised whenever the model
/// wrote a fault record or queued a page request.
pub struct VtdUnit {
    model: VtdModel,
    records_seen: u64,
    /// A page request was queued since the interrupt was last taken.
    page_requests: bool,
}

impl IommuUnit for VtdUnit {
    fn registers(&mut self) -> Box<dyn RegisterIo + Send> {
        Box::new(self.model.clone())
    }

    fn translate(&mut self, r: DmaRequest) -> Option<u64> {
        let sid = u16::try_from(r.stream).ok()?;
        self.model
            .translate(sid, r.pasid, r.iova, access(r.access))
            .ok()
    }

    fn take_interrupt(&mut self) -> bool {
        let records = self.model.stats().records;
        let raised = records > self.records_seen || self.page_requests;
        self.records_seen = records;
        self.page_requests = false;
        raised
    }

    fn page_request(&mut self, stream: u32, r: PageRequest) -> bool {
        let Ok(rid) = u16::try_from(stream) else {
            return false;
        };
        let outcome = self.model.page_request(vtd_model::PageRequest {
            rid,
            pasid: r.pasid,
            address: r.address,
            read: !r.write,
            write: r.write,
            execute: false,
            privileged: false,
            last: r.last,
            group: r.group,
        });
        let queued = outcome == vtd_model::PageRequestOutcome::Queued;
        self.page_requests |= queued;
        queued
    }
}

/// The SMMUv3 model as the machine's IOMMU. Its interrupt is raised whenever the model
/// wrote an event record or took a page request.
pub struct SmmuUnit {
    model: Smmuv3,
    events_seen: u64,
    page_requests_seen: u64,
}

impl IommuUnit for SmmuUnit {
    fn registers(&mut self) -> Box<dyn RegisterIo + Send> {
        Box::new(self.model.clone())
    }

    fn translate(&mut self, r: DmaRequest) -> Option<u64> {
        self.model
            .translate(r.stream, r.pasid, r.iova, access(r.access))
            .ok()
            .map(|t| t.pa)
    }

    fn take_interrupt(&mut self) -> bool {
        let stats = self.model.stats();
        let requests = stats.page_requests + stats.page_requests_lost;
        let raised = stats.events > self.events_seen || requests > self.page_requests_seen;
        self.events_seen = stats.events;
        self.page_requests_seen = requests;
        raised
    }

    fn page_request(&mut self, stream: u32, r: PageRequest) -> bool {
        self.model.page_request(smmu_models::PriRequest {
            sid: stream,
            ssid: r.pasid,
            addr: r.address,
            read: !r.write,
            write: r.write,
            exec: false,
            privileged: false,
            last: r.last,
            prg_index: r.group,
        })
    }
}

/// The IOMMU model of `kind` over `mem`, in its reset state.
pub fn machine_unit(kind: IommuKind, mem: Arc<PhysMem>) -> Arc<Mutex<dyn IommuUnit>> {
    match kind {
        IommuKind::Vtd => Arc::new(Mutex::new(VtdUnit {
            // Page requests, device-TLBs, 20-bit PASIDs, 8 fault records, 4-level tables.
            model: VtdModel::new(mem, VtdModelConfig::full()),
            records_seen: 0,
            page_requests: false,
        })),
        IommuKind::Smmuv3 => Arc::new(Mutex::new(SmmuUnit {
            model: smmu_model(mem),
            events_seen: 0,
            page_requests_seen: 0,
        })),
    }
}

/// The SMMUv3 of the simulated machine: QEMU 7.2's, plus what PASIDs and page requests
/// need and QEMU lacks: 20 SubstreamID bits with two-level CD tables, and a PRI queue of
/// up to 256 records.
pub fn smmu_model(mem: Arc<PhysMem>) -> Smmuv3 {
    Smmuv3::with_config(
        mem,
        SmmuModelConfig::QEMU_7_2
            .with_substreams(20, true)
            .with_pri(8),
    )
}

/// How iommu-server's SMMUv3 driver is configured: StreamIDs up to 255 (a linear stream
/// table), stage-1 domains of [`crate::IOVA_BITS`]-bit IOVAs, otherwise the driver's
/// defaults.
pub fn smmu_config() -> smmuv3::SmmuConfig {
    smmuv3::SmmuConfig {
        sid_bits: 8,
        va_bits: crate::IOVA_BITS,
        ..smmuv3::SmmuConfig::default()
    }
}

/// The SMMUv3 driver initialised over `regs` with its tables and queues in `mem`,
/// behind the adapter.
pub fn smmu_hardware<R: RegisterIo>(
    regs: R,
    mem: SimDma,
) -> Result<SmmuHardware<R, SimDma, PollBudget>, String> {
    SmmuHardware::new(regs, mem, PollBudget::new(POLL_BUDGET), smmu_config())
        .map_err(|e| format!("SMMUv3 initialisation: {e:?}"))
}

/// The VT-d driver initialised over `regs` with its tables and queues in `mem`, behind
/// the adapter.
pub fn vtd_hardware<R: RegisterIo>(
    regs: R,
    mem: SimDma,
) -> Result<VtdHardware<R, SimDma, PollBudget>, String> {
    let v = vtd::Vtd::new(
        regs,
        mem,
        PollBudget::new(POLL_BUDGET),
        vtd::VtdConfig::default(),
    )
    .map_err(|e| format!("VT-d initialisation: {e:?}"))?;
    Ok(VtdHardware::new(v))
}

/// iommu-server's hardware on the simulation: the driver of the IOMMU the description
/// names, over the register frame and table memory its capabilities map.
pub enum SimHardware<R: RegisterIo> {
    Smmuv3(SmmuHardware<R, SimDma, PollBudget>),
    Vtd(VtdHardware<R, SimDma, PollBudget>),
}

impl<R: RegisterIo> SimHardware<R> {
    /// Initialises the driver of `kind`.
    pub fn new(kind: IommuKind, regs: R, mem: SimDma) -> Result<Self, String> {
        match kind {
            IommuKind::Vtd => vtd_hardware(regs, mem).map(SimHardware::Vtd),
            IommuKind::Smmuv3 => smmu_hardware(regs, mem).map(SimHardware::Smmuv3),
        }
    }
}

/// iommu-server's hardware for `kind` over `regs`, built as iommu-server builds its own
/// ([`SimHardware`] over a [`SimMmio`] handle) and handed out as `dyn Hardware`: calls
/// through it run the very machine code the server's process runs for page tables and
/// invalidation (the driver is instantiated once, in this crate). Benchmarks compare the
/// server path against it: a separately compiled copy of the same driver code can be
/// faster or slower by where its loops land.
pub fn server_hardware(
    kind: IommuKind,
    regs: Box<dyn RegisterIo + Send>,
    mem: SimDma,
) -> Result<Box<dyn Hardware>, String> {
    Ok(Box::new(SimHardware::new(
        kind,
        SimMmio::outside(regs),
        mem,
    )?))
}

macro_rules! each {
    ($self:ident, $h:ident => $e:expr) => {
        match $self {
            SimHardware::Smmuv3($h) => $e,
            SimHardware::Vtd($h) => $e,
        }
    };
}

impl<R: RegisterIo> Hardware for SimHardware<R> {
    fn device_info(&self, stream: StreamId) -> DeviceInfo {
        each!(self, h => h.device_info(stream))
    }
    fn domain_alloc(&mut self) -> Result<HwDomain, Error> {
        each!(self, h => h.domain_alloc())
    }
    fn domain_free(&mut self, domain: HwDomain) -> Result<(), Error> {
        each!(self, h => h.domain_free(domain))
    }
    fn map(&mut self, d: HwDomain, iova: u64, pa: u64, len: u64, perm: Perm) -> Result<(), Error> {
        each!(self, h => h.map(d, iova, pa, len, perm))
    }
    fn unmap(&mut self, d: HwDomain, iova: u64, len: u64) -> Result<(), Error> {
        each!(self, h => h.unmap(d, iova, len))
    }
    fn attach(&mut self, s: StreamId, p: Option<Pasid>, d: HwDomain) -> Result<(), Error> {
        each!(self, h => h.attach(s, p, d))
    }
    fn detach(&mut self, s: StreamId, p: Option<Pasid>) -> Result<(), Error> {
        each!(self, h => h.detach(s, p))
    }
    fn drain_faults(&mut self, sink: &mut dyn FnMut(HwFault)) -> u32 {
        each!(self, h => h.drain_faults(sink))
    }
    fn page_response(
        &mut self,
        s: StreamId,
        p: Option<Pasid>,
        group: u32,
        code: PageResponseCode,
    ) -> Result<(), Error> {
        each!(self, h => h.page_response(s, p, group, code))
    }
}
