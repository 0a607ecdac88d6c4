//! The simulated system end to end: init executes the default description, the servers
//! run as processes, a driver maps, attaches and DMAs through the real driver and model.

use ipc_protocol::iommu::{IovaPlacement, MemoryRef, Perm};
use ipc_protocol::Error;
use sim::machine::{DmaDirection, DmaJob};
use sim_system::client::Driver;
use sim_system::{InitEvent, IommuKind, Programs, RunConfig, System};
use system_description::default_system;

fn copy_job(direction: DmaDirection, iova: u64, len: u64) -> DmaJob {
    DmaJob {
        direction,
        iova,
        len,
        buffer_offset: 0,
        pasid: None,
        repeat: 0,
    }
}

fn map_and_dma(kind: IommuKind) {
    let mut programs = Programs::new();
    for (name, dev) in [("driver-a", "dev-a"), ("driver-b", "dev-b")] {
        programs.insert(
            name.into(),
            Box::new(move |ctx| {
                let mut d = Driver::new(ctx);
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
                let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 7) as u8).collect();
                d.write(0, 0, &pattern);
                d.dma(dev, copy_job(DmaDirection::FromMemory, iova, 4096))
                    .unwrap();
                d.dma(dev, copy_job(DmaDirection::ToMemory, iova + 4096, 4096))
                    .unwrap();
                assert_eq!(d.read(1, 0, 4096), pattern);
                // Outside the mapping: blocked.
                assert!(d
                    .dma(dev, copy_job(DmaDirection::ToMemory, iova + 8192, 4096))
                    .is_err());
                // A region still mapped cannot be revoked.
                assert_eq!(d.revoke(region), Err(Error::Busy));
            }),
        );
    }
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
