//! iommu-server's hardware seam over the VT-d driver (`iommu_adapters::vtd`), checked
//! against this model: what reaches memory, what faults, and what comes out of
//! `drain_faults`.

use std::sync::Arc;

use iommu_adapters::vtd::VtdHardware;
use iommu_server::{Hardware, HwDomain, HwFault};
use ipc_protocol::iommu::{IommuKind, PageResponseCode, Perm};
use ipc_protocol::records::{fault_flags, FaultKind};
use ipc_protocol::Error;
use sim_physmem::{PhysMem, SimDma};
use vtd::regs::PollBudget;
use vtd::{InvalidationChoice, Vtd, VtdConfig};

use super::*;

type Hw = VtdHardware<VtdModel, SimDma, PollBudget>;

const A: u32 = 0x0018;
const B: u32 = 0x0100;
const FRAME: u64 = 0x0400_0000;

fn hardware(
    config: VtdModelConfig,
    invalidation: InvalidationChoice,
) -> (Hw, VtdModel, Arc<PhysMem>) {
    let mem = PhysMem::new(0, 256 << 20);
    let model = VtdModel::new(mem.clone(), config);
    let dma = SimDma::new(mem.clone(), 0x0100_0000, 0x0100_0000);
    let v = Vtd::new(
        model.clone(),
        dma,
        PollBudget::new(100),
        VtdConfig {
            invalidation,
            ..VtdConfig::default()
        },
    )
    .unwrap();
    (VtdHardware::new(v), model, mem)
}

fn every_setup() -> Vec<(Hw, VtdModel, Arc<PhysMem>)> {
    vec![
        hardware(VtdModelConfig::qemu_legacy(), InvalidationChoice::Queued),
        hardware(VtdModelConfig::qemu_legacy(), InvalidationChoice::Register),
        hardware(VtdModelConfig::qemu_scalable(), InvalidationChoice::Auto),
        hardware(VtdModelConfig::full(), InvalidationChoice::Auto),
    ]
}

fn drain(hw: &mut Hw) -> (Vec<HwFault>, u32) {
    let mut v = Vec::new();
    let lost = hw.drain_faults(&mut |f| v.push(f));
    (v, lost)
}

fn read(m: &VtdModel, sid: u32, iova: u64) -> Result<u64, DmaError> {
    let mut b = [0u8; 8];
    m.dma_read(sid as u16, None, iova, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn write(m: &VtdModel, sid: u32, iova: u64, v: u64) -> Result<(), DmaError> {
    m.dma_write(sid as u16, None, iova, &v.to_le_bytes())
}

#[test]
fn map_reaches_the_right_frames() {
    for (mut hw, m, mem) in every_setup() {
        let d = hw.domain_alloc().unwrap();
        hw.attach(A, None, d).unwrap();
        // Two pages to frames out of order, and a 2MB block.
        hw.map(d, 0x0800_0000, FRAME + 0x3000, 0x1000, Perm::RW)
            .unwrap();
        hw.map(d, 0x0800_1000, FRAME, 0x1000, Perm::RW).unwrap();
        hw.map(d, 0x4000_0000, 0x0600_0000, 0x20_0000, Perm::RW)
            .unwrap();
        write(&m, A, 0x0800_0008, 0x11).unwrap();
        write(&m, A, 0x0800_1010, 0x22).unwrap();
        write(&m, A, 0x401f_fff8, 0x33).unwrap();
        assert_eq!(mem.read_u64(FRAME + 0x3008).unwrap(), 0x11);
        assert_eq!(mem.read_u64(FRAME + 0x10).unwrap(), 0x22);
        assert_eq!(mem.read_u64(0x061f_fff8).unwrap(), 0x33);
        assert_eq!(read(&m, A, 0x0800_1010), Ok(0x22));
        assert_eq!(drain(&mut hw).0, []);
    }
}

#[test]
fn unmap_makes_dma_fault() {
    for (mut hw, m, _) in every_setup() {
        let d = hw.domain_alloc().unwrap();
        hw.attach(A, None, d).unwrap();
        hw.map(d, 0x0c00_0000, FRAME, 0x2000, Perm::RW).unwrap();
        // The translation is in the model's IOTLB before the unmap ...
        write(&m, A, 0x0c00_0000, 1).unwrap();
        write(&m, A, 0x0c00_1000, 1).unwrap();
        hw.unmap(d, 0x0c00_0000, 0x1000).unwrap();
        // ... and gone when unmap returns; the other page still works.
        assert!(matches!(
            write(&m, A, 0x0c00_0000, 2),
            Err(DmaError::Fault { .. })
        ));
        write(&m, A, 0x0c00_1000, 2).unwrap();
        let (faults, lost) = drain(&mut hw);
        assert_eq!(lost, 0);
        assert_eq!(
            faults,
            [HwFault {
                stream: A,
                pasid: None,
                kind: FaultKind::Translation,
                flags: 0,
                reason: 5,
                address: 0x0c00_0000,
                group: 0,
            }]
        );
    }
}

#[test]
fn detach_blocks_dma() {
    for (mut hw, m, _) in every_setup() {
        let d = hw.domain_alloc().unwrap();
        hw.attach(A, None, d).unwrap();
        hw.map(d, 0x0800_0000, FRAME, 0x1000, Perm::RW).unwrap();
        assert!(read(&m, A, 0x0800_0000).is_ok());
        hw.detach(A, None).unwrap();
        assert!(
            read(&m, A, 0x0800_0000).is_err(),
            "no cached translation survives"
        );
        let (faults, _) = drain(&mut hw);
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].kind, FaultKind::BadConfig);
        assert_eq!((faults[0].stream, faults[0].flags), (A, fault_flags::READ));
        assert_eq!(hw.detach(A, None), Err(Error::NotFound));
        // The domain can go once nothing is attached; freeing it twice cannot.
        hw.unmap(d, 0x0800_0000, 0x1000).unwrap();
        hw.domain_free(d).unwrap();
        assert_eq!(hw.domain_free(d), Err(Error::NotFound));
    }
}

#[test]
fn two_devices_are_isolated() {
    for (mut hw, m, mem) in every_setup() {
        let da = hw.domain_alloc().unwrap();
        let db = hw.domain_alloc().unwrap();
        hw.attach(A, None, da).unwrap();
        hw.attach(B, None, db).unwrap();
        hw.map(da, 0x0d00_0000, FRAME, 0x1000, Perm::RW).unwrap();
        hw.map(db, 0x0800_0000, FRAME + 0x1000, 0x1000, Perm::RW)
            .unwrap();
        write(&m, A, 0x0d00_0000, 0xa).unwrap();
        assert!(
            write(&m, B, 0x0d00_0000, 0xb).is_err(),
            "B cannot use A's mapping"
        );
        assert!(read(&m, A, 0x0800_0000).is_err(), "nor A B's");
        write(&m, B, 0x0800_0000, 0xb).unwrap();
        assert_eq!(mem.read_u64(FRAME).unwrap(), 0xa);
        assert_eq!(mem.read_u64(FRAME + 0x1000).unwrap(), 0xb);
        let (faults, lost) = drain(&mut hw);
        // One recording register on QEMU's unit: B's fault recorded first, A's
        // overflows; eight on the full unit.
        let got: Vec<(u32, u64, u16)> = faults
            .iter()
            .map(|f| (f.stream, f.address, f.flags))
            .collect();
        if m.config().cap >> 40 & 0xff == 0 {
            assert_eq!(got, [(B, 0x0d00_0000, 0)]);
            assert_eq!(lost, 1);
        } else {
            assert_eq!(
                got,
                [(B, 0x0d00_0000, 0), (A, 0x0800_0000, fault_flags::READ)]
            );
            assert_eq!(lost, 0);
        }
        // Attaching a stream twice is refused; a stream beyond 16 bits is invalid.
        assert_eq!(hw.attach(A, None, db), Err(Error::Busy));
        assert_eq!(hw.attach(0x1_0000, None, db), Err(Error::Invalid));
    }
}

#[test]
fn faults_carry_requester_address_and_direction() {
    for (mut hw, m, _) in every_setup() {
        let d = hw.domain_alloc().unwrap();
        hw.attach(A, None, d).unwrap();
        hw.map(d, 0x0b00_0000, FRAME, 0x1000, Perm::READ).unwrap();
        // Write to a read-only page: a permission fault, a write.
        assert!(write(&m, A, 0x0b00_0010, 1).is_err());
        let (f, _) = drain(&mut hw);
        assert_eq!(
            (
                f[0].stream,
                f[0].kind,
                f[0].flags,
                f[0].address,
                f[0].reason,
                f[0].pasid
            ),
            (A, FaultKind::Permission, 0, 0x0b00_0000, 5, None)
        );
        // Read of nothing: a translation fault, a read.
        assert!(read(&m, A, 0x0a00_0000).is_err());
        let (f, _) = drain(&mut hw);
        assert_eq!(
            (f[0].kind, f[0].flags, f[0].address, f[0].reason),
            (FaultKind::Translation, fault_flags::READ, 0x0a00_0000, 6)
        );
        // Beyond the address width.
        assert!(read(&m, A, 1 << 50).is_err());
        let (f, _) = drain(&mut hw);
        assert_eq!((f[0].kind, f[0].reason), (FaultKind::Translation, 4));
    }
}

#[test]
fn device_info_and_unsupported_requests() {
    let (mut hw, _, _) = hardware(VtdModelConfig::qemu_legacy(), InvalidationChoice::Auto);
    let i = hw.device_info(A);
    assert_eq!(i.iommu, IommuKind::Vtd);
    assert_eq!(i.iova_bits, 39);
    assert_eq!(i.page_sizes, (1 << 12) | (1 << 21) | (1 << 30));
    assert_eq!(
        (i.pasid_bits, i.pri, i.ats, i.stall),
        (0, false, false, false)
    );
    let (full, _, _) = hardware(VtdModelConfig::full(), InvalidationChoice::Auto);
    assert_eq!(full.device_info(A).iova_bits, 48);
    let d = hw.domain_alloc().unwrap();
    assert_eq!(hw.attach(A, Some(5), d), Err(Error::Unsupported));
    assert_eq!(
        hw.page_response(A, None, 1, PageResponseCode::Success),
        Err(Error::Unsupported)
    );
    // Bad arguments come back as protocol errors.
    assert_eq!(
        hw.map(d, 0x1001, FRAME, 0x1000, Perm::RW),
        Err(Error::Invalid)
    );
    hw.map(d, 0x1000, FRAME, 0x1000, Perm::RW).unwrap();
    assert_eq!(
        hw.map(d, 0x1000, FRAME, 0x1000, Perm::RW),
        Err(Error::Exists)
    );
    assert_eq!(
        hw.map(d, 0x2000, FRAME, 0x1000, Perm(0)),
        Err(Error::Invalid)
    );
    assert_eq!(
        hw.map(HwDomain(99), 0, 0, 0x1000, Perm::RW),
        Err(Error::NotFound)
    );
    hw.attach(A, None, d).unwrap();
    assert_eq!(hw.domain_free(d), Err(Error::Busy), "attached domain stays");
}

#[test]
fn freed_domains_return_their_memory() {
    for config in [
        VtdModelConfig::qemu_legacy(),
        VtdModelConfig::qemu_scalable(),
    ] {
        let (mut hw, _, _) = hardware(config, InvalidationChoice::Auto);
        // The context table of B's bus stays linked once made; make it first.
        let d = hw.domain_alloc().unwrap();
        hw.attach(B, None, d).unwrap();
        hw.detach(B, None).unwrap();
        hw.domain_free(d).unwrap();
        let before = hw.vtd().mem().live().1;
        cycle(&mut hw);
        assert_eq!(
            hw.vtd().mem().live().1,
            before,
            "every table and PASID structure freed"
        );
    }
}

fn cycle(hw: &mut Hw) {
    for _ in 0..3 {
        let d = hw.domain_alloc().unwrap();
        hw.map(d, 0x4000_0000, FRAME, 0x40_0000, Perm::RW).unwrap();
        hw.map(d, 0x10_0000, FRAME, 0x1000, Perm::RW).unwrap();
        hw.attach(B, None, d).unwrap();
        hw.detach(B, None).unwrap();
        hw.unmap(d, 0x4000_0000, 0x40_0000).unwrap();
        hw.unmap(d, 0x10_0000, 0x1000).unwrap();
        hw.domain_free(d).unwrap();
    }
}
