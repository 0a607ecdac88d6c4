//! iommu-server's objects, authority checks and ordering rules.

use alloc::collections::btree_map::Entry;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use hashbrown::HashMap;
use ipc_protocol::iommu::{
    ClientUsage, DeviceId, DeviceInfo, FaultQueueId, IoasId, IommuReply, IommuRequest,
    IovaPlacement, MemoryRef, PageResponseCode, Perm,
};
use ipc_protocol::pasid::Pasid;
use ipc_protocol::records::{Fault, FaultKind, RingHeader};
use ipc_protocol::Error;
use platform::Badge;

use crate::hw::{Hardware, HwFault, PasidAuthority, StreamId};
use crate::ioas::{Ioas, Mapping, PAGE};
use crate::region::Frames;

/// What one client may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientQuota {
    pub max_ioas: u32,
    pub max_mapped_bytes: u64,
    pub max_fault_queues: u32,
    pub max_pasids: u32,
}

/// A client, known by the badge of its endpoint capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    pub id: u32,
    pub badge: Badge,
    pub quota: ClientQuota,
}

/// A device capability: calling through `badge` names `stream` on behalf of `client`.
/// Several clients may hold a capability to the same device; one owns it at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCap {
    pub badge: Badge,
    pub client: u32,
    pub stream: StreamId,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub clients: Vec<ClientConfig>,
    pub devices: Vec<DeviceCap>,
    /// IOVA aperture of every IOAS: `[PAGE, 2^iova_bits)`.
    pub iova_bits: u8,
    /// Largest fault queue a client may ask for, in records.
    pub max_fault_queue_depth: u32,
}

struct Client {
    config: ClientConfig,
    ioas: u32,
    mapped_bytes: u64,
    fault_queues: u32,
    pasids: u32,
}

struct Device {
    stream: StreamId,
    info: DeviceInfo,
    owner: Option<u32>,
    /// (PASID or none) -> IOAS.
    attachments: BTreeMap<Option<Pasid>, u32>,
    fault_queue: Option<u32>,
}

struct Region {
    owner: u32,
    /// Its 4 KiB frames, as physically contiguous runs.
    frames: Frames,
    /// What mappings of it may allow.
    access: Perm,
    /// Mappings and fault rings using it: it cannot be given back while pinned.
    pins: u32,
}

struct FaultQueue {
    owner: u32,
    device: u32,
    ring: MemoryRef,
    depth: u32,
    records: VecDeque<Fault>,
    lost: u32,
}

struct PendingPageRequest {
    queue: u32,
    stream: StreamId,
    pasid: Option<Pasid>,
    group: u32,
}

struct PrivatePasid {
    owner: u32,
    attachments: u32,
}

/// Counters of fault routing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Delivered to a client's fault queue.
    pub delivered: u64,
    /// Dropped because the owner's queue was full (also counted in the queue's `lost`).
    pub lost_queue_full: u64,
    /// For a device nobody owns, or whose owner has no fault queue.
    pub unrouted: u64,
    /// Lost by the hardware itself (its queue overflowed).
    pub lost_by_hardware: u64,
}

/// iommu-server.
pub struct IommuServer<H: Hardware, P: PasidAuthority> {
    hw: H,
    pasids: P,
    iova_end: u64,
    max_depth: u32,
    clients: Vec<Client>,
    devices: Vec<Device>,
    /// Badge -> (client index, device index for device capabilities).
    badges: HashMap<Badge, (u32, Option<u32>)>,
    /// The last badge looked up and what it names: a client usually sends several
    /// requests in a row. `badges` does not change after construction, so this never
    /// goes stale.
    last_badge: Option<(Badge, (u32, Option<u32>))>,
    streams: HashMap<StreamId, u32>,
    ioas: Vec<Option<Ioas>>,
    regions: Vec<Option<Region>>,
    queues: Vec<Option<FaultQueue>>,
    pending: BTreeMap<u64, PendingPageRequest>,
    next_cookie: u64,
    private_pasids: BTreeMap<Pasid, PrivatePasid>,
    stats: FaultStats,
}

/// First free index of a slab, or a new one.
fn slot<T>(v: &mut Vec<Option<T>>, value: T) -> u32 {
    match v.iter().position(Option::is_none) {
        Some(i) => {
            v[i] = Some(value);
            i as u32
        }
        None => {
            v.push(Some(value));
            v.len() as u32 - 1
        }
    }
}

impl<H: Hardware, P: PasidAuthority> IommuServer<H, P> {
    pub fn new(config: Config, hw: H, pasids: P) -> Result<Self, Error> {
        if !(12..=64).contains(&config.iova_bits) {
            return Err(Error::Invalid);
        }
        let mut badges = HashMap::new();
        let mut clients = Vec::new();
        for c in &config.clients {
            if badges
                .insert(c.badge, (clients.len() as u32, None))
                .is_some()
            {
                return Err(Error::Exists);
            }
            clients.push(Client {
                config: *c,
                ioas: 0,
                mapped_bytes: 0,
                fault_queues: 0,
                pasids: 0,
            });
        }
        let mut devices = Vec::new();
        let mut streams = HashMap::new();
        for d in &config.devices {
            let client = clients
                .iter()
                .position(|c| c.config.id == d.client)
                .ok_or(Error::NotFound)? as u32;
            let index = *streams.entry(d.stream).or_insert_with(|| {
                devices.push(Device {
                    stream: d.stream,
                    info: hw.device_info(d.stream),
                    owner: None,
                    attachments: BTreeMap::new(),
                    fault_queue: None,
                });
                devices.len() as u32 - 1
            });
            if badges.insert(d.badge, (client, Some(index))).is_some() {
                return Err(Error::Exists);
            }
        }
        let iova_end = if config.iova_bits == 64 {
            u64::MAX
        } else {
            1u64 << config.iova_bits
        };
        Ok(IommuServer {
            hw,
            pasids,
            iova_end,
            max_depth: config.max_fault_queue_depth,
            clients,
            devices,
            badges,
            last_badge: None,
            streams,
            ioas: Vec::new(),
            regions: Vec::new(),
            queues: Vec::new(),
            pending: BTreeMap::new(),
            next_cookie: 1,
            private_pasids: BTreeMap::new(),
            stats: FaultStats::default(),
        })
    }

    pub fn hardware(&self) -> &H {
        &self.hw
    }

    pub fn hardware_mut(&mut self) -> &mut H {
        &mut self.hw
    }

    pub fn fault_stats(&self) -> FaultStats {
        self.stats
    }

    /// The client index of the caller with `badge` (its client endpoint or one of its
    /// device capabilities).
    pub fn caller(&self, badge: Badge) -> Option<u32> {
        self.badges.get(&badge).map(|&(client, _)| client)
    }

    /// What client index `client` holds, or `None` for no such client.
    pub fn client_usage(&self, client: u32) -> Option<ClientUsage> {
        let c = self.clients.get(client as usize)?;
        Some(ClientUsage {
            devices: self
                .devices
                .iter()
                .filter(|d| d.owner == Some(client))
                .count() as u32,
            ioas: c.ioas,
            mapped_bytes: c.mapped_bytes,
            fault_queues: c.fault_queues,
            pasids: c.pasids,
            regions: self
                .regions
                .iter()
                .flatten()
                .filter(|r| r.owner == client)
                .count() as u32,
        })
    }

    /// The client index of a configured client id.
    pub fn client_index(&self, id: u32) -> Option<u32> {
        self.clients
            .iter()
            .position(|c| c.config.id == id)
            .map(|i| i as u32)
    }

    // ----- memory granted by clients (delivered by the platform layer) -----

    /// Records memory a client granted (the physical frames behind a capability it
    /// transferred); returns the region index it names in `MemoryRef`. `access` is what
    /// the capabilities allowed (`Perm::READ` or `Perm::RW`): a mapping asking for write
    /// access to memory granted read-only is `Denied`.
    pub fn grant_region(
        &mut self,
        client: u32,
        frames: Vec<u64>,
        access: Perm,
    ) -> Result<u32, Error> {
        if client as usize >= self.clients.len()
            || frames.is_empty()
            || frames.iter().any(|f| !f.is_multiple_of(PAGE))
        {
            return Err(Error::Invalid);
        }
        Ok(slot(
            &mut self.regions,
            Region {
                owner: client,
                frames: Frames::new(&frames),
                access,
                pins: 0,
            },
        ))
    }

    /// Gives a region back to the client. `Busy` while any mapping or fault ring uses it,
    /// so memory never leaves the server while a device can reach it.
    pub fn revoke_region(&mut self, client: u32, region: u32) -> Result<Vec<u64>, Error> {
        let r = self.region(client, region)?;
        if r.pins > 0 {
            return Err(Error::Busy);
        }
        Ok(self.regions[region as usize]
            .take()
            .map(|r| r.frames.to_vec())
            .unwrap_or_default())
    }

    fn region(&self, client: u32, region: u32) -> Result<&Region, Error> {
        let r = self
            .regions
            .get(region as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::NotFound)?;
        if r.owner != client {
            return Err(Error::Denied);
        }
        Ok(r)
    }

    // ----- requests -----

    /// Handles one request from the caller with `badge`.
    pub fn handle(&mut self, badge: Badge, req: &IommuRequest) -> Result<IommuReply, Error> {
        let (client, device_cap) = match self.last_badge {
            Some((b, held)) if b == badge => held,
            _ => {
                let held = *self.badges.get(&badge).ok_or(Error::Denied)?;
                self.last_badge = Some((badge, held));
                held
            }
        };
        match *req {
            IommuRequest::OpenDevice => {
                let d = device_cap.ok_or(Error::Denied)?;
                let dev = &mut self.devices[d as usize];
                if dev.owner.is_some() {
                    return Err(Error::Busy);
                }
                dev.owner = Some(client);
                Ok(IommuReply::DeviceOpened {
                    device: DeviceId(d),
                    info: dev.info,
                })
            }
            IommuRequest::CloseDevice { device } => {
                let d = self.owned_device(client, device)?;
                let dev = &mut self.devices[d as usize];
                if !dev.attachments.is_empty() || dev.fault_queue.is_some() {
                    return Err(Error::Busy);
                }
                dev.owner = None;
                Ok(IommuReply::Done)
            }
            IommuRequest::QueryDevice { device } => {
                let d = self.owned_device(client, device)?;
                Ok(IommuReply::Info(self.devices[d as usize].info))
            }
            IommuRequest::AllocIoas => {
                let c = &self.clients[client as usize];
                if c.ioas >= c.config.quota.max_ioas {
                    return Err(Error::QuotaExceeded);
                }
                let domain = self.hw.domain_alloc()?;
                self.clients[client as usize].ioas += 1;
                let ioas = slot(&mut self.ioas, Ioas::new(client, domain));
                Ok(IommuReply::IoasAllocated { ioas: IoasId(ioas) })
            }
            IommuRequest::DestroyIoas { ioas } => {
                let i = self.owned_ioas(client, ioas)?;
                if self.ioas[i as usize]
                    .as_ref()
                    .is_some_and(|a| a.attached > 0)
                {
                    return Err(Error::Busy);
                }
                self.destroy_ioas(i)?;
                Ok(IommuReply::Done)
            }
            IommuRequest::Map {
                ioas,
                iova,
                length,
                memory,
                perm,
            } => self
                .map(client, ioas, iova, length, memory, perm)
                .map(|iova| IommuReply::Mapped { iova }),
            IommuRequest::Unmap { ioas, iova, length } => self
                .unmap(client, ioas, iova, length)
                .map(|length| IommuReply::Unmapped { length }),
            IommuRequest::Attach {
                device,
                pasid,
                ioas,
            } => self
                .attach(client, device, pasid, ioas)
                .map(|_| IommuReply::Done),
            IommuRequest::Detach { device, pasid } => {
                let d = self.owned_device(client, device)?;
                self.detach(d, pasid).map(|_| IommuReply::Done)
            }
            // Binding a CPU address space needs the hardware to walk the client's own
            // page tables (SMMUv3 CD with the process's TTB0, VT-d first-level), which
            // the hardware seam does not offer yet.
            IommuRequest::SvaBind { .. } | IommuRequest::SvaUnbind { .. } => {
                Err(Error::Unsupported)
            }
            IommuRequest::AllocFaultQueue {
                device,
                ring,
                depth,
            } => self
                .alloc_fault_queue(client, device, ring, depth)
                .map(|queue| IommuReply::FaultQueueAllocated { queue }),
            IommuRequest::FreeFaultQueue { queue } => {
                let q = self.owned_queue(client, queue)?;
                self.free_fault_queue(q);
                Ok(IommuReply::Done)
            }
            IommuRequest::PageResponse {
                queue,
                cookie,
                code,
            } => {
                let q = self.owned_queue(client, queue)?;
                match self.pending.get(&cookie) {
                    Some(p) if p.queue == q => {}
                    _ => return Err(Error::NotFound),
                }
                let p = self.pending.remove(&cookie).expect("checked above");
                self.hw
                    .page_response(p.stream, p.pasid, p.group, code)
                    .map(|_| IommuReply::Done)
            }
            IommuRequest::AllocPasid { device } => {
                let d = self.owned_device(client, device)?;
                let bits = self.devices[d as usize].info.pasid_bits;
                if bits == 0 {
                    return Err(Error::Unsupported);
                }
                let c = &self.clients[client as usize];
                if c.pasids >= c.config.quota.max_pasids {
                    return Err(Error::QuotaExceeded);
                }
                let max = if bits >= 20 {
                    ipc_protocol::pasid::PASID_MAX
                } else {
                    (1 << bits) - 1
                };
                let pasid = self.pasids.alloc_private(c.config.id, max)?;
                self.clients[client as usize].pasids += 1;
                self.private_pasids.insert(
                    pasid,
                    PrivatePasid {
                        owner: client,
                        attachments: 0,
                    },
                );
                Ok(IommuReply::PasidAllocated { pasid })
            }
            IommuRequest::FreePasid { pasid } => {
                let p = self.private_pasids.get(&pasid).ok_or(Error::NotFound)?;
                if p.owner != client {
                    return Err(Error::Denied);
                }
                if p.attachments > 0 {
                    return Err(Error::Busy);
                }
                self.pasids
                    .free(self.clients[client as usize].config.id, pasid)?;
                self.private_pasids.remove(&pasid);
                self.clients[client as usize].pasids -= 1;
                Ok(IommuReply::Done)
            }
            // Memory arrives as capabilities and a client's death is reported by the
            // system's supervisor: the platform layer, which holds the capabilities and
            // knows the supervisor's badge, handles these with `grant_region`,
            // `revoke_region`, `client_died` and `client_usage`.
            IommuRequest::GrantMemory { .. }
            | IommuRequest::RevokeMemory { .. }
            | IommuRequest::ClientDied { .. }
            | IommuRequest::ClientUsage { .. } => Err(Error::Unsupported),
        }
    }

    fn owned_device(&self, client: u32, device: DeviceId) -> Result<u32, Error> {
        let dev = self.devices.get(device.0 as usize).ok_or(Error::NotFound)?;
        if dev.owner != Some(client) {
            return Err(Error::Denied);
        }
        Ok(device.0)
    }

    fn owned_ioas(&self, client: u32, ioas: IoasId) -> Result<u32, Error> {
        let a = self
            .ioas
            .get(ioas.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::NotFound)?;
        if a.owner != client {
            return Err(Error::Denied);
        }
        Ok(ioas.0)
    }

    fn owned_queue(&self, client: u32, queue: FaultQueueId) -> Result<u32, Error> {
        let q = self
            .queues
            .get(queue.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::NotFound)?;
        if q.owner != client {
            return Err(Error::Denied);
        }
        Ok(queue.0)
    }

    fn map(
        &mut self,
        client: u32,
        ioas: IoasId,
        placement: IovaPlacement,
        len: u64,
        memory: MemoryRef,
        perm: Perm,
    ) -> Result<u64, Error> {
        let i = self.owned_ioas(client, ioas)?;
        if !perm.is_valid()
            || len == 0
            || !len.is_multiple_of(PAGE)
            || !memory.offset.is_multiple_of(PAGE)
        {
            return Err(Error::Invalid);
        }
        let region = self.region(client, memory.region)?;
        if perm.contains(Perm::WRITE) && !region.access.contains(Perm::WRITE) {
            return Err(Error::Denied);
        }
        let region_len = region.frames.bytes();
        if memory
            .offset
            .checked_add(len)
            .is_none_or(|end| end > region_len)
        {
            return Err(Error::Invalid);
        }
        let c = &self.clients[client as usize];
        if c.mapped_bytes.saturating_add(len) > c.config.quota.max_mapped_bytes {
            return Err(Error::QuotaExceeded);
        }
        let a = self.ioas[i as usize].as_ref().expect("owned");
        let iova = match placement {
            IovaPlacement::Fixed(iova) => {
                if iova % PAGE != 0
                    || iova < PAGE
                    || iova.checked_add(len).is_none_or(|e| e > self.iova_end)
                {
                    return Err(Error::Invalid);
                }
                if a.overlaps(iova, len) {
                    return Err(Error::Exists);
                }
                iova
            }
            IovaPlacement::Anywhere { align } => {
                if !align.is_power_of_two() || align < PAGE {
                    return Err(Error::Invalid);
                }
                a.find_free(len, align, PAGE, self.iova_end)
                    .ok_or(Error::NoSpace)?
            }
        };
        // Program the hardware one physically contiguous run at a time; undo on failure.
        let domain = a.domain;
        let frames = &self.regions[memory.region as usize]
            .as_ref()
            .expect("checked")
            .frames;
        let mut done = 0u64;
        for (rel, pa, n) in frames.runs(memory.offset / PAGE, len / PAGE) {
            if let Err(e) = self.hw.map(domain, iova + rel * PAGE, pa, n * PAGE, perm) {
                if done > 0 {
                    // Nothing was reported mapped yet, so no device was told to use it;
                    // the invalidation in unmap still covers any speculative walk.
                    self.hw.unmap(domain, iova, done * PAGE)?;
                }
                return Err(e);
            }
            done = rel + n;
        }
        let a = self.ioas[i as usize].as_mut().expect("owned");
        a.maps.insert(
            iova,
            Mapping {
                len,
                region: memory.region,
                offset: memory.offset,
                perm,
            },
        );
        a.mapped_bytes += len;
        self.clients[client as usize].mapped_bytes += len;
        self.regions[memory.region as usize]
            .as_mut()
            .expect("checked")
            .pins += 1;
        Ok(iova)
    }

    fn unmap(&mut self, client: u32, ioas: IoasId, iova: u64, len: u64) -> Result<u64, Error> {
        let i = self.owned_ioas(client, ioas)?;
        let a = self.ioas[i as usize].as_mut().expect("owned");
        // The usual request names one mapping exactly: mappings are disjoint, so it is
        // all the range holds. It is found and removed with one search of the tree.
        if let Entry::Occupied(e) = a.maps.entry(iova) {
            if e.get().len == len {
                self.hw.unmap(a.domain, iova, len)?;
                let m = e.remove();
                self.unmapped(i, m);
                return Ok(len);
            }
        }
        let end = a.check_covered(iova, len)?;
        let mut total = 0;
        while let Some((start, m)) = self.ioas[i as usize]
            .as_ref()
            .expect("owned")
            .maps
            .range(iova..end)
            .next()
            .map(|(&s, m)| (s, *m))
        {
            self.unmap_one(i, start, m)?;
            total += m.len;
        }
        Ok(total)
    }

    /// Removes one mapping: the hardware invalidation completes before the region is
    /// unpinned.
    fn unmap_one(&mut self, i: u32, start: u64, m: Mapping) -> Result<(), Error> {
        let a = self.ioas[i as usize].as_mut().expect("live IOAS");
        self.hw.unmap(a.domain, start, m.len)?;
        a.maps.remove(&start);
        self.unmapped(i, m);
        Ok(())
    }

    /// Accounts for mapping `m` of IOAS `i`, unmapped and invalidated and out of the
    /// tree.
    fn unmapped(&mut self, i: u32, m: Mapping) {
        let a = self.ioas[i as usize].as_mut().expect("live IOAS");
        a.mapped_bytes -= m.len;
        let owner = a.owner;
        self.clients[owner as usize].mapped_bytes -= m.len;
        if let Some(r) = self.regions[m.region as usize].as_mut() {
            r.pins -= 1;
        }
    }

    fn destroy_ioas(&mut self, i: u32) -> Result<(), Error> {
        let maps: Vec<(u64, Mapping)> = self.ioas[i as usize]
            .as_ref()
            .expect("live IOAS")
            .maps
            .iter()
            .map(|(&s, m)| (s, *m))
            .collect();
        for (start, m) in maps {
            self.unmap_one(i, start, m)?;
        }
        let a = self.ioas[i as usize].take().expect("live IOAS");
        self.hw.domain_free(a.domain)?;
        self.clients[a.owner as usize].ioas -= 1;
        Ok(())
    }

    fn attach(
        &mut self,
        client: u32,
        device: DeviceId,
        pasid: Option<Pasid>,
        ioas: IoasId,
    ) -> Result<(), Error> {
        let d = self.owned_device(client, device)?;
        let i = self.owned_ioas(client, ioas)?;
        let dev = &self.devices[d as usize];
        if let Some(p) = pasid {
            if dev.info.pasid_bits == 0 {
                return Err(Error::Unsupported);
            }
            match self.private_pasids.get(&p) {
                Some(pp) if pp.owner == client => {}
                Some(_) => return Err(Error::Denied),
                None => return Err(Error::NotFound),
            }
            if dev.info.pasid_bits < 20 && p >> dev.info.pasid_bits != 0 {
                return Err(Error::Unsupported);
            }
        }
        if dev.attachments.contains_key(&pasid) {
            return Err(Error::Busy);
        }
        let domain = self.ioas[i as usize].as_ref().expect("owned").domain;
        self.hw.attach(dev.stream, pasid, domain)?;
        self.devices[d as usize].attachments.insert(pasid, i);
        self.ioas[i as usize].as_mut().expect("owned").attached += 1;
        if let Some(p) = pasid {
            self.private_pasids
                .get_mut(&p)
                .expect("checked")
                .attachments += 1;
        }
        Ok(())
    }

    fn detach(&mut self, d: u32, pasid: Option<Pasid>) -> Result<(), Error> {
        let dev = &self.devices[d as usize];
        let &i = dev.attachments.get(&pasid).ok_or(Error::NotFound)?;
        self.hw.detach(dev.stream, pasid)?;
        self.devices[d as usize].attachments.remove(&pasid);
        if let Some(a) = self.ioas[i as usize].as_mut() {
            a.attached -= 1;
        }
        if let Some(p) = pasid.and_then(|p| self.private_pasids.get_mut(&p)) {
            p.attachments -= 1;
        }
        Ok(())
    }

    fn alloc_fault_queue(
        &mut self,
        client: u32,
        device: DeviceId,
        ring: MemoryRef,
        depth: u32,
    ) -> Result<FaultQueueId, Error> {
        let d = self.owned_device(client, device)?;
        if depth == 0 || depth > self.max_depth {
            return Err(Error::Invalid);
        }
        if self.devices[d as usize].fault_queue.is_some() {
            return Err(Error::Exists);
        }
        let c = &self.clients[client as usize];
        if c.fault_queues >= c.config.quota.max_fault_queues {
            return Err(Error::QuotaExceeded);
        }
        let region = self.region(client, ring.region)?;
        let need = RingHeader::ring_bytes(depth).ok_or(Error::Invalid)? as u64;
        if ring
            .offset
            .checked_add(need)
            .is_none_or(|end| end > region.frames.bytes())
        {
            return Err(Error::Invalid);
        }
        let q = slot(
            &mut self.queues,
            FaultQueue {
                owner: client,
                device: d,
                ring,
                depth,
                records: VecDeque::new(),
                lost: 0,
            },
        );
        self.regions[ring.region as usize]
            .as_mut()
            .expect("checked")
            .pins += 1;
        self.devices[d as usize].fault_queue = Some(q);
        self.clients[client as usize].fault_queues += 1;
        Ok(FaultQueueId(q))
    }

    /// Removes a fault queue. Page requests still waiting on it are answered `Invalid`,
    /// so no device waits forever for a response nobody will send.
    fn free_fault_queue(&mut self, q: u32) {
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.queue == q)
            .map(|(&c, _)| c)
            .collect();
        for cookie in waiting {
            let p = self.pending.remove(&cookie).expect("listed");
            // A response the hardware refuses leaves nothing more to do here.
            let _ = self
                .hw
                .page_response(p.stream, p.pasid, p.group, PageResponseCode::Invalid);
        }
        let queue = self.queues[q as usize].take().expect("live queue");
        if let Some(r) = self.regions[queue.ring.region as usize].as_mut() {
            r.pins -= 1;
        }
        self.devices[queue.device as usize].fault_queue = None;
        self.clients[queue.owner as usize].fault_queues -= 1;
    }

    // ----- faults -----

    /// Takes every fault the hardware has and routes each to the fault queue of the
    /// client that owns the device. A full queue counts the fault as lost (and a lost
    /// page request is answered `Invalid`); nothing is dropped silently.
    pub fn process_faults(&mut self) -> FaultStats {
        let mut faults = Vec::new();
        let lost = self.hw.drain_faults(&mut |f| faults.push(f));
        self.stats.lost_by_hardware += u64::from(lost);
        for f in faults {
            self.route(f);
        }
        self.stats
    }

    fn route(&mut self, f: HwFault) {
        let queue = self
            .streams
            .get(&f.stream)
            .and_then(|&d| self.devices[d as usize].fault_queue.map(|q| (d, q)));
        let Some((d, q)) = queue else {
            self.stats.unrouted += 1;
            if f.kind == FaultKind::PageRequest {
                let _ =
                    self.hw
                        .page_response(f.stream, f.pasid, f.group, PageResponseCode::Invalid);
            }
            return;
        };
        let queue = self.queues[q as usize].as_mut().expect("device's queue");
        if queue.records.len() >= queue.depth as usize {
            queue.lost = queue.lost.saturating_add(1);
            self.stats.lost_queue_full += 1;
            if f.kind == FaultKind::PageRequest {
                let _ =
                    self.hw
                        .page_response(f.stream, f.pasid, f.group, PageResponseCode::Invalid);
            }
            return;
        }
        let cookie = if f.kind == FaultKind::PageRequest {
            let c = self.next_cookie;
            self.next_cookie += 1;
            self.pending.insert(
                c,
                PendingPageRequest {
                    queue: q,
                    stream: f.stream,
                    pasid: f.pasid,
                    group: f.group,
                },
            );
            c
        } else {
            0
        };
        queue.records.push_back(Fault {
            kind: f.kind,
            flags: f.flags,
            pasid: f.pasid,
            device: d,
            reason: f.reason,
            address: f.address,
            cookie,
        });
        self.stats.delivered += 1;
    }

    /// The next fault of a client's queue (the platform layer copies these into the
    /// client's ring), and the queue's lost count.
    pub fn pop_fault(
        &mut self,
        client: u32,
        queue: FaultQueueId,
    ) -> Result<(Option<Fault>, u32), Error> {
        let q = self.owned_queue(client, queue)?;
        let queue = self.queues[q as usize].as_mut().expect("owned");
        Ok((queue.records.pop_front(), queue.lost))
    }

    /// How many records a client's fault queue has lost so far (without taking any).
    pub fn fault_queue_lost(&self, client: u32, queue: FaultQueueId) -> Result<u32, Error> {
        let q = self.owned_queue(client, queue)?;
        Ok(self.queues[q as usize].as_ref().expect("owned").lost)
    }

    // ----- teardown -----

    /// Tears down everything a dead client held, in the order that keeps its memory out
    /// of devices' reach: detach its devices (DMA blocked, caches invalidated), unmap
    /// and free its IOASes (IOTLB invalidated), drop its fault queues and PASIDs, and only
    /// then give back its regions. Returns the frames that may now be reused.
    pub fn client_died(&mut self, client: u32) -> Result<Vec<u64>, Error> {
        for d in 0..self.devices.len() as u32 {
            if self.devices[d as usize].owner != Some(client) {
                continue;
            }
            let attached: Vec<Option<Pasid>> = self.devices[d as usize]
                .attachments
                .keys()
                .copied()
                .collect();
            for pasid in attached {
                self.detach(d, pasid)?;
            }
            if let Some(q) = self.devices[d as usize].fault_queue {
                self.free_fault_queue(q);
            }
            self.devices[d as usize].owner = None;
        }
        for i in 0..self.ioas.len() as u32 {
            if self.ioas[i as usize]
                .as_ref()
                .is_some_and(|a| a.owner == client)
            {
                self.destroy_ioas(i)?;
            }
        }
        let id = self.clients[client as usize].config.id;
        let mine: Vec<Pasid> = self
            .private_pasids
            .iter()
            .filter(|(_, p)| p.owner == client)
            .map(|(&p, _)| p)
            .collect();
        for p in mine {
            self.private_pasids.remove(&p);
        }
        self.clients[client as usize].pasids = 0;
        self.pasids.revoke_owner(id)?;
        let mut frames = Vec::new();
        for r in self.regions.iter_mut() {
            if r.as_ref().is_some_and(|r| r.owner == client) {
                let region = r.take().expect("checked");
                debug_assert_eq!(region.pins, 0, "a dead client's region is still pinned");
                frames.extend(region.frames.to_vec());
            }
        }
        Ok(frames)
    }
}
