//! SMMUv3 conformance scenarios: the `smmuv3` driver programs QEMU's SMMU and
//! the edu devices behind it do DMA through stage-1 domains, into faults,
//! and through abort, bypass and invalid stream table entries; further
//! scenarios cover event queue overflow, moving streams between domains,
//! command errors and the driver's default configuration (two-level stream
//! table, 48-bit IOVAs, block mappings).
//!
//! Each scenario adapts to the devices found: it runs on every edu device
//! that has a StreamID (the isolation scenario needs two or more). A failed
//! edu DMA is split by QEMU into 4-byte accesses, each of which the SMMU
//! reports, so a faulting 64-byte transfer gives up to 16 event records.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use smmuv3::event::Event;
use smmuv3::evtq::DrainReport;
use smmuv3::ste::StreamConfig;
use smmuv3::{DomainId, Prot};

use crate::edu;
use crate::frames::DmaBuffer;
use crate::harness::{Context, Verdict};
use crate::scenarios::Pattern;
use crate::smmu_rig::{Rig, RigConfig, Target};
use crate::time::Clock;

/// IOVAs of device `i`'s mappings start at `IOVA_BASE + i * IOVA_STRIDE`:
/// far from RAM (which starts at 0x4000_0000 on `virt`), so an IOVA is
/// never the physical address of the page it maps.
const IOVA_BASE: u64 = 0x1000_0000;
/// Distance between the IOVA ranges of two devices.
const IOVA_STRIDE: u64 = 0x100_0000;
/// Page size of the mappings.
const PAGE: u64 = 0x1000;
/// Length of the short transfers (16 accesses of 4 bytes when they fault).
const SHORT: u64 = 64;
/// Wait before collecting events of a completed DMA (margin only).
const SETTLE_US: u64 = 2_000;
/// Where transfers start in the edu buffer.
const EDU_BUF: u64 = edu::BUFFER_ADDR;

fn iova_base(i: usize) -> u64 {
    IOVA_BASE + i as u64 * IOVA_STRIDE
}

fn asid(i: usize) -> u16 {
    (i + 1) as u16
}

fn drv(e: smmuv3::Error) -> String {
    format!("smmuv3: {e}")
}

fn buffer(ctx: &mut Context<'_>, len: u64) -> Result<DmaBuffer, String> {
    ctx.frames
        .alloc_dma(len as usize)
        .map_err(|e| format!("{e}"))
}

/// Fills `buf` with a pattern from `seed` and makes it visible to devices.
fn fill_in_place(buf: &mut DmaBuffer, seed: u32) {
    let mut p = Pattern::new(seed);
    for b in buf.as_mut_slice() {
        *b = p.next_u8();
    }
    buf.sync_for_device();
}

/// As [`fill_in_place`], returning the contents.
fn fill(buf: &mut DmaBuffer, seed: u32) -> Vec<u8> {
    fill_in_place(buf, seed);
    buf.as_slice().to_vec()
}

/// Bytes `[off, off + len)` of `buf` as the devices left them.
fn window(buf: &DmaBuffer, off: u64, len: u64) -> Vec<u8> {
    buf.sync_for_cpu();
    let (a, b) = (off as usize, (off + len) as usize);
    buf.as_slice().get(a..b).unwrap_or(&[]).to_vec()
}

/// Current contents of `buf` as the devices left them.
fn snapshot(buf: &DmaBuffer) -> Vec<u8> {
    buf.sync_for_cpu();
    buf.as_slice().to_vec()
}

/// `buf` still holds `before`.
fn unchanged(buf: &DmaBuffer, before: &[u8], what: &str) -> Verdict {
    let now = snapshot(buf);
    match now.iter().zip(before).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what} at PA 0x{:x} was modified (first at offset 0x{i:x}: 0x{:02x} -> 0x{:02x})",
            buf.phys(),
            before.get(i).copied().unwrap_or(0),
            now.get(i).copied().unwrap_or(0)
        )),
    }
}

/// RAM (bus address `bus`) -> edu buffer.
fn to_edu(t: &Target, clock: &Clock, bus: u64, edu_addr: u64, len: u64) -> Verdict {
    t.dev
        .edu
        .dma_to_device(clock, bus, edu_addr, len, edu::DMA_TIMEOUT_US)
        .map_err(|e| format!("{} RAM 0x{bus:x} -> edu: {e}", t.dev.bdf))
}

/// edu buffer -> RAM (bus address `bus`).
fn from_edu(t: &Target, clock: &Clock, edu_addr: u64, bus: u64, len: u64) -> Verdict {
    t.dev
        .edu
        .dma_from_device(clock, edu_addr, bus, len, edu::DMA_TIMEOUT_US)
        .map_err(|e| format!("{} edu -> RAM 0x{bus:x}: {e}", t.dev.bdf))
}

/// Which fault records a check expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Translation,
    Permission,
}

fn direction(read: bool) -> &'static str {
    if read {
        "read (RnW=1)"
    } else {
        "write (RnW=0)"
    }
}

/// Every event is `kind` from `sid` for an access in `[start, start + len)`
/// in the direction given, the lowest address is `start`, and there is at
/// least one. Returns the number of records.
fn expect_faults(
    events: &[Event],
    kind: Fault,
    sid: u32,
    start: u64,
    len: u64,
    read: bool,
) -> Result<usize, String> {
    if events.is_empty() {
        return Err(format!(
            "no {kind:?} event for the {} of IOVA 0x{start:x} by StreamID 0x{sid:x}",
            direction(read)
        ));
    }
    let mut lowest = u64::MAX;
    for e in events {
        let f = match (kind, e) {
            (Fault::Translation, Event::Translation(f))
            | (Fault::Permission, Event::Permission(f)) => f,
            _ => return Err(format!("expected only {kind:?} events, got {e:?}")),
        };
        if f.stream.sid != sid {
            return Err(format!(
                "{kind:?} event names StreamID 0x{:x}, expected 0x{sid:x}: {e:?}",
                f.stream.sid
            ));
        }
        if f.access.read != read {
            return Err(format!(
                "{kind:?} event reports a {}, expected a {}: {e:?}",
                direction(f.access.read),
                direction(read)
            ));
        }
        if f.access.addr < start || f.access.addr >= start + len {
            return Err(format!(
                "{kind:?} event address 0x{:x} outside the transfer 0x{start:x}..0x{:x}",
                f.access.addr,
                start + len
            ));
        }
        lowest = lowest.min(f.access.addr);
    }
    if lowest != start {
        return Err(format!(
            "lowest faulting address 0x{lowest:x}, expected the transfer start 0x{start:x}"
        ));
    }
    Ok(events.len())
}

/// Prints `RECORD smmuv3 <scenario> <record>` for each event drained, in the
/// canonical form of [`Event`]'s `Display`. `cargo xtask test` compares these
/// lines, per scenario, with the records the project's SMMUv3 model writes
/// when iommu-models' `agreement` binary runs the same scenario.
fn record(scenario: &str, events: &[Event]) {
    for e in events {
        crate::println!("RECORD smmuv3 {scenario} {e}");
    }
}

/// [`Rig::events`], recorded.
fn collect(rig: &mut Rig, clock: &Clock, scenario: &str) -> Vec<Event> {
    let events = rig.events(clock, SETTLE_US);
    record(scenario, &events);
    events
}

/// [`Rig::drain`], recorded.
fn drain(rig: &mut Rig, scenario: &str) -> (Vec<Event>, DrainReport) {
    let (events, report) = rig.drain();
    record(scenario, &events);
    (events, report)
}

fn expect_no_events(rig: &mut Rig, clock: &Clock, scenario: &str, what: &str) -> Verdict {
    let events = collect(rig, clock, scenario);
    match events.first() {
        None => Ok(()),
        Some(e) => Err(format!(
            "{what}: {} unexpected event(s), first {e:?}",
            events.len()
        )),
    }
}

/// A stage-1 domain for target `i`, with the target attached.
fn domain_for(rig: &mut Rig, i: usize, sid: u32) -> Result<DomainId, String> {
    let dom = rig.smmu.create_domain(asid(i)).map_err(drv)?;
    rig.smmu.attach(sid, dom).map_err(drv)?;
    Ok(dom)
}

/// Maps `buf` at `iova` and checks the driver's own view of the mapping.
fn map_buffer(rig: &mut Rig, dom: DomainId, iova: u64, buf: &DmaBuffer, prot: Prot) -> Verdict {
    let size = (buf.len() as u64).next_multiple_of(PAGE);
    rig.smmu
        .map(dom, iova, buf.phys(), size, prot)
        .map_err(drv)?;
    let probe = iova + size / 2 + 8;
    match rig.smmu.translate(dom, probe).map_err(drv)? {
        Some(pa) if pa == buf.phys() + size / 2 + 8 => Ok(()),
        other => Err(format!(
            "driver translates IOVA 0x{probe:x} to {other:x?}, expected PA 0x{:x}",
            buf.phys() + size / 2 + 8
        )),
    }
}

fn targets(rig: &Rig) -> Vec<Target> {
    rig.targets.clone()
}

/// Finishes a scenario: no unexpected events or global errors, and the
/// command queue counters.
fn finish(rig: &mut Rig, clock: &Clock, name: &str) -> Verdict {
    expect_no_events(rig, clock, name, "at the end")?;
    rig.check_global_errors()?;
    rig.print_stats(name);
    Ok(())
}

// --- smmu-translated-dma ---------------------------------------------------

/// One stage-1 domain per device; DMA RAM -> edu -> RAM through mappings
/// whose IOVAs differ from the physical addresses, data checked.
pub fn translated_dma(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-translated-dma";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    for (i, t) in targets(&rig).iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut src = buffer(ctx, 2 * PAGE)?;
        let mut dst = buffer(ctx, 2 * PAGE)?;
        let src_iova = iova_base(i);
        let dst_iova = iova_base(i) + 0x10_0000;
        // The device only reads the source: map it read-only.
        map_buffer(&mut rig, dom, src_iova, &src, Prot::READ)?;
        map_buffer(&mut rig, dom, dst_iova, &dst, Prot::READ_WRITE)?;
        if src_iova == src.phys() || dst_iova == dst.phys() {
            return Err(String::from("an IOVA equals its physical address"));
        }
        // The longest transfer, between odd offsets of source and
        // destination, so that both sides cross a page boundary.
        let len = edu::MAX_TRANSFER;
        let (src_off, dst_off) = (0x3a1u64, 0x123u64);
        let data = fill(&mut src, 0x5eed_0000 | t.sid);
        let dst_before = fill(&mut dst, !t.sid);
        to_edu(t, &clock, src_iova + src_off, EDU_BUF, len)?;
        from_edu(t, &clock, EDU_BUF, dst_iova + dst_off, len)?;
        let got = snapshot(&dst);
        let (so, d0, d1) = (src_off as usize, dst_off as usize, (dst_off + len) as usize);
        if got.get(d0..d1) != data.get(so..so + len as usize) {
            let first = got
                .iter()
                .skip(d0)
                .zip(data.iter().skip(so))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "{}: data read back through IOVA 0x{:x} differs at offset {first}",
                t.dev.bdf,
                dst_iova + dst_off
            ));
        }
        if got.get(..d0) != dst_before.get(..d0) || got.get(d1..) != dst_before.get(d1..) {
            return Err(format!(
                "{}: DMA wrote outside the transfer in the destination",
                t.dev.bdf
            ));
        }
        crate::println!(
            "  edu {} StreamID 0x{:04x} ASID {}: {len} bytes RAM IOVA 0x{:x} (PA 0x{:x}) -> edu -> RAM IOVA 0x{:x} (PA 0x{:x}): data matches",
            t.dev.bdf,
            t.sid,
            asid(i),
            src_iova + src_off,
            src.phys() + src_off,
            dst_iova + dst_off,
            dst.phys() + dst_off
        );
        expect_no_events(&mut rig, &clock, NAME, "translated DMA")?;
    }
    finish(&mut rig, &clock, NAME)
}

// --- smmu-fault-translation ------------------------------------------------

/// DMA to and from an unmapped IOVA gives F_TRANSLATION records with the
/// device's StreamID, the IOVA and the direction; no data moves. The IOVA is
/// the physical address of a sentinel page, so DMA that escaped translation
/// would show up there.
pub fn fault_translation(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-fault-translation";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    let ts = targets(&rig);
    let mut sentinels = sentinel_pages(ctx, ts.len())?;
    let secret = fill(&mut sentinels, 0x5ec0_0000);
    for (i, t) in ts.iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut good = buffer(ctx, PAGE)?;
        let good_iova = iova_base(i);
        map_buffer(&mut rig, dom, good_iova, &good, Prot::READ_WRITE)?;
        let sentinel = sentinels.phys() + i as u64 * PAGE;
        let iova = sentinel + 0x40;
        if rig.smmu.translate(dom, iova).map_err(drv)?.is_some() {
            return Err(format!("IOVA 0x{iova:x} is mapped"));
        }
        fill(&mut good, 0x600d_0000 | t.sid);
        to_edu(t, &clock, good_iova, EDU_BUF, SHORT)?;
        expect_no_events(&mut rig, &clock, NAME, "preloading the edu buffer")?;

        // The device reads the unmapped IOVA.
        to_edu(t, &clock, iova, EDU_BUF, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let reads = expect_faults(&events, Fault::Translation, t.sid, iova, SHORT, true)?;
        // What the device received is not the sentinel's data.
        from_edu(t, &clock, EDU_BUF, good_iova + 0x100, SHORT)?;
        let got = snapshot(&good);
        let s = (iova - sentinels.phys()) as usize;
        if got.get(0x100..0x100 + SHORT as usize) == secret.get(s..s + SHORT as usize) {
            return Err(format!(
                "{}: the faulting read delivered the sentinel's data to the device",
                t.dev.bdf
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "reading back the edu buffer")?;

        // The device writes the unmapped IOVA.
        from_edu(t, &clock, EDU_BUF, iova, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let writes = expect_faults(&events, Fault::Translation, t.sid, iova, SHORT, false)?;
        unchanged(&sentinels, &secret, "the sentinel pages")?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: unmapped IOVA 0x{iova:x}: read -> {reads} F_TRANSLATION (RnW=1), \
             write -> {writes} F_TRANSLATION (RnW=0), StreamID and addresses match; \
             no data reached the device or PA 0x{sentinel:x}",
            t.dev.bdf,
            t.sid,
        );
    }
    finish(&mut rig, &clock, NAME)
}

/// Alignment of the sentinel pages of [`fault_translation`]: they start at
/// the first 256 MiB boundary of free RAM, 0x5000_0000 with QEMU's default
/// command line (512 MiB of RAM at 1 GiB), so the faulting IOVAs, and the
/// records, are the same in every run and the model's `agreement` binary
/// (iommu-models) repeats them. With less RAM any free pages are used.
const SENTINEL_ALIGN: u64 = 1 << 28;

/// `n` sentinel pages, see [`SENTINEL_ALIGN`].
fn sentinel_pages(ctx: &mut Context<'_>, n: usize) -> Result<DmaBuffer, String> {
    let len = n as u64 * PAGE;
    match ctx.frames.alloc_dma_aligned(len as usize, SENTINEL_ALIGN) {
        Ok(b) => Ok(b),
        Err(_) => buffer(ctx, len),
    }
}

// --- smmu-fault-permission -------------------------------------------------

/// A read-only mapping can be read by DMA; a DMA write to it gives
/// F_PERMISSION records (StreamID, IOVA, write) and leaves the page as it was.
pub fn fault_permission(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-fault-permission";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    for (i, t) in targets(&rig).iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut ro = buffer(ctx, PAGE)?;
        let ro_iova = iova_base(i);
        map_buffer(&mut rig, dom, ro_iova, &ro, Prot::READ)?;
        let scratch = buffer(ctx, PAGE)?;
        let rw_iova = iova_base(i) + 0x10_0000;
        map_buffer(&mut rig, dom, rw_iova, &scratch, Prot::READ_WRITE)?;
        let original = fill(&mut ro, 0x0ead_0000 | t.sid);

        // Reading the read-only page works.
        to_edu(t, &clock, ro_iova + 0x200, EDU_BUF, SHORT)?;
        from_edu(t, &clock, EDU_BUF, rw_iova, SHORT)?;
        let got = snapshot(&scratch);
        if got.get(..SHORT as usize) != original.get(0x200..0x200 + SHORT as usize) {
            return Err(format!(
                "{}: DMA read through the read-only mapping returned wrong data",
                t.dev.bdf
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "reading a read-only mapping")?;

        // Writing it faults.
        let target = ro_iova + 0x80;
        from_edu(t, &clock, EDU_BUF, target, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let n = expect_faults(&events, Fault::Permission, t.sid, target, SHORT, false)?;
        unchanged(&ro, &original, "the read-only page")?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: read-only IOVA 0x{ro_iova:x} (PA 0x{:x}) readable; \
             write to 0x{target:x} -> {n} F_PERMISSION (RnW=0), page unchanged",
            t.dev.bdf,
            t.sid,
            ro.phys()
        );
    }
    finish(&mut rig, &clock, NAME)
}

// --- smmu-unmap-invalidates ------------------------------------------------

/// After DMA through a mapping (so the SMMU's TLB holds it), unmap returns
/// only once TLBI + CMD_SYNC completed: DMA to the old IOVA then faults and
/// the old page stays untouched; mapping the IOVA again to another page
/// sends DMA there.
pub fn unmap_invalidates(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-unmap-invalidates";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    for (i, t) in targets(&rig).iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut src = buffer(ctx, PAGE)?;
        let src_iova = iova_base(i);
        map_buffer(&mut rig, dom, src_iova, &src, Prot::READ_WRITE)?;
        let dst = buffer(ctx, PAGE)?;
        let dst_iova = iova_base(i) + 0x10_0000;
        map_buffer(&mut rig, dom, dst_iova, &dst, Prot::READ_WRITE)?;

        // Use the mapping in both directions.
        let first = fill(&mut src, 0x1111_0000 | t.sid);
        to_edu(t, &clock, src_iova, EDU_BUF, SHORT)?;
        from_edu(t, &clock, EDU_BUF, dst_iova + 0x40, SHORT)?;
        to_edu(t, &clock, dst_iova + 0x40, EDU_BUF, SHORT)?;
        let after_first = snapshot(&dst);
        if after_first.get(0x40..0x40 + SHORT as usize) != first.get(..SHORT as usize) {
            return Err(format!(
                "{}: DMA through IOVA 0x{:x} before the unmap did not arrive",
                t.dev.bdf,
                dst_iova + 0x40
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "DMA before the unmap")?;

        let before = rig.smmu.cmdq_stats();
        let removed = rig.smmu.unmap(dom, dst_iova, PAGE).map_err(drv)?;
        let after = rig.smmu.cmdq_stats();
        if removed.bytes != PAGE {
            return Err(format!("unmap removed 0x{:x} bytes", removed.bytes));
        }
        if after.syncs <= before.syncs {
            return Err(String::from("unmap issued no CMD_SYNC"));
        }
        if rig.smmu.translate(dom, dst_iova).map_err(drv)?.is_some() {
            return Err(String::from("the IOVA is still mapped after unmap"));
        }

        // New data for the device, then DMA to the old IOVA.
        fill(&mut src, 0x2222_0000 | t.sid);
        to_edu(t, &clock, src_iova, EDU_BUF, SHORT)?;
        let target = dst_iova + 0x40;
        from_edu(t, &clock, EDU_BUF, target, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let writes = expect_faults(&events, Fault::Translation, t.sid, target, SHORT, false)?;
        unchanged(&dst, &after_first, "the unmapped page")?;
        to_edu(t, &clock, target, EDU_BUF, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let reads = expect_faults(&events, Fault::Translation, t.sid, target, SHORT, true)?;

        // Map the IOVA to another page: DMA goes there, not to the old one.
        let mut other = buffer(ctx, PAGE)?;
        let other_before = fill(&mut other, 0x3333_0000 | t.sid);
        map_buffer(&mut rig, dom, dst_iova, &other, Prot::READ_WRITE)?;
        let second = fill(&mut src, 0x4444_0000 | t.sid);
        to_edu(t, &clock, src_iova, EDU_BUF, SHORT)?;
        from_edu(t, &clock, EDU_BUF, target, SHORT)?;
        let got = snapshot(&other);
        if got.get(0x40..0x40 + SHORT as usize) != second.get(..SHORT as usize)
            || got.get(..0x40) != other_before.get(..0x40)
        {
            return Err(format!(
                "{}: DMA after remapping IOVA 0x{target:x} did not reach the new page",
                t.dev.bdf
            ));
        }
        unchanged(&dst, &after_first, "the old page")?;
        expect_no_events(&mut rig, &clock, NAME, "DMA after remapping")?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: IOVA 0x{dst_iova:x} (PA 0x{:x}) used, then unmapped with {} command(s) \
             ({} CMD_SYNC); DMA to it -> {writes} + {reads} F_TRANSLATION, old page unchanged; \
             remapped to PA 0x{:x}: DMA arrives there",
            t.dev.bdf,
            t.sid,
            dst.phys(),
            after.commands - before.commands,
            after.syncs - before.syncs,
            other.phys()
        );
        unmap_range(NAME, &mut rig, ctx, &clock, t, i, dom, &mut src)?;
    }
    finish(&mut rig, &clock, NAME)
}

/// Pages of the range unmapped at once: not a power of two, and the only
/// pages of their level-3 table, so the unmap also frees that table.
const RANGE_PAGES: u64 = 5;

/// Every page of a multi-page range is used by DMA, then the range is
/// unmapped with one call: DMA to each page (first and last included)
/// faults and the memory stays unchanged.
#[allow(clippy::too_many_arguments)] // one scenario step; the arguments are its context
fn unmap_range(
    scenario: &str,
    rig: &mut Rig,
    ctx: &mut Context<'_>,
    clock: &Clock,
    t: &Target,
    i: usize,
    dom: DomainId,
    src: &mut DmaBuffer,
) -> Verdict {
    let src_iova = iova_base(i);
    let range_iova = iova_base(i) + 0x40_0000;
    let size = RANGE_PAGES * PAGE;
    let range = buffer(ctx, size)?;
    map_buffer(rig, dom, range_iova, &range, Prot::READ_WRITE)?;
    let data = fill(src, 0x5555_0000 | t.sid);
    let len = edu::MAX_TRANSFER;
    to_edu(t, clock, src_iova, EDU_BUF, len)?;
    // Each write covers the end of one page and the start of the next.
    let mut off = 0x800u64;
    while off < size {
        let n = len.min(size - off);
        from_edu(t, clock, EDU_BUF, range_iova + off, n)?;
        off += 2 * PAGE;
    }
    let before = snapshot(&range);
    let mut off = 0x800u64;
    while off < size {
        let n = len.min(size - off) as usize;
        let o = off as usize;
        if before.get(o..o + n) != data.get(..n) {
            return Err(format!(
                "{}: DMA to IOVA 0x{:x} before the unmap did not arrive",
                t.dev.bdf,
                range_iova + off
            ));
        }
        off += 2 * PAGE;
    }
    expect_no_events(rig, clock, scenario, "DMA to the range")?;

    let stats = rig.smmu.cmdq_stats();
    let removed = rig.smmu.unmap(dom, range_iova, size).map_err(drv)?;
    let after = rig.smmu.cmdq_stats();
    if removed.bytes != size {
        return Err(format!(
            "unmap of 0x{size:x} bytes removed 0x{:x}",
            removed.bytes
        ));
    }
    for k in 0..RANGE_PAGES {
        let target = range_iova + k * PAGE + 0x100;
        from_edu(t, clock, EDU_BUF, target, 4)?;
        let events = collect(rig, clock, scenario);
        let n = expect_faults(&events, Fault::Translation, t.sid, target, 4, false)?;
        if n != 1 {
            return Err(format!(
                "a 4-byte DMA to IOVA 0x{target:x} gave {n} records"
            ));
        }
    }
    unchanged(&range, &before, "the unmapped range")?;
    crate::println!(
        "    {RANGE_PAGES} pages at IOVA 0x{range_iova:x} (PA 0x{:x}) used, unmapped with one call \
         ({} leaf entries, {} table(s) freed, {} command(s), {} CMD_SYNC): DMA to each page faults, memory unchanged",
        range.phys(),
        removed.leaves,
        removed.tables_freed,
        after.commands - stats.commands,
        after.syncs - stats.syncs
    );
    Ok(())
}

// --- STE configurations ----------------------------------------------------

/// Config = abort: DMA is dropped without an event, in both directions.
pub fn abort_ste(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-abort-ste";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    for (i, t) in targets(&rig).iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut scratch = buffer(ctx, PAGE)?;
        let iova = iova_base(i);
        map_buffer(&mut rig, dom, iova, &scratch, Prot::READ_WRITE)?;
        let mut sentinel = buffer(ctx, PAGE)?;
        let secret = fill(&mut sentinel, 0xab07_0000 | t.sid);
        fill(&mut scratch, 0x1234_0000 | t.sid);
        to_edu(t, &clock, iova, EDU_BUF, SHORT)?;

        rig.smmu.set_abort(t.sid).map_err(drv)?;
        // Bus addresses are the sentinel's PA: bypass would reach it.
        from_edu(t, &clock, EDU_BUF, sentinel.phys(), SHORT)?;
        expect_no_events(&mut rig, &clock, NAME, "write with an abort STE")?;
        unchanged(&sentinel, &secret, "the sentinel page")?;
        to_edu(t, &clock, sentinel.phys(), EDU_BUF, SHORT)?;
        expect_no_events(&mut rig, &clock, NAME, "read with an abort STE")?;

        // Translate again and look at what the device holds.
        rig.smmu.attach(t.sid, dom).map_err(drv)?;
        from_edu(t, &clock, EDU_BUF, iova + 0x200, SHORT)?;
        let got = snapshot(&scratch);
        if got.get(0x200..0x200 + SHORT as usize) == secret.get(..SHORT as usize) {
            return Err(format!(
                "{}: the aborted read delivered the sentinel's data to the device",
                t.dev.bdf
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "after re-attaching")?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: abort STE: write to and read from PA 0x{:x} dropped, no event, memory unchanged",
            t.dev.bdf,
            t.sid,
            sentinel.phys()
        );
    }
    finish(&mut rig, &clock, NAME)
}

/// Config = bypass: DMA uses physical addresses (IOVA == PA).
pub fn bypass_ste(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-bypass-ste";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    for t in &targets(&rig) {
        rig.smmu.set_bypass(t.sid).map_err(drv)?;
        let mut src = buffer(ctx, PAGE)?;
        let mut dst = buffer(ctx, PAGE)?;
        let data = fill(&mut src, 0xb1a5_0000 | t.sid);
        let before = fill(&mut dst, !t.sid);
        let len = 0x800u64;
        to_edu(t, &clock, src.phys() + 0x10, EDU_BUF + 0x10, len)?;
        from_edu(t, &clock, EDU_BUF + 0x10, dst.phys() + 0x20, len)?;
        let got = snapshot(&dst);
        let n = len as usize;
        if got.get(0x20..0x20 + n) != data.get(0x10..0x10 + n)
            || got.get(..0x20) != before.get(..0x20)
            || got.get(0x20 + n..) != before.get(0x20 + n..)
        {
            return Err(format!(
                "{}: DMA with a bypass STE did not copy the data",
                t.dev.bdf
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "bypass DMA")?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: bypass STE: {len} bytes PA 0x{:x} -> edu -> PA 0x{:x}: data matches",
            t.dev.bdf,
            t.sid,
            src.phys() + 0x10,
            dst.phys() + 0x20
        );
    }
    finish(&mut rig, &clock, NAME)
}

/// V = 0: DMA gives C_BAD_STE records with the StreamID and does not reach
/// memory.
pub fn invalid_ste(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-invalid-ste";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    for t in &targets(&rig) {
        rig.smmu
            .set_stream(t.sid, &StreamConfig::Invalid)
            .map_err(drv)?;
        let mut sentinel = buffer(ctx, PAGE)?;
        let secret = fill(&mut sentinel, 0xbad5_0000 | t.sid);
        let mut counts = [0usize; 2];
        for (k, read) in [false, true].into_iter().enumerate() {
            if read {
                to_edu(t, &clock, sentinel.phys(), EDU_BUF, SHORT)?;
            } else {
                from_edu(t, &clock, EDU_BUF, sentinel.phys(), SHORT)?;
            }
            let events = collect(&mut rig, &clock, NAME);
            if events.is_empty() {
                return Err(format!(
                    "{}: no C_BAD_STE event for a {} with V = 0",
                    t.dev.bdf,
                    direction(read)
                ));
            }
            for e in &events {
                match e {
                    Event::BadSte(s) if s.sid == t.sid => {}
                    other => {
                        return Err(format!(
                            "{}: expected C_BAD_STE for StreamID 0x{:x}, got {other:?}",
                            t.dev.bdf, t.sid
                        ))
                    }
                }
            }
            counts[k] = events.len();
        }
        unchanged(&sentinel, &secret, "the sentinel page")?;
        rig.smmu.set_abort(t.sid).map_err(drv)?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: invalid STE: write -> {} C_BAD_STE, read -> {} C_BAD_STE, memory unchanged",
            t.dev.bdf,
            t.sid,
            counts[0],
            counts[1]
        );
    }
    finish(&mut rig, &clock, NAME)
}

// --- smmu-isolation --------------------------------------------------------

/// Each device in its own domain: a device cannot reach another's mapping
/// (its DMA faults with its own StreamID and the other's memory stays as it
/// was), the same IOVA in two domains reaches two different pages, and every
/// device keeps working through its own mappings.
pub fn isolation(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-isolation";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    let ts = targets(&rig);
    if ts.len() < 2 {
        return Err(format!(
            "{} edu device(s) with a StreamID: isolation needs at least 2 \
             (add -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2 -device edu,bus=rp2,dma_mask=0xffffffffffffffff)",
            ts.len()
        ));
    }
    // Outside every device's own IOVA range.
    const SHARED_IOVA: u64 = 0x7f_0000_0000;
    let mut own = Vec::new();
    let mut shared = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let buf = buffer(ctx, PAGE)?;
        map_buffer(&mut rig, dom, iova_base(i), &buf, Prot::READ_WRITE)?;
        let page = buffer(ctx, PAGE)?;
        map_buffer(&mut rig, dom, SHARED_IOVA, &page, Prot::READ_WRITE)?;
        own.push(buf);
        shared.push(page);
    }
    let round_trip = |own: &mut [DmaBuffer], i: usize, t: &Target, seed: u32| -> Verdict {
        let buf = own.get_mut(i).ok_or("no buffer")?;
        let data = fill(buf, seed);
        to_edu(t, &clock, iova_base(i), EDU_BUF, SHORT)?;
        from_edu(t, &clock, EDU_BUF, iova_base(i) + 0x100, SHORT)?;
        let got = snapshot(buf);
        if got.get(0x100..0x100 + SHORT as usize) != data.get(..SHORT as usize) {
            return Err(format!(
                "{}: DMA through its own mapping IOVA 0x{:x} failed",
                t.dev.bdf,
                iova_base(i)
            ));
        }
        Ok(())
    };
    for (i, t) in ts.iter().enumerate() {
        round_trip(&mut own, i, t, 0x0a0a_0000 | t.sid)?;
    }
    expect_no_events(&mut rig, &clock, NAME, "own mappings")?;

    // Device a reaches for device b's IOVA.
    for a in 0..ts.len() {
        let b = (a + 1) % ts.len();
        let (ta, tb) = (&ts[a], &ts[b]);
        let b_before = snapshot(&own[b]);
        let target = iova_base(b) + 0x200;
        from_edu(ta, &clock, EDU_BUF, target, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let writes = expect_faults(&events, Fault::Translation, ta.sid, target, SHORT, false)?;
        unchanged(&own[b], &b_before, "the other device's page")?;
        to_edu(ta, &clock, iova_base(b), EDU_BUF, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let reads = expect_faults(
            &events,
            Fault::Translation,
            ta.sid,
            iova_base(b),
            SHORT,
            true,
        )?;
        // What device a now holds is not device b's data.
        from_edu(ta, &clock, EDU_BUF, iova_base(a) + 0x300, SHORT)?;
        let got = snapshot(&own[a]);
        if got.get(0x300..0x300 + SHORT as usize) == b_before.get(..SHORT as usize) {
            return Err(format!(
                "{} read {}'s data through IOVA 0x{:x}",
                ta.dev.bdf,
                tb.dev.bdf,
                iova_base(b)
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "reading back")?;
        crate::println!(
            "  edu {} (StreamID 0x{:04x}, ASID {}) -> IOVA 0x{:x} of edu {} (ASID {}): write -> {writes}, read -> {reads} \
             F_TRANSLATION with StreamID 0x{:04x}; PA 0x{:x} unchanged",
            ta.dev.bdf,
            ta.sid,
            asid(a),
            iova_base(b),
            tb.dev.bdf,
            asid(b),
            ta.sid,
            own[b].phys()
        );
    }

    // The same IOVA in every domain reaches each domain's own page (the
    // SMMU's TLB entries are tagged with the ASID).
    let mut sent = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        let data = fill(&mut own[i], 0x5a5a_0000 | t.sid);
        shared[i].sync_for_device();
        to_edu(t, &clock, iova_base(i), EDU_BUF, SHORT)?;
        from_edu(t, &clock, EDU_BUF, SHARED_IOVA + 0x40, SHORT)?;
        sent.push(data);
    }
    for (i, t) in ts.iter().enumerate() {
        let got = snapshot(&shared[i]);
        if got.get(0x40..0x40 + SHORT as usize) != sent[i].get(..SHORT as usize) {
            return Err(format!(
                "{}: DMA to IOVA 0x{SHARED_IOVA:x} did not reach its own page PA 0x{:x}",
                t.dev.bdf,
                shared[i].phys()
            ));
        }
    }
    crate::println!(
        "  IOVA 0x{SHARED_IOVA:x} mapped in {} domains to different pages: each device's DMA reached its own page",
        ts.len()
    );
    expect_no_events(&mut rig, &clock, NAME, "shared IOVA")?;

    for (i, t) in ts.iter().enumerate() {
        round_trip(&mut own, i, t, 0x0b0b_0000 | t.sid)?;
    }
    crate::println!(
        "  all {} devices still work through their own mappings",
        ts.len()
    );
    finish(&mut rig, &clock, NAME)
}

// --- smmu-event-flood ------------------------------------------------------

/// log2 of the event queue in the flood scenario: 8 records.
const FLOOD_EVTQ_LOG2: u8 = 3;
/// Faulting 64-byte DMAs in the flood (16 records each).
const FLOOD_DMAS: u64 = 4;

/// With an 8-record event queue, faulting DMAs produce far more records than
/// fit: the driver drains the queue, reports the loss, acknowledges it, and
/// both event recording and translated DMA work afterwards. Every device in
/// turn floods the queue.
pub fn event_flood(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-event-flood";
    let clock = ctx.clock;
    let mut rig = Rig::start(
        ctx,
        RigConfig {
            evtq_log2: FLOOD_EVTQ_LOG2,
            ..RigConfig::default()
        },
    )?;
    let entries = 1usize << FLOOD_EVTQ_LOG2;
    for (i, t) in targets(&rig).iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut buf = buffer(ctx, PAGE)?;
        let iova = iova_base(i);
        map_buffer(&mut rig, dom, iova, &buf, Prot::READ_WRITE)?;
        let hole = iova + 0x20_0000;

        for k in 0..FLOOD_DMAS {
            from_edu(t, &clock, EDU_BUF, hole + k * SHORT, SHORT)?;
        }
        let faults = FLOOD_DMAS * SHORT / 4;
        clock.delay_us(SETTLE_US);
        let (events, report) = drain(&mut rig, NAME);
        let lost = faults.saturating_sub(events.len() as u64);
        crate::println!(
            "  edu {} StreamID 0x{:04x}: {FLOOD_DMAS} faulting DMAs of {SHORT} bytes = {faults} faulting accesses; \
             event queue of {entries} records: drained {}, {lost} lost",
            t.dev.bdf,
            t.sid,
            report.events
        );
        crate::println!(
            "    drain report: overflowed (PROD.OVFLG) = {}, queue found full = {}, \
             event queue write abort (GERROR.EVENTQ_ABT_ERR) = {}",
            report.overflowed,
            report.full,
            report.write_aborted
        );
        if events.len() != entries {
            return Err(format!(
                "drained {} records from a full {entries}-record queue",
                events.len()
            ));
        }
        expect_faults(
            &events,
            Fault::Translation,
            t.sid,
            hole,
            FLOOD_DMAS * SHORT,
            false,
        )?;
        if !report.full || !report.lost_records() {
            return Err(format!(
                "records were lost but the driver reported full = {}, overflow = {}, write abort = {}",
                report.full, report.overflowed, report.write_aborted
            ));
        }
        rig.check_global_errors()?;
        let (events, report) = drain(&mut rig, NAME);
        if !events.is_empty() || report.lost_records() || report.full {
            return Err(format!(
                "second drain: {} record(s), lost = {}, full = {}",
                events.len(),
                report.lost_records(),
                report.full
            ));
        }

        // Recording works again: one 4-byte access, one record.
        from_edu(t, &clock, EDU_BUF, hole, 4)?;
        let events = collect(&mut rig, &clock, NAME);
        let n = expect_faults(&events, Fault::Translation, t.sid, hole, 4, false)?;
        if n != 1 {
            return Err(format!("a 4-byte faulting DMA gave {n} records"));
        }
        let (_, report) = drain(&mut rig, NAME);
        if report.lost_records() {
            return Err(String::from("loss reported again after recovery"));
        }

        // Translated DMA still works.
        let data = fill(&mut buf, 0xf100_d000 | t.sid);
        to_edu(t, &clock, iova, EDU_BUF, SHORT)?;
        from_edu(t, &clock, EDU_BUF, iova + 0x800, SHORT)?;
        let got = snapshot(&buf);
        if got.get(0x800..0x800 + SHORT as usize) != data.get(..SHORT as usize) {
            return Err(String::from("translated DMA failed after the flood"));
        }
        crate::println!(
            "    after draining: a new fault gives 1 record, no further loss, \
             translated DMA through IOVA 0x{iova:x} works"
        );
    }
    finish(&mut rig, &clock, NAME)
}

// --- smmu-default-config ---------------------------------------------------

/// IOVAs of the default-configuration scenario: above 39 bits, so that the
/// walk starts at level 0; 1 GiB apart per device.
const HIGH_IOVA_BASE: u64 = 0x7f80_0000_0000;
/// A level-2 block.
const BLOCK_2M: u64 = 1 << 21;

/// The driver's default configuration, which the other scenarios avoid: a
/// two-level stream table for 16-bit StreamIDs (level-2 tables installed as
/// streams are configured), 48-bit IOVAs (4-level tables), and 2 MiB block
/// mappings, including unmapping one page of a block (which splits it).
pub fn default_config(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-default-config";
    let clock = ctx.clock;
    let mut rig = Rig::start(
        ctx,
        RigConfig {
            auto_strtab_bits: Some(16),
            va_bits: 48,
            ..RigConfig::default()
        },
    )?;
    if (rig.strtab_cfg >> 16) & 3 != 1 {
        return Err(format!(
            "the driver chose STRTAB_BASE_CFG 0x{:x}, expected a two-level table",
            rig.strtab_cfg
        ));
    }
    for (i, t) in targets(&rig).iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut block = ctx
            .frames
            .alloc_dma_aligned(BLOCK_2M as usize, BLOCK_2M)
            .map_err(|e| format!("{e}"))?;
        let iova = HIGH_IOVA_BASE + i as u64 * (1 << 30);
        rig.smmu
            .map(dom, iova, block.phys(), BLOCK_2M, Prot::READ_WRITE)
            .map_err(drv)?;
        // The block is too large to copy: compare windows of it.
        fill_in_place(&mut block, 0xb10c_0000 | t.sid);

        // Across the block: from its last pages to its first half.
        let len = edu::MAX_TRANSFER;
        let (src, dst) = (BLOCK_2M - 0x1800, 0x10_0123u64);
        let data = window(&block, src, len);
        to_edu(t, &clock, iova + src, EDU_BUF, len)?;
        from_edu(t, &clock, EDU_BUF, iova + dst, len)?;
        if window(&block, dst, len) != data {
            return Err(format!(
                "{}: DMA through the 2 MiB block at IOVA 0x{iova:x} copied wrong data",
                t.dev.bdf
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "DMA through a block")?;

        // Unmap one page inside the block: the rest stays mapped.
        let page_off = 0x8_0000u64;
        let page = iova + page_off;
        let pages_before = window(&block, page_off, 2 * PAGE);
        let removed = rig.smmu.unmap(dom, page, PAGE).map_err(drv)?;
        if removed.bytes != PAGE || removed.blocks_split != 1 {
            return Err(format!(
                "unmapping a page of a block: {removed:?}, expected one page and one split"
            ));
        }
        from_edu(t, &clock, EDU_BUF, page + 0x10, SHORT)?;
        let events = collect(&mut rig, &clock, NAME);
        let faults = expect_faults(
            &events,
            Fault::Translation,
            t.sid,
            page + 0x10,
            SHORT,
            false,
        )?;
        if window(&block, page_off, 2 * PAGE) != pages_before {
            return Err(format!(
                "{}: DMA to the unmapped page 0x{page:x} changed the block",
                t.dev.bdf
            ));
        }
        // The next page is still mapped by the split block.
        from_edu(t, &clock, EDU_BUF, page + PAGE, SHORT)?;
        let mut expected = pages_before;
        let n = SHORT as usize;
        if let (Some(e), Some(d)) = (
            expected.get_mut(PAGE as usize..PAGE as usize + n),
            data.get(..n),
        ) {
            e.copy_from_slice(d);
        }
        if window(&block, page_off, 2 * PAGE) != expected {
            return Err(format!(
                "{}: DMA to IOVA 0x{:x} next to the unmapped page did not arrive (or wrote elsewhere)",
                t.dev.bdf,
                page + PAGE
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "DMA next to the unmapped page")?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: 2 MiB block IOVA 0x{iova:x} -> PA 0x{:x}: {len} bytes copied within it; \
             page 0x{page:x} unmapped (block split): {faults} F_TRANSLATION, neighbour page still mapped",
            t.dev.bdf,
            t.sid,
            block.phys()
        );
    }
    finish(&mut rig, &clock, NAME)
}

// --- smmu-domain-lifecycle -------------------------------------------------

/// Map/unmap rounds in the lifecycle scenario: each unmap issues a TLBI and
/// a CMD_SYNC, so the 256-entry command queue wraps several times.
const WRAP_ROUNDS: u64 = 300;

/// Moving a stream between domains, destroying domains and reusing an
/// ASID, and a command queue that wraps:
/// - the same IOVA maps to page 1 in domain A and page 2 in domain B; after
///   the device moves from A to B its DMA reaches page 2 only;
/// - a domain with an attached stream cannot be destroyed;
/// - after A is destroyed, a new domain with A's ASID maps the IOVA to
///   page 3: DMA reaches page 3, not A's page 1 (A's TLB entries were
///   invalidated);
/// - after hundreds of map/unmap rounds (the command queue wraps), DMA
///   still works.
pub fn domain_lifecycle(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-domain-lifecycle";
    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    let ring_entries = 256u64;
    for (i, t) in targets(&rig).iter().enumerate() {
        let base = iova_base(i);
        let (iova, src_iova, spare_iova) = (base, base + 0x10_0000, base + 0x20_0000);
        let asid_a = 0x100 + 2 * i as u16;
        let asid_b = asid_a + 1;
        let a = rig.smmu.create_domain(asid_a).map_err(drv)?;
        let b = rig.smmu.create_domain(asid_b).map_err(drv)?;
        let mut src = buffer(ctx, PAGE)?;
        let mut pages = Vec::new();
        for k in 0..3u32 {
            let mut p = buffer(ctx, PAGE)?;
            fill_in_place(&mut p, 0x9a9e_0000 | (k << 12) | t.sid);
            pages.push(p);
        }
        for (dom, page) in [(a, 0usize), (b, 1)] {
            map_buffer(&mut rig, dom, src_iova, &src, Prot::READ)?;
            map_buffer(&mut rig, dom, iova, &pages[page], Prot::READ_WRITE)?;
        }
        let write = |src: &mut DmaBuffer, seed: u32| -> Result<Vec<u8>, String> {
            let data = fill(src, seed);
            to_edu(t, &clock, src_iova, EDU_BUF, SHORT)?;
            from_edu(t, &clock, EDU_BUF, iova + 0x40, SHORT)?;
            Ok(data)
        };
        let arrived = |page: &DmaBuffer, data: &[u8]| {
            window(page, 0x40, SHORT).as_slice() == data.get(..SHORT as usize).unwrap_or(&[])
        };

        // In domain A.
        rig.smmu.attach(t.sid, a).map_err(drv)?;
        let page2_before = snapshot(&pages[1]);
        let data = write(&mut src, 0xaaaa_0000 | t.sid)?;
        if !arrived(&pages[0], &data) {
            return Err(format!("{}: DMA in domain A missed page 1", t.dev.bdf));
        }
        unchanged(&pages[1], &page2_before, "page 2 (domain B)")?;

        // Move to domain B.
        let rounds = rig.smmu.attach(t.sid, b).map_err(drv)?;
        let page1_before = snapshot(&pages[0]);
        let data = write(&mut src, 0xbbbb_0000 | t.sid)?;
        if !arrived(&pages[1], &data) {
            return Err(format!(
                "{}: after moving to domain B, DMA missed page 2",
                t.dev.bdf
            ));
        }
        unchanged(&pages[0], &page1_before, "page 1 (domain A)")?;
        expect_no_events(&mut rig, &clock, NAME, "moving between domains")?;

        // B has a stream attached; A has none.
        if rig.smmu.destroy_domain(b).is_ok() {
            return Err(String::from(
                "destroying a domain with an attached stream succeeded",
            ));
        }
        rig.smmu.destroy_domain(a).map_err(drv)?;

        // A's ASID again, now mapping the IOVA to page 3.
        let c = rig.smmu.create_domain(asid_a).map_err(drv)?;
        map_buffer(&mut rig, c, src_iova, &src, Prot::READ)?;
        map_buffer(&mut rig, c, iova, &pages[2], Prot::READ_WRITE)?;
        rig.smmu.attach(t.sid, c).map_err(drv)?;
        rig.smmu.destroy_domain(b).map_err(drv)?;
        let page1_before = snapshot(&pages[0]);
        let data = write(&mut src, 0xcccc_0000 | t.sid)?;
        if !arrived(&pages[2], &data) {
            return Err(format!(
                "{}: DMA in the new domain with ASID {asid_a} missed page 3",
                t.dev.bdf
            ));
        }
        unchanged(
            &pages[0],
            &page1_before,
            "page 1 (destroyed domain, same ASID)",
        )?;

        // Wrap the command queue.
        let before = rig.smmu.cmdq_stats();
        let spare = buffer(ctx, PAGE)?;
        for _ in 0..WRAP_ROUNDS {
            rig.smmu
                .map(c, spare_iova, spare.phys(), PAGE, Prot::READ_WRITE)
                .map_err(drv)?;
            rig.smmu.unmap(c, spare_iova, PAGE).map_err(drv)?;
        }
        let after = rig.smmu.cmdq_stats();
        let issued = after.commands - before.commands;
        if issued < 2 * ring_entries {
            return Err(format!(
                "{issued} commands did not wrap the {ring_entries}-entry queue twice"
            ));
        }
        let data = write(&mut src, 0xdddd_0000 | t.sid)?;
        if !arrived(&pages[2], &data) {
            return Err(format!(
                "{}: DMA failed after the command queue wrapped",
                t.dev.bdf
            ));
        }
        expect_no_events(&mut rig, &clock, NAME, "domain lifecycle")?;
        rig.smmu.set_abort(t.sid).map_err(drv)?;
        rig.smmu.destroy_domain(c).map_err(drv)?;
        crate::println!(
            "  edu {} StreamID 0x{:04x}: IOVA 0x{iova:x} in domain A (ASID {asid_a}) -> PA 0x{:x}, \
             moved to B (ASID {asid_b}, {rounds} sync round(s)) -> PA 0x{:x}; A destroyed, ASID {asid_a} \
             reused -> PA 0x{:x}: each DMA reached only its page; {WRAP_ROUNDS} map/unmap rounds = \
             {issued} commands ({} CMD_SYNC) through a {ring_entries}-entry queue, DMA still works",
            t.dev.bdf,
            t.sid,
            pages[0].phys(),
            pages[1].phys(),
            pages[2].phys(),
            after.syncs - before.syncs
        );
    }
    finish(&mut rig, &clock, NAME)
}

// --- smmu-command-error ----------------------------------------------------

/// An opcode the architecture does not define: the SMMU stops the command
/// queue on it with CERROR_ILL.
const ILLEGAL_OPCODE: u64 = 0x7f;

/// A command the SMMU rejects stops the command queue (GERROR.CMDQ_ERR,
/// CMDQ_CONS.ERR = CERROR_ILL). The driver's next CMD_SYNC reports the error
/// with the queue index, replaces the command by a CMD_SYNC, acknowledges the
/// error, and the queue runs again: the sync completes and translated DMA
/// works afterwards. The illegal command is written into the slot the driver
/// fills next, as a faulty producer would.
pub fn command_error(ctx: &mut Context<'_>) -> Verdict {
    const NAME: &str = "smmu-command-error";
    use smmuv3::cmd::Command;
    use smmuv3::error::CommandErrorCode;
    use smmuv3::regs::{self as r, RegisterIo};

    let clock = ctx.clock;
    let mut rig = Rig::start(ctx, RigConfig::default())?;
    let regs = rig.smmu.regs_mut();
    let base = regs.read64(r::CMDQ_BASE);
    let log2 = (base & r::Q_BASE_LOG2SIZE) as u32;
    let ring = base & r::Q_BASE_ADDR;
    let prod = regs.read32(r::CMDQ_PROD);
    let mask = (1u32 << log2) - 1;
    let slot = prod & mask;
    let entry = (ring + u64::from(slot) * 16) as usize as *mut u64;
    // SAFETY: `entry` is the 16-byte command queue slot at the published
    // PROD index: the SMMU consumed every command before it and the driver
    // has not written there yet. The ring is identity-mapped RAM from the
    // rig's pool, live while the rig exists.
    unsafe {
        entry.write_volatile(ILLEGAL_OPCODE);
        entry.add(1).write_volatile(0);
    }
    crate::mmio::dsb_sy();
    let next = (prod & !(mask | (mask + 1))) | ((prod + 1) & (mask | (mask + 1)));
    regs.write32(r::CMDQ_PROD, next);
    let cons = regs.read32(r::CMDQ_CONS);
    let gerror = regs.read32(r::GERROR) ^ regs.read32(r::GERRORN);
    if gerror & r::GERROR_CMDQ_ERR == 0 || (cons & r::CMDQ_CONS_ERR) >> 24 != 1 {
        return Err(format!(
            "after an illegal command: GERROR ^ GERRORN = 0x{gerror:x}, CMDQ_CONS = 0x{cons:x}"
        ));
    }
    crate::println!(
        "  illegal opcode 0x{ILLEGAL_OPCODE:x} at queue index {slot}: GERROR.CMDQ_ERR set, CMDQ_CONS 0x{cons:08x} (CERROR_ILL)"
    );

    let result = rig.smmu.command_sync(&[Command::CfgiAll]);
    match result {
        Err(smmuv3::Error::Command {
            code: CommandErrorCode::Illegal,
            index,
            ..
        }) if index & mask == slot => {}
        other => {
            return Err(format!(
                "command_sync after the illegal command returned {other:?}, expected a CERROR_ILL \
                 error at index {slot}"
            ))
        }
    }
    let stats = rig.smmu.cmdq_stats();
    if stats.errors != 1 {
        return Err(format!(
            "{} command errors counted, expected 1",
            stats.errors
        ));
    }
    rig.check_global_errors()?;
    rig.smmu
        .command_sync(&[Command::CfgiAll])
        .map_err(|e| format!("the command queue did not recover: {e}"))?;
    crate::println!(
        "  driver reported CERROR_ILL at index {slot}, recovered; later commands complete"
    );

    for (i, t) in targets(&rig).iter().enumerate() {
        let dom = domain_for(&mut rig, i, t.sid)?;
        let mut buf = buffer(ctx, PAGE)?;
        let iova = iova_base(i);
        map_buffer(&mut rig, dom, iova, &buf, Prot::READ_WRITE)?;
        let data = fill(&mut buf, 0xc0de_0000 | t.sid);
        to_edu(t, &clock, iova, EDU_BUF, SHORT)?;
        from_edu(t, &clock, EDU_BUF, iova + 0x400, SHORT)?;
        if window(&buf, 0x400, SHORT).as_slice() != data.get(..SHORT as usize).unwrap_or(&[]) {
            return Err(format!(
                "{}: translated DMA failed after the command error",
                t.dev.bdf
            ));
        }
    }
    crate::println!("  translated DMA works on every device after the recovery");
    finish(&mut rig, &clock, NAME)
}
