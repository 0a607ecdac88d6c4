//! The simulated kernel: determinism, capabilities, IPC, death, fault injection, devices.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use sim::machine::{
    Access, DmaDirection, DmaFault, DmaJob, DmaRequest, IommuUnit, JobStatus, RegisterIo,
};
use sim::{
    CPtr, Ctx, DeathCause, Exit, Grant, Injection, KillPoint, Note, Object, Received, RecvKind,
    Rights, RunReport, Sim, SimConfig, SysError,
};

fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ram_bytes: 4 << 20,
        ..SimConfig::default()
    }
}

fn grant<'a>(name: &'a str, object: Object, badge: u64, rights: Rights) -> Grant<'a> {
    Grant {
        name,
        object,
        badge,
        rights,
    }
}

type Log = Arc<Mutex<Vec<String>>>;

/// A configuration whose injection kills one process at `kill`.
fn config_killing(seed: u64, kill: KillPoint) -> SimConfig {
    SimConfig {
        inject: Injection {
            kills: vec![kill],
            ..Injection::default()
        },
        ..config(seed)
    }
}

/// Fails the test with the run's problems if it had any.
#[track_caller]
fn assert_no_problems(r: &RunReport) {
    assert!(r.problems().is_empty(), "{:?}", r.problems());
}

/// Spawns the root process; `body` gets its context and its untyped memory.
fn spawn_root(sim: &Sim, body: impl FnOnce(Ctx, CPtr) + Send + 'static) {
    sim.spawn_root(
        "root",
        Box::new(move |ctx| {
            let ut = ctx.lookup("untyped").unwrap();
            body(ctx, ut)
        }),
    );
}

/// Spawns `name` holding the one capability `cap`; `body` gets its context and that
/// capability's slot.
fn spawn_holding(
    sim: &Sim,
    name: &str,
    daemon: bool,
    cap: Grant<'_>,
    body: impl FnOnce(Ctx, CPtr) + Send + 'static,
) {
    let cap_name = cap.name.to_string();
    sim.spawn(
        name,
        daemon,
        &[cap],
        Box::new(move |ctx| {
            let slot = ctx.lookup(&cap_name).unwrap();
            body(ctx, slot)
        }),
    );
}

/// Spawns a daemon `name` holding `ep` with the read right; `body` gets its context and
/// the endpoint's slot.
fn spawn_server_on(
    sim: &Sim,
    name: &str,
    ep: Object,
    body: impl FnOnce(Ctx, CPtr) + Send + 'static,
) {
    spawn_holding(sim, name, true, grant("ep", ep, 0, Rights::READ), body);
}

/// Spawns `name` holding `ep` with `badge` and the write right; `body` gets its context
/// and the endpoint's slot.
fn spawn_client_of(
    sim: &Sim,
    name: &str,
    ep: Object,
    badge: u64,
    body: impl FnOnce(Ctx, CPtr) + Send + 'static,
) {
    spawn_holding(
        sim,
        name,
        false,
        grant("ep", ep, badge, Rights::WRITE),
        body,
    );
}

/// A daemon `server` holding `ep` with the read right that receives forever, logs
/// `record(message)` and replies with nothing.
fn spawn_recording_server(sim: &Sim, ep: Object, log: Log, record: fn(&Received) -> String) {
    spawn_server_on(sim, "server", ep, move |ctx, ep| loop {
        let m = ctx.recv(ep).unwrap();
        log.lock().unwrap().push(record(&m));
        ctx.reply(&[], &[]).unwrap();
    });
}

/// The step at which the process `name` died.
fn death_step(r: &RunReport, name: &str) -> u64 {
    r.notes
        .iter()
        .find_map(|n| match n {
            Note::Died { step, name: n, .. } if n == name => Some(*step),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no death of `{name}` in {:?}", r.notes))
}

/// Three clients call an echo server `calls` times each; returns the order in which the
/// server saw them and the run's trace hash.
fn echo_system(seed: u64, calls: u32, inject: Injection) -> (Vec<String>, RunReport) {
    let sim = Sim::new(SimConfig {
        inject,
        ..config(seed)
    });
    let ep = sim.endpoint("echo");
    let log: Log = Arc::default();
    let l = log.clone();
    spawn_server_on(&sim, "server", ep, move |ctx, ep| {
        let mut m = ctx.recv(ep).unwrap();
        loop {
            l.lock()
                .unwrap()
                .push(format!("{}:{}", m.badge, m.bytes[0]));
            let reply = [m.bytes[0].wrapping_add(1)];
            m = ctx.reply_recv(ep, &reply, &[]).unwrap();
        }
    });
    for c in 1..=3u64 {
        spawn_client_of(&sim, &format!("client{c}"), ep, c, move |ctx, ep| {
            for i in 0..calls {
                let r = ctx.call(ep, &[i as u8], &[]).unwrap();
                assert_eq!(r.bytes, [i as u8 + 1]);
            }
        });
    }
    let report = sim.run();
    let seen = log.lock().unwrap().clone();
    (seen, report)
}

#[test]
fn same_seed_same_trace_different_seeds_different_interleavings() {
    let (seen_a, a) = echo_system(42, 5, Injection::default());
    let (seen_b, b) = echo_system(42, 5, Injection::default());
    assert_no_problems(&a);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(seen_a, seen_b);
    assert_eq!(seen_a.len(), 15);
    // Each client's calls reach the server in its own order.
    for c in 1..=3 {
        let mine: Vec<&String> = seen_a
            .iter()
            .filter(|s| s.starts_with(&format!("{c}:")))
            .collect();
        let want: Vec<String> = (0..5).map(|i| format!("{c}:{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
    let orders: BTreeSet<Vec<String>> = (0..10)
        .map(|s| echo_system(s, 5, Injection::default()).0)
        .collect();
    assert!(
        orders.len() > 3,
        "ten seeds gave only {} interleavings",
        orders.len()
    );
    let hashes: BTreeSet<u64> = (0..10)
        .map(|s| echo_system(s, 5, Injection::default()).1.trace_hash)
        .collect();
    assert!(hashes.len() > 3);
}

#[test]
fn delays_and_reordering_keep_each_senders_order_and_lose_nothing() {
    let inject = Injection {
        delay_per_mille: 500,
        max_delay: 20,
        reorder_per_mille: 500,
        ..Injection::default()
    };
    let (plain, _) = echo_system(9, 6, Injection::default());
    let mut differs = false;
    for seed in 0..20 {
        let (seen, report) = echo_system(seed, 6, inject.clone());
        assert_no_problems(&report);
        assert_eq!(seen.len(), 18);
        for c in 1..=3 {
            let mine: Vec<String> = seen
                .iter()
                .filter(|s| s.starts_with(&format!("{c}:")))
                .cloned()
                .collect();
            assert_eq!(mine, (0..6).map(|i| format!("{c}:{i}")).collect::<Vec<_>>());
        }
        differs |= seed == 9 && seen != plain;
    }
    // Same seed, injection on or off: the interleaving changes.
    assert!(differs);
}

#[test]
fn badges_are_fixed_by_the_minter_and_cannot_be_forged() {
    let sim = Sim::new(config(1));
    let ep = sim.endpoint("svc");
    let seen: Log = Arc::default();
    spawn_recording_server(&sim, ep, seen.clone(), |m| {
        format!("{:#x} {:?}", m.badge, m.bytes)
    });
    sim.spawn(
        "client",
        false,
        &[
            grant("badged", ep, 0xA, Rights::WRITE | Rights::GRANT),
            grant("unbadged", ep, 0, Rights::WRITE),
        ],
        Box::new(move |ctx| {
            let badged = ctx.lookup("badged").unwrap();
            // A badged capability cannot be re-badged, copies keep the badge.
            assert_eq!(
                ctx.mint(badged, 0xB, Rights::ALL),
                Err(SysError::AlreadyBadged)
            );
            let copy = ctx.copy(badged, Rights::ALL).unwrap();
            let info = ctx.identify(copy).unwrap();
            assert_eq!(info.badge, 0xA);
            // Rights only shrink.
            assert_eq!(info.rights, Rights::WRITE | Rights::GRANT);
            ctx.call(copy, b"x", &[]).unwrap();
            // Whoever holds an unbadged capability with mint authority chooses a badge.
            let unbadged = ctx.lookup("unbadged").unwrap();
            let m = ctx.mint(unbadged, 0xC, Rights::ALL).unwrap();
            assert_eq!(ctx.identify(m).unwrap().rights, Rights::WRITE);
            ctx.call(m, b"y", &[]).unwrap();
            // Slots the process does not hold name nothing.
            assert_eq!(ctx.call(77, b"z", &[]).err(), Some(SysError::InvalidCap));
            assert_eq!(ctx.recv(badged).err(), Some(SysError::NoRights));
        }),
    );
    let r = sim.run();
    assert_no_problems(&r);
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["0xa [120]".to_string(), "0xc [121]".to_string()]
    );
}

#[test]
fn frame_capabilities_travel_with_calls_and_only_holders_touch_frames() {
    let sim = Sim::new(config(3));
    let ep = sim.endpoint("svc");
    let frame = sim.frame(1).unwrap();
    let other = sim.frame(1).unwrap();
    spawn_server_on(&sim, "server", ep, move |ctx, ep| loop {
        let m = ctx.recv(ep).unwrap();
        let mut buf = [0u8; 5];
        let reply = match m.caps.as_slice() {
            [f] => {
                ctx.frame_read(*f, 100, &mut buf).unwrap();
                ctx.frame_write(*f, 200, b"seen").unwrap();
                buf.to_vec()
            }
            _ => b"none".to_vec(),
        };
        ctx.reply(&reply, &[]).unwrap();
    });
    sim.spawn(
        "client",
        false,
        &[
            grant("ep", ep, 1, Rights::WRITE | Rights::GRANT),
            grant("weak", ep, 2, Rights::WRITE),
            grant("frame", frame, 0, Rights::RW),
            grant("ro", other, 0, Rights::READ),
        ],
        Box::new(move |ctx| {
            let ep = ctx.lookup("ep").unwrap();
            let weak = ctx.lookup("weak").unwrap();
            let f = ctx.lookup("frame").unwrap();
            let ro = ctx.lookup("ro").unwrap();
            ctx.frame_write(f, 100, b"hello").unwrap();
            assert_eq!(ctx.frame_write(ro, 0, b"x"), Err(SysError::NoRights));
            assert_eq!(ctx.frame_write(f, 4094, b"xyz"), Err(SysError::RangeError));
            // Transferring capabilities needs the grant right.
            assert_eq!(ctx.call(weak, b"", &[f]).err(), Some(SysError::NoRights));
            let r = ctx.call(ep, b"", &[f]).unwrap();
            assert_eq!(r.bytes, b"hello");
            let mut buf = [0u8; 4];
            ctx.frame_read(f, 200, &mut buf).unwrap();
            assert_eq!(&buf, b"seen");
            assert_eq!(ctx.call(ep, b"", &[]).unwrap().bytes, b"none");
        }),
    );
    let r = sim.run();
    assert_no_problems(&r);
}

#[test]
fn killing_a_process_frees_what_only_it_held_and_tells_its_supervisor() {
    // The root kills the client while it waits for the server's reply to its second
    // call. The frame it sent with its first call is also held by the server, so it
    // stays live until the server deletes its copy; the late reply is dropped.
    let sim = Sim::new(config(5));
    let log: Log = Arc::default();
    let l = log.clone();
    spawn_root(&sim, move |ctx, ut| {
        let ep = ctx.create_endpoint(ut, "svc").unwrap();
        let faults = ctx.create_endpoint(ut, "faults").unwrap();
        let go = ctx.create_notification(ut, "go").unwrap();
        let back = ctx.create_notification(ut, "back").unwrap();
        let frame = ctx.create_frame(ut, 1).unwrap();
        let server = ctx
            .create_process(
                ut,
                "server",
                true,
                Box::new(|ctx| {
                    let ep = ctx.lookup("ep").unwrap();
                    let m = ctx.recv(ep).unwrap();
                    let f = m.caps[0];
                    ctx.reply(b"ok", &[]).unwrap();
                    let _second = ctx.recv(ep).unwrap();
                    ctx.signal(ctx.lookup("go").unwrap()).unwrap();
                    ctx.wait(ctx.lookup("back").unwrap()).unwrap();
                    ctx.reply(b"late", &[]).unwrap();
                    ctx.delete(f).unwrap();
                    loop {
                        ctx.recv(ep).unwrap();
                    }
                }),
            )
            .unwrap();
        ctx.give(server, ep, "ep", None, Rights::READ).unwrap();
        ctx.give(server, go, "go", Some(1), Rights::WRITE).unwrap();
        ctx.give(server, back, "back", None, Rights::READ).unwrap();
        let client = ctx
            .create_process(
                ut,
                "client",
                false,
                Box::new(|ctx| {
                    let ep = ctx.lookup("ep").unwrap();
                    let f = ctx.lookup("frame").unwrap();
                    ctx.call(ep, b"1", &[f]).unwrap();
                    ctx.call(ep, b"2", &[]).unwrap();
                    unreachable!("killed while waiting for the reply");
                }),
            )
            .unwrap();
        ctx.give(client, ep, "ep", Some(0x77), Rights::WRITE | Rights::GRANT)
            .unwrap();
        ctx.give(client, frame, "frame", None, Rights::RW).unwrap();
        let badged = ctx.mint(faults, 0xC1, Rights::WRITE).unwrap();
        ctx.set_fault_handler(client, badged).unwrap();
        // The root keeps no capability to the frame.
        ctx.delete(frame).unwrap();
        ctx.start(server).unwrap();
        ctx.start(client).unwrap();
        ctx.wait(go).unwrap();
        ctx.kill(client).unwrap();
        let m = ctx.recv(faults).unwrap();
        l.lock().unwrap().push(format!(
            "death of {:#x}: {:?}",
            m.badge,
            DeathCause::decode(&m.bytes).unwrap()
        ));
        // Giving to a dead process is refused; killing it again is harmless.
        assert_eq!(
            ctx.give(client, ep, "again", None, Rights::WRITE),
            Err(SysError::IllegalOperation)
        );
        ctx.kill(client).unwrap();
        let back_w = ctx.mint(back, 1, Rights::WRITE).unwrap();
        ctx.signal(back_w).unwrap();
    });
    let r = sim.run();
    assert_no_problems(&r);
    assert!(matches!(r.exit_of("client"), Some(Exit::Killed { .. })));
    assert_eq!(
        *log.lock().unwrap(),
        vec!["death of 0xc1: Killed".to_string()]
    );
    let died = death_step(&r, "client");
    let freed: Vec<u64> = r
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::FrameFreed { step, bytes, .. } if *bytes == 4096 => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(freed.len(), 1, "{:?}", r.notes);
    assert!(freed[0] > died, "freed at {} but died at {died}", freed[0]);
}

#[test]
fn a_kill_at_an_entry_stops_that_system_call() {
    let sim = Sim::new(config_killing(
        21,
        KillPoint::AtEntry {
            process: "client".into(),
            entry: 3,
        },
    ));
    let ep = sim.endpoint("svc");
    let log: Log = Arc::default();
    spawn_recording_server(&sim, ep, log.clone(), |m| format!("{:?}", m.bytes));
    spawn_client_of(&sim, "client", ep, 1, |ctx, ep| {
        for i in 0..5u8 {
            ctx.call(ep, &[i], &[]).unwrap();
        }
    });
    let r = sim.run();
    assert_no_problems(&r);
    assert_eq!(
        r.exit_of("client"),
        Some(&Exit::Killed {
            step: death_step(&r, "client")
        })
    );
    assert_eq!(
        *log.lock().unwrap(),
        vec!["[0]".to_string(), "[1]".to_string()]
    );
}

#[test]
fn a_killed_sender_leaves_the_queue_and_its_message_is_never_delivered() {
    let sim = Sim::new(config_killing(
        11,
        KillPoint::AtStep {
            process: "late".into(),
            step: 6,
        },
    ));
    let ep = sim.endpoint("svc");
    let gate = sim.notification("gate");
    let log: Log = Arc::default();
    let l = log.clone();
    sim.spawn(
        "server",
        true,
        &[
            grant("ep", ep, 0, Rights::READ),
            grant("gate", gate, 0, Rights::READ),
        ],
        Box::new(move |ctx| {
            // Does not receive until well after the kill step.
            ctx.wait(ctx.lookup("gate").unwrap()).unwrap();
            let ep = ctx.lookup("ep").unwrap();
            loop {
                let m = ctx.recv(ep).unwrap();
                l.lock().unwrap().push(format!("{:#x}", m.badge));
            }
        }),
    );
    sim.spawn(
        "late",
        false,
        &[grant("ep", ep, 0x1, Rights::WRITE)],
        Box::new(|ctx| {
            ctx.send(ctx.lookup("ep").unwrap(), b"never", &[]).unwrap();
        }),
    );
    sim.spawn(
        "opener",
        false,
        &[
            grant("ep", ep, 0x2, Rights::WRITE),
            grant("gate", gate, 0x1, Rights::WRITE),
        ],
        Box::new(|ctx| {
            for _ in 0..8 {
                ctx.yield_now();
            }
            ctx.signal(ctx.lookup("gate").unwrap()).unwrap();
            ctx.send(ctx.lookup("ep").unwrap(), b"hi", &[]).unwrap();
        }),
    );
    let r = sim.run();
    assert_no_problems(&r);
    assert!(matches!(r.exit_of("late"), Some(Exit::Killed { step: 6 })));
    assert_eq!(*log.lock().unwrap(), vec!["0x2".to_string()]);
}

#[test]
fn deadlocks_are_reported_with_what_each_process_waits_for() {
    let sim = Sim::new(config(2));
    let a = sim.endpoint("a");
    let b = sim.endpoint("b");
    sim.spawn(
        "left",
        false,
        &[
            grant("mine", a, 0, Rights::READ),
            grant("other", b, 1, Rights::WRITE),
        ],
        Box::new(|ctx| {
            ctx.call(ctx.lookup("other").unwrap(), b"", &[]).unwrap();
        }),
    );
    sim.spawn(
        "right",
        false,
        &[
            grant("mine", b, 0, Rights::READ),
            grant("other", a, 1, Rights::WRITE),
        ],
        Box::new(|ctx| {
            // Takes left's call but calls left before replying: neither can go on.
            ctx.recv(ctx.lookup("mine").unwrap()).unwrap();
            ctx.call(ctx.lookup("other").unwrap(), b"", &[]).unwrap();
        }),
    );
    let r = sim.run();
    let mut d = r.deadlock.clone();
    d.sort();
    assert_eq!(
        d,
        vec![
            ("left".to_string(), "reply from `right`".to_string()),
            ("right".to_string(), "call on endpoint `a`".to_string()),
        ]
    );
    assert_eq!(r.problems().len(), 2);
}

#[test]
fn notifications_and_bound_notifications() {
    let sim = Sim::new(config(4));
    let ep = sim.endpoint("svc");
    let n = sim.notification("irq");
    let log: Log = Arc::default();
    let l = log.clone();
    sim.spawn(
        "server",
        true,
        &[
            grant("ep", ep, 0, Rights::READ),
            grant("n", n, 0, Rights::READ),
        ],
        Box::new(move |ctx| {
            let ep = ctx.lookup("ep").unwrap();
            ctx.bind_notification(ctx.lookup("n").unwrap()).unwrap();
            loop {
                let m = ctx.recv(ep).unwrap();
                l.lock()
                    .unwrap()
                    .push(format!("{:?} {:#x}", m.kind, m.badge));
                if m.kind == RecvKind::Call {
                    ctx.reply(&[], &[]).unwrap();
                }
            }
        }),
    );
    sim.spawn(
        "peer",
        false,
        &[
            grant("ep", ep, 5, Rights::WRITE),
            grant("n1", n, 0x10, Rights::WRITE),
            grant("n2", n, 0x01, Rights::WRITE),
        ],
        Box::new(|ctx| {
            ctx.call(ctx.lookup("ep").unwrap(), b"", &[]).unwrap();
            ctx.signal(ctx.lookup("n1").unwrap()).unwrap();
            ctx.call(ctx.lookup("ep").unwrap(), b"", &[]).unwrap();
            ctx.signal(ctx.lookup("n2").unwrap()).unwrap();
            ctx.signal(ctx.lookup("n1").unwrap()).unwrap();
        }),
    );
    let r = sim.run();
    assert_no_problems(&r);
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0], "Call 0x5");
    assert!(log.contains(&"Notification 0x10".to_string()), "{log:?}");
    // The last two signals merge if they arrive before the server receives again.
    let words: u64 = log
        .iter()
        .filter_map(|s| s.strip_prefix("Notification 0x"))
        .map(|w| u64::from_str_radix(w, 16).unwrap())
        .fold(0, |a, w| a | w);
    assert_eq!(words, 0x11);
    assert_eq!(log.iter().filter(|s| s.starts_with("Call")).count(), 2);
}

#[test]
fn a_non_blocking_send_reaches_only_a_waiting_receiver() {
    let sim = Sim::new(config(14));
    let ep = sim.endpoint("svc");
    let nobody = sim.endpoint("nobody");
    let log: Log = Arc::default();
    let l = log.clone();
    spawn_server_on(&sim, "server", ep, move |ctx, ep| {
        ctx.recv(ep).unwrap();
        // Replies and waits in one kernel entry: the caller finds it waiting.
        let m = ctx.reply_recv(ep, b"", &[]).unwrap();
        l.lock()
            .unwrap()
            .push(format!("{:?} {:?}", m.kind, m.bytes));
        loop {
            ctx.recv(ep).unwrap();
        }
    });
    sim.spawn(
        "client",
        false,
        &[
            grant("ep", ep, 1, Rights::WRITE),
            grant("nobody", nobody, 1, Rights::WRITE),
        ],
        Box::new(|ctx| {
            // Nobody receives there: dropped, and the sender goes on.
            assert_eq!(
                ctx.nb_send(ctx.lookup("nobody").unwrap(), b"lost"),
                Ok(false)
            );
            let ep = ctx.lookup("ep").unwrap();
            ctx.call(ep, b"", &[]).unwrap();
            assert_eq!(ctx.nb_send(ep, b"hi"), Ok(true));
        }),
    );
    let r = sim.run();
    assert_no_problems(&r);
    assert_eq!(*log.lock().unwrap(), vec!["Send [104, 105]".to_string()]);
}

/// A test IOMMU: identity translation for allowed pages, everything else blocked and
/// recorded, with an interrupt per fault.
#[derive(Default)]
struct Gate {
    allowed: BTreeSet<u64>,
    faults: Vec<DmaRequest>,
    irq: bool,
    regs: NoRegs,
}

/// One register, shared by every handle to it.
#[derive(Default, Clone)]
struct NoRegs(Arc<Mutex<u64>>);

impl RegisterIo for NoRegs {
    fn read32(&mut self, _: usize) -> u32 {
        *self.0.lock().unwrap() as u32
    }
    fn write32(&mut self, _: usize, v: u32) {
        *self.0.lock().unwrap() = v.into();
    }
    fn read64(&mut self, _: usize) -> u64 {
        *self.0.lock().unwrap()
    }
    fn write64(&mut self, _: usize, v: u64) {
        *self.0.lock().unwrap() = v;
    }
}

impl IommuUnit for Gate {
    fn registers(&mut self) -> Box<dyn RegisterIo + Send> {
        Box::new(self.regs.clone())
    }
    fn translate(&mut self, r: DmaRequest) -> Option<u64> {
        if self.allowed.contains(&(r.iova & !0xfff)) {
            Some(r.iova)
        } else {
            self.faults.push(r);
            self.irq = true;
            None
        }
    }
    fn take_interrupt(&mut self) -> bool {
        std::mem::take(&mut self.irq)
    }
}

#[test]
fn devices_dma_through_their_iommu_and_faults_raise_its_interrupt() {
    let sim = Sim::new(config(8));
    let gate = Arc::new(Mutex::new(Gate::default()));
    let u = sim.add_iommu("gate", gate.clone());
    let d = sim.add_device("dev", u, 0x42, 0x4000);
    let frame = sim.frame(2).unwrap();
    let done = sim.notification("done");
    let irq_n = sim.notification("irq");
    let results: Arc<Mutex<Vec<JobStatus>>> = Arc::default();
    let res = results.clone();
    let g = gate.clone();
    sim.spawn(
        "driver",
        false,
        &[
            grant("dev", sim.device(d), 0, Rights::ALL),
            grant("frame", frame, 0, Rights::RW),
            grant("done", done, 1, Rights::RW),
            grant("irq", sim.iommu_irq(u), 0, Rights::ALL),
            grant("irqn", irq_n, 2, Rights::RW),
            grant("mmio", sim.iommu_mmio(u), 0, Rights::ALL),
        ],
        Box::new(move |ctx| {
            let dev = ctx.lookup("dev").unwrap();
            let f = ctx.lookup("frame").unwrap();
            let done = ctx.lookup("done").unwrap();
            let irq = ctx.lookup("irq").unwrap();
            let irqn = ctx.lookup("irqn").unwrap();
            let (pa, len) = ctx.frame_info(f).unwrap();
            assert_eq!(len, 0x2000);
            g.lock().unwrap().allowed.extend([pa, pa + 0x1000]);
            let mut mmio = ctx.map_mmio(ctx.lookup("mmio").unwrap()).unwrap();
            mmio.write64(0x10, 0xabc);
            assert_eq!(mmio.read64(0x10), 0xabc);
            assert_eq!(*g.lock().unwrap().regs.0.lock().unwrap(), 0xabc);
            ctx.device_set_notification(dev, done).unwrap();
            ctx.irq_set_notification(irq, irqn).unwrap();
            assert_eq!(ctx.device_info(dev).unwrap().stream, 0x42);
            let data: Vec<u8> = (0..0x1800u32).map(|i| (i * 7) as u8).collect();
            ctx.device_write(dev, 0, &data).unwrap();
            let job = DmaJob::new(DmaDirection::ToMemory, pa + 0x400, 0x1800);
            let id = ctx.device_submit(dev, job).unwrap();
            assert_eq!(ctx.wait(done).unwrap(), 1);
            let mut back = vec![0u8; 0x1800];
            ctx.frame_read(f, 0x400, &mut back).unwrap();
            assert_eq!(back, data);
            // Read it back into the device's buffer elsewhere.
            ctx.device_submit(
                dev,
                DmaJob {
                    direction: DmaDirection::FromMemory,
                    buffer_offset: 0x2000,
                    ..job
                },
            )
            .unwrap();
            ctx.wait(done).unwrap();
            let mut buf = vec![0u8; 0x1800];
            ctx.device_read(dev, 0x2000, &mut buf).unwrap();
            assert_eq!(buf, data);
            // Past the allowed pages: blocked at the first page it reaches, three times.
            ctx.device_submit(
                dev,
                DmaJob {
                    iova: pa + 0x1800,
                    len: 0x1000,
                    repeat: 2,
                    ..job
                },
            )
            .unwrap();
            ctx.wait(done).unwrap();
            assert_eq!(ctx.wait(irqn).unwrap(), 2);
            // Masked until acknowledged: later faults were latched.
            ctx.irq_ack(irq).unwrap();
            assert_eq!(ctx.poll(irqn).unwrap(), 2);
            res.lock().unwrap().extend(ctx.device_results(dev).unwrap());
            let _ = id;
            // An IOMMU without page requests refuses them.
            let pr = sim::machine::PageRequest {
                pasid: Some(1),
                address: pa,
                write: false,
                last: true,
                group: 0,
            };
            assert_eq!(ctx.device_page_request(dev, pr), Ok(false));
        }),
    );
    let r = sim.run();
    assert_no_problems(&r);
    let results = results.lock().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].result, Ok(()));
    let (pa, _) = {
        let g = gate.lock().unwrap();
        let first = *g.allowed.iter().next().unwrap();
        assert_eq!(g.faults.len(), 3);
        assert!(g.faults.iter().all(|f| f.access == Access::Write));
        (first, 0)
    };
    assert_eq!(results[2].result, Err(DmaFault { iova: pa + 0x2000 }));
}

#[test]
fn dma_into_freed_memory_is_reported() {
    // An IOMMU that lets everything through, and a frame that is freed while the device
    // still writes it: the kernel notices.
    let sim = Sim::new(config(12));
    let gate = Arc::new(Mutex::new(Gate::default()));
    let u = sim.add_iommu("open", gate.clone());
    let d = sim.add_device("dev", u, 1, 0x1000);
    let frame = sim.frame(1).unwrap();
    let g = gate.clone();
    sim.spawn(
        "driver",
        false,
        &[
            grant("dev", sim.device(d), 0, Rights::ALL),
            grant("frame", frame, 0, Rights::RW),
        ],
        Box::new(move |ctx| {
            let f = ctx.lookup("frame").unwrap();
            let (pa, _) = ctx.frame_info(f).unwrap();
            g.lock().unwrap().allowed.insert(pa);
            ctx.device_submit(
                ctx.lookup("dev").unwrap(),
                DmaJob {
                    repeat: 50,
                    ..DmaJob::new(DmaDirection::ToMemory, pa, 0x1000)
                },
            )
            .unwrap();
            ctx.delete(f).unwrap();
        }),
    );
    let r = sim.run();
    assert!(
        r.problems().iter().any(|p| p.contains("freed memory")),
        "{:?}",
        r.problems()
    );
}

#[test]
fn the_pasid_server_request_loop_runs_unchanged_as_a_process() {
    use ipc_protocol::client::{call, CallError};
    use ipc_protocol::pasid::{PasidReply, PasidRequest, PASID_MAX};
    use pasid_server::{CallerPolicy, Config, PasidServer};
    use sim::endpoint::{SimClient, SimServer};

    let sim = Sim::new(config(6));
    let ep = sim.endpoint("pasid");
    spawn_server_on(&sim, "pasid-server", ep, |ctx, ep| {
        let mut server = PasidServer::new(Config {
            max_pasid: PASID_MAX,
            callers: vec![CallerPolicy {
                badge: 0x5,
                max_live: 4,
                max_sets: 2,
                admin: false,
            }],
        })
        .unwrap();
        let why = server.serve(&mut SimServer::new(ctx, ep));
        panic!("serve ended: {why:?}");
    });
    for (name, badge) in [("caller", 0x5), ("stranger", 0x6)] {
        spawn_client_of(&sim, name, ep, badge, move |ctx, ep| {
            let mut c = SimClient::new(ctx, ep);
            let r: Result<PasidReply, CallError<SysError>> =
                call(&mut c, &PasidRequest::CreateSet { owner: 1, quota: 2 });
            if badge == 0x5 {
                let Ok(PasidReply::SetCreated { set }) = r else {
                    panic!("{r:?}")
                };
                let a: PasidReply = call(
                    &mut c,
                    &PasidRequest::Alloc {
                        set,
                        range: Default::default(),
                    },
                )
                .unwrap();
                assert_eq!(
                    a,
                    PasidReply::Allocated {
                        pasid: 1,
                        new: true
                    }
                );
            } else {
                assert_eq!(r, Err(CallError::Server(ipc_protocol::Error::Denied)));
            }
        });
    }
    let r = sim.run();
    assert_no_problems(&r);
    assert_eq!(r.waiting.len(), 1);
}

#[test]
fn a_panicking_process_is_a_fault_its_supervisor_hears_of() {
    let sim = Sim::new(config(13));
    let log: Log = Arc::default();
    let l = log.clone();
    spawn_root(&sim, move |ctx, ut| {
        let faults = ctx.create_endpoint(ut, "faults").unwrap();
        let child = ctx
            .create_process(
                ut,
                "child",
                false,
                Box::new(|ctx| {
                    ctx.yield_now();
                    panic!("boom");
                }),
            )
            .unwrap();
        let f = ctx.mint(faults, 9, Rights::WRITE).unwrap();
        ctx.set_fault_handler(child, f).unwrap();
        ctx.start(child).unwrap();
        // Starting twice is refused.
        assert_eq!(ctx.start(child), Err(SysError::IllegalOperation));
        let m = ctx.recv(faults).unwrap();
        l.lock()
            .unwrap()
            .push(format!("{} {:?}", m.badge, DeathCause::decode(&m.bytes)));
    });
    let r = sim.run();
    assert_eq!(*log.lock().unwrap(), vec!["9 Some(Faulted)".to_string()]);
    assert_eq!(r.exit_of("child"), Some(&Exit::Panicked("boom".into())));
    assert_eq!(r.problems(), vec!["`child` faulted: boom".to_string()]);
}

/// Records its name in a log when dropped: shows that a process's stack was unwound (or
/// its program dropped).
struct Unwound(&'static str, Log);

impl Drop for Unwound {
    fn drop(&mut self) {
        self.1.lock().unwrap().push(format!("{} unwound", self.0));
    }
}

#[test]
fn a_killed_process_unwinds_when_next_resumed_without_kernel_service() {
    let sim = Sim::new(config(21));
    let log: Log = Arc::default();
    let l = log.clone();
    spawn_root(&sim, move |ctx, ut| {
        let ep = ctx.create_endpoint(ut, "nobody-sends").unwrap();
        let up = ctx.create_notification(ut, "up").unwrap();
        let lv = l.clone();
        let victim = ctx
            .create_process(
                ut,
                "victim",
                false,
                Box::new(move |ctx| {
                    struct Probe(sim::Ctx, sim::CPtr, Log);
                    impl Drop for Probe {
                        fn drop(&mut self) {
                            // Its destructors run, but the kernel no longer serves it.
                            let r = self.0.identify(self.1);
                            self.2.lock().unwrap().push(format!("identify {r:?}"));
                        }
                    }
                    let ep = ctx.lookup("ep").unwrap();
                    let _guard = Unwound("victim", lv.clone());
                    let _probe = Probe(ctx.clone(), ep, lv.clone());
                    ctx.signal(ctx.lookup("up").unwrap()).unwrap();
                    let _ = ctx.recv(ep);
                    lv.lock().unwrap().push("victim went on".into());
                }),
            )
            .unwrap();
        ctx.give(victim, ep, "ep", None, Rights::READ).unwrap();
        ctx.give(victim, up, "up", Some(1), Rights::WRITE).unwrap();
        ctx.start(victim).unwrap();
        ctx.wait(up).unwrap();
        l.lock().unwrap().push("kill".into());
        ctx.kill(victim).unwrap();
    });
    let r = sim.run();
    assert_no_problems(&r);
    assert!(matches!(r.exit_of("victim"), Some(Exit::Killed { .. })));
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "kill".to_string(),
            "identify Err(IllegalOperation)".to_string(),
            "victim unwound".to_string(),
        ]
    );
}

#[test]
fn a_process_killed_before_it_ever_ran_only_drops_its_program() {
    let mut never_ran = 0;
    for seed in 0..16 {
        let sim = Sim::new(config(seed));
        let log: Log = Arc::default();
        let l = log.clone();
        spawn_root(&sim, move |ctx, ut| {
            let guard = Unwound("child", l.clone());
            let lc = l.clone();
            let child = ctx
                .create_process(
                    ut,
                    "child",
                    false,
                    Box::new(move |ctx| {
                        let _guard = guard;
                        lc.lock().unwrap().push("child ran".into());
                        loop {
                            ctx.yield_now();
                        }
                    }),
                )
                .unwrap();
            ctx.start(child).unwrap();
            ctx.kill(child).unwrap();
        });
        let r = sim.run();
        assert_no_problems(&r);
        assert!(matches!(r.exit_of("child"), Some(Exit::Killed { .. })));
        let got = log.lock().unwrap().clone();
        if got == ["child unwound"] {
            never_ran += 1;
        } else {
            assert_eq!(got, ["child ran", "child unwound"], "seed {seed}");
        }
    }
    assert!(never_ran > 0, "in 16 seeds the child always ran first");
}

#[test]
fn shutdown_unwinds_the_processes_still_waiting() {
    let mut sim = Sim::new(config(3));
    let ep = sim.endpoint("nobody-sends");
    let log: Log = Arc::default();
    let l = log.clone();
    spawn_server_on(&sim, "server", ep, move |ctx, ep| {
        let _guard = Unwound("server", l);
        loop {
            let _ = ctx.recv(ep);
        }
    });
    let r = sim.run();
    assert_no_problems(&r);
    assert_eq!(r.waiting.len(), 1);
    assert!(log.lock().unwrap().is_empty());
    sim.shutdown();
    assert_eq!(*log.lock().unwrap(), ["server unwound"]);
}

thread_local! {
    /// Where one process leaves its `Ctx` for another to misuse.
    static LEFT: std::cell::RefCell<Option<sim::Ctx>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn a_ctx_serves_only_its_own_process() {
    let sim = Sim::new(config(8));
    let ep = sim.endpoint("nobody-sends");
    spawn_server_on(&sim, "owner", ep, |ctx, ep| {
        LEFT.with(|l| *l.borrow_mut() = Some(ctx.clone()));
        loop {
            let _ = ctx.recv(ep);
        }
    });
    sim.spawn(
        "thief",
        false,
        &[],
        Box::new(|ctx| {
            let stolen = loop {
                if let Some(c) = LEFT.with(|l| l.borrow().clone()) {
                    break c;
                }
                ctx.yield_now();
            };
            stolen.yield_now();
        }),
    );
    let r = sim.run();
    match r.exit_of("thief") {
        Some(Exit::Panicked(m)) => assert!(m.contains("used outside"), "{m}"),
        e => panic!("the thief ended {e:?}"),
    }
    // Nor outside the simulation's run.
    let stolen = LEFT.with(|l| l.borrow_mut().take()).unwrap();
    let outside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stolen.yield_now()));
    assert!(outside.is_err());
}

#[test]
fn the_stack_size_is_configurable() {
    // 1 MiB of locals: more than the default stack holds.
    let sim = Sim::new(SimConfig {
        stack_bytes: 4 << 20,
        ..config(1)
    });
    const { assert!(sim::DEFAULT_STACK_BYTES < 1 << 20) };
    let log: Log = Arc::default();
    let l = log.clone();
    sim.spawn(
        "deep",
        false,
        &[],
        Box::new(move |ctx| {
            let mut big = [0u8; 1 << 20];
            ctx.yield_now();
            big[(1 << 20) - 1] = 7;
            let big = std::hint::black_box(big);
            l.lock().unwrap().push(format!("{}", big[(1 << 20) - 1]));
        }),
    );
    let r = sim.run();
    assert_no_problems(&r);
    assert_eq!(*log.lock().unwrap(), ["7"]);
}
