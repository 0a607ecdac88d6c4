//! Model tests. Tables and queues are built with the `vtd` crate's public pieces (entry
//! encoders, second-level tables, the invalidation queue) in simulated RAM, and the model
//! is programmed through its registers, so each test controls exactly which invalidation
//! is issued and when.

use std::sync::Arc;

use iommu_hwio::mmio::RegisterIo;
use sim_physmem::{DmaMemory, PhysMem, SimDma};
use vtd::context::{
    ContextEntry, PasidDirEntry, PasidEntry, RootEntry, ScalableContextEntry, ScalableRootEntry,
    PDTS_ONE_PAGE,
};
use vtd::fault::{AccessType, FaultReason, FaultRecord};
use vtd::inv::{ContextInvalidation, Descriptor, IotlbInvalidation, PC_G_PASID};
use vtd::pagetable::{LargePages, Prot, SecondLevel};
use vtd::qi::InvalidationQueue;
use vtd::regs::PollBudget;

use super::regs::*;
use super::*;

const RAM: usize = 256 << 20;
/// Where the tables come from.
const TABLES: (u64, u64) = (0x0100_0000, 0x0100_0000);
/// Data frames the tests map.
const FRAME_A: u64 = 0x0400_0000;
const FRAME_B: u64 = 0x0400_1000;
const SID_A: u16 = 0x0018;
const SID_B: u16 = 0x0100;

struct Rig {
    mem: Arc<PhysMem>,
    dma: SimDma,
    model: VtdModel,
    scalable: bool,
    root: u64,
    queue: Option<InvalidationQueue>,
    /// Scalable mode: PASID directory and tables per source-id (tables by dir index).
    pasid_dirs: std::collections::HashMap<u16, (u64, std::collections::HashMap<usize, u64>)>,
    levels: u8,
}

impl Rig {
    fn new(config: VtdModelConfig, scalable: bool, queued: bool) -> Rig {
        let mem = PhysMem::new(0, RAM);
        let mut dma = SimDma::new(mem.clone(), TABLES.0, TABLES.1);
        let mut model = VtdModel::new(mem.clone(), config);
        let root = dma.alloc_zeroed(4096, 4096).unwrap().0;
        model.write64(RTADDR, root | if scalable { RTADDR_SMT } else { 0 });
        model.write32(GCMD, GCMD_SRTP);
        assert_ne!(model.read32(GSTS) & GCMD_SRTP, 0, "RTPS");
        let queue = queued.then(|| {
            let mut q = InvalidationQueue::new(&mut dma, 0, scalable, false).unwrap();
            q.program(&mut model);
            model.write32(GCMD, GCMD_QIE);
            assert_ne!(model.read32(GSTS) & GCMD_QIE, 0, "QIES");
            q
        });
        let status = model.read32(GSTS) & !(GCMD_SRTP | GCMD_WBF);
        model.write32(GCMD, status | GCMD_TE);
        assert_ne!(model.read32(GSTS) & GCMD_TE, 0, "TES");
        let levels = if config.cap >> CAP_MGAW_SHIFT & 0x3f >= 47 {
            4
        } else {
            3
        };
        Rig {
            mem,
            dma,
            model,
            scalable,
            root,
            queue,
            pasid_dirs: Default::default(),
            levels,
        }
    }

    fn legacy() -> Rig {
        Rig::new(VtdModelConfig::qemu_legacy(), false, true)
    }

    fn scalable() -> Rig {
        Rig::new(VtdModelConfig::qemu_scalable(), true, true)
    }

    fn table(&mut self) -> SecondLevel {
        let bits = 12 + 9 * self.levels;
        let large = LargePages {
            l2m: true,
            l1g: true,
        };
        SecondLevel::new(&mut self.dma, self.levels, bits, large, true).unwrap()
    }

    fn map(&mut self, pt: &mut SecondLevel, iova: u64, pa: u64, size: u64, prot: Prot) {
        pt.map(&mut self.dma, iova, pa, size, prot).unwrap();
    }

    fn alloc(&mut self) -> u64 {
        self.dma.alloc_zeroed(4096, 4096).unwrap().0
    }

    fn w(&self, pa: u64, v: u64) {
        self.mem.write_u64(pa, v).unwrap();
    }

    fn r(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa).unwrap()
    }

    /// The context table for `sid`, linked from the root table if missing.
    fn context_table(&mut self, sid: u16) -> u64 {
        let (bus, devfn) = (u64::from(sid >> 8), (sid & 0xff) as u8);
        let re = self.root + 16 * bus;
        let word = if self.scalable && devfn >= 128 {
            re + 8
        } else {
            re
        };
        let cur = self.r(word);
        if cur & 1 != 0 {
            return cur & !0xfff;
        }
        let t = self.alloc();
        if self.scalable {
            let mut e = ScalableRootEntry([self.r(re), self.r(re + 8)]);
            if devfn < 128 {
                e.set_lower(t);
            } else {
                e.set_upper(t);
            }
            self.w(re, e.0[0]);
            self.w(re + 8, e.0[1]);
        } else {
            self.w(re, RootEntry::new(t).0[0]);
        }
        t
    }

    /// Address of the context entry of `sid`.
    fn context_entry(&mut self, sid: u16) -> u64 {
        let t = self.context_table(sid);
        let devfn = u64::from(sid & 0xff);
        if self.scalable {
            t + 32 * (devfn & 0x7f)
        } else {
            t + 16 * devfn
        }
    }

    /// Route `sid`'s requests without PASID through `pt` (domain `did`).
    fn attach(&mut self, sid: u16, did: u16, pt: &SecondLevel) {
        let ce = self.context_entry(sid);
        if self.scalable {
            self.set_pasid_entry(
                sid,
                0,
                PasidEntry::second_level(did, pt.root().0, self.levels),
            );
            let dir = self.pasid_dirs[&sid].0;
            let e = ScalableContextEntry::new(dir, PDTS_ONE_PAGE, 0);
            for (i, v) in e.0.iter().enumerate().rev() {
                self.w(ce + 8 * i as u64, *v);
            }
        } else {
            let e = ContextEntry::translated(did, pt.root().0, self.levels);
            self.w(ce + 8, e.0[1]);
            self.w(ce, e.0[0]);
        }
    }

    /// Write PASID entry `pasid` of `sid` (allocating its directory and table).
    fn set_pasid_entry(&mut self, sid: u16, pasid: u32, e: PasidEntry) {
        if !self.pasid_dirs.contains_key(&sid) {
            let d = self.alloc();
            self.pasid_dirs.insert(sid, (d, Default::default()));
        }
        let di = vtd::context::pasid_dir_index(pasid);
        let table = match self.pasid_dirs[&sid].1.get(&di) {
            Some(&t) => t,
            None => {
                let t = self.alloc();
                let dir = self.pasid_dirs[&sid].0;
                self.w(dir + 8 * di as u64, PasidDirEntry::new(t).0);
                self.pasid_dirs.get_mut(&sid).unwrap().1.insert(di, t);
                t
            }
        };
        let pe = table + 64 * vtd::context::pasid_table_index(pasid) as u64;
        for (i, v) in e.0.iter().enumerate().rev() {
            self.w(pe + 8 * i as u64, *v);
        }
    }

    fn pasid_entry_addr(&self, sid: u16, pasid: u32) -> u64 {
        let t = self.pasid_dirs[&sid].1[&vtd::context::pasid_dir_index(pasid)];
        t + 64 * vtd::context::pasid_table_index(pasid) as u64
    }

    /// Address of the leaf entry mapping `iova` in `pt` (a walk over RAM).
    fn leaf(&self, pt: &SecondLevel, iova: u64) -> u64 {
        let mut table = pt.root().0;
        let mut level = u32::from(self.levels);
        loop {
            let at = table + 8 * ((iova >> (12 + 9 * (level - 1))) & 0x1ff);
            let e = self.r(at);
            if level == 1 || e & (1 << 7) != 0 {
                return at;
            }
            table = e & 0x000f_ffff_ffff_f000;
            level -= 1;
        }
    }

    /// Submit descriptors and wait for their completion.
    fn qi(&mut self, descs: &[Descriptor]) -> vtd::Result<()> {
        let q = self.queue.as_mut().expect("queued invalidation");
        q.submit_and_wait(&mut self.model, &self.dma, &mut PollBudget::new(10), descs)
    }

    fn read(&self, sid: u16, iova: u64) -> Result<u64, DmaError> {
        let mut b = [0u8; 8];
        self.model.dma_read(sid, None, iova, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write(&self, sid: u16, iova: u64, v: u64) -> Result<(), DmaError> {
        self.model.dma_write(sid, None, iova, &v.to_le_bytes())
    }

    /// Every pending fault record, cleared (as the driver drains them).
    fn drain(&mut self) -> (Vec<FaultRecord>, bool) {
        let fro = ((self.model.read64(CAP) >> CAP_FRO_SHIFT) & 0x3ff) as usize * 16;
        let nfr = ((self.model.read64(CAP) >> CAP_NFR_SHIFT) & 0xff) as u16 + 1;
        let fsts = self.model.read32(FSTS);
        let mut out = Vec::new();
        if fsts & FSTS_PPF != 0 {
            let start = ((fsts >> FSTS_FRI_SHIFT) & 0xff) as u16 % nfr;
            for k in 0..nfr {
                let i = (start + k) % nfr;
                let o = fro + 16 * i as usize;
                let Some(rec) =
                    FaultRecord::decode(i, self.model.read64(o), self.model.read64(o + 8))
                else {
                    break;
                };
                self.model.write32(o + 12, 1 << 31);
                out.push(rec);
            }
        }
        let overflow = fsts & FSTS_PFO != 0;
        if overflow {
            self.model.write32(FSTS, FSTS_PFO);
        }
        (out, overflow)
    }
}

fn page_inv(did: u16, addr: u64, am: u8) -> Descriptor {
    Descriptor::iotlb(
        IotlbInvalidation::Page {
            did,
            addr,
            am,
            ih: false,
        },
        false,
    )
}

#[test]
fn registers_reset_as_qemu_reports_them() {
    let mem = PhysMem::new(0, 1 << 20);
    for (config, ecap) in [
        (VtdModelConfig::qemu_legacy(), 0xf00f4a),
        (VtdModelConfig::qemu_scalable(), 0x4900_80f0_0f4a),
    ] {
        let mut m = VtdModel::new(mem.clone(), config);
        assert_eq!(m.read32(VER), 0x10);
        assert_eq!(m.read64(CAP), 0x00d2_008c_2226_0206);
        assert_eq!(m.read64(ECAP), ecap);
        assert_eq!(m.read32(FECTL), CTL_IM, "fault events masked at reset");
        assert_eq!(m.read32(GSTS), 0);
        m.write32(GCMD, GCMD_TE);
        assert_eq!(m.read32(GCMD), 0, "GCMD is write-only");
        assert_eq!(m.read32(GSTS), GCMD_TE);
        m.write64(CAP, 0);
        assert_eq!(m.read64(CAP), 0x00d2_008c_2226_0206, "CAP read-only");
        assert_eq!(m.read64(0xffc), 0, "out-of-page access reads zero");
        // No page request registers without ECAP.PRS.
        m.write64(PQA, 0x5000);
        assert_eq!(m.read64(PQA), 0);
    }
    let off = VtdModelConfig::qemu_legacy().intremap_off();
    assert_eq!(
        off.ecap, 0x0f42,
        "IR and MHMV only with interrupt remapping"
    );
    let full = VtdModelConfig::full();
    let c = vtd::caps::Features::new(full.ver, full.cap, full.ecap);
    assert_eq!(c.cap.nfr, 8);
    assert_eq!(c.cap.mgaw, 48);
    assert!(c.cap.supports_levels(3) && c.cap.supports_levels(4));
    assert!(c.ecap.prs && c.ecap.dt && c.ecap.pasid && c.ecap.smts && c.ecap.slts);
    assert_eq!(c.ecap.pasid_bits, 20);
    assert_eq!((c.cap.fro, c.ecap.iro), (0x22, 0xf));
}

#[test]
fn legacy_dma_reaches_the_mapped_frames() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(&mut pt, 0x0800_0000, FRAME_A, 0x2000, Prot::READ_WRITE);
    r.attach(SID_A, 1, &pt);
    r.write(SID_A, 0x0800_0010, 0x1122_3344).unwrap();
    assert_eq!(r.mem.read_u64(FRAME_A + 0x10).unwrap(), 0x1122_3344);
    r.mem.write_u64(FRAME_A + 0x1ff8, 77).unwrap();
    assert_eq!(r.read(SID_A, 0x0800_1ff8), Ok(77), "second page");
    // A transfer crossing the page boundary is split and translated page by page.
    let mut buf = [0u8; 16];
    r.model
        .dma_read(SID_A, None, 0x0800_0ff8, &mut buf)
        .unwrap();
    assert_eq!(u64::from_le_bytes(buf[8..].try_into().unwrap()), 0);
    assert_eq!(
        r.model.translate(SID_A, None, 0x0800_1234, Access::Write),
        Ok(FRAME_A + 0x1234)
    );
    // A second device with no context entry is blocked: context not present.
    let e = r.read(SID_B, 0x0800_0000).unwrap_err();
    assert!(matches!(
        e,
        DmaError::Fault {
            reason: FAULT_ROOT_NOT_PRESENT,
            ..
        }
    ));
    let (recs, _) = r.drain();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].reason, FaultReason::RootEntryNotPresent);
    assert_eq!(recs[0].source_id, SID_B);
}

#[test]
fn iotlb_keeps_old_translation_until_register_invalidation() {
    let mut r = Rig::new(VtdModelConfig::qemu_legacy(), false, false);
    let mut pt = r.table();
    r.map(&mut pt, 0x10_0000, FRAME_A, 0x1000, Prot::READ_WRITE);
    r.attach(SID_A, 1, &pt);
    r.mem.write_u64(FRAME_A, 0xaaaa).unwrap();
    r.mem.write_u64(FRAME_B, 0xbbbb).unwrap();
    assert_eq!(r.read(SID_A, 0x10_0000), Ok(0xaaaa));
    // Repoint the leaf without invalidating: the IOTLB still has the old frame.
    let leaf = r.leaf(&pt, 0x10_0000);
    r.w(leaf, (r.r(leaf) & 0xfff) | FRAME_B);
    assert_eq!(
        r.read(SID_A, 0x10_0000),
        Ok(0xaaaa),
        "stale IOTLB entry used"
    );
    let hits = r.model.stats().iotlb_hits;
    // Invalidating another domain changes nothing.
    let base = 0xf0;
    let mut t = PollBudget::new(10);
    vtd::inv::iotlb_invalidate_register(
        &mut r.model,
        &mut t,
        base,
        IotlbInvalidation::Domain(2),
        true,
    )
    .unwrap();
    assert_eq!(r.read(SID_A, 0x10_0000), Ok(0xaaaa));
    // Page-selective invalidation through IVA/IOTLB_REG drops it.
    vtd::inv::iotlb_invalidate_register(
        &mut r.model,
        &mut t,
        base,
        IotlbInvalidation::Page {
            did: 1,
            addr: 0x10_0000,
            am: 0,
            ih: true,
        },
        true,
    )
    .unwrap();
    assert_eq!(
        r.read(SID_A, 0x10_0000),
        Ok(0xbbbb),
        "new translation after invalidation"
    );
    assert_eq!(r.model.stats().iotlb_hits, hits + 1);
    assert_eq!(r.model.stats().register_iotlb_invalidations, 2);
    // IOTLB_REG reports the granularity performed; an AM above MAMV is refused.
    r.model.write64(base, 0x10_0000 | 19);
    r.model.write64(base + 8, IOTLB_IVT | (3 << 60) | (1 << 32));
    let v = r.model.read64(base + 8);
    assert_eq!(v & IOTLB_IVT, 0);
    assert_eq!((v >> IOTLB_IAIG_SHIFT) & 3, 0, "AM > MAMV refused");
}

#[test]
fn iotlb_keeps_old_translation_until_queued_invalidation() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(&mut pt, 0x20_0000, FRAME_A, 0x4000, Prot::READ_WRITE);
    r.attach(SID_A, 3, &pt);
    for i in 0..4u64 {
        r.mem.write_u64(FRAME_A + 0x1000 * i, i).unwrap();
        r.mem
            .write_u64(0x0500_0000 + 0x1000 * i, 0x100 + i)
            .unwrap();
        assert_eq!(r.read(SID_A, 0x20_0000 + 0x1000 * i), Ok(i));
    }
    for i in 0..4u64 {
        let leaf = r.leaf(&pt, 0x20_0000 + 0x1000 * i);
        r.w(leaf, (r.r(leaf) & 0xfff) | (0x0500_0000 + 0x1000 * i));
    }
    // Page-selective with an address mask: AM = 1 covers pages 0 and 1 only.
    r.qi(&[page_inv(3, 0x20_0000, 1)]).unwrap();
    let now: Vec<u64> = (0..4u64)
        .map(|i| r.read(SID_A, 0x20_0000 + 0x1000 * i).unwrap())
        .collect();
    assert_eq!(now, [0x100, 0x101, 2, 3]);
    // Another domain's domain-selective invalidation leaves them; this domain's drops them.
    r.qi(&[Descriptor::iotlb(IotlbInvalidation::Domain(4), false)])
        .unwrap();
    assert_eq!(r.read(SID_A, 0x20_3000), Ok(3));
    r.qi(&[Descriptor::iotlb(IotlbInvalidation::Domain(3), true)])
        .unwrap();
    assert_eq!(r.read(SID_A, 0x20_3000), Ok(0x103));
    let s = r.model.stats();
    assert_eq!(s.descriptors[2], 3);
    assert_eq!(s.descriptors[5], 3, "one wait per batch");
}

#[test]
fn large_pages_are_cached_and_invalidated_as_one_entry() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(
        &mut pt,
        0x4000_0000,
        0x0600_0000,
        0x20_0000,
        Prot::READ_WRITE,
    );
    r.attach(SID_A, 1, &pt);
    assert_eq!(
        r.model.translate(SID_A, None, 0x4012_3456, Access::Read),
        Ok(0x0612_3456)
    );
    let leaf = r.leaf(&pt, 0x4000_0000);
    assert_ne!(r.r(leaf) & (1 << 7), 0, "a 2MB leaf");
    r.w(leaf, (r.r(leaf) & 0xfff) | 0x0800_0000);
    assert_eq!(
        r.model.translate(SID_A, None, 0x401f_f000, Access::Read),
        Ok(0x061f_f000),
        "the whole 2MB page comes from one IOTLB entry"
    );
    // A page-selective invalidation of any 4KB page inside drops the large entry.
    r.qi(&[page_inv(1, 0x4010_0000, 0)]).unwrap();
    assert_eq!(
        r.model.translate(SID_A, None, 0x401f_f000, Access::Read),
        Ok(0x081f_f000)
    );
}

#[test]
fn context_cache_needs_a_context_invalidation() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(&mut pt, 0x10_0000, FRAME_A, 0x2000, Prot::READ_WRITE);
    r.attach(SID_A, 1, &pt);
    assert!(r.read(SID_A, 0x10_0000).is_ok());
    // Clear the context entry: the cached copy still routes the next page.
    let ce = r.context_entry(SID_A);
    r.w(ce, 0);
    r.w(ce + 8, 0);
    let fetches = r.model.stats().context_fetches;
    assert!(
        r.read(SID_A, 0x10_1000).is_ok(),
        "cached context entry used"
    );
    // IOTLB invalidation does not touch the context cache.
    r.qi(&[Descriptor::iotlb(IotlbInvalidation::Global, false)])
        .unwrap();
    assert!(r.read(SID_A, 0x10_1000).is_ok());
    // A context-cache invalidation of another device leaves it too.
    r.qi(&[Descriptor::context_cache(ContextInvalidation::Device {
        did: 1,
        sid: SID_A + 1,
        fm: 0,
    })])
    .unwrap();
    r.qi(&[Descriptor::iotlb(IotlbInvalidation::Global, false)])
        .unwrap();
    assert!(r.read(SID_A, 0x10_1000).is_ok());
    assert_eq!(r.model.stats().context_fetches, fetches);
    // The device's own (function mask 3 covers all functions of device 3).
    r.qi(&[Descriptor::context_cache(ContextInvalidation::Device {
        did: 1,
        sid: SID_A | 7,
        fm: 3,
    })])
    .unwrap();
    r.qi(&[Descriptor::iotlb(IotlbInvalidation::Global, false)])
        .unwrap();
    let e = r.read(SID_A, 0x10_1000).unwrap_err();
    assert!(matches!(
        e,
        DmaError::Fault {
            reason: FAULT_CONTEXT_NOT_PRESENT,
            iova: 0x10_1000,
            ..
        }
    ));
    let (recs, _) = r.drain();
    assert_eq!(recs[0].reason, FaultReason::ContextEntryNotPresent);
    assert_eq!(recs[0].pasid, None);
}

#[test]
fn fault_records_decode_with_the_right_fields() {
    for scalable in [false, true] {
        let mut r = if scalable {
            Rig::scalable()
        } else {
            Rig::legacy()
        };
        let mut pt = r.table();
        r.map(&mut pt, 0x0800_0000, FRAME_A, 0x1000, Prot::READ_WRITE);
        r.map(&mut pt, 0x0b00_0000, FRAME_B, 0x1000, Prot::READ);
        r.attach(SID_A, 1, &pt);
        let pasid = scalable.then_some(0);
        // Unmapped read: FR 6, read.
        let mut buf = [0u8; 64];
        let e = r
            .model
            .dma_read(SID_A, None, 0x0a00_0000, &mut buf)
            .unwrap_err();
        assert_eq!(
            e,
            DmaError::Fault {
                iova: 0x0a00_0000,
                reason: FAULT_READ,
                logged: FaultLogged::Recorded(0)
            }
        );
        let (recs, overflow) = r.drain();
        assert!(!overflow);
        assert_eq!(recs.len(), 1, "the other 15 pieces collapse");
        let f = recs[0];
        assert_eq!(
            (f.source_id, f.address, f.reason, f.access, f.pasid),
            (
                SID_A,
                0x0a00_0000,
                FaultReason::ReadDenied,
                AccessType::Read,
                pasid
            )
        );
        assert!(!f.privileged && !f.execute && !f.t2 && f.address_type == 0);
        // Unmapped write (an address inside the page): FR 5, write, page address.
        let e = r.write(SID_A, 0x0a00_1234, 1).unwrap_err();
        assert!(matches!(
            e,
            DmaError::Fault {
                reason: FAULT_WRITE,
                ..
            }
        ));
        let (recs, _) = r.drain();
        assert_eq!(
            (recs[0].address, recs[0].reason, recs[0].access),
            (0x0a00_1000, FaultReason::WriteDenied, AccessType::Write)
        );
        // Write to a read-only page: FR 5; reading it works and writes nothing.
        assert!(r.write(SID_A, 0x0b00_0000, 1).is_err());
        let (recs, _) = r.drain();
        assert_eq!(recs[0].reason, FaultReason::WriteDenied);
        assert!(recs[0].to_string().contains("access=write reason=0x5"));
        assert!(r.read(SID_A, 0x0b00_0000).is_ok());
        assert_eq!(r.drain().0.len(), 0);
        // Beyond the 39-bit address width: FR 4.
        let e = r.read(SID_A, 1 << 40).unwrap_err();
        assert!(matches!(
            e,
            DmaError::Fault {
                reason: FAULT_ADDRESS_BEYOND_WIDTH,
                ..
            }
        ));
        assert_eq!(r.drain().0[0].reason, FaultReason::AddressBeyondWidth);
    }
}

#[test]
fn iotlb_permission_miss_is_refused_without_a_record() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(&mut pt, 0x0b00_0000, FRAME_B, 0x1000, Prot::READ);
    r.attach(SID_A, 1, &pt);
    assert!(r.read(SID_A, 0x0b00_0000).is_ok());
    assert_eq!(
        r.write(SID_A, 0x0b00_0000, 5),
        Err(DmaError::Denied { iova: 0x0b00_0000 }),
        "the cached read-only translation refuses the write"
    );
    assert_eq!(r.mem.read_u64(FRAME_B).unwrap(), 0);
    assert_eq!(r.drain().0.len(), 0);
    assert_eq!(r.model.stats().denied, 2, "each 4-byte piece is refused");
}

#[test]
fn one_record_collapses_and_overflows_like_qemu() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(&mut pt, 0x0800_0000, FRAME_A, 0x1000, Prot::READ_WRITE);
    r.attach(SID_A, 1, &pt);
    r.attach(SID_B, 2, &pt);
    // 32 faults from one device before draining: one record, no overflow.
    for i in 0..32u64 {
        let _ = r.read(SID_A, 0x0e00_0000 + i * 0x1000);
    }
    assert_eq!(r.model.read32(FSTS) & (FSTS_PFO | FSTS_PPF), FSTS_PPF);
    let (recs, overflow) = r.drain();
    assert_eq!((recs.len(), overflow), (1, false));
    assert_eq!(recs[0].address, 0x0e00_0000);
    assert_eq!(r.model.read32(FSTS) & FSTS_PPF, 0, "PPF follows the F bits");
    // A fault from another device while the record is pending overflows.
    let _ = r.read(SID_A, 0x0e00_0000);
    let e = r.read(SID_B, 0x0e00_0000).unwrap_err();
    assert!(matches!(
        e,
        DmaError::Fault {
            logged: FaultLogged::Overflow,
            ..
        }
    ));
    let e = r.read(SID_B, 0x0e00_0000).unwrap_err();
    assert!(
        matches!(
            e,
            DmaError::Fault {
                logged: FaultLogged::Lost,
                ..
            }
        ),
        "PFO blocks recording"
    );
    let (recs, overflow) = r.drain();
    assert_eq!((recs.len(), overflow, recs[0].source_id), (1, true, SID_A));
    assert_eq!(r.model.read32(FSTS) & (FSTS_PFO | FSTS_PPF), 0);
    // Recording resumes once PFO is cleared.
    let _ = r.read(SID_B, 0x0e00_0000);
    assert_eq!(r.drain().0[0].source_id, SID_B);
}

#[test]
fn eight_records_fill_then_overflow() {
    let mut r = Rig::new(VtdModelConfig::full(), true, true);
    let mut pt = r.table();
    r.map(&mut pt, 0x0800_0000, FRAME_A, 0x1000, Prot::READ_WRITE);
    let sids: Vec<u16> = (0..9).map(|i| 0x0200 + 8 * i).collect();
    for (i, &sid) in sids.iter().enumerate() {
        r.attach(sid, 1 + i as u16, &pt);
    }
    for (i, &sid) in sids.iter().enumerate() {
        let e = r.read(sid, 0x0f00_0000).unwrap_err();
        let want = if i < 8 {
            FaultLogged::Recorded(i as u16)
        } else {
            FaultLogged::Overflow
        };
        assert!(
            matches!(e, DmaError::Fault { logged, .. } if logged == want),
            "{i}: {e:?}"
        );
    }
    let fsts = r.model.read32(FSTS);
    assert_eq!(
        (fsts >> FSTS_FRI_SHIFT) & 0xff,
        0,
        "FRI names the first record"
    );
    let (recs, overflow) = r.drain();
    assert!(overflow);
    let got: Vec<(u16, u16)> = recs.iter().map(|f| (f.index, f.source_id)).collect();
    let want: Vec<(u16, u16)> = (0..8).map(|i| (i, sids[i as usize])).collect();
    assert_eq!(got, want);
    assert!(recs
        .iter()
        .all(|f| f.pasid == Some(0) && f.reason == FaultReason::ReadDenied));
    // The next record goes to register 0 again (round robin), FRI follows.
    let _ = r.read(sids[8], 0x0f00_0000);
    let (recs, _) = r.drain();
    assert_eq!((recs[0].index, recs[0].source_id), (0, sids[8]));
    let _ = r.read(sids[0], 0x0f00_0000);
    assert_eq!((r.model.read32(FSTS) >> FSTS_FRI_SHIFT) & 0xff, 1);
}

#[test]
fn fault_event_waits_for_unmask_and_clears_with_status() {
    let mut r = Rig::legacy();
    let _ = r.read(SID_A, 0x1000);
    assert_eq!(
        r.model.read32(FECTL),
        CTL_IM | CTL_IP,
        "masked event pending"
    );
    assert_eq!(r.model.stats().fault_events, 0);
    r.model.write32(FECTL, 0);
    assert_eq!(r.model.read32(FECTL), 0);
    assert_eq!(r.model.stats().fault_events, 1, "unmasking sends it");
    // With events unmasked, the next first fault sends one at once.
    r.drain();
    let _ = r.read(SID_A, 0x1000);
    assert_eq!(r.model.stats().fault_events, 2);
    // A second fault while PPF is set sends none.
    let _ = r.read(SID_B, 0x1000);
    assert_eq!(r.model.stats().fault_events, 2);
}

#[test]
fn fault_processing_disable_suppresses_qualified_faults() {
    let mut r = Rig::legacy();
    let pt = r.table();
    r.attach(SID_A, 1, &pt);
    let ce = r.context_entry(SID_A);
    r.w(ce, r.r(ce) | 2);
    let e = r.read(SID_A, 0x3000).unwrap_err();
    assert!(matches!(
        e,
        DmaError::Fault {
            reason: FAULT_READ,
            logged: FaultLogged::Suppressed,
            ..
        }
    ));
    assert_eq!(r.drain().0.len(), 0);
}

#[test]
fn context_entry_checks_report_their_reasons() {
    let mut r = Rig::legacy();
    let pt = r.table();
    r.attach(SID_A, 1, &pt);
    let ce = r.context_entry(SID_A);
    // AW = 2 (4-level) is not in QEMU's SAGAW: invalid context entry.
    r.w(ce + 8, (r.r(ce + 8) & !7) | 2);
    assert!(matches!(
        r.read(SID_A, 0),
        Err(DmaError::Fault {
            reason: FAULT_CONTEXT_INVALID,
            ..
        })
    ));
    r.drain();
    // Reserved bit in the context entry.
    r.w(ce + 8, (r.r(ce + 8) & !7) | 1 | (1 << 7));
    assert!(matches!(
        r.read(SID_A, 0),
        Err(DmaError::Fault {
            reason: FAULT_CONTEXT_RESERVED,
            ..
        })
    ));
    r.drain();
    // Reserved bit in the root entry.
    r.w(ce + 8, r.r(ce + 8) & !(1 << 7));
    let root = r.root;
    r.w(root + 8, 1);
    assert!(matches!(
        r.read(SID_A, 0),
        Err(DmaError::Fault {
            reason: FAULT_ROOT_RESERVED,
            ..
        })
    ));
    let (recs, _) = r.drain();
    assert_eq!(recs[0].reason, FaultReason::RootEntryReserved);
    r.w(root + 8, 0);
    // A reserved bit in a paging entry (bit 62, TM without device-TLBs).
    let mut pt2 = r.table();
    r.map(&mut pt2, 0x5000, FRAME_A, 0x1000, Prot::READ_WRITE);
    r.attach(SID_B, 2, &pt2);
    let leaf = r.leaf(&pt2, 0x5000);
    r.w(leaf, r.r(leaf) | (1 << 62));
    assert!(matches!(
        r.read(SID_B, 0x5000),
        Err(DmaError::Fault {
            reason: FAULT_PAGING_RESERVED,
            ..
        })
    ));
}

#[test]
fn translations_into_the_interrupt_range_fault() {
    for (config, scalable, want) in [
        (
            VtdModelConfig::qemu_legacy(),
            false,
            FAULT_INTERRUPT_ADDRESS,
        ),
        (
            VtdModelConfig::qemu_scalable(),
            true,
            FAULT_SM_INTERRUPT_ADDRESS,
        ),
    ] {
        let mut r = Rig::new(config, scalable, true);
        let mut pt = r.table();
        r.map(&mut pt, 0x6000, 0xfee0_0000, 0x1000, Prot::READ_WRITE);
        r.attach(SID_A, 1, &pt);
        assert!(
            matches!(r.read(SID_A, 0x6000), Err(DmaError::Fault { reason, .. }) if reason == want)
        );
        // Input addresses there are interrupt messages, not DMA.
        assert!(r.write(SID_A, 0xfee0_0000, 0x41).is_ok());
        assert_eq!(r.model.stats().interrupt_messages, 1);
    }
}

#[test]
fn translation_off_and_pass_through_reach_physical_addresses() {
    let mem = PhysMem::new(0, 1 << 24);
    let m = VtdModel::new(mem.clone(), VtdModelConfig::qemu_legacy());
    m.dma_write(SID_A, None, 0x8000, &[1, 2, 3]).unwrap();
    assert_eq!(mem.read_u32(0x8000).unwrap(), 0x030201);
    let mut r = Rig::legacy();
    let ce = r.context_entry(SID_A);
    let e = ContextEntry::pass_through(1, 3);
    r.w(ce + 8, e.0[1]);
    r.w(ce, e.0[0]);
    assert_eq!(
        r.model.translate(SID_A, None, 0x0123_4567, Access::Write),
        Ok(0x0123_4567)
    );
}

#[test]
fn scalable_mode_walks_pasid_entries_and_reports_pasid() {
    let mut r = Rig::new(VtdModelConfig::full(), true, true);
    let mut pt = r.table();
    let mut pt5 = r.table();
    r.map(&mut pt, 0x0800_0000, FRAME_A, 0x1000, Prot::READ_WRITE);
    r.map(&mut pt5, 0x0800_0000, FRAME_B, 0x1000, Prot::READ_WRITE);
    r.attach(SID_A, 1, &pt);
    r.set_pasid_entry(SID_A, 5, PasidEntry::second_level(2, pt5.root().0, 4));
    r.set_pasid_entry(
        SID_A,
        0x1_2345,
        PasidEntry::second_level(3, pt5.root().0, 4),
    );
    assert_eq!(
        r.model.translate(SID_A, None, 0x0800_0008, Access::Read),
        Ok(FRAME_A + 8)
    );
    assert_eq!(
        r.model.translate(SID_A, Some(5), 0x0800_0008, Access::Read),
        Ok(FRAME_B + 8)
    );
    assert_eq!(
        r.model
            .translate(SID_A, Some(0x1_2345), 0x0800_0000, Access::Write),
        Ok(FRAME_B),
        "a PASID in another directory entry"
    );
    // Faults carry the PASID (PP = 1, PV).
    let _ = r
        .model
        .translate(SID_A, Some(5), 0x0900_0000, Access::Write);
    let (recs, _) = r.drain();
    assert_eq!(
        (recs[0].pasid, recs[0].reason),
        (Some(5), FaultReason::WriteDenied)
    );
    // A PASID without an entry: PASID table fault, the request's PASID in the record.
    assert!(matches!(
        r.model.translate(SID_A, Some(6), 0x0800_0000, Access::Read),
        Err(DmaError::Fault {
            reason: FAULT_PASID_TABLE,
            ..
        })
    ));
    let (recs, _) = r.drain();
    assert_eq!((recs[0].reason.code(), recs[0].pasid), (0x58, Some(6)));
    // A requester whose root entry is missing: without PASID the record has none (as
    // on QEMU), with one it carries it.
    assert!(r.read(SID_B, 0x0800_0000).is_err());
    let (recs, _) = r.drain();
    assert_eq!(
        (recs[0].source_id, recs[0].reason.code(), recs[0].pasid),
        (SID_B, 0x1, None)
    );
    let _ = r.model.translate(SID_B, Some(3), 0x0800_0000, Access::Read);
    let (recs, _) = r.drain();
    assert_eq!(
        (recs[0].source_id, recs[0].reason.code(), recs[0].pasid),
        (SID_B, 0x1, Some(3))
    );
    // PASIDs wider than PSS, or in legacy mode, are refused.
    assert_eq!(
        r.model.translate(SID_A, Some(1 << 20), 0, Access::Read),
        Err(DmaError::PasidUnsupported)
    );
    let l = Rig::legacy();
    assert_eq!(
        l.model.translate(SID_A, Some(1), 0, Access::Read),
        Err(DmaError::PasidUnsupported)
    );
}

#[test]
fn pasid_cache_needs_a_pasid_cache_invalidation() {
    let mut r = Rig::scalable();
    let mut pt = r.table();
    let mut other = r.table();
    r.map(&mut pt, 0x10_0000, FRAME_A, 0x2000, Prot::READ_WRITE);
    r.map(&mut other, 0x10_0000, 0x0500_0000, 0x2000, Prot::READ_WRITE);
    r.attach(SID_A, 7, &pt);
    assert_eq!(
        r.model.translate(SID_A, None, 0x10_0000, Access::Read),
        Ok(FRAME_A)
    );
    // Point the RID_PASID entry at another table: the cached entry is still used
    // (for a page the IOTLB does not hold).
    let pe = r.pasid_entry_addr(SID_A, 0);
    r.w(pe, PasidEntry::second_level(7, other.root().0, 3).0[0]);
    assert_eq!(
        r.model.translate(SID_A, None, 0x10_1000, Access::Read),
        Ok(FRAME_A + 0x1000)
    );
    // A PASID-cache invalidation of another PASID leaves it ...
    r.qi(&[Descriptor::pasid_cache(PC_G_PASID, 7, 1)]).unwrap();
    r.qi(&[Descriptor::iotlb(IotlbInvalidation::Domain(7), false)])
        .unwrap();
    assert_eq!(
        r.model.translate(SID_A, None, 0x10_1000, Access::Read),
        Ok(FRAME_A + 0x1000)
    );
    // ... the matching one drops it.
    r.qi(&[Descriptor::pasid_cache(PC_G_PASID, 7, 0)]).unwrap();
    r.qi(&[Descriptor::iotlb(IotlbInvalidation::Domain(7), false)])
        .unwrap();
    assert_eq!(
        r.model.translate(SID_A, None, 0x10_1000, Access::Read),
        Ok(0x0500_1000)
    );
    assert_eq!(r.model.stats().descriptors[7], 2);
}

#[test]
fn bad_descriptors_stop_the_queue_with_iqe() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(&mut pt, 0x10_0000, FRAME_A, 0x1000, Prot::READ_WRITE);
    r.attach(SID_A, 1, &pt);
    let bad = [
        Descriptor([0xf, 0, 0, 0]),              // undefined type
        Descriptor([5, 0x1000, 0, 0]),           // wait with neither SW nor IF
        page_inv(1, 0x10_0000, 19),              // AM above MAMV
        Descriptor([0x12 | (1 << 40), 0, 0, 0]), // IOTLB reserved bits
        Descriptor([0x11, 1, 0, 0]),             // context-cache upper half
        Descriptor([2, 0, 0, 0]),                // IOTLB granularity 0
        Descriptor([9, 0, 0, 0]),                // page group response without PRS
        Descriptor([8, 0, 0, 0]),                // PASID device-TLB without DT
    ];
    for d in bad {
        let before = r.model.stats().queue_errors;
        let e = r.qi(&[d]).unwrap_err();
        assert!(
            matches!(e, vtd::Error::Queue(vtd::error::QueueError::Iqe { .. })),
            "{d:?}: {e:?}"
        );
        assert_eq!(r.model.stats().queue_errors, before + 1);
        assert_eq!(r.model.read32(FSTS) & FSTS_IQE, 0, "the driver cleared IQE");
        // The queue runs again: a later batch completes.
        r.qi(&[]).unwrap();
    }
    // While IQE is set nothing further is processed, and IQH stays on the bad descriptor.
    let mut t = PollBudget::new(3);
    let q = r.queue.as_mut().unwrap();
    q.submit(
        &mut r.model,
        &r.dma,
        &mut t,
        &[
            Descriptor([0xf, 0, 0, 0]),
            Descriptor::iotlb(IotlbInvalidation::Global, false),
        ],
    )
    .unwrap();
    let fsts = r.model.read32(FSTS);
    assert_ne!(fsts & FSTS_IQE, 0);
    let head = r.model.read64(IQH);
    assert_ne!(head, r.model.read64(IQT));
    let tail = r.model.read64(IQT);
    r.model.write64(IQT, tail);
    assert_eq!(r.model.read64(IQH), head, "stopped until IQE is cleared");
    // Register-based invalidation is ignored while queued invalidation is on.
    r.model.write64(CCMD, CCMD_ICC | (1 << CCMD_CIRG_SHIFT));
    assert_ne!(r.model.read64(CCMD) & CCMD_ICC, 0);
}

#[test]
fn wait_descriptor_writes_status_and_raises_completion() {
    let mut r = Rig::legacy();
    let status = r.alloc();
    let q = r.queue.as_mut().unwrap();
    let mut t = PollBudget::new(3);
    q.submit(
        &mut r.model,
        &r.dma,
        &mut t,
        &[
            Descriptor::wait(Some((status, 0x5a5a)), true, false),
            Descriptor::wait(None, false, true),
        ],
    )
    .unwrap();
    assert_eq!(r.mem.read_u32(status).unwrap(), 0x5a5a);
    assert_eq!(r.model.read32(ICS), ICS_IWC);
    assert_eq!(r.model.read32(IECTL), CTL_IM | CTL_IP);
    r.model.write32(ICS, ICS_IWC);
    assert_eq!(r.model.read32(ICS), 0);
    assert_eq!(r.model.read32(IECTL), CTL_IM, "IP clears with IWC");
    // Queued invalidation can be turned off once drained after a wait.
    let status = r.model.read32(GSTS) & !GCMD_SRTP;
    r.model.write32(GCMD, status & !GCMD_QIE);
    assert_eq!(r.model.read32(GSTS) & GCMD_QIE, 0);
    assert_eq!(r.model.read64(IQH), 0);
}

#[test]
fn device_tlb_invalidations_are_logged() {
    let mut r = Rig::new(VtdModelConfig::full(), true, true);
    r.qi(&[
        Descriptor::device_tlb(SID_A, 0, 0, Some((0x4000, 1))),
        Descriptor::pasid_device_tlb(SID_A, 0, 0, 9, Some((0x8000, 0))),
    ])
    .unwrap();
    assert_eq!(
        r.model.device_tlb_invalidations(),
        [
            DeviceTlbInvalidation {
                sid: SID_A,
                pasid: None,
                address: 0x4000,
                size: 0x2000
            },
            DeviceTlbInvalidation {
                sid: SID_A,
                pasid: Some(9),
                address: 0x8000,
                size: 0x1000
            }
        ]
    );
}

#[test]
fn page_requests_are_queued_answered_and_overflow() {
    let mut r = Rig::new(VtdModelConfig::full(), true, true);
    let pt = r.table();
    r.attach(SID_A, 1, &pt);
    let req = PageRequest {
        rid: SID_A,
        pasid: Some(5),
        address: 0x1234_5000,
        read: true,
        write: false,
        execute: false,
        privileged: false,
        last: true,
        group: 0x42,
    };
    // PRE clear: the unit answers Invalid Request itself.
    assert_eq!(r.model.page_request(req), PageRequestOutcome::Refused);
    let ce = r.context_entry(SID_A);
    r.w(ce, r.r(ce) | translate::SM_CTX_PRE);
    r.qi(&[Descriptor::context_cache(ContextInvalidation::Global)])
        .unwrap();
    let prq = r.alloc();
    r.model.write64(PQH, 0);
    r.model.write64(PQA, prq);
    for i in 0..127u16 {
        let q = PageRequest { group: i, ..req };
        assert_eq!(r.model.page_request(q), PageRequestOutcome::Queued, "{i}");
    }
    assert_eq!(r.model.read32(PRS), PRS_PPR);
    assert_eq!(r.model.read64(PQT), 127 << 5);
    assert_eq!(r.model.page_request(req), PageRequestOutcome::Overflow);
    assert_eq!(r.model.read32(PRS), PRS_PPR | PRS_PRO);
    let first =
        vtd::fault::PageRequest::decode([r.r(prq), r.r(prq + 8), r.r(prq + 16), r.r(prq + 24)])
            .unwrap();
    assert_eq!(
        (
            first.rid,
            first.pasid,
            first.address,
            first.read,
            first.write,
            first.last_in_group,
            first.group_index
        ),
        (SID_A, Some(5), 0x1234_5000, true, false, true, 0)
    );
    // Software answers one group through the invalidation queue.
    r.qi(&[vtd::fault::page_group_response(
        &first,
        vtd::fault::ResponseCode::Success,
    )])
    .unwrap();
    let responses = r.model.page_responses();
    assert_eq!(
        responses,
        [
            PageResponse {
                rid: SID_A,
                pasid: Some(5),
                group: 0x42,
                code: 1,
                from_hardware: true
            },
            PageResponse {
                rid: SID_A,
                pasid: Some(5),
                group: 0x42,
                code: 0,
                from_hardware: true
            },
            PageResponse {
                rid: SID_A,
                pasid: Some(5),
                group: 0,
                code: 0,
                from_hardware: false
            },
        ]
    );
    // QEMU's configuration has no page requests.
    let q = Rig::scalable();
    assert_eq!(q.model.page_request(req), PageRequestOutcome::Refused);
}

#[test]
fn srtp_and_te_changes_drop_every_cache() {
    let mut r = Rig::legacy();
    let mut pt = r.table();
    r.map(&mut pt, 0x10_0000, FRAME_A, 0x1000, Prot::READ_WRITE);
    r.attach(SID_A, 1, &pt);
    assert!(r.read(SID_A, 0x10_0000).is_ok());
    assert_eq!(r.model.cache_sizes(), (1, 0, 1));
    let status = r.model.read32(GSTS) & !GCMD_SRTP;
    r.model.write32(GCMD, status | GCMD_SRTP);
    assert_eq!(r.model.cache_sizes(), (0, 0, 0));
    assert!(r.read(SID_A, 0x10_0000).is_ok());
    let status = r.model.read32(GSTS) & !GCMD_SRTP;
    r.model.write32(GCMD, status & !GCMD_TE);
    assert!(!r.model.translation_enabled());
    assert_eq!(r.model.cache_sizes(), (0, 0, 0));
}

#[test]
fn works_under_the_driver() {
    // The real driver brings the model up in both modes and its unmap invalidation
    // removes the translation.
    for config in [
        VtdModelConfig::qemu_legacy(),
        VtdModelConfig::qemu_scalable(),
        VtdModelConfig::full(),
    ] {
        let mem = PhysMem::new(0, RAM);
        let model = VtdModel::new(mem.clone(), config);
        let dma = SimDma::new(mem.clone(), TABLES.0, TABLES.1);
        let mut v = vtd::Vtd::new(
            model.clone(),
            dma,
            PollBudget::new(100),
            vtd::VtdConfig::default(),
        )
        .unwrap();
        let d = v.create_domain().unwrap();
        v.attach(d, 0, 0x18).unwrap();
        v.map(d, 0x0800_0000, FRAME_A, 0x1000, Prot::READ_WRITE)
            .unwrap();
        model.dma_write(SID_A, None, 0x0800_0000, &[9; 8]).unwrap();
        assert_eq!(mem.read_u64(FRAME_A).unwrap(), 0x0909_0909_0909_0909);
        v.unmap(d, 0x0800_0000, 0x1000).unwrap();
        assert!(model.dma_write(SID_A, None, 0x0800_0000, &[1; 8]).is_err());
        let mut recs = Vec::new();
        v.drain_faults(|f| recs.push(f));
        assert_eq!(recs.len(), 1);
        assert_eq!(
            (recs[0].reason, recs[0].address),
            (FaultReason::WriteDenied, 0x0800_0000)
        );
    }
}

/// Garbage tables, garbage descriptors and arbitrary register writes: the model reports
/// faults and queue errors, it never panics.
#[test]
fn garbage_in_memory_and_registers_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for config in [
        VtdModelConfig::qemu_legacy(),
        VtdModelConfig::qemu_scalable(),
        VtdModelConfig::full(),
    ] {
        let scalable = config.ecap & ECAP_SMTS != 0;
        let mut r = Rig::new(config, scalable, true);
        // Random words over the whole table window: root, context, PASID and page tables.
        for i in 0..(TABLES.1 / 8) {
            if next() % 4 == 0 {
                r.w(TABLES.0 + 8 * i, next());
            }
        }
        for _ in 0..2000 {
            let sid = next() as u16;
            let pasid = (next() % 3 == 0).then(|| next() as u32 & 0xf_ffff);
            let iova = next()
                & if next() % 2 == 0 {
                    0xffff_ffff
                } else {
                    u64::MAX
                };
            let mut buf = [0u8; 24];
            let _ = r.model.dma_read(sid, pasid, iova, &mut buf);
            let _ = r.model.dma_write(sid, pasid, iova, &buf);
            let _ = r.model.page_request(PageRequest {
                rid: sid,
                pasid,
                address: iova,
                read: true,
                write: false,
                execute: false,
                privileged: false,
                last: true,
                group: 1,
            });
        }
        r.drain();
        // Random descriptors straight into the queue, then random register writes.
        let iqa = r.model.read64(IQA) & !0xfff;
        for i in 0..256u64 {
            r.w(iqa + 8 * i, next());
        }
        r.model.write64(IQT, 0xff << 4);
        for _ in 0..5000 {
            let o = (next() % 0x1000) as usize & !3;
            if next() % 2 == 0 {
                r.model.write32(o, next() as u32);
            } else {
                r.model.write64(o & !7, next());
            }
            let _ = r.model.read64(o & !7);
            let _ = r
                .model
                .dma_read(SID_A, None, next() & 0xffff_ffff, &mut [0u8; 8]);
        }
    }
}
