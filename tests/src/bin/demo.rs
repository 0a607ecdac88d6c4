//! `cargo xtask demo` (host part): pasid-server at work, as its clients see it.
//!
//! pasid-server runs on its own thread behind an endpoint; iommu-server's PASID traffic
//! and a client without authority reach it only through badged capabilities.

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
}
