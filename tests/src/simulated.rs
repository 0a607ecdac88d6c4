//! The capability test suite: scenarios on the deterministic simulation (`sim`,
//! `sim-system`), each run on a system built by init from the default system description,
//! with iommu-server driving an IOMMU hardware model through the real driver library.
//! Every scenario runs for each IOMMU kind (SMMUv3 and VT-d).
//!
//! A scenario runs once with seed 0 and no injected kills (where exact answers are
//! checked), then under [`SEEDS`] more seeds, each killing one driver at a random kernel
//! entry or step and delaying and reordering deliveries; whatever the seed:
//! - no deadlock, no process faults, no DMA reaches freed memory;
//! - every driver's end reaches init, iommu-server's teardown of it succeeds, and
//!   afterwards the driver holds nothing at iommu-server, no PASID is live and every
//!   frame the drivers were given is free again;
//! - no DMA of a driver's device gets through after its teardown completed;
//! - the scenario's own checks hold (relaxed to "never succeeds" where a peer the check
//!   depends on may have been killed).
//!
//! A failure reads `FAIL <name> (seed <n>): <why>`; `SIM_SEED=<n>` reruns only that seed
//! (after the seed-0 run the injection is derived from); `SIM_SEEDS=<n>` runs seeds 1..=n
//! instead of [`SEEDS`] (a longer soak); `SIM_VERBOSE=1` prints each run's steps, time and
//! kills.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use ipc_protocol::iommu::{
    DeviceId, DeviceInfo, FaultQueueId, IoasId, IommuReply, IommuRequest, IovaPlacement, MemoryRef,
    PageResponseCode, Perm,
};
use ipc_protocol::records::{Fault, FaultKind};
use ipc_protocol::wire::ReplyHeader;
use ipc_protocol::{decode_reply, Error, PROTOCOL_VERSION};
use sim::machine::{DmaDirection, DmaFault, DmaJob};
use sim::{Ctx, Entry, Exit, Injection, KillPoint, Note, ObjKind, Rights, RunReport, SplitMix64};
use sim_system::client::{Driver, FaultRing};
use sim_system::{InitEvent, IommuKind, Programs, RunConfig, System};
use system_description::default::{add_driver, TABLE_PAGES};
use system_description::{default_system, Role, SystemDescription};
use zerocopy::FromBytes;

use crate::{Outcome, Scenario};

/// Seeds with fault injection per scenario (after seed 0).
pub const SEEDS: u64 = 100;

macro_rules! scenarios {
    ($($name:literal => $kind:ident, $sc:ident;)*) => {
        &[$(Scenario {
            name: $name,
            run: || run_scenario($name, IommuKind::$kind, &$sc),
        },)*]
    };
}

pub const SCENARIOS: &[Scenario] = scenarios! {
    "sim-smmuv3-map-attach-dma" => Smmuv3, MAP_ATTACH_DMA;
    "sim-vtd-map-attach-dma" => Vtd, MAP_ATTACH_DMA;
    "sim-smmuv3-device-capability-required" => Smmuv3, DEVICE_CAPABILITY;
    "sim-vtd-device-capability-required" => Vtd, DEVICE_CAPABILITY;
    "sim-smmuv3-cross-client-isolation" => Smmuv3, ISOLATION;
    "sim-vtd-cross-client-isolation" => Vtd, ISOLATION;
    "sim-smmuv3-client-killed-mid-dma" => Smmuv3, KILLED_MID_DMA;
    "sim-vtd-client-killed-mid-dma" => Vtd, KILLED_MID_DMA;
    "sim-smmuv3-unmap-then-dma-faults" => Smmuv3, UNMAP_THEN_DMA;
    "sim-vtd-unmap-then-dma-faults" => Vtd, UNMAP_THEN_DMA;
    "sim-smmuv3-fault-storm-isolation" => Smmuv3, FAULT_STORM;
    "sim-vtd-fault-storm-isolation" => Vtd, FAULT_STORM;
    "sim-smmuv3-malformed-messages-and-fuzz-corpus" => Smmuv3, MALFORMED;
    "sim-vtd-malformed-messages-and-fuzz-corpus" => Vtd, MALFORMED;
};

// ---------------------------------------------------------------------------------------
// The harness.
// ---------------------------------------------------------------------------------------

/// What drivers of one run share with each other and with the checks (written and read
/// only by the running process, so in a deterministic order).
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, u64>>>);

impl Board {
    pub fn put(&self, key: &str, value: u64) {
        self.0.lock().unwrap().insert(key.into(), value);
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.lock().unwrap().get(key).copied()
    }

    /// Waits (yielding) up to `tries` kernel entries for `key`.
    pub fn wait(&self, ctx: &Ctx, key: &str, tries: u32) -> Option<u64> {
        for _ in 0..tries {
            if let Some(v) = self.get(key) {
                return Some(v);
            }
            ctx.yield_now();
        }
        self.get(key)
    }
}

/// One run of a scenario.
#[derive(Clone)]
pub struct Run {
    pub kind: IommuKind,
    pub seed: u64,
    /// The driver the injected kill point targets, if any.
    pub victim: Option<String>,
    pub board: Board,
}

impl Run {
    /// Whether checks that depend on `driver` must be exact (it is not killed by
    /// injection in this run).
    pub fn sure_of(&self, driver: &str) -> bool {
        self.victim.as_deref() != Some(driver)
    }
}

/// A scenario: the system it runs on, the drivers' programs, the kill points that are
/// part of it and its own checks.
pub struct SimScenario {
    pub system: fn(&mut SystemDescription),
    pub programs: fn(&Run) -> Programs,
    pub kills: fn() -> Vec<KillPoint>,
    pub check: fn(&Run, &System, &RunReport) -> Result<(), String>,
}

fn default_only(_: &mut SystemDescription) {}

fn no_kills() -> Vec<KillPoint> {
    Vec::new()
}

fn no_check(_: &Run, _: &System, _: &RunReport) -> Result<(), String> {
    Ok(())
}

/// What the seed-0 run tells the injection of the other seeds: when init had started
/// everything, and each driver's kernel entries and the step it ended at.
struct Baseline {
    started: u64,
    drivers: Vec<(String, u64, u64)>,
}

/// One driver killed at a random kernel entry or step of its life in the seed-0 run,
/// deliveries delayed and reordered.
fn injection(seed: u64, base: &Baseline) -> Injection {
    let mut rng = SplitMix64::new(seed ^ 0x6b69_6c6c_706f_696e);
    let (victim, entries, end) = &base.drivers[rng.below(base.drivers.len() as u64) as usize];
    let kill = if rng.below(2) == 0 {
        KillPoint::AtEntry {
            process: victim.clone(),
            entry: 1 + rng.below((*entries).max(1)),
        }
    } else {
        KillPoint::AtStep {
            process: victim.clone(),
            step: base.started + 1 + rng.below(end.saturating_sub(base.started).max(1)),
        }
    };
    Injection {
        kills: vec![kill],
        delay_per_mille: 150,
        max_delay: 12,
        reorder_per_mille: 300,
    }
}

fn run_scenario(name: &str, kind: IommuKind, sc: &SimScenario) -> Outcome {
    let rerun = |seed: u64, why: String| {
        format!(
            "(seed {seed}): {why}\n  rerun: SIM_SEED={seed} cargo run --release -p system-tests --bin scenarios {name}"
        )
    };
    let only: Option<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => Some(
            s.parse()
                .map_err(|_| format!("SIM_SEED=`{s}` is not a seed"))?,
        ),
        Err(_) => None,
    };
    let count: u64 = match std::env::var("SIM_SEEDS") {
        Ok(s) => s
            .parse()
            .map_err(|_| format!("SIM_SEEDS=`{s}` is not a number of seeds"))?,
        Err(_) => SEEDS,
    };
    let base = run_once(kind, sc, 0, None).map_err(|e| rerun(0, e))?;
    let seeds = match only {
        Some(0) => return Ok(()),
        Some(s) => s..=s,
        None => 1..=count,
    };
    for seed in seeds {
        run_once(kind, sc, seed, Some(injection(seed, &base))).map_err(|e| rerun(seed, e))?;
    }
    Ok(())
}

fn run_once(
    kind: IommuKind,
    sc: &SimScenario,
    seed: u64,
    inject: Option<Injection>,
) -> Result<Baseline, String> {
    let mut desc = default_system(kind);
    (sc.system)(&mut desc);
    let mut inject = inject.unwrap_or_default();
    let victim = inject.kills.first().map(|k| match k {
        KillPoint::AtEntry { process, .. } | KillPoint::AtStep { process, .. } => process.clone(),
    });
    let run = Run {
        kind,
        seed,
        victim,
        board: Board::default(),
    };
    let programs = (sc.programs)(&run);
    inject.kills.extend((sc.kills)());
    let sys = System::build(
        desc,
        programs,
        &RunConfig {
            seed,
            inject,
            ..RunConfig::default()
        },
    )?;
    let t = std::time::Instant::now();
    let report = sys.run();
    if std::env::var_os("SIM_VERBOSE").is_some() {
        eprintln!(
            "seed {seed}: {} steps in {:?}, kills {:?}",
            report.steps,
            t.elapsed(),
            report
                .exits
                .iter()
                .filter(|(_, e)| matches!(e, Exit::Killed { .. }))
                .collect::<Vec<_>>()
        );
    }
    common_checks(&sys, &report)?;
    (sc.check)(&run, &sys, &report)?;
    let events = sys.events();
    let started = events
        .iter()
        .find_map(|e| match e {
            InitEvent::Started { step } => Some(*step),
            _ => None,
        })
        .unwrap_or(0);
    let drivers = sys
        .desc
        .with_role(Role::Driver)
        .map(|p| {
            let n = report
                .entries
                .iter()
                .find(|(name, _)| *name == p.name)
                .map_or(0, |(_, n)| *n);
            let end = died(&report, &p.name).unwrap_or(report.steps);
            (p.name.clone(), n, end)
        })
        .collect();
    Ok(Baseline { started, drivers })
}

/// When iommu-server's teardown of `driver` completed.
fn torn_down(events: &[InitEvent], driver: &str) -> Option<u64> {
    events.iter().find_map(|e| match e {
        InitEvent::TornDown {
            process,
            result: Ok(_),
            step,
        } if process == driver => Some(*step),
        _ => None,
    })
}

/// The step at which the kernel recorded `process`'s end.
fn died(report: &RunReport, process: &str) -> Option<u64> {
    report.notes.iter().find_map(|n| match n {
        Note::Died { step, name, .. } if name == process => Some(*step),
        _ => None,
    })
}

fn common_checks(sys: &System, r: &RunReport) -> Result<(), String> {
    if let Some(p) = r.problems().first() {
        return Err(p.clone());
    }
    for server in ["init", "pasid-server", "iommu-server"] {
        if let Some(e) = r.exit_of(server) {
            return Err(format!("`{server}` ended: {e:?}"));
        }
    }
    let events = sys.events();
    if let Some(InitEvent::Failed(why)) = events.iter().find(|e| matches!(e, InitEvent::Failed(_)))
    {
        return Err(format!("init: {why}"));
    }
    for p in sys.desc.with_role(Role::Driver) {
        let ended = events
            .iter()
            .any(|e| matches!(e, InitEvent::Died { process, .. } if *process == p.name));
        if !ended {
            return Err(format!("init never heard that `{}` ended", p.name));
        }
        let Some(t) = torn_down(&events, &p.name) else {
            let why = events.iter().find_map(|e| match e {
                InitEvent::TornDown {
                    process, result, ..
                } if *process == p.name => Some(format!("{result:?}")),
                _ => None,
            });
            return Err(format!(
                "iommu-server did not tear `{}` down: {}",
                p.name,
                why.unwrap_or_else(|| "never asked".into())
            ));
        };
        let usage = events.iter().find_map(|e| match e {
            InitEvent::Usage { process, usage } if *process == p.name => Some(*usage),
            _ => None,
        });
        match usage {
            Some(Ok(u)) if u == Default::default() => {}
            other => return Err(format!("`{}` still holds {other:?} after teardown", p.name)),
        }
        for dev in sys.desc.devices.iter().filter(|d| {
            p.caps.iter().any(|c| {
                matches!(&c.kind, system_description::CapKind::Device { device } if *device == d.name)
            })
        }) {
            let idx = sys.device_index(&dev.name).expect("device of the description");
            if let Some(Note::Dma { step, iova, .. }) = r.notes.iter().find(
                |n| matches!(n, Note::Dma { step, device, .. } if *device == idx && *step > t),
            ) {
                return Err(format!(
                    "`{}`'s DMA to {iova:#x} got through at step {step}, after its teardown at step {t}",
                    dev.name
                ));
            }
        }
    }
    if !events.contains(&InitEvent::PasidsLive(Ok(0))) {
        return Err(format!(
            "PASIDs still live after every driver ended: {:?}",
            events
                .iter()
                .find(|e| matches!(e, InitEvent::PasidsLive(_)))
        ));
    }
    let live = sys.sim.live_frame_bytes();
    if live != TABLE_PAGES * 4096 {
        return Err(format!(
            "{live:#x} bytes of frames still allocated; only iommu-server's tables ({:#x}) should be",
            TABLE_PAGES * 4096
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Helpers for drivers.
// ---------------------------------------------------------------------------------------

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A driver's usual start: its device opened, `frames` of its memory granted as one
/// region, an IOAS.
struct Setup {
    device: DeviceId,
    region: u32,
    ioas: IoasId,
}

fn setup(d: &mut Driver, dev: &str, frames: std::ops::Range<usize>) -> Setup {
    let (device, _) = d.open(dev).expect("open its own device");
    let caps = d.mem[frames].to_vec();
    let region = d.grant(&caps).expect("grant its own memory");
    let ioas = d.alloc_ioas().expect("allocate an IOAS");
    Setup {
        device,
        region,
        ioas,
    }
}

/// `region`, `offset` bytes in.
fn region_at(region: u32, offset: u64) -> MemoryRef {
    MemoryRef { region, offset }
}

/// Maps `length` bytes from the start of the setup's region read-write at `iova` in its
/// IOAS, then attaches its device to that IOAS without a PASID; returns the IOVA.
fn map_and_attach(d: &mut Driver, s: &Setup, iova: IovaPlacement, length: u64) -> u64 {
    let iova = d
        .map(s.ioas, iova, length, region_at(s.region, 0), Perm::RW)
        .expect("map");
    d.attach(s.device, None, s.ioas).expect("attach");
    iova
}

/// What iommu-server says of `device`.
fn query_device(d: &mut Driver, device: DeviceId) -> DeviceInfo {
    match d.request(&IommuRequest::QueryDevice { device }) {
        Ok(IommuReply::Info(i)) => i,
        other => panic!("QueryDevice: {other:?}"),
    }
}

/// Unless a driver was killed on purpose, every driver returned.
fn drivers_finished(run: &Run, r: &RunReport) -> Result<(), String> {
    if run.victim.is_none() && r.exits.iter().any(|(_, e)| *e != Exit::Returned) {
        return Err(format!("a driver did not finish: {:?}", r.exits));
    }
    Ok(())
}

/// Takes records from `ring` until one satisfies `want` (waiting for the fault
/// notification between looks, at most `waits` times); returns every record seen.
fn faults_until(
    d: &Driver,
    ring: &FaultRing,
    waits: u32,
    want: impl Fn(&Fault) -> bool,
) -> (Vec<Fault>, bool) {
    let mut seen = Vec::new();
    let n = d.faults.expect("a driver holds `faults`");
    for _ in 0..=waits {
        let (records, _) = ring.take(&d.ctx);
        for r in records {
            seen.push(r.expect("iommu-server writes valid records"));
        }
        if seen.iter().any(&want) {
            return (seen, true);
        }
        d.ctx.wait(n).expect("own notification");
    }
    (seen, false)
}

fn one_driver(name: &str, entry: Entry) -> Programs {
    let mut p = Programs::new();
    p.insert(name.into(), entry);
    p
}

const DEVICES: [(&str, &str); 2] = [("driver-a", "dev-a"), ("driver-b", "dev-b")];

// ---------------------------------------------------------------------------------------
// A client maps, attaches and DMAs through its device; data verified in simulated memory.
// ---------------------------------------------------------------------------------------

const MAP_ATTACH_DMA: SimScenario = SimScenario {
    system: default_only,
    programs: map_attach_dma_programs,
    kills: no_kills,
    check: map_attach_dma_check,
};

fn copy_round_trip(run: &Run, dev: &'static str, rounds: u32) -> Entry {
    let board = run.board.clone();
    let seed = run.seed;
    Box::new(move |ctx| {
        let mut d = Driver::new(ctx.clone());
        let s = setup(&mut d, dev, 0..2);
        let iova = map_and_attach(&mut d, &s, IovaPlacement::Anywhere { align: 4096 }, 8192);
        pasid_copy(&mut d, &s, dev, iova, seed);
        for round in 0..rounds {
            let data = pattern(seed ^ u64::from(round) ^ dev.len() as u64, 4096);
            d.write(0, 0, &data);
            d.dma(dev, DmaJob::new(DmaDirection::FromMemory, iova, 4096))
                .expect("DMA from memory");
            d.dma(dev, DmaJob::new(DmaDirection::ToMemory, iova + 4096, 4096))
                .expect("DMA to memory");
            assert_eq!(
                d.read(1, 0, 4096),
                data,
                "{dev}: round {round} copied wrong data"
            );
        }
        let (pa, _) = ctx.frame_info(d.mem[1]).expect("own frame");
        board.put(&format!("dst:{dev}"), pa);
        board.put(&format!("rounds:{dev}"), u64::from(rounds));
        // Right past the mapping: blocked.
        assert_eq!(
            d.dma(dev, DmaJob::new(DmaDirection::ToMemory, iova + 8192, 4096)),
            Err(DmaFault { iova: iova + 8192 })
        );
        // A region that is mapped cannot be taken back.
        assert_eq!(d.revoke(s.region), Err(Error::Busy));
    })
}

/// Where the device supports PASIDs: a second IOAS, attached under a PASID, maps the
/// second page of the region at another IOVA. DMA tagged with the PASID reads it there
/// (and the device writes what it read through the untagged attachment into the first
/// page); the untagged IOAS's addresses are not reachable with the PASID, nor is anything
/// once the PASID is detached.
fn pasid_copy(d: &mut Driver, s: &Setup, dev: &str, iova: u64, seed: u64) {
    if query_device(d, s.device).pasid_bits == 0 {
        return;
    }
    let pasid = d.alloc_pasid(s.device).expect("PASID");
    let tagged = d.alloc_ioas().expect("IOAS");
    let at = d
        .map(
            tagged,
            IovaPlacement::Fixed(iova ^ 0x40_0000),
            4096,
            region_at(s.region, 4096),
            Perm::RW,
        )
        .expect("map for the PASID");
    d.attach(s.device, Some(pasid), tagged)
        .expect("attach with a PASID");
    let data = pattern(seed ^ 0xa5a5 ^ dev.len() as u64, 4096);
    d.write(1, 0, &data);
    let with_pasid = |dir, iova| DmaJob {
        pasid: Some(pasid),
        ..DmaJob::new(dir, iova, 4096)
    };
    d.dma(dev, with_pasid(DmaDirection::FromMemory, at))
        .expect("DMA with the PASID");
    d.dma(dev, DmaJob::new(DmaDirection::ToMemory, iova, 4096))
        .expect("DMA without a PASID");
    assert_eq!(
        d.read(0, 0, 4096),
        data,
        "{dev}: DMA tagged with PASID {pasid} did not read through its IOAS"
    );
    assert_eq!(
        d.dma(dev, with_pasid(DmaDirection::FromMemory, iova)),
        Err(DmaFault { iova }),
        "{dev}: the untagged IOAS reached with a PASID"
    );
    d.detach(s.device, Some(pasid)).expect("detach the PASID");
    assert_eq!(
        d.dma(dev, with_pasid(DmaDirection::FromMemory, at)),
        Err(DmaFault { iova: at }),
        "{dev}: DMA with a detached PASID got through"
    );
    assert!(matches!(
        d.request(&IommuRequest::FreePasid { pasid }),
        Ok(IommuReply::Done)
    ));
}

fn map_attach_dma_programs(run: &Run) -> Programs {
    let mut p = Programs::new();
    for (driver, dev) in DEVICES {
        p.insert(driver.into(), copy_round_trip(run, dev, 2));
    }
    p
}

fn map_attach_dma_check(run: &Run, sys: &System, r: &RunReport) -> Result<(), String> {
    for (driver, dev) in DEVICES {
        if r.exit_of(driver) != Some(&Exit::Returned) {
            continue;
        }
        // The data the device wrote is in simulated RAM, where the driver's frame was.
        let pa = run
            .board
            .get(&format!("dst:{dev}"))
            .ok_or_else(|| format!("{driver} returned without publishing its frame"))?;
        let rounds = run.board.get(&format!("rounds:{dev}")).unwrap_or(0) as u32;
        let want = pattern(
            run.seed ^ u64::from(rounds.saturating_sub(1)) ^ dev.len() as u64,
            4096,
        );
        let mut got = vec![0u8; 4096];
        sys.phys().read(pa, &mut got).map_err(|e| e.to_string())?;
        if got != want {
            return Err(format!("{dev}'s DMA result is not in RAM at {pa:#x}"));
        }
        // And it got there by DMA of that device.
        let idx = sys.device_index(dev).expect("device");
        if !r.notes.iter().any(|n| {
            matches!(n, Note::Dma { device, paddr, write: true, .. } if *device == idx && *paddr == pa)
        }) {
            return Err(format!("no DMA of {dev} wrote {pa:#x}"));
        }
    }
    drivers_finished(run, r)
}

// ---------------------------------------------------------------------------------------
// A client without the device capability cannot open or attach it.
// ---------------------------------------------------------------------------------------

const DEVICE_CAPABILITY: SimScenario = SimScenario {
    system: with_deviceless_driver,
    programs: device_capability_programs,
    kills: no_kills,
    check: no_check,
};

fn with_deviceless_driver(d: &mut SystemDescription) {
    add_driver(d, "driver-c", 0x1C, None);
}

fn device_capability_programs(run: &Run) -> Programs {
    let mut p = map_attach_dma_programs(run);
    p.insert(
        "driver-c".into(),
        Box::new(|ctx| {
            let mut d = Driver::new(ctx.clone());
            assert!(d.device_names().is_empty());
            // Its client capability names no device.
            assert_eq!(d.request(&IommuRequest::OpenDevice), Err(Error::Denied));
            let first = d.mem[0];
            let region = d.grant(&[first]).expect("grant");
            let ioas = d.alloc_ioas().expect("IOAS");
            // The devices exist (ids 0 and 1) but are not its own, whether or not their
            // drivers opened them yet.
            for id in [0, 1] {
                let device = DeviceId(id);
                for req in [
                    IommuRequest::Attach {
                        device,
                        pasid: None,
                        ioas,
                    },
                    IommuRequest::QueryDevice { device },
                    IommuRequest::Detach {
                        device,
                        pasid: None,
                    },
                    IommuRequest::CloseDevice { device },
                    IommuRequest::AllocPasid { device },
                    IommuRequest::AllocFaultQueue {
                        device,
                        ring: region_at(region, 0),
                        depth: 4,
                    },
                ] {
                    assert_eq!(d.request(&req), Err(Error::Denied), "{req:?}");
                }
            }
            // It holds no device at all: no slot of its space is a device capability,
            // so it cannot program one either.
            for slot in 1..64 {
                if let Ok(info) = ctx.identify(slot) {
                    assert_ne!(info.kind, ObjKind::Device, "slot {slot}");
                }
            }
        }),
    );
    p
}

// ---------------------------------------------------------------------------------------
// Client A cannot map into, attach to, destroy or read faults of B's IOAS, device or
// fault queue, cannot respond to B's page requests, and cannot forge a badge.
// ---------------------------------------------------------------------------------------

const ISOLATION: SimScenario = SimScenario {
    system: default_only,
    programs: isolation_programs,
    kills: no_kills,
    check: isolation_check,
};

fn isolation_programs(run: &Run) -> Programs {
    let mut p = Programs::new();
    let board = run.board.clone();
    p.insert(
        "driver-b".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx.clone());
            let s = setup(&mut d, "dev-b", 0..2);
            let iova = map_and_attach(&mut d, &s, IovaPlacement::Fixed(0x20_0000), 8192);
            let ring = d.fault_ring(s.device, 2, 8).expect("fault queue");
            // A fault of its own, so its queue has a record.
            assert!(d
                .dma(
                    "dev-b",
                    DmaJob::new(DmaDirection::ToMemory, 0x4000_0000, 64)
                )
                .is_err());
            // A page request of its own (both simulated IOMMUs take them, with PASIDs),
            // waiting for its answer.
            let info = query_device(&mut d, s.device);
            assert!(info.pri && info.pasid_bits > 0, "page requests: {info:?}");
            let mut seen: Vec<Fault> = Vec::new();
            let cookie = {
                let pasid = d.alloc_pasid(s.device).expect("PASID");
                let second = d.alloc_ioas().expect("IOAS");
                d.attach(s.device, Some(pasid), second)
                    .expect("attach with PASID");
                let request = sim::machine::PageRequest {
                    pasid: Some(pasid),
                    address: 0x30_0000,
                    write: true,
                    last: true,
                    group: 5,
                };
                let dev = d.device("dev-b");
                assert!(ctx.device_page_request(dev, request).expect("own device"));
                let (faults, found) = faults_until(&d, &ring, 8, |f| {
                    f.kind == FaultKind::PageRequest && f.address == 0x30_0000
                });
                assert!(found, "B's page request is in B's ring: {faults:?}");
                seen.extend(faults);
                let f = *seen
                    .iter()
                    .find(|f| f.kind == FaultKind::PageRequest)
                    .expect("found");
                assert_eq!(f.pasid, Some(pasid));
                assert_ne!(f.cookie, 0);
                board.put("b:cookie", f.cookie);
                f.cookie
            };
            let (pa, _) = ctx.frame_info(d.mem[2]).expect("own frame");
            for (k, v) in [
                ("b:ioas", u64::from(s.ioas.0)),
                ("b:device", u64::from(s.device.0)),
                ("b:region", u64::from(s.region)),
                ("b:queue", u64::from(ring.queue.0)),
                ("b:ring-pa", pa),
            ] {
                board.put(k, v);
            }
            // Until A is done, then B's objects must be as B left them.
            board.wait(&ctx, "a:done", 5_000);
            let data = pattern(7, 4096);
            d.write(0, 0, &data);
            d.dma("dev-b", DmaJob::new(DmaDirection::FromMemory, iova, 4096))
                .expect("B's mapping still works");
            d.dma(
                "dev-b",
                DmaJob::new(DmaDirection::ToMemory, iova + 4096, 4096),
            )
            .expect("B's mapping still works");
            assert_eq!(d.read(1, 0, 4096), data);
            let own = |f: &Fault| f.address == 0x4000_0000 && f.device == s.device.0;
            if !seen.iter().any(own) {
                let (faults, found) = faults_until(&d, &ring, 4, own);
                assert!(found, "B's own fault is in B's ring: {faults:?}");
            }
            // B, and only B, answers its page request, once.
            let answer = IommuRequest::PageResponse {
                queue: ring.queue,
                cookie,
                code: PageResponseCode::Success,
            };
            assert_eq!(d.request(&answer), Ok(IommuReply::Done));
            assert_eq!(d.request(&answer), Err(Error::NotFound));
        }),
    );
    let board = run.board.clone();
    let sure = run.sure_of("driver-b");
    p.insert(
        "driver-a".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx.clone());
            let s = setup(&mut d, "dev-a", 0..2);
            let ring = d.fault_ring(s.device, 2, 8).expect("fault queue");
            let Some(_) = board.wait(&ctx, "b:ring-pa", 5_000) else {
                assert!(!sure, "B never published its objects");
                return;
            };
            let b = |k: &str| board.get(k).expect("published together") as u32;
            let (b_ioas, b_dev, b_region, b_queue) = (
                IoasId(b("b:ioas")),
                DeviceId(b("b:device")),
                b("b:region"),
                FaultQueueId(b("b:queue")),
            );
            let attempts = [
                IommuRequest::Map {
                    ioas: b_ioas,
                    iova: IovaPlacement::Fixed(0x80_0000),
                    length: 4096,
                    memory: region_at(s.region, 0),
                    perm: Perm::RW,
                },
                IommuRequest::Map {
                    ioas: s.ioas,
                    iova: IovaPlacement::Fixed(0x80_0000),
                    length: 4096,
                    memory: region_at(b_region, 0),
                    perm: Perm::READ,
                },
                IommuRequest::Unmap {
                    ioas: b_ioas,
                    iova: 0x20_0000,
                    length: 8192,
                },
                IommuRequest::Attach {
                    device: b_dev,
                    pasid: None,
                    ioas: s.ioas,
                },
                IommuRequest::Attach {
                    device: s.device,
                    pasid: None,
                    ioas: b_ioas,
                },
                IommuRequest::Detach {
                    device: b_dev,
                    pasid: None,
                },
                IommuRequest::DestroyIoas { ioas: b_ioas },
                IommuRequest::CloseDevice { device: b_dev },
                IommuRequest::AllocFaultQueue {
                    device: b_dev,
                    ring: region_at(s.region, 0),
                    depth: 4,
                },
                IommuRequest::FreeFaultQueue { queue: b_queue },
                IommuRequest::PageResponse {
                    queue: b_queue,
                    cookie: 1,
                    code: PageResponseCode::Success,
                },
                IommuRequest::RevokeMemory { region: b_region },
                // Administrative requests need init's badge.
                IommuRequest::ClientDied { client: 4 },
                IommuRequest::ClientUsage { client: 4 },
            ];
            for req in attempts {
                let r = d.request(&req);
                if sure {
                    assert_eq!(r, Err(Error::Denied), "{req:?}");
                } else {
                    assert!(
                        matches!(r, Err(Error::Denied | Error::NotFound)),
                        "{req:?}: {r:?}"
                    );
                }
            }
            // Its own queue answers no page request that was not delivered to it; B's
            // pending page request is B's to answer.
            assert_eq!(
                d.request(&IommuRequest::PageResponse {
                    queue: ring.queue,
                    cookie: 1,
                    code: PageResponseCode::Success,
                }),
                Err(Error::NotFound)
            );
            if let Some(cookie) = board.get("b:cookie") {
                for (queue, want) in [(ring.queue, Error::NotFound), (b_queue, Error::Denied)] {
                    let r = d.request(&IommuRequest::PageResponse {
                        queue,
                        cookie,
                        code: PageResponseCode::Success,
                    });
                    if sure {
                        assert_eq!(r, Err(want), "answering B's page request on {queue:?}");
                    } else {
                        assert!(r.is_err(), "answered B's page request: {r:?}");
                    }
                }
            }
            // B's fault ring is in memory A holds no capability to.
            let b_ring = board.get("b:ring-pa").expect("published");
            for slot in 1..128 {
                if let Ok((pa, len)) = ctx.frame_info(slot) {
                    assert!(
                        !(pa..pa + len).contains(&b_ring),
                        "slot {slot} reaches B's ring"
                    );
                }
            }
            // A's badges are fixed: no copy or mint of its capabilities speaks as B.
            let iommu = ctx.lookup("iommu").expect("own capability");
            assert_eq!(
                ctx.mint(iommu, 0x1B, Rights::WRITE),
                Err(sim::SysError::AlreadyBadged)
            );
            let copy = ctx.copy(iommu, Rights::WRITE).expect("copy");
            assert_eq!(ctx.identify(copy).expect("own copy").badge, 0x1A);
            for slot in 1..128 {
                if let Ok(info) = ctx.identify(slot) {
                    if info.kind == ObjKind::Endpoint {
                        assert_ne!(info.badge, 0x1B);
                        assert_ne!(info.badge, 0x1B0);
                        assert!(ctx.mint(slot, 0x1B, Rights::WRITE).is_err());
                    }
                }
            }
            board.put("a:done", 1);
        }),
    );
    p
}

fn isolation_check(run: &Run, _: &System, r: &RunReport) -> Result<(), String> {
    drivers_finished(run, r)
}

// ---------------------------------------------------------------------------------------
// A client killed mid-DMA: after teardown no DMA reaches its former frames, its PASIDs and
// IOASes are gone, other clients are unaffected.
// ---------------------------------------------------------------------------------------

const KILLED_MID_DMA: SimScenario = SimScenario {
    system: default_only,
    programs: killed_mid_dma_programs,
    kills: kill_driver_a,
    check: killed_mid_dma_check,
};

/// Kernel entries driver-a gets: its setup takes far fewer, the rest it spends yielding
/// while its device works.
const DRIVER_A_ENTRIES: u64 = 300;

fn kill_driver_a() -> Vec<KillPoint> {
    vec![KillPoint::AtEntry {
        process: "driver-a".into(),
        entry: DRIVER_A_ENTRIES,
    }]
}

fn killed_mid_dma_programs(run: &Run) -> Programs {
    let mut p = Programs::new();
    let board = run.board.clone();
    p.insert(
        "driver-a".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx.clone());
            let s = setup(&mut d, "dev-a", 0..4);
            let iova = map_and_attach(
                &mut d,
                &s,
                IovaPlacement::Anywhere { align: 4096 },
                4 * 4096,
            );
            // A PASID too, where the hardware seam offers them.
            let pasid_bits = query_device(&mut d, s.device).pasid_bits;
            if pasid_bits > 0 {
                let pasid = d.alloc_pasid(s.device).expect("PASID");
                let second = d.alloc_ioas().expect("IOAS");
                d.attach(s.device, Some(pasid), second)
                    .expect("attach PASID");
                board.put("a:pasid", u64::from(pasid));
            } else {
                assert_eq!(d.alloc_pasid(s.device), Err(Error::Unsupported));
            }
            for (i, &f) in d.mem[..4].iter().enumerate() {
                let (pa, _) = ctx.frame_info(f).expect("own frame");
                board.put(&format!("a:frame{i}"), pa);
            }
            // A long transfer into its four pages, repeated: the device is still busy when
            // the driver is killed.
            d.start_dma(
                "dev-a",
                DmaJob {
                    repeat: 400,
                    ..DmaJob::new(DmaDirection::ToMemory, iova, 4 * 4096)
                },
            );
            board.put("a:dma-started", ctx.now());
            loop {
                ctx.yield_now();
            }
        }),
    );
    p.insert("driver-b".into(), copy_round_trip(run, "dev-b", 6));
    p
}

fn killed_mid_dma_check(run: &Run, sys: &System, r: &RunReport) -> Result<(), String> {
    if !matches!(r.exit_of("driver-a"), Some(Exit::Killed { .. })) {
        return Err(format!(
            "driver-a was not killed: {:?}",
            r.exit_of("driver-a")
        ));
    }
    if run.sure_of("driver-b") && r.exit_of("driver-b") != Some(&Exit::Returned) {
        return Err(format!(
            "driver-b was affected: {:?}",
            r.exit_of("driver-b")
        ));
    }
    let events = sys.events();
    let t = torn_down(&events, "driver-a").ok_or("driver-a not torn down")?;
    // Nothing reaches the frames driver-a had after its teardown: neither its device
    // (checked for every scenario) nor any other.
    let frames: Vec<u64> = (0..4)
        .filter_map(|i| run.board.get(&format!("a:frame{i}")))
        .collect();
    if let Some(n) = r.notes.iter().find(|n| {
        matches!(n, Note::Dma { step, paddr, .. } if *step > t && frames.iter().any(|f| (*f..*f + 4096).contains(paddr)))
    }) {
        return Err(format!("DMA reached a former frame of driver-a after teardown: {n:?}"));
    }
    // The frames it had granted were held by iommu-server: they became free only during
    // the teardown, after the kill, never at the kill itself.
    let death = died(r, "driver-a").ok_or("no death note")?;
    for f in &frames {
        let freed = r.notes.iter().find_map(|n| match n {
            Note::FrameFreed { step, paddr, .. } if paddr == f => Some(*step),
            _ => None,
        });
        match freed {
            Some(s) if s > death && s <= t => {}
            other => {
                return Err(format!(
                    "driver-a's granted frame {f:#x} freed at {other:?}; killed at {death}, torn down at {t}"
                ))
            }
        }
    }
    if run.victim.is_none() {
        // Killed by the scenario's own kill point, with its DMA running.
        if run.board.get("a:dma-started").is_none() {
            return Err("driver-a was killed before it started its DMA".into());
        }
        let dev = sys.device_index("dev-a").expect("device");
        // Its device was transferring when it died, and the same job went on (blocked)
        // after the teardown.
        let busy_before = r.notes.iter().any(
            |n| matches!(n, Note::Dma { step, device, .. } if *device == dev && *step < death),
        );
        if !busy_before {
            return Err("dev-a did no DMA before driver-a was killed".into());
        }
        let blocked_after = r.notes.iter().any(
            |n| matches!(n, Note::DmaBlocked { step, device, .. } if *device == dev && *step > t),
        );
        if !blocked_after {
            return Err("dev-a's DMA was never blocked after the teardown".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Unmap, then DMA faults (a missing invalidation would leave the model's IOTLB
// translating).
// ---------------------------------------------------------------------------------------

const UNMAP_THEN_DMA: SimScenario = SimScenario {
    system: default_only,
    programs: unmap_then_dma_programs,
    kills: no_kills,
    check: no_check,
};

const FIXED_IOVA: u64 = 0x10_0000;

fn unmap_then_dma(seed: u64, dev: &'static str) -> Entry {
    Box::new(move |ctx| {
        let mut d = Driver::new(ctx);
        let s = setup(&mut d, dev, 0..2);
        let ring = d.fault_ring(s.device, 2, 16).expect("fault queue");
        d.attach(s.device, None, s.ioas).expect("attach");
        let at = |offset| region_at(s.region, offset);
        let one = pattern(seed ^ 1, 4096);
        let two = pattern(seed ^ 2, 4096);
        let three = pattern(seed ^ 3, 4096);
        d.map(
            s.ioas,
            IovaPlacement::Fixed(FIXED_IOVA),
            4096,
            at(0),
            Perm::RW,
        )
        .expect("map");
        let dev_cap = d.device(dev);
        d.ctx.device_write(dev_cap, 0, &one).expect("own device");
        d.dma(dev, DmaJob::new(DmaDirection::ToMemory, FIXED_IOVA, 4096))
            .expect("mapped: reaches memory");
        assert_eq!(d.read(0, 0, 4096), one);
        // Read it back: the translation is now cached by the IOMMU.
        d.dma(
            dev,
            DmaJob {
                buffer_offset: 0x4000,
                ..DmaJob::new(DmaDirection::FromMemory, FIXED_IOVA, 4096)
            },
        )
        .expect("mapped: readable");
        assert_eq!(d.unmap(s.ioas, FIXED_IOVA, 4096), Ok(4096));
        d.ctx.device_write(dev_cap, 0, &two).expect("own device");
        assert_eq!(
            d.dma(dev, DmaJob::new(DmaDirection::ToMemory, FIXED_IOVA, 4096)),
            Err(DmaFault { iova: FIXED_IOVA }),
            "DMA after unmap must fault"
        );
        assert_eq!(d.read(0, 0, 4096), one, "the unmapped frame was written");
        let (faults, found) = faults_until(&d, &ring, 8, |f| f.address == FIXED_IOVA);
        assert!(found, "no fault record for the unmapped IOVA: {faults:?}");
        let f = faults
            .iter()
            .find(|f| f.address == FIXED_IOVA)
            .expect("found");
        assert_eq!(f.kind, FaultKind::Translation);
        assert_eq!(f.device, s.device.0);
        assert_eq!(f.pasid, None);
        // The same IOVA mapped to the other frame: DMA goes there, not to the frame a
        // stale translation would name.
        d.map(
            s.ioas,
            IovaPlacement::Fixed(FIXED_IOVA),
            4096,
            at(4096),
            Perm::RW,
        )
        .expect("map again");
        d.ctx.device_write(dev_cap, 0, &three).expect("own device");
        d.dma(dev, DmaJob::new(DmaDirection::ToMemory, FIXED_IOVA, 4096))
            .expect("mapped again: reaches memory");
        assert_eq!(d.read(1, 0, 4096), three);
        assert_eq!(d.read(0, 0, 4096), one);
        // Read-only now: a write faults as a permission fault and changes nothing.
        assert_eq!(d.unmap(s.ioas, FIXED_IOVA, 4096), Ok(4096));
        d.map(
            s.ioas,
            IovaPlacement::Fixed(FIXED_IOVA),
            4096,
            at(4096),
            Perm::READ,
        )
        .expect("map read-only");
        d.dma(
            dev,
            DmaJob {
                buffer_offset: 0x4000,
                ..DmaJob::new(DmaDirection::FromMemory, FIXED_IOVA, 4096)
            },
        )
        .expect("read-only: readable");
        assert!(d
            .dma(dev, DmaJob::new(DmaDirection::ToMemory, FIXED_IOVA, 4096))
            .is_err());
        assert_eq!(d.read(1, 0, 4096), three, "a read-only page was written");
    })
}

fn unmap_then_dma_programs(run: &Run) -> Programs {
    let mut p = Programs::new();
    for (driver, dev) in DEVICES {
        p.insert(driver.into(), unmap_then_dma(run.seed, dev));
    }
    p
}

// ---------------------------------------------------------------------------------------
// A fault storm from one device does not stop another client's faults from being
// delivered, and lost events are counted.
// ---------------------------------------------------------------------------------------

const FAULT_STORM: SimScenario = SimScenario {
    system: default_only,
    programs: fault_storm_programs,
    kills: no_kills,
    check: no_check,
};

const STORM: u32 = 300;

fn fault_storm_programs(run: &Run) -> Programs {
    let mut p = Programs::new();
    let board = run.board.clone();
    p.insert(
        "driver-a".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx);
            let s = setup(&mut d, "dev-a", 0..1);
            let ring = d.fault_ring(s.device, 2, 2).expect("fault queue");
            d.attach(s.device, None, s.ioas).expect("attach");
            board.put("a:storm", 1);
            let r = d.dma(
                "dev-a",
                DmaJob {
                    repeat: STORM,
                    ..DmaJob::new(DmaDirection::FromMemory, 0x4000_0000, 4096)
                },
            );
            assert_eq!(r, Err(DmaFault { iova: 0x4000_0000 }));
            // Its ring holds two records; the rest of what reached iommu-server is
            // counted as lost, not dropped silently.
            d.ctx.yield_now();
            let (records, lost) = ring.take(&d.ctx);
            assert!(records.len() <= 2);
            assert!(records
                .iter()
                .all(|r| matches!(r, Ok(f) if f.address == 0x4000_0000)));
            assert!(
                lost > 0,
                "a storm of {STORM} faults into a ring of 2 lost nothing"
            );
            board.put("a:lost", u64::from(lost));
        }),
    );
    let board = run.board.clone();
    let sure = run.sure_of("driver-a");
    p.insert(
        "driver-b".into(),
        Box::new(move |ctx| {
            let mut d = Driver::new(ctx.clone());
            let s = setup(&mut d, "dev-b", 0..1);
            let ring = d.fault_ring(s.device, 2, 16).expect("fault queue");
            d.attach(s.device, None, s.ioas).expect("attach");
            let storming = board.wait(&ctx, "a:storm", 5_000).is_some();
            assert!(storming || !sure, "driver-a never started its storm");
            // B's faults get through while A's device storms; its DMA may be retried if
            // the hardware itself lost the record (counted there).
            let mut found = false;
            'tries: for _ in 0..5 {
                assert!(d
                    .dma(
                        "dev-b",
                        DmaJob::new(DmaDirection::ToMemory, 0x5000_0000, 64)
                    )
                    .is_err());
                for _ in 0..200 {
                    let (records, _) = ring.take(&ctx);
                    if records.iter().any(|r| {
                        matches!(r, Ok(f) if f.address == 0x5000_0000 && f.device == s.device.0
                            && f.kind == FaultKind::Translation)
                    }) {
                        found = true;
                        break 'tries;
                    }
                    ctx.yield_now();
                }
            }
            assert!(found, "driver-b's fault was not delivered during the storm");
        }),
    );
    p
}

// ---------------------------------------------------------------------------------------
// Malformed and truncated messages, unknown versions and labels, and the protocol fuzz
// corpus: each gets an error reply and the server keeps serving.
// ---------------------------------------------------------------------------------------

const MALFORMED: SimScenario = SimScenario {
    system: default_only,
    programs: malformed_programs,
    kills: no_kills,
    check: no_check,
};

/// The committed fuzz corpus of the protocol decoders.
fn corpus() -> &'static Vec<Vec<u8>> {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ipc-protocol/fuzz/corpus/decode");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|f| std::fs::read(f).ok())
            .collect()
    })
}

/// Checks a reply to `request`: a reply header of this protocol version naming the
/// request's label (0 when even the header was cut), a known status, and a body that
/// decodes when the status is success. Returns the status.
fn check_reply(request: &[u8], reply: &[u8]) -> u32 {
    let (h, _) = ReplyHeader::read_from_prefix(reply)
        .unwrap_or_else(|_| panic!("reply to {request:02x?} is not a reply: {reply:02x?}"));
    assert_eq!(h.version.get(), PROTOCOL_VERSION);
    let label = if request.len() >= 4 {
        u16::from_le_bytes([request[2], request[3]])
    } else {
        0
    };
    assert_eq!(h.label.get(), label, "reply to {request:02x?}");
    let status = h.status.get();
    if status == 0 {
        decode_reply::<IommuReply>(label, reply)
            .unwrap_or_else(|e| panic!("success reply to {request:02x?} does not decode: {e}"));
    } else {
        assert!(Error::from_code(status).is_some(), "status {status}");
    }
    status
}

fn malformed_programs(run: &Run) -> Programs {
    let mut p = one_driver(
        "driver-a",
        Box::new(|ctx| {
            let mut d = Driver::new(ctx);
            let (device, _) = d.open("dev-a").expect("open");
            let valid = {
                let mut b = [0u8; 256];
                let n = ipc_protocol::encode_request(
                    &IommuRequest::Unmap {
                        ioas: IoasId(0),
                        iova: 0x1000,
                        length: 0x1000,
                    },
                    &mut b,
                )
                .expect("encodes");
                b[..n].to_vec()
            };
            let code = |e: Error| e.code();
            // Truncated at every length.
            for cut in 0..valid.len() {
                let status = check_reply(&valid[..cut], &d.raw(&valid[..cut]));
                assert_eq!(status, code(Error::BadMessage), "cut at {cut}");
            }
            // A trailing byte, another version, unknown labels, too long.
            let mut long = valid.clone();
            long.push(0);
            assert_eq!(check_reply(&long, &d.raw(&long)), code(Error::BadMessage));
            let mut version = valid.clone();
            version[0] = 9;
            assert_eq!(
                check_reply(&version, &d.raw(&version)),
                code(Error::BadVersion)
            );
            for label in [0x0100u16, 0x0214, 0xffff] {
                let mut m = valid.clone();
                m[2..4].copy_from_slice(&label.to_le_bytes());
                assert_eq!(check_reply(&m, &d.raw(&m)), code(Error::UnknownLabel));
            }
            let mut huge = valid.clone();
            huge.resize(300, 0xa5);
            assert_eq!(check_reply(&huge, &d.raw(&huge)), code(Error::BadMessage));
            // The whole fuzz corpus.
            for m in corpus() {
                check_reply(m, &d.raw(m));
            }
            // Still serving (whatever the corpus's valid requests did to the device).
            let _ = device;
            let frame = d.mem[5];
            d.grant(&[frame]).expect("still serving");
            assert!(matches!(d.open("dev-a"), Ok(_) | Err(Error::Busy)));
        }),
    );
    p.insert("driver-b".into(), copy_round_trip(run, "dev-b", 3));
    p
}
