//! What a driver server (a client of iommu-server) uses on the simulation: typed
//! requests through its capabilities, memory grants, its device's DMA engine and the
//! consumer side of its fault ring.
//!
//! Capabilities are found by the names of the system description's conventions:
//! `iommu`, `iommu:<device>`, `device:<device>`, `faults`, `dma-done`, `mem.<i>`.

use std::collections::BTreeMap;

use ipc_protocol::client::{call_with, CallBuffers, CallError};
use ipc_protocol::iommu::{
    DeviceId, DeviceInfo, FaultQueueId, IoasId, IommuReply, IommuRequest, IovaPlacement, MemoryRef,
    Perm,
};
use ipc_protocol::pasid::Pasid;
use ipc_protocol::records::{
    Fault, FaultRecord, RingHeader, FAULT_RECORD_BYTES, RING_HEADER_BYTES,
};
use ipc_protocol::Error;
use sim::endpoint::SimClient;
use sim::machine::{DmaFault, DmaJob, JobStatus};
use sim::{CPtr, Ctx, SysError};
use zerocopy::FromBytes;

/// A driver's capabilities and the requests it makes with them.
pub struct Driver {
    pub ctx: Ctx,
    iommu: SimClient,
    devices: BTreeMap<String, (SimClient, Option<CPtr>)>,
    /// Its fault notification (signalled when its ring has records).
    pub faults: Option<CPtr>,
    /// Signalled when one of its device's jobs ends.
    pub dma_done: Option<CPtr>,
    /// Its frames (`mem.0`, `mem.1`, ...).
    pub mem: Vec<CPtr>,
    finished: Vec<JobStatus>,
    /// Reused by every request (see [`call_with`]).
    buffers: Box<CallBuffers>,
}

fn server<T>(r: Result<T, CallError<SysError>>) -> Result<T, Error> {
    r.map_err(|e| match e {
        CallError::Server(e) => e,
        CallError::Endpoint(e) => panic!("iommu-server unreachable: {e:?}"),
    })
}

impl Driver {
    /// Looks the driver's capabilities up.
    pub fn new(ctx: Ctx) -> Driver {
        let iommu = SimClient::new(
            ctx.clone(),
            ctx.lookup("iommu").expect("a driver holds `iommu`"),
        );
        let mut devices = BTreeMap::new();
        let mut mem = Vec::new();
        for (name, slot) in ctx.names() {
            if let Some(dev) = name.strip_prefix("iommu:") {
                let hw = ctx.lookup(&format!("device:{dev}"));
                devices.insert(dev.to_string(), (SimClient::new(ctx.clone(), slot), hw));
            } else if let Some(i) = name.strip_prefix("mem.") {
                if let Ok(i) = i.parse::<usize>() {
                    mem.push((i, slot));
                }
            }
        }
        mem.sort();
        Driver {
            faults: ctx.lookup("faults"),
            dma_done: ctx.lookup("dma-done"),
            mem: mem.into_iter().map(|(_, s)| s).collect(),
            iommu,
            devices,
            ctx,
            finished: Vec::new(),
            buffers: Box::default(),
        }
    }

    /// The devices it holds iommu-server capabilities for.
    pub fn device_names(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// A request through its client endpoint.
    // Inlined, as `map` and `unmap`: see the `sim` crate's notes on returns after a switch.
    #[inline(always)]
    pub fn request(&mut self, r: &IommuRequest) -> Result<IommuReply, Error> {
        server(call_with(&mut self.iommu, r, &mut self.buffers))
    }

    /// A request through its capability naming `device`.
    pub fn request_as(&mut self, device: &str, r: &IommuRequest) -> Result<IommuReply, Error> {
        let (ep, _) = self
            .devices
            .get_mut(device)
            .unwrap_or_else(|| panic!("no capability for `{device}`"));
        server(call_with(ep, r, &mut self.buffers))
    }

    /// Raw bytes through its client endpoint; the raw reply.
    pub fn raw(&mut self, bytes: &[u8]) -> Vec<u8> {
        let slot = self.ctx.lookup("iommu").expect("checked in new");
        self.ctx
            .call(slot, bytes, &[])
            .expect("iommu-server reachable")
            .bytes
    }

    pub fn open(&mut self, device: &str) -> Result<(DeviceId, DeviceInfo), Error> {
        match self.request_as(device, &IommuRequest::OpenDevice)? {
            IommuReply::DeviceOpened { device, info } => Ok((device, info)),
            r => panic!("OpenDevice answered {r:?}"),
        }
    }

    /// Grants frames as one region.
    pub fn grant(&mut self, frames: &[CPtr]) -> Result<u32, Error> {
        self.iommu.attach_caps(frames);
        match self.request(&IommuRequest::GrantMemory {
            frames: frames.len() as u32,
        })? {
            IommuReply::Granted { region } => Ok(region),
            r => panic!("GrantMemory answered {r:?}"),
        }
    }

    pub fn revoke(&mut self, region: u32) -> Result<(), Error> {
        self.request(&IommuRequest::RevokeMemory { region })
            .map(|_| ())
    }

    pub fn alloc_ioas(&mut self) -> Result<IoasId, Error> {
        match self.request(&IommuRequest::AllocIoas)? {
            IommuReply::IoasAllocated { ioas } => Ok(ioas),
            r => panic!("AllocIoas answered {r:?}"),
        }
    }

    #[inline(always)]
    pub fn map(
        &mut self,
        ioas: IoasId,
        iova: IovaPlacement,
        length: u64,
        memory: MemoryRef,
        perm: Perm,
    ) -> Result<u64, Error> {
        match self.request(&IommuRequest::Map {
            ioas,
            iova,
            length,
            memory,
            perm,
        })? {
            IommuReply::Mapped { iova } => Ok(iova),
            r => panic!("Map answered {r:?}"),
        }
    }

    #[inline(always)]
    pub fn unmap(&mut self, ioas: IoasId, iova: u64, length: u64) -> Result<u64, Error> {
        match self.request(&IommuRequest::Unmap { ioas, iova, length })? {
            IommuReply::Unmapped { length } => Ok(length),
            r => panic!("Unmap answered {r:?}"),
        }
    }

    pub fn attach(
        &mut self,
        device: DeviceId,
        pasid: Option<Pasid>,
        ioas: IoasId,
    ) -> Result<(), Error> {
        self.request(&IommuRequest::Attach {
            device,
            pasid,
            ioas,
        })
        .map(|_| ())
    }

    pub fn detach(&mut self, device: DeviceId, pasid: Option<Pasid>) -> Result<(), Error> {
        self.request(&IommuRequest::Detach { device, pasid })
            .map(|_| ())
    }

    pub fn alloc_pasid(&mut self, device: DeviceId) -> Result<Pasid, Error> {
        match self.request(&IommuRequest::AllocPasid { device })? {
            IommuReply::PasidAllocated { pasid } => Ok(pasid),
            r => panic!("AllocPasid answered {r:?}"),
        }
    }

    /// A fault queue for `device` whose ring lies at the start of frame `mem[frame]`,
    /// granted as its own region (`depth` records; at most 127, so it fits the frame).
    pub fn fault_ring(
        &mut self,
        device: DeviceId,
        frame: usize,
        depth: u32,
    ) -> Result<FaultRing, Error> {
        assert!(
            RingHeader::ring_bytes(depth).is_some_and(|b| b <= 4096),
            "a ring this deep does not fit one frame"
        );
        let cap = self.mem[frame];
        let region = self.grant(&[cap])?;
        match self.request(&IommuRequest::AllocFaultQueue {
            device,
            ring: MemoryRef { region, offset: 0 },
            depth,
        })? {
            IommuReply::FaultQueueAllocated { queue } => Ok(FaultRing {
                queue,
                region,
                frame: cap,
                depth,
            }),
            r => panic!("AllocFaultQueue answered {r:?}"),
        }
    }

    /// The device capability of `device`.
    pub fn device(&self, device: &str) -> CPtr {
        self.devices
            .get(device)
            .and_then(|(_, d)| *d)
            .unwrap_or_else(|| panic!("no device `{device}`"))
    }

    /// Runs a DMA job on `device` and waits until it ended.
    pub fn dma(&mut self, device: &str, job: DmaJob) -> Result<(), DmaFault> {
        let dev = self.device(device);
        let id = self.ctx.device_submit(dev, job).expect("a valid job");
        let done = self.dma_done.expect("a driver holds `dma-done`");
        self.ctx
            .device_set_notification(dev, done)
            .expect("own device");
        loop {
            self.finished
                .extend(self.ctx.device_results(dev).expect("own device"));
            if let Some(i) = self.finished.iter().position(|s| s.id == id) {
                return self.finished.remove(i).result;
            }
            self.ctx.wait(done).expect("own notification");
        }
    }

    /// Starts a DMA job on `device` without waiting.
    pub fn start_dma(&mut self, device: &str, job: DmaJob) -> u64 {
        let dev = self.device(device);
        self.ctx.device_submit(dev, job).expect("a valid job")
    }

    pub fn write(&self, frame: usize, offset: u64, data: &[u8]) {
        self.ctx
            .frame_write(self.mem[frame], offset, data)
            .expect("own frame");
    }

    pub fn read(&self, frame: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ctx
            .frame_read(self.mem[frame], offset, &mut b)
            .expect("own frame");
        b
    }
}

/// The consumer side of a fault ring in one of the driver's frames.
#[derive(Debug, Clone, Copy)]
pub struct FaultRing {
    pub queue: FaultQueueId,
    pub region: u32,
    frame: CPtr,
    pub depth: u32,
}

impl FaultRing {
    /// The header as the server left it.
    pub fn header(&self, ctx: &Ctx) -> RingHeader {
        let mut h = [0u8; RING_HEADER_BYTES];
        ctx.frame_read(self.frame, 0, &mut h).expect("own frame");
        RingHeader::read_from_bytes(&h).expect("header size")
    }

    /// Takes every record waiting; returns them (undecodable ones as errors) and the
    /// ring's lost count.
    pub fn take(&self, ctx: &Ctx) -> (Vec<Result<Fault, Error>>, u32) {
        let h = self.header(ctx);
        let pending = h
            .validate(self.depth)
            .expect("iommu-server keeps the header valid");
        let head = h.head.get();
        let mut out = Vec::new();
        for i in 0..pending {
            let slot = RingHeader::slot(head.wrapping_add(i), self.depth);
            let mut rec = [0u8; FAULT_RECORD_BYTES];
            ctx.frame_read(
                self.frame,
                (RING_HEADER_BYTES + slot * FAULT_RECORD_BYTES) as u64,
                &mut rec,
            )
            .expect("own frame");
            out.push(FaultRecord::decode(&rec));
        }
        ctx.frame_write(self.frame, 0, &head.wrapping_add(pending).to_le_bytes())
            .expect("own frame");
        (out, h.lost.get())
    }
}
