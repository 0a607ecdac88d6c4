//! iommu-server's SMMUv3 adapter ([`SmmuHardware`]) against the model: DMA reaches the
//! mapped frames, unmap and detach take effect before they return, streams are isolated,
//! and faults come out of `drain_faults` with stream, address and direction.

use std::sync::Arc;

use iommu_adapters::smmuv3::{SmmuHardware, PRI_GROUP};
use iommu_models::smmuv3::{event as evt, Config, DmaError, PriRequest, PriResponse, Smmuv3};
use iommu_server::{Hardware, HwDomain, HwFault};
use ipc_protocol::iommu::{IommuKind, PageResponseCode, Perm};
use ipc_protocol::records::{fault_flags, FaultKind};
use ipc_protocol::Error;
use sim_physmem::{PhysMem, RangeAllocator, SimDma};
use smmuv3::{PollBudget, SmmuConfig};

use crate::rig::{smmu_config, BUFFER_WINDOW, DRIVER_WINDOW, RAM_BASE, RAM_SIZE};

type Hw = SmmuHardware<Smmuv3, SimDma, PollBudget>;

struct Sys {
    mem: Arc<PhysMem>,
    model: Smmuv3,
    hw: Hw,
    bufs: RangeAllocator,
}

fn sys_with(config: SmmuConfig) -> Sys {
    sys_on(config, Config::QEMU_7_2)
}

fn sys_on(config: SmmuConfig, model_config: Config) -> Sys {
    let mem = PhysMem::new(RAM_BASE, RAM_SIZE as usize);
    let model = Smmuv3::with_config(mem.clone(), model_config);
    let dma = SimDma::new(mem.clone(), RAM_BASE, DRIVER_WINDOW);
    let hw = SmmuHardware::new(model.clone(), dma, PollBudget::new(1000), config).unwrap();
    Sys {
        mem,
        model,
        hw,
        bufs: RangeAllocator::new(BUFFER_WINDOW, 32 << 20),
    }
}

fn sys() -> Sys {
    sys_with(smmu_config())
}

impl Sys {
    fn frames(&mut self, n: u64, fill: u8) -> u64 {
        let pa = self.bufs.alloc(n * 0x1000, 0x1000).unwrap();
        self.mem
            .write(pa, &vec![fill; (n * 0x1000) as usize])
            .unwrap();
        pa
    }

    fn faults(&mut self) -> (Vec<HwFault>, u32) {
        let mut v = Vec::new();
        let lost = self.hw.drain_faults(&mut |f| v.push(f));
        (v, lost)
    }

    fn read(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(pa, &mut v).unwrap();
        v
    }
}

const A: u32 = 0x10;
const B: u32 = 0x100;
const IOVA: u64 = 0x1000_0000;

fn attached(s: &mut Sys, stream: u32, pa: u64, len: u64, perm: Perm) -> HwDomain {
    let d = s.hw.domain_alloc().unwrap();
    s.hw.map(d, IOVA, pa, len, perm).unwrap();
    s.hw.attach(stream, None, d).unwrap();
    d
}

#[test]
fn mapped_dma_reaches_the_right_frames() {
    let mut s = sys();
    let frames = s.frames(3, 0);
    attached(&mut s, A, frames, 3 * 0x1000, Perm::RW);
    // Across the first page boundary, then read back across the second.
    let data: Vec<u8> = (0..0x200).map(|i| i as u8).collect();
    s.model.dma_write(A, None, IOVA + 0xf00, &data).unwrap();
    assert_eq!(s.read(frames + 0xf00, 0x200), data);
    assert_eq!(
        s.read(frames, 0xf00),
        vec![0; 0xf00],
        "nothing before the range"
    );
    s.mem.write(frames + 0x1ff0, &[7; 0x20]).unwrap();
    let mut got = [0u8; 0x20];
    s.model.dma_read(A, None, IOVA + 0x1ff0, &mut got).unwrap();
    assert_eq!(got, [7; 0x20]);
    assert!(s.faults().0.is_empty());
}

#[test]
fn unmapped_dma_faults_with_the_right_event() {
    let mut s = sys();
    let frames = s.frames(2, 0x11);
    let d = attached(&mut s, A, frames, 2 * 0x1000, Perm::RW);
    // Use the mapping (the SMMU's TLB now holds it), then unmap the second page.
    s.model.dma_write(A, None, IOVA + 0x1000, &[1; 8]).unwrap();
    s.hw.unmap(d, IOVA + 0x1000, 0x1000).unwrap();
    let before = s.read(frames + 0x1000, 0x1000);
    assert_eq!(
        s.model.dma_write(A, None, IOVA + 0x1040, &[2; 8]),
        Err(DmaError::Fault {
            event: evt::F_TRANSLATION,
            recorded: true
        })
    );
    assert_eq!(s.read(frames + 0x1000, 0x1000), before, "page untouched");
    let mut b = [0u8; 4];
    assert!(s.model.dma_read(A, None, IOVA + 0x1ffc, &mut b).is_err());
    // The first page still works.
    s.model.dma_write(A, None, IOVA + 0x10, &[3; 4]).unwrap();
    let (faults, lost) = s.faults();
    assert_eq!(lost, 0);
    assert_eq!(
        faults,
        [
            HwFault {
                stream: A,
                pasid: None,
                kind: FaultKind::Translation,
                flags: 0,
                reason: 0x10,
                address: IOVA + 0x1040,
                group: 0,
            },
            HwFault {
                stream: A,
                pasid: None,
                kind: FaultKind::Translation,
                flags: fault_flags::READ,
                reason: 0x10,
                address: IOVA + 0x1ffc,
                group: 0,
            },
        ]
    );
}

#[test]
fn read_only_mappings_give_permission_faults() {
    let mut s = sys();
    let frames = s.frames(1, 0x5a);
    attached(&mut s, A, frames, 0x1000, Perm::READ);
    let mut b = [0u8; 2];
    s.model.dma_read(A, None, IOVA + 2, &mut b).unwrap();
    assert_eq!(b, [0x5a; 2]);
    assert!(s.model.dma_write(A, None, IOVA + 0x80, &[0; 4]).is_err());
    assert_eq!(s.read(frames, 0x1000), vec![0x5a; 0x1000]);
    let (faults, _) = s.faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (
            faults[0].stream,
            faults[0].kind,
            faults[0].address,
            faults[0].flags
        ),
        (A, FaultKind::Permission, IOVA + 0x80, 0)
    );
    assert_eq!(faults[0].reason, 0x13);
}

#[test]
fn detach_aborts_the_stream() {
    let mut s = sys();
    let frames = s.frames(1, 0);
    let d = attached(&mut s, A, frames, 0x1000, Perm::RW);
    s.model.dma_write(A, None, IOVA, &[1; 4]).unwrap();
    s.hw.detach(A, None).unwrap();
    assert_eq!(
        s.model.dma_write(A, None, IOVA, &[9; 4]),
        Err(DmaError::Aborted)
    );
    // Untranslated addresses do not get through either.
    assert_eq!(
        s.model.dma_write(A, None, frames, &[9; 4]),
        Err(DmaError::Aborted)
    );
    assert_eq!(s.read(frames, 4), [1; 4]);
    assert!(s.faults().0.is_empty(), "abort records nothing");
    assert_eq!(s.hw.detach(A, None), Err(Error::NotFound));
    // Attached again, DMA flows.
    s.hw.attach(A, None, d).unwrap();
    s.model.dma_write(A, None, IOVA, &[5; 4]).unwrap();
    assert_eq!(s.read(frames, 4), [5; 4]);
}

#[test]
fn two_streams_are_isolated() {
    let mut s = sys();
    let (fa, fb) = (s.frames(1, 0xa), s.frames(1, 0xb));
    let da = attached(&mut s, A, fa, 0x1000, Perm::RW);
    let db = attached(&mut s, B, fb, 0x1000, Perm::RW);
    assert_ne!(s.hw.asid(da), s.hw.asid(db));
    // The same IOVA reaches each stream's own frame.
    let mut b = [0u8; 1];
    s.model.dma_read(A, None, IOVA, &mut b).unwrap();
    assert_eq!(b, [0xa]);
    s.model.dma_read(B, None, IOVA, &mut b).unwrap();
    assert_eq!(b, [0xb]);
    // B maps a second page; A cannot reach it.
    let fb2 = s.frames(1, 0xbb);
    s.hw.map(db, IOVA + 0x1000, fb2, 0x1000, Perm::RW).unwrap();
    assert!(s.model.dma_write(A, None, IOVA + 0x1000, &[0; 4]).is_err());
    assert_eq!(s.read(fb2, 0x1000), vec![0xbb; 0x1000]);
    let (faults, _) = s.faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (faults[0].stream, faults[0].kind, faults[0].address),
        (A, FaultKind::Translation, IOVA + 0x1000)
    );
    // Unmapping A's page does not disturb B.
    s.hw.unmap(da, IOVA, 0x1000).unwrap();
    assert!(s.model.dma_read(A, None, IOVA, &mut b).is_err());
    s.model.dma_read(B, None, IOVA, &mut b).unwrap();
    assert_eq!(b, [0xb]);
}

#[test]
fn domains_asids_and_errors() {
    let mut s = sys();
    let info = s.hw.device_info(A);
    assert_eq!(info.iommu, IommuKind::Smmuv3);
    assert_eq!(
        (info.pasid_bits, info.pri, info.ats, info.stall),
        (0, false, false, false)
    );
    assert_eq!(info.iova_bits, 39);
    assert_eq!(info.page_sizes, (1 << 12) | (1 << 21) | (1 << 30));

    let frames = s.frames(1, 0);
    let d1 = s.hw.domain_alloc().unwrap();
    let d2 = s.hw.domain_alloc().unwrap();
    assert_eq!((s.hw.asid(d1), s.hw.asid(d2)), (Some(1), Some(2)));
    s.hw.map(d1, IOVA, frames, 0x1000, Perm::RW).unwrap();
    assert_eq!(
        s.hw.map(d1, IOVA, frames, 0x1000, Perm::RW),
        Err(Error::Exists)
    );
    assert_eq!(
        s.hw.map(d1, IOVA + 0x10, frames, 0x1000, Perm::RW),
        Err(Error::Invalid)
    );
    assert_eq!(
        s.hw.map(d1, IOVA + 0x1000, frames, 0x1000, Perm::WRITE),
        Err(Error::Unsupported),
        "stage-1 tables cannot express write-only"
    );
    assert_eq!(
        s.hw.map(HwDomain(99), IOVA, frames, 0x1000, Perm::RW),
        Err(Error::NotFound)
    );
    assert_eq!(s.hw.attach(A, Some(5), d1), Err(Error::Unsupported));
    s.hw.attach(A, None, d1).unwrap();
    assert_eq!(s.hw.domain_free(d1), Err(Error::Busy));
    s.hw.detach(A, None).unwrap();
    s.hw.unmap(d1, IOVA, 0x1000).unwrap();
    s.hw.domain_free(d1).unwrap();
    assert_eq!(s.hw.domain_free(d1), Err(Error::NotFound));
    // ASID 1 is free again.
    let d3 = s.hw.domain_alloc().unwrap();
    assert_eq!(s.hw.asid(d3), Some(1));
    assert_eq!(
        s.hw.page_response(A, None, 1, PageResponseCode::Success),
        Err(Error::Unsupported),
        "QEMU's SMMU can neither stall nor take page requests"
    );
}

#[test]
fn lost_records_are_counted() {
    let mut s = sys_with(SmmuConfig {
        evtq_log2: 2,
        ..smmu_config()
    });
    let frames = s.frames(1, 0);
    attached(&mut s, A, frames, 0x1000, Perm::READ);
    for k in 0..6 {
        assert!(s.model.dma_write(A, None, IOVA + k * 4, &[0; 4]).is_err());
    }
    let (faults, lost) = s.faults();
    assert_eq!(faults.len(), 4);
    assert_eq!(lost, 1, "the SMMU says records were lost, not how many");
    assert!(faults
        .iter()
        .enumerate()
        .all(|(k, f)| f.address == IOVA + k as u64 * 4 && f.kind == FaultKind::Permission));
    assert!(s.model.dma_write(A, None, IOVA, &[0; 4]).is_err());
    let (faults, lost) = s.faults();
    assert_eq!((faults.len(), lost), (1, 0));
}

#[test]
fn bad_configuration_is_reported_as_such() {
    let mut s = sys();
    // A StreamID beyond the 9-bit stream table.
    assert!(s.model.dma_write(0x345, None, 0, &[0]).is_err());
    let (faults, _) = s.faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (faults[0].stream, faults[0].kind, faults[0].reason),
        (0x345, FaultKind::BadConfig, 0x02)
    );
}

/// On an SMMU with substreams a PASID is a SubstreamID: each (stream, PASID) translates
/// through the domain attached to it, untagged DMA through the untagged attachment, and
/// detaching one slot leaves the others working. Linear (8 SSID bits) and two-level (20
/// bits, leaves allocated as PASIDs need them) CD tables.
#[test]
fn pasids_are_substreams_with_their_own_domains() {
    for (ssid_bits, two_level, pasids) in [(8u8, false, [1u32, 0xff]), (20, true, [5, 0xf_ffff])] {
        let mut s = sys_on(
            SmmuConfig {
                max_ssid_bits: 20,
                ..smmu_config()
            },
            Config::QEMU_7_2.with_substreams(ssid_bits, two_level),
        );
        let info = s.hw.device_info(A);
        assert_eq!(info.pasid_bits, ssid_bits);
        let untagged = s.frames(1, 0);
        let first = s.frames(1, 0);
        let second = s.frames(1, 0);
        let d0 = attached(&mut s, A, untagged, 0x1000, Perm::RW);
        let d1 = s.hw.domain_alloc().unwrap();
        s.hw.map(d1, IOVA, first, 0x1000, Perm::RW).unwrap();
        let d2 = s.hw.domain_alloc().unwrap();
        s.hw.map(d2, IOVA, second, 0x1000, Perm::RW).unwrap();
        s.hw.attach(A, Some(pasids[0]), d1).unwrap();
        s.hw.attach(A, Some(pasids[1]), d2).unwrap();

        // The same IOVA lands in three frames, by PASID.
        s.model.dma_write(A, None, IOVA, &[1; 4]).unwrap();
        s.model
            .dma_write(A, Some(pasids[0]), IOVA, &[2; 4])
            .unwrap();
        s.model
            .dma_write(A, Some(pasids[1]), IOVA, &[3; 4])
            .unwrap();
        assert_eq!(s.read(untagged, 4), [1; 4]);
        assert_eq!(s.read(first, 4), [2; 4]);
        assert_eq!(s.read(second, 4), [3; 4]);
        assert!(s.faults().0.is_empty());

        // A PASID nothing is attached to, and one beyond the table: bad configuration,
        // reported with the PASID.
        assert!(s
            .model
            .dma_write(A, Some(pasids[0] + 1), IOVA, &[9; 4])
            .is_err());
        let (faults, _) = s.faults();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].pasid, Some(pasids[0] + 1));
        assert_eq!(faults[0].kind, FaultKind::BadConfig);
        assert_ne!(faults[0].flags & fault_flags::PASID_VALID, 0);
        if ssid_bits < 20 {
            assert_eq!(
                s.hw.attach(A, Some(1 << ssid_bits), d1),
                Err(Error::Invalid)
            );
        }

        // Detaching the first PASID: its DMA faults (the CD is gone from the SMMU's
        // configuration cache, CFGI_CD completed), the others still work.
        s.hw.detach(A, Some(pasids[0])).unwrap();
        assert_eq!(
            s.model.dma_write(A, Some(pasids[0]), IOVA, &[4; 4]),
            Err(DmaError::Fault {
                event: evt::C_BAD_CD,
                recorded: true
            })
        );
        assert_eq!(s.read(first, 4), [2; 4]);
        assert_eq!(s.hw.detach(A, Some(pasids[0])), Err(Error::NotFound));
        assert_eq!(s.hw.domain_free(d2), Err(Error::Busy));
        s.model
            .dma_write(A, Some(pasids[1]), IOVA, &[5; 4])
            .unwrap();
        assert_eq!(s.read(second, 4), [5; 4]);

        // Untagged detach clears slot 0: untagged DMA faults, the PASID still works.
        s.hw.detach(A, None).unwrap();
        assert!(s.model.dma_write(A, None, IOVA, &[6; 4]).is_err());
        assert_eq!(s.read(untagged, 4), [1; 4]);
        s.model
            .dma_write(A, Some(pasids[1]), IOVA, &[7; 4])
            .unwrap();
        assert_eq!(s.read(second, 4), [7; 4]);

        // The last one: the stream aborts, silently, and every domain can go.
        s.faults();
        s.hw.detach(A, Some(pasids[1])).unwrap();
        assert_eq!(
            s.model.dma_write(A, Some(pasids[1]), IOVA, &[8; 4]),
            Err(DmaError::Aborted)
        );
        assert!(s.faults().0.is_empty());
        for d in [d0, d1, d2] {
            s.hw.domain_free(d).unwrap();
        }
        // Attached again from scratch (a new CD table), PASID DMA flows.
        let d = attached(&mut s, B, untagged, 0x1000, Perm::RW);
        s.hw.attach(B, Some(pasids[1]), d).unwrap();
        s.model
            .dma_write(B, Some(pasids[1]), IOVA, &[9; 4])
            .unwrap();
        assert_eq!(s.read(untagged, 4), [9; 4]);
    }
}

/// Without substreams (QEMU 7.2) there are no PASIDs.
#[test]
fn no_pasids_without_substreams() {
    let mut s = sys();
    assert_eq!(s.hw.device_info(A).pasid_bits, 0);
    let frames = s.frames(1, 0);
    let d = attached(&mut s, A, frames, 0x1000, Perm::RW);
    assert_eq!(s.hw.attach(A, Some(1), d), Err(Error::Unsupported));
    assert_eq!(s.hw.detach(A, Some(1)), Err(Error::NotFound));
}

fn pri_request(sid: u32, ssid: Option<u32>, addr: u64, prg_index: u16, last: bool) -> PriRequest {
    PriRequest {
        sid,
        ssid,
        addr,
        read: true,
        write: false,
        exec: false,
        privileged: false,
        last,
        prg_index,
    }
}

#[test]
fn pri_page_requests_are_delivered_and_answered_once_per_group() {
    // QEMU 7.2 has no PRI: nothing is reported and the model refuses page requests.
    let mut s = sys();
    assert!(!s.hw.device_info(A).pri);
    assert!(!s.model.page_request(pri_request(A, None, 0x5000, 1, true)));
    assert_eq!(
        s.hw.page_response(A, None, PRI_GROUP | 1, PageResponseCode::Success),
        Err(Error::Unsupported)
    );

    let mut s = sys_on(
        SmmuConfig {
            max_ssid_bits: 20,
            ..smmu_config()
        },
        Config::QEMU_7_2.with_substreams(20, true).with_pri(4),
    );
    assert!(s.hw.device_info(A).pri);
    // A group of two requests with PASID 7, then a single-request group without PASID.
    assert!(s
        .model
        .page_request(pri_request(A, Some(7), 0x3_0000, 5, false)));
    assert!(s.model.page_request(PriRequest {
        write: true,
        ..pri_request(A, Some(7), 0x3_1000, 5, true)
    }));
    assert!(s
        .model
        .page_request(pri_request(B, None, 0x9000, 0x1ff, true)));
    let (faults, lost) = s.faults();
    assert_eq!(lost, 0);
    let got: Vec<_> = faults
        .iter()
        .map(|f| (f.kind, f.stream, f.pasid, f.address, f.flags, f.group))
        .collect();
    let pasid = fault_flags::PASID_VALID;
    assert_eq!(
        got,
        [
            (
                FaultKind::PageRequest,
                A,
                Some(7),
                0x3_0000,
                fault_flags::READ | pasid,
                PRI_GROUP | 5
            ),
            (
                FaultKind::PageRequest,
                A,
                Some(7),
                0x3_1000,
                pasid | fault_flags::LAST_IN_GROUP,
                PRI_GROUP | 5
            ),
            (
                FaultKind::PageRequest,
                B,
                None,
                0x9000,
                fault_flags::READ | fault_flags::LAST_IN_GROUP,
                PRI_GROUP | 0x1ff
            ),
        ]
    );
    // Group 5 is answered once, after both of its requests, with the worse code.
    let g5 = PRI_GROUP | 5;
    assert_eq!(
        s.hw.page_response(A, Some(7), g5, PageResponseCode::Success),
        Ok(())
    );
    assert!(
        s.model.pri_responses().is_empty(),
        "one request still unanswered"
    );
    assert_eq!(
        s.hw.page_response(A, Some(7), g5, PageResponseCode::Invalid),
        Ok(())
    );
    assert_eq!(
        s.hw.page_response(A, Some(7), g5, PageResponseCode::Success),
        Err(Error::NotFound)
    );
    // Another stream's or PASID's group of the same index is not this one.
    assert_eq!(
        s.hw.page_response(B, Some(7), PRI_GROUP | 0x1ff, PageResponseCode::Success),
        Err(Error::NotFound)
    );
    assert_eq!(
        s.hw.page_response(B, None, PRI_GROUP | 0x200, PageResponseCode::Success),
        Err(Error::Invalid),
        "PRG indices have 9 bits"
    );
    assert_eq!(
        s.hw.page_response(B, None, PRI_GROUP | 0x1ff, PageResponseCode::Failure),
        Ok(())
    );
    let deny = 0;
    let fail = 1;
    assert_eq!(
        s.model.pri_responses(),
        [
            PriResponse {
                sid: A,
                ssid: Some(7),
                prg_index: 5,
                resp: deny,
                from_hardware: false
            },
            PriResponse {
                sid: B,
                ssid: None,
                prg_index: 0x1ff,
                resp: fail,
                from_hardware: false
            },
        ]
    );
}

#[test]
fn pri_queue_overflow_is_counted_and_the_smmu_answers_dropped_groups() {
    let mut s = sys_on(smmu_config(), Config::QEMU_7_2.with_pri(1));
    // Two records fit; the third (the last of group 2) is dropped and answered by the
    // SMMU itself, and PRIQ_PROD.OVFLG toggles.
    assert!(s.model.page_request(pri_request(A, None, 0x1000, 1, true)));
    assert!(s.model.page_request(pri_request(A, None, 0x2000, 2, false)));
    assert!(s.model.page_request(pri_request(A, None, 0x3000, 2, true)));
    assert_eq!(s.model.stats().page_requests_lost, 1);
    let success = 2;
    assert_eq!(
        s.model.pri_responses(),
        [PriResponse {
            sid: A,
            ssid: None,
            prg_index: 2,
            resp: success,
            from_hardware: true
        }]
    );
    let (faults, lost) = s.faults();
    assert_eq!((faults.len(), lost), (2, 1), "{faults:?}");
    // Group 1 is complete: answered. Group 2 lost its last request: answering what was
    // delivered ends it without a second response.
    assert_eq!(
        s.hw.page_response(A, None, PRI_GROUP | 1, PageResponseCode::Success),
        Ok(())
    );
    assert_eq!(
        s.hw.page_response(A, None, PRI_GROUP | 2, PageResponseCode::Success),
        Ok(())
    );
    assert_eq!(
        s.hw.page_response(A, None, PRI_GROUP | 2, PageResponseCode::Success),
        Err(Error::NotFound)
    );
    assert_eq!(s.model.pri_responses().len(), 2);
    assert_eq!(s.model.pri_responses()[1].prg_index, 1);
    // The queue has room again: no further loss is reported.
    assert!(s.model.page_request(pri_request(A, None, 0x4000, 3, true)));
    let (faults, lost) = s.faults();
    assert_eq!((faults.len(), lost), (1, 0));
}
