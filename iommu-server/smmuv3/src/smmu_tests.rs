//! Driver-level tests against the register model in `fake`.

extern crate std;

use std::vec::Vec;

use crate::cmd::{Command, SyncSignal, TlbiRange, CMDQ_OP_TLBI_NH_ASID};
use crate::error::{CommandErrorCode, Error, TimeoutKind, Unsupported};
use crate::event::Event;
use crate::fake::FakeSmmu;
use crate::features::IdRegs;
use crate::mem::IdentityHeap;
use crate::pagetable::{Prot, BLOCK_2M, PAGE_SIZE};
use crate::regs::{self, PollBudget};
use crate::smmu::{Smmu, SmmuConfig, StreamTableChoice};
use crate::ste::{Stage2Ste, Ste, StreamConfig, WalkAttrs};
use crate::strtab::StreamTableFormat;
use crate::tlbi::InvalidationPolicy;
use crate::PhysAddr;

type TestSmmu = Smmu<FakeSmmu, IdentityHeap, PollBudget>;

fn config() -> SmmuConfig {
    SmmuConfig {
        cmdq_log2: 4,
        evtq_log2: 3,
        sid_bits: 8,
        va_bits: 39,
        ..SmmuConfig::default()
    }
}

fn smmu() -> TestSmmu {
    Smmu::new(
        FakeSmmu::new(),
        IdentityHeap::new(),
        PollBudget::new(1000),
        config(),
    )
    .unwrap()
}

#[test]
fn init_sequence_order() {
    let mut s = smmu();
    let w = &s.regs_mut().writes;
    let pos = |o: usize, v: u64| {
        w.iter()
            .position(|&x| x == (o, v))
            .unwrap_or_else(|| panic!("{o:#x}={v:#x} missing"))
    };
    let off = pos(regs::CR0, 0);
    let irq = pos(regs::IRQ_CTRL, 0);
    let strtab = w.iter().position(|x| x.0 == regs::STRTAB_BASE).unwrap();
    let cmdq_base = w.iter().position(|x| x.0 == regs::CMDQ_BASE).unwrap();
    let cr1 = w.iter().position(|x| x.0 == regs::CR1).unwrap();
    let cmdqen = pos(regs::CR0, u64::from(regs::CR0_CMDQEN));
    let evtqen = pos(regs::CR0, u64::from(regs::CR0_CMDQEN | regs::CR0_EVENTQEN));
    let smmuen = pos(
        regs::CR0,
        u64::from(regs::CR0_CMDQEN | regs::CR0_EVENTQEN | regs::CR0_SMMUEN),
    );
    assert!(off < irq && irq < cr1 && cr1 < strtab && strtab < cmdqen && cmdq_base < cmdqen);
    assert!(cmdqen < evtqen && evtqen < smmuen);
    assert_eq!(w[cr1].1, 0xd75, "WB/WB/ISH for tables and queues");
    let cr2 = w.iter().find(|x| x.0 == regs::CR2).unwrap().1;
    assert_eq!(cr2 as u32, regs::CR2_PTM | regs::CR2_RECINVSID);
    // sid_bits 8: linear table.
    let cfg = w.iter().find(|x| x.0 == regs::STRTAB_BASE_CFG).unwrap().1;
    assert_eq!(cfg, 8);
    assert_eq!(
        s.regs_mut().commands,
        [
            Command::CfgiAll,
            Command::TlbiNsnhAll,
            Command::Sync(SyncSignal::None)
        ]
    );
    // The sync completed before translation was enabled.
    let prod_write = s
        .regs_mut()
        .writes
        .iter()
        .position(|x| x.0 == regs::CMDQ_PROD)
        .unwrap();
    assert!(prod_write < smmuen);
}

#[test]
fn two_level_chosen_for_wide_streamids() {
    let mut s = Smmu::new(
        FakeSmmu::new(),
        IdentityHeap::new(),
        PollBudget::new(1000),
        SmmuConfig {
            sid_bits: 16,
            unassigned: Ste::invalid(),
            ..config()
        },
    )
    .unwrap();
    let cfg = s
        .regs_mut()
        .writes
        .iter()
        .find(|x| x.0 == regs::STRTAB_BASE_CFG)
        .unwrap()
        .1;
    assert_eq!(cfg, (1 << 16) | (8 << 6) | 16);
    // First STE in a new L2 span invalidates the span, then the STE.
    s.regs_mut().commands.clear();
    assert_eq!(
        s.set_bypass(0x0305).unwrap(),
        2,
        "invalid -> bypass stages then flips"
    );
    let c = &s.regs_mut().commands;
    assert_eq!(
        c[0],
        Command::CfgiSteRange {
            sid: 0x0300,
            range: 7
        }
    );
    assert!(c.contains(&Command::CfgiSte {
        sid: 0x0305,
        leaf: true
    }));
}

#[test]
fn init_refusals_and_timeouts() {
    // Non-coherent hardware is refused.
    let mut id = crate::features::QEMU_7_2_IDREGS;
    id.idr[0] &= !(1 << 4);
    let r = Smmu::new(
        FakeSmmu::with_id(id),
        IdentityHeap::new(),
        PollBudget::new(10),
        config(),
    );
    assert_eq!(
        r.err(),
        Some(Error::Unsupported(Unsupported::CoherentAccess))
    );
    // A CR0ACK that never follows times out.
    let mut f = FakeSmmu::new();
    f.stuck_ack = true;
    let r = Smmu::new(f, IdentityHeap::new(), PollBudget::new(10), config());
    assert_eq!(r.err(), Some(Error::Timeout(TimeoutKind::Cr0Ack)));
    // Forcing a two-level table on linear-only hardware is refused.
    let lin = IdRegs {
        idr: [0x0540_101a, 0x0273_0010, 0, 0x1404, 0, 0x74],
        aidr: 1,
    };
    let r = Smmu::new(
        FakeSmmu::with_id(lin),
        IdentityHeap::new(),
        PollBudget::new(10),
        SmmuConfig {
            strtab: StreamTableChoice::Fixed(StreamTableFormat::TwoLevel),
            sid_bits: 16,
            ..config()
        },
    );
    assert_eq!(
        r.err(),
        Some(Error::Unsupported(Unsupported::TwoLevelStreamTable))
    );
}

#[test]
fn sync_timeout_when_cons_stuck() {
    let mut s = smmu();
    s.regs_mut().stuck_cons = true;
    assert_eq!(
        s.command_sync(&[]),
        Err(Error::Timeout(TimeoutKind::CommandSync))
    );
}

#[test]
fn queue_wraps_many_times() {
    let mut s = smmu(); // 16-entry queue
    s.regs_mut().commands.clear();
    let cmds: Vec<_> = (0..100)
        .map(|sid| Command::CfgiSte { sid, leaf: true })
        .collect();
    s.command_sync(&cmds).unwrap();
    let got = &s.regs_mut().commands;
    assert_eq!(got.len(), 101);
    assert_eq!(&got[..100], &cmds[..]);
    for _ in 0..40 {
        s.command_sync(&[Command::TlbiNsnhAll]).unwrap();
    }
    assert_eq!(s.cmdq_stats().syncs, 1 + 1 + 40);
}

#[test]
fn command_error_reported_with_index_and_recovered() {
    let mut s = smmu();
    let before = s.cmdq_stats().commands as u32; // next queue index
    s.regs_mut().fail_opcode = Some(CMDQ_OP_TLBI_NH_ASID);
    s.regs_mut().commands.clear();
    let r = s.command_sync(&[
        Command::TlbiNsnhAll,
        Command::TlbiNhAsid { asid: 1, vmid: 0 },
        Command::CfgiSte { sid: 1, leaf: true },
    ]);
    assert_eq!(
        r,
        Err(Error::Command {
            code: CommandErrorCode::Illegal,
            index: before + 1,
            opcode: CMDQ_OP_TLBI_NH_ASID,
        })
    );
    // The failing command was replaced by a CMD_SYNC, the rest ran, errors acknowledged.
    assert_eq!(
        s.regs_mut().commands,
        [
            Command::TlbiNsnhAll,
            Command::Sync(SyncSignal::None),
            Command::CfgiSte { sid: 1, leaf: true },
            Command::Sync(SyncSignal::None)
        ]
    );
    assert_eq!(s.global_errors(), 0);
    s.regs_mut().fail_opcode = None;
    assert!(s
        .command_sync(&[Command::TlbiNhAsid { asid: 1, vmid: 0 }])
        .is_ok());
}

#[test]
fn atc_sync_error_retries_the_sync() {
    let mut s = smmu();
    s.regs_mut().fail_opcode = Some(crate::cmd::CMDQ_OP_CMD_SYNC);
    s.regs_mut().fail_code = 3;
    s.regs_mut().fail_once = true;
    s.regs_mut().commands.clear();
    let r = s.command_sync(&[Command::TlbiNsnhAll]);
    assert!(matches!(
        r,
        Err(Error::Command {
            code: CommandErrorCode::AtcInvalidationSync,
            opcode: crate::cmd::CMDQ_OP_CMD_SYNC,
            ..
        })
    ));
    // The CMD_SYNC stayed in place and completed when retried after the acknowledgement.
    assert_eq!(
        s.regs_mut().commands,
        [Command::TlbiNsnhAll, Command::Sync(SyncSignal::None)]
    );
    assert_eq!(s.global_errors(), 0);
    assert_eq!(s.cmdq_stats().errors, 1);
}

#[test]
fn other_global_errors_are_reported() {
    let mut s = smmu();
    s.regs_mut().stuck_cons = true;
    s.regs_mut().raise_gerror(regs::GERROR_SFM_ERR);
    assert_eq!(
        s.command_sync(&[]),
        Err(Error::GlobalError(regs::GERROR_SFM_ERR))
    );
    assert_eq!(s.global_errors(), regs::GERROR_SFM_ERR);
    assert_eq!(s.ack_global_errors(), regs::GERROR_SFM_ERR);
    assert_eq!(s.global_errors(), 0);
    assert_eq!(s.ack_global_errors(), 0);
    s.regs_mut().stuck_cons = false;
    assert!(s.command_sync(&[]).is_ok());
}

#[test]
fn stream_configs_and_refusals() {
    let mut s = smmu();
    s.regs_mut().commands.clear();
    assert_eq!(s.set_bypass(3).unwrap(), 1, "abort -> bypass");
    assert_eq!(
        s.regs_mut().commands,
        [
            Command::CfgiSte { sid: 3, leaf: true },
            Command::Sync(SyncSignal::None)
        ]
    );
    assert_eq!(s.set_abort(3).unwrap(), 1);
    assert_eq!(s.set_abort(3).unwrap(), 0, "no change, no sync");
    let s2 = Stage2Ste {
        vmid: 1,
        ttb: PhysAddr(0x1000),
        t0sz: 25,
        sl0: 1,
        walk: WalkAttrs::WB_ISH,
        ps: 4,
        affd: false,
        ptw: false,
        record: true,
        stall: false,
    };
    assert_eq!(
        s.set_stream(4, &StreamConfig::Stage2(s2)),
        Err(Error::Unsupported(Unsupported::Stage2))
    );
    assert_eq!(s.set_bypass(256), Err(Error::InvalidStreamId(256)));
}

#[test]
fn domain_map_unmap_with_range_invalidation() {
    let mut s = smmu();
    let d = s.create_domain(7).unwrap();
    assert_eq!(s.create_domain(7), Err(Error::InvalidAsid(7)));
    s.regs_mut().commands.clear();
    assert_eq!(s.attach(0x10, d).unwrap(), 2, "abort -> S1");
    s.map(d, 0x20_0000, 0x8000_0000, 512 * PAGE_SIZE, Prot::READ_WRITE)
        .unwrap();
    assert_eq!(s.translate(d, 0x20_0123).unwrap(), Some(0x8000_0123));
    s.regs_mut().commands.clear();
    let u = s.unmap(d, 0x20_0000, 512 * PAGE_SIZE).unwrap();
    assert_eq!(u.bytes, BLOCK_2M);
    let cmds = s.regs_mut().commands.clone();
    assert_eq!(cmds.len(), 2, "one range TLBI + one sync: {cmds:?}");
    assert_eq!(
        cmds[0],
        Command::TlbiNhVa {
            asid: 7,
            vmid: 0,
            addr: 0x20_0000,
            leaf: false,
            ttl: 0,
            range: Some(TlbiRange {
                num: 0,
                scale: 9,
                tg: 1
            })
        }
    );
    assert_eq!(cmds[1], Command::Sync(SyncSignal::None));
    // 512 pages mapped page by page (unaligned output) take one range command too.
    s.map(d, 0x40_0000, 0x8000_1000, 512 * PAGE_SIZE, Prot::READ)
        .unwrap();
    s.regs_mut().commands.clear();
    let u = s.unmap(d, 0x40_0000, 512 * PAGE_SIZE).unwrap();
    assert_eq!(u.leaves, 512);
    let cmds = s.regs_mut().commands.clone();
    assert_eq!(cmds.len(), 2);
    let Command::TlbiNhVa { range: Some(r), .. } = cmds[0] else {
        panic!()
    };
    assert_eq!((r.num, r.scale), (0, 9));
    // Unmapping nothing issues nothing.
    s.regs_mut().commands.clear();
    assert!(s.unmap(d, 0x40_0000, PAGE_SIZE).unwrap().is_empty());
    assert!(s.regs_mut().commands.is_empty());
}

#[test]
fn no_ril_uses_per_page_then_asid() {
    let mut s = smmu();
    s.set_invalidation_policy(InvalidationPolicy {
        ril: false,
        max_per_page: 8,
    });
    let d = s.create_domain(2).unwrap();
    s.attach(1, d).unwrap();
    s.map(d, 0x1000, 0x9000_0000, 4 * PAGE_SIZE, Prot::READ)
        .unwrap();
    s.map(d, 0x10_0000, 0x9010_0000, 64 * PAGE_SIZE, Prot::READ)
        .unwrap();
    s.regs_mut().commands.clear();
    s.unmap(d, 0x2000, 2 * PAGE_SIZE).unwrap();
    let c = s.regs_mut().commands.clone();
    assert_eq!(c.len(), 3);
    assert!(matches!(
        c[0],
        Command::TlbiNhVa {
            addr: 0x2000,
            range: None,
            leaf: true,
            ..
        }
    ));
    assert!(matches!(
        c[1],
        Command::TlbiNhVa {
            addr: 0x3000,
            range: None,
            ..
        }
    ));
    s.regs_mut().commands.clear();
    s.unmap(d, 0x10_0000, 64 * PAGE_SIZE).unwrap();
    assert_eq!(
        s.regs_mut().commands,
        [
            Command::TlbiNhAsid { asid: 2, vmid: 0 },
            Command::Sync(SyncSignal::None)
        ]
    );
}

#[test]
fn domain_lifecycle() {
    let mut s = smmu();
    let d = s.create_domain(3).unwrap();
    s.attach(5, d).unwrap();
    assert!(s.destroy_domain(d).is_err(), "still attached");
    // Moving the stream to another domain detaches it from the first.
    let other = s.create_domain(4).unwrap();
    assert_eq!(
        s.attach(5, other).unwrap(),
        1,
        "S1 -> S1 with another CD pointer"
    );
    s.destroy_domain(d).unwrap();
    let d = s.create_domain(3).unwrap();
    s.attach(5, d).unwrap();
    s.set_abort(5).unwrap();
    assert!(s.destroy_domain(other).is_ok());
    s.map(d, 0, 0x4000_0000, PAGE_SIZE, Prot::READ).unwrap();
    s.destroy_domain(d).unwrap();
    assert_eq!(
        s.map(d, 0, 0, PAGE_SIZE, Prot::READ),
        Err(Error::NoSuchDomain)
    );
    // The ASID is free again.
    let e = s.create_domain(3).unwrap();
    assert_eq!(s.domain_asid(e).unwrap(), 3);
}

#[test]
fn events_are_drained_and_decoded() {
    let mut s = smmu(); // 8-entry event queue
                        // F_TRANSLATION for SID 0x10, read of 0x5000 (as QEMU reports an unmapped IOVA).
    s.regs_mut()
        .push_event([0x10 | (0x10 << 32), 1 << 35, 0x5000, 0]);
    s.regs_mut().push_event([0x13 | (0x10 << 32), 0, 0x6000, 0]);
    let mut got = Vec::new();
    let r = s.drain_events(|e| got.push(e));
    assert_eq!((r.events, r.overflowed), (2, false));
    let Event::Translation(f) = got[0] else {
        panic!("{:?}", got[0])
    };
    assert_eq!(
        (f.stream.sid, f.access.addr, f.access.read),
        (0x10, 0x5000, true)
    );
    assert!(matches!(got[1], Event::Permission(p) if !p.access.read));
    // Overflow: 9 records into 8 slots.
    for k in 0..9u64 {
        s.regs_mut().push_event([0x04 | (k << 32), 0, 0, 0]);
    }
    let r = s.drain_events(|_| {});
    assert_eq!((r.events, r.overflowed), (8, true));
    let r = s.drain_events(|_| {});
    assert_eq!((r.events, r.overflowed), (0, false));
}

#[test]
fn event_queue_write_abort_is_reported_and_acknowledged() {
    // QEMU 7.2 drops a record on a full queue without toggling PROD.OVFLG and raises
    // GERROR.EVENTQ_ABT_ERR instead: the drain must report the loss and acknowledge it.
    let mut s = smmu(); // 8-entry event queue
    for k in 0..8u64 {
        s.regs_mut()
            .push_event([0x10 | (0x10 << 32), 0, 0x1000 + 4 * k, 0]);
    }
    s.regs_mut().raise_gerror(regs::GERROR_EVENTQ_ABT_ERR);
    assert_eq!(s.global_errors(), regs::GERROR_EVENTQ_ABT_ERR);
    let r = s.drain_events(|_| {});
    assert_eq!(r.events, 8);
    assert!(r.full, "the queue was full");
    assert!(!r.overflowed, "OVFLG did not toggle");
    assert!(r.write_aborted && r.lost_records());
    assert_eq!(s.global_errors(), 0, "EVENTQ_ABT_ERR acknowledged");
    // Commands work with the error acknowledged, and the next drain is clean.
    s.command_sync(&[Command::CfgiAll]).unwrap();
    let r = s.drain_events(|_| panic!("no events"));
    assert!(!r.full && !r.lost_records());
    // A later abort is reported again.
    s.regs_mut().raise_gerror(regs::GERROR_EVENTQ_ABT_ERR);
    assert!(s.drain_events(|_| {}).write_aborted);
    assert_eq!(s.global_errors(), 0);
}
