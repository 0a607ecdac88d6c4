//! iommu-server against a software IOMMU that translates DMA through the mappings the
//! server programmed, and the real pasid-server behind an in-process endpoint.

use std::collections::BTreeMap;

use iommu_server::*;
use ipc_protocol::iommu::*;
use ipc_protocol::pasid::{Pasid, PASID_MAX};
use ipc_protocol::records::{fault_flags, FaultKind};
use ipc_protocol::{Error, MAX_MESSAGE_BYTES};
use pasid_server::{CallerPolicy, PasidServer};
use platform::ClientEndpoint;

const PAGE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Map(u32, u64, u64),
    Unmap(u32, u64, u64),
    Attach(StreamId, Option<Pasid>, u32),
    Detach(StreamId, Option<Pasid>),
    Free(u32),
    Response(StreamId, u32, PageResponseCode),
}

#[derive(Default)]
struct SoftIommu {
    next: u32,
    domains: BTreeMap<u32, BTreeMap<u64, (u64, Perm)>>,
    routes: BTreeMap<(StreamId, Option<Pasid>), u32>,
    pending: Vec<HwFault>,
    lost: u32,
    log: Vec<Op>,
    fail_map_call: Option<usize>,
    map_calls: usize,
}

impl SoftIommu {
    /// A DMA by `stream`: the physical address it reaches, or the fault it raises.
    fn dma(
        &self,
        stream: StreamId,
        pasid: Option<Pasid>,
        iova: u64,
        write: bool,
    ) -> Result<u64, FaultKind> {
        let d = self
            .routes
            .get(&(stream, pasid))
            .ok_or(FaultKind::BadConfig)?;
        let (pa, perm) = self.domains[d]
            .get(&(iova & !(PAGE - 1)))
            .ok_or(FaultKind::Translation)?;
        let need = if write { Perm::WRITE } else { Perm::READ };
        if !perm.contains(need) {
            return Err(FaultKind::Permission);
        }
        Ok(pa + (iova & (PAGE - 1)))
    }

    fn mapped_pas(&self) -> Vec<u64> {
        self.domains
            .values()
            .flat_map(|d| d.values().map(|(pa, _)| *pa))
            .collect()
    }
}

impl Hardware for SoftIommu {
    fn device_info(&self, stream: StreamId) -> DeviceInfo {
        DeviceInfo {
            iommu: IommuKind::Smmuv3,
            // Streams >= 0x100 can carry 8-bit PASIDs, the others none.
            pasid_bits: if stream >= 0x100 { 8 } else { 0 },
            pri: stream >= 0x100,
            ats: false,
            stall: false,
            iova_bits: 48,
            page_sizes: 1 << 12,
        }
    }
    fn domain_alloc(&mut self) -> Result<HwDomain, Error> {
        self.next += 1;
        self.domains.insert(self.next, BTreeMap::new());
        Ok(HwDomain(self.next))
    }
    fn domain_free(&mut self, d: HwDomain) -> Result<(), Error> {
        assert!(
            self.domains[&d.0].is_empty(),
            "freeing a domain that still maps memory"
        );
        assert!(
            !self.routes.values().any(|&x| x == d.0),
            "freeing a domain still attached"
        );
        self.domains.remove(&d.0);
        self.log.push(Op::Free(d.0));
        Ok(())
    }
    fn map(&mut self, d: HwDomain, iova: u64, pa: u64, len: u64, perm: Perm) -> Result<(), Error> {
        self.map_calls += 1;
        if self.fail_map_call == Some(self.map_calls) {
            return Err(Error::NoSpace);
        }
        let t = self.domains.get_mut(&d.0).unwrap();
        for off in (0..len).step_by(PAGE as usize) {
            assert!(
                t.insert(iova + off, (pa + off, perm)).is_none(),
                "double map"
            );
        }
        self.log.push(Op::Map(d.0, iova, len));
        Ok(())
    }
    fn unmap(&mut self, d: HwDomain, iova: u64, len: u64) -> Result<(), Error> {
        let t = self.domains.get_mut(&d.0).unwrap();
        for off in (0..len).step_by(PAGE as usize) {
            assert!(
                t.remove(&(iova + off)).is_some(),
                "unmapping what is not mapped"
            );
        }
        self.log.push(Op::Unmap(d.0, iova, len));
        Ok(())
    }
    fn attach(&mut self, s: StreamId, p: Option<Pasid>, d: HwDomain) -> Result<(), Error> {
        self.routes.insert((s, p), d.0);
        self.log.push(Op::Attach(s, p, d.0));
        Ok(())
    }
    fn detach(&mut self, s: StreamId, p: Option<Pasid>) -> Result<(), Error> {
        self.routes.remove(&(s, p)).unwrap();
        self.log.push(Op::Detach(s, p));
        Ok(())
    }
    fn drain_faults(&mut self, sink: &mut dyn FnMut(HwFault)) -> u32 {
        self.pending.drain(..).for_each(sink);
        std::mem::take(&mut self.lost)
    }
    fn page_response(
        &mut self,
        s: StreamId,
        _p: Option<Pasid>,
        group: u32,
        code: PageResponseCode,
    ) -> Result<(), Error> {
        self.log.push(Op::Response(s, group, code));
        Ok(())
    }
}

/// pasid-server in the same process, called through its message interface.
struct Direct(PasidServer);

impl ClientEndpoint for Direct {
    type Error = ();
    fn call(&mut self, msg: &[u8], reply: &mut [u8]) -> Result<usize, ()> {
        let mut out = [0u8; MAX_MESSAGE_BYTES];
        let n = self.0.handle_message(IOMMU_BADGE, msg, &mut out);
        reply[..n].copy_from_slice(&out[..n]);
        Ok(n)
    }
}

const IOMMU_BADGE: u64 = 0x1;
// Clients A and B; device capabilities: A holds 0x10 (stream 0x10) and 0x11 (stream 0x100,
// PASID-capable); B holds 0x20 (stream 0x20) and 0x21 (a second capability to 0x10).
const A: u64 = 0xA;
const B: u64 = 0xB;
const A_DEV: u64 = 0xA10;
const A_PASID_DEV: u64 = 0xA11;
const B_DEV: u64 = 0xB20;
const B_DEV_SHARED: u64 = 0xB21;

type Server = IommuServer<SoftIommu, IpcPasids<Direct>>;

fn server() -> Server {
    let quota = ClientQuota {
        max_ioas: 4,
        max_mapped_bytes: 64 * PAGE,
        max_fault_queues: 2,
        max_pasids: 4,
    };
    let config = Config {
        clients: vec![
            ClientConfig {
                id: 1,
                badge: A,
                quota,
            },
            ClientConfig {
                id: 2,
                badge: B,
                quota,
            },
        ],
        devices: vec![
            DeviceCap {
                badge: A_DEV,
                client: 1,
                stream: 0x10,
            },
            DeviceCap {
                badge: A_PASID_DEV,
                client: 1,
                stream: 0x100,
            },
            DeviceCap {
                badge: B_DEV,
                client: 2,
                stream: 0x20,
            },
            DeviceCap {
                badge: B_DEV_SHARED,
                client: 2,
                stream: 0x10,
            },
        ],
        iova_bits: 48,
        max_fault_queue_depth: 64,
    };
    let pasids = PasidServer::new(pasid_server::Config {
        max_pasid: PASID_MAX,
        callers: vec![CallerPolicy {
            badge: IOMMU_BADGE,
            max_live: 100,
            max_sets: 16,
            admin: false,
        }],
    })
    .unwrap();
    IommuServer::new(
        config,
        SoftIommu::default(),
        IpcPasids::new(Direct(pasids), 8),
    )
    .unwrap()
}

fn ok(s: &mut Server, badge: u64, r: IommuRequest) -> IommuReply {
    s.handle(badge, &r)
        .unwrap_or_else(|e| panic!("{r:?}: {e:?}"))
}

fn open(s: &mut Server, badge: u64) -> DeviceId {
    match ok(s, badge, IommuRequest::OpenDevice) {
        IommuReply::DeviceOpened { device, .. } => device,
        r => panic!("{r:?}"),
    }
}

fn ioas(s: &mut Server, badge: u64) -> IoasId {
    match ok(s, badge, IommuRequest::AllocIoas) {
        IommuReply::IoasAllocated { ioas } => ioas,
        r => panic!("{r:?}"),
    }
}

fn map(
    s: &mut Server,
    badge: u64,
    ioas: IoasId,
    iova: IovaPlacement,
    length: u64,
    region: u32,
    perm: Perm,
) -> Result<u64, Error> {
    s.handle(
        badge,
        &IommuRequest::Map {
            ioas,
            iova,
            length,
            memory: MemoryRef { region, offset: 0 },
            perm,
        },
    )
    .map(|r| match r {
        IommuReply::Mapped { iova } => iova,
        r => panic!("{r:?}"),
    })
}

/// Maps `length` bytes of `region` anywhere (page aligned) in `ioas`.
fn map_any(s: &mut Server, badge: u64, ioas: IoasId, length: u64, region: u32, perm: Perm) -> u64 {
    map(
        s,
        badge,
        ioas,
        IovaPlacement::Anywhere { align: PAGE },
        length,
        region,
        perm,
    )
    .unwrap()
}

/// Attaches `device` (with `pasid`, if any) to `ioas`.
fn attach(s: &mut Server, badge: u64, device: DeviceId, pasid: Option<Pasid>, ioas: IoasId) {
    ok(
        s,
        badge,
        IommuRequest::Attach {
            device,
            pasid,
            ioas,
        },
    );
}

/// Client index of a badge's client.
fn client(s: &Server, badge: u64) -> u32 {
    s.client_index(if badge == A { 1 } else { 2 }).unwrap()
}

#[test]
fn map_attach_and_dma_reach_exactly_the_granted_frames() {
    let mut s = server();
    // Three frames, the last two contiguous: two hardware map calls.
    let frames = vec![0x10_0000, 0x20_0000, 0x20_1000];
    let region = s
        .grant_region(client(&s, A), frames.clone(), Perm::RW)
        .unwrap();
    let dev = open(&mut s, A_DEV);
    let io = ioas(&mut s, A);
    let iova = map_any(&mut s, A, io, 3 * PAGE, region, Perm::RW);
    attach(&mut s, A, dev, None, io);
    let hw = s.hardware();
    assert_eq!(
        hw.log.iter().filter(|o| matches!(o, Op::Map(..))).count(),
        2
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            hw.dma(0x10, None, iova + i as u64 * PAGE + 8, true),
            Ok(f + 8)
        );
    }
    assert_eq!(
        hw.dma(0x10, None, iova + 3 * PAGE, false),
        Err(FaultKind::Translation)
    );
    // Read-only mapping: writes fault.
    let r2 = s
        .grant_region(client(&s, A), vec![0x30_0000], Perm::RW)
        .unwrap();
    let ro = map(
        &mut s,
        A,
        io,
        IovaPlacement::Fixed(0x4000_0000),
        PAGE,
        r2,
        Perm::READ,
    )
    .unwrap();
    assert_eq!(s.hardware().dma(0x10, None, ro, false), Ok(0x30_0000));
    assert_eq!(
        s.hardware().dma(0x10, None, ro, true),
        Err(FaultKind::Permission)
    );
    // Another device's stream reaches nothing.
    assert_eq!(
        s.hardware().dma(0x20, None, iova, false),
        Err(FaultKind::BadConfig)
    );
}

#[test]
fn a_device_has_one_owner_and_only_capability_holders_open_it() {
    let mut s = server();
    let dev = open(&mut s, A_DEV);
    assert_eq!(
        s.handle(B_DEV_SHARED, &IommuRequest::OpenDevice),
        Err(Error::Busy)
    );
    assert_eq!(s.handle(A_DEV, &IommuRequest::OpenDevice), Err(Error::Busy));
    // A client's plain endpoint names no device; an unknown badge names nothing.
    assert_eq!(s.handle(A, &IommuRequest::OpenDevice), Err(Error::Denied));
    assert_eq!(
        s.handle(0xdead, &IommuRequest::AllocIoas),
        Err(Error::Denied)
    );
    ok(&mut s, A, IommuRequest::CloseDevice { device: dev });
    assert!(matches!(
        s.handle(B_DEV_SHARED, &IommuRequest::OpenDevice),
        Ok(IommuReply::DeviceOpened { .. })
    ));
}

#[test]
fn each_request_is_judged_by_its_own_badge_whatever_came_before() {
    let mut s = server();
    let a_io = ioas(&mut s, A);
    // The same badge again, then others in turn: the server remembers the last badge it
    // looked up, and that must never carry over to a different one.
    let b_io = ioas(&mut s, B);
    for _ in 0..2 {
        assert_eq!(
            s.handle(0xdead, &IommuRequest::DestroyIoas { ioas: a_io }),
            Err(Error::Denied)
        );
        assert_eq!(
            s.handle(B, &IommuRequest::DestroyIoas { ioas: a_io }),
            Err(Error::Denied)
        );
        // A device capability is its holder's too, but opens only its own device.
        assert_eq!(
            s.handle(A_DEV, &IommuRequest::DestroyIoas { ioas: b_io }),
            Err(Error::Denied)
        );
        assert_eq!(s.handle(A, &IommuRequest::OpenDevice), Err(Error::Denied));
    }
    let dev = open(&mut s, A_DEV);
    assert_eq!(
        s.handle(B_DEV, &IommuRequest::QueryDevice { device: dev }),
        Err(Error::Denied)
    );
    ok(&mut s, A, IommuRequest::DestroyIoas { ioas: a_io });
    ok(&mut s, B, IommuRequest::DestroyIoas { ioas: b_io });
}

#[test]
fn memory_granted_read_only_is_mapped_for_reading_only() {
    let mut s = server();
    let region = s
        .grant_region(client(&s, A), vec![0x10_0000], Perm::READ)
        .unwrap();
    let io = ioas(&mut s, A);
    let anywhere = IovaPlacement::Anywhere { align: PAGE };
    for perm in [Perm::RW, Perm::WRITE, Perm::WRITE | Perm::EXEC] {
        assert_eq!(
            map(&mut s, A, io, anywhere, PAGE, region, perm),
            Err(Error::Denied),
            "{perm:?}"
        );
    }
    assert!(!s.hardware().log.iter().any(|o| matches!(o, Op::Map(..))));
    let iova = map_any(&mut s, A, io, PAGE, region, Perm::READ | Perm::EXEC);
    let dev = open(&mut s, A_DEV);
    attach(&mut s, A, dev, None, io);
    let hw = s.hardware();
    assert_eq!(hw.dma(0x10, None, iova, false), Ok(0x10_0000));
    assert_eq!(hw.dma(0x10, None, iova, true), Err(FaultKind::Permission));
}

#[test]
fn a_client_cannot_touch_another_clients_objects() {
    let mut s = server();
    let region = s
        .grant_region(client(&s, A), vec![0x10_0000], Perm::RW)
        .unwrap();
    let dev = open(&mut s, A_DEV);
    let io = ioas(&mut s, A);
    let iova = map_any(&mut s, A, io, PAGE, region, Perm::RW);
    attach(&mut s, A, dev, None, io);
    let rregion = s
        .grant_region(client(&s, A), vec![0x11_0000], Perm::RW)
        .unwrap();
    let q = match ok(
        &mut s,
        A,
        IommuRequest::AllocFaultQueue {
            device: dev,
            ring: MemoryRef {
                region: rregion,
                offset: 0,
            },
            depth: 8,
        },
    ) {
        IommuReply::FaultQueueAllocated { queue } => queue,
        r => panic!("{r:?}"),
    };
    let b_io = ioas(&mut s, B);
    let b_region = s
        .grant_region(client(&s, B), vec![0x50_0000], Perm::RW)
        .unwrap();
    let denied = [
        IommuRequest::Map {
            ioas: io,
            iova: IovaPlacement::Anywhere { align: PAGE },
            length: PAGE,
            memory: MemoryRef {
                region: b_region,
                offset: 0,
            },
            perm: Perm::RW,
        },
        // B's IOAS with A's memory: B has no authority over A's region.
        IommuRequest::Map {
            ioas: b_io,
            iova: IovaPlacement::Anywhere { align: PAGE },
            length: PAGE,
            memory: MemoryRef { region, offset: 0 },
            perm: Perm::RW,
        },
        IommuRequest::Unmap {
            ioas: io,
            iova,
            length: PAGE,
        },
        IommuRequest::DestroyIoas { ioas: io },
        IommuRequest::Attach {
            device: dev,
            pasid: None,
            ioas: b_io,
        },
        IommuRequest::Detach {
            device: dev,
            pasid: None,
        },
        IommuRequest::QueryDevice { device: dev },
        IommuRequest::CloseDevice { device: dev },
        IommuRequest::FreeFaultQueue { queue: q },
        IommuRequest::PageResponse {
            queue: q,
            cookie: 1,
            code: PageResponseCode::Success,
        },
        IommuRequest::AllocPasid { device: dev },
    ];
    for r in denied {
        assert_eq!(s.handle(B, &r), Err(Error::Denied), "{r:?}");
    }
    assert_eq!(
        s.pop_fault(client(&s, B), q).map(|_| ()),
        Err(Error::Denied)
    );
    assert_eq!(s.revoke_region(client(&s, B), region), Err(Error::Denied));
    // A's DMA still works.
    assert_eq!(s.hardware().dma(0x10, None, iova, true), Ok(0x10_0000));
}

#[test]
fn objects_in_use_are_busy_and_memory_stays_until_unmapped() {
    let mut s = server();
    let a = client(&s, A);
    let region = s
        .grant_region(a, vec![0x10_0000, 0x10_1000], Perm::RW)
        .unwrap();
    let dev = open(&mut s, A_DEV);
    let io = ioas(&mut s, A);
    let iova = map(
        &mut s,
        A,
        io,
        IovaPlacement::Fixed(0x10_0000_0000),
        2 * PAGE,
        region,
        Perm::RW,
    )
    .unwrap();
    attach(&mut s, A, dev, None, io);
    assert_eq!(
        s.handle(A, &IommuRequest::DestroyIoas { ioas: io }),
        Err(Error::Busy)
    );
    assert_eq!(
        s.handle(A, &IommuRequest::CloseDevice { device: dev }),
        Err(Error::Busy)
    );
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::Attach {
                device: dev,
                pasid: None,
                ioas: io
            }
        ),
        Err(Error::Busy)
    );
    assert_eq!(s.revoke_region(a, region), Err(Error::Busy));
    // Unmap must take whole mappings.
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::Unmap {
                ioas: io,
                iova,
                length: PAGE
            }
        ),
        Err(Error::Invalid)
    );
    assert_eq!(
        ok(
            &mut s,
            A,
            IommuRequest::Unmap {
                ioas: io,
                iova,
                length: 2 * PAGE
            }
        ),
        IommuReply::Unmapped { length: 2 * PAGE }
    );
    // The reply came after the hardware unmapped (and so invalidated): DMA faults now.
    assert_eq!(
        s.hardware().dma(0x10, None, iova, false),
        Err(FaultKind::Translation)
    );
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::Unmap {
                ioas: io,
                iova,
                length: 2 * PAGE
            }
        ),
        Err(Error::NotFound)
    );
    assert_eq!(s.revoke_region(a, region), Ok(vec![0x10_0000, 0x10_1000]));
    ok(
        &mut s,
        A,
        IommuRequest::Detach {
            device: dev,
            pasid: None,
        },
    );
    ok(&mut s, A, IommuRequest::DestroyIoas { ioas: io });
    ok(&mut s, A, IommuRequest::CloseDevice { device: dev });
}

#[test]
fn bad_map_requests_are_refused_and_failed_maps_leave_nothing() {
    let mut s = server();
    let a = client(&s, A);
    let region = s
        .grant_region(a, vec![0x10_0000, 0x30_0000], Perm::RW)
        .unwrap();
    let io = ioas(&mut s, A);
    let fixed = |iova| IovaPlacement::Fixed(iova);
    assert_eq!(
        map(&mut s, A, io, fixed(0x1001), PAGE, region, Perm::RW),
        Err(Error::Invalid)
    );
    assert_eq!(
        map(&mut s, A, io, fixed(0), PAGE, region, Perm::RW),
        Err(Error::Invalid)
    );
    assert_eq!(
        map(&mut s, A, io, fixed(1 << 48), PAGE, region, Perm::RW),
        Err(Error::Invalid)
    );
    assert_eq!(
        map(&mut s, A, io, fixed(0x1000), 3 * PAGE, region, Perm::RW),
        Err(Error::Invalid)
    );
    assert_eq!(
        map(&mut s, A, io, fixed(0x1000), PAGE, region, Perm(0)),
        Err(Error::Invalid)
    );
    assert_eq!(
        map(&mut s, A, io, fixed(0x1000), PAGE, region, Perm(0x40)),
        Err(Error::Invalid)
    );
    assert_eq!(
        map(
            &mut s,
            A,
            io,
            IovaPlacement::Anywhere { align: 3 },
            PAGE,
            region,
            Perm::RW
        ),
        Err(Error::Invalid)
    );
    assert_eq!(
        map(&mut s, A, io, fixed(0x1000), PAGE, 99, Perm::RW),
        Err(Error::NotFound)
    );
    map(&mut s, A, io, fixed(0x1000), PAGE, region, Perm::RW).unwrap();
    assert_eq!(
        map(&mut s, A, io, fixed(0x1000), PAGE, region, Perm::RW),
        Err(Error::Exists)
    );
    // Quota: 64 pages per client.
    let big = s
        .grant_region(
            a,
            (0..64).map(|i| 0x100_0000 + i * PAGE).collect(),
            Perm::RW,
        )
        .unwrap();
    assert_eq!(
        map(
            &mut s,
            A,
            io,
            IovaPlacement::Anywhere { align: PAGE },
            64 * PAGE,
            big,
            Perm::RW
        ),
        Err(Error::QuotaExceeded)
    );
    // The hardware fails on the second run of a two-run map: the first run is undone.
    let calls = s.hardware().map_calls;
    s.hardware_mut().fail_map_call = Some(calls + 2);
    assert_eq!(
        map(&mut s, A, io, fixed(0x10_0000), 2 * PAGE, region, Perm::RW),
        Err(Error::NoSpace)
    );
    assert_eq!(
        s.hardware().mapped_pas(),
        vec![0x10_0000],
        "only the first successful map remains"
    );
    assert_eq!(
        s.hardware().log.last(),
        Some(&Op::Unmap(1, 0x10_0000, PAGE))
    );
}

#[test]
fn faults_reach_the_owner_overflow_is_counted_and_page_responses_match_cookies() {
    let mut s = server();
    let a = client(&s, A);
    let dev = open(&mut s, A_PASID_DEV);
    let ring = s.grant_region(a, vec![0x70_0000], Perm::RW).unwrap();
    let q = match ok(
        &mut s,
        A,
        IommuRequest::AllocFaultQueue {
            device: dev,
            ring: MemoryRef {
                region: ring,
                offset: 0,
            },
            depth: 2,
        },
    ) {
        IommuReply::FaultQueueAllocated { queue } => queue,
        r => panic!("{r:?}"),
    };
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::AllocFaultQueue {
                device: dev,
                ring: MemoryRef {
                    region: ring,
                    offset: 0
                },
                depth: 2
            }
        ),
        Err(Error::Exists)
    );
    let fault = |kind, group, address| HwFault {
        stream: 0x100,
        pasid: Some(3),
        kind,
        flags: fault_flags::READ,
        reason: 0x10,
        address,
        group,
    };
    s.hardware_mut().pending = vec![
        fault(FaultKind::PageRequest, 7, 0x1000),
        fault(FaultKind::Translation, 0, 0x2000),
        fault(FaultKind::PageRequest, 8, 0x3000), // queue full: lost, answered Invalid
        HwFault {
            stream: 0x20,
            ..fault(FaultKind::Translation, 0, 0x4000)
        }, // B's device, unopened
    ];
    s.hardware_mut().lost = 5;
    let st = s.process_faults();
    assert_eq!(
        (
            st.delivered,
            st.lost_queue_full,
            st.unrouted,
            st.lost_by_hardware
        ),
        (2, 1, 1, 5)
    );
    assert!(s
        .hardware()
        .log
        .contains(&Op::Response(0x100, 8, PageResponseCode::Invalid)));
    let (first, lost) = s.pop_fault(a, q).unwrap();
    let first = first.unwrap();
    assert_eq!(
        (first.kind, first.device, first.pasid, first.address, lost),
        (FaultKind::PageRequest, dev.0, Some(3), 0x1000, 1)
    );
    assert_ne!(first.cookie, 0);
    let (second, _) = s.pop_fault(a, q).unwrap();
    assert_eq!(second.unwrap().cookie, 0);
    assert_eq!(s.pop_fault(a, q).unwrap().0, None);
    // A response must name a pending cookie of this queue, once.
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::PageResponse {
                queue: q,
                cookie: first.cookie + 100,
                code: PageResponseCode::Success
            }
        ),
        Err(Error::NotFound)
    );
    ok(
        &mut s,
        A,
        IommuRequest::PageResponse {
            queue: q,
            cookie: first.cookie,
            code: PageResponseCode::Success,
        },
    );
    assert_eq!(
        s.hardware().log.last(),
        Some(&Op::Response(0x100, 7, PageResponseCode::Success))
    );
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::PageResponse {
                queue: q,
                cookie: first.cookie,
                code: PageResponseCode::Success
            }
        ),
        Err(Error::NotFound)
    );
    // Freeing a queue answers what is still pending on it.
    s.hardware_mut().pending = vec![fault(FaultKind::PageRequest, 9, 0x5000)];
    s.process_faults();
    ok(&mut s, A, IommuRequest::FreeFaultQueue { queue: q });
    assert_eq!(
        s.hardware().log.last(),
        Some(&Op::Response(0x100, 9, PageResponseCode::Invalid))
    );
}

#[test]
fn pasid_attachments_use_pasids_from_the_authority() {
    let mut s = server();
    let a = client(&s, A);
    let region = s.grant_region(a, vec![0x10_0000], Perm::RW).unwrap();
    let plain = open(&mut s, A_DEV);
    let dev = open(&mut s, A_PASID_DEV);
    assert_eq!(
        s.handle(A, &IommuRequest::AllocPasid { device: plain }),
        Err(Error::Unsupported)
    );
    let pasid = match ok(&mut s, A, IommuRequest::AllocPasid { device: dev }) {
        IommuReply::PasidAllocated { pasid } => pasid,
        r => panic!("{r:?}"),
    };
    assert!(pasid > 0 && pasid < 256, "fits the device's 8 PASID bits");
    let io = ioas(&mut s, A);
    let iova = map_any(&mut s, A, io, PAGE, region, Perm::RW);
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::Attach {
                device: plain,
                pasid: Some(pasid),
                ioas: io
            }
        ),
        Err(Error::Unsupported)
    );
    assert_eq!(
        s.handle(
            A,
            &IommuRequest::Attach {
                device: dev,
                pasid: Some(200),
                ioas: io
            }
        ),
        Err(Error::NotFound)
    );
    attach(&mut s, A, dev, Some(pasid), io);
    assert_eq!(
        s.hardware().dma(0x100, Some(pasid), iova, true),
        Ok(0x10_0000)
    );
    assert_eq!(
        s.hardware().dma(0x100, None, iova, true),
        Err(FaultKind::BadConfig)
    );
    assert_eq!(
        s.handle(A, &IommuRequest::FreePasid { pasid }),
        Err(Error::Busy)
    );
    assert_eq!(
        s.handle(B, &IommuRequest::FreePasid { pasid }),
        Err(Error::Denied)
    );
    ok(
        &mut s,
        A,
        IommuRequest::Detach {
            device: dev,
            pasid: Some(pasid),
        },
    );
    ok(&mut s, A, IommuRequest::FreePasid { pasid });
}

#[test]
fn a_dead_clients_memory_is_released_only_after_no_device_can_reach_it() {
    let mut s = server();
    let (a, b) = (client(&s, A), client(&s, B));
    let frames: Vec<u64> = (0..4).map(|i| 0x10_0000 + i * 2 * PAGE).collect();
    let region = s.grant_region(a, frames.clone(), Perm::RW).unwrap();
    let dev = open(&mut s, A_DEV);
    let pdev = open(&mut s, A_PASID_DEV);
    let io = ioas(&mut s, A);
    map_any(&mut s, A, io, 4 * PAGE, region, Perm::RW);
    attach(&mut s, A, dev, None, io);
    let pasid = match ok(&mut s, A, IommuRequest::AllocPasid { device: pdev }) {
        IommuReply::PasidAllocated { pasid } => pasid,
        r => panic!("{r:?}"),
    };
    attach(&mut s, A, pdev, Some(pasid), io);
    // B is mid-DMA on its own device.
    let b_region = s.grant_region(b, vec![0x90_0000], Perm::RW).unwrap();
    let b_dev = open(&mut s, B_DEV);
    let b_io = ioas(&mut s, B);
    let b_iova = map_any(&mut s, B, b_io, PAGE, b_region, Perm::RW);
    attach(&mut s, B, b_dev, None, b_io);

    let log_start = s.hardware().log.len();
    let released = s.client_died(a).unwrap();
    assert_eq!(released, frames);
    let hw = s.hardware();
    // No translation anywhere still reaches the released frames.
    assert!(hw.mapped_pas().iter().all(|pa| !frames.contains(pa)));
    // Order: every detach before any unmap, every unmap before the domain is freed.
    let ops = &hw.log[log_start..];
    let last_detach = ops
        .iter()
        .rposition(|o| matches!(o, Op::Detach(..)))
        .unwrap();
    let first_unmap = ops.iter().position(|o| matches!(o, Op::Unmap(..))).unwrap();
    let free = ops.iter().position(|o| matches!(o, Op::Free(..))).unwrap();
    assert!(last_detach < first_unmap && first_unmap < free, "{ops:?}");
    // Its device is free for another holder.
    assert!(matches!(
        s.handle(B_DEV_SHARED, &IommuRequest::OpenDevice),
        Ok(IommuReply::DeviceOpened { .. })
    ));
    // B is unaffected.
    assert_eq!(s.hardware().dma(0x20, None, b_iova, true), Ok(0x90_0000));
}

#[test]
fn malformed_messages_get_error_replies_and_the_server_keeps_serving() {
    let mut s = server();
    let mut reply = [0u8; MAX_MESSAGE_BYTES];
    for garbage in [
        &[][..],
        &[1, 0],
        &[2, 0, 0, 2, 0xff, 0xff],
        &[2, 0, 3, 2],
        &[2, 0, 0x05, 0x02, 9],
        &[1, 0, 3, 2, 3],
    ] {
        let n = ipc_protocol::server::handle_message(&mut s, A, garbage, &mut reply);
        assert!(
            n >= 8 && u32::from_le_bytes(reply[4..8].try_into().unwrap()) != 0,
            "{garbage:?}"
        );
    }
    assert!(matches!(
        s.handle(A, &IommuRequest::AllocIoas),
        Ok(IommuReply::IoasAllocated { .. })
    ));
}
