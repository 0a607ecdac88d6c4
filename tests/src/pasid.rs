//! pasid-server scenarios: the server runs on its own thread behind a host endpoint and
//! clients reach it only through badged capabilities.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipc_protocol::client::{call, CallError};
use ipc_protocol::pasid::*;
use ipc_protocol::{Error, MAX_MESSAGE_BYTES};
use pasid_server::{CallerPolicy, Config, PasidServer};
use platform::host::{endpoint, HostClient, HostError, Minter};
use platform::ClientEndpoint;

use crate::{check, Outcome, Scenario};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "pasid-concurrent-clients-never-share-a-value",
        run: concurrent_clients,
    },
    Scenario {
        name: "pasid-badge-isolation",
        run: badge_isolation,
    },
    Scenario {
        name: "pasid-shared-address-space-across-devices",
        run: shared_address_space,
    },
    Scenario {
        name: "pasid-owner-revoke-after-client-death",
        run: owner_revoke,
    },
    Scenario {
        name: "pasid-malformed-input-and-fuzz-corpus",
        run: malformed_input,
    },
];

/// A running pasid-server and the capability minter for its endpoint.
pub struct System {
    pub minter: Minter,
    server: JoinHandle<(HostError, u32)>,
}

impl System {
    pub fn start(callers: &[(u64, u32)]) -> System {
        let (mut ep, minter) = endpoint();
        let config = Config {
            max_pasid: PASID_MAX,
            callers: callers
                .iter()
                .map(|&(badge, max_live)| CallerPolicy {
                    badge,
                    max_live,
                    max_sets: 64,
                    admin: false,
                })
                .collect(),
        };
        let mut server = PasidServer::new(config).expect("valid configuration");
        let server = std::thread::spawn(move || {
            let why = server.serve(&mut ep);
            (why, server.live())
        });
        System { minter, server }
    }

    /// Drops the minter and waits for the server to see every capability gone; returns
    /// the number of PASIDs still live.
    pub fn stop(self) -> u32 {
        drop(self.minter);
        let (why, live) = self.server.join().expect("server thread");
        assert_eq!(why, HostError::Closed);
        live
    }
}

type R = Result<PasidReply, CallError<HostError>>;

pub fn req(c: &mut HostClient, r: PasidRequest) -> R {
    call(c, &r)
}

pub fn create_set(c: &mut HostClient, owner: u64, quota: u32) -> Result<SetId, String> {
    match req(c, PasidRequest::CreateSet { owner, quota }) {
        Ok(PasidReply::SetCreated { set }) => Ok(set),
        r => Err(format!("CreateSet: {r:?}")),
    }
}

pub fn alloc(c: &mut HostClient, set: SetId) -> Result<Pasid, String> {
    match req(
        c,
        PasidRequest::Alloc {
            set,
            range: PasidRange::default(),
        },
    ) {
        Ok(PasidReply::Allocated { pasid, .. }) => Ok(pasid),
        r => Err(format!("Alloc: {r:?}")),
    }
}

fn expect(r: R, want: Result<PasidReply, Error>, what: &str) -> Outcome {
    let got = r.map_err(|e| match e {
        CallError::Server(e) => e,
        CallError::Endpoint(e) => panic!("{what}: endpoint failed: {e:?}"),
    });
    check(got == want, || {
        format!("{what}: got {got:?}, want {want:?}")
    })
}

fn concurrent_clients() -> Outcome {
    let sys = System::start(&[(1, 1000), (2, 1000), (3, 1000)]);
    let held = Arc::new(Mutex::new(HashSet::new()));
    let workers: Vec<_> = (1..=3u64)
        .map(|badge| {
            let mut c = sys.minter.mint(badge);
            let held = held.clone();
            std::thread::spawn(move || -> Outcome {
                let set = create_set(&mut c, badge, 64)?;
                let mut mine = Vec::new();
                for i in 0..3000 {
                    if i % 3 == 2 {
                        let p = mine.pop().unwrap();
                        held.lock().unwrap().remove(&p);
                        expect(
                            req(&mut c, PasidRequest::Free { pasid: p }),
                            Ok(PasidReply::Done),
                            "Free",
                        )?;
                    } else if mine.len() < 64 {
                        let p = alloc(&mut c, set)?;
                        check(held.lock().unwrap().insert(p), || {
                            format!("PASID {p} handed out twice")
                        })?;
                        mine.push(p);
                    }
                }
                for p in mine {
                    held.lock().unwrap().remove(&p);
                    expect(
                        req(&mut c, PasidRequest::Free { pasid: p }),
                        Ok(PasidReply::Done),
                        "Free",
                    )?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "worker panicked".to_string())??;
    }
    let live = sys.stop();
    check(live == 0, || format!("{live} PASIDs leaked"))
}

fn badge_isolation() -> Outcome {
    let sys = System::start(&[(1, 100), (2, 100)]);
    let mut a = sys.minter.mint(1);
    let mut b = sys.minter.mint(2);
    let mut outsider = sys.minter.mint(0xdead);
    let set = create_set(&mut a, 1, 10)?;
    let p = alloc(&mut a, set)?;
    for r in [
        PasidRequest::Free { pasid: p },
        PasidRequest::Get { pasid: p },
        PasidRequest::Put { pasid: p },
        PasidRequest::Lookup { pasid: p },
        PasidRequest::Alloc {
            set,
            range: PasidRange::default(),
        },
        PasidRequest::DestroySet { set },
    ] {
        expect(req(&mut b, r), Err(Error::Denied), &format!("B {r:?}"))?;
        expect(
            req(&mut outsider, r),
            Err(Error::Denied),
            &format!("outsider {r:?}"),
        )?;
    }
    // A still holds its PASID, untouched.
    match req(&mut a, PasidRequest::Lookup { pasid: p }) {
        Ok(PasidReply::Info(i)) => check(i.state == PasidState::Active && i.refs == 0, || {
            format!("{i:?}")
        })?,
        r => return Err(format!("Lookup: {r:?}")),
    }
    drop((a, b, outsider));
    let live = sys.stop();
    check(live == 1, || format!("{live} live, want 1"))
}

fn shared_address_space() -> Outcome {
    let sys = System::start(&[(1, 100)]);
    let mut iommu = sys.minter.mint(1);
    let set = create_set(&mut iommu, 7, 10)?;
    let bind = |c: &mut HostClient, max| {
        req(
            c,
            PasidRequest::AllocShared {
                set,
                space: 0x5000,
                range: PasidRange { min: None, max },
            },
        )
    };
    // Device 1 (20 PASID bits) binds the address space; device 2 (8 bits) binds it too.
    let Ok(PasidReply::Allocated { pasid, new: true }) = bind(&mut iommu, None) else {
        return Err("first bind did not allocate".into());
    };
    expect(
        bind(&mut iommu, Some(255)),
        Ok(PasidReply::Allocated { pasid, new: false }),
        "second bind",
    )?;
    // The address space ends; binds still hold it, so it drains.
    expect(
        req(&mut iommu, PasidRequest::Free { pasid }),
        Ok(PasidReply::Done),
        "Free",
    )?;
    expect(
        req(&mut iommu, PasidRequest::Put { pasid }),
        Ok(PasidReply::Done),
        "unbind 1",
    )?;
    match req(&mut iommu, PasidRequest::Lookup { pasid }) {
        Ok(PasidReply::Info(i)) => check(i.state == PasidState::Draining && i.refs == 1, || {
            format!("{i:?}")
        })?,
        r => return Err(format!("Lookup: {r:?}")),
    }
    expect(
        req(&mut iommu, PasidRequest::Put { pasid }),
        Ok(PasidReply::Done),
        "unbind 2",
    )?;
    expect(
        req(&mut iommu, PasidRequest::Lookup { pasid }),
        Err(Error::Invalid),
        "Lookup after last unbind",
    )?;
    drop(iommu);
    let live = sys.stop();
    check(live == 0, || format!("{live} live, want 0"))
}

fn owner_revoke() -> Outcome {
    // iommu-server (badge 1) keeps one owner token per client; when client 42 dies it
    // revokes everything the client held, while client 43 keeps its PASIDs.
    let sys = System::start(&[(1, 1000)]);
    let mut iommu = sys.minter.mint(1);
    let s42a = create_set(&mut iommu, 42, 100)?;
    let s42b = create_set(&mut iommu, 42, 100)?;
    let s43 = create_set(&mut iommu, 43, 100)?;
    let mut p42 = Vec::new();
    for _ in 0..10 {
        p42.push(alloc(&mut iommu, s42a)?);
        p42.push(alloc(&mut iommu, s42b)?);
    }
    let p43 = alloc(&mut iommu, s43)?;
    // A device bind still in teardown holds one of the dead client's PASIDs.
    expect(
        req(&mut iommu, PasidRequest::Get { pasid: p42[3] }),
        Ok(PasidReply::Done),
        "Get",
    )?;
    expect(
        req(&mut iommu, PasidRequest::RevokeOwner { owner: 42 }),
        Ok(PasidReply::Revoked { pasids: 20 }),
        "RevokeOwner",
    )?;
    let space = |c: &mut HostClient| match req(c, PasidRequest::QuerySpace) {
        Ok(PasidReply::Space(s)) => Ok(s.live),
        r => Err(format!("QuerySpace: {r:?}")),
    };
    check(space(&mut iommu)? == 2, || {
        "revoked PASIDs still live".into()
    })?;
    expect(
        req(&mut iommu, PasidRequest::Put { pasid: p42[3] }),
        Ok(PasidReply::Done),
        "Put",
    )?;
    check(space(&mut iommu)? == 1, || {
        "drained PASID still live".into()
    })?;
    match req(&mut iommu, PasidRequest::Lookup { pasid: p43 }) {
        Ok(PasidReply::Info(i)) => check(i.owner == 43 && i.state == PasidState::Active, || {
            format!("{i:?}")
        })?,
        r => return Err(format!("Lookup: {r:?}")),
    }
    drop(iommu);
    let live = sys.stop();
    check(live == 1, || format!("{live} live, want 1"))
}

fn malformed_input() -> Outcome {
    // Caller 1 holds a PASID; caller 2 sends the fuzz corpus and mutations of it. Some of
    // those are valid requests (they may create sets and allocate), the rest are garbage.
    let sys = System::start(&[(1, 100), (2, 1000)]);
    let mut good = sys.minter.mint(1);
    let mut noisy = sys.minter.mint(2);
    let set = create_set(&mut good, 1, 10)?;
    let mine = alloc(&mut good, set)?;
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ipc-protocol/fuzz/corpus/decode");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&corpus)
        .map_err(|e| format!("{}: {e}", corpus.display()))?
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    // Mutations of every corpus input: truncations and bit flips.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..inputs.len() {
        for _ in 0..20 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = inputs[i].clone();
            if m.is_empty() {
                continue;
            }
            let at = (seed as usize) % m.len();
            m[at] ^= (seed >> 32) as u8 | 1;
            m.truncate(((seed >> 16) as usize) % (m.len() + 1));
            inputs.push(m);
        }
    }
    let mut reply = [0u8; MAX_MESSAGE_BYTES];
    for m in &inputs {
        let n = noisy
            .call(m, &mut reply)
            .map_err(|e| format!("server stopped answering: {e:?}"))?;
        check(n >= 8, || format!("reply of {n} bytes to {m:?}"))?;
    }
    // Caller 1 is untouched and the server still serves it.
    match req(&mut good, PasidRequest::Lookup { pasid: mine }) {
        Ok(PasidReply::Info(i)) => check(
            i.state == PasidState::Active && i.refs == 0 && i.owner == 1,
            || format!("{i:?}"),
        )?,
        r => return Err(format!("Lookup of caller 1's PASID: {r:?}")),
    }
    let p = alloc(&mut good, set)?;
    expect(
        req(&mut good, PasidRequest::Free { pasid: p }),
        Ok(PasidReply::Done),
        "Free",
    )?;
    // The accounting adds up: everything live is charged to one of the two callers.
    let space = |c: &mut HostClient| match req(c, PasidRequest::QuerySpace) {
        Ok(PasidReply::Space(s)) => Ok(s),
        r => Err(format!("QuerySpace: {r:?}")),
    };
    let (g, n) = (space(&mut good)?, space(&mut noisy)?);
    check(
        g.caller_live == 1 && g.live == g.caller_live + n.caller_live,
        || format!("{g:?} / {n:?}"),
    )?;
    drop((good, noisy));
    let live = sys.stop();
    check(live == g.live, || {
        format!(
            "{} inputs: server ended with {live} live, accounted {}",
            inputs.len(),
            g.live
        )
    })
}
