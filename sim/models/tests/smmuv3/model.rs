//! The model's behaviour, observed through the real driver: registers, translation,
//! caches that need invalidation, events decoded by the driver's own decoder, the event
//! queue wrapping and filling up, and command errors.

use iommu_models::smmuv3::{event as evt, regs as mregs, Config, DmaError, Smmuv3, Translation};
use iommu_models::Access;
use sim_physmem::{PhysMem, SimDma};
use smmuv3::cd::{Cd, CdConfig, CdTable, DEFAULT_MAIR};
use smmuv3::cmd::{Command, PriResponse, ResumeAction, TlbiRange};
use smmuv3::error::CommandErrorCode;
use smmuv3::event::{Event, FaultClass, StreamRef};
use smmuv3::features::{Features, QEMU_7_2_IDREGS};
use smmuv3::ste::{S1Dss, Stage1Ste, StreamConfig, WalkAttrs};
use smmuv3::{regs, PageTable, PhysAddr, Prot, RegisterIo, SmmuConfig, StreamTableChoice};

use crate::rig::{smmu_config, Rig, NOT_RAM, RAM_BASE, TABLE_WINDOW};

const SID: u32 = 0x10;
const IOVA: u64 = 0x1000_0000;

fn stream(sid: u32) -> StreamRef {
    StreamRef { sid, ssid: None }
}

/// A domain with ASID `asid` attached to `sid`, mapping `pages` pages at `iova`.
fn mapped(rig: &mut Rig, sid: u32, asid: u16, iova: u64, pages: &[u64], prot: Prot) {
    let d = rig.smmu.create_domain(asid).unwrap();
    rig.smmu.attach(sid, d).unwrap();
    for (i, &pa) in pages.iter().enumerate() {
        rig.smmu
            .map(d, iova + i as u64 * 0x1000, pa, 0x1000, prot)
            .unwrap();
    }
}

fn read_byte(rig: &Rig, sid: u32, iova: u64) -> Result<u8, DmaError> {
    let mut b = [0u8; 1];
    rig.model.dma_read(sid, None, iova, &mut b)?;
    Ok(b[0])
}

#[test]
fn identification_registers_are_qemu_7_2s() {
    assert_eq!(Config::QEMU_7_2.idr, QEMU_7_2_IDREGS.idr);
    assert_eq!(Config::QEMU_7_2.aidr, QEMU_7_2_IDREGS.aidr);
    let mem = PhysMem::new(RAM_BASE, 1 << 20);
    let mut m = Smmuv3::new(mem);
    for (i, want) in QEMU_7_2_IDREGS.idr.iter().enumerate() {
        assert_eq!(m.read32(regs::IDR0 + 4 * i), *want, "IDR{i}");
    }
    assert_eq!(m.read32(regs::AIDR), 1);
    assert_eq!(m.read32(regs::IIDR), 0);
    let f = Features::probe(&mut m);
    assert!(f.stage1 && !f.stage2 && f.two_level_strtab && f.ril && f.coherent);
    assert_eq!(
        (f.sid_bits, f.ssid_bits, f.cmdq_log2, f.eventq_log2),
        (16, 0, 19, 19)
    );
    assert_eq!(f.oas_bits, 44);
    // Substreams and two-level CD tables when asked for.
    let sub = Config::QEMU_7_2.with_substreams(12, true);
    let f = Features::decode(&smmuv3::features::IdRegs {
        idr: sub.idr,
        aidr: sub.aidr,
    });
    assert_eq!((f.ssid_bits, f.cd2l, f.sid_bits), (12, true, 16));
}

#[test]
fn control_registers_behave_like_qemus() {
    let mem = PhysMem::new(RAM_BASE, 1 << 20);
    let mut m = Smmuv3::new(mem);
    // CR0ACK follows CR0 without its RES0 bits.
    m.write32(regs::CR0, 0xffff_ffff);
    assert_eq!(m.read32(regs::CR0ACK), 0x3df);
    m.write32(regs::CR0, 0);
    assert_eq!(m.read32(regs::CR0ACK), 0);
    m.write32(regs::IRQ_CTRL, 5);
    assert_eq!(m.read32(regs::IRQ_CTRLACK), 5);
    // GBPA is not implemented by QEMU 7.2: RAZ/WI.
    m.write32(regs::GBPA, regs::GBPA_UPDATE | regs::GBPA_ABORT);
    assert_eq!(m.read32(regs::GBPA), 0);
    // 64-bit registers, as a whole and as halves.
    m.write64(regs::STRTAB_BASE, 0x4000_1234_5678_9ac0);
    assert_eq!(m.read32(regs::STRTAB_BASE), 0x5678_9ac0);
    assert_eq!(m.read32(regs::STRTAB_BASE + 4), 0x4000_1234);
    m.write32(regs::STRTAB_BASE + 4, 7);
    assert_eq!(m.read64(regs::STRTAB_BASE), 0x7_5678_9ac0);
    // 64-bit accesses to 32-bit registers read as zero and are ignored.
    m.write64(regs::CR2, u64::MAX);
    assert_eq!(m.read64(regs::CR2), 0);
    assert_eq!(m.read32(regs::CR2), 0);
    // Page 1 holds the event queue indices; page 0 aliases it.
    m.write32(regs::EVENTQ_CONS, 3);
    assert_eq!(m.read32(regs::EVENTQ_CONS - regs::PAGE1), 3);
    // GERROR is the SMMU's: writes are ignored.
    m.write32(regs::GERROR, 0x1fd);
    assert_eq!(m.read32(regs::GERROR), 0);
    assert_eq!(mregs::EVENTQ_PROD, regs::EVENTQ_PROD);
}

#[test]
fn disabled_smmu_lets_dma_through_whatever_gbpa_says() {
    let mem = PhysMem::new(RAM_BASE, 1 << 20);
    let mut m = Smmuv3::new(mem.clone());
    m.write32(regs::GBPA, regs::GBPA_UPDATE | regs::GBPA_ABORT);
    m.write32(regs::CR0, regs::CR0_EVENTQEN);
    let t = m
        .translate(7, None, RAM_BASE + 0x1234, Access::Write)
        .unwrap();
    assert_eq!(
        t,
        Translation {
            pa: RAM_BASE + 0x1234,
            len: 0x1000 - 0x234,
            writable: true
        }
    );
    m.dma_write(7, None, RAM_BASE + 0x10, &[1, 2, 3]).unwrap();
    let mut b = [0u8; 3];
    mem.read(RAM_BASE + 0x10, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3]);
    assert_eq!(m.stats().events, 0);
}

#[test]
fn pages_and_blocks_translate_and_copy() {
    let mut rig = Rig::new();
    let d = rig.smmu.create_domain(1).unwrap();
    rig.smmu.attach(SID, d).unwrap();
    let page = rig.page(0);
    let block = rig.buffer(2 << 20, 2 << 20, 0);
    rig.smmu
        .map(d, IOVA, page, 0x1000, Prot::READ_WRITE)
        .unwrap();
    let iova_2m = 0x2000_0000;
    rig.smmu
        .map(d, iova_2m, block, 2 << 20, Prot::READ_WRITE)
        .unwrap();
    // 1 GiB block over the start of RAM (only read: the driver's tables live there).
    let iova_1g = 0x40_0000_0000;
    rig.smmu
        .map(d, iova_1g, RAM_BASE, 1 << 30, Prot::READ)
        .unwrap();

    let t = rig
        .model
        .translate(SID, None, IOVA + 0x10, Access::Write)
        .unwrap();
    assert_eq!((t.pa, t.len, t.writable), (page + 0x10, 0xff0, true));
    let t = rig
        .model
        .translate(SID, None, iova_2m + 0x12_3456, Access::Read)
        .unwrap();
    assert_eq!((t.pa, t.len), (block + 0x12_3456, (2 << 20) - 0x12_3456));
    let t = rig
        .model
        .translate(SID, None, iova_1g + 0x8000, Access::Read)
        .unwrap();
    assert_eq!(
        (t.pa, t.len, t.writable),
        (RAM_BASE + 0x8000, (1 << 30) - 0x8000, false)
    );

    // A write across the end of the page faults on the next page after copying the
    // first part.
    let data: Vec<u8> = (0..=255).collect();
    rig.model
        .dma_write(SID, None, iova_2m + 0x1f_ff80, &data[..0x80])
        .unwrap();
    assert_eq!(rig.read(block + 0x1f_ff80, 0x80), &data[..0x80]);
    rig.model
        .dma_write(SID, None, IOVA + 0xf80, &data[..0x80])
        .unwrap();
    assert_eq!(rig.read(page + 0xf80, 0x80), &data[..0x80]);
    assert_eq!(
        rig.model.dma_write(SID, None, IOVA + 0xfc0, &data[..0x80]),
        Err(DmaError::Fault {
            event: evt::F_TRANSLATION,
            recorded: true
        })
    );
    // Reads through the 1 GiB block come from the driver's part of RAM.
    let buf_pa = rig.page(0x5a);
    let mut got = [0u8; 16];
    rig.model
        .dma_read(SID, None, iova_1g + (buf_pa - RAM_BASE), &mut got)
        .unwrap();
    assert_eq!(got, [0x5a; 16]);
    // Translated beyond RAM: a bus error, no event.
    let before = rig.model.stats().events;
    assert!(matches!(
        rig.model
            .dma_read(SID, None, iova_1g + (512 << 20), &mut got),
        Err(DmaError::Bus(_))
    ));
    assert_eq!(rig.model.stats().events, before);
    // The driver agrees with the model about every address used.
    assert_eq!(
        rig.smmu.translate(d, IOVA + 0x10).unwrap(),
        Some(page + 0x10)
    );
    assert_eq!(
        rig.smmu.translate(d, iova_1g + 0x8000).unwrap(),
        Some(RAM_BASE + 0x8000)
    );
    let events = rig.events();
    assert_eq!(events.len(), 1);
    let Event::Translation(f) = events[0] else {
        panic!("{events:?}")
    };
    assert_eq!((f.access.addr, f.access.read), (IOVA + 0x1000, false));
}

#[test]
fn read_only_pages_refuse_writes() {
    let mut rig = Rig::new();
    let page = rig.page(0x77);
    mapped(&mut rig, SID, 1, IOVA, &[page], Prot::READ);
    assert_eq!(read_byte(&rig, SID, IOVA + 5), Ok(0x77));
    assert_eq!(
        rig.model.dma_write(SID, None, IOVA + 0x80, &[1; 8]),
        Err(DmaError::Fault {
            event: evt::F_PERMISSION,
            recorded: true
        })
    );
    assert_eq!(rig.read(page, 0x1000), vec![0x77; 0x1000]);
    // Both refusals come from the TLB entry the read left (it records the page as
    // read-only).
    let t = rig.model.stats().tlb_hits;
    assert!(rig.model.dma_write(SID, None, IOVA, &[1]).is_err());
    assert_eq!(rig.model.stats().tlb_hits, t + 1);
    let events = rig.events();
    assert_eq!(events.len(), 2);
    for (e, addr) in events.iter().zip([IOVA + 0x80, IOVA]) {
        let Event::Permission(f) = e else {
            panic!("{e:?}")
        };
        assert_eq!(f.stream, stream(SID));
        assert_eq!((f.access.addr, f.access.read), (addr, false));
        // QEMU 7.2 leaves CLASS at 0 (CD) for stage-1 faults.
        assert_eq!(f.class, FaultClass::Cd);
    }
}

#[test]
fn tlb_keeps_translations_until_invalidated() {
    let mut rig = Rig::new();
    let (a, b) = (rig.page(0xaa), rig.page(0xbb));
    mapped(&mut rig, SID, 1, IOVA, &[a], Prot::READ_WRITE);
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0xaa));
    assert_eq!(rig.model.tlb_entries(), 1);

    // Point the PTE at page b behind the SMMU's back: the TLB still says a.
    let pte_at = rig.desc_addr(SID, IOVA, 3);
    let pte = rig.mem.read_u64(pte_at).unwrap();
    let to_b = (pte & !smmuv3::pagetable::PTE_ADDR) | b;
    rig.mem.write_u64(pte_at, to_b).unwrap();
    let walks = rig.model.stats().walks;
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0xaa), "served from the TLB");
    assert_eq!(rig.model.stats().walks, walks);
    // A TLBI for another ASID or another page changes nothing.
    rig.smmu
        .command_sync(&[
            Command::TlbiNhAsid { asid: 2, vmid: 0 },
            Command::TlbiNhVa {
                asid: 1,
                vmid: 0,
                addr: IOVA + 0x1000,
                leaf: true,
                ttl: 0,
                range: None,
            },
        ])
        .unwrap();
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0xaa));
    // The right one, completed by CMD_SYNC: the new PTE is used.
    rig.smmu
        .command_sync(&[Command::TlbiNhVa {
            asid: 1,
            vmid: 0,
            addr: IOVA,
            leaf: true,
            ttl: 3,
            range: None,
        }])
        .unwrap();
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0xbb));

    // Remove the PTE: still translated until TLBI_NH_ASID, then a fault.
    rig.mem.write_u64(pte_at, 0).unwrap();
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0xbb));
    rig.smmu
        .command_sync(&[Command::TlbiNhAsid { asid: 1, vmid: 0 }])
        .unwrap();
    assert!(matches!(
        read_byte(&rig, SID, IOVA),
        Err(DmaError::Fault {
            event: evt::F_TRANSLATION,
            ..
        })
    ));
    assert!(rig
        .events()
        .iter()
        .all(|e| matches!(e, Event::Translation(_))));
}

#[test]
fn range_invalidation_drops_exactly_the_range() {
    let mut rig = Rig::new();
    let old: Vec<u64> = (0..8).map(|i| rig.page(i as u8)).collect();
    let new = rig.page(0xee);
    mapped(&mut rig, SID, 1, IOVA, &old, Prot::READ_WRITE);
    for i in 0..8u64 {
        assert_eq!(read_byte(&rig, SID, IOVA + i * 0x1000), Ok(i as u8));
    }
    for i in 0..8u64 {
        let at = rig.desc_addr(SID, IOVA + i * 0x1000, 3);
        let pte = rig.mem.read_u64(at).unwrap();
        rig.mem
            .write_u64(at, (pte & !smmuv3::pagetable::PTE_ADDR) | new)
            .unwrap();
    }
    let seen = |rig: &Rig| -> Vec<bool> {
        (0..8u64)
            .map(|i| read_byte(rig, SID, IOVA + i * 0x1000) == Ok(0xee))
            .collect()
    };
    assert_eq!(seen(&rig), [false; 8]);
    // Pages 2..=5: NUM = 3, SCALE = 0, TG = 4KB.
    rig.smmu
        .command_sync(&[Command::TlbiNhVa {
            asid: 1,
            vmid: 0,
            addr: IOVA + 0x2000,
            leaf: true,
            ttl: 0,
            range: Some(TlbiRange {
                num: 3,
                scale: 0,
                tg: 1,
            }),
        }])
        .unwrap();
    assert_eq!(
        seen(&rig),
        [false, false, true, true, true, true, false, false]
    );
    // TLBI_NH_VAA (every ASID) for page 7.
    rig.smmu
        .command_sync(&[Command::TlbiNhVaa {
            vmid: 0,
            addr: IOVA + 0x7000,
            leaf: true,
        }])
        .unwrap();
    assert_eq!(
        seen(&rig),
        [false, false, true, true, true, true, false, true]
    );
    rig.smmu.command_sync(&[Command::TlbiNsnhAll]).unwrap();
    assert_eq!(seen(&rig), [true; 8]);
}

#[test]
fn tlb_is_emptied_when_full() {
    let mut rig = Rig::new();
    let page = rig.page(1);
    let d = rig.smmu.create_domain(1).unwrap();
    rig.smmu.attach(SID, d).unwrap();
    for i in 0..257u64 {
        rig.smmu
            .map(d, IOVA + i * 0x1000, page, 0x1000, Prot::READ)
            .unwrap();
    }
    for i in 0..256u64 {
        read_byte(&rig, SID, IOVA + i * 0x1000).unwrap();
    }
    assert_eq!(rig.model.tlb_entries(), 256);
    read_byte(&rig, SID, IOVA + 256 * 0x1000).unwrap();
    assert_eq!(rig.model.tlb_entries(), 1, "QEMU empties a full IOTLB");
}

#[test]
fn ste_changes_need_cfgi() {
    let mut rig = Rig::new();
    let page = rig.page(0x42);
    mapped(&mut rig, SID, 1, IOVA, &[page], Prot::READ_WRITE);
    mapped(&mut rig, 0x11, 2, IOVA, &[page], Prot::READ_WRITE);
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0x42));
    assert_eq!(read_byte(&rig, 0x11, IOVA), Ok(0x42));
    let fetches = rig.model.stats().config_fetches;

    // Turn both STEs into abort entries in memory.
    for sid in [SID, 0x11] {
        let at = rig.ste_addr(sid);
        rig.mem.write_u64(at, 1).unwrap(); // V = 1, Config = abort
    }
    assert_eq!(
        read_byte(&rig, SID, IOVA),
        Ok(0x42),
        "cached STE still used"
    );
    assert_eq!(rig.model.stats().config_fetches, fetches);
    // CFGI_STE for another stream does not help; for this one it does.
    rig.smmu
        .command_sync(&[Command::CfgiSte {
            sid: 0x12,
            leaf: true,
        }])
        .unwrap();
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0x42));
    rig.smmu
        .command_sync(&[Command::CfgiSte {
            sid: SID,
            leaf: true,
        }])
        .unwrap();
    assert_eq!(read_byte(&rig, SID, IOVA), Err(DmaError::Aborted));
    assert_eq!(read_byte(&rig, 0x11, IOVA), Ok(0x42));
    // CFGI_STE_RANGE over 0x10..=0x11 reaches the other one.
    rig.smmu
        .command_sync(&[Command::CfgiSteRange {
            sid: 0x11,
            range: 0,
        }])
        .unwrap();
    assert_eq!(read_byte(&rig, 0x11, IOVA), Err(DmaError::Aborted));
    assert!(rig.events().is_empty(), "abort gives no event");
}

#[test]
fn cd_changes_need_cfgi() {
    let mut rig = Rig::new();
    let page = rig.page(0x42);
    mapped(&mut rig, SID, 1, IOVA, &[page], Prot::READ_WRITE);
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0x42));
    let cd = rig.cd_addr(SID);
    let w0 = rig.mem.read_u64(cd).unwrap();
    rig.mem
        .write_u64(cd, w0 & !smmuv3::cd::CTXDESC_CD_0_V)
        .unwrap();
    // Flush the TLB so that the walk needs the (cached) CD.
    rig.smmu.command_sync(&[Command::TlbiNsnhAll]).unwrap();
    assert_eq!(read_byte(&rig, SID, IOVA), Ok(0x42), "cached CD still used");
    rig.smmu
        .command_sync(&[Command::CfgiCd {
            sid: SID,
            ssid: 0,
            leaf: true,
        }])
        .unwrap();
    assert!(matches!(
        read_byte(&rig, SID, IOVA),
        Err(DmaError::Fault {
            event: evt::C_BAD_CD,
            recorded: true
        })
    ));
    assert_eq!(rig.events(), [Event::BadCd(stream(SID))]);
}

/// Every event type the model writes (with QEMU's identification registers), as the
/// driver decodes it.
#[test]
fn every_event_type_decodes_with_its_fields() {
    let mut rig = Rig::with(Config::QEMU_7_2.with_spec_checks(), smmu_config());
    let page = rig.page(0);
    let pages: Vec<u64> = (0..4).map(|_| rig.page(0)).collect();
    let d = rig.smmu.create_domain(1).unwrap();
    rig.smmu.attach(SID, d).unwrap();
    for (i, &pa) in pages.iter().take(3).enumerate() {
        rig.smmu
            .map(d, IOVA + i as u64 * 0x1000, pa, 0x1000, Prot::READ_WRITE)
            .unwrap();
    }
    mapped(&mut rig, 0x11, 2, IOVA, &[page], Prot::READ);

    // F_TRANSLATION (read), F_PERMISSION (write).
    let _ = rig.model.dma_read(SID, None, IOVA + 0x10_0010, &mut [0; 4]);
    let _ = rig.model.dma_write(0x11, None, IOVA + 0x24, &[0; 4]);
    // F_ACCESS: AF cleared in the PTE of page 1 (never used, so not in the TLB).
    let at = rig.desc_addr(SID, IOVA + 0x1000, 3);
    let pte = rig.mem.read_u64(at).unwrap();
    rig.mem
        .write_u64(at, pte & !smmuv3::pagetable::PTE_AF)
        .unwrap();
    let _ = rig.model.dma_read(SID, None, IOVA + 0x1008, &mut [0; 4]);
    // F_ADDR_SIZE: page 2's output address beyond the 44-bit IPS.
    let at = rig.desc_addr(SID, IOVA + 0x2000, 3);
    let pte = rig.mem.read_u64(at).unwrap();
    rig.mem.write_u64(at, pte | (1 << 45)).unwrap();
    let _ = rig.model.dma_write(SID, None, IOVA + 0x2000, &[0; 4]);
    // F_WALK_EABT: the level-2 table descriptor of IOVA + 4 MiB points outside RAM.
    let far = IOVA + (4 << 20);
    rig.smmu
        .map(d, far, pages[3], 0x1000, Prot::READ_WRITE)
        .unwrap();
    let l2 = rig.desc_addr(SID, far, 2);
    rig.mem.write_u64(l2, NOT_RAM | 3).unwrap();
    let _ = rig.model.dma_read(SID, None, far + 0x30, &mut [0; 4]);
    // C_BAD_SUBSTREAMID: a SubstreamID on a stream with one CD.
    let _ = rig.model.dma_read(SID, Some(3), IOVA, &mut [0; 4]);
    // C_BAD_STREAMID: beyond the 9-bit stream table.
    let _ = rig.model.dma_read(0x234, None, 0, &mut [0; 4]);
    // C_BAD_STE: V = 0.
    rig.smmu.set_stream(0x20, &StreamConfig::Invalid).unwrap();
    let _ = rig.model.dma_write(0x20, None, 0, &[0; 4]);
    // F_CD_FETCH: the STE points at a CD outside RAM.
    rig.smmu
        .set_stream(
            0x21,
            &StreamConfig::Stage1(Stage1Ste::single_cd(PhysAddr(NOT_RAM + 0x40))),
        )
        .unwrap();
    let _ = rig.model.dma_write(0x21, None, 0, &[0; 4]);
    // C_BAD_CD: CD.A = 0 (QEMU: TERM_MODEL = 1 needs A = 1).
    let cd = rig.cd_addr(0x11);
    let w0 = rig.mem.read_u64(cd).unwrap();
    rig.mem
        .write_u64(cd, w0 & !smmuv3::cd::CTXDESC_CD_0_A)
        .unwrap();
    rig.smmu
        .command_sync(&[Command::CfgiCdAll { sid: 0x11 }])
        .unwrap();
    let _ = rig.model.dma_read(0x11, None, IOVA, &mut [0; 4]);

    let events = rig.events();
    let s = stream(SID);
    let fault = |e: &Event| match e {
        Event::Translation(f) | Event::Permission(f) | Event::Access(f) | Event::AddrSize(f) => {
            (f.stream, f.access.addr, f.access.read, f.class)
        }
        Event::WalkEabt { fault: f, .. } => (f.stream, f.access.addr, f.access.read, f.class),
        other => panic!("not a translation fault: {other:?}"),
    };
    assert_eq!(events.len(), 10, "{events:#?}");
    assert!(matches!(events[0], Event::Translation(_)));
    assert_eq!(
        fault(&events[0]),
        (s, IOVA + 0x10_0010, true, FaultClass::Cd)
    );
    assert!(matches!(events[1], Event::Permission(_)));
    assert_eq!(
        fault(&events[1]),
        (stream(0x11), IOVA + 0x24, false, FaultClass::Cd)
    );
    assert!(matches!(events[2], Event::Access(_)));
    assert_eq!(fault(&events[2]), (s, IOVA + 0x1008, true, FaultClass::Cd));
    assert!(matches!(events[3], Event::AddrSize(_)));
    assert_eq!(fault(&events[3]), (s, IOVA + 0x2000, false, FaultClass::Cd));
    let Event::WalkEabt { fetch_addr, .. } = events[4] else {
        panic!("{:?}", events[4])
    };
    let l3_index = (far >> 12) & 0x1ff;
    assert_eq!(fetch_addr, NOT_RAM + l3_index * 8);
    assert_eq!(
        fault(&events[4]),
        (s, far + 0x30, true, FaultClass::TranslationTable)
    );
    assert_eq!(
        events[5],
        Event::BadSubstreamId(StreamRef {
            sid: SID,
            ssid: Some(3)
        })
    );
    assert_eq!(events[6], Event::BadStreamId(stream(0x234)));
    assert_eq!(events[7], Event::BadSte(stream(0x20)));
    assert_eq!(
        events[8],
        Event::CdFetch {
            stream: stream(0x21),
            fetch_addr: NOT_RAM + 0x40
        }
    );
    assert_eq!(events[9], Event::BadCd(stream(0x11)));

    // F_STE_FETCH: the stream table moved outside RAM.
    rig.model.write64(regs::STRTAB_BASE, NOT_RAM);
    rig.smmu.command_sync(&[Command::CfgiAll]).unwrap();
    let _ = rig.model.dma_read(SID, None, IOVA, &mut [0; 4]);
    assert_eq!(
        rig.events(),
        [Event::SteFetch {
            stream: s,
            fetch_addr: NOT_RAM + u64::from(SID) * 64
        }]
    );
}

/// A rig whose event queue has four slots, with a read-only page mapped at `IOVA` for
/// `SID`.
fn four_slot_event_queue_rig() -> Rig {
    let mut rig = Rig::with(
        Config::QEMU_7_2,
        SmmuConfig {
            evtq_log2: 2,
            ..smmu_config()
        },
    );
    let page = rig.page(0);
    mapped(&mut rig, SID, 1, IOVA, &[page], Prot::READ);
    rig
}

#[test]
fn event_queue_wraps() {
    let mut rig = four_slot_event_queue_rig();
    let mut seen = Vec::new();
    for round in 0..10u64 {
        for k in 0..3u64 {
            let a = 0x2000_0000 + (round * 3 + k) * 4;
            assert!(rig.model.dma_write(SID, None, a, &[0; 4]).is_err());
        }
        let (events, report) = rig.drain();
        assert_eq!(report.events, 3);
        assert!(!report.lost_records());
        seen.extend(events.iter().map(|e| match e {
            Event::Translation(f) => f.access.addr,
            other => panic!("{other:?}"),
        }));
    }
    let want: Vec<u64> = (0..30).map(|i| 0x2000_0000 + i * 4).collect();
    assert_eq!(seen, want);
    // 30 records through 4 slots: index 2, wrap bit set, no overflow flag.
    assert_eq!(rig.model.read32(regs::EVENTQ_PROD), 0b110);
}

#[test]
fn command_queue_wraps() {
    let mut rig = Rig::new();
    let page = rig.page(0x99);
    let d = rig.smmu.create_domain(1).unwrap();
    rig.smmu.attach(SID, d).unwrap();
    let before = rig.model.stats().commands;
    // Each round: map, use (the TLB holds the page), unmap (TLBI + CMD_SYNC): the DMA
    // after the unmap faults only if that round's invalidation ran.
    for round in 0..100u64 {
        let iova = IOVA + (round % 7) * 0x1000;
        rig.smmu.map(d, iova, page, 0x1000, Prot::READ).unwrap();
        assert_eq!(read_byte(&rig, SID, iova), Ok(0x99));
        rig.smmu.unmap(d, iova, 0x1000).unwrap();
        assert!(read_byte(&rig, SID, iova).is_err(), "round {round}");
    }
    let consumed = rig.model.stats().commands - before;
    assert!(
        consumed >= 200,
        "{consumed} commands through a 64-entry queue"
    );
    assert_eq!(
        rig.model.read32(regs::CMDQ_CONS),
        rig.model.read32(regs::CMDQ_PROD),
        "everything consumed"
    );
    assert_eq!(rig.events().len(), 100);
}

#[test]
fn full_event_queue_drops_records_and_raises_eventq_abt_err() {
    let mut rig = four_slot_event_queue_rig();
    let mut recorded = Vec::new();
    for k in 0..6u64 {
        match rig.model.dma_write(SID, None, IOVA + k * 4, &[0; 4]) {
            Err(DmaError::Fault {
                event: evt::F_PERMISSION,
                recorded: r,
            }) => recorded.push(r),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(recorded, [true, true, true, true, false, false]);
    let gerror = rig.model.read32(regs::GERROR) ^ rig.model.read32(regs::GERRORN);
    assert_eq!(gerror, regs::GERROR_EVENTQ_ABT_ERR);
    let prod = rig.model.read32(regs::EVENTQ_PROD);
    assert_eq!(prod & regs::Q_OVERFLOW_FLAG, 0, "QEMU 7.2 never sets OVFLG");
    assert_eq!(rig.model.stats().events_lost, 2);

    let (events, report) = rig.drain();
    assert_eq!(events.len(), 4);
    assert!(report.full && report.write_aborted && !report.overflowed);
    for (k, e) in events.iter().enumerate() {
        let Event::Permission(f) = e else {
            panic!("{e:?}")
        };
        assert_eq!(f.access.addr, IOVA + k as u64 * 4);
    }
    assert_eq!(rig.smmu.global_errors(), 0, "acknowledged by the drain");
    // Recording works again.
    assert!(rig.model.dma_write(SID, None, IOVA + 0x100, &[0]).is_err());
    let (events, report) = rig.drain();
    assert_eq!((events.len(), report.lost_records()), (1, false));
}

#[test]
fn disabled_event_queue_or_cd_r_0_record_nothing() {
    let mut rig = Rig::new();
    let page = rig.page(0);
    mapped(&mut rig, SID, 1, IOVA, &[page], Prot::READ);
    // CD.R = 0: the fault happens but is not recorded.
    let cd = rig.cd_addr(SID);
    let w0 = rig.mem.read_u64(cd).unwrap();
    rig.mem
        .write_u64(cd, w0 & !smmuv3::cd::CTXDESC_CD_0_R)
        .unwrap();
    rig.smmu
        .command_sync(&[Command::CfgiCdAll { sid: SID }])
        .unwrap();
    assert_eq!(
        rig.model.dma_write(SID, None, IOVA, &[0]),
        Err(DmaError::Fault {
            event: evt::F_PERMISSION,
            recorded: false
        })
    );
    // EVENTQEN = 0: configuration errors are not recorded either.
    rig.smmu.set_stream(0x20, &StreamConfig::Invalid).unwrap();
    rig.model
        .write32(regs::CR0, regs::CR0_SMMUEN | regs::CR0_CMDQEN);
    assert_eq!(
        rig.model.dma_write(0x20, None, 0, &[0]),
        Err(DmaError::Fault {
            event: evt::C_BAD_STE,
            recorded: false
        })
    );
    assert!(rig.events().is_empty());
}

/// Writes `w` into the command queue slot at PROD and publishes it, as a faulty
/// producer would.
fn inject_command(rig: &mut Rig, w: [u64; 2]) -> u32 {
    let base = rig.model.read64(regs::CMDQ_BASE);
    let log2 = (base & regs::Q_BASE_LOG2SIZE) as u32;
    let ring = base & regs::Q_BASE_ADDR;
    let prod = rig.model.read32(regs::CMDQ_PROD);
    let mask = (1u32 << log2) - 1;
    let slot = prod & mask;
    rig.mem
        .write_u64(ring + u64::from(slot) * 16, w[0])
        .unwrap();
    rig.mem
        .write_u64(ring + u64::from(slot) * 16 + 8, w[1])
        .unwrap();
    let wrap_and_index = (mask << 1) | 1;
    let next = (prod & !wrap_and_index) | (prod.wrapping_add(1) & wrap_and_index);
    rig.model.write32(regs::CMDQ_PROD, next);
    slot
}

#[test]
fn illegal_and_malformed_commands_stop_the_queue() {
    for (what, w) in [
        ("unknown opcode", [0x7f, 0]),
        ("CFGI_STE with SSec", [0x03 | (1 << 10) | (0x10 << 32), 1]),
        ("CFGI_CD_ALL with SSec", [0x06 | (1 << 10), 0]),
    ] {
        let mut rig = Rig::new();
        let page = rig.page(0x33);
        mapped(&mut rig, SID, 1, IOVA, &[page], Prot::READ);
        assert_eq!(read_byte(&rig, SID, IOVA), Ok(0x33));
        let slot = inject_command(&mut rig, w);
        let prod = rig.model.read32(regs::CMDQ_PROD);
        let cons = rig.model.read32(regs::CMDQ_CONS);
        assert_eq!(cons & 0x7f00_0000, 1 << 24, "{what}: CERROR_ILL");
        assert_eq!(cons & 0x3f, slot, "{what}: CONS stops at the command");
        assert_eq!(
            rig.model.read32(regs::GERROR) ^ rig.model.read32(regs::GERRORN),
            regs::GERROR_CMDQ_ERR
        );
        // A command after it waits: CFGI_ALL would make the abort STE below visible.
        let ste = rig.ste_addr(SID);
        rig.mem.write_u64(ste, 1).unwrap();
        inject_command(&mut rig, Command::CfgiAll.encode());
        assert_eq!(rig.model.read32(regs::CMDQ_CONS) & 0x3f, slot);
        assert_eq!(
            read_byte(&rig, SID, IOVA),
            Ok(0x33),
            "{what}: CFGI_ALL not run"
        );
        // Take the CFGI_ALL back: the driver's own producer index is at the bad slot.
        rig.model.write32(regs::CMDQ_PROD, prod);
        // The driver's next sync meets the error, replaces the command, acknowledges
        // and reports it; the queue runs again.
        match rig.smmu.command_sync(&[]) {
            Err(smmuv3::Error::Command {
                code: CommandErrorCode::Illegal,
                index,
                ..
            }) => assert_eq!(index & 0x3f, slot, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(rig.model.read32(regs::CMDQ_CONS) & 0x3f, slot + 1);
        rig.smmu.command_sync(&[Command::CfgiAll]).unwrap();
        assert_eq!(read_byte(&rig, SID, IOVA), Err(DmaError::Aborted), "{what}");
        assert_eq!(rig.smmu.global_errors(), 0);
        assert_eq!(rig.smmu.cmdq_stats().errors, 1);
    }
}

#[test]
fn commands_qemu_accepts_without_the_feature_do_nothing() {
    let mut rig = Rig::new();
    rig.smmu
        .command_sync(&[
            Command::PriResp {
                sid: 1,
                ssid: None,
                grpid: 1,
                resp: PriResponse::Success,
            },
            Command::Resume {
                sid: 1,
                stag: 2,
                action: ResumeAction::Retry,
            },
            Command::StallTerm { sid: 1 },
            Command::TlbiEl2All,
            Command::TlbiS12Vmall { vmid: 0 },
            Command::PrefetchConfig { sid: 1, ssid: None },
        ])
        .unwrap();
    assert_eq!(rig.smmu.cmdq_stats().errors, 0);
}

#[test]
fn unreadable_command_queue_gives_cerror_abt() {
    let mem = PhysMem::new(RAM_BASE, 1 << 20);
    let mut m = Smmuv3::new(mem);
    m.write64(regs::CMDQ_BASE, NOT_RAM | 4);
    m.write32(regs::CMDQ_PROD, 0);
    m.write32(regs::CMDQ_CONS, 0);
    m.write32(regs::CR0, regs::CR0_CMDQEN);
    m.write32(regs::CMDQ_PROD, 1);
    assert_eq!(m.read32(regs::CMDQ_CONS), 2 << 24);
    assert_eq!(m.read32(regs::GERROR), regs::GERROR_CMDQ_ERR);
}

#[test]
fn two_level_stream_table() {
    let mut rig = Rig::with(
        Config::QEMU_7_2,
        SmmuConfig {
            sid_bits: 16,
            strtab: StreamTableChoice::Auto,
            ..smmu_config()
        },
    );
    assert_eq!((rig.model.read32(regs::STRTAB_BASE_CFG) >> 16) & 3, 1);
    let (a, b) = (rig.page(0xa), rig.page(0xb));
    mapped(&mut rig, 0x10, 1, IOVA, &[a], Prot::READ);
    mapped(&mut rig, 0x100, 2, IOVA, &[b], Prot::READ);
    assert_eq!(read_byte(&rig, 0x10, IOVA), Ok(0xa));
    assert_eq!(read_byte(&rig, 0x100, IOVA), Ok(0xb));
    // A StreamID whose level-2 table does not exist (L1 Span = 0), and one in an
    // existing level-2 table with the unassigned (abort) STE.
    assert!(read_byte(&rig, 0x4000, IOVA).is_err());
    assert_eq!(read_byte(&rig, 0x11, IOVA), Err(DmaError::Aborted));
    assert_eq!(rig.events(), [Event::BadStreamId(stream(0x4000))]);
}

#[test]
fn qemu_identification_refuses_cd_tables() {
    let mut rig = Rig::new();
    let page = rig.page(0);
    mapped(&mut rig, SID, 1, IOVA, &[page], Prot::READ);
    // S1CDMax = 4 written behind the driver's back (it refuses without SSIDSIZE).
    let ste = rig.ste_addr(SID);
    let w0 = rig.mem.read_u64(ste).unwrap();
    rig.mem.write_u64(ste, w0 | (4 << 59)).unwrap();
    rig.smmu
        .command_sync(&[Command::CfgiSte {
            sid: SID,
            leaf: true,
        }])
        .unwrap();
    assert!(read_byte(&rig, SID, IOVA).is_err());
    assert_eq!(rig.events(), [Event::BadSte(stream(SID))]);
}

/// A stage-1 CD for `pt` with `asid`.
fn cd_for(pt: &PageTable, asid: u16, f: &Features) -> Cd {
    Cd::build(
        &CdConfig {
            asid,
            ttb0: pt.root(),
            t0sz: pt.t0sz(),
            walk: WalkAttrs::WB_ISH,
            ips: 4,
            mair: DEFAULT_MAIR,
            affd: false,
            ha: false,
            hd: false,
            aset: true,
            had: false,
        },
        f,
    )
    .unwrap()
}

fn write_cd(rig: &Rig, at: PhysAddr, cd: &Cd) {
    for (i, w) in cd.0.iter().enumerate() {
        rig.mem.write_u64(at.0 + 8 * i as u64, *w).unwrap();
    }
}

#[test]
fn substreams_select_cds_from_linear_and_two_level_tables() {
    let mut rig = Rig::with(Config::QEMU_7_2.with_substreams(12, true), smmu_config());
    let features = *rig.smmu.features();
    let mut tables = SimDma::new(rig.mem.clone(), TABLE_WINDOW, 16 << 20);
    let pages: Vec<u64> = (0..3).map(|i| rig.page(0xc0 + i)).collect();
    // Page tables mapping IOVA to pages[0], pages[1], pages[2].
    let pts: Vec<PageTable> = pages
        .iter()
        .map(|&p| {
            let mut pt = PageTable::new(&mut tables, 39, 44).unwrap();
            pt.map(&mut tables, IOVA, p, 0x1000, Prot::READ_WRITE)
                .unwrap();
            pt
        })
        .collect();

    // A linear table of 16 CDs: CD 0 -> pages[0], CD 3 -> pages[1]; CD 5 invalid.
    let mut table = CdTable::linear(&mut tables, &features, 4).unwrap();
    for (ssid, pt, asid) in [(0u32, &pts[0], 10u16), (3, &pts[1], 13)] {
        let slot = table.slot(&mut tables, ssid).unwrap();
        write_cd(&rig, slot.addr, &cd_for(pt, asid, &features));
    }
    let set = |rig: &mut Rig, t: &CdTable, dss| {
        rig.smmu
            .set_stream(SID, &StreamConfig::Stage1(t.stage1_ste(dss)))
            .unwrap();
    };
    set(&mut rig, &table, S1Dss::Substream0);
    let read = |rig: &Rig, ssid: Option<u32>| {
        let mut b = [0u8];
        rig.model.dma_read(SID, ssid, IOVA, &mut b).map(|_| b[0])
    };
    assert_eq!(read(&rig, Some(3)), Ok(0xc1));
    assert_eq!(read(&rig, None), Ok(0xc0), "S1DSS = SSID0: CD 0");
    assert!(
        read(&rig, Some(0)).is_err(),
        "SSID 0 is reserved with S1DSS = SSID0"
    );
    assert!(read(&rig, Some(16)).is_err(), "beyond S1CDMax");
    assert!(read(&rig, Some(5)).is_err(), "invalid CD");
    let sub = |ssid| StreamRef {
        sid: SID,
        ssid: Some(ssid),
    };
    assert_eq!(
        rig.events(),
        [
            Event::BadSubstreamId(sub(0)),
            Event::BadSubstreamId(sub(16)),
            Event::BadCd(sub(5))
        ]
    );
    // Substream TLB entries carry the CD's ASID: the same IOVA in two substreams.
    assert_eq!(rig.model.tlb_entries(), 2);

    set(&mut rig, &table, S1Dss::Terminate);
    assert!(read(&rig, None).is_err());
    assert_eq!(rig.events(), [Event::StreamDisabled(stream(SID))]);
    set(&mut rig, &table, S1Dss::Bypass);
    let mut b = [0u8];
    rig.model.dma_read(SID, None, pages[2], &mut b).unwrap();
    assert_eq!(b[0], 0xc2, "S1DSS = bypass: untranslated");

    // Two-level: 1024-CD leaves, CD 1030 in the second leaf.
    let mut two = CdTable::two_level(&mut tables, &features, 12).unwrap();
    let slot = two.slot(&mut tables, 1030).unwrap();
    assert!(slot.l1_written);
    write_cd(&rig, slot.addr, &cd_for(&pts[2], 30, &features));
    set(&mut rig, &two, S1Dss::Substream0);
    assert_eq!(read(&rig, Some(1030)), Ok(0xc2));
    assert!(read(&rig, Some(5)).is_err(), "leaf 0 not allocated");
    assert_eq!(rig.events(), [Event::BadSubstreamId(sub(5))]);
    // A CD fetched for a substream stays cached until CFGI.
    let w0 = rig.mem.read_u64(slot.addr.0).unwrap();
    rig.mem.write_u64(slot.addr.0, w0 & !(1 << 31)).unwrap();
    rig.smmu.command_sync(&[Command::TlbiNsnhAll]).unwrap();
    assert_eq!(read(&rig, Some(1030)), Ok(0xc2));
    rig.smmu
        .command_sync(&[Command::CfgiCd {
            sid: SID,
            ssid: 1030,
            leaf: true,
        }])
        .unwrap();
    assert!(read(&rig, Some(1030)).is_err());
    assert_eq!(rig.events(), [Event::BadCd(sub(1030))]);
}

#[test]
fn corrupt_tables_and_queues_never_panic() {
    // Random bits everywhere the model looks: STE, CD, tables, queue bases, commands.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mem = PhysMem::new(RAM_BASE, 1 << 20);
    for round in 0..200 {
        let mut m = Smmuv3::with_config(
            mem.clone(),
            if round % 2 == 0 {
                Config::QEMU_7_2
            } else {
                Config::QEMU_7_2
                    .with_substreams(20, true)
                    .with_spec_checks()
            },
        );
        for i in 0..(1 << 20) / 8 / 64 {
            mem.write_u64(RAM_BASE + i * 64 * 8 + (next() & 0x1f8), next())
                .unwrap();
        }
        for w in 0..2048u64 {
            let _ = w;
            let a = RAM_BASE + (next() & 0xf_fff8);
            mem.write_u64(a, next()).unwrap();
        }
        m.write64(regs::STRTAB_BASE, RAM_BASE + (next() & 0xf_ffc0));
        m.write32(regs::STRTAB_BASE_CFG, next() as u32);
        m.write64(regs::CMDQ_BASE, next());
        m.write64(regs::EVENTQ_BASE, RAM_BASE | (next() & 0xf_ffff));
        m.write32(regs::CR0, 0xd);
        for _ in 0..16 {
            let sid = (next() & 0x3ff) as u32;
            let ssid = (next() & 1 == 0).then(|| next() as u32);
            let _ = m.translate(sid, ssid, next(), Access::Read);
            let _ = m.dma_write(sid, ssid, next() >> (next() & 63), &[1, 2, 3]);
        }
        m.write32(regs::CMDQ_PROD, next() as u32);
        m.write32(regs::GERRORN, next() as u32);
        m.write32(regs::CMDQ_BASE, next() as u32);
        m.write32(regs::CMDQ_PROD, next() as u32);
    }
}
