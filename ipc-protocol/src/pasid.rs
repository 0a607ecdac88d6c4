//! Vocabulary of pasid-server, the authority over the 20-bit PASID space.
//!
//! Callers are identified by the badge of the endpoint capability they call through; no
//! field of a request names the caller. Sets are owned by the calling badge together with
//! an `owner` token the caller chooses (iommu-server uses one token per client), so
//! [`PasidRequest::RevokeOwner`] can tear down everything one client held.

use serde::{Deserialize, Serialize};

use crate::wire::{Reply, Request};

/// A Process Address Space ID (PCIe PASID / Arm SubstreamID), 20 bits wide.
pub type Pasid = u32;

/// PASID 0 is reserved for DMA without a PASID (RID_PASID / SSID 0); it is never allocated.
pub const PASID_RESERVED: Pasid = 0;

/// Largest PASID the 20-bit space holds.
pub const PASID_MAX: Pasid = (1 << 20) - 1;

/// First label of pasid-server's label range.
pub const PASID_LABEL_BASE: u16 = 0x0100;

/// A PASID set: an owner's share of the PASID space, with a quota.
///
/// Opaque handle: a slot index and a generation, so a handle of a destroyed set never names
/// a later set in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SetId(pub u64);

/// A requested PASID range, inclusive at both ends. `None` means the server's bound
/// (1 and the platform maximum). Devices with fewer PASID bits pass `max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasidRange {
    pub min: Option<Pasid>,
    pub max: Option<Pasid>,
}

/// Requests to pasid-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PasidRequest {
    /// Create a set owned by (caller, `owner`) that may hold at most `quota` live PASIDs.
    /// Reply: [`PasidReply::SetCreated`].
    CreateSet { owner: u64, quota: u32 },
    /// Revoke every PASID of the set, then destroy it. Reply: [`PasidReply::Revoked`].
    DestroySet { set: SetId },
    /// Allocate a private PASID (not tied to an address space), charged to `set`.
    /// Reply: [`PasidReply::Allocated`].
    Alloc { set: SetId, range: PasidRange },
    /// Find or allocate the PASID of address space `space` (one per address space,
    /// shared by every device bound to it) and take one reference on it for the bind.
    /// Reply: [`PasidReply::Allocated`] (`new` tells whether it was allocated now).
    AllocShared {
        set: SetId,
        space: u64,
        range: PasidRange,
    },
    /// Take a reference (a device bind, a task using the PASID). Reply: [`PasidReply::Done`].
    Get { pasid: Pasid },
    /// Drop a reference taken by `Get` or `AllocShared`. Reply: [`PasidReply::Done`].
    Put { pasid: Pasid },
    /// Release the allocation. The value stays out of circulation until the last
    /// reference is dropped (lazy free). Reply: [`PasidReply::Done`].
    Free { pasid: Pasid },
    /// Who owns a PASID and in what state it is. Reply: [`PasidReply::Info`].
    Lookup { pasid: Pasid },
    /// Revoke every set (and so every PASID) owned by (caller, `owner`).
    /// Reply: [`PasidReply::Revoked`].
    RevokeOwner { owner: u64 },
    /// Size and use of the PASID space. Reply: [`PasidReply::Space`].
    QuerySpace,
}

impl PasidRequest {
    const COUNT: u16 = 10;
}

impl Request for PasidRequest {
    fn label(&self) -> u16 {
        PASID_LABEL_BASE
            + match self {
                PasidRequest::CreateSet { .. } => 0,
                PasidRequest::DestroySet { .. } => 1,
                PasidRequest::Alloc { .. } => 2,
                PasidRequest::AllocShared { .. } => 3,
                PasidRequest::Get { .. } => 4,
                PasidRequest::Put { .. } => 5,
                PasidRequest::Free { .. } => 6,
                PasidRequest::Lookup { .. } => 7,
                PasidRequest::RevokeOwner { .. } => 8,
                PasidRequest::QuerySpace => 9,
            }
    }

    fn is_known_label(label: u16) -> bool {
        (PASID_LABEL_BASE..PASID_LABEL_BASE + Self::COUNT).contains(&label)
    }
}

/// State of a PASID as seen by [`PasidRequest::Lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PasidState {
    /// Allocated; new references may be taken.
    Active,
    /// Freed or revoked while references remain: no new references, the value is not
    /// reused until `refs` drops to zero.
    Draining,
}

/// Answer to [`PasidRequest::Lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasidInfo {
    pub pasid: Pasid,
    /// The set it is charged to (`None` once the set was destroyed).
    pub set: Option<SetId>,
    pub owner: u64,
    /// Address space it belongs to, for shared PASIDs.
    pub space: Option<u64>,
    /// References taken (the allocation itself is not counted).
    pub refs: u32,
    pub state: PasidState,
}

/// Answer to [`PasidRequest::QuerySpace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Highest PASID this server hands out (lowered for hardware with fewer bits).
    pub max_pasid: Pasid,
    /// PASID values out of circulation system-wide (active or draining).
    pub live: u32,
    /// Of those, the ones charged to the caller.
    pub caller_live: u32,
    /// The caller's limit on live PASIDs.
    pub caller_limit: u32,
}

/// Replies of pasid-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PasidReply {
    SetCreated {
        set: SetId,
    },
    Allocated {
        pasid: Pasid,
        new: bool,
    },
    Done,
    Info(PasidInfo),
    /// How many PASIDs were revoked (including ones left draining).
    Revoked {
        pasids: u32,
    },
    Space(SpaceInfo),
}

/// Every reply of pasid-server has a postcard body.
impl Reply for PasidReply {}
