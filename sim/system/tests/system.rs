//! The simulated system end to end: init executes the default description, the servers
//! run as processes, a driver maps, attaches and DMAs through the real driver and model.

use ipc_protocol::iommu::{DeviceId, IommuRequest, IovaPlacement, MemoryRef, Perm};
use ipc_protocol::Error;
use sim::machine::{DmaDirection, DmaJob};
use sim_system::client::Driver;
use sim_system::{InitEvent, IommuKind, Programs, RunConfig, System};
use system_description::default_system;

/// Programs for driver-a and driver-b: `body` gets a driver in that process and the name
/// of its device.
fn each_driver(body: fn(Driver, &'static str)) -> Programs {
    let mut programs = Programs::new();
    for (name, dev) in [("driver-a", "dev-a"), ("driver-b", "dev-b")] {
        programs.insert(
            name.into(),
            Box::new(move |ctx| body(Driver::new(ctx), dev)),
        );
    }
    programs
}

/// Opens `dev`, grants the driver's first two frames as one region, maps it read-write
/// anywhere in a new IOAS and attaches the device there; returns the region and the IOVA.
fn map_two_frames(d: &mut Driver, dev: &str) -> (u32, u64) {
    let (device, _) = d.open(dev).unwrap();
    let frames = d.mem[..2].to_vec();
    let region = d.grant(&frames).unwrap();
    let ioas = d.alloc_ioas().unwrap();
    let iova = d
        .map(
            ioas,
            IovaPlacement::Anywhere { align: 4096 },
            8192,
            MemoryRef { region, offset: 0 },
            Perm::RW,
        )
        .unwrap();
    d.attach(device, None, ioas).unwrap();
    (region, iova)
}

fn map_and_dma(kind: IommuKind) {
    let programs = each_driver(|mut d, dev| {
        let (region, iova) = map_two_frames(&mut d, dev);
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 7) as u8).collect();
        d.write(0, 0, &pattern);
        d.dma(dev, DmaJob::new(DmaDirection::FromMemory, iova, 4096))
            .unwrap();
        d.dma(dev, DmaJob::new(DmaDirection::ToMemory, iova + 4096, 4096))
            .unwrap();
        assert_eq!(d.read(1, 0, 4096), pattern);
        // Outside the mapping: blocked.
        assert!(d
            .dma(dev, DmaJob::new(DmaDirection::ToMemory, iova + 8192, 4096))
            .is_err());
        // A region still mapped cannot be revoked.
        assert_eq!(d.revoke(region), Err(Error::Busy));
    });
    let sys = System::build(
        default_system(kind),
        programs,
        &RunConfig {
            seed: 3,
            ..RunConfig::default()
        },
    )
    .unwrap();
    let r = sys.run();
    assert!(r.problems().is_empty(), "{:#?}", r.problems());
    let ev = sys.events();
    for d in ["driver-a", "driver-b"] {
        assert!(
            ev.iter().any(|e| matches!(e, InitEvent::TornDown { process, result: Ok(n), .. } if process == d && *n == 2)),
            "{ev:#?}"
        );
        assert!(ev.iter().any(|e| matches!(e, InitEvent::Usage { process, usage: Ok(u) } if process == d && *u == Default::default())), "{ev:#?}");
    }
    assert!(ev.contains(&InitEvent::PasidsLive(Ok(0))), "{ev:#?}");
    // Only iommu-server's table memory is still allocated.
    assert_eq!(
        sys.sim.live_frame_bytes(),
        system_description::default::TABLE_PAGES * 4096
    );
}

#[test]
fn vtd_driver_maps_attaches_and_dmas() {
    map_and_dma(IommuKind::Vtd);
}

#[test]
fn smmuv3_driver_maps_attaches_and_dmas() {
    map_and_dma(IommuKind::Smmuv3);
}

/// Every process holds exactly what the description lists (memory as its frames), and
/// init only its own capabilities, its untyped memory and the processes it supervises.
/// Memory granted through a read-only frame capability is mapped for reading only, on
/// both IOMMUs: a writable mapping is denied and a device write through a read mapping
/// faults and leaves the frame as it was.
#[test]
fn a_read_only_frame_capability_grants_read_only_memory() {
    for kind in [IommuKind::Smmuv3, IommuKind::Vtd] {
        let programs = each_driver(|mut d, dev| {
            let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
            d.write(0, 0, &pattern);
            let (device, _) = d.open(dev).unwrap();
            let ro = d.ctx.copy(d.mem[0], sim::Rights::READ).unwrap();
            let region = d.grant(&[ro]).unwrap();
            let ioas = d.alloc_ioas().unwrap();
            let anywhere = IovaPlacement::Anywhere { align: 4096 };
            let memory = MemoryRef { region, offset: 0 };
            assert_eq!(
                d.map(ioas, anywhere, 4096, memory, Perm::RW),
                Err(Error::Denied)
            );
            let iova = d.map(ioas, anywhere, 4096, memory, Perm::READ).unwrap();
            d.attach(device, None, ioas).unwrap();
            d.dma(dev, DmaJob::new(DmaDirection::FromMemory, iova, 4096))
                .unwrap();
            assert!(d
                .dma(dev, DmaJob::new(DmaDirection::ToMemory, iova, 4096))
                .is_err());
            assert_eq!(d.read(0, 0, 4096), pattern);
        });
        let sys = System::build(default_system(kind), programs, &RunConfig::default()).unwrap();
        let r = sys.run();
        assert!(r.problems().is_empty(), "{kind:?}: {:#?}", r.problems());
    }
}

/// Coroutine switches of a run in which driver-a makes `requests` requests.
fn switches_for(requests: u32) -> u64 {
    let mut programs = Programs::new();
    programs.insert(
        "driver-a".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx);
            for _ in 0..requests {
                let r = d.request(&IommuRequest::QueryDevice {
                    device: DeviceId(99),
                });
                assert_eq!(r, Err(Error::NotFound));
            }
        }),
    );
    programs.insert("driver-b".into(), Box::new(|_| {}));
    let sys = System::build(
        default_system(IommuKind::Smmuv3),
        programs,
        &RunConfig::default(),
    )
    .unwrap();
    let r = sys.run();
    assert!(r.problems().is_empty(), "{:#?}", r.problems());
    r.switches
}

/// A request to a waiting server and its reply take one switch into the server and one
/// back, as a kernel switching straight to the receiver would, although init (which the
/// run loop resumed) waits meanwhile and the driver runs nested in it.
#[test]
fn a_request_and_its_reply_take_one_switch_each_way() {
    let extra = switches_for(1100) - switches_for(100);
    assert!(
        (1000..1050).contains(&extra),
        "{extra} switches for 1000 requests"
    );
}

#[test]
fn init_hands_out_exactly_the_listed_capabilities() {
    use sim::{ObjKind, Rights};
    use system_description::{CapKind, Role};

    let desc = default_system(IommuKind::Smmuv3);
    // Drivers that wait forever, so their capabilities are still there to inspect.
    let mut programs = Programs::new();
    for d in ["driver-a", "driver-b"] {
        programs.insert(
            d.into(),
            Box::new(|ctx| {
                let n = ctx.lookup("dma-done").unwrap();
                ctx.wait(n).unwrap();
            }),
        );
    }
    let sys = System::build(desc.clone(), programs, &RunConfig::default()).unwrap();
    let r = sys.run();
    assert_eq!(r.deadlock.len(), 2, "the drivers wait: {:?}", r.deadlock);
    for p in &desc.processes {
        let held = sys.sim.caps_of(&p.name).unwrap();
        let mut want: Vec<(String, ObjKind, u64)> = Vec::new();
        for c in &p.caps {
            let (kind, badge) = match &c.kind {
                CapKind::Endpoint { badge, .. } | CapKind::DeviceEndpoint { badge, .. } => {
                    (ObjKind::Endpoint, *badge)
                }
                CapKind::Notification { badge, .. } => (ObjKind::Notification, *badge),
                CapKind::Device { .. } => (ObjKind::Device, 0),
                CapKind::Mmio { .. } => (ObjKind::Mmio, 0),
                CapKind::Irq { .. } => (ObjKind::Irq, 0),
                CapKind::Memory { pages, contiguous } => {
                    if *contiguous {
                        want.push((c.name.clone(), ObjKind::Frame, 0));
                    } else {
                        for i in 0..*pages {
                            want.push((format!("{}.{i}", c.name), ObjKind::Frame, 0));
                        }
                    }
                    continue;
                }
            };
            want.push((c.name.clone(), kind, badge));
        }
        let mut got: Vec<(String, ObjKind, u64)> = held
            .iter()
            .filter_map(|(n, i)| n.clone().map(|n| (n, i.kind, i.badge)))
            .collect();
        if p.role == Role::Root {
            // init's own capabilities are its private copies (unnamed), next to one
            // supervision capability per process it created; of what it was born with
            // it keeps only its untyped memory.
            let mut unnamed: Vec<(String, ObjKind, u64)> = held
                .iter()
                .filter(|(n, _)| n.is_none())
                .map(|(_, i)| (String::new(), i.kind, i.badge))
                .collect();
            let mut expected: Vec<(String, ObjKind, u64)> = want
                .drain(..)
                .map(|(_, k, b)| (String::new(), k, b))
                .collect();
            for _ in 1..desc.processes.len() {
                expected.push((String::new(), ObjKind::Process, 0));
            }
            unnamed.sort();
            expected.sort();
            assert_eq!(unnamed, expected, "init");
            want.push(("untyped".into(), ObjKind::Untyped, 0));
        } else {
            assert!(
                held.iter().all(|(n, _)| n.is_some()),
                "`{}` holds capabilities it was not given: {held:?}",
                p.name
            );
        }
        want.sort();
        got.sort();
        assert_eq!(got, want, "{}", p.name);
        // Rights as listed: a driver cannot receive on iommu-server's endpoint.
        if p.role == Role::Driver {
            let iommu = held
                .iter()
                .find(|(n, _)| n.as_deref() == Some("iommu"))
                .unwrap();
            assert_eq!(iommu.1.rights, Rights::WRITE | Rights::GRANT);
        }
    }
}

fn traced_run(kind: IommuKind, seed: u64) -> (u64, Vec<sim::Note>, Vec<InitEvent>) {
    let programs = each_driver(|mut d, dev| {
        let (_, iova) = map_two_frames(&mut d, dev);
        for _ in 0..3 {
            d.dma(dev, DmaJob::new(DmaDirection::ToMemory, iova, 8192))
                .unwrap();
            let _ = d.dma(dev, DmaJob::new(DmaDirection::ToMemory, iova + 8192, 64));
        }
    });
    let sys = System::build(
        default_system(kind),
        programs,
        &RunConfig {
            seed,
            inject: sim::Injection {
                kills: vec![sim::KillPoint::AtEntry {
                    process: "driver-b".into(),
                    entry: 9,
                }],
                delay_per_mille: 200,
                max_delay: 10,
                reorder_per_mille: 300,
            },
            trace: true,
        },
    )
    .unwrap();
    let r = sys.run();
    assert!(r.problems().is_empty(), "{:?}", r.problems());
    (r.trace_hash, r.notes, sys.events())
}

/// The whole system, servers, models and fault injection included, replays exactly from
/// its seed.
#[test]
fn a_system_run_is_reproduced_by_its_seed() {
    for kind in [IommuKind::Smmuv3, IommuKind::Vtd] {
        let a = traced_run(kind, 77);
        let b = traced_run(kind, 77);
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_eq!(a.2, b.2);
        let others: std::collections::BTreeSet<u64> =
            (0..5).map(|s| traced_run(kind, s).0).collect();
        assert!(others.len() > 1);
    }
}
