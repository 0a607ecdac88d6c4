//! Driver tests against the register model (`model.rs`).

use super::*;
use crate::caps::{CAP_CM, CAP_RWBF, ECAP_QI, QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY};
use crate::context::{PGTT_SECOND_LEVEL, SM_CTX_LO_PASIDDIRPTR};
use crate::fault::{AccessType, FaultReason, FRCD_HI_T1};
use crate::mem::IdentityHeap;
use crate::model::Model;
use crate::regs::PollBudget;

type TestVtd = Vtd<Model, IdentityHeap, PollBudget>;

fn init(model: Model, config: VtdConfig) -> Result<TestVtd> {
    Vtd::new(model, IdentityHeap::new(), PollBudget::new(50), config)
}

fn legacy() -> TestVtd {
    init(Model::qemu_legacy(), VtdConfig::default()).unwrap()
}

fn register_based() -> TestVtd {
    init(
        Model::qemu_legacy(),
        VtdConfig {
            invalidation: InvalidationChoice::Register,
            ..VtdConfig::default()
        },
    )
    .unwrap()
}

fn kinds(m: &Model) -> Vec<u64> {
    m.descriptors.iter().map(Descriptor::kind).collect()
}

#[test]
fn init_legacy_with_queued_invalidation() {
    let mut v = legacy();
    assert_eq!(v.mode(), Mode::Legacy);
    assert!(v.queued_invalidation());
    assert_eq!(v.levels(), 3);
    let root = v.root.0;
    let m = v.regs();
    assert_eq!(
        m.active_root,
        Some(root),
        "RTADDR with TTM = 00b latched by SRTP"
    );
    let cmds: Vec<u32> = m.gcmd_log.clone();
    assert_eq!(
        cmds,
        [
            regs::GCMD_SRTP,
            regs::GCMD_QIE,
            regs::GCMD_QIE | regs::GCMD_TE
        ]
    );
    assert_eq!(
        kinds(m),
        [inv::TYPE_CONTEXT_CACHE, inv::TYPE_IOTLB, inv::TYPE_WAIT]
    );
    assert_eq!(
        m.descriptors[0],
        Descriptor::context_cache(ContextInvalidation::Global)
    );
    // QEMU has DRD/DWD: drains requested.
    assert_eq!(
        m.descriptors[1],
        Descriptor::iotlb(IotlbInvalidation::Global, true)
    );
    let gsts = m.read32(regs::GSTS);
    assert_eq!(
        gsts & (regs::GCMD_TE | regs::GCMD_QIE),
        regs::GCMD_TE | regs::GCMD_QIE
    );
    assert!(m.ccmd_log.is_empty() && m.iotlb_log.is_empty());
}

#[test]
fn init_register_based() {
    let mut v = register_based();
    assert!(!v.queued_invalidation());
    let m = v.regs();
    assert_eq!(m.gcmd_log, [regs::GCMD_SRTP, regs::GCMD_TE]);
    assert_eq!(m.ccmd_log, [regs::CCMD_ICC | (1 << 61)]);
    assert_eq!(m.iotlb_log.len(), 1);
    let (_, cmd) = m.iotlb_log[0];
    assert_eq!(
        cmd,
        regs::IOTLB_IVT | (1 << 60) | regs::IOTLB_DR | regs::IOTLB_DW
    );
    assert!(m.descriptors.is_empty());
}

#[test]
fn init_scalable_uses_wide_descriptors() {
    let mut v = init(Model::qemu_scalable(), VtdConfig::default()).unwrap();
    assert_eq!(v.mode(), Mode::Scalable);
    let root = v.root.0;
    let m = v.regs();
    assert_eq!(m.active_root, Some(root | 0x400), "TTM = 01b");
    assert_ne!(m.read64(regs::IQA) & regs::IQA_DW, 0);
    assert_eq!(
        kinds(m),
        [
            inv::TYPE_CONTEXT_CACHE,
            inv::TYPE_PASID_CACHE,
            inv::TYPE_IOTLB,
            inv::TYPE_WAIT
        ]
    );
    assert_eq!(m.read64(regs::IQT), 4 << 5);
}

#[test]
fn refuses_what_hardware_lacks() {
    let forced = |model, mode, inv| {
        init(
            model,
            VtdConfig {
                mode,
                invalidation: inv,
                ..VtdConfig::default()
            },
        )
        .err()
    };
    use InvalidationChoice as I;
    assert_eq!(
        forced(
            Model::qemu_legacy(),
            ModeChoice::Fixed(Mode::Scalable),
            I::Auto
        ),
        Some(Error::Unsupported(Unsupported::ScalableMode))
    );
    let no_qi = Model::new(QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY & !ECAP_QI);
    assert_eq!(
        forced(no_qi, ModeChoice::Auto, I::Queued),
        Some(Error::Unsupported(Unsupported::QueuedInvalidation))
    );
    assert_eq!(
        forced(
            Model::qemu_scalable(),
            ModeChoice::Fixed(Mode::Scalable),
            I::Register
        ),
        Some(Error::Unsupported(Unsupported::QueuedInvalidation))
    );
    // Without QI, Auto picks register-based invalidation.
    let no_qi = Model::new(QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY & !ECAP_QI);
    let v = init(no_qi, VtdConfig::default()).unwrap();
    assert!(!v.queued_invalidation());
    let small = VtdConfig {
        register_bytes: 0x200,
        ..VtdConfig::default()
    };
    assert_eq!(
        init(Model::qemu_legacy(), small).err(),
        Some(Error::Unsupported(Unsupported::RegisterLayout))
    );
    let mut v6 = Model::qemu_legacy();
    v6.ver = 0x60;
    assert_eq!(
        forced(v6, ModeChoice::Auto, I::Register),
        Some(Error::Unsupported(Unsupported::RegisterInvalidation))
    );
    let mut v6 = Model::new(QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY & !ECAP_QI);
    v6.ver = 0x60;
    assert_eq!(
        forced(v6, ModeChoice::Auto, I::Auto),
        Some(Error::Unsupported(Unsupported::RegisterInvalidation))
    );
    let no_sagaw = Model::new(QEMU_7_2_CAP & !crate::caps::CAP_SAGAW, QEMU_7_2_ECAP_LEGACY);
    assert!(matches!(
        init(no_sagaw, VtdConfig::default()),
        Err(Error::Unsupported(Unsupported::PageTableLevels(_)))
    ));
}

#[test]
fn timeouts_are_reported() {
    let mut m = Model::qemu_legacy();
    m.stuck_gsts = true;
    assert_eq!(
        init(m, VtdConfig::default()).err(),
        Some(Error::Timeout(TimeoutKind::GlobalStatus(regs::GCMD_SRTP)))
    );
    let reg = VtdConfig {
        invalidation: InvalidationChoice::Register,
        ..VtdConfig::default()
    };
    let mut m = Model::qemu_legacy();
    m.stuck_ccmd = true;
    assert_eq!(
        init(m, reg).err(),
        Some(Error::Timeout(TimeoutKind::ContextCommand))
    );
    let mut m = Model::qemu_legacy();
    m.stuck_iotlb = true;
    assert_eq!(
        init(m, reg).err(),
        Some(Error::Timeout(TimeoutKind::IotlbInvalidation))
    );
    let mut m = Model::qemu_legacy();
    m.consume_limit = Some(0);
    assert_eq!(
        init(m, VtdConfig::default()).err(),
        Some(Error::Timeout(TimeoutKind::InvalidationWait))
    );
    // Unmap waits for its invalidation and reports when it never completes.
    let mut v = legacy();
    let d = v.create_domain().unwrap();
    v.map(d, 0x1000, 0x1000, 0x1000, Prot::READ).unwrap();
    v.regs().consume_limit = Some(0);
    assert_eq!(
        v.unmap(d, 0x1000, 0x1000),
        Err(Error::Timeout(TimeoutKind::InvalidationWait))
    );
}

#[test]
fn firmware_left_translation_on() {
    let mut m = Model::qemu_legacy();
    m.write32(regs::GCMD, regs::GCMD_TE);
    m.gcmd_log.clear();
    let mut v = init(m, VtdConfig::default()).unwrap();
    let log = v.regs().gcmd_log.clone();
    assert_eq!(log[0], 0, "TE cleared first");
    assert_eq!(log[1], regs::GCMD_SRTP);
}

#[test]
fn attach_legacy_writes_context_entry() {
    let mut v = legacy();
    let d = v.create_domain().unwrap();
    assert_eq!(v.did(d), Ok(1));
    v.attach(d, 0, 0x18).unwrap(); // 00:03.0
    let root = v.words(v.root, 512);
    let ctp = root.load(0);
    assert_eq!(ctp & 1, 1);
    let ctx = v.words(PhysAddr(ctp & !0xfff), 512);
    let (lo, hi) = (ctx.load(0x18 * 2), ctx.load(0x18 * 2 + 1));
    let slpt = v.domain(d).unwrap().pt.as_ref().unwrap().root().0;
    assert_eq!(lo, slpt | 1, "P = 1, TT = 00b, SLPTPTR");
    assert_eq!(hi, (1 << 8) | 1, "DID 1, AW 1 (39-bit)");
    assert_eq!(v.attach(d, 0, 0x18), Err(Error::AlreadyAttached));
    assert_eq!(v.attach(DomainId(9), 0, 0x20), Err(Error::NoSuchDomain));
}

#[test]
fn attach_scalable_builds_pasid_entry() {
    let mut v = init(Model::qemu_scalable(), VtdConfig::default()).unwrap();
    let d = v.create_domain().unwrap();
    v.attach(d, 1, 0x88).unwrap(); // upper half of bus 1
    let root = v.words(v.root, 512);
    assert_eq!(root.load(2), 0, "lower context table absent");
    let uctp = root.load(3);
    assert_eq!(uctp & 1, 1);
    let ctx = v.words(PhysAddr(uctp & !0xfff), 512);
    let i = (0x88 - 128) * 4;
    let w0 = ctx.load(i);
    assert_eq!(w0 & 0xfff, 1 | (2 << 9), "P, PDTS = 2");
    assert_eq!(ctx.load(i + 1), 0, "RID_PASID 0");
    let dir = v.words(PhysAddr(w0 & SM_CTX_LO_PASIDDIRPTR), 512);
    let de = dir.load(0);
    assert_eq!(de & 1, 1);
    let pe = v.words(PhysAddr(de & !0xfff), 8);
    let e = PasidEntry([
        pe.load(0),
        pe.load(1),
        pe.load(2),
        pe.load(3),
        pe.load(4),
        pe.load(5),
        pe.load(6),
        pe.load(7),
    ]);
    assert!(e.present());
    assert_eq!(e.pgtt(), PGTT_SECOND_LEVEL);
    assert_eq!((e.did(), e.aw()), (1, 1));
    assert_eq!(
        e.slptptr(),
        v.domain(d).unwrap().pt.as_ref().unwrap().root().0
    );
}

#[test]
fn unmap_invalidates_page_selectively_before_returning() {
    let mut v = legacy();
    let d = v.create_domain().unwrap();
    v.attach(d, 0, 0x18).unwrap();
    v.map(d, 0x10_0000, 0x4000_0000, 0x4000, Prot::READ_WRITE)
        .unwrap();
    assert_eq!(
        v.translate(d, 0x10_1008).unwrap().map(|t| t.pa),
        Some(0x4000_1008)
    );
    let before = v.regs().descriptors.len();
    let u = v.unmap(d, 0x10_0000, 0x4000).unwrap();
    assert_eq!(u.bytes, 0x4000);
    let m = v.regs();
    let new = &m.descriptors[before..];
    assert_eq!(
        new[0],
        Descriptor::iotlb(
            IotlbInvalidation::Page {
                did: 1,
                addr: 0x10_0000,
                am: 2,
                ih: false
            },
            true
        ),
        "tables were unlinked: no IH"
    );
    assert_eq!(new[1].kind(), inv::TYPE_WAIT);
    assert_eq!(new.len(), 2, "consumed before unmap returned");
    // A partial unmap leaves the tables in place: IH set.
    v.map(d, 0x10_0000, 0x4000_0000, 0x4000, Prot::READ_WRITE)
        .unwrap();
    let before = v.regs().descriptors.len();
    v.unmap(d, 0x10_2000, 0x2000).unwrap();
    assert_eq!(
        v.regs().descriptors[before],
        Descriptor::iotlb(
            IotlbInvalidation::Page {
                did: 1,
                addr: 0x10_2000,
                am: 1,
                ih: true
            },
            true
        )
    );
    v.unmap(d, 0x10_0000, 0x2000).unwrap();
    // Unmapping a hole issues nothing.
    let n = v.regs().descriptors.len();
    assert_eq!(v.unmap(d, 0x10_0000, 0x4000).unwrap().bytes, 0);
    assert_eq!(v.regs().descriptors.len(), n);
}

#[test]
fn unmap_register_based() {
    let mut v = register_based();
    let d = v.create_domain().unwrap();
    v.map(d, 0x3000, 0x3000, 0x8000, Prot::READ).unwrap();
    v.regs().iotlb_log.clear();
    v.unmap(d, 0x3000, 0x8000).unwrap();
    let log = v.regs().iotlb_log.clone();
    // Pages 3..=10: 3, 4..=7, 8..=9, 10.
    let ivas: Vec<u64> = log.iter().map(|(iva, _)| *iva).collect();
    assert_eq!(
        ivas,
        [0x3000, 0x4000 | 2, 0x8000 | 1, 0xa000],
        "emptied tables unlinked: IH clear"
    );
    for (_, cmd) in &log {
        assert_eq!(field_get(regs::IOTLB_IIRG, *cmd), 3);
        assert_eq!(field_get(regs::IOTLB_DID, *cmd), 1);
    }
}

#[test]
fn many_pages_fall_back_to_domain_selective() {
    let mut v = init(
        Model::qemu_legacy(),
        VtdConfig {
            max_page_invalidations: 2,
            ..VtdConfig::default()
        },
    )
    .unwrap();
    let d = v.create_domain().unwrap();
    v.map(d, 0x3000, 0x3000, 0x8000, Prot::READ).unwrap();
    let n = v.regs().descriptors.len();
    v.unmap(d, 0x3000, 0x8000).unwrap();
    assert_eq!(
        v.regs().descriptors[n],
        Descriptor::iotlb(IotlbInvalidation::Domain(1), true)
    );
}

#[test]
fn caching_mode_and_rwbf() {
    let mut v = init(
        Model::new(QEMU_7_2_CAP | CAP_CM, QEMU_7_2_ECAP_LEGACY),
        VtdConfig::default(),
    )
    .unwrap();
    let d = v.create_domain().unwrap();
    let n = v.regs().descriptors.len();
    v.attach(d, 0, 8).unwrap();
    assert_eq!(
        v.regs().descriptors[n],
        Descriptor::context_cache(ContextInvalidation::Device {
            did: 0,
            sid: 8,
            fm: 0
        })
    );
    let n = v.regs().descriptors.len();
    v.map(d, 0, 0, 0x1000, Prot::READ).unwrap();
    assert_eq!(
        v.regs().descriptors[n].kind(),
        inv::TYPE_IOTLB,
        "CM: map invalidates"
    );
    let mut w = init(
        Model::new(QEMU_7_2_CAP | CAP_RWBF, QEMU_7_2_ECAP_LEGACY),
        VtdConfig::default(),
    )
    .unwrap();
    let d = w.create_domain().unwrap();
    w.regs().gcmd_log.clear();
    w.map(d, 0, 0, 0x1000, Prot::READ).unwrap();
    assert_eq!(
        w.regs().gcmd_log,
        [regs::GCMD_TE | regs::GCMD_QIE | regs::GCMD_WBF]
    );
}

#[test]
fn detach_follows_teardown_order() {
    for scalable in [false, true] {
        let model = if scalable {
            Model::qemu_scalable()
        } else {
            Model::qemu_legacy()
        };
        let mut v = init(model, VtdConfig::default()).unwrap();
        let d = v.create_domain().unwrap();
        let live = v.mem().live_regions;
        v.attach(d, 0, 0x18).unwrap();
        let n = v.regs().descriptors.len();
        v.detach(0, 0x18).unwrap();
        let k = &kinds(v.regs())[n..];
        if scalable {
            assert_eq!(
                k,
                [
                    inv::TYPE_PASID_CACHE,
                    inv::TYPE_IOTLB,
                    inv::TYPE_PASID_IOTLB,
                    inv::TYPE_CONTEXT_CACHE,
                    inv::TYPE_WAIT
                ]
            );
        } else {
            assert_eq!(
                k,
                [inv::TYPE_CONTEXT_CACHE, inv::TYPE_IOTLB, inv::TYPE_WAIT]
            );
        }
        let (ctx, _) = v.context_entry(0, 0x18).unwrap();
        assert_eq!((ctx.load(0), ctx.load(1)), (0, 0));
        // Only the context table stays (the PASID structures were freed).
        assert_eq!(v.mem().live_regions, live + 1);
        assert_eq!(v.detach(0, 0x18), Err(Error::NoSuchDomain));
        v.attach(d, 0, 0x18).unwrap();
    }
}

#[test]
fn drains_fault_records_and_reports_overflow() {
    let mut v = legacy();
    // QEMU shapes: unmapped read (FR 6, T 1), unmapped write (FR 5).
    v.regs()
        .inject_fault(0, 0x1234_5000, FRCD_HI_T1 | (6 << 32) | 0x18);
    let mut seen = Vec::new();
    let r = v.drain_faults(|f| seen.push(f));
    assert_eq!(
        r,
        FaultReport {
            records: 1,
            overflowed: false
        }
    );
    assert_eq!(seen[0].reason, FaultReason::ReadDenied);
    assert_eq!(seen[0].access, AccessType::Read);
    assert_eq!((seen[0].address, seen[0].source_id), (0x1234_5000, 0x18));
    assert_eq!(v.regs().read32(regs::FSTS) & regs::FSTS_PPF, 0, "F cleared");
    // NFR = 1 on QEMU: a second fault before draining overflows.
    v.regs().inject_fault(0, 0x2000, (5 << 32) | 0x18);
    v.regs().inject_fault(0, 0x3000, (5 << 32) | 0x18);
    seen.clear();
    let r = v.drain_faults(|f| seen.push(f));
    assert_eq!(
        r,
        FaultReport {
            records: 1,
            overflowed: true
        }
    );
    assert_eq!(seen[0].reason, FaultReason::WriteDenied);
    assert_eq!(
        v.regs().read32(regs::FSTS) & (regs::FSTS_PFO | regs::FSTS_PPF),
        0
    );
    assert_eq!(v.drain_faults(|_| {}), FaultReport::default());
}

#[test]
fn domains_get_distinct_dids() {
    let mut v = legacy();
    let a = v.create_domain().unwrap();
    let b = v.create_domain().unwrap();
    assert_eq!((v.did(a), v.did(b)), (Ok(1), Ok(2)));
    let small = Model::new(QEMU_7_2_CAP & !crate::caps::CAP_ND, QEMU_7_2_ECAP_LEGACY);
    let mut w = init(small, VtdConfig::default()).unwrap();
    for _ in 1..16 {
        w.create_domain().unwrap();
    }
    assert_eq!(w.create_domain(), Err(Error::InvalidDomainId(0)));
}

#[test]
fn destroy_domain_frees_table_and_did() {
    let mut v = legacy();
    let live = v.mem().live_regions;
    let d = v.create_domain().unwrap();
    v.map(d, 0, 0, 0x1000, Prot::READ).unwrap();
    v.attach(d, 0, 8).unwrap();
    assert_eq!(v.destroy_domain(d), Err(Error::AlreadyAttached));
    v.detach(0, 8).unwrap();
    let n = v.regs().descriptors.len();
    v.destroy_domain(d).unwrap();
    assert_eq!(
        v.regs().descriptors[n],
        Descriptor::iotlb(IotlbInvalidation::Domain(1), true)
    );
    assert_eq!(
        v.mem().live_regions,
        live + 1,
        "only the bus 0 context table remains"
    );
    assert_eq!(v.destroy_domain(d), Err(Error::NoSuchDomain));
    let again = v.create_domain().unwrap();
    assert_eq!(v.did(again), Ok(1), "DID reused");
}

#[test]
fn four_level_tables_with_aw48() {
    let cap = (QEMU_7_2_CAP & !(crate::caps::CAP_SAGAW | crate::caps::CAP_MGAW))
        | (0b110 << 8)
        | (47 << 16);
    let mut v = init(Model::new(cap, QEMU_7_2_ECAP_LEGACY), VtdConfig::default()).unwrap();
    assert_eq!(v.levels(), 4);
    let d = v.create_domain().unwrap();
    v.attach(d, 0, 0x18).unwrap();
    v.map(d, 1 << 40, 0x20_0000, 0x20_0000, Prot::READ).unwrap();
    let t = v.translate(d, (1 << 40) + 5).unwrap().unwrap();
    assert_eq!((t.pa, t.page_size), (0x20_0005, 0x20_0000));
    let (ctx, _) = v.context_entry(0, 0x18).unwrap();
    assert_eq!(ctx.load(1) & 7, 2, "AW = 2: 48-bit, 4-level");
    assert_eq!(
        v.map(d, 1 << 48, 0, 0x1000, Prot::READ),
        Err(Error::OutOfRange)
    );
}

#[test]
fn scalable_map_unmap_uses_did_tagged_iotlb_invalidation() {
    let mut v = init(Model::qemu_scalable(), VtdConfig::default()).unwrap();
    let d = v.create_domain().unwrap();
    v.attach(d, 0, 0x18).unwrap();
    v.map(d, 0x4000_0000, 0x4000_0000, 0x4000_0000, Prot::READ_WRITE)
        .unwrap();
    let t = v.translate(d, 0x4000_1000).unwrap().unwrap();
    assert_eq!(t.page_size, 0x4000_0000, "1GB leaf (SLLPS)");
    let n = v.regs().descriptors.len();
    // Partial unmap splits the 1GB leaf twice; IH must then be clear.
    let u = v.unmap(d, 0x4000_1000, 0x1000).unwrap();
    assert_eq!(u.splits, 2);
    assert_eq!(
        v.regs().descriptors[n],
        Descriptor::iotlb(
            IotlbInvalidation::Page {
                did: 1,
                addr: 0x4000_1000,
                am: 0,
                ih: false
            },
            true
        )
    );
    assert_eq!(v.regs().descriptors[n + 1].kind(), inv::TYPE_WAIT);
    assert_eq!(v.regs().read64(regs::IQT) & 0x1f, 0, "256-bit slots");
}

#[test]
fn disable_translation_clears_te_only() {
    let mut v = legacy();
    v.disable_translation().unwrap();
    let gsts = v.regs().read32(regs::GSTS);
    assert_eq!(gsts & regs::GCMD_TE, 0);
    assert_ne!(gsts & regs::GCMD_QIE, 0, "QI stays enabled");
    v.regs().stuck_gsts = true;
    v.regs().write32(regs::GCMD, 0);
    assert_eq!(
        v.gcmd_persistent(regs::GCMD_TE, true),
        Err(Error::Timeout(TimeoutKind::GlobalStatus(regs::GCMD_TE)))
    );
}

#[test]
fn pass_through_domains() {
    for scalable in [false, true] {
        let model = if scalable {
            Model::qemu_scalable()
        } else {
            Model::qemu_legacy()
        };
        let mut v = init(model, VtdConfig::default()).unwrap();
        let d = v.create_pass_through_domain().unwrap();
        v.attach(d, 0, 0x20).unwrap();
        let (ctx, _) = v.context_entry(0, 0x20).unwrap();
        if scalable {
            let dir = v
                .words(PhysAddr(ctx.load(0) & SM_CTX_LO_PASIDDIRPTR), 1)
                .load(0);
            let pe = v.words(PhysAddr(dir & !0xfff), 2);
            assert_eq!(pe.load(0), 1 | (4 << 6), "P, PGTT = 100b");
            assert_eq!(pe.load(1), 1, "DID 1");
        } else {
            assert_eq!(ctx.load(0), 1 | (2 << 2), "P, TT = 10b");
            assert_eq!(ctx.load(1), (1 << 8) | 1, "DID 1, AW 1");
        }
        assert_eq!(
            v.map(d, 0, 0, 0x1000, Prot::READ),
            Err(Error::PassThroughDomain)
        );
        assert_eq!(v.translate(d, 0), Err(Error::PassThroughDomain));
        v.detach(0, 0x20).unwrap();
        v.destroy_domain(d).unwrap();
    }
    let no_pt = Model::new(QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY & !crate::caps::ECAP_PT);
    let mut v = init(no_pt, VtdConfig::default()).unwrap();
    assert_eq!(
        v.create_pass_through_domain(),
        Err(Error::Unsupported(Unsupported::PassThrough))
    );
}

// ----- PASIDs, page requests -----

/// ECAP of a unit with 20-bit PASIDs and page requests (QEMU's scalable layout plus
/// PSS = 19 and PRS).
const ECAP_FULL: u64 = crate::caps::QEMU_7_2_ECAP_PASID | crate::caps::ECAP_PRS | (19 << 35);

fn full() -> TestVtd {
    init(Model::new(QEMU_7_2_CAP, ECAP_FULL), VtdConfig::default()).unwrap()
}

/// The words of the scalable context entry of `bus:devfn`, walked from the root table as
/// the hardware does.
fn sm_context(v: &TestVtd, bus: u8, devfn: u8) -> Option<[u64; 4]> {
    let root = v.words(v.root, 512);
    let re = root.load(usize::from(bus) * 2 + usize::from(devfn >= 128));
    if re & 1 == 0 {
        return None;
    }
    let ce = v.words(PhysAddr((re & !0xfff) + u64::from(devfn % 128) * 32), 4);
    let w = [ce.load(0), ce.load(1), ce.load(2), ce.load(3)];
    (w[0] & 1 != 0).then_some(w)
}

/// Address of the PASID entry of `pasid`, walked through the context entry and the PASID
/// directory; `None` where something on the way is not present.
fn pasid_entry_addr(v: &TestVtd, bus: u8, devfn: u8, pasid: u32) -> Option<u64> {
    let ce = sm_context(v, bus, devfn)?;
    let entries = 1usize << (((ce[0] >> 9) & 7) + 7);
    let di = crate::context::pasid_dir_index(pasid);
    assert!(di < entries, "PASID {pasid:#x} beyond the directory (PDTS)");
    let dir = v.words(PhysAddr(ce[0] & SM_CTX_LO_PASIDDIRPTR), entries);
    let de = dir.load(di);
    (de & 1 != 0).then_some((de & !0xfff) + 64 * crate::context::pasid_table_index(pasid) as u64)
}

/// The PASID entry of `pasid` if it is present.
fn pasid_entry(v: &TestVtd, bus: u8, devfn: u8, pasid: u32) -> Option<PasidEntry> {
    let a = pasid_entry_addr(v, bus, devfn, pasid)?;
    let w = v.words(PhysAddr(a), 8);
    let e = PasidEntry(core::array::from_fn(|i| w.load(i)));
    e.present().then_some(e)
}

fn slpt(v: &TestVtd, d: DomainId) -> u64 {
    v.domain(d).unwrap().pt.as_ref().unwrap().root().0
}

#[test]
fn attach_pasid_writes_entries_in_the_table_of_their_directory_index() {
    let mut v = full();
    assert_eq!(v.pasid_bits(), 20);
    let rid = v.create_domain().unwrap();
    let d = v.create_domain().unwrap();
    let bytes = v.mem().live_bytes;
    v.attach(rid, 0, 0x18).unwrap();
    // Context table, a 2^14-entry (128KB) directory and RID_PASID's table.
    assert_eq!(v.mem().live_bytes - bytes, 4096 + (1 << 17) + 4096);
    let ce = sm_context(&v, 0, 0x18).unwrap();
    assert_eq!(
        ce[0] & 0xfff,
        1 | (1 << 3) | (1 << 4) | (7 << 9),
        "P, PASIDE, PRE, PDTS = 7"
    );
    let n = v.regs().descriptors.len();
    let regions = v.mem().live_regions;
    v.attach_pasid(d, 0, 0x18, 0x1_2345).unwrap();
    assert_eq!(
        v.mem().live_regions,
        regions + 1,
        "the table of index 0x48d"
    );
    v.attach_pasid(d, 0, 0x18, 0x1_2346).unwrap();
    assert_eq!(v.mem().live_regions, regions + 1, "same table");
    assert_eq!(
        v.regs().descriptors.len(),
        n,
        "CM = 0: nothing to invalidate"
    );
    for p in [0x1_2345, 0x1_2346] {
        let e = pasid_entry(&v, 0, 0x18, p).unwrap();
        assert_eq!(e.pgtt(), PGTT_SECOND_LEVEL);
        assert_eq!((e.did(), e.aw(), e.slptptr()), (2, 1, slpt(&v, d)));
    }
    assert_eq!(pasid_entry(&v, 0, 0x18, 0x1_2347), None);
    assert_eq!(pasid_entry(&v, 0, 0x18, 0x40), None, "index 1 has no table");
    let r = pasid_entry(&v, 0, 0x18, 0).unwrap();
    assert_eq!(
        (r.did(), r.slptptr()),
        (1, slpt(&v, rid)),
        "RID_PASID intact"
    );
    // Refusals.
    assert_eq!(
        v.attach_pasid(rid, 0, 0x18, 0x1_2345),
        Err(Error::AlreadyAttached)
    );
    assert_eq!(
        v.attach_pasid(d, 0, 0x18, 0),
        Err(Error::InvalidField("PASID (RID_PASID)"))
    );
    assert_eq!(
        v.attach_pasid(d, 0, 0x18, 1 << 20),
        Err(Error::Unsupported(Unsupported::Pasid))
    );
    assert_eq!(
        v.attach_pasid(d, 0, 0x20, 5),
        Err(Error::RequesterNotAttached)
    );
    assert_eq!(
        v.attach_pasid(DomainId(9), 0, 0x18, 5),
        Err(Error::NoSuchDomain)
    );
    // Legacy mode has no PASID tables.
    let mut l = legacy();
    let ld = l.create_domain().unwrap();
    l.attach(ld, 0, 0x18).unwrap();
    assert_eq!(l.pasid_bits(), 0);
    assert_eq!(
        l.attach_pasid(ld, 0, 0x18, 1),
        Err(Error::Unsupported(Unsupported::ScalableMode))
    );
    assert_eq!(
        l.detach_pasid(0, 0x18, 1),
        Err(Error::Unsupported(Unsupported::ScalableMode))
    );
    // QEMU's scalable mode without x-pasid-mode: no PASIDs, one-page directory.
    let mut q = init(Model::qemu_scalable(), VtdConfig::default()).unwrap();
    let qd = q.create_domain().unwrap();
    q.attach(qd, 0, 0x18).unwrap();
    assert_eq!(q.pasid_bits(), 0);
    assert_eq!(sm_context(&q, 0, 0x18).unwrap()[0] & 0xfff, 1 | (2 << 9));
    assert_eq!(
        q.attach_pasid(qd, 0, 0x18, 1),
        Err(Error::Unsupported(Unsupported::Pasid))
    );
    // With x-pasid-mode (PSS = 0): PASID 1 only, PASIDE set, still one page.
    let pasid_ecap = crate::caps::QEMU_7_2_ECAP_PASID;
    let mut p = init(Model::new(QEMU_7_2_CAP, pasid_ecap), VtdConfig::default()).unwrap();
    let pd = p.create_domain().unwrap();
    p.attach(pd, 1, 0x88).unwrap();
    assert_eq!(p.pasid_bits(), 1);
    assert_eq!(
        sm_context(&p, 1, 0x88).unwrap()[0] & 0xfff,
        1 | (1 << 3) | (2 << 9)
    );
    p.attach_pasid(pd, 1, 0x88, 1).unwrap();
    assert_eq!(pasid_entry(&p, 1, 0x88, 1).unwrap().did(), 1);
    assert_eq!(
        p.attach_pasid(pd, 1, 0x88, 2),
        Err(Error::Unsupported(Unsupported::Pasid))
    );
}

#[test]
fn detach_pasid_follows_teardown_order() {
    let mut v = full();
    let rid = v.create_domain().unwrap();
    let d = v.create_domain().unwrap();
    v.attach(rid, 0, 0x18).unwrap();
    v.attach_pasid(d, 0, 0x18, 5).unwrap();
    v.attach_pasid(d, 0, 0x18, 6).unwrap();
    let a = pasid_entry_addr(&v, 0, 0x18, 5).unwrap();
    let w0 = v.words(PhysAddr(a), 1).load(0);
    v.regs().watch = Some(a);
    let n = v.regs().descriptors.len();
    v.detach_pasid(0, 0x18, 5).unwrap();
    let m = v.regs();
    assert_eq!(
        m.descriptors[n..],
        [
            Descriptor::pasid_cache(inv::PC_G_PASID, 2, 5),
            Descriptor::iotlb(IotlbInvalidation::Domain(2), false),
            Descriptor::pasid_iotlb(2, 5, None),
            m.descriptors[n + 3],
        ]
    );
    assert_eq!(m.descriptors[n + 3].kind(), inv::TYPE_WAIT);
    // While the invalidations ran the entry was not present but otherwise intact; it
    // was cleared only after the wait completed.
    let seen: Vec<u64> = m.watched.iter().map(|&(_, w)| w).collect();
    assert_eq!(seen, [w0 & !1; 4]);
    m.watch = None;
    let e = v.words(PhysAddr(a), 8);
    assert!((0..8).all(|i| e.load(i) == 0));
    assert!(pasid_entry(&v, 0, 0x18, 6).is_some(), "PASID 6 untouched");
    assert!(pasid_entry(&v, 0, 0x18, 0).is_some(), "RID_PASID untouched");
    assert_eq!(v.detach_pasid(0, 0x18, 5), Err(Error::NoSuchDomain));
    // The PASID can be attached again, to another domain.
    v.attach_pasid(rid, 0, 0x18, 5).unwrap();
    assert_eq!(pasid_entry(&v, 0, 0x18, 5).unwrap().did(), 1);
}

#[test]
fn requester_and_domains_stay_while_pasids_are_attached() {
    let mut v = full();
    let bytes = v.mem().live_bytes;
    let rid = v.create_domain().unwrap();
    let d = v.create_domain().unwrap();
    v.attach(rid, 0, 0x18).unwrap();
    v.attach_pasid(d, 0, 0x18, 0x40).unwrap();
    v.attach_pasid(d, 0, 0x18, 0x1_2345).unwrap();
    assert_eq!(v.detach(0, 0x18), Err(Error::PasidsAttached));
    assert_eq!(v.destroy_domain(d), Err(Error::PasidsAttached));
    assert_eq!(v.destroy_domain(rid), Err(Error::AlreadyAttached));
    assert!(sm_context(&v, 0, 0x18).is_some(), "nothing was torn down");
    v.detach_pasid(0, 0x18, 0x40).unwrap();
    assert_eq!(v.detach(0, 0x18), Err(Error::PasidsAttached));
    v.detach_pasid(0, 0x18, 0x1_2345).unwrap();
    v.detach(0, 0x18).unwrap();
    assert_eq!(sm_context(&v, 0, 0x18), None);
    v.destroy_domain(d).unwrap();
    v.destroy_domain(rid).unwrap();
    assert_eq!(
        v.mem().live_bytes - bytes,
        4096,
        "directory and all three PASID tables freed; the context table stays"
    );
}

#[test]
fn reattach_moves_requests_without_pasid_and_keeps_pasids() {
    let mut v = full();
    let a = v.create_domain().unwrap();
    let b = v.create_domain().unwrap();
    let p = v.create_domain().unwrap();
    v.attach(a, 0, 0x18).unwrap();
    v.attach_pasid(p, 0, 0x18, 7).unwrap();
    let n = v.regs().descriptors.len();
    v.reattach(b, 0, 0x18).unwrap();
    assert_eq!(
        kinds(v.regs())[n..],
        [
            inv::TYPE_PASID_CACHE,
            inv::TYPE_IOTLB,
            inv::TYPE_PASID_IOTLB,
            inv::TYPE_WAIT
        ]
    );
    assert_eq!(
        v.regs().descriptors[n],
        Descriptor::pasid_cache(inv::PC_G_PASID, 1, 0),
        "the old DID's RID_PASID entry"
    );
    let r = pasid_entry(&v, 0, 0x18, 0).unwrap();
    assert_eq!((r.did(), r.slptptr()), (2, slpt(&v, b)));
    assert_eq!(pasid_entry(&v, 0, 0x18, 7).unwrap().did(), 3);
    v.reattach(b, 0, 0x18).unwrap();
    v.destroy_domain(a).unwrap();
    assert_eq!(v.destroy_domain(b), Err(Error::AlreadyAttached));
    assert_eq!(v.reattach(p, 0, 0x20), Err(Error::NoSuchDomain));
    // Legacy mode: the context entry is replaced.
    let mut l = legacy();
    let x = l.create_domain().unwrap();
    let y = l.create_domain().unwrap();
    l.attach(x, 0, 0x18).unwrap();
    l.reattach(y, 0, 0x18).unwrap();
    let (ctx, _) = l.context_entry(0, 0x18).unwrap();
    assert_eq!(ctx.load(1), (2 << 8) | 1, "DID 2");
    assert_eq!(ctx.load(0), slpt(&l, y) | 1);
    l.destroy_domain(x).unwrap();
}

#[test]
fn page_request_queue_is_set_up_masked_and_drained() {
    use crate::fault::{PageGroup, PageRequestError, ResponseCode, PRQ0_PP, PRQ1_LPIG, PRQ1_RD};
    let mut v = full();
    assert!(v.page_requests_enabled());
    let m = v.regs();
    let pqa = m.read64(regs::PQA);
    assert_eq!(pqa & 0xfff, 0, "one page, size-aligned");
    assert_ne!(pqa, 0);
    assert_eq!((m.read64(regs::PQH), m.read64(regs::PQT)), (0, 0));
    assert_eq!(m.read32(regs::PECTL), regs::PECTL_IM, "event masked");
    // Two groups of one requester with PASID 5: 0x42 of two pages, 0x43 of one; and a
    // descriptor that is not a page request.
    let req = |addr: u64, last: bool, group: u64| {
        [
            1 | PRQ0_PP | (0x18 << 16) | (5 << 32),
            addr | PRQ1_RD | if last { PRQ1_LPIG } else { 0 } | (group << 3),
            0,
            0,
        ]
    };
    let m = v.regs();
    m.push_page_request(req(0x1000, false, 0x42));
    m.push_page_request(req(0x2000, true, 0x42));
    m.push_page_request([2, 0, 0, 0]);
    m.push_page_request(req(0x3000, true, 0x43));
    let mut got = Vec::new();
    let r = v.drain_page_requests(|x| got.push(x));
    assert_eq!((r.requests, r.overflowed), (4, false));
    assert_eq!(got[2], Err(PageRequestError::NotAPageRequest(2)));
    let ok: Vec<(u64, bool, u16)> = got
        .iter()
        .flatten()
        .map(|p| (p.address, p.last_in_group, p.group_index))
        .collect();
    assert_eq!(
        ok,
        [
            (0x1000, false, 0x42),
            (0x2000, true, 0x42),
            (0x3000, true, 0x43)
        ]
    );
    assert!(got
        .iter()
        .flatten()
        .all(|p| p.rid == 0x18 && p.pasid == Some(5)));
    let m = v.regs();
    assert_eq!(m.read64(regs::PQH), 4 << 5, "PQH advanced to PQT");
    assert_eq!(m.read32(regs::PRS), 0, "PPR cleared");
    assert_eq!(v.drain_page_requests(|_| panic!()).requests, 0);
    // A full queue: 127 requests fit, the 128th overflows (PRS.PRO).
    for i in 0..128 {
        v.regs().push_page_request(req(0x1000, true, i & 0x1ff));
    }
    let r = v.drain_page_requests(|_| {});
    assert_eq!((r.requests, r.overflowed), (127, true));
    assert_eq!(v.regs().read32(regs::PRS), 0, "PRO cleared after draining");
    // The response goes through the invalidation queue and is waited for.
    let n = v.regs().descriptors.len();
    let g = PageGroup {
        rid: 0x18,
        pasid: Some(5),
        index: 0x42,
    };
    v.page_group_response(g, ResponseCode::Success).unwrap();
    let m = v.regs();
    assert_eq!(
        m.descriptors[n..],
        [
            crate::fault::group_response(&g, ResponseCode::Success),
            m.descriptors[n + 1]
        ]
    );
    assert_eq!(m.descriptors[n + 1].kind(), inv::TYPE_WAIT);
    assert_eq!(
        v.page_group_response(PageGroup { index: 0x200, ..g }, ResponseCode::Success),
        Err(Error::InvalidField("PRGI"))
    );
    assert_eq!(
        v.page_group_response(
            PageGroup {
                pasid: Some(1 << 20),
                ..g
            },
            ResponseCode::Success
        ),
        Err(Error::InvalidField("PASID"))
    );
    v.regs().consume_limit = Some(0);
    assert_eq!(
        v.page_group_response(g, ResponseCode::Success),
        Err(Error::Timeout(TimeoutKind::InvalidationWait))
    );
}

#[test]
fn page_requests_only_where_configured_and_supported() {
    use crate::fault::{PageGroup, ResponseCode};
    let g = PageGroup {
        rid: 0x18,
        pasid: None,
        index: 1,
    };
    let off = VtdConfig {
        page_requests: false,
        ..VtdConfig::default()
    };
    let legacy_mode = VtdConfig {
        mode: ModeChoice::Fixed(Mode::Legacy),
        ..VtdConfig::default()
    };
    for (model, config) in [
        (Model::new(QEMU_7_2_CAP, ECAP_FULL), off),
        (Model::new(QEMU_7_2_CAP, ECAP_FULL), legacy_mode),
        (Model::qemu_scalable(), VtdConfig::default()),
    ] {
        let mut v = init(model, config).unwrap();
        assert!(!v.page_requests_enabled());
        assert_eq!(v.regs().read64(regs::PQA), 0, "no queue programmed");
        assert_eq!(
            v.page_group_response(g, ResponseCode::Success),
            Err(Error::Unsupported(Unsupported::PageRequests))
        );
        assert_eq!(v.drain_page_requests(|_| panic!()), PrqReport::default());
        if v.mode() == Mode::Scalable {
            let d = v.create_domain().unwrap();
            v.attach(d, 0, 0x18).unwrap();
            assert_eq!(sm_context(&v, 0, 0x18).unwrap()[0] & (1 << 4), 0, "no PRE");
        }
    }
    // A bigger queue: 2^2 pages, size-aligned.
    let big = VtdConfig {
        prq_pages_log2: 2,
        ..VtdConfig::default()
    };
    let mut v = init(Model::new(QEMU_7_2_CAP, ECAP_FULL), big).unwrap();
    let pqa = v.regs().read64(regs::PQA);
    assert_eq!((pqa & 7, pqa & 0x3ff8), (2, 0));
    let too_big = VtdConfig {
        prq_pages_log2: 8,
        ..VtdConfig::default()
    };
    assert_eq!(
        init(Model::new(QEMU_7_2_CAP, ECAP_FULL), too_big).err(),
        Some(Error::InvalidField("PQA.PQS"))
    );
}

#[test]
fn caching_mode_invalidates_new_pasid_entries() {
    let mut v = init(
        Model::new(QEMU_7_2_CAP | CAP_CM, ECAP_FULL),
        VtdConfig::default(),
    )
    .unwrap();
    let rid = v.create_domain().unwrap();
    let d = v.create_domain().unwrap();
    v.attach(rid, 0, 0x18).unwrap();
    let n = v.regs().descriptors.len();
    v.attach_pasid(d, 0, 0x18, 9).unwrap();
    assert_eq!(
        v.regs().descriptors[n..n + 2],
        [
            Descriptor::pasid_cache(inv::PC_G_PASID, 2, 9),
            Descriptor::iotlb(IotlbInvalidation::Domain(2), true)
        ]
    );
}
