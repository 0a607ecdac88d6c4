//! `cargo xtask demo` (host part): the servers at work, as their clients see them.
//!
//! 1. pasid-server runs on its own thread behind an endpoint; iommu-server's PASID
//!    traffic and a client without authority reach it only through badged capabilities.
//! 2. The whole service on the deterministic simulation: init builds the default system
//!    (pasid-server, iommu-server over a VT-d model driven by the real VT-d driver, two
//!    driver servers), and the drivers map, attach and DMA, are refused what is not
//!    theirs, and end; init reports each end to iommu-server, which tears the client
//!    down.

use ipc_protocol::pasid::*;
use platform::host::HostClient;
use system_tests::pasid::{create_set, req, System};

const IOMMU_SERVER: u64 = 0x1;
const INTRUDER: u64 = 0x666;

fn show(who: &str, c: &mut HostClient, r: PasidRequest) -> Option<PasidReply> {
    let out = req(c, r);
    let shown = match &out {
        Ok(reply) => format!("{reply:?}"),
        Err(e) => format!("error {e:?}"),
    };
    println!("  {who:<14} {r:<70} -> {shown}", r = format!("{r:?}"));
    out.ok()
}

fn pasid_of(reply: Option<PasidReply>) -> Pasid {
    match reply {
        Some(PasidReply::Allocated { pasid, .. }) => pasid,
        other => panic!("expected an allocation, got {other:?}"),
    }
}

fn main() {
    println!("== pasid-server on the host platform (server thread + badged endpoint) ==");
    println!(
        "init lists one caller: iommu-server (badge {IOMMU_SERVER:#x}), at most 1000 live PASIDs."
    );
    let sys = System::start(&[(IOMMU_SERVER, 1000)]);
    let mut iommu = sys.minter.mint(IOMMU_SERVER);
    let mut intruder = sys.minter.mint(INTRUDER);

    println!("\n-- iommu-server makes a PASID set per client (owner token = client id) --");
    let set_a = create_set(&mut iommu, 0xA, 4).expect("set for client A");
    let set_b = create_set(&mut iommu, 0xB, 4).expect("set for client B");
    println!("  client A -> {set_a:?}, client B -> {set_b:?} (quota 4 each)");

    println!("\n-- client A binds its address space to two devices: one PASID, two references --");
    let bind = |max| PasidRequest::AllocShared {
        set: set_a,
        space: 0xA000,
        range: PasidRange { min: None, max },
    };
    let r = bind(None);
    let sva = pasid_of(show("iommu-server", &mut iommu, r));
    let r = bind(Some(0xff));
    show("iommu-server", &mut iommu, r);
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::Lookup { pasid: sva },
    );

    println!("\n-- client B takes private PASIDs until its quota is spent --");
    let mut b_pasids = Vec::new();
    for _ in 0..5 {
        if let Some(PasidReply::Allocated { pasid, .. }) = show(
            "iommu-server",
            &mut iommu,
            PasidRequest::Alloc {
                set: set_b,
                range: PasidRange::default(),
            },
        ) {
            b_pasids.push(pasid);
        }
    }

    println!("\n-- a client without the capability's badge gets nowhere --");
    show("intruder", &mut intruder, PasidRequest::Free { pasid: sva });
    show(
        "intruder",
        &mut intruder,
        PasidRequest::CreateSet {
            owner: 0xA,
            quota: 1,
        },
    );

    println!("\n-- client A's address space exits while one device is still bound: lazy free --");
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::Free { pasid: sva },
    );
    show("iommu-server", &mut iommu, PasidRequest::Put { pasid: sva });
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::Lookup { pasid: sva },
    );
    show("iommu-server", &mut iommu, PasidRequest::Put { pasid: sva });
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::Lookup { pasid: sva },
    );

    println!("\n-- double free and drop-without-take are refused, nothing is corrupted --");
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::Free { pasid: b_pasids[0] },
    );
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::Free { pasid: b_pasids[0] },
    );
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::Put { pasid: b_pasids[1] },
    );

    println!("\n-- client B dies: iommu-server revokes everything its owner token held --");
    show(
        "iommu-server",
        &mut iommu,
        PasidRequest::RevokeOwner { owner: 0xB },
    );
    show("iommu-server", &mut iommu, PasidRequest::QuerySpace);

    drop((iommu, intruder));
    let live = sys.stop();
    println!("\nserver stopped with {live} live PASIDs");
    assert_eq!(live, 0, "the demo should leave nothing allocated");

    simulation();
}

/// The IOMMU service on the simulation, narrated by the drivers and by init.
fn simulation() {
    use ipc_protocol::iommu::{IovaPlacement, MemoryRef, Perm};
    use sim::machine::{DmaDirection, DmaJob};
    use sim_system::client::Driver;
    use sim_system::{InitEvent, IommuKind, Programs, RunConfig, System};

    println!("\n== iommu-server, pasid-server and two drivers on the simulation (VT-d model) ==");
    let desc = system_description::default_system(IommuKind::Vtd);
    for p in &desc.processes {
        let caps: Vec<&str> = p.caps.iter().map(|c| c.name.as_str()).collect();
        println!("  {:<13} holds {}", p.name, caps.join(", "));
    }
    let job = |direction, iova, len| DmaJob {
        direction,
        iova,
        len,
        buffer_offset: 0,
        pasid: None,
        repeat: 0,
    };
    // driver-b makes its attempts once driver-a's IOAS is mapped and attached.
    let a_ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_a, ready_b) = (a_ready.clone(), a_ready);
    let (done_a, done_b) = (a_done.clone(), a_done);
    let mut programs = Programs::new();
    programs.insert(
        "driver-a".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx);
            let say = |what: String| println!("  driver-a      {what}");
            let (dev, info) = d.open("dev-a").expect("open");
            say(format!(
                "OpenDevice -> {dev:?} ({:?}, {} PASID bits)",
                info.iommu, info.pasid_bits
            ));
            let frames = d.mem[0..2].to_vec();
            let region = d.grant(&frames).expect("grant");
            say(format!(
                "GrantMemory (2 frame capabilities) -> region {region}"
            ));
            let ioas = d.alloc_ioas().expect("ioas");
            say(format!("AllocIoas -> {ioas:?}"));
            let iova = d
                .map(
                    ioas,
                    IovaPlacement::Anywhere { align: 4096 },
                    8192,
                    MemoryRef { region, offset: 0 },
                    Perm::RW,
                )
                .expect("map");
            say(format!("Map 8 KiB read-write -> IOVA {iova:#x}"));
            d.attach(dev, None, ioas).expect("attach");
            say("Attach -> done".into());
            ready_a.store(true, std::sync::atomic::Ordering::SeqCst);
            while !done_a.load(std::sync::atomic::Ordering::SeqCst) {
                d.ctx.yield_now();
            }
            d.write(0, 0, b"hello through VT-d");
            d.dma("dev-a", job(DmaDirection::FromMemory, iova, 18))
                .expect("dma");
            d.dma("dev-a", job(DmaDirection::ToMemory, iova + 4096, 18))
                .expect("dma");
            let back = d.read(1, 0, 18);
            say(format!(
                "device copies {:?} through IOVA {iova:#x} -> {:#x}: {:?}",
                "hello through VT-d",
                iova + 4096,
                String::from_utf8_lossy(&back)
            ));
            let unmapped = d.unmap(ioas, iova, 8192).expect("unmap");
            say(format!(
                "Unmap -> {unmapped} bytes (replied after the IOTLB invalidation)"
            ));
            let blocked = d.dma("dev-a", job(DmaDirection::ToMemory, iova + 4096, 18));
            say(format!(
                "device writes {:#x} again -> {blocked:?}",
                iova + 4096
            ));
            say("exits with its device still attached".into());
        }),
    );
    programs.insert(
        "driver-b".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx);
            let say = |what: String| println!("  driver-b      {what}");
            let (dev, _) = d.open("dev-b").expect("open");
            say(format!("OpenDevice -> {dev:?}"));
            while !ready_b.load(std::sync::atomic::Ordering::SeqCst) {
                d.ctx.yield_now();
            }
            let theirs = ipc_protocol::iommu::IoasId(0);
            let r = d.attach(dev, None, theirs);
            say(format!("Attach its device to driver-a's IOAS 0 -> {r:?}"));
            let r = d.unmap(theirs, 0x1000, 4096);
            say(format!("Unmap in driver-a's IOAS 0 -> {r:?}"));
            let r = d.request(&ipc_protocol::iommu::IommuRequest::CloseDevice {
                device: ipc_protocol::iommu::DeviceId(0),
            });
            say(format!("CloseDevice of driver-a's device -> {r:?}"));
            done_b.store(true, std::sync::atomic::Ordering::SeqCst);
        }),
    );
    let sys = System::build(desc, programs, &RunConfig::default()).expect("system builds");
    let report = sys.run();
    for e in sys.events() {
        match e {
            InitEvent::Died { process, cause, .. } => {
                println!("  init          {process} ended ({cause:?})")
            }
            InitEvent::TornDown {
                process, result, ..
            } => println!(
                "  init          ClientDied({process}) -> {result:?} (iommu-server detached, \
                 unmapped, invalidated, released its frames and PASIDs)"
            ),
            InitEvent::Usage { process, usage } => {
                println!("  init          ClientUsage({process}) -> {usage:?}")
            }
            InitEvent::PasidsLive(n) => {
                println!("  init          PASIDs live at pasid-server -> {n:?}")
            }
            InitEvent::Failed(why) => println!("  init          failed: {why}"),
            InitEvent::Started { .. } => {}
        }
    }
    let problems = report.problems();
    println!(
        "simulation: {} steps, seed {}, trace hash {:#018x}, problems: {}",
        report.steps,
        report.seed,
        report.trace_hash,
        if problems.is_empty() {
            "none".into()
        } else {
            problems.join("; ")
        }
    );
    assert!(
        problems.is_empty(),
        "the simulated demo went wrong: {problems:?}"
    );
}
