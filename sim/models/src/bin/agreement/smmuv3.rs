//! The SMMUv3 scenarios of the `aarch64-smmuv3` image (images/aarch64-smmuv3/src/
//! smmu_scenarios.rs), run through the `smmuv3` driver against the SMMUv3 model.
//!
//! The machine is the image's default QEMU command line: RAM from 0x4000_0000 (512 MiB),
//! an edu device on the root bus at 00:02.0 (StreamID 0x10) and one behind a PCIe root
//! port at 01:00.0 (StreamID 0x100), a linear stream table for 9-bit StreamIDs, 39-bit
//! IOVAs, ASID `i + 1` for device `i`, and the image's IOVAs, transfer lengths and
//! directions. The scenarios whose runs record no events on QEMU (domain lifecycle,
//! command error) are not repeated here.

use std::sync::Arc;

use iommu_models::smmuv3::Smmuv3;
use sim_physmem::{PhysMem, RangeAllocator, SimDma};
use smmuv3::event::Event;
use smmuv3::evtq::DrainReport;
use smmuv3::ste::{Ste, StreamConfig};
use smmuv3::strtab::StreamTableFormat;
use smmuv3::{DomainId, PollBudget, Prot, Smmu, SmmuConfig, StreamTableChoice};

use super::edu::{self, Edu};
use super::{Recorder, Scenario};

/// The scenarios, in the image's order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "smmu-translated-dma",
        run: translated_dma,
    },
    Scenario {
        name: "smmu-fault-translation",
        run: fault_translation,
    },
    Scenario {
        name: "smmu-fault-permission",
        run: fault_permission,
    },
    Scenario {
        name: "smmu-unmap-invalidates",
        run: unmap_invalidates,
    },
    Scenario {
        name: "smmu-abort-ste",
        run: abort_ste,
    },
    Scenario {
        name: "smmu-bypass-ste",
        run: bypass_ste,
    },
    Scenario {
        name: "smmu-invalid-ste",
        run: invalid_ste,
    },
    Scenario {
        name: "smmu-isolation",
        run: isolation,
    },
    Scenario {
        name: "smmu-event-flood",
        run: event_flood,
    },
    Scenario {
        name: "smmu-default-config",
        run: default_config,
    },
];

/// RAM of QEMU's `virt` machine with `-m 512M`.
const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 512 << 20;
/// The driver's tables and queues.
const DRIVER_POOL: u64 = RAM_BASE + (4 << 20);
const DRIVER_POOL_SIZE: u64 = 16 << 20;
/// DMA buffers: the rest of RAM, handed out in increasing address order like the
/// image's frame allocator.
const BUFFERS: u64 = RAM_BASE + (32 << 20);

/// The image's edu devices on its default command line: PCI address and StreamID.
const TARGETS: [(&str, u32); 2] = [("00:02.0", 0x10), ("01:00.0", 0x100)];

// The image's constants (smmu_scenarios.rs, smmu_rig.rs).
const IOVA_BASE: u64 = 0x1000_0000;
const IOVA_STRIDE: u64 = 0x100_0000;
const PAGE: u64 = 0x1000;
const SHORT: u64 = 64;
const EDU_BUF: u64 = edu::BUFFER_ADDR;
const VA_BITS: u8 = 39;
const EVTQ_LOG2: u8 = 9;
const SENTINEL_ALIGN: u64 = 1 << 28;
const SHARED_IOVA: u64 = 0x7f_0000_0000;
const RANGE_PAGES: u64 = 5;
const FLOOD_EVTQ_LOG2: u8 = 3;
const FLOOD_DMAS: u64 = 4;
const HIGH_IOVA_BASE: u64 = 0x7f80_0000_0000;
const BLOCK_2M: u64 = 1 << 21;

/// StreamID of target `i`.
fn sid(i: usize) -> u32 {
    TARGETS[i].1
}

/// PCI address of target `i`.
fn bdf(i: usize) -> &'static str {
    TARGETS[i].0
}

fn iova_base(i: usize) -> u64 {
    IOVA_BASE + i as u64 * IOVA_STRIDE
}

fn asid(i: usize) -> u16 {
    (i + 1) as u16
}

fn drv(e: smmuv3::Error) -> String {
    format!("smmuv3: {e}")
}

/// A DMA buffer.
#[derive(Clone, Copy)]
struct Buf {
    pa: u64,
    len: u64,
}

/// How a scenario starts the SMMU (the image's `RigConfig`).
#[derive(Clone, Copy)]
struct RigConfig {
    evtq_log2: u8,
    /// `Some(bits)`: the driver's automatic stream table choice for `bits`-bit
    /// StreamIDs; `None`: a linear table for the StreamIDs in use.
    auto_strtab_bits: Option<u8>,
    va_bits: u8,
}

impl Default for RigConfig {
    fn default() -> Self {
        RigConfig {
            evtq_log2: EVTQ_LOG2,
            auto_strtab_bits: None,
            va_bits: VA_BITS,
        }
    }
}

/// The model, the driver on it, the edu devices and the RAM, for one scenario.
struct Rig<'r> {
    rec: &'r Recorder,
    mem: Arc<PhysMem>,
    model: Smmuv3,
    smmu: Smmu<Smmuv3, SimDma, PollBudget>,
    bufs: RangeAllocator,
    edus: Vec<Edu>,
    seed: u32,
}

impl<'r> Rig<'r> {
    fn start(rec: &'r Recorder, cfg: RigConfig) -> Result<Self, String> {
        let mem = PhysMem::new(RAM_BASE, RAM_SIZE as usize);
        let model = Smmuv3::new(mem.clone());
        let max_sid = TARGETS.iter().map(|t| t.1).max().unwrap_or(0);
        let (sid_bits, strtab) = match cfg.auto_strtab_bits {
            None => (
                (32 - max_sid.leading_zeros()).max(1) as u8,
                StreamTableChoice::Fixed(StreamTableFormat::Linear),
            ),
            Some(bits) => (bits, StreamTableChoice::Auto),
        };
        let config = SmmuConfig {
            cmdq_log2: 8,
            evtq_log2: cfg.evtq_log2,
            sid_bits,
            strtab,
            unassigned: Ste::abort(),
            va_bits: cfg.va_bits,
            ..SmmuConfig::default()
        };
        let dma = SimDma::new(mem.clone(), DRIVER_POOL, DRIVER_POOL_SIZE);
        let smmu = Smmu::new(model.clone(), dma, PollBudget::new(10_000), config)
            .map_err(|e| format!("SMMU initialisation: {e}"))?;
        Ok(Rig {
            rec,
            mem,
            model,
            smmu,
            bufs: RangeAllocator::new(BUFFERS, RAM_BASE + RAM_SIZE - BUFFERS),
            edus: TARGETS.iter().map(|_| Edu::default()).collect(),
            seed: 1,
        })
    }

    fn buffer_aligned(&mut self, len: u64, align: u64) -> Result<Buf, String> {
        let len = len.next_multiple_of(PAGE);
        let pa = self
            .bufs
            .alloc(len, align)
            .ok_or_else(|| format!("out of memory for {len:#x} bytes"))?;
        self.mem.zero(pa, len).map_err(|e| e.to_string())?;
        Ok(Buf { pa, len })
    }

    fn buffer(&mut self, len: u64) -> Result<Buf, String> {
        self.buffer_aligned(len, PAGE)
    }

    /// Fills `b` with a pattern; returns its contents.
    fn fill(&mut self, b: Buf) -> Vec<u8> {
        self.seed = self
            .seed
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(0x7f4a_7c15);
        let mut x = self.seed | 1;
        let data: Vec<u8> = (0..b.len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        self.mem.write(b.pa, &data).expect("buffers are RAM");
        data
    }

    fn snapshot(&self, b: Buf) -> Vec<u8> {
        self.window(b, 0, b.len)
    }

    fn window(&self, b: Buf, off: u64, len: u64) -> Vec<u8> {
        let mut v = vec![0; len as usize];
        self.mem.read(b.pa + off, &mut v).expect("buffers are RAM");
        v
    }

    fn unchanged(&self, b: Buf, before: &[u8], what: &str) -> Result<(), String> {
        if self.snapshot(b) == before {
            Ok(())
        } else {
            Err(format!("{what} at PA {:#x} was modified", b.pa))
        }
    }

    /// RAM (bus address `bus`) -> edu `t`.
    fn ram_to_edu(&mut self, t: usize, bus: u64, edu_addr: u64, len: u64) -> Result<(), String> {
        let sid = sid(t);
        let model = &self.model;
        self.edus[t].read_ram(
            &self.mem,
            |a, acc| {
                model
                    .translate(sid, None, a, acc)
                    .ok()
                    .map(|x| (x.pa, x.len))
            },
            bus,
            edu_addr,
            len,
        )
    }

    /// edu `t` -> RAM (bus address `bus`).
    fn edu_to_ram(&mut self, t: usize, edu_addr: u64, bus: u64, len: u64) -> Result<(), String> {
        let sid = sid(t);
        let model = &self.model;
        self.edus[t].write_ram(
            &self.mem,
            |a, acc| {
                model
                    .translate(sid, None, a, acc)
                    .ok()
                    .map(|x| (x.pa, x.len))
            },
            edu_addr,
            bus,
            len,
        )
    }

    /// One drain of the event queue, recorded.
    fn drain(&mut self) -> (Vec<Event>, DrainReport) {
        let mut events = Vec::new();
        let report = self.smmu.drain_events(|e| events.push(e));
        for e in &events {
            self.rec.record(e);
        }
        (events, report)
    }

    /// Drains until the queue stays empty (the image's `Rig::events`), recorded.
    fn collect(&mut self) -> Vec<Event> {
        let mut all = Vec::new();
        for _ in 0..64 {
            let (events, _) = self.drain();
            if events.is_empty() {
                break;
            }
            all.extend(events);
        }
        all
    }

    fn expect_no_events(&mut self, what: &str) -> Result<(), String> {
        let events = self.collect();
        match events.first() {
            None => Ok(()),
            Some(e) => Err(format!(
                "{what}: {} unexpected event(s), first {e}",
                events.len()
            )),
        }
    }

    fn domain_for(&mut self, i: usize) -> Result<DomainId, String> {
        let dom = self.smmu.create_domain(asid(i)).map_err(drv)?;
        self.smmu.attach(sid(i), dom).map_err(drv)?;
        Ok(dom)
    }

    fn map_buffer(&mut self, dom: DomainId, iova: u64, b: Buf, prot: Prot) -> Result<(), String> {
        self.smmu.map(dom, iova, b.pa, b.len, prot).map_err(drv)
    }

    /// A new page mapped at `iova` in `dom` with `prot`.
    fn mapped_page(&mut self, dom: DomainId, iova: u64, prot: Prot) -> Result<Buf, String> {
        let page = self.buffer(PAGE)?;
        self.map_buffer(dom, iova, page, prot)?;
        Ok(page)
    }

    fn finish(&mut self) -> Result<(), String> {
        self.expect_no_events("at the end")?;
        match self.smmu.global_errors() {
            0 => Ok(()),
            g => Err(format!("SMMU global error(s) active: {g:#x}")),
        }
    }
}

/// Every event is `F_TRANSLATION` (`permission`: `F_PERMISSION`) from target `t` in
/// `[start, start + len)` in the given direction, the lowest at `start`.
fn expect_faults(
    events: &[Event],
    permission: bool,
    t: usize,
    start: u64,
    len: u64,
    read: bool,
) -> Result<usize, String> {
    if events.is_empty() {
        return Err(format!("no fault for IOVA {start:#x}"));
    }
    let mut lowest = u64::MAX;
    for e in events {
        let f = match (permission, e) {
            (false, Event::Translation(f)) | (true, Event::Permission(f)) => f,
            _ => return Err(format!("unexpected event {e}")),
        };
        if f.stream.sid != sid(t)
            || f.access.read != read
            || f.access.addr < start
            || f.access.addr >= start + len
        {
            return Err(format!("unexpected fault {e}"));
        }
        lowest = lowest.min(f.access.addr);
    }
    if lowest != start {
        return Err(format!(
            "lowest faulting address {lowest:#x}, not {start:#x}"
        ));
    }
    Ok(events.len())
}

fn translated_dma(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    for i in 0..TARGETS.len() {
        let dom = rig.domain_for(i)?;
        let src = rig.buffer(2 * PAGE)?;
        let dst = rig.buffer(2 * PAGE)?;
        let (src_iova, dst_iova) = (iova_base(i), iova_base(i) + 0x10_0000);
        rig.map_buffer(dom, src_iova, src, Prot::READ)?;
        rig.map_buffer(dom, dst_iova, dst, Prot::READ_WRITE)?;
        let len = edu::MAX_TRANSFER;
        let (so, d0) = (0x3a1u64, 0x123u64);
        let data = rig.fill(src);
        rig.fill(dst);
        rig.ram_to_edu(i, src_iova + so, EDU_BUF, len)?;
        rig.edu_to_ram(i, EDU_BUF, dst_iova + d0, len)?;
        if rig.window(dst, d0, len) != data[so as usize..(so + len) as usize] {
            return Err(format!("{}: translated DMA copied wrong data", bdf(i)));
        }
        rig.expect_no_events("translated DMA")?;
    }
    rig.finish()
}

fn fault_translation(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    let n = TARGETS.len() as u64;
    // The image's sentinel pages: at the first 256 MiB boundary of free RAM.
    let sentinels = rig.buffer_aligned(n * PAGE, SENTINEL_ALIGN)?;
    let secret = rig.fill(sentinels);
    for i in 0..TARGETS.len() {
        let dom = rig.domain_for(i)?;
        let good_iova = iova_base(i);
        let good = rig.mapped_page(dom, good_iova, Prot::READ_WRITE)?;
        let iova = sentinels.pa + i as u64 * PAGE + 0x40;
        rig.fill(good);
        rig.ram_to_edu(i, good_iova, EDU_BUF, SHORT)?;
        rig.expect_no_events("preloading the edu buffer")?;
        rig.ram_to_edu(i, iova, EDU_BUF, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, false, i, iova, SHORT, true)?;
        rig.edu_to_ram(i, EDU_BUF, good_iova + 0x100, SHORT)?;
        rig.expect_no_events("reading back the edu buffer")?;
        rig.edu_to_ram(i, EDU_BUF, iova, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, false, i, iova, SHORT, false)?;
        rig.unchanged(sentinels, &secret, "the sentinel pages")?;
    }
    rig.finish()
}

fn fault_permission(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    for i in 0..TARGETS.len() {
        let dom = rig.domain_for(i)?;
        let ro_iova = iova_base(i);
        let ro = rig.mapped_page(dom, ro_iova, Prot::READ)?;
        let rw_iova = iova_base(i) + 0x10_0000;
        let scratch = rig.mapped_page(dom, rw_iova, Prot::READ_WRITE)?;
        let original = rig.fill(ro);
        rig.ram_to_edu(i, ro_iova + 0x200, EDU_BUF, SHORT)?;
        rig.edu_to_ram(i, EDU_BUF, rw_iova, SHORT)?;
        if rig.window(scratch, 0, SHORT) != original[0x200..0x200 + SHORT as usize] {
            return Err(String::from(
                "DMA read through the read-only mapping failed",
            ));
        }
        rig.expect_no_events("reading a read-only mapping")?;
        let target = ro_iova + 0x80;
        rig.edu_to_ram(i, EDU_BUF, target, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, true, i, target, SHORT, false)?;
        rig.unchanged(ro, &original, "the read-only page")?;
    }
    rig.finish()
}

fn unmap_invalidates(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    for i in 0..TARGETS.len() {
        let dom = rig.domain_for(i)?;
        let src_iova = iova_base(i);
        let src = rig.mapped_page(dom, src_iova, Prot::READ_WRITE)?;
        let dst_iova = iova_base(i) + 0x10_0000;
        let dst = rig.mapped_page(dom, dst_iova, Prot::READ_WRITE)?;

        let first = rig.fill(src);
        rig.ram_to_edu(i, src_iova, EDU_BUF, SHORT)?;
        rig.edu_to_ram(i, EDU_BUF, dst_iova + 0x40, SHORT)?;
        rig.ram_to_edu(i, dst_iova + 0x40, EDU_BUF, SHORT)?;
        let after_first = rig.snapshot(dst);
        if after_first[0x40..0x40 + SHORT as usize] != first[..SHORT as usize] {
            return Err(String::from("DMA before the unmap did not arrive"));
        }
        rig.expect_no_events("DMA before the unmap")?;

        let removed = rig.smmu.unmap(dom, dst_iova, PAGE).map_err(drv)?;
        if removed.bytes != PAGE {
            return Err(format!("unmap removed {:#x} bytes", removed.bytes));
        }
        rig.fill(src);
        rig.ram_to_edu(i, src_iova, EDU_BUF, SHORT)?;
        let target = dst_iova + 0x40;
        rig.edu_to_ram(i, EDU_BUF, target, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, false, i, target, SHORT, false)?;
        rig.unchanged(dst, &after_first, "the unmapped page")?;
        rig.ram_to_edu(i, target, EDU_BUF, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, false, i, target, SHORT, true)?;

        let other = rig.buffer(PAGE)?;
        rig.fill(other);
        rig.map_buffer(dom, dst_iova, other, Prot::READ_WRITE)?;
        let second = rig.fill(src);
        rig.ram_to_edu(i, src_iova, EDU_BUF, SHORT)?;
        rig.edu_to_ram(i, EDU_BUF, target, SHORT)?;
        if rig.window(other, 0x40, SHORT) != second[..SHORT as usize] {
            return Err(String::from(
                "DMA after remapping did not reach the new page",
            ));
        }
        rig.unchanged(dst, &after_first, "the old page")?;
        rig.expect_no_events("DMA after remapping")?;

        // A range of pages unmapped with one call.
        let range_iova = iova_base(i) + 0x40_0000;
        let size = RANGE_PAGES * PAGE;
        let range = rig.buffer(size)?;
        rig.map_buffer(dom, range_iova, range, Prot::READ_WRITE)?;
        rig.fill(src);
        let len = edu::MAX_TRANSFER;
        rig.ram_to_edu(i, src_iova, EDU_BUF, len)?;
        let mut off = 0x800u64;
        while off < size {
            rig.edu_to_ram(i, EDU_BUF, range_iova + off, len.min(size - off))?;
            off += 2 * PAGE;
        }
        let before = rig.snapshot(range);
        rig.expect_no_events("DMA to the range")?;
        let removed = rig.smmu.unmap(dom, range_iova, size).map_err(drv)?;
        if removed.bytes != size {
            return Err(format!(
                "unmap of {size:#x} bytes removed {:#x}",
                removed.bytes
            ));
        }
        for k in 0..RANGE_PAGES {
            let target = range_iova + k * PAGE + 0x100;
            rig.edu_to_ram(i, EDU_BUF, target, 4)?;
            let events = rig.collect();
            if expect_faults(&events, false, i, target, 4, false)? != 1 {
                return Err(format!("a 4-byte DMA to {target:#x} gave several records"));
            }
        }
        rig.unchanged(range, &before, "the unmapped range")?;
    }
    rig.finish()
}

fn abort_ste(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    for i in 0..TARGETS.len() {
        let sid = sid(i);
        let dom = rig.domain_for(i)?;
        let iova = iova_base(i);
        let scratch = rig.mapped_page(dom, iova, Prot::READ_WRITE)?;
        let sentinel = rig.buffer(PAGE)?;
        let secret = rig.fill(sentinel);
        rig.fill(scratch);
        rig.ram_to_edu(i, iova, EDU_BUF, SHORT)?;
        rig.smmu.set_abort(sid).map_err(drv)?;
        rig.edu_to_ram(i, EDU_BUF, sentinel.pa, SHORT)?;
        rig.expect_no_events("write with an abort STE")?;
        rig.unchanged(sentinel, &secret, "the sentinel page")?;
        rig.ram_to_edu(i, sentinel.pa, EDU_BUF, SHORT)?;
        rig.expect_no_events("read with an abort STE")?;
        rig.smmu.attach(sid, dom).map_err(drv)?;
        rig.edu_to_ram(i, EDU_BUF, iova + 0x200, SHORT)?;
        if rig.window(scratch, 0x200, SHORT) == secret[..SHORT as usize] {
            return Err(String::from(
                "the aborted read delivered the sentinel's data",
            ));
        }
        rig.expect_no_events("after re-attaching")?;
    }
    rig.finish()
}

fn bypass_ste(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    for i in 0..TARGETS.len() {
        rig.smmu.set_bypass(sid(i)).map_err(drv)?;
        let src = rig.buffer(PAGE)?;
        let dst = rig.buffer(PAGE)?;
        let data = rig.fill(src);
        rig.fill(dst);
        let len = 0x800u64;
        rig.ram_to_edu(i, src.pa + 0x10, EDU_BUF + 0x10, len)?;
        rig.edu_to_ram(i, EDU_BUF + 0x10, dst.pa + 0x20, len)?;
        if rig.window(dst, 0x20, len) != data[0x10..0x10 + len as usize] {
            return Err(String::from("DMA with a bypass STE did not copy the data"));
        }
        rig.expect_no_events("bypass DMA")?;
    }
    rig.finish()
}

fn invalid_ste(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    for i in 0..TARGETS.len() {
        let sid = sid(i);
        rig.smmu
            .set_stream(sid, &StreamConfig::Invalid)
            .map_err(drv)?;
        let sentinel = rig.buffer(PAGE)?;
        let secret = rig.fill(sentinel);
        for read in [false, true] {
            if read {
                rig.ram_to_edu(i, sentinel.pa, EDU_BUF, SHORT)?;
            } else {
                rig.edu_to_ram(i, EDU_BUF, sentinel.pa, SHORT)?;
            }
            let events = rig.collect();
            if events.is_empty()
                || !events
                    .iter()
                    .all(|e| matches!(e, Event::BadSte(s) if s.sid == sid))
            {
                return Err(format!("expected C_BAD_STE records, got {events:?}"));
            }
        }
        rig.unchanged(sentinel, &secret, "the sentinel page")?;
        rig.smmu.set_abort(sid).map_err(drv)?;
    }
    rig.finish()
}

fn isolation(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(rec, RigConfig::default())?;
    let n = TARGETS.len();
    let mut own = Vec::new();
    let mut shared = Vec::new();
    for i in 0..n {
        let dom = rig.domain_for(i)?;
        let buf = rig.mapped_page(dom, iova_base(i), Prot::READ_WRITE)?;
        let page = rig.mapped_page(dom, SHARED_IOVA, Prot::READ_WRITE)?;
        own.push(buf);
        shared.push(page);
    }
    let round_trip = |rig: &mut Rig, i: usize| -> Result<(), String> {
        let data = rig.fill(own[i]);
        rig.ram_to_edu(i, iova_base(i), EDU_BUF, SHORT)?;
        rig.edu_to_ram(i, EDU_BUF, iova_base(i) + 0x100, SHORT)?;
        if rig.window(own[i], 0x100, SHORT) != data[..SHORT as usize] {
            return Err(format!("{}: DMA through its own mapping failed", bdf(i)));
        }
        Ok(())
    };
    for i in 0..n {
        round_trip(&mut rig, i)?;
    }
    rig.expect_no_events("own mappings")?;
    for a in 0..n {
        let b = (a + 1) % n;
        let b_before = rig.snapshot(own[b]);
        let target = iova_base(b) + 0x200;
        rig.edu_to_ram(a, EDU_BUF, target, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, false, a, target, SHORT, false)?;
        rig.unchanged(own[b], &b_before, "the other device's page")?;
        rig.ram_to_edu(a, iova_base(b), EDU_BUF, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, false, a, iova_base(b), SHORT, true)?;
        rig.edu_to_ram(a, EDU_BUF, iova_base(a) + 0x300, SHORT)?;
        rig.expect_no_events("reading back")?;
    }
    let mut sent = Vec::new();
    for (i, &buf) in own.iter().enumerate() {
        let data = rig.fill(buf);
        rig.ram_to_edu(i, iova_base(i), EDU_BUF, SHORT)?;
        rig.edu_to_ram(i, EDU_BUF, SHARED_IOVA + 0x40, SHORT)?;
        sent.push(data);
    }
    for (i, (page, data)) in shared.iter().zip(&sent).enumerate() {
        if rig.window(*page, 0x40, SHORT) != data[..SHORT as usize] {
            return Err(format!("{}: the shared IOVA missed its page", bdf(i)));
        }
    }
    rig.expect_no_events("shared IOVA")?;
    for i in 0..n {
        round_trip(&mut rig, i)?;
    }
    rig.finish()
}

fn event_flood(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(
        rec,
        RigConfig {
            evtq_log2: FLOOD_EVTQ_LOG2,
            ..RigConfig::default()
        },
    )?;
    let entries = 1usize << FLOOD_EVTQ_LOG2;
    for i in 0..TARGETS.len() {
        let dom = rig.domain_for(i)?;
        let iova = iova_base(i);
        let buf = rig.mapped_page(dom, iova, Prot::READ_WRITE)?;
        let hole = iova + 0x20_0000;
        for k in 0..FLOOD_DMAS {
            rig.edu_to_ram(i, EDU_BUF, hole + k * SHORT, SHORT)?;
        }
        let (events, report) = rig.drain();
        if events.len() != entries {
            return Err(format!(
                "drained {} records from a full queue",
                events.len()
            ));
        }
        expect_faults(&events, false, i, hole, FLOOD_DMAS * SHORT, false)?;
        if !report.full || !report.lost_records() {
            return Err(format!("loss not reported: {report:?}"));
        }
        if rig.smmu.global_errors() != 0 {
            return Err(String::from("a global error stayed active after the drain"));
        }
        let (events, report) = rig.drain();
        if !events.is_empty() || report.lost_records() || report.full {
            return Err(format!(
                "second drain: {} record(s), {report:?}",
                events.len()
            ));
        }
        rig.edu_to_ram(i, EDU_BUF, hole, 4)?;
        let events = rig.collect();
        if expect_faults(&events, false, i, hole, 4, false)? != 1 {
            return Err(String::from("a 4-byte faulting DMA gave several records"));
        }
        let (_, report) = rig.drain();
        if report.lost_records() {
            return Err(String::from("loss reported again after recovery"));
        }
        let data = rig.fill(buf);
        rig.ram_to_edu(i, iova, EDU_BUF, SHORT)?;
        rig.edu_to_ram(i, EDU_BUF, iova + 0x800, SHORT)?;
        if rig.window(buf, 0x800, SHORT) != data[..SHORT as usize] {
            return Err(String::from("translated DMA failed after the flood"));
        }
    }
    rig.finish()
}

fn default_config(rec: &Recorder) -> Result<(), String> {
    let mut rig = Rig::start(
        rec,
        RigConfig {
            auto_strtab_bits: Some(16),
            va_bits: 48,
            ..RigConfig::default()
        },
    )?;
    for i in 0..TARGETS.len() {
        let dom = rig.domain_for(i)?;
        let block = rig.buffer_aligned(BLOCK_2M, BLOCK_2M)?;
        let iova = HIGH_IOVA_BASE + i as u64 * (1 << 30);
        rig.map_buffer(dom, iova, block, Prot::READ_WRITE)?;
        rig.fill(block);
        let len = edu::MAX_TRANSFER;
        let (src, dst) = (BLOCK_2M - 0x1800, 0x10_0123u64);
        let data = rig.window(block, src, len);
        rig.ram_to_edu(i, iova + src, EDU_BUF, len)?;
        rig.edu_to_ram(i, EDU_BUF, iova + dst, len)?;
        if rig.window(block, dst, len) != data {
            return Err(String::from(
                "DMA through the 2 MiB block copied wrong data",
            ));
        }
        rig.expect_no_events("DMA through a block")?;
        let page_off = 0x8_0000u64;
        let page = iova + page_off;
        let before = rig.window(block, page_off, 2 * PAGE);
        let removed = rig.smmu.unmap(dom, page, PAGE).map_err(drv)?;
        if removed.bytes != PAGE || removed.blocks_split != 1 {
            return Err(format!("unmapping a page of a block: {removed:?}"));
        }
        rig.edu_to_ram(i, EDU_BUF, page + 0x10, SHORT)?;
        let events = rig.collect();
        expect_faults(&events, false, i, page + 0x10, SHORT, false)?;
        if rig.window(block, page_off, 2 * PAGE) != before {
            return Err(String::from("DMA to the unmapped page changed the block"));
        }
        rig.edu_to_ram(i, EDU_BUF, page + PAGE, SHORT)?;
        let mut expected = before;
        expected[PAGE as usize..(PAGE + SHORT) as usize].copy_from_slice(&data[..SHORT as usize]);
        if rig.window(block, page_off, 2 * PAGE) != expected {
            return Err(String::from("DMA next to the unmapped page did not arrive"));
        }
        rig.expect_no_events("DMA next to the unmapped page")?;
    }
    rig.finish()
}
