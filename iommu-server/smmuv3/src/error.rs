//! Error types shared by every module of the driver.

use core::fmt;

/// A hardware capability that a requested configuration needs but the SMMU lacks
/// (or that this driver does not implement). Returned before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// Stage-1 translation (SMMU_IDR0.S1P = 0).
    Stage1,
    /// Stage-2 translation (SMMU_IDR0.S2P = 0).
    Stage2,
    /// Nested translation needs both S1P and S2P.
    Nested,
    /// AArch64 translation tables (SMMU_IDR0.TTF lacks AArch64).
    AArch64Tables,
    /// Little-endian translation tables (SMMU_IDR0.TTENDIAN = big-endian only).
    LittleEndianTables,
    /// Two-level stream table (SMMU_IDR0.ST_LEVEL = linear only).
    TwoLevelStreamTable,
    /// Substreams / CD tables (SMMU_IDR1.SSIDSIZE = 0, or the table is larger than SSIDSIZE).
    Substreams,
    /// Two-level CD tables (SMMU_IDR0.CD2L = 0).
    TwoLevelCdTable,
    /// 16-bit ASIDs (SMMU_IDR0.ASID16 = 0).
    Asid16,
    /// 16-bit VMIDs (SMMU_IDR0.VMID16 = 0).
    Vmid16,
    /// Hardware Access flag update (SMMU_IDR0.HTTU = 0).
    HardwareAccessFlag,
    /// Hardware dirty state update (SMMU_IDR0.HTTU < 2).
    HardwareDirty,
    /// 4KB translation granule (SMMU_IDR5.GRAN4K = 0).
    Granule4K,
    /// Coherent table and queue access (SMMU_IDR0.COHACC = 0): this driver does no cache
    /// maintenance, so it needs a coherent SMMU.
    CoherentAccess,
    /// Stall fault model (SMMU_IDR0.STALL_MODEL forbids it).
    Stall,
    /// Stream IDs wider than SMMU_IDR1.SIDSIZE.
    StreamIdSize,
    /// An input or output address size the hardware (or the page-table format) cannot express.
    AddressSize,
    /// A queue larger than SMMU_IDR1 allows.
    QueueSize,
}

/// Which hardware wait ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// SMMU_CR0ACK did not reflect a write to SMMU_CR0.
    Cr0Ack,
    /// SMMU_IRQ_CTRLACK did not reflect a write to SMMU_IRQ_CTRL.
    IrqCtrlAck,
    /// The command queue stayed full.
    CommandQueueSpace,
    /// A CMD_SYNC was not consumed.
    CommandSync,
}

/// SMMU_CMDQ_CONS.ERR codes (SMMUv3 spec §7.1, "Command queue errors").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandErrorCode {
    /// CERROR_NONE (0): no error recorded (GERROR.CMDQ_ERR without a code).
    None,
    /// CERROR_ILL (1): illegal command (unknown opcode or invalid field).
    Illegal,
    /// CERROR_ABT (2): an abort on the command fetch.
    Abort,
    /// CERROR_ATC_INV_SYNC (3): ATC invalidation completion timeout on a CMD_SYNC.
    AtcInvalidationSync,
    /// Any other (implementation-defined) value.
    Other(u8),
}

impl CommandErrorCode {
    /// Decode the 7-bit SMMU_CMDQ_CONS.ERR field.
    pub const fn from_raw(code: u8) -> Self {
        match code {
            0 => Self::None,
            1 => Self::Illegal,
            2 => Self::Abort,
            3 => Self::AtcInvalidationSync,
            c => Self::Other(c),
        }
    }
}

/// Every error the driver reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The configuration needs a capability the SMMU lacks; nothing was written.
    Unsupported(Unsupported),
    /// An address or size is not aligned to the 4KB granule (or to what the structure needs).
    Misaligned,
    /// The range (or part of it) is already mapped; `iova` is the first conflicting address.
    AlreadyMapped {
        /// First input address found mapped.
        iova: u64,
    },
    /// The memory provider could not supply a table or queue.
    OutOfMemory,
    /// An address lies outside the input or output address range of the table.
    OutOfRange,
    /// A mapping must at least allow reads (AArch64 stage 1 has no write-only permission).
    InvalidPermissions,
    /// A StreamID outside the stream table.
    InvalidStreamId(u32),
    /// A SubstreamID outside the CD table.
    InvalidSubstreamId(u32),
    /// An ASID already in use or too wide.
    InvalidAsid(u16),
    /// A field value outside its encoding (for example T0SZ or a queue size).
    InvalidField(&'static str),
    /// No domain with this handle exists.
    NoSuchDomain,
    /// Nothing is attached to this StreamID and SubstreamID (0: non-substream traffic).
    NotAttached {
        /// StreamID.
        sid: u32,
        /// SubstreamID.
        ssid: u32,
    },
    /// A hardware wait ran out of time.
    Timeout(TimeoutKind),
    /// The command queue reported an error for the command at `index`
    /// (SMMU_CMDQ_CONS.RD with its wrap bit); the driver already applied the recovery
    /// described in the spec (§7.1) so later commands proceed.
    Command {
        /// Decoded SMMU_CMDQ_CONS.ERR.
        code: CommandErrorCode,
        /// Queue index (including wrap bit) of the failing command.
        index: u32,
        /// Opcode of the failing command as read back from the queue.
        opcode: u8,
    },
    /// SMMU_GERROR reports an error other than CMDQ_ERR (raw active bits).
    GlobalError(u32),
    /// A byte buffer has the wrong length for the record it should hold.
    BadLength,
}

impl From<Unsupported> for Error {
    fn from(u: Unsupported) -> Self {
        Error::Unsupported(u)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unsupported(u) => write!(f, "unsupported by this SMMU: {u:?}"),
            Error::Misaligned => f.write_str("address or size misaligned"),
            Error::AlreadyMapped { iova } => write!(f, "IOVA {iova:#x} already mapped"),
            Error::OutOfMemory => f.write_str("out of memory for tables"),
            Error::OutOfRange => f.write_str("address out of range"),
            Error::InvalidPermissions => f.write_str("mapping must allow reads"),
            Error::InvalidStreamId(s) => write!(f, "invalid StreamID {s:#x}"),
            Error::InvalidSubstreamId(s) => write!(f, "invalid SubstreamID {s:#x}"),
            Error::InvalidAsid(a) => write!(f, "invalid or busy ASID {a}"),
            Error::InvalidField(n) => write!(f, "field {n} out of range"),
            Error::NoSuchDomain => f.write_str("no such domain"),
            Error::NotAttached { sid, ssid } => {
                write!(
                    f,
                    "nothing attached to StreamID {sid:#x} SubstreamID {ssid:#x}"
                )
            }
            Error::Timeout(k) => write!(f, "timeout waiting for {k:?}"),
            Error::Command {
                code,
                index,
                opcode,
            } => write!(
                f,
                "command {opcode:#x} at queue index {index:#x} failed: {code:?}"
            ),
            Error::GlobalError(bits) => write!(f, "SMMU_GERROR {bits:#x}"),
            Error::BadLength => f.write_str("record has the wrong length"),
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = core::result::Result<T, Error>;
