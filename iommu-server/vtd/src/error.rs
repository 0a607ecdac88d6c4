//! Error types shared by every module of the driver.

use core::fmt;

/// A hardware capability that a requested configuration needs but the remapping unit
/// lacks. Returned before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// Scalable-mode translation (ECAP.SMTS = 0).
    ScalableMode,
    /// PASID support (ECAP.PASID = 0), or a PASID wider than ECAP.PSS allows.
    Pasid,
    /// Queued invalidation (ECAP.QI = 0).
    QueuedInvalidation,
    /// A second-level table depth not listed in CAP.SAGAW.
    PageTableLevels(u8),
    /// 2MB second-level pages (CAP.SLLPS bit 0 = 0).
    LargePage2M,
    /// 1GB second-level pages (CAP.SLLPS bit 1 = 0).
    LargePage1G,
    /// First-level translation (ECAP.FLTS = 0).
    FirstLevel,
    /// 1GB first-level pages (CAP.FL1GP = 0).
    FirstLevel1G,
    /// 5-level first-level paging (CAP.FL5LP = 0).
    FirstLevel5Level,
    /// Second-level translation in scalable mode (ECAP.SLTS = 0).
    SecondLevel,
    /// Nested translation (ECAP.NEST = 0).
    Nested,
    /// Pass-through (ECAP.PT = 0).
    PassThrough,
    /// Device-TLB / ATS (ECAP.DT = 0).
    DeviceTlb,
    /// Page requests (ECAP.PRS = 0).
    PageRequests,
    /// Page-selective IOTLB invalidation (CAP.PSI = 0).
    PageSelectiveInvalidation,
    /// Second-level accessed/dirty bits (ECAP.SLADS = 0).
    SecondLevelAccessedDirty,
    /// Snoop control (ECAP.SC = 0).
    SnoopControl,
    /// Execute requests (ECAP.ERS = 0).
    ExecuteRequests,
    /// Supervisor requests (ECAP.SRS = 0).
    SupervisorRequests,
    /// Register-based invalidation (removed from hardware reporting VER_REG major
    /// version 6 or later, VT-d spec §6.5).
    RegisterInvalidation,
    /// A register group (IOTLB at ECAP.IRO, fault records at CAP.FRO) lies outside the
    /// register block the caller mapped.
    RegisterLayout,
}

/// Which hardware wait ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// GSTS did not reflect a GCMD command (the command bit is given).
    GlobalStatus(u32),
    /// CCMD.ICC stayed set.
    ContextCommand,
    /// IOTLB_REG.IVT stayed set.
    IotlbInvalidation,
    /// The invalidation queue did not free enough slots (IQH stayed put).
    QueueSpace,
    /// An invalidation-wait status write did not arrive.
    InvalidationWait,
}

/// Invalidation queue error reported through FSTS (VT-d spec §6.5.2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// FSTS.IQE: the descriptor at `index` (from IQH) is invalid; IQERCD.IQEI gives `info`.
    Iqe {
        /// Descriptor index the hardware stopped at.
        index: u32,
        /// IQERCD.IQEI (0 on hardware without IQERCD).
        info: u8,
    },
    /// FSTS.ITE: a device-TLB invalidation timed out.
    Ite,
    /// FSTS.ICE: an invalidation completion error (invalid ATS completion).
    Ice,
}

/// Every error the driver reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The configuration needs a capability the hardware lacks; nothing was written.
    Unsupported(Unsupported),
    /// An address or size is not aligned to 4KB (or to what the structure needs).
    Misaligned,
    /// The range (or part of it) is already mapped; `iova` is the first conflicting address.
    AlreadyMapped {
        /// First input address found mapped.
        iova: u64,
    },
    /// The memory provider could not supply a table or queue.
    OutOfMemory,
    /// An address lies outside the input or output address range.
    OutOfRange,
    /// A mapping must allow reads or writes.
    InvalidPermissions,
    /// A field value outside its encoding.
    InvalidField(&'static str),
    /// A domain-id outside CAP.ND, reserved (0 with CAP.CM = 1) or already in use.
    InvalidDomainId(u16),
    /// No domain with this handle exists.
    NoSuchDomain,
    /// The domain is pass-through: it has no page table to map into.
    PassThroughDomain,
    /// The requester (or the requester with this PASID) is already attached.
    AlreadyAttached,
    /// A PASID can be attached only to a requester that is attached itself (its scalable
    /// context entry and PASID directory exist from then on).
    RequesterNotAttached,
    /// PASIDs are still attached: to the requester being detached, or to the domain being
    /// destroyed. Detach them first.
    PasidsAttached,
    /// A hardware wait ran out of time.
    Timeout(TimeoutKind),
    /// The invalidation queue reported an error.
    Queue(QueueError),
    /// The hardware refused a register-based invalidation (actual granularity 0).
    InvalidationRefused,
    /// Malformed ACPI DMAR table.
    Dmar(crate::dmar::DmarError),
}

impl From<Unsupported> for Error {
    fn from(u: Unsupported) -> Self {
        Error::Unsupported(u)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unsupported(u) => write!(f, "unsupported by this remapping unit: {u:?}"),
            Error::Misaligned => f.write_str("address or size misaligned"),
            Error::AlreadyMapped { iova } => write!(f, "IOVA {iova:#x} already mapped"),
            Error::OutOfMemory => f.write_str("out of memory for tables"),
            Error::OutOfRange => f.write_str("address out of range"),
            Error::InvalidPermissions => f.write_str("mapping must allow reads or writes"),
            Error::InvalidField(n) => write!(f, "field {n} out of range"),
            Error::InvalidDomainId(d) => write!(f, "invalid or busy domain-id {d}"),
            Error::NoSuchDomain => f.write_str("no such domain"),
            Error::PassThroughDomain => f.write_str("pass-through domain has no page table"),
            Error::AlreadyAttached => f.write_str("requester already attached"),
            Error::RequesterNotAttached => f.write_str("requester not attached"),
            Error::PasidsAttached => f.write_str("PASIDs still attached"),
            Error::Timeout(k) => write!(f, "timeout waiting for {k:?}"),
            Error::Queue(q) => write!(f, "invalidation queue error {q:?}"),
            Error::InvalidationRefused => f.write_str("invalidation refused by hardware"),
            Error::Dmar(e) => write!(f, "DMAR table: {e:?}"),
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = core::result::Result<T, Error>;
