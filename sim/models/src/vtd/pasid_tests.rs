//! The VT-d driver's PASID attachments, page request queue and page group responses, and
//! the same through iommu-server's hardware seam (`iommu_adapters::vtd`), against this
//! model: PASID-tagged DMA, the fault records it produces, page requests devices raise
//! and the responses devices receive. QEMU has none of these (PSS = 0, PRS = 0), so the
//! model's [`VtdModelConfig::full`] unit stands in, with QEMU's `x-pasid-mode` unit
//! (one PASID bit) where it applies.

use std::sync::Arc;

use iommu_adapters::vtd::VtdHardware;
use iommu_server::{Hardware, HwFault};
use ipc_protocol::iommu::{PageResponseCode, Perm};
use ipc_protocol::records::{fault_flags, FaultKind};
use ipc_protocol::Error;
use sim_physmem::{PhysMem, SimDma};
use vtd::fault::{FaultRecord, PageGroup, ResponseCode};
use vtd::regs::PollBudget;
use vtd::{DomainId, Prot, Vtd, VtdConfig};

use super::*;

type Driver = Vtd<VtdModel, SimDma, PollBudget>;
type Hw = VtdHardware<VtdModel, SimDma, PollBudget>;

const A: u16 = 0x0018;
const B: u16 = 0x0100;
const FRAME: u64 = 0x0400_0000;
const IOVA: u64 = 0x0800_0000;

fn driver(config: VtdModelConfig) -> (Driver, VtdModel, Arc<PhysMem>) {
    let mem = PhysMem::new(0, 256 << 20);
    let model = VtdModel::new(mem.clone(), config);
    let dma = SimDma::new(mem.clone(), 0x0100_0000, 0x0100_0000);
    let v = Vtd::new(
        model.clone(),
        dma,
        PollBudget::new(100),
        VtdConfig::default(),
    )
    .unwrap();
    (v, model, mem)
}

fn hardware(config: VtdModelConfig) -> (Hw, VtdModel, Arc<PhysMem>) {
    let (v, model, mem) = driver(config);
    (VtdHardware::new(v), model, mem)
}

fn read(m: &VtdModel, sid: u16, pasid: Option<u32>, iova: u64) -> Result<u64, DmaError> {
    let mut b = [0u8; 8];
    m.dma_read(sid, pasid, iova, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn write(m: &VtdModel, sid: u16, pasid: Option<u32>, iova: u64, v: u64) -> Result<(), DmaError> {
    m.dma_write(sid, pasid, iova, &v.to_le_bytes())
}

fn records(v: &mut Driver) -> Vec<FaultRecord> {
    let mut r = Vec::new();
    v.drain_faults(|f| r.push(f));
    r
}

fn drain(hw: &mut Hw) -> (Vec<HwFault>, u32) {
    let mut v = Vec::new();
    let lost = hw.drain_faults(&mut |f| v.push(f));
    (v, lost)
}

/// A domain with `IOVA` mapped read-write to `frame`.
fn domain(v: &mut Driver, frame: u64) -> DomainId {
    let d = v.create_domain().unwrap();
    v.map(d, IOVA, frame, 0x1000, Prot::READ_WRITE).unwrap();
    d
}

fn request(rid: u16, pasid: Option<u32>, address: u64, last: bool, group: u16) -> PageRequest {
    PageRequest {
        rid,
        pasid,
        address,
        read: true,
        write: false,
        execute: false,
        privileged: false,
        last,
        group,
    }
}

// ----- the driver -----

#[test]
fn dma_with_a_pasid_reaches_the_domain_attached_for_it() {
    let (mut v, m, mem) = driver(VtdModelConfig::full());
    let rid = domain(&mut v, FRAME);
    let five = domain(&mut v, FRAME + 0x1000);
    let far = domain(&mut v, FRAME + 0x2000);
    v.attach(rid, 0, A as u8).unwrap();
    v.attach_pasid(five, 0, A as u8, 5).unwrap();
    // Another PASID directory entry (index 0x3fff), the largest 20-bit PASID.
    v.attach_pasid(far, 0, A as u8, 0xf_ffff).unwrap();
    write(&m, A, None, IOVA + 8, 0x11).unwrap();
    write(&m, A, Some(5), IOVA + 8, 0x55).unwrap();
    write(&m, A, Some(0xf_ffff), IOVA + 8, 0xff).unwrap();
    assert_eq!(mem.read_u64(FRAME + 8).unwrap(), 0x11);
    assert_eq!(mem.read_u64(FRAME + 0x1008).unwrap(), 0x55);
    assert_eq!(mem.read_u64(FRAME + 0x2008).unwrap(), 0xff);
    assert_eq!(read(&m, A, Some(5), IOVA + 8), Ok(0x55));
    assert_eq!(read(&m, A, None, IOVA + 8), Ok(0x11));
    assert_eq!(records(&mut v), []);
    // QEMU's x-pasid-mode unit: PSS = 0, so PASID 1 is the only one.
    let (mut q, qm, qmem) = driver(VtdModelConfig::qemu_scalable());
    let rid = domain(&mut q, FRAME);
    let one = domain(&mut q, FRAME + 0x1000);
    q.attach(rid, 1, 0).unwrap();
    q.attach_pasid(one, 1, 0, 1).unwrap();
    write(&qm, B, Some(1), IOVA, 0x1).unwrap();
    assert_eq!(qmem.read_u64(FRAME + 0x1000).unwrap(), 0x1);
    assert_eq!(
        q.attach_pasid(one, 1, 0, 2),
        Err(vtd::Error::Unsupported(vtd::Unsupported::Pasid))
    );
}

#[test]
fn a_pasid_not_attached_faults_with_its_pasid_in_the_record() {
    let (mut v, m, _) = driver(VtdModelConfig::full());
    let rid = domain(&mut v, FRAME);
    let five = domain(&mut v, FRAME + 0x1000);
    v.attach(rid, 0, A as u8).unwrap();
    v.attach_pasid(five, 0, A as u8, 5).unwrap();
    // PASID 6: its table exists (PASID 5's), its entry does not. PASID 0x4_0000: no
    // table in its directory entry.
    for p in [6, 0x4_0000] {
        assert!(matches!(
            read(&m, A, Some(p), IOVA),
            Err(DmaError::Fault {
                reason: FAULT_PASID_TABLE,
                ..
            })
        ));
        let r = records(&mut v);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].source_id, r[0].pasid, r[0].address, r[0].reason.code()),
            (A, Some(p), IOVA, 0x58)
        );
    }
    // An attached PASID at an unmapped address: a walk fault, with the PASID.
    assert!(write(&m, A, Some(5), 0x0900_0000, 1).is_err());
    let r = records(&mut v);
    assert_eq!(
        (r[0].pasid, r[0].reason.code(), r[0].address),
        (Some(5), FAULT_WRITE, 0x0900_0000)
    );
    // A PASID wider than ECAP.PSS never reaches the tables.
    let (mut q, qm, _) = driver(VtdModelConfig::qemu_scalable());
    let d = domain(&mut q, FRAME);
    q.attach(d, 0, A as u8).unwrap();
    assert_eq!(read(&qm, A, Some(2), IOVA), Err(DmaError::PasidUnsupported));
    assert_eq!(records(&mut q), []);
}

#[test]
fn detach_pasid_then_dma_faults() {
    let (mut v, m, mem) = driver(VtdModelConfig::full());
    let rid = domain(&mut v, FRAME);
    let five = domain(&mut v, FRAME + 0x1000);
    let seven = domain(&mut v, FRAME + 0x2000);
    v.attach(rid, 0, A as u8).unwrap();
    v.attach_pasid(five, 0, A as u8, 5).unwrap();
    v.attach_pasid(seven, 0, A as u8, 7).unwrap();
    // Fill the model's PASID cache and IOTLB for PASID 5 first.
    write(&m, A, Some(5), IOVA, 1).unwrap();
    write(&m, A, Some(5), IOVA, 2).unwrap();
    assert!(m.stats().iotlb_hits > 0);
    let (context, pasids, iotlb) = m.cache_sizes();
    assert!(context > 0 && pasids > 0 && iotlb > 0);
    assert_eq!(v.detach(0, A as u8), Err(vtd::Error::PasidsAttached));
    assert_eq!(v.destroy_domain(five), Err(vtd::Error::PasidsAttached));
    v.detach_pasid(0, A as u8, 5).unwrap();
    // Nothing cached survives the detach.
    assert!(matches!(
        write(&m, A, Some(5), IOVA, 3),
        Err(DmaError::Fault {
            reason: FAULT_PASID_TABLE,
            ..
        })
    ));
    assert_eq!(mem.read_u64(FRAME + 0x1000).unwrap(), 2);
    let r = records(&mut v);
    assert_eq!((r[0].pasid, r[0].reason.code()), (Some(5), 0x58));
    // The requester's other PASID and its requests without PASID go on.
    write(&m, A, Some(7), IOVA, 7).unwrap();
    write(&m, A, None, IOVA, 9).unwrap();
    assert_eq!(mem.read_u64(FRAME + 0x2000).unwrap(), 7);
    assert_eq!(mem.read_u64(FRAME).unwrap(), 9);
    // PASID 5 attached again, to another domain.
    v.attach_pasid(seven, 0, A as u8, 5).unwrap();
    assert_eq!(read(&m, A, Some(5), IOVA), Ok(7));
    v.detach_pasid(0, A as u8, 5).unwrap();
    v.detach_pasid(0, A as u8, 7).unwrap();
    v.destroy_domain(five).unwrap();
    v.destroy_domain(seven).unwrap();
    v.detach(0, A as u8).unwrap();
    assert!(read(&m, A, Some(7), IOVA).is_err());
    assert!(read(&m, A, None, IOVA).is_err());
}

#[test]
fn reattach_moves_requests_without_pasid_only() {
    let (mut v, m, _) = driver(VtdModelConfig::full());
    let first = domain(&mut v, FRAME);
    let second = domain(&mut v, FRAME + 0x1000);
    let five = domain(&mut v, FRAME + 0x2000);
    mem_fill(&m, &[(FRAME, 1), (FRAME + 0x1000, 2), (FRAME + 0x2000, 5)]);
    v.attach(first, 0, A as u8).unwrap();
    v.attach_pasid(five, 0, A as u8, 5).unwrap();
    assert_eq!(read(&m, A, None, IOVA), Ok(1));
    assert_eq!(read(&m, A, Some(5), IOVA), Ok(5));
    v.reattach(second, 0, A as u8).unwrap();
    assert_eq!(read(&m, A, None, IOVA), Ok(2), "no stale translation");
    assert_eq!(read(&m, A, Some(5), IOVA), Ok(5));
    assert_eq!(records(&mut v), []);
}

fn mem_fill(m: &VtdModel, words: &[(u64, u64)]) {
    for &(pa, v) in words {
        m.phys().write_u64(pa, v).unwrap();
    }
}

#[test]
fn page_requests_reach_the_driver_and_responses_reach_the_device() {
    let (mut v, m, _) = driver(VtdModelConfig::full());
    assert!(v.page_requests_enabled());
    let d = domain(&mut v, FRAME);
    v.attach(d, 0, A as u8).unwrap();
    v.attach_pasid(d, 0, A as u8, 5).unwrap();
    // A group of two pages with PASID 5, and one without PASID.
    let first = request(A, Some(5), 0x1234_5000, false, 0x42);
    let last = PageRequest {
        address: 0x1234_6000,
        write: true,
        last: true,
        ..first
    };
    let plain = request(A, None, 0x7000, true, 0x1ff);
    for r in [first, last, plain] {
        assert_eq!(m.page_request(r), PageRequestOutcome::Queued);
    }
    let mut got = Vec::new();
    let rep = v.drain_page_requests(|r| got.push(r.unwrap()));
    assert_eq!((rep.requests, rep.overflowed), (3, false));
    // What the driver decoded is what the device asked, field for field.
    let decoded = |r: PageRequest| vtd::fault::PageRequest {
        rid: r.rid,
        pasid: r.pasid,
        address: r.address,
        read: r.read,
        write: r.write,
        execute: r.execute,
        privileged: r.privileged,
        last_in_group: r.last,
        group_index: r.group,
    };
    assert_eq!(got, [decoded(first), decoded(last), decoded(plain)]);
    assert_eq!(
        (got[1].write, got[1].last_in_group, got[2].pasid),
        (true, true, None)
    );
    v.page_group_response(got[1].group(), ResponseCode::Success)
        .unwrap();
    v.page_group_response(got[2].group(), ResponseCode::InvalidRequest)
        .unwrap();
    assert_eq!(
        m.page_responses(),
        [
            PageResponse {
                rid: A,
                pasid: Some(5),
                group: 0x42,
                code: 0,
                from_hardware: false
            },
            PageResponse {
                rid: A,
                pasid: None,
                group: 0x1ff,
                code: 1,
                from_hardware: false
            }
        ]
    );
    // A requester the driver did not attach has no PRE: the unit answers itself.
    assert_eq!(
        m.page_request(request(B, None, 0, true, 3)),
        PageRequestOutcome::Refused
    );
    assert_eq!(v.drain_page_requests(|_| panic!()).requests, 0);
    // 127 requests fill the one-page queue; the next is dropped (PRS.PRO) and answered
    // by the unit. Draining reports the overflow and clears it: requests queue again.
    for round in 0..3u16 {
        for i in 0..127 {
            assert_eq!(
                m.page_request(request(A, Some(5), 0x1000, true, i)),
                PageRequestOutcome::Queued,
                "round {round}, {i}"
            );
        }
        assert_eq!(
            m.page_request(request(A, Some(5), 0x1000, true, 0x100)),
            PageRequestOutcome::Overflow
        );
        let mut n = 0u16;
        let rep = v.drain_page_requests(|r| {
            assert_eq!(r.unwrap().group_index, n);
            n += 1;
        });
        assert_eq!((rep.requests, rep.overflowed), (127, true));
    }
    let hw_answers = m
        .page_responses()
        .iter()
        .filter(|r| r.from_hardware && r.group == 0x100 && r.code == 0)
        .count();
    assert_eq!(hw_answers, 3);
    assert_eq!(
        m.page_request(request(A, Some(5), 0x1000, true, 1)),
        PageRequestOutcome::Queued
    );
    // QEMU's unit has no page requests: no queue, and the unit refuses them.
    let (mut q, qm, _) = driver(VtdModelConfig::qemu_scalable());
    assert!(!q.page_requests_enabled());
    let d = domain(&mut q, FRAME);
    q.attach(d, 0, A as u8).unwrap();
    assert_eq!(
        qm.page_request(request(A, None, 0, true, 1)),
        PageRequestOutcome::Refused
    );
    assert_eq!(
        q.page_group_response(
            PageGroup {
                rid: A,
                pasid: None,
                index: 1
            },
            ResponseCode::Success
        ),
        Err(vtd::Error::Unsupported(vtd::Unsupported::PageRequests))
    );
}

// ----- iommu-server's hardware seam -----

#[test]
fn adapter_reports_pasid_width_and_page_requests() {
    for (config, bits, pri) in [
        (VtdModelConfig::full(), 20, true),
        (VtdModelConfig::qemu_scalable(), 1, false),
        (VtdModelConfig::qemu_legacy(), 0, false),
    ] {
        let (hw, _, _) = hardware(config);
        let i = hw.device_info(u32::from(A));
        assert_eq!((i.pasid_bits, i.pri, i.ats), (bits, pri, false));
    }
    let (mut legacy, _, _) = hardware(VtdModelConfig::qemu_legacy());
    let d = legacy.domain_alloc().unwrap();
    legacy.attach(u32::from(A), None, d).unwrap();
    assert_eq!(
        legacy.attach(u32::from(A), Some(1), d),
        Err(Error::Unsupported)
    );
    assert_eq!(legacy.detach(u32::from(A), Some(1)), Err(Error::NotFound));
}

#[test]
fn adapter_routes_pasid_dma_and_detach_blocks_it() {
    for (config, p) in [
        (VtdModelConfig::full(), 0x1_2345),
        (VtdModelConfig::qemu_scalable(), 1),
    ] {
        let (mut hw, m, mem) = hardware(config);
        let s = u32::from(A);
        let r = hw.domain_alloc().unwrap();
        let d = hw.domain_alloc().unwrap();
        hw.map(r, IOVA, FRAME, 0x1000, Perm::RW).unwrap();
        hw.map(d, IOVA, FRAME + 0x1000, 0x1000, Perm::RW).unwrap();
        hw.map(d, IOVA + 0x1000, FRAME + 0x2000, 0x1000, Perm::READ)
            .unwrap();
        hw.attach(s, None, r).unwrap();
        hw.attach(s, Some(p), d).unwrap();
        assert_eq!(hw.attach(s, Some(p), r), Err(Error::Busy));
        write(&m, A, Some(p), IOVA, 0xd).unwrap();
        write(&m, A, None, IOVA, 0x7).unwrap();
        assert_eq!(mem.read_u64(FRAME + 0x1000).unwrap(), 0xd);
        assert_eq!(mem.read_u64(FRAME).unwrap(), 0x7);
        // Faults of PASID-tagged requests are classified by the PASID's domain.
        assert!(write(&m, A, Some(p), IOVA + 0x1000, 1).is_err());
        let (f, lost) = drain(&mut hw);
        assert_eq!(lost, 0);
        assert_eq!(
            f,
            [HwFault {
                stream: s,
                pasid: Some(p),
                kind: FaultKind::Permission,
                flags: fault_flags::PASID_VALID,
                reason: 5,
                address: IOVA + 0x1000,
                group: 0,
            }]
        );
        assert!(read(&m, A, Some(p), IOVA + 0x5000).is_err());
        let (f, _) = drain(&mut hw);
        assert_eq!(
            (f[0].kind, f[0].flags, f[0].pasid),
            (
                FaultKind::Translation,
                fault_flags::READ | fault_flags::PASID_VALID,
                Some(p)
            )
        );
        assert_eq!(hw.domain_free(d), Err(Error::Busy));
        hw.detach(s, Some(p)).unwrap();
        assert!(read(&m, A, Some(p), IOVA).is_err(), "blocked on return");
        let (f, _) = drain(&mut hw);
        assert_eq!(
            (f[0].kind, f[0].reason, f[0].pasid),
            (FaultKind::BadConfig, 0x58, Some(p))
        );
        assert_eq!(hw.detach(s, Some(p)), Err(Error::NotFound));
        assert_eq!(
            read(&m, A, None, IOVA),
            Ok(0x7),
            "the stream stays attached"
        );
        hw.domain_free(d).unwrap();
    }
}

#[test]
fn adapter_pasids_outlive_the_stream_attachment() {
    let (mut hw, m, mem) = hardware(VtdModelConfig::full());
    let s = u32::from(A);
    let before = hw.vtd().mem().live();
    let r = hw.domain_alloc().unwrap();
    let r2 = hw.domain_alloc().unwrap();
    let d = hw.domain_alloc().unwrap();
    hw.map(r, IOVA, FRAME, 0x1000, Perm::RW).unwrap();
    hw.map(r2, IOVA, FRAME + 0x1000, 0x1000, Perm::RW).unwrap();
    hw.map(d, IOVA, FRAME + 0x2000, 0x1000, Perm::RW).unwrap();
    mem_fill(&m, &[(FRAME, 1), (FRAME + 0x1000, 2), (FRAME + 0x2000, 5)]);
    // The stream detached while its PASID stays: requests without PASID fault as
    // untranslated, the PASID's go on.
    hw.attach(s, None, r).unwrap();
    hw.attach(s, Some(5), d).unwrap();
    hw.detach(s, None).unwrap();
    assert!(read(&m, A, None, IOVA).is_err());
    assert_eq!(read(&m, A, Some(5), IOVA), Ok(5));
    let (f, _) = drain(&mut hw);
    assert_eq!(
        (f[0].pasid, f[0].kind, f[0].reason),
        (None, FaultKind::Translation, 6)
    );
    assert_eq!(hw.detach(s, None), Err(Error::NotFound));
    hw.domain_free(r).unwrap();
    // Attached again, to another domain.
    hw.attach(s, None, r2).unwrap();
    assert_eq!(read(&m, A, None, IOVA), Ok(2));
    assert_eq!(read(&m, A, Some(5), IOVA), Ok(5));
    // Detached in iommu-server's teardown order (the stream first), then the PASID:
    // nothing of the stream is left.
    hw.detach(s, None).unwrap();
    hw.detach(s, Some(5)).unwrap();
    assert!(read(&m, A, Some(5), IOVA).is_err());
    assert!(read(&m, A, None, IOVA).is_err());
    let (f, _) = drain(&mut hw);
    assert!(f.iter().all(|f| f.kind == FaultKind::BadConfig), "{f:?}");
    // A PASID attached to a stream that never was.
    hw.attach(s, Some(9), d).unwrap();
    assert_eq!(read(&m, A, Some(9), IOVA), Ok(5));
    assert!(write(&m, A, None, IOVA, 0xbad).is_err());
    assert_eq!(mem.read_u64(FRAME + 0x1000).unwrap(), 2);
    hw.detach(s, Some(9)).unwrap();
    assert!(read(&m, A, Some(9), IOVA).is_err());
    drain(&mut hw);
    hw.domain_free(r2).unwrap();
    hw.domain_free(d).unwrap();
    // Left: the bus 0 context table and the blocking domain's (empty) table.
    let after = hw.vtd().mem().live();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0x2000, 2));
}

#[test]
fn adapter_delivers_page_requests_and_answers_each_group_once() {
    let (mut hw, m, _) = hardware(VtdModelConfig::full());
    let s = u32::from(A);
    let d = hw.domain_alloc().unwrap();
    hw.attach(s, None, d).unwrap();
    hw.attach(s, Some(5), d).unwrap();
    let first = PageRequest {
        write: true,
        ..request(A, Some(5), 0x1234_5000, false, 0x42)
    };
    let last = PageRequest {
        address: 0x1234_6000,
        last: true,
        privileged: true,
        ..request(A, Some(5), 0, true, 0x42)
    };
    let plain = request(A, None, 0x7000, true, 0x43);
    for r in [first, last, plain] {
        assert_eq!(m.page_request(r), PageRequestOutcome::Queued);
    }
    let (f, lost) = drain(&mut hw);
    assert_eq!(lost, 0);
    let pr = |pasid, flags, address, group| HwFault {
        stream: s,
        pasid,
        kind: FaultKind::PageRequest,
        flags,
        reason: 0,
        address,
        group,
    };
    use fault_flags::{LAST_IN_GROUP, PASID_VALID, PRIVILEGED, READ};
    assert_eq!(
        f,
        [
            pr(Some(5), PASID_VALID, 0x1234_5000, 0x42),
            pr(
                Some(5),
                READ | PRIVILEGED | PASID_VALID | LAST_IN_GROUP,
                0x1234_6000,
                0x42
            ),
            pr(None, READ | LAST_IN_GROUP, 0x7000, 0x43),
        ]
    );
    // Group 0x42 is answered once, after both its requests: with the worse code.
    hw.page_response(s, Some(5), 0x42, PageResponseCode::Success)
        .unwrap();
    assert_eq!(m.page_responses(), []);
    hw.page_response(s, Some(5), 0x42, PageResponseCode::Invalid)
        .unwrap();
    hw.page_response(s, None, 0x43, PageResponseCode::Success)
        .unwrap();
    let sent = |pasid, group, code| PageResponse {
        rid: A,
        pasid,
        group,
        code,
        from_hardware: false,
    };
    assert_eq!(
        m.page_responses(),
        [sent(Some(5), 0x42, 1), sent(None, 0x43, 0)]
    );
    // Nothing more is waiting for an answer.
    for (pasid, group) in [(Some(5), 0x42), (None, 0x43), (Some(6), 0x42)] {
        assert_eq!(
            hw.page_response(s, pasid, group, PageResponseCode::Success),
            Err(Error::NotFound)
        );
    }
    assert_eq!(
        hw.page_response(s, None, 0x200, PageResponseCode::Success),
        Err(Error::Invalid)
    );
    // A group answered before its last request arrives waits for it.
    m.page_request(request(A, None, 0x1000, false, 7));
    drain(&mut hw);
    hw.page_response(s, None, 7, PageResponseCode::Failure)
        .unwrap();
    m.page_request(request(A, None, 0x2000, true, 7));
    drain(&mut hw);
    assert_eq!(m.page_responses().len(), 2);
    hw.page_response(s, None, 7, PageResponseCode::Success)
        .unwrap();
    assert_eq!(m.page_responses()[2], sent(None, 7, 0xf));
    // Units without page requests refuse responses.
    let (mut q, _, _) = hardware(VtdModelConfig::qemu_scalable());
    assert_eq!(
        q.page_response(s, None, 1, PageResponseCode::Success),
        Err(Error::Unsupported)
    );
}

#[test]
fn adapter_counts_a_page_request_overflow_as_lost() {
    let (mut hw, m, _) = hardware(VtdModelConfig::full());
    let s = u32::from(A);
    let d = hw.domain_alloc().unwrap();
    hw.attach(s, None, d).unwrap();
    // A group whose last request the unit drops: it answers that group itself.
    m.page_request(request(A, None, 0x1000, false, 0x1f0));
    for i in 0..126 {
        m.page_request(request(A, None, 0x1000, true, i));
    }
    assert_eq!(
        m.page_request(request(A, None, 0x2000, true, 0x1f0)),
        PageRequestOutcome::Overflow
    );
    let (f, lost) = drain(&mut hw);
    assert_eq!((f.len(), lost), (127, 1));
    // Answering every delivered request sends one response per complete group (126);
    // group 0x1f0, whose end the unit answered, gets none from software.
    for x in &f {
        hw.page_response(s, None, x.group, PageResponseCode::Success)
            .unwrap();
    }
    let responses = m.page_responses();
    let from_software: Vec<u16> = responses
        .iter()
        .filter(|r| !r.from_hardware)
        .map(|r| r.group)
        .collect();
    assert_eq!(from_software, (0..126).collect::<Vec<u16>>());
    assert!(responses.contains(&PageResponse {
        rid: A,
        pasid: None,
        group: 0x1f0,
        code: 0,
        from_hardware: true
    }));
    // Forgotten: a later answer for it finds nothing.
    assert_eq!(
        hw.page_response(s, None, 0x1f0, PageResponseCode::Success),
        Err(Error::NotFound)
    );
}

// ----- iommu-server over the seam -----

/// PASIDs for iommu-server without pasid-server: handed out in order from `next`.
struct Pasids {
    next: u32,
}

impl iommu_server::PasidAuthority for Pasids {
    fn alloc_private(&mut self, _owner: u32, max: u32) -> Result<u32, Error> {
        if self.next > max {
            return Err(Error::NoSpace);
        }
        self.next += 1;
        Ok(self.next - 1)
    }
    fn free(&mut self, _owner: u32, _pasid: u32) -> Result<(), Error> {
        Ok(())
    }
    fn revoke_owner(&mut self, _owner: u32) -> Result<(), Error> {
        Ok(())
    }
}

#[test]
fn iommu_server_routes_pasid_dma_page_requests_and_responses() {
    use iommu_server::{ClientConfig, ClientQuota, Config, DeviceCap, IommuServer};
    use ipc_protocol::iommu::{IommuReply as Reply, IommuRequest as Req, IovaPlacement, MemoryRef};
    const CLIENT: u64 = 0xa;
    const DEVICE: u64 = 0xa18;
    let (hw, m, mem) = hardware(VtdModelConfig::full());
    let config = Config {
        clients: vec![ClientConfig {
            id: 1,
            badge: CLIENT,
            quota: ClientQuota {
                max_ioas: 4,
                max_mapped_bytes: 1 << 20,
                max_fault_queues: 1,
                max_pasids: 2,
            },
        }],
        devices: vec![DeviceCap {
            badge: DEVICE,
            client: 1,
            stream: u32::from(A),
        }],
        iova_bits: 48,
        max_fault_queue_depth: 16,
    };
    let mut s = IommuServer::new(config, hw, Pasids { next: 0x1_2345 }).unwrap();
    let ok = |s: &mut IommuServer<Hw, Pasids>, r: Req| {
        s.handle(CLIENT, &r)
            .unwrap_or_else(|e| panic!("{r:?}: {e:?}"))
    };
    let client = s.client_index(1).unwrap();
    let Reply::DeviceOpened { device, info } = s.handle(DEVICE, &Req::OpenDevice).unwrap() else {
        panic!("OpenDevice");
    };
    assert_eq!((info.pasid_bits, info.pri), (20, true));
    let ioas_mapping = |s: &mut IommuServer<Hw, Pasids>, frame: u64| {
        let Reply::IoasAllocated { ioas } = ok(s, Req::AllocIoas) else {
            panic!("AllocIoas");
        };
        let region = s.grant_region(client, vec![frame], Perm::RW).unwrap();
        let Reply::Mapped { iova } = ok(
            s,
            Req::Map {
                ioas,
                iova: IovaPlacement::Anywhere { align: 4096 },
                length: 4096,
                memory: MemoryRef { region, offset: 0 },
                perm: Perm::RW,
            },
        ) else {
            panic!("Map");
        };
        (ioas, iova)
    };
    let (plain, plain_iova) = ioas_mapping(&mut s, FRAME);
    let (tagged, tagged_iova) = ioas_mapping(&mut s, FRAME + 0x1000);
    ok(
        &mut s,
        Req::Attach {
            device,
            pasid: None,
            ioas: plain,
        },
    );
    let Reply::PasidAllocated { pasid } = ok(&mut s, Req::AllocPasid { device }) else {
        panic!("AllocPasid");
    };
    assert_eq!(pasid, 0x1_2345);
    ok(
        &mut s,
        Req::Attach {
            device,
            pasid: Some(pasid),
            ioas: tagged,
        },
    );
    write(&m, A, None, plain_iova, 0x1).unwrap();
    write(&m, A, Some(pasid), tagged_iova, 0x2).unwrap();
    assert_eq!(mem.read_u64(FRAME).unwrap(), 0x1);
    assert_eq!(mem.read_u64(FRAME + 0x1000).unwrap(), 0x2);
    // A page request reaches the owner's fault queue with a cookie; the owner's
    // response reaches the device as the group's response.
    let ring = s
        .grant_region(client, vec![FRAME + 0x2000], Perm::RW)
        .unwrap();
    let Reply::FaultQueueAllocated { queue } = ok(
        &mut s,
        Req::AllocFaultQueue {
            device,
            ring: MemoryRef {
                region: ring,
                offset: 0,
            },
            depth: 8,
        },
    ) else {
        panic!("AllocFaultQueue");
    };
    assert_eq!(
        m.page_request(request(A, Some(pasid), tagged_iova + 0x1000, true, 0x42)),
        PageRequestOutcome::Queued
    );
    assert_eq!(s.process_faults().delivered, 1);
    let (f, lost) = s.pop_fault(client, queue).unwrap();
    let f = f.unwrap();
    assert_eq!(lost, 0);
    assert_eq!(
        (f.kind, f.pasid, f.address, f.device),
        (
            FaultKind::PageRequest,
            Some(pasid),
            tagged_iova + 0x1000,
            device.0
        )
    );
    assert_ne!(f.cookie, 0);
    ok(
        &mut s,
        Req::PageResponse {
            queue,
            cookie: f.cookie,
            code: PageResponseCode::Success,
        },
    );
    assert_eq!(
        m.page_responses(),
        [PageResponse {
            rid: A,
            pasid: Some(pasid),
            group: 0x42,
            code: 0,
            from_hardware: false
        }]
    );
    // The client dies: iommu-server detaches the stream first, then the PASID; no DMA
    // gets through afterwards and every frame comes back.
    let frames = s.client_died(client).unwrap();
    assert_eq!(frames.len(), 3);
    assert!(write(&m, A, None, plain_iova, 0xbad).is_err());
    assert!(write(&m, A, Some(pasid), tagged_iova, 0xbad).is_err());
    assert_eq!(mem.read_u64(FRAME).unwrap(), 0x1);
    assert_eq!(mem.read_u64(FRAME + 0x1000).unwrap(), 0x2);
}
