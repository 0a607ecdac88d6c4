//! One test per lifecycle rule of the PASID authority.

use ipc_protocol::pasid::*;
use ipc_protocol::Error;
use pasid_server::{CallerPolicy, Config, PasidServer};

const IOMMU: u64 = 0x10;
const OTHER: u64 = 0x20;
const INIT: u64 = 0x30;
const STRANGER: u64 = 0x99;

fn server(max_pasid: Pasid) -> PasidServer {
    let policy = |badge, admin| CallerPolicy {
        badge,
        max_live: u32::MAX,
        max_sets: 64,
        admin,
    };
    PasidServer::new(Config {
        max_pasid,
        callers: vec![
            policy(IOMMU, false),
            policy(OTHER, false),
            policy(INIT, true),
        ],
    })
    .unwrap()
}

fn set(s: &mut PasidServer, caller: u64, owner: u64, quota: u32) -> SetId {
    match s.handle(caller, &PasidRequest::CreateSet { owner, quota }) {
        Ok(PasidReply::SetCreated { set }) => set,
        r => panic!("create set: {r:?}"),
    }
}

fn alloc(s: &mut PasidServer, caller: u64, set: SetId) -> Result<Pasid, Error> {
    s.handle(
        caller,
        &PasidRequest::Alloc {
            set,
            range: PasidRange::default(),
        },
    )
    .map(|r| match r {
        PasidReply::Allocated { pasid, new: true } => pasid,
        r => panic!("alloc: {r:?}"),
    })
}

fn shared(
    s: &mut PasidServer,
    set: SetId,
    space: u64,
    range: PasidRange,
) -> Result<(Pasid, bool), Error> {
    s.handle(IOMMU, &PasidRequest::AllocShared { set, space, range })
        .map(|r| match r {
            PasidReply::Allocated { pasid, new } => (pasid, new),
            r => panic!("alloc shared: {r:?}"),
        })
}

fn call(s: &mut PasidServer, caller: u64, req: PasidRequest) -> Result<PasidReply, Error> {
    s.handle(caller, &req)
}

fn info(s: &mut PasidServer, pasid: Pasid) -> PasidInfo {
    match call(s, IOMMU, PasidRequest::Lookup { pasid }) {
        Ok(PasidReply::Info(i)) => i,
        r => panic!("lookup: {r:?}"),
    }
}

#[test]
fn pasid_zero_is_reserved_and_the_full_space_is_allocatable_then_exhausted() {
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 1, u32::MAX);
    let mut seen = vec![false; (PASID_MAX + 1) as usize];
    for _ in 0..PASID_MAX {
        let p = alloc(&mut s, IOMMU, a).unwrap();
        assert!(
            p != 0 && p <= PASID_MAX && !seen[p as usize],
            "bad or duplicate PASID {p}"
        );
        seen[p as usize] = true;
    }
    assert_eq!(s.live(), 1_048_575);
    assert_eq!(alloc(&mut s, IOMMU, a), Err(Error::NoSpace));
    assert_eq!(
        shared(&mut s, a, 7, PasidRange::default()),
        Err(Error::NoSpace)
    );
    // Freeing one makes exactly that one allocatable again.
    call(&mut s, IOMMU, PasidRequest::Free { pasid: 4242 }).unwrap();
    assert_eq!(alloc(&mut s, IOMMU, a), Ok(4242));
}

#[test]
fn lowered_maximum_and_device_ranges_are_respected() {
    // Hardware with 5 PASID bits: 1..=31.
    let max = Config::max_for_bits(5);
    assert_eq!(max, 31);
    assert_eq!(Config::max_for_bits(20), PASID_MAX);
    let mut s = server(max);
    let a = set(&mut s, IOMMU, 1, 100);
    let r = |min, max| PasidRange { min, max };
    let p = s.handle(
        IOMMU,
        &PasidRequest::Alloc {
            set: a,
            range: r(Some(10), Some(12)),
        },
    );
    assert_eq!(
        p,
        Ok(PasidReply::Allocated {
            pasid: 10,
            new: true
        })
    );
    assert_eq!(
        s.handle(
            IOMMU,
            &PasidRequest::Alloc {
                set: a,
                range: r(Some(0), None)
            }
        ),
        Err(Error::Invalid)
    );
    assert_eq!(
        s.handle(
            IOMMU,
            &PasidRequest::Alloc {
                set: a,
                range: r(Some(5), Some(4))
            }
        ),
        Err(Error::Invalid)
    );
    assert_eq!(
        s.handle(
            IOMMU,
            &PasidRequest::Alloc {
                set: a,
                range: r(Some(40), None)
            }
        ),
        Err(Error::Invalid)
    );
    for _ in 0..30 {
        alloc(&mut s, IOMMU, a).unwrap();
    }
    assert_eq!(alloc(&mut s, IOMMU, a), Err(Error::NoSpace));
    assert!(PasidServer::new(Config {
        max_pasid: PASID_MAX + 1,
        callers: vec![]
    })
    .is_err());
}

#[test]
fn set_quota_and_caller_limit_are_enforced_and_freed_values_recredit() {
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 1, 2);
    let p1 = alloc(&mut s, IOMMU, a).unwrap();
    let _p2 = alloc(&mut s, IOMMU, a).unwrap();
    assert_eq!(alloc(&mut s, IOMMU, a), Err(Error::QuotaExceeded));
    // A draining PASID still counts against the quota until its last reference drops.
    call(&mut s, IOMMU, PasidRequest::Get { pasid: p1 }).unwrap();
    call(&mut s, IOMMU, PasidRequest::Free { pasid: p1 }).unwrap();
    assert_eq!(alloc(&mut s, IOMMU, a), Err(Error::QuotaExceeded));
    call(&mut s, IOMMU, PasidRequest::Put { pasid: p1 }).unwrap();
    assert!(alloc(&mut s, IOMMU, a).is_ok());
    assert_eq!(
        call(
            &mut s,
            IOMMU,
            PasidRequest::CreateSet { owner: 1, quota: 0 }
        ),
        Err(Error::Invalid)
    );

    // Per-caller limit, across sets.
    let mut s = PasidServer::new(Config {
        max_pasid: PASID_MAX,
        callers: vec![CallerPolicy {
            badge: IOMMU,
            max_live: 3,
            max_sets: 2,
            admin: false,
        }],
    })
    .unwrap();
    let a = set(&mut s, IOMMU, 1, 10);
    let b = set(&mut s, IOMMU, 2, 10);
    assert_eq!(
        call(
            &mut s,
            IOMMU,
            PasidRequest::CreateSet { owner: 3, quota: 1 }
        ),
        Err(Error::QuotaExceeded)
    );
    alloc(&mut s, IOMMU, a).unwrap();
    alloc(&mut s, IOMMU, b).unwrap();
    alloc(&mut s, IOMMU, b).unwrap();
    assert_eq!(alloc(&mut s, IOMMU, a), Err(Error::QuotaExceeded));
    match call(&mut s, IOMMU, PasidRequest::QuerySpace) {
        Ok(PasidReply::Space(i)) => assert_eq!((i.live, i.caller_live, i.caller_limit), (3, 3, 3)),
        r => panic!("{r:?}"),
    }
}

#[test]
fn one_pasid_per_address_space_shared_by_every_bind() {
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 1, 100);
    let (p, new) = shared(&mut s, a, 0xAA, PasidRange::default()).unwrap();
    assert!(new);
    // A second device binding the same address space gets the same PASID, one more ref.
    assert_eq!(
        shared(&mut s, a, 0xAA, PasidRange::default()),
        Ok((p, false))
    );
    assert_eq!(info(&mut s, p).refs, 2);
    assert_eq!(info(&mut s, p).space, Some(0xAA));
    // Another address space gets another PASID.
    let (q, _) = shared(&mut s, a, 0xBB, PasidRange::default()).unwrap();
    assert_ne!(p, q);
    // A device too narrow for the address space's PASID is refused, not given another.
    let narrow = PasidRange {
        min: Some(p + 1),
        max: None,
    };
    assert_eq!(shared(&mut s, a, 0xAA, narrow), Err(Error::Unsupported));
    // The same address space cannot be charged to a second set.
    let b = set(&mut s, IOMMU, 2, 100);
    assert_eq!(
        shared(&mut s, b, 0xAA, PasidRange::default()),
        Err(Error::Exists)
    );
}

#[test]
fn lazy_free_keeps_the_value_until_the_last_reference_drops() {
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 1, 100);
    let (p, _) = shared(&mut s, a, 0xAA, PasidRange::default()).unwrap(); // bind: 1 ref
    call(&mut s, IOMMU, PasidRequest::Get { pasid: p }).unwrap(); // a task: 2 refs
                                                                  // The address space goes away: the allocation is released, but refs remain.
    call(&mut s, IOMMU, PasidRequest::Free { pasid: p }).unwrap();
    let i = info(&mut s, p);
    assert_eq!((i.state, i.refs, i.space), (PasidState::Draining, 2, None));
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Get { pasid: p }),
        Err(Error::Invalid)
    );
    call(&mut s, IOMMU, PasidRequest::Put { pasid: p }).unwrap();
    assert_eq!(info(&mut s, p).refs, 1);
    call(&mut s, IOMMU, PasidRequest::Put { pasid: p }).unwrap();
    // Now it is really free.
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Lookup { pasid: p }),
        Err(Error::Invalid)
    );
    assert_eq!(s.live(), 0);
}

#[test]
fn a_referenced_value_is_never_handed_out_again() {
    let mut s = server(63);
    let a = set(&mut s, IOMMU, 1, 100);
    let p = alloc(&mut s, IOMMU, a).unwrap();
    call(&mut s, IOMMU, PasidRequest::Get { pasid: p }).unwrap();
    call(&mut s, IOMMU, PasidRequest::Free { pasid: p }).unwrap();
    // Exhaust everything else: p must not come back while referenced.
    let mut got = Vec::new();
    while let Ok(q) = alloc(&mut s, IOMMU, a) {
        got.push(q);
    }
    assert_eq!(got.len(), 62);
    assert!(!got.contains(&p));
    // After the last reference drops, p is the only free value and comes back.
    call(&mut s, IOMMU, PasidRequest::Put { pasid: p }).unwrap();
    assert_eq!(alloc(&mut s, IOMMU, a), Ok(p));

    // A new bind of an address space whose PASID is draining gets a fresh value.
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 1, 100);
    let (p, _) = shared(&mut s, a, 0xAA, PasidRange::default()).unwrap();
    call(&mut s, IOMMU, PasidRequest::Free { pasid: p }).unwrap();
    let (q, new) = shared(&mut s, a, 0xAA, PasidRange::default()).unwrap();
    assert!(new);
    assert_ne!(p, q);
}

#[test]
fn double_free_drop_without_take_and_free_values_are_errors() {
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 1, 100);
    let p = alloc(&mut s, IOMMU, a).unwrap();
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Put { pasid: p }),
        Err(Error::Invalid)
    );
    call(&mut s, IOMMU, PasidRequest::Get { pasid: p }).unwrap();
    call(&mut s, IOMMU, PasidRequest::Free { pasid: p }).unwrap();
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Free { pasid: p }),
        Err(Error::Invalid)
    );
    call(&mut s, IOMMU, PasidRequest::Put { pasid: p }).unwrap();
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Put { pasid: p }),
        Err(Error::Invalid)
    );
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Free { pasid: p }),
        Err(Error::Invalid)
    );
    for pasid in [0, 12345, PASID_MAX, PASID_MAX + 1, u32::MAX] {
        for req in [
            PasidRequest::Get { pasid },
            PasidRequest::Put { pasid },
            PasidRequest::Free { pasid },
        ] {
            assert_eq!(call(&mut s, IOMMU, req), Err(Error::Invalid), "{req:?}");
        }
    }
    // Nothing was corrupted: the state is consistent and the value is reusable.
    assert_eq!(s.live(), 0);
    assert_eq!(alloc(&mut s, IOMMU, a), Ok(p));
}

#[test]
fn foreign_callers_are_denied() {
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 1, 100);
    let p = alloc(&mut s, IOMMU, a).unwrap();
    for req in [
        PasidRequest::Get { pasid: p },
        PasidRequest::Put { pasid: p },
        PasidRequest::Free { pasid: p },
        PasidRequest::Lookup { pasid: p },
        PasidRequest::DestroySet { set: a },
        PasidRequest::Alloc {
            set: a,
            range: PasidRange::default(),
        },
        PasidRequest::AllocShared {
            set: a,
            space: 1,
            range: PasidRange::default(),
        },
    ] {
        assert_eq!(call(&mut s, OTHER, req), Err(Error::Denied), "{req:?}");
    }
    // A badge the configuration does not list can do nothing at all.
    assert_eq!(
        call(&mut s, STRANGER, PasidRequest::QuerySpace),
        Err(Error::Denied)
    );
    assert_eq!(
        call(
            &mut s,
            STRANGER,
            PasidRequest::CreateSet { owner: 1, quota: 1 }
        ),
        Err(Error::Denied)
    );
    // RevokeOwner is scoped to the caller: OTHER revoking owner 1 touches only its own sets.
    assert_eq!(
        call(&mut s, OTHER, PasidRequest::RevokeOwner { owner: 1 }),
        Ok(PasidReply::Revoked { pasids: 0 })
    );
    assert_eq!(info(&mut s, p).state, PasidState::Active);
    // The admin (init) may look up and destroy.
    assert!(matches!(
        call(&mut s, INIT, PasidRequest::Lookup { pasid: p }),
        Ok(PasidReply::Info(_))
    ));
    assert_eq!(
        call(&mut s, INIT, PasidRequest::DestroySet { set: a }),
        Ok(PasidReply::Revoked { pasids: 1 })
    );
    assert_eq!(s.live(), 0);
}

#[test]
fn set_revoke_frees_members_and_drains_referenced_ones() {
    let mut s = server(PASID_MAX);
    let a = set(&mut s, IOMMU, 7, 100);
    let b = set(&mut s, IOMMU, 7, 100);
    let c = set(&mut s, IOMMU, 8, 100);
    let pa: Vec<_> = (0..5).map(|_| alloc(&mut s, IOMMU, a).unwrap()).collect();
    let (shared_a, _) = shared(&mut s, a, 0xAA, PasidRange::default()).unwrap(); // 1 ref
    let pb = alloc(&mut s, IOMMU, b).unwrap();
    let pc = alloc(&mut s, IOMMU, c).unwrap();
    call(&mut s, IOMMU, PasidRequest::Get { pasid: pa[2] }).unwrap();

    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::DestroySet { set: a }),
        Ok(PasidReply::Revoked { pasids: 6 })
    );
    // Unreferenced members are free; referenced ones drain and keep their value.
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Lookup { pasid: pa[0] }),
        Err(Error::Invalid)
    );
    let i = info(&mut s, pa[2]);
    assert_eq!((i.state, i.set), (PasidState::Draining, None));
    assert_eq!(info(&mut s, shared_a).state, PasidState::Draining);
    // The set handle is dead: no allocation, no second destroy.
    assert_eq!(alloc(&mut s, IOMMU, a), Err(Error::NotFound));
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::DestroySet { set: a }),
        Err(Error::NotFound)
    );
    // Draining members go once their references drop; the set slot is then recycled, and
    // the old handle still names nothing.
    call(&mut s, IOMMU, PasidRequest::Put { pasid: pa[2] }).unwrap();
    call(&mut s, IOMMU, PasidRequest::Put { pasid: shared_a }).unwrap();
    let d = set(&mut s, IOMMU, 9, 100);
    assert_ne!(d, a);
    assert_eq!(alloc(&mut s, IOMMU, a), Err(Error::NotFound));

    // Revoking an owner revokes all of its sets, and only those.
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::RevokeOwner { owner: 7 }),
        Ok(PasidReply::Revoked { pasids: 1 })
    );
    assert_eq!(
        call(&mut s, IOMMU, PasidRequest::Lookup { pasid: pb }),
        Err(Error::Invalid)
    );
    assert_eq!(info(&mut s, pc).state, PasidState::Active);
    assert_eq!(s.live(), 1);
}
