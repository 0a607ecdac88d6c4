//! The simulated machine around the kernel: IOMMUs and the DMA-capable devices behind
//! them.
//!
//! A device is an active agent: once its driver submits a [`DmaJob`], the scheduler runs
//! the job one page per step, interleaved with the processes, so a device keeps doing DMA
//! whatever happens to the process that programmed it (exactly why an IOMMU is needed).
//! Every access goes through the device's IOMMU ([`IommuUnit::translate`]) to
//! [`sim_physmem::PhysMem`]; the IOMMU records faults in its own way (a hardware model
//! writes event records) and raises its interrupt, which the kernel delivers to the
//! notification the holder of the IRQ capability chose.

pub use iommu_hwio::mmio::RegisterIo;

/// Direction of one DMA access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

/// One access a device presents to its IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRequest {
    /// StreamID (SMMUv3) or requester ID (VT-d) of the device.
    pub stream: u32,
    /// The PASID (SubstreamID) the transaction carries, if any.
    pub pasid: Option<u32>,
    /// The I/O virtual address.
    pub iova: u64,
    pub access: Access,
}

/// An IOMMU as the machine sees it: a register file its driver programs and the
/// translation every device access goes through.
pub trait IommuUnit: Send {
    /// A handle to the register frame (what a holder of the IOMMU's MMIO capability
    /// maps): every access through it reaches this IOMMU's registers.
    fn registers(&mut self) -> Box<dyn RegisterIo + Send>;

    /// Translates one access: the physical address, or `None` when the IOMMU blocks it
    /// (having recorded the fault however the hardware does).
    fn translate(&mut self, request: DmaRequest) -> Option<u64>;

    /// Whether the IOMMU raised its interrupt since the last call (an edge).
    fn take_interrupt(&mut self) -> bool;

    /// A page request (PCIe PRI) from the device with `stream`: whether the IOMMU took
    /// it (queued it for software). IOMMUs without page requests refuse it.
    fn page_request(&mut self, stream: u32, request: PageRequest) -> bool {
        let _ = (stream, request);
        false
    }
}

/// A page request a device sends (PCIe PRI Page Request Message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub pasid: Option<u32>,
    /// Address of the page the device needs.
    pub address: u64,
    /// Write access wanted (else read).
    pub write: bool,
    /// Last request of its group.
    pub last: bool,
    /// Page request group index.
    pub group: u16,
}

/// Direction of a [`DmaJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// Device buffer -> memory (the device writes memory).
    ToMemory,
    /// Memory -> device buffer (the device reads memory).
    FromMemory,
}

/// A transfer a driver asks its device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaJob {
    pub direction: DmaDirection,
    /// First I/O virtual address.
    pub iova: u64,
    /// Bytes to transfer.
    pub len: u64,
    /// Where in the device's buffer the transfer starts.
    pub buffer_offset: u64,
    /// PASID to tag the transactions with.
    pub pasid: Option<u32>,
    /// How many more times to run the job after it first ends (a device that keeps
    /// retrying, or a fault storm).
    pub repeat: u32,
}

impl DmaJob {
    /// One transfer of `len` bytes at `iova`, from the start of the device's buffer,
    /// without a PASID and without repeats.
    pub const fn new(direction: DmaDirection, iova: u64, len: u64) -> Self {
        Self {
            direction,
            iova,
            len,
            buffer_offset: 0,
            pasid: None,
            repeat: 0,
        }
    }
}

/// An access the IOMMU blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaFault {
    /// The I/O virtual address of the blocked access.
    pub iova: u64,
}

/// How a job ended (its last repetition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStatus {
    /// The number [`crate::Ctx::device_submit`] returned.
    pub id: u64,
    pub result: Result<(), DmaFault>,
}

/// What a device capability tells its holder about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDesc {
    /// Index of the IOMMU in front of the device.
    pub iommu: u32,
    /// Its StreamID / requester ID.
    pub stream: u32,
    /// Size of its buffer in bytes.
    pub buffer_bytes: u64,
}
