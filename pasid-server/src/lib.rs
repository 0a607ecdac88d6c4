//! pasid-server: the authority over the 20-bit PASID space.
//!
//! # Rules
//! - PASID 0 is reserved for DMA without a PASID and is never handed out. The usable
//!   maximum is `Config::max_pasid`, lowered for hardware with fewer PASID bits
//!   (SMMUv3 `IDR1.SSIDSIZE`, VT-d `ECAP.PSS`); a request may narrow it further with a
//!   range (a device's own PASID width).
//! - A caller is a badge listed in the configuration (in practice iommu-server and init);
//!   any other badge is `Denied`. Sets belong to (caller, owner token); a caller can use
//!   only its own sets and PASIDs (`Denied` otherwise). An `admin` caller may also look up
//!   and destroy other callers' sets.
//! - Allocation is charged to a set (its quota) and to the caller (its `max_live`);
//!   exceeding either is `QuotaExceeded`, an exhausted space (or range) is `NoSpace`,
//!   found in O(1).
//! - An address space has one PASID, shared by every device bound to it
//!   (`AllocShared` returns the same value and takes one reference per bind). Private
//!   PASIDs (`Alloc`) are for DMA that does not share a CPU address space.
//! - References (device binds, tasks) are taken with `Get` and dropped with `Put`. `Free`
//!   releases the allocation; the value stays out of circulation until the last reference
//!   is dropped (lazy free), so it is never handed out while anything refers to it.
//! - Destroying a set (or revoking an owner) revokes every PASID in it: each is freed now
//!   or, if referenced, drains like a freed PASID.
//!
//! # State machine of one PASID value
//! ```text
//!              Alloc / AllocShared (refs = 0 / 1)
//!   FREE  ─────────────────────────────────────────▶  ACTIVE(refs)
//!    ▲                                                 │  Get: refs+1   Put: refs-1 (refs>0)
//!    │                                                 │
//!    │  Free / revoke with refs == 0                   │  Free / revoke with refs > 0
//!    ├─────────────────────────────────────────────────┤
//!    │                                                 ▼
//!    └───────────── Put making refs == 0 ─────────  DRAINING(refs)
//!                                                      Put: refs-1; Get: Invalid
//! ```
//! Errors, never corruption: `Put` with no reference taken, `Free` of a draining PASID
//! (double free) and any call on a free value or PASID 0 are `Invalid`; calls on another
//! caller's PASID are `Denied`; `Get` on a draining PASID is `Invalid`.
//!
//! # Cost
//! Allocation uses a three-level bitmap (lowest free PASID at or above the range's
//! minimum, in a constant number of word operations) and 16 bytes of state per PASID in
//! chunks of 64 allocated on first use; see `cargo xtask bench` for figures.
#![no_std]

extern crate alloc;

mod bitmap;
mod server;

pub use server::{CallerPolicy, Config, PasidServer};

use ipc_protocol::pasid::{PasidReply, PasidRequest};
use ipc_protocol::server::Service;
use ipc_protocol::{Error, MAX_MESSAGE_BYTES};
use platform::{Badge, ServerEndpoint};

impl Service for PasidServer {
    type Request = PasidRequest;
    type Reply = PasidReply;

    fn handle(&mut self, badge: Badge, request: &PasidRequest) -> Result<PasidReply, Error> {
        PasidServer::handle(self, badge, request)
    }
}

impl PasidServer {
    /// Decodes, handles and answers one request (see [`ipc_protocol::server`]).
    pub fn handle_message(
        &mut self,
        badge: Badge,
        request: &[u8],
        reply: &mut [u8; MAX_MESSAGE_BYTES],
    ) -> usize {
        ipc_protocol::server::handle_message(self, badge, request, reply)
    }

    /// Serves requests from `endpoint` until it stops delivering them; returns why.
    pub fn serve<E: ServerEndpoint>(&mut self, endpoint: &mut E) -> E::Error {
        ipc_protocol::server::serve(self, endpoint)
    }
}
