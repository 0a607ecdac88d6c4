//! pasid-server and iommu-server as simulated processes: their unmodified request loops
//! (`ipc_protocol::server::serve`) over [`SimServer`], plus iommu-server's platform
//! layer.
//!
//! # iommu-server's platform layer
//! - **Memory**: a client grants memory by transferring frame capabilities with
//!   `GrantMemory`; the layer asks the kernel for each frame's physical address and
//!   size, hands the pages to [`IommuServer::grant_region`] and keeps the capabilities,
//!   so the frames stay allocated (pinned) even if the client dies. `RevokeMemory` gives
//!   a region back only when the core agrees nothing maps it, then deletes the
//!   capabilities. A region granted through any read-only frame capability is granted
//!   to the core as read-only, which answers `Map` with write permission `Denied`.
//! - **Faults**: fault delivery is part of iommu-server. Whenever the IOMMU's interrupt
//!   signals the bound notification, the layer runs [`IommuServer::process_faults`],
//!   acknowledges the interrupt and moves each client's records
//!   ([`IommuServer::pop_fault`]) into the ring in the client's own memory
//!   (`ipc_protocol::records` layout: header, then records), keeps the header's `lost`
//!   equal to the queue's lost count, and signals the client's fault notification.
//!   Records that found a ring full wait in the queue (bounded, overflow counted) and are
//!   moved after the next request or interrupt. A ring whose header the client corrupted
//!   gets nothing more (its records stay queued and overflow is counted).
//! - **Death**: only init's badge may send `ClientDied`. The layer runs
//!   [`IommuServer::client_died`] (devices detached, IOASes unmapped and destroyed with
//!   their invalidations completed, fault queues and PASIDs freed) and only then deletes
//!   its capabilities to the client's frames, so the kernel can reuse them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use iommu_server::{Config, IommuServer, IpcPasids};
use ipc_protocol::iommu::{FaultQueueId, IommuReply, IommuRequest, Perm};
use ipc_protocol::records::{FaultRecord, RingHeader, RING_HEADER_BYTES};
use ipc_protocol::server::{serve, Service};
use ipc_protocol::Error;
use pasid_server::PasidServer;
use platform::Badge;
use sim::endpoint::{ReceivedCaps, SimClient, SimServer};
use sim::{CPtr, Ctx, Rights, FRAME};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

use crate::hw::SimHardware;
use system_description::IommuKind;

/// Runs pasid-server on capability `endpoint`.
pub fn pasid_server(ctx: Ctx, config: pasid_server::Config) {
    let mut server = PasidServer::new(config).expect("pasid-server configuration");
    let ep = ctx.lookup("endpoint").expect("pasid-server's endpoint");
    let why = server.serve(&mut SimServer::new(ctx, ep));
    panic!("pasid-server stopped: {why:?}");
}

/// What iommu-server is started with (from the system description).
#[derive(Debug, Clone)]
pub struct IommuServerConfig {
    pub kind: IommuKind,
    pub core: Config,
    /// Badge of init's capability (administrative requests).
    pub admin: Badge,
    /// Quota of live PASIDs per client at pasid-server.
    pub pasids_per_client: u32,
    /// Client id -> name of the client's fault notification capability.
    pub fault_notifications: BTreeMap<u32, String>,
}

struct Region {
    client: u32,
    /// (capability, physical address, bytes) of each frame, in grant order.
    frames: Vec<(CPtr, u64, u64)>,
}

struct Ring {
    client: u32,
    region: u32,
    offset: u64,
    depth: u32,
    notify: Option<CPtr>,
}

type Core = IommuServer<SimHardware<sim::SimMmio>, IpcPasids<SimClient>>;

/// iommu-server's core and what its platform layer keeps.
pub struct Platform {
    ctx: Ctx,
    core: Core,
    admin: Badge,
    irq: CPtr,
    regions: BTreeMap<u32, Region>,
    rings: BTreeMap<u32, Ring>,
    /// Client index -> fault notification capability.
    fault_ntfn: BTreeMap<u32, CPtr>,
    /// A ring was full when records waited for it: retry after every request.
    backlog: bool,
}

/// Runs iommu-server: initialises the IOMMU's driver over its register frame (`mmio`)
/// and table memory (`tables`), routes the IOMMU's interrupt (`irq`) to its bound
/// notification (`irq-notification`), reaches pasid-server through `pasid`, and serves
/// `endpoint`.
pub fn iommu_server(ctx: Ctx, config: IommuServerConfig) {
    let cap = |n: &str| {
        ctx.lookup(n)
            .unwrap_or_else(|| panic!("iommu-server has no `{n}` capability"))
    };
    let mmio = ctx.map_mmio(cap("mmio")).expect("map the IOMMU registers");
    let tables = ctx.map_dma(cap("tables")).expect("map the table memory");
    let hw = SimHardware::new(config.kind, mmio, tables).unwrap_or_else(|e| panic!("{e}"));
    let irq = cap("irq");
    let irq_ntfn = cap("irq-notification");
    ctx.bind_notification(irq_ntfn)
        .expect("bind the IOMMU notification");
    ctx.irq_set_notification(irq, irq_ntfn)
        .expect("route the IOMMU interrupt");
    let pasids = IpcPasids::new(
        SimClient::new(ctx.clone(), cap("pasid")),
        config.pasids_per_client,
    );
    let core = IommuServer::new(config.core, hw, pasids).expect("iommu-server configuration");
    let mut fault_ntfn = BTreeMap::new();
    for (id, name) in &config.fault_notifications {
        if let Some(index) = core.client_index(*id) {
            fault_ntfn.insert(index, cap(name));
        }
    }
    let platform = Rc::new(RefCell::new(Platform {
        ctx: ctx.clone(),
        core,
        admin: config.admin,
        irq,
        regions: BTreeMap::new(),
        rings: BTreeMap::new(),
        fault_ntfn,
        backlog: false,
    }));
    let p = platform.clone();
    let mut endpoint =
        SimServer::new(ctx.clone(), cap("endpoint")).on_signal(move |_| p.borrow_mut().interrupt());
    let mut service = IommuService {
        caps: endpoint.received_caps(),
        platform,
    };
    let why = serve(&mut service, &mut endpoint);
    panic!("iommu-server stopped: {why:?}");
}

/// The request handler the request loop calls.
struct IommuService {
    platform: Rc<RefCell<Platform>>,
    caps: ReceivedCaps,
}

impl Service for IommuService {
    type Request = IommuRequest;
    type Reply = IommuReply;

    fn handle(&mut self, badge: Badge, request: &IommuRequest) -> Result<IommuReply, Error> {
        let caps = self.caps.take();
        let mut p = self.platform.borrow_mut();
        let r = p.handle(badge, request, caps);
        // New hardware faults arrive with the IOMMU's interrupt; after a request only
        // records that waited for room (or a queue just set up) are moved.
        if p.backlog
            || matches!(
                request,
                IommuRequest::AllocFaultQueue { .. } | IommuRequest::PageResponse { .. }
            )
        {
            p.fill_rings();
        }
        r
    }
}

impl Platform {
    fn handle(
        &mut self,
        badge: Badge,
        request: &IommuRequest,
        caps: Vec<CPtr>,
    ) -> Result<IommuReply, Error> {
        if !matches!(request, IommuRequest::GrantMemory { .. }) {
            // Only a grant takes capabilities.
            self.delete_all(&caps);
        }
        match *request {
            IommuRequest::GrantMemory { frames } => self.grant(badge, frames, caps),
            IommuRequest::RevokeMemory { region } => {
                let client = self.core.caller(badge).ok_or(Error::Denied)?;
                self.core.revoke_region(client, region)?;
                if let Some(r) = self.regions.remove(&region) {
                    self.delete_all(&r.frames.iter().map(|f| f.0).collect::<Vec<_>>());
                }
                Ok(IommuReply::Done)
            }
            IommuRequest::ClientDied { client } => {
                if badge != self.admin {
                    return Err(Error::Denied);
                }
                let index = self.core.client_index(client).ok_or(Error::NotFound)?;
                let frames = self.core.client_died(index)?;
                self.rings.retain(|_, r| r.client != index);
                let gone: Vec<u32> = self
                    .regions
                    .iter()
                    .filter(|(_, r)| r.client == index)
                    .map(|(&i, _)| i)
                    .collect();
                for i in gone {
                    let r = self.regions.remove(&i).expect("listed");
                    self.delete_all(&r.frames.iter().map(|f| f.0).collect::<Vec<_>>());
                }
                Ok(IommuReply::Released {
                    frames: frames.len() as u32,
                })
            }
            IommuRequest::ClientUsage { client } => {
                if badge != self.admin {
                    return Err(Error::Denied);
                }
                let index = self.core.client_index(client).ok_or(Error::NotFound)?;
                self.core
                    .client_usage(index)
                    .map(IommuReply::Usage)
                    .ok_or(Error::NotFound)
            }
            IommuRequest::AllocFaultQueue { ring, depth, .. } => {
                let reply = self.core.handle(badge, request)?;
                if let IommuReply::FaultQueueAllocated { queue } = reply {
                    let client = self.core.caller(badge).expect("handled");
                    let r = Ring {
                        client,
                        region: ring.region,
                        offset: ring.offset,
                        depth,
                        notify: self.fault_ntfn.get(&client).copied(),
                    };
                    let header = RingHeader {
                        head: U32::new(0),
                        tail: U32::new(0),
                        capacity: U32::new(depth),
                        lost: U32::new(0),
                    };
                    if self
                        .region_write(r.region, r.offset, header.as_bytes())
                        .is_err()
                    {
                        // The core checked the ring lies inside the region.
                        return Err(Error::Invalid);
                    }
                    self.rings.insert(queue.0, r);
                }
                Ok(reply)
            }
            IommuRequest::FreeFaultQueue { queue } => {
                let reply = self.core.handle(badge, request)?;
                self.rings.remove(&queue.0);
                Ok(reply)
            }
            _ => self.core.handle(badge, request),
        }
    }

    fn delete_all(&self, caps: &[CPtr]) {
        for &c in caps {
            // Slots the server was just given or holds: deleting cannot fail.
            let _ = self.ctx.delete(c);
        }
    }

    fn grant(&mut self, badge: Badge, frames: u32, caps: Vec<CPtr>) -> Result<IommuReply, Error> {
        let result = self.try_grant(badge, frames, &caps);
        if result.is_err() {
            self.delete_all(&caps);
        }
        result
    }

    fn try_grant(&mut self, badge: Badge, frames: u32, caps: &[CPtr]) -> Result<IommuReply, Error> {
        let client = self.core.caller(badge).ok_or(Error::Denied)?;
        if caps.is_empty() || caps.len() != frames as usize {
            return Err(Error::Invalid);
        }
        let mut info = Vec::new();
        let mut pages = Vec::new();
        let mut writable = true;
        for &c in caps {
            let (pa, bytes) = self.ctx.frame_info(c).map_err(|_| Error::Invalid)?;
            let rights = self.ctx.identify(c).map_err(|_| Error::Invalid)?.rights;
            if !rights.contains(Rights::READ) {
                return Err(Error::Denied);
            }
            writable &= rights.contains(Rights::WRITE);
            pages.extend((0..bytes / FRAME).map(|i| pa + i * FRAME));
            info.push((c, pa, bytes));
        }
        let access = if writable { Perm::RW } else { Perm::READ };
        let region = self.core.grant_region(client, pages, access)?;
        self.regions.insert(
            region,
            Region {
                client,
                frames: info,
            },
        );
        Ok(IommuReply::Granted { region })
    }

    /// Calls `f(frame, offset in frame, range in the buffer)` for each piece of
    /// `offset..offset+len` of a region.
    fn pieces(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        mut f: impl FnMut(CPtr, u64, std::ops::Range<usize>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let r = self.regions.get(&region).ok_or(Error::NotFound)?;
        let mut frame_start = 0u64;
        let mut done = 0usize;
        for &(cap, _, bytes) in &r.frames {
            let frame_end = frame_start + bytes;
            let at = offset + done as u64;
            if done < len && at >= frame_start && at < frame_end {
                let n = ((frame_end - at) as usize).min(len - done);
                f(cap, at - frame_start, done..done + n)?;
                done += n;
            }
            frame_start = frame_end;
        }
        if done == len {
            Ok(())
        } else {
            Err(Error::Invalid)
        }
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.pieces(region, offset, data.len(), |cap, off, range| {
            self.ctx
                .frame_write(cap, off, &data[range])
                .map_err(|_| Error::Invalid)
        })
    }

    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut out = vec![0u8; buf.len()];
        self.pieces(region, offset, buf.len(), |cap, off, range| {
            self.ctx
                .frame_read(cap, off, &mut out[range])
                .map_err(|_| Error::Invalid)
        })?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    /// The IOMMU's interrupt: route its faults, then acknowledge it.
    fn interrupt(&mut self) {
        self.deliver_faults();
        // The interrupt capability is iommu-server's own: acknowledging cannot fail.
        let _ = self.ctx.irq_ack(self.irq);
    }

    /// Routes the hardware's faults to their owners' queues and moves queued records
    /// into the owners' rings.
    fn deliver_faults(&mut self) {
        self.core.process_faults();
        self.fill_rings();
    }

    /// Moves queued records into the owners' rings; signals each owner that got some.
    fn fill_rings(&mut self) {
        self.backlog = false;
        let queues: Vec<u32> = self.rings.keys().copied().collect();
        for q in queues {
            let (wrote, full) = self.fill_ring(q);
            self.backlog |= full;
            if wrote {
                if let Some(n) = self.rings[&q].notify {
                    let _ = self.ctx.signal(n);
                }
            }
        }
    }

    /// Fills one ring; returns whether it wrote records and whether it stopped because
    /// the ring was full.
    fn fill_ring(&mut self, q: u32) -> (bool, bool) {
        let (client, region, offset, depth) = {
            let r = &self.rings[&q];
            (r.client, r.region, r.offset, r.depth)
        };
        let mut wrote = false;
        loop {
            let mut h = [0u8; RING_HEADER_BYTES];
            if self.region_read(region, offset, &mut h).is_err() {
                return (wrote, false);
            }
            let Ok(header) = RingHeader::read_from_bytes(&h) else {
                return (wrote, false);
            };
            let Ok(pending) = header.validate(depth) else {
                // The client corrupted its ring header: nothing more is written to it.
                return (wrote, false);
            };
            // The lost count is kept current even while the ring is full.
            if let Ok(lost) = self.core.fault_queue_lost(client, FaultQueueId(q)) {
                if lost != header.lost.get() {
                    let _ = self.region_write(region, offset + 12, &lost.to_le_bytes());
                }
            }
            if pending >= depth {
                return (wrote, true);
            }
            let Ok((fault, _)) = self.core.pop_fault(client, FaultQueueId(q)) else {
                return (wrote, false);
            };
            let Some(fault) = fault else {
                return (wrote, false);
            };
            let tail = header.tail.get();
            let slot = RingHeader::slot(tail, depth) as u64;
            let at = offset
                + RING_HEADER_BYTES as u64
                + slot * ipc_protocol::records::FAULT_RECORD_BYTES as u64;
            let rec = FaultRecord::encode(&fault);
            if self.region_write(region, at, rec.as_bytes()).is_err()
                || self
                    .region_write(region, offset + 4, &tail.wrapping_add(1).to_le_bytes())
                    .is_err()
            {
                return (wrote, false);
            }
            wrote = true;
        }
    }
}
