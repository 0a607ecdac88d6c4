//! init on the simulation: executes a [`SystemDescription`], then supervises.
//!
//! 1. Creates every kernel object of the description from its untyped memory.
//! 2. Creates each process (not started) and gives it exactly its listed capabilities:
//!    endpoints and notifications minted with their badges (copied when unbadged),
//!    iommu-server's device capabilities, devices, IOMMU register frames and interrupts,
//!    and memory (a contiguous frame, or separate frames `<name>.0`, `<name>.1`, ...); sets
//!    its fault endpoint.
//! 3. Keeps only its own listed capabilities, its untyped memory and the process
//!    capabilities it supervises with: its originals of the objects and of the hardware
//!    are deleted. Then starts every process.
//! 4. Supervises: each process's end arrives on `faults` with the badge the description
//!    gives it. For a driver, init tells iommu-server through its administrative badge
//!    (`ClientDied`), which tears the client down; pasid-server hears of it from
//!    iommu-server, which revokes the client's PASIDs there once its devices are
//!    detached (only iommu-server knows when the hardware no longer uses them). When
//!    every driver has ended, init audits both servers (`ClientUsage`, `QuerySpace`).
//!
//! What init observes is appended to an [`InitLog`] the tests read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ipc_protocol::client::call;
use ipc_protocol::iommu::{ClientUsage, IommuReply, IommuRequest};
use ipc_protocol::pasid::{PasidReply, PasidRequest};
use ipc_protocol::Error;
use sim::endpoint::SimClient;
use sim::{CPtr, Ctx, DeathCause, Entry, Rights, SysError};
use system_description::{CapKind, ObjectKind, Role, SystemDescription};

use crate::servers::{self, IommuServerConfig};

/// What init saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitEvent {
    /// Every process was created, given its capabilities and started.
    Started { step: u64 },
    /// A process ended (reported by the kernel on init's fault endpoint).
    Died {
        process: String,
        cause: Option<DeathCause>,
        step: u64,
    },
    /// iommu-server answered init's `ClientDied` for a driver: frames released.
    TornDown {
        process: String,
        result: Result<u32, Error>,
        step: u64,
    },
    /// After every driver ended: what a driver still holds at iommu-server.
    Usage {
        process: String,
        usage: Result<ClientUsage, Error>,
    },
    /// After every driver ended: PASIDs live at pasid-server.
    PasidsLive(Result<u32, Error>),
    /// Something init could not do.
    Failed(String),
}

/// init's observations, shared with the test that built the system.
pub type InitLog = Arc<Mutex<Vec<InitEvent>>>;

/// The programs of the processes, by process name (drivers); servers are built in.
pub type Programs = BTreeMap<String, Entry>;

fn rights(r: system_description::Rights) -> Rights {
    let mut s = Rights::NONE;
    for (d, k) in [
        (system_description::Rights::READ, Rights::READ),
        (system_description::Rights::WRITE, Rights::WRITE),
        (system_description::Rights::GRANT, Rights::GRANT),
    ] {
        if r.contains(d) {
            s = s | k;
        }
    }
    s
}

fn badge(b: u64) -> Option<u64> {
    (b != 0).then_some(b)
}

/// init's program for `desc`.
pub fn program(
    desc: SystemDescription,
    mut programs: Programs,
    iommu: IommuServerConfig,
    pasid: pasid_server::Config,
    log: InitLog,
) -> Entry {
    Box::new(move |ctx: Ctx| {
        let fail = |what: String| -> ! {
            log.lock().unwrap().push(InitEvent::Failed(what.clone()));
            panic!("init: {what}");
        };
        let sys = |what: &str, r: Result<CPtr, SysError>| -> CPtr {
            r.unwrap_or_else(|e| fail(format!("{what}: {e:?}")))
        };
        let ut = ctx
            .lookup("untyped")
            .expect("the root task's untyped memory");
        let mut objects = BTreeMap::new();
        for o in &desc.objects {
            let s = match o.kind {
                ObjectKind::Endpoint => ctx.create_endpoint(ut, &o.name),
                ObjectKind::Notification => ctx.create_notification(ut, &o.name),
            };
            objects.insert(o.name.clone(), sys(&o.name, s));
        }
        let object = |name: &str| -> CPtr {
            *objects
                .get(name)
                .unwrap_or_else(|| fail(format!("no object `{name}`")))
        };
        let hardware = |name: &str| -> CPtr {
            ctx.lookup(name)
                .unwrap_or_else(|| fail(format!("the machine has no `{name}`")))
        };
        // init's own capabilities.
        let mut mine: BTreeMap<String, CPtr> = BTreeMap::new();
        let root = desc.with_role(Role::Root).next().expect("validated");
        for c in &root.caps {
            let s = match &c.kind {
                CapKind::Endpoint {
                    object: o,
                    badge: b,
                    rights: r,
                }
                | CapKind::Notification {
                    object: o,
                    badge: b,
                    rights: r,
                } => match badge(*b) {
                    Some(b) => ctx.mint(object(o), b, rights(*r)),
                    None => ctx.copy(object(o), rights(*r)),
                },
                other => fail(format!("init cannot hold {other:?}")),
            };
            mine.insert(c.name.clone(), sys(&c.name, s));
        }
        // Every other process, with exactly its capabilities.
        let mut started = Vec::new();
        let mut by_badge: BTreeMap<u64, (String, u32, Role)> = BTreeMap::new();
        for (index, p) in desc.processes.iter().enumerate() {
            let entry: Entry = match p.role {
                Role::Root => continue,
                Role::PasidServer => {
                    let c = pasid.clone();
                    Box::new(move |ctx| servers::pasid_server(ctx, c))
                }
                Role::IommuServer => {
                    let c = iommu.clone();
                    Box::new(move |ctx| servers::iommu_server(ctx, c))
                }
                Role::Driver => programs.remove(&p.name).unwrap_or_else(|| Box::new(|_| {})),
            };
            let daemon = p.role != Role::Driver;
            let slot = sys(&p.name, ctx.create_process(ut, &p.name, daemon, entry));
            for c in &p.caps {
                let give = |src: CPtr, b: Option<u64>, r: Rights, name: &str| {
                    sys(name, ctx.give(slot, src, name, b, r));
                };
                match &c.kind {
                    CapKind::Endpoint {
                        object: o,
                        badge: b,
                        rights: r,
                    }
                    | CapKind::Notification {
                        object: o,
                        badge: b,
                        rights: r,
                    } => give(object(o), badge(*b), rights(*r), &c.name),
                    CapKind::DeviceEndpoint {
                        object: o,
                        badge: b,
                        ..
                    } => give(object(o), badge(*b), Rights::WRITE | Rights::GRANT, &c.name),
                    CapKind::Device { device } => give(
                        hardware(&format!("device:{device}")),
                        None,
                        Rights::ALL,
                        &c.name,
                    ),
                    CapKind::Mmio { iommu } => give(
                        hardware(&format!("mmio:{iommu}")),
                        None,
                        Rights::ALL,
                        &c.name,
                    ),
                    CapKind::Irq { iommu } => give(
                        hardware(&format!("irq:{iommu}")),
                        None,
                        Rights::ALL,
                        &c.name,
                    ),
                    CapKind::Memory { pages, contiguous } => {
                        let frames: Vec<(String, u64)> = if *contiguous {
                            vec![(c.name.clone(), *pages)]
                        } else {
                            (0..*pages)
                                .map(|i| (format!("{}.{i}", c.name), 1))
                                .collect()
                        };
                        for (name, n) in frames {
                            let f = sys(&name, ctx.create_frame(ut, n));
                            give(f, None, Rights::RW, &name);
                            // The process holds the only capability to its memory.
                            let _ = ctx.delete(f);
                        }
                    }
                }
            }
            if let Some((ep, b)) = &p.fault_endpoint {
                let f = sys("fault endpoint", ctx.mint(object(ep), *b, Rights::WRITE));
                if let Err(e) = ctx.set_fault_handler(slot, f) {
                    fail(format!("fault endpoint of `{}`: {e:?}", p.name));
                }
                let _ = ctx.delete(f);
                by_badge.insert(*b, (p.name.clone(), index as u32, p.role));
            }
            started.push(slot);
        }
        // init keeps its own capabilities, its untyped memory and the processes.
        for (_, s) in std::mem::take(&mut objects) {
            let _ = ctx.delete(s);
        }
        for (name, s) in ctx.names() {
            if name.starts_with("device:") || name.starts_with("mmio:") || name.starts_with("irq:")
            {
                let _ = ctx.delete(s);
            }
        }
        for s in started {
            if let Err(e) = ctx.start(s) {
                fail(format!("start: {e:?}"));
            }
        }
        log.lock()
            .unwrap()
            .push(InitEvent::Started { step: ctx.now() });
        supervise(&ctx, &desc, &mine, &by_badge, &log);
    })
}

fn supervise(
    ctx: &Ctx,
    desc: &SystemDescription,
    mine: &BTreeMap<String, CPtr>,
    by_badge: &BTreeMap<u64, (String, u32, Role)>,
    log: &InitLog,
) {
    let faults = *mine.get("faults").expect("init's fault endpoint");
    let mut iommu = mine
        .get("iommu-admin")
        .map(|&s| SimClient::new(ctx.clone(), s));
    let mut pasid = mine
        .get("pasid-admin")
        .map(|&s| SimClient::new(ctx.clone(), s));
    let drivers: Vec<(String, u32)> = desc
        .processes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.role == Role::Driver)
        .map(|(i, p)| (p.name.clone(), i as u32))
        .collect();
    let mut ended = 0;
    loop {
        let m = ctx.recv(faults).expect("init's fault endpoint");
        let Some((name, index, role)) = by_badge.get(&m.badge) else {
            log.lock().unwrap().push(InitEvent::Failed(format!(
                "death message with badge {:#x}",
                m.badge
            )));
            continue;
        };
        log.lock().unwrap().push(InitEvent::Died {
            process: name.clone(),
            cause: DeathCause::decode(&m.bytes),
            step: ctx.now(),
        });
        if *role != Role::Driver {
            continue;
        }
        if let Some(iommu) = iommu.as_mut() {
            let r: Result<IommuReply, _> =
                call(iommu, &IommuRequest::ClientDied { client: *index });
            let result = match r {
                Ok(IommuReply::Released { frames }) => Ok(frames),
                Ok(_) => Err(Error::BadMessage),
                Err(ipc_protocol::client::CallError::Server(e)) => Err(e),
                Err(ipc_protocol::client::CallError::Endpoint(_)) => Err(Error::Timeout),
            };
            log.lock().unwrap().push(InitEvent::TornDown {
                process: name.clone(),
                result,
                step: ctx.now(),
            });
        }
        ended += 1;
        if ended == drivers.len() {
            audit(&drivers, iommu.as_mut(), pasid.as_mut(), log);
        }
    }
}

fn audit(
    drivers: &[(String, u32)],
    iommu: Option<&mut SimClient>,
    pasid: Option<&mut SimClient>,
    log: &InitLog,
) {
    fn server<T>(r: Result<T, ipc_protocol::client::CallError<SysError>>) -> Result<T, Error> {
        r.map_err(|e| match e {
            ipc_protocol::client::CallError::Server(e) => e,
            ipc_protocol::client::CallError::Endpoint(_) => Error::Timeout,
        })
    }
    if let Some(iommu) = iommu {
        for (name, id) in drivers {
            let usage = server(call(iommu, &IommuRequest::ClientUsage { client: *id })).and_then(
                |r: IommuReply| match r {
                    IommuReply::Usage(u) => Ok(u),
                    _ => Err(Error::BadMessage),
                },
            );
            log.lock().unwrap().push(InitEvent::Usage {
                process: name.clone(),
                usage,
            });
        }
    }
    if let Some(pasid) = pasid {
        let live =
            server(call(pasid, &PasidRequest::QuerySpace)).and_then(|r: PasidReply| match r {
                PasidReply::Space(s) => Ok(s.live),
                _ => Err(Error::BadMessage),
            });
        log.lock().unwrap().push(InitEvent::PasidsLive(live));
    }
}
