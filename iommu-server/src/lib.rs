//! iommu-server: the authority over the IOMMU hardware.
//!
//! Objects, in the model of Linux's iommufd (see `ipc_protocol::iommu` for the requests):
//! - **Device**: one per device capability; a capability's badge names the device and
//!   the client holding it. A device has one owner at a time: a second `OpenDevice` is
//!   `Busy`.
//! - **IOAS**: an I/O address space, i.e. a hardware page table, not tied to a requester
//!   ID (or RID + PASID) until a device is attached. Map (fixed or allocated IOVA, explicit
//!   permissions) and unmap of whole mappings.
//! - **Attachment**: (device, optional PASID) -> IOAS. PASIDs come from pasid-server
//!   (through [`PasidAuthority`]), charged to the client.
//! - **Fault queue**: bounded, per device, with a lost count; page requests carry a cookie
//!   that the client's page response must name.
//! - **Region**: memory a client granted, named by index in `MemoryRef`.
//!
//! Ordering rules:
//! - Unmap, detach and destroy reply only after the hardware completed its invalidations
//!   ([`Hardware`] calls return only then).
//! - Granted memory is given back only when nothing maps it (`revoke_region` is `Busy`
//!   otherwise); a dead client's memory is released by [`IommuServer::client_died`] only
//!   after its devices are detached and its mappings unmapped.
//! - Objects in use cannot be destroyed: an attached IOAS, a device with attachments or a
//!   fault queue, a PASID still attached (`Busy`).
//!
//! Shared virtual addressing (`SvaBind`) answers `Unsupported` until the hardware seam can
//! install a client's own page tables.
//!
//! Memory grants (`GrantMemory`, `RevokeMemory`) and the supervisor's requests
//! (`ClientDied`, `ClientUsage`) belong to the platform layer, which holds the transferred
//! capabilities and knows the supervisor's badge; it calls [`IommuServer::grant_region`],
//! [`IommuServer::revoke_region`], [`IommuServer::client_died`] and
//! [`IommuServer::client_usage`] (the core itself answers them `Unsupported`). The
//! simulation's platform layer is `sim_system::servers`.
#![no_std]

extern crate alloc;

pub mod hw;
pub mod ioas;
pub mod region;
mod server;

pub use hw::{Hardware, HwDomain, HwFault, PasidAuthority, StreamId};
pub use server::{ClientConfig, ClientQuota, Config, DeviceCap, FaultStats, IommuServer};

use alloc::collections::BTreeMap;

use ipc_protocol::client::{call, CallError};
use ipc_protocol::iommu::{IommuReply, IommuRequest};
use ipc_protocol::pasid::{Pasid, PasidRange, PasidReply, PasidRequest, SetId};
use ipc_protocol::server::Service;
use ipc_protocol::Error;
use platform::{Badge, ClientEndpoint};

impl<H: Hardware, P: PasidAuthority> Service for IommuServer<H, P> {
    type Request = IommuRequest;
    type Reply = IommuReply;

    fn handle(&mut self, badge: Badge, request: &IommuRequest) -> Result<IommuReply, Error> {
        IommuServer::handle(self, badge, request)
    }
}

/// pasid-server reached over IPC: one PASID set per client (owner token = client id).
pub struct IpcPasids<C: ClientEndpoint> {
    endpoint: C,
    quota_per_client: u32,
    sets: BTreeMap<u32, SetId>,
}

impl<C: ClientEndpoint> IpcPasids<C> {
    pub fn new(endpoint: C, quota_per_client: u32) -> Self {
        IpcPasids {
            endpoint,
            quota_per_client,
            sets: BTreeMap::new(),
        }
    }

    fn call(&mut self, req: PasidRequest) -> Result<PasidReply, Error> {
        call(&mut self.endpoint, &req).map_err(|e| match e {
            CallError::Server(e) => e,
            // pasid-server did not answer.
            CallError::Endpoint(_) => Error::Timeout,
        })
    }
}

impl<C: ClientEndpoint> PasidAuthority for IpcPasids<C> {
    fn alloc_private(&mut self, owner: u32, max: Pasid) -> Result<Pasid, Error> {
        let set = match self.sets.get(&owner) {
            Some(&s) => s,
            None => match self.call(PasidRequest::CreateSet {
                owner: u64::from(owner),
                quota: self.quota_per_client,
            })? {
                PasidReply::SetCreated { set } => {
                    self.sets.insert(owner, set);
                    set
                }
                _ => return Err(Error::BadMessage),
            },
        };
        match self.call(PasidRequest::Alloc {
            set,
            range: PasidRange {
                min: None,
                max: Some(max),
            },
        })? {
            PasidReply::Allocated { pasid, .. } => Ok(pasid),
            _ => Err(Error::BadMessage),
        }
    }

    fn free(&mut self, _owner: u32, pasid: Pasid) -> Result<(), Error> {
        self.call(PasidRequest::Free { pasid }).map(|_| ())
    }

    fn revoke_owner(&mut self, owner: u32) -> Result<(), Error> {
        self.sets.remove(&owner);
        self.call(PasidRequest::RevokeOwner {
            owner: u64::from(owner),
        })
        .map(|_| ())
    }
}
