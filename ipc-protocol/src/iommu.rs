//! Vocabulary of iommu-server: devices, I/O address spaces (IOAS), attachments, shared
//! virtual addressing and fault queues, in the object model of Linux's iommufd.
//!
//! A client calls through an endpoint whose badge names it (and, for a device capability,
//! the device). Memory is never named by physical address: a client grants a memory
//! capability and refers to it by the index the server gave it ([`MemoryRef`]).

use serde::{Deserialize, Serialize};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::pasid::Pasid;
use crate::wire::{Reply, Request};
use crate::Error;

/// First label of iommu-server's label range.
pub const IOMMU_LABEL_BASE: u16 = 0x0200;

/// An opened device (handle local to the client that opened it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub u32);

/// An I/O address space: a page table, not tied to a requester ID (or RID+PASID) until a
/// device is attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IoasId(pub u32);

/// A fault queue owned by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FaultQueueId(pub u32);

/// Which IOMMU translates a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IommuKind {
    Smmuv3,
    Vtd,
}

/// What a device and the IOMMU in front of it support, so a client can ask before binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub iommu: IommuKind,
    /// Width of the PASIDs this device can use (0: no PASID support).
    pub pasid_bits: u8,
    /// Page Request Interface (I/O page faults answered by page responses).
    pub pri: bool,
    /// Address Translation Services (a device TLB).
    pub ats: bool,
    /// Stalled transactions resumed by a response (Arm stall model).
    pub stall: bool,
    /// Width of the I/O virtual addresses the IOAS of this device can use.
    pub iova_bits: u8,
    /// Bitmap of supported page sizes (bit n set: 2^n bytes).
    pub page_sizes: u64,
}

/// Access a mapping grants to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Perm(pub u8);

impl Perm {
    pub const READ: Perm = Perm(1 << 0);
    pub const WRITE: Perm = Perm(1 << 1);
    /// Privileged (supervisor) access only, where the hardware distinguishes it.
    pub const PRIVILEGED: Perm = Perm(1 << 2);
    /// Instruction fetch allowed, where the hardware distinguishes it.
    pub const EXEC: Perm = Perm(1 << 3);
    pub const RW: Perm = Perm(Self::READ.0 | Self::WRITE.0);
    const ALL: u8 = 0xf;

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Perm) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether only defined bits are set and the mapping allows any access at all.
    pub const fn is_valid(self) -> bool {
        self.0 & !Self::ALL == 0 && self.0 & Self::RW.0 != 0
    }
}

impl core::ops::BitOr for Perm {
    type Output = Perm;
    fn bitor(self, rhs: Perm) -> Perm {
        Perm(self.0 | rhs.0)
    }
}

/// Where a mapping goes in the IOAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IovaPlacement {
    /// Exactly here; overlapping an existing mapping is [`crate::Error::Exists`].
    Fixed(u64),
    /// Anywhere free, aligned to `align` bytes (a power of two, at least the page size).
    Anywhere { align: u64 },
}

/// Memory the client granted to the server, named by the index the server gave it, and a
/// byte offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRef {
    pub region: u32,
    pub offset: u64,
}

/// An address space (a client's virtual memory) granted for shared virtual addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpaceRef(pub u32);

/// Outcome of a page request, carried back to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageResponseCode {
    /// The page is now mapped: retry the access.
    Success,
    /// The request is invalid: the device must not retry.
    Invalid,
    /// Unrecoverable failure: the device stops issuing page requests.
    Failure,
}

/// Requests to iommu-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IommuRequest {
    /// Open the device named by the called capability's badge. A device has one owner at
    /// a time: a second open is `Busy`. Reply: [`IommuReply::DeviceOpened`].
    OpenDevice,
    /// Close a device (it must be detached). Reply: [`IommuReply::Done`].
    CloseDevice { device: DeviceId },
    /// Reply: [`IommuReply::Info`].
    QueryDevice { device: DeviceId },
    /// Reply: [`IommuReply::IoasAllocated`].
    AllocIoas,
    /// Destroy an IOAS that no device is attached to (else `Busy`). Reply: `Done`.
    DestroyIoas { ioas: IoasId },
    /// Map `length` bytes of granted memory. Reply: [`IommuReply::Mapped`].
    Map {
        ioas: IoasId,
        iova: IovaPlacement,
        length: u64,
        memory: MemoryRef,
        perm: Perm,
    },
    /// Unmap a range; the reply is sent only after the IOTLB (and device TLB)
    /// invalidation completed. Reply: [`IommuReply::Unmapped`].
    Unmap {
        ioas: IoasId,
        iova: u64,
        length: u64,
    },
    /// Route the device's DMA (tagged with `pasid`, or untagged) through `ioas`.
    /// Reply: `Done`.
    Attach {
        device: DeviceId,
        pasid: Option<Pasid>,
        ioas: IoasId,
    },
    /// Reply: `Done`.
    Detach {
        device: DeviceId,
        pasid: Option<Pasid>,
    },
    /// Bind the device to a granted address space (shared virtual addressing). Binding the
    /// same pair again takes another reference. Reply: [`IommuReply::Bound`].
    SvaBind {
        device: DeviceId,
        space: AddressSpaceRef,
    },
    /// Drop one bind reference. Reply: `Done`.
    SvaUnbind { device: DeviceId, pasid: Pasid },
    /// Create a fault queue for the device's faults and page requests, in the granted
    /// ring memory (see [`crate::records::RingHeader`]). Reply:
    /// [`IommuReply::FaultQueueAllocated`].
    AllocFaultQueue {
        device: DeviceId,
        ring: MemoryRef,
        depth: u32,
    },
    /// Reply: `Done`.
    FreeFaultQueue { queue: FaultQueueId },
    /// Answer a page request delivered on `queue` with the request's cookie.
    /// Reply: `Done`.
    PageResponse {
        queue: FaultQueueId,
        cookie: u64,
        code: PageResponseCode,
    },
    /// Allocate a private PASID (not tied to an address space) usable by the device, for
    /// `Attach` with a PASID. Reply: [`IommuReply::PasidAllocated`].
    AllocPasid { device: DeviceId },
    /// Free a private PASID; it must be detached first (else `Busy`). Reply: `Done`.
    FreePasid { pasid: Pasid },
    /// Grant memory: the `frames` frame capabilities transferred with this call (in
    /// order, each one or more contiguous pages) become one region, named by the index
    /// in the reply in later [`MemoryRef`]s. The server keeps its copies of the
    /// capabilities, so the frames stay allocated (pinned) until the region is revoked
    /// or the client's teardown completed. Reply: [`IommuReply::Granted`].
    GrantMemory { frames: u32 },
    /// Give a region back: `Busy` while a mapping or a fault ring uses it. The server
    /// deletes its capabilities to the frames. Reply: `Done`.
    RevokeMemory { region: u32 },
    /// Administrative (init's capability only, else `Denied`): the process of client
    /// `client` ended. The server detaches its devices, unmaps and destroys its IOASes
    /// (invalidations completed), frees its fault queues and PASIDs and only then deletes
    /// its capabilities to the client's memory. Reply: [`IommuReply::Released`].
    ClientDied { client: u32 },
    /// Administrative: what client `client` holds. Reply: [`IommuReply::Usage`].
    ClientUsage { client: u32 },
}

impl IommuRequest {
    const COUNT: u16 = 20;
    const MAP: u16 = IOMMU_LABEL_BASE + 5;
    const UNMAP: u16 = IOMMU_LABEL_BASE + 6;
}

/// Fixed-layout body of [`IommuRequest::Map`] (34 bytes, little-endian, unaligned).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MapBody {
    pub ioas: U32,
    /// 0: [`IovaPlacement::Fixed`] at `at`; 1: [`IovaPlacement::Anywhere`] aligned to `at`.
    pub placement: u8,
    pub perm: u8,
    pub at: U64,
    pub length: U64,
    pub region: U32,
    pub offset: U64,
}

/// Fixed-layout body of [`IommuRequest::Unmap`] (20 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct UnmapBody {
    pub ioas: U32,
    pub iova: U64,
    pub length: U64,
}

/// Writes `record` as the whole body.
fn put<T: IntoBytes + Immutable>(record: &T, body: &mut [u8]) -> Result<usize, Error> {
    record.write_to_prefix(body).map_err(|_| Error::NoSpace)?;
    Ok(core::mem::size_of_val(record))
}

/// Reads a body that must be exactly one `T`.
fn get<T: FromBytes>(body: &[u8]) -> Result<T, Error> {
    T::read_from_bytes(body).map_err(|_| Error::BadMessage)
}

impl Request for IommuRequest {
    fn label(&self) -> u16 {
        IOMMU_LABEL_BASE
            + match self {
                IommuRequest::OpenDevice => 0,
                IommuRequest::CloseDevice { .. } => 1,
                IommuRequest::QueryDevice { .. } => 2,
                IommuRequest::AllocIoas => 3,
                IommuRequest::DestroyIoas { .. } => 4,
                IommuRequest::Map { .. } => 5,
                IommuRequest::Unmap { .. } => 6,
                IommuRequest::Attach { .. } => 7,
                IommuRequest::Detach { .. } => 8,
                IommuRequest::SvaBind { .. } => 9,
                IommuRequest::SvaUnbind { .. } => 10,
                IommuRequest::AllocFaultQueue { .. } => 11,
                IommuRequest::FreeFaultQueue { .. } => 12,
                IommuRequest::PageResponse { .. } => 13,
                IommuRequest::AllocPasid { .. } => 14,
                IommuRequest::FreePasid { .. } => 15,
                IommuRequest::GrantMemory { .. } => 16,
                IommuRequest::RevokeMemory { .. } => 17,
                IommuRequest::ClientDied { .. } => 18,
                IommuRequest::ClientUsage { .. } => 19,
            }
    }

    fn is_known_label(label: u16) -> bool {
        (IOMMU_LABEL_BASE..IOMMU_LABEL_BASE + Self::COUNT).contains(&label)
    }

    /// `Map` and `Unmap` have fixed-layout bodies ([`MapBody`], [`UnmapBody`]).
    fn encode_fixed(&self, body: &mut [u8]) -> Option<Result<usize, Error>> {
        Some(match *self {
            IommuRequest::Map {
                ioas,
                iova,
                length,
                memory,
                perm,
            } => {
                let (placement, at) = match iova {
                    IovaPlacement::Fixed(at) => (0, at),
                    IovaPlacement::Anywhere { align } => (1, align),
                };
                let record = MapBody {
                    ioas: U32::new(ioas.0),
                    placement,
                    perm: perm.0,
                    at: U64::new(at),
                    length: U64::new(length),
                    region: U32::new(memory.region),
                    offset: U64::new(memory.offset),
                };
                put(&record, body)
            }
            IommuRequest::Unmap { ioas, iova, length } => put(
                &UnmapBody {
                    ioas: U32::new(ioas.0),
                    iova: U64::new(iova),
                    length: U64::new(length),
                },
                body,
            ),
            _ => return None,
        })
    }

    fn decode_fixed(label: u16, body: &[u8]) -> Option<Result<Self, Error>> {
        Some(match label {
            Self::MAP => get::<MapBody>(body).and_then(|m| {
                let iova = match m.placement {
                    0 => IovaPlacement::Fixed(m.at.get()),
                    1 => IovaPlacement::Anywhere { align: m.at.get() },
                    _ => return Err(Error::BadMessage),
                };
                Ok(IommuRequest::Map {
                    ioas: IoasId(m.ioas.get()),
                    iova,
                    length: m.length.get(),
                    memory: MemoryRef {
                        region: m.region.get(),
                        offset: m.offset.get(),
                    },
                    perm: Perm(m.perm),
                })
            }),
            Self::UNMAP => get::<UnmapBody>(body).map(|u| IommuRequest::Unmap {
                ioas: IoasId(u.ioas.get()),
                iova: u.iova.get(),
                length: u.length.get(),
            }),
            _ => return None,
        })
    }
}

/// What a client holds at iommu-server (answer to [`IommuRequest::ClientUsage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientUsage {
    /// Devices it has open.
    pub devices: u32,
    pub ioas: u32,
    pub mapped_bytes: u64,
    pub fault_queues: u32,
    /// Private PASIDs allocated.
    pub pasids: u32,
    /// Regions of granted memory.
    pub regions: u32,
}

/// Replies of iommu-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IommuReply {
    DeviceOpened {
        device: DeviceId,
        info: DeviceInfo,
    },
    Info(DeviceInfo),
    IoasAllocated {
        ioas: IoasId,
    },
    Mapped {
        iova: u64,
    },
    Unmapped {
        length: u64,
    },
    Bound {
        pasid: Pasid,
    },
    FaultQueueAllocated {
        queue: FaultQueueId,
    },
    PasidAllocated {
        pasid: Pasid,
    },
    Done,
    /// The region index of granted memory.
    Granted {
        region: u32,
    },
    /// A dead client's teardown completed: this many frames are no longer held.
    Released {
        frames: u32,
    },
    Usage(ClientUsage),
}

/// The replies to `Map` ([`IommuReply::Mapped`]) and `Unmap` ([`IommuReply::Unmapped`])
/// have a fixed-layout body: the one `u64` they carry, little-endian.
impl Reply for IommuReply {
    fn encode_fixed(&self, label: u16, body: &mut [u8]) -> Option<Result<usize, Error>> {
        match (label, *self) {
            (IommuRequest::MAP, IommuReply::Mapped { iova: v })
            | (IommuRequest::UNMAP, IommuReply::Unmapped { length: v }) => {
                Some(put(&U64::new(v), body))
            }
            _ => None,
        }
    }

    fn decode_fixed(label: u16, body: &[u8]) -> Option<Result<Self, Error>> {
        match label {
            IommuRequest::MAP => {
                Some(get::<U64>(body).map(|v| IommuReply::Mapped { iova: v.get() }))
            }
            IommuRequest::UNMAP => {
                Some(get::<U64>(body).map(|v| IommuReply::Unmapped { length: v.get() }))
            }
            _ => None,
        }
    }
}
