//! The VT-d scenarios, run against the remapping unit and edu devices init granted.
//!
//! Every device gets its own domain with two working pages at [`IOVA_OUT`] and
//! [`IOVA_IN`]; edu transfers are [`XFER`] bytes between its buffer and an IOVA. The
//! fault scenarios print each record the hardware produced as
//! `RECORD <iommu> <scenario> <record>` (`vtd::fault::FaultRecord`'s canonical form),
//! which `cargo xtask test` compares with the simulation's VT-d model running the same
//! steps; their names, IOVAs and directions are shared with that model's scenario list.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use edu::{Direction, Edu, BUFFER_ADDR};
use iommu_hwio::mmio::{Mmio, RegisterIo};
use iommu_hwio::poll::{Deadline, Tsc};
use sel4_rt::start::{device_kind, StartInfo};
use sel4_rt::sys::{cap_type, nb_recv, Cap};
use sel4_rt::{say, Bdf as Name, Tally};
use vtd::dmar::{Bdf, Dmar, PciConfig};
use vtd::fault::{AccessType, FaultReason, FaultRecord};
use vtd::{DomainId, InvalidationChoice, Mode, ModeChoice, Prot, Vtd, VtdConfig};

use crate::pool::{Buffer, Pool};

/// Bytes per edu transfer.
const XFER: u64 = 64;
/// Each device's page the device writes (edu → RAM).
const IOVA_OUT: u64 = 0x0800_0000;
/// Each device's page the device reads (RAM → edu).
const IOVA_IN: u64 = 0x0800_1000;
/// Never mapped.
const IOVA_UNMAPPED: u64 = 0x0a00_0000;
/// Mapped read-only.
const IOVA_READ_ONLY: u64 = 0x0b00_0000;
/// Mapped, used, unmapped.
const IOVA_UNMAP: u64 = 0x0c00_0000;
/// Mapped in the first device's domain only.
const IOVA_PRIVATE: u64 = 0x0d00_0000;
/// Base of the fault flood's addresses.
const IOVA_FLOOD: u64 = 0x0e00_0000;
/// A page mapped in the first device's domain for the domain switch.
const IOVA_SWITCH: u64 = 0x0f00_0000;
/// Transfers in the fault flood.
const FLOOD: u64 = 32;

/// Microseconds a hardware wait may take (edu transfers complete on a 100 ms timer).
const WAIT_US: u64 = 2_000_000;

type Driver = Vtd<Mmio, Pool, Deadline<Tsc>>;

/// A scenario: its checks on the rig, or why it failed.
type Scenario = fn(&mut Rig<'_>) -> Result<(), String>;

/// An edu device and its domain.
struct Device {
    bdf: u16,
    edu: Edu<Mmio>,
    domain: DomainId,
    /// Behind IOVA_OUT.
    out: Buffer,
    /// Behind IOVA_IN.
    input: Buffer,
}

/// The DMAR table's device-scope paths resolved with the bridges init described.
struct Bridges<'a>(&'a StartInfo);

impl PciConfig for Bridges<'_> {
    fn read8(&mut self, _segment: u16, bdf: Bdf, offset: u16) -> u8 {
        let id = (u16::from(bdf.bus) << 8) | (u16::from(bdf.device) << 3) | u16::from(bdf.function);
        match self.0.bridges().iter().find(|b| b.bdf == id) {
            Some(b) if offset == vtd::dmar::PCI_SECONDARY_BUS => b.secondary,
            Some(b) if offset == vtd::dmar::PCI_SECONDARY_BUS + 1 => b.subordinate,
            _ => 0xff,
        }
    }
}

fn bdf_of(id: u16) -> Bdf {
    Bdf::new((id >> 8) as u8, ((id >> 3) & 0x1f) as u8, (id & 7) as u8).expect("in range")
}

struct Rig<'a> {
    info: &'a StartInfo,
    tsc: Tsc,
    pool: Pool,
    vtd: Driver,
    /// `vtd-legacy` or `vtd-scalable` (the RECORD lines' IOMMU name); empty: no RECORD
    /// lines.
    tag: &'static str,
    devices: Vec<Device>,
}

impl Rig<'_> {
    fn deadline(&self) -> Deadline<Tsc> {
        Deadline::new(self.tsc, WAIT_US * 1000)
    }

    /// Runs a transfer of device `d` and waits for it (a blocked transfer completes too,
    /// moving no data).
    fn dma(&mut self, d: usize, dir: Direction, iova: u64) -> Result<(), String> {
        let mut t = self.deadline();
        self.devices[d]
            .edu
            .transfer(dir, iova, BUFFER_ADDR, XFER, &mut t)
            .map_err(|e| format!("edu {}: {e}", Name(self.devices[d].bdf)))
    }

    /// Drains the fault records, printing each as a RECORD line of `scenario`.
    fn drain(&mut self, scenario: &str) -> (Vec<FaultRecord>, bool) {
        let mut records = Vec::new();
        let report = self.vtd.drain_faults(|r| records.push(r));
        if !self.tag.is_empty() {
            for r in &records {
                say!("RECORD {} {scenario} {r}", self.tag);
            }
        }
        (records, report.overflowed)
    }

    /// Exactly one record, from device `d`, at `iova`'s page, for an access of `dir`,
    /// with the reason QEMU gives a non-present or non-permitted second-level entry.
    fn expect_one(
        &self,
        records: &[FaultRecord],
        d: usize,
        iova: u64,
        dir: Direction,
    ) -> Result<(), String> {
        let [r] = records else {
            return Err(format!("{} fault records, expected 1", records.len()));
        };
        expect_record(r, self.devices[d].bdf, iova, dir)
    }
}

fn expect_record(r: &FaultRecord, bdf: u16, iova: u64, dir: Direction) -> Result<(), String> {
    let (access, reason) = match dir {
        Direction::ToDevice => (AccessType::Read, FaultReason::ReadDenied),
        Direction::FromDevice => (AccessType::Write, FaultReason::WriteDenied),
    };
    if r.source_id != bdf {
        return Err(format!(
            "record names requester {:#06x}, not {bdf:#06x}",
            r.source_id
        ));
    }
    if r.address != iova & !0xfff {
        return Err(format!(
            "record address {:#x}, expected {iova:#x}",
            r.address
        ));
    }
    if r.access != access {
        return Err(format!("record access {:?}, expected {access:?}", r.access));
    }
    if r.reason != reason {
        return Err(format!("record reason {:?}, expected {reason:?}", r.reason));
    }
    Ok(())
}

/// The registers of the (first) VT-d unit granted, and the DMAR table.
fn vtd_unit(info: &StartInfo) -> Result<(Mmio, usize, Dmar), String> {
    let dmar = Dmar::parse(info.dmar()).map_err(|e| format!("DMAR table: {e:?}"))?;
    let grant = info
        .devices()
        .iter()
        .find(|d| d.kind == device_kind::VTD_REGISTERS)
        .ok_or("no VT-d register frame granted")?;
    let unit = dmar
        .drhds
        .iter()
        .find(|u| u.register_base == grant.paddr)
        .ok_or("the granted register frame is no DRHD of the DMAR table")?;
    if unit.register_bytes() > grant.size {
        return Err("the granted register frame is smaller than the DRHD's".into());
    }
    // SAFETY: init mapped the unit's register frame uncached at `vaddr` for `size`
    // bytes for the process's life, and this process is the only one driving it.
    let regs = unsafe { Mmio::new(grant.vaddr as *mut u8, grant.size as usize) };
    Ok((regs, grant.size as usize, dmar))
}

/// Checks the DMAR table covers every granted device with the granted unit, and
/// reports reserved regions.
fn dmar_check(info: &StartInfo) -> Result<(), String> {
    let (_, _, dmar) = vtd_unit(info)?;
    let mut cfg = Bridges(info);
    let grant = info
        .devices()
        .iter()
        .find(|d| d.kind == device_kind::VTD_REGISTERS)
        .expect("checked by vtd_unit");
    say!(
        "vtd-scenarios: DMAR: host address width {}, {} DRHD, {} RMRR, {} ATSR",
        dmar.host_address_width,
        dmar.drhds.len(),
        dmar.rmrrs.len(),
        dmar.atsrs.len()
    );
    for d in info
        .devices()
        .iter()
        .filter(|d| d.kind == device_kind::PCI_BAR0)
    {
        let unit = dmar
            .unit_for(0, bdf_of(d.bdf as u16), &mut cfg)
            .ok_or_else(|| format!("no DRHD covers {}", Name(d.bdf as u16)))?;
        if unit.register_base != grant.paddr {
            return Err(format!(
                "{} belongs to the unit at {:#x}, not the granted one",
                Name(d.bdf as u16),
                unit.register_base
            ));
        }
    }
    Ok(())
}

fn new_driver(
    info: &StartInfo,
    pool: &Pool,
    tsc: Tsc,
    mode: ModeChoice,
    invalidation: InvalidationChoice,
) -> Result<Driver, String> {
    let (regs, size, _) = vtd_unit(info)?;
    let config = VtdConfig {
        mode,
        invalidation,
        register_bytes: size,
        ..VtdConfig::default()
    };
    Vtd::new(
        regs,
        pool.clone(),
        Deadline::new(tsc, WAIT_US * 1000),
        config,
    )
    .map_err(|e| format!("VT-d initialisation: {e}"))
}

/// A domain for every edu device with its two working pages, and the identity mappings
/// of reserved regions (RMRRs) that name it.
fn attach_devices(vtd: &mut Driver, pool: &Pool, info: &StartInfo) -> Result<Vec<Device>, String> {
    let dmar = Dmar::parse(info.dmar()).map_err(|e| format!("DMAR table: {e:?}"))?;
    let mut devices = Vec::new();
    for d in info
        .devices()
        .iter()
        .filter(|d| d.kind == device_kind::PCI_BAR0)
    {
        let bdf = d.bdf as u16;
        // SAFETY: init mapped the first page of the device's BAR0 uncached at `vaddr`
        // for the process's life; only this process drives the device.
        let regs = unsafe { Mmio::new(d.vaddr as *mut u8, edu::REGISTER_BYTES) };
        let mut edu = Edu::new(regs);
        if !edu.probe() {
            return Err(format!("{} does not answer like an edu", Name(bdf)));
        }
        let domain = vtd.create_domain().map_err(|e| format!("domain: {e}"))?;
        vtd.attach(domain, (bdf >> 8) as u8, bdf as u8)
            .map_err(|e| format!("attach {}: {e}", Name(bdf)))?;
        let out = pool.buffer(1).ok_or("DMA pool exhausted")?;
        let input = pool.buffer(1).ok_or("DMA pool exhausted")?;
        vtd.map(domain, IOVA_OUT, out.pa, 4096, Prot::READ_WRITE)
            .map_err(|e| format!("map: {e}"))?;
        vtd.map(domain, IOVA_IN, input.pa, 4096, Prot::READ_WRITE)
            .map_err(|e| format!("map: {e}"))?;
        let mut cfg = Bridges(info);
        for r in &dmar.rmrrs {
            if r.scopes
                .iter()
                .any(|s| s.resolve(0, &mut cfg) == Ok(bdf_of(bdf)))
            {
                let len = r.limit + 1 - r.base;
                vtd.map(domain, r.base, r.base, len, Prot::READ_WRITE)
                    .map_err(|e| format!("RMRR identity map: {e}"))?;
                say!(
                    "vtd-scenarios: RMRR {:#x}..={:#x} identity-mapped for {}",
                    r.base,
                    r.limit,
                    Name(bdf)
                );
            }
        }
        devices.push(Device {
            bdf,
            edu,
            domain,
            out,
            input,
        });
    }
    if devices.is_empty() {
        return Err("no edu device granted".into());
    }
    Ok(devices)
}

/// Runs every scenario.
pub fn run(info: &StartInfo, tally: &mut Tally) {
    let tsc = Tsc::new(info.tsc_per_us);
    let pool = Pool::new(info.dma.vaddr, info.dma.paddr, info.dma.size);
    tally.check("dmar", dmar_check(info));
    let vtd = match new_driver(info, &pool, tsc, ModeChoice::Auto, InvalidationChoice::Auto) {
        Ok(v) => v,
        Err(e) => {
            tally.check::<String>("vtd-init", Err(e));
            return;
        }
    };
    let tag = match vtd.mode() {
        Mode::Legacy => "vtd-legacy",
        Mode::Scalable => "vtd-scalable",
    };
    let f = *vtd.features();
    say!(
        "vtd-scenarios: VT-d {}.{} CAP {:#x} ECAP {:#x}: {tag}, {}-level tables, {} \
         invalidation, {} fault recording register(s)",
        f.version.0,
        f.version.1,
        f.cap.raw,
        f.ecap.raw,
        vtd.levels(),
        if vtd.queued_invalidation() {
            "queued"
        } else {
            "register-based"
        },
        f.cap.nfr
    );
    let mut rig = Rig {
        info,
        tsc,
        pool: pool.clone(),
        vtd,
        tag,
        devices: Vec::new(),
    };
    match attach_devices(&mut rig.vtd, &pool, info) {
        Ok(d) => rig.devices = d,
        Err(e) => {
            tally.check::<String>("vtd-init", Err(e));
            return;
        }
    }
    tally.check::<String>("vtd-init", Ok(()));
    let scenarios: [(&str, Scenario); 10] = [
        ("translated-dma", translated_dma),
        ("fault-unmapped", fault_unmapped),
        ("fault-readonly", fault_readonly),
        ("fault-after-unmap", fault_after_unmap),
        ("isolation", isolation),
        ("fault-flood", fault_flood),
        ("fault-interrupt", fault_interrupt),
        ("fault-detached", fault_detached),
        ("domain-switch", domain_switch),
        ("queued-invalidation", queued_invalidation),
    ];
    for (name, scenario) in scenarios {
        if matches!(name, "isolation" | "fault-detached" | "domain-switch") && rig.devices.len() < 2
        {
            say!("vtd-scenarios: {name} not run: one edu device granted");
            continue;
        }
        let result = scenario(&mut rig);
        // Leave no record behind for the next scenario.
        let (left, _) = rig.vtd.drain_faults_quiet();
        let result = result.and_then(|()| {
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} unexpected fault records left"))
            }
        });
        tally.check(name, result);
    }
    let Rig { vtd, .. } = rig;
    tally.check(
        "register-invalidation",
        register_invalidation(info, &pool, tsc, vtd),
    );
}

trait DrainQuiet {
    fn drain_faults_quiet(&mut self) -> (u32, bool);
}

impl DrainQuiet for Driver {
    fn drain_faults_quiet(&mut self) -> (u32, bool) {
        let r = self.drain_faults(|r| say!("vtd-scenarios: unexpected fault record: {r}"));
        (r.records, r.overflowed)
    }
}

/// Both directions through second-level mappings, data verified, for every device.
fn translated_dma(rig: &mut Rig<'_>) -> Result<(), String> {
    for d in 0..rig.devices.len() {
        let seed = 0x40 + d as u8;
        let dev = &rig.devices[d];
        dev.input.fill(XFER, seed);
        dev.out.clear(0);
        // RAM → edu through IOVA_IN, then edu → RAM through IOVA_OUT.
        rig.dma(d, Direction::ToDevice, IOVA_IN)?;
        rig.dma(d, Direction::FromDevice, IOVA_OUT)?;
        let dev = &rig.devices[d];
        if !dev.out.holds(XFER, seed) {
            return Err(format!(
                "{}: data read through {IOVA_IN:#x} did not come back through {IOVA_OUT:#x}",
                Name(dev.bdf)
            ));
        }
        let (records, _) = rig.drain("translated-dma");
        if !records.is_empty() {
            return Err(format!(
                "{} fault records for mapped transfers",
                records.len()
            ));
        }
    }
    Ok(())
}

/// Reads and writes of a never-mapped IOVA fault with the requester, address and
/// direction; the records are cleared.
fn fault_unmapped(rig: &mut Rig<'_>) -> Result<(), String> {
    rig.dma(0, Direction::ToDevice, IOVA_UNMAPPED)?;
    let (records, _) = rig.drain("fault-unmapped");
    rig.expect_one(&records, 0, IOVA_UNMAPPED, Direction::ToDevice)
        .map_err(|e| format!("read: {e}"))?;
    rig.dma(0, Direction::FromDevice, IOVA_UNMAPPED + 0x1000)?;
    let (records, _) = rig.drain("fault-unmapped");
    rig.expect_one(&records, 0, IOVA_UNMAPPED + 0x1000, Direction::FromDevice)
        .map_err(|e| format!("write: {e}"))?;
    let fsts = rig.vtd.regs().read32(vtd::regs::FSTS);
    if fsts & (vtd::regs::FSTS_PPF | vtd::regs::FSTS_PFO) != 0 {
        return Err(format!(
            "FSTS {fsts:#x} still reports faults after draining"
        ));
    }
    Ok(())
}

/// A write to a read-only page faults (and moves no data); a read of it works.
fn fault_readonly(rig: &mut Rig<'_>) -> Result<(), String> {
    let page = rig.pool.buffer(1).ok_or("DMA pool exhausted")?;
    page.fill(4096, 0x77);
    let dom = rig.devices[0].domain;
    rig.vtd
        .map(dom, IOVA_READ_ONLY, page.pa, 4096, Prot::READ)
        .map_err(|e| format!("map: {e}"))?;
    rig.dma(0, Direction::FromDevice, IOVA_READ_ONLY)?;
    let (records, _) = rig.drain("fault-readonly");
    rig.expect_one(&records, 0, IOVA_READ_ONLY, Direction::FromDevice)?;
    if !page.holds(4096, 0x77) {
        return Err("the blocked write changed the read-only page".into());
    }
    rig.dma(0, Direction::ToDevice, IOVA_READ_ONLY)?;
    let (records, _) = rig.drain("fault-readonly");
    if !records.is_empty() {
        return Err("reading the read-only page faulted".into());
    }
    rig.dma(0, Direction::FromDevice, IOVA_OUT)?;
    if !rig.devices[0].out.holds(XFER, 0x77) {
        return Err("the read of the read-only page moved the wrong data".into());
    }
    rig.vtd
        .unmap(dom, IOVA_READ_ONLY, 4096)
        .map_err(|e| format!("unmap: {e}"))?;
    Ok(())
}

/// After unmap (whose invalidation completed before it returned), the old IOVA faults
/// and the old page is untouched.
fn fault_after_unmap(rig: &mut Rig<'_>) -> Result<(), String> {
    let page = rig.pool.buffer(1).ok_or("DMA pool exhausted")?;
    page.clear(0);
    let dom = rig.devices[0].domain;
    rig.devices[0].input.fill(XFER, 0x31);
    rig.dma(0, Direction::ToDevice, IOVA_IN)?;
    rig.vtd
        .map(dom, IOVA_UNMAP, page.pa, 4096, Prot::READ_WRITE)
        .map_err(|e| format!("map: {e}"))?;
    rig.dma(0, Direction::FromDevice, IOVA_UNMAP)?;
    let (records, _) = rig.drain("fault-after-unmap");
    if !records.is_empty() || !page.holds(XFER, 0x31) {
        return Err("the write through the live mapping did not land".into());
    }
    rig.vtd
        .unmap(dom, IOVA_UNMAP, 4096)
        .map_err(|e| format!("unmap: {e}"))?;
    page.clear(0);
    rig.dma(0, Direction::FromDevice, IOVA_UNMAP)?;
    let (records, _) = rig.drain("fault-after-unmap");
    rig.expect_one(&records, 0, IOVA_UNMAP, Direction::FromDevice)?;
    if !page.all(0) {
        return Err("a write reached the page after unmap".into());
    }
    Ok(())
}

/// A page mapped in the first device's domain only: every other device's write to that
/// IOVA faults with its own requester ID and changes nothing.
fn isolation(rig: &mut Rig<'_>) -> Result<(), String> {
    let page = rig.pool.buffer(1).ok_or("DMA pool exhausted")?;
    page.clear(0x5a);
    let dom = rig.devices[0].domain;
    rig.vtd
        .map(dom, IOVA_PRIVATE, page.pa, 4096, Prot::READ_WRITE)
        .map_err(|e| format!("map: {e}"))?;
    for d in 1..rig.devices.len() {
        rig.devices[d].input.fill(XFER, 0x99);
        rig.dma(d, Direction::ToDevice, IOVA_IN)?;
        rig.dma(d, Direction::FromDevice, IOVA_PRIVATE)?;
        let (records, _) = rig.drain("isolation");
        rig.expect_one(&records, d, IOVA_PRIVATE, Direction::FromDevice)
            .map_err(|e| format!("{}: {e}", Name(rig.devices[d].bdf)))?;
        if !page.all(0x5a) {
            return Err(format!(
                "{} wrote into the first device's page",
                Name(rig.devices[d].bdf)
            ));
        }
    }
    rig.vtd
        .unmap(dom, IOVA_PRIVATE, 4096)
        .map_err(|e| format!("unmap: {e}"))?;
    Ok(())
}

/// The last device, detached (its context entry cleared, then the context cache and the
/// IOTLB invalidated): its write through the IOVA that was mapped faults for want of a
/// context entry (reason 2 of the VT-d spec's fault-condition tables) and lands nowhere.
/// Attached to its domain again, the same write works and faults nothing.
fn fault_detached(rig: &mut Rig<'_>) -> Result<(), String> {
    let d = rig.devices.len() - 1;
    let bdf = rig.devices[d].bdf;
    let (bus, devfn) = ((bdf >> 8) as u8, bdf as u8);
    // The device's own buffer gets a known pattern while it is still attached.
    rig.devices[d].input.fill(XFER, 0x6d);
    rig.dma(d, Direction::ToDevice, IOVA_IN)?;
    rig.devices[d].out.clear(0);
    rig.vtd
        .detach(bus, devfn)
        .map_err(|e| format!("detach: {e}"))?;
    rig.dma(d, Direction::FromDevice, IOVA_OUT)?;
    let (records, _) = rig.drain("fault-detached");
    let [r] = &records[..] else {
        return Err(format!(
            "{} fault records while detached, expected 1",
            records.len()
        ));
    };
    if r.source_id != bdf
        || r.address != IOVA_OUT
        || r.access != AccessType::Write
        || r.reason != FaultReason::ContextEntryNotPresent
    {
        return Err(format!(
            "record {r}, expected a context-entry-not-present write of {IOVA_OUT:#x} by {}",
            Name(bdf)
        ));
    }
    if !rig.devices[d].out.all(0) {
        return Err("a detached device's write landed".into());
    }
    let dom = rig.devices[d].domain;
    rig.vtd
        .attach(dom, bus, devfn)
        .map_err(|e| format!("attach again: {e}"))?;
    rig.dma(d, Direction::FromDevice, IOVA_OUT)?;
    let (records, _) = rig.drain("fault-detached");
    if !records.is_empty() {
        return Err(format!(
            "{} fault records after attaching again",
            records.len()
        ));
    }
    if !rig.devices[d].out.holds(XFER, 0x6d) {
        return Err("the write after attaching again did not land".into());
    }
    Ok(())
}

/// The last device moved into the first device's domain ([`Vtd::reattach`]) reaches what
/// that domain maps and faults on what it does not; moved back, it faults on the first
/// device's page again (each move is invalidated before it returns).
fn domain_switch(rig: &mut Rig<'_>) -> Result<(), String> {
    let d = rig.devices.len() - 1;
    let bdf = rig.devices[d].bdf;
    let (bus, devfn) = ((bdf >> 8) as u8, bdf as u8);
    let (first, own) = (rig.devices[0].domain, rig.devices[d].domain);
    let page = rig.pool.buffer(1).ok_or("DMA pool exhausted")?;
    page.clear(0);
    rig.vtd
        .map(first, IOVA_SWITCH, page.pa, 4096, Prot::READ_WRITE)
        .map_err(|e| format!("map: {e}"))?;
    rig.devices[d].input.fill(XFER, 0x2c);
    rig.dma(d, Direction::ToDevice, IOVA_IN)?;
    rig.vtd
        .reattach(first, bus, devfn)
        .map_err(|e| format!("move to the first domain: {e}"))?;
    rig.dma(d, Direction::FromDevice, IOVA_SWITCH)?;
    let (records, _) = rig.drain("domain-switch");
    if !records.is_empty() || !page.holds(XFER, 0x2c) {
        return Err("the write through the first domain's mapping did not land".into());
    }
    rig.dma(d, Direction::FromDevice, IOVA_SWITCH + 0x1000)?;
    let (records, _) = rig.drain("domain-switch");
    rig.expect_one(&records, d, IOVA_SWITCH + 0x1000, Direction::FromDevice)
        .map_err(|e| format!("in the first domain: {e}"))?;
    rig.vtd
        .reattach(own, bus, devfn)
        .map_err(|e| format!("move back: {e}"))?;
    page.clear(0);
    rig.dma(d, Direction::FromDevice, IOVA_SWITCH)?;
    let (records, _) = rig.drain("domain-switch");
    rig.expect_one(&records, d, IOVA_SWITCH, Direction::FromDevice)
        .map_err(|e| format!("back in its own domain: {e}"))?;
    if !page.all(0) {
        return Err("a write reached the first domain's page after moving back".into());
    }
    rig.vtd
        .unmap(first, IOVA_SWITCH, 4096)
        .map_err(|e| format!("unmap: {e}"))?;
    Ok(())
}

/// Many faults without draining, from every device in turn: the records there are
/// come out, faults beyond the recording registers are reported as an overflow (a
/// unit may also compress further faults of a source whose fault is still pending, VT-d
/// spec §7.2.1, so only faults from more sources than registers must overflow), and
/// translated DMA still works afterwards.
fn fault_flood(rig: &mut Rig<'_>) -> Result<(), String> {
    let n = rig.devices.len() as u64;
    for i in 0..FLOOD {
        rig.dma(
            (i % n) as usize,
            Direction::ToDevice,
            IOVA_FLOOD + i * 0x1000,
        )?;
    }
    let (records, overflow) = rig.drain("fault-flood");
    say!(
        "RECORD {} fault-flood overflow={}",
        rig.tag,
        u8::from(overflow)
    );
    let nfr = u64::from(rig.vtd.features().cap.nfr);
    if records.is_empty() || records.len() as u64 > nfr {
        return Err(format!(
            "{} records drained, expected 1..={nfr} (the fault recording registers)",
            records.len()
        ));
    }
    for r in &records {
        let i = r.address.wrapping_sub(IOVA_FLOOD) / 0x1000;
        if i >= FLOOD {
            return Err(format!("record address {:#x} outside the flood", r.address));
        }
        let d = (i % n) as usize;
        expect_record(
            r,
            rig.devices[d].bdf,
            IOVA_FLOOD + i * 0x1000,
            Direction::ToDevice,
        )?;
    }
    if n > nfr && !overflow {
        return Err(format!(
            "faults from {n} requesters into {nfr} recording register(s), but no overflow reported"
        ));
    }
    say!(
        "vtd-scenarios: fault flood: {FLOOD} faults from {n} device(s), {} record(s) drained, \
         overflow {}",
        records.len(),
        if overflow { "reported" } else { "not reported" }
    );
    let fsts = rig.vtd.regs().read32(vtd::regs::FSTS);
    if fsts & (vtd::regs::FSTS_PPF | vtd::regs::FSTS_PFO) != 0 {
        return Err(format!(
            "FSTS {fsts:#x} still reports faults after draining"
        ));
    }
    for d in 0..rig.devices.len() {
        rig.devices[d].input.fill(XFER, 0xc3);
        rig.dma(d, Direction::ToDevice, IOVA_IN)?;
        rig.dma(d, Direction::FromDevice, IOVA_OUT)?;
        if !rig.devices[d].out.holds(XFER, 0xc3) {
            return Err(format!(
                "translated DMA of {} broken after the flood",
                Name(rig.devices[d].bdf)
            ));
        }
    }
    Ok(())
}

/// The fault event interrupt (an MSI, VT-d spec §7.3) reaches this process's
/// notification through the kernel.
fn fault_interrupt(rig: &mut Rig<'_>) -> Result<(), String> {
    let info = rig.info;
    if info.irq_notification == 0 {
        return Err("no interrupt granted".into());
    }
    let ntfn: Cap<cap_type::Notification> = Cap::from_cptr(info.irq_notification);
    let handler: Cap<cap_type::IrqHandler> = Cap::from_cptr(info.irq_handler);
    // MSI to the boot CPU's local APIC (Intel SDM vol. 3 §11.11: address 0xfee00000,
    // destination ID 0), carrying the vector the kernel routes to this notification.
    let regs = rig.vtd.regs();
    regs.write32(vtd::regs::FEADDR, 0xfee0_0000);
    regs.write32(vtd::regs::FEDATA, info.irq_vector as u32);
    regs.write32(vtd::regs::FECTL, 0);
    let _ = nb_recv(ntfn.cptr());
    handler.ack().map_err(|e| format!("IRQ ack: {e:?}"))?;
    rig.dma(0, Direction::ToDevice, IOVA_UNMAPPED)?;
    let mut deadline = rig.deadline();
    let got = iommu_hwio::poll::poll_until(&mut deadline, || nb_recv(ntfn.cptr()).badge != 0);
    let (records, _) = rig.drain("fault-interrupt");
    handler.ack().map_err(|e| format!("IRQ ack: {e:?}"))?;
    rig.vtd
        .regs()
        .write32(vtd::regs::FECTL, vtd::regs::FECTL_IM);
    rig.expect_one(&records, 0, IOVA_UNMAPPED, Direction::ToDevice)?;
    if !got {
        return Err("no interrupt arrived for the fault".into());
    }
    say!(
        "vtd-scenarios: fault interrupt: vector {:#x} signalled notification slot {}",
        info.irq_vector,
        info.irq_notification
    );
    Ok(())
}

/// With ECAP.QI the driver invalidates through the queue, waiting on wait descriptors;
/// an unmap is one of those.
fn queued_invalidation(rig: &mut Rig<'_>) -> Result<(), String> {
    let qi = rig.vtd.features().ecap.qi;
    if rig.vtd.queued_invalidation() != qi {
        return Err(format!(
            "ECAP.QI = {qi} but the driver uses {} invalidation",
            if qi { "register-based" } else { "queued" }
        ));
    }
    if !qi {
        say!("vtd-scenarios: no ECAP.QI: register-based invalidation throughout");
        return Ok(());
    }
    let before = rig.vtd.stats;
    let page = rig.pool.buffer(1).ok_or("DMA pool exhausted")?;
    let dom = rig.devices[0].domain;
    rig.vtd
        .map(dom, IOVA_UNMAP, page.pa, 4096, Prot::READ_WRITE)
        .map_err(|e| format!("map: {e}"))?;
    rig.vtd
        .unmap(dom, IOVA_UNMAP, 4096)
        .map_err(|e| format!("unmap: {e}"))?;
    let after = rig.vtd.stats;
    if after.iotlb_invalidations <= before.iotlb_invalidations || after.waits <= before.waits {
        return Err("unmap issued no queued IOTLB invalidation with a wait".into());
    }
    let iqh = rig.vtd.regs().read64(vtd::regs::IQH);
    let iqt = rig.vtd.regs().read64(vtd::regs::IQT);
    if iqh != iqt {
        return Err(format!("queue not drained: IQH {iqh:#x}, IQT {iqt:#x}"));
    }
    say!(
        "vtd-scenarios: queued invalidation: {} IOTLB invalidations, {} waits so far, queue head = tail = {iqh:#x}",
        after.iotlb_invalidations,
        after.waits
    );
    Ok(())
}

/// The unit again in legacy mode with register-based invalidation (CCMD_REG, IOTLB_REG):
/// translated DMA, unmap, fault. Where the unit supports scalable mode, the driver must
/// refuse register-based invalidation with it (VT-d spec §6.5: scalable mode uses the
/// queue).
fn register_invalidation(
    info: &StartInfo,
    pool: &Pool,
    tsc: Tsc,
    mut old: Driver,
) -> Result<(), String> {
    old.disable_translation()
        .map_err(|e| format!("turning translation off: {e}"))?;
    let smts = old.features().ecap.smts;
    drop(old);
    if smts {
        match new_driver(
            info,
            pool,
            tsc,
            ModeChoice::Fixed(Mode::Scalable),
            InvalidationChoice::Register,
        ) {
            Err(_) => {}
            Ok(_) => return Err("scalable mode with register-based invalidation accepted".into()),
        }
    }
    let mut vtd = new_driver(
        info,
        pool,
        tsc,
        ModeChoice::Fixed(Mode::Legacy),
        InvalidationChoice::Register,
    )?;
    if vtd.queued_invalidation() {
        return Err("the driver chose queued invalidation".into());
    }
    let devices = attach_devices(&mut vtd, pool, info)?;
    let mut rig = Rig {
        info,
        tsc,
        pool: pool.clone(),
        vtd,
        tag: "",
        devices,
    };
    translated_dma(&mut rig)?;
    let before = rig.vtd.stats;
    fault_after_unmap(&mut rig)?;
    if rig.vtd.stats.iotlb_invalidations <= before.iotlb_invalidations {
        return Err("unmap issued no register-based IOTLB invalidation".into());
    }
    let (left, _) = rig.vtd.drain_faults_quiet();
    if left != 0 {
        return Err(format!("{left} unexpected fault records"));
    }
    say!(
        "vtd-scenarios: register-based invalidation: {} IOTLB and {} context-cache invalidations",
        rig.vtd.stats.iotlb_invalidations,
        rig.vtd.stats.context_invalidations
    );
    Ok(())
}
