//! PCIe enumeration through ECAM: bus numbering behind bridges, BAR sizing
//! and assignment from the host bridge's memory windows, bridge windows,
//! and command register setup.
//!
//! Allocation is a single depth-first pass with one bump allocator per host
//! window.  A bridge's window starts at the allocator's position (aligned to
//! 1 MiB) before its secondary bus is scanned and ends where the allocator
//! stands afterwards, so it covers exactly the BARs below it.
//! - 32-bit BARs and 64-bit non-prefetchable BARs come from the 32-bit
//!   window (a bridge's non-prefetchable window is 32-bit only);
//! - 64-bit prefetchable BARs come from the 64-bit window when there is one
//!   (through the bridges' prefetchable windows), else from the 32-bit one;
//! - I/O BARs are sized and reported but not assigned, and I/O decoding
//!   stays off.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::mmio::Mmio;
use crate::platform::{PciHost, PciSpace, PciWindow};

const VENDOR_ID: usize = 0x00;
const COMMAND: usize = 0x04;
const CLASS_REVISION: usize = 0x08;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const ROM_TYPE0: usize = 0x30;
const BUS_NUMBERS: usize = 0x18;
const IO_BASE_LIMIT: usize = 0x1c;
const MEM_BASE_LIMIT: usize = 0x20;
const PREF_BASE_LIMIT: usize = 0x24;
const PREF_BASE_UPPER: usize = 0x28;
const PREF_LIMIT_UPPER: usize = 0x2c;
const IO_UPPER: usize = 0x30;
const ROM_TYPE1: usize = 0x38;

const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
const CMD_INTX_DISABLE: u16 = 1 << 10;

/// Alignment and granularity of bridge memory windows.
const BRIDGE_WINDOW_ALIGN: u64 = 1 << 20;
/// Minimum BAR alignment: every BAR gets pages of its own.
const MIN_BAR_ALIGN: u64 = 4096;
/// Deepest bridge nesting followed.
const MAX_BRIDGE_DEPTH: usize = 16;

/// A PCI function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

impl Bdf {
    /// The requester ID: bus << 8 | device << 3 | function.
    pub fn rid(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.dev & 0x1f) << 3) | u16::from(self.func & 7)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Configuration space access through ECAM.
pub struct Ecam {
    regs: Mmio,
    bus_start: u8,
    bus_end: u8,
}

impl Ecam {
    /// ECAM over `regs`, whose base is the configuration space of bus
    /// `bus_start`.
    pub fn new(regs: Mmio, bus_start: u8, bus_end: u8) -> Self {
        Self {
            regs,
            bus_start,
            bus_end,
        }
    }

    fn offset(&self, bdf: Bdf, reg: usize) -> Option<usize> {
        if bdf.bus < self.bus_start
            || bdf.bus > self.bus_end
            || bdf.dev >= 32
            || bdf.func >= 8
            || reg >= 4096
        {
            return None;
        }
        let offset = (usize::from(bdf.bus - self.bus_start) << 20)
            | (usize::from(bdf.dev) << 15)
            | (usize::from(bdf.func) << 12)
            | reg;
        (offset < self.regs.len()).then_some(offset)
    }

    /// Reads a 32-bit register (all ones outside the ECAM).
    pub fn read32(&self, bdf: Bdf, reg: usize) -> u32 {
        self.offset(bdf, reg)
            .map_or(u32::MAX, |o| self.regs.read32(o))
    }

    /// Reads a 16-bit register.
    pub fn read16(&self, bdf: Bdf, reg: usize) -> u16 {
        self.offset(bdf, reg)
            .map_or(u16::MAX, |o| self.regs.read16(o))
    }

    /// Reads an 8-bit register.
    pub fn read8(&self, bdf: Bdf, reg: usize) -> u8 {
        self.offset(bdf, reg)
            .map_or(u8::MAX, |o| self.regs.read8(o))
    }

    /// Writes a 32-bit register (ignored outside the ECAM).
    pub fn write32(&self, bdf: Bdf, reg: usize, value: u32) {
        if let Some(o) = self.offset(bdf, reg) {
            self.regs.write32(o, value);
        }
    }

    /// Writes a 16-bit register.
    pub fn write16(&self, bdf: Bdf, reg: usize, value: u16) {
        if let Some(o) = self.offset(bdf, reg) {
            self.regs.write16(o, value);
        }
    }
}

/// Kind of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (occupies two BAR registers).
    Mem64,
}

/// One implemented BAR.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    /// BAR register index (0..6).
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size in bytes.
    pub size: u64,
    /// Assigned PCI bus address.
    pub pci_addr: Option<u64>,
    /// CPU physical address of the assigned range.
    pub cpu_addr: Option<u64>,
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        };
        let pref = if self.prefetchable { " pref" } else { "" };
        write!(f, "BAR{} {kind}{pref} size 0x{:x}", self.index, self.size)?;
        match (self.pci_addr, self.cpu_addr) {
            (Some(pci), Some(cpu)) => write!(f, " at 0x{cpu:x} (bus address 0x{pci:x})"),
            _ => write!(f, " not assigned"),
        }
    }
}

/// Bridge configuration.
#[derive(Clone, Copy, Debug)]
pub struct Bridge {
    /// Secondary bus number.
    pub secondary: u8,
    /// Subordinate (highest) bus number below the bridge.
    pub subordinate: u8,
    /// Non-prefetchable memory window (PCI addresses, inclusive end).
    pub mem_window: Option<(u64, u64)>,
    /// Prefetchable memory window (PCI addresses, inclusive end).
    pub pref_window: Option<(u64, u64)>,
}

/// One PCI function found.
#[derive(Clone, Debug)]
pub struct Function {
    /// Address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
    /// Header type (without the multi-function bit).
    pub header_type: u8,
    /// Implemented BARs.
    pub bars: Vec<Bar>,
    /// Bridge configuration, for type 1 headers.
    pub bridge: Option<Bridge>,
    /// Stream ID at the IOMMU according to `iommu-map`.
    pub stream_id: Option<u32>,
}

impl Function {
    /// Requester ID.
    pub fn rid(&self) -> u16 {
        self.bdf.rid()
    }

    /// The BAR with register index `index`.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }
}

/// Result of an enumeration.
pub struct Topology {
    /// Functions in depth-first order (bridges before what is behind them).
    pub functions: Vec<Function>,
    /// Things that could not be configured.
    pub problems: Vec<String>,
}

impl Topology {
    /// Prints one block per function.
    pub fn print(&self) {
        for f in &self.functions {
            let sid = match f.stream_id {
                Some(s) => format!("0x{s:04x}"),
                None => String::from("none"),
            };
            crate::println!(
                "pci {} {:04x}:{:04x} class {:06x} header {} requester-id 0x{:04x} stream-id {sid}",
                f.bdf,
                f.vendor_id,
                f.device_id,
                f.class,
                f.header_type,
                f.rid(),
            );
            for bar in &f.bars {
                crate::println!("    {bar}");
            }
            if let Some(b) = &f.bridge {
                let window = |w: Option<(u64, u64)>| match w {
                    Some((s, e)) => format!("0x{s:x}..=0x{e:x}"),
                    None => String::from("off"),
                };
                crate::println!(
                    "    bridge: buses {:02x}..={:02x}, memory {}, prefetchable {}",
                    b.secondary,
                    b.subordinate,
                    window(b.mem_window),
                    window(b.pref_window)
                );
            }
        }
        for p in &self.problems {
            crate::println!("pci problem: {p}");
        }
    }
}

/// Bump allocator over one host bridge window (PCI addresses).
struct WindowAlloc {
    window: PciWindow,
    next: u64,
}

impl WindowAlloc {
    fn new(window: PciWindow) -> Self {
        Self {
            window,
            next: window.pci_base,
        }
    }

    fn end(&self) -> u64 {
        self.window.pci_base + self.window.size
    }

    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let start = self.next.checked_next_multiple_of(align)?;
        let end = start.checked_add(size)?;
        if end > self.end() {
            return None;
        }
        self.next = end;
        Some(start)
    }

    /// Moves the allocator to the next multiple of `align` (bounded by the
    /// window) and returns the new position.
    fn align_to(&mut self, align: u64) -> u64 {
        self.next = self
            .next
            .checked_next_multiple_of(align)
            .unwrap_or(u64::MAX)
            .min(self.end());
        self.next
    }

    fn to_cpu(&self, pci: u64) -> u64 {
        self.window.cpu_base + (pci - self.window.pci_base)
    }
}

struct Enumerator<'a> {
    ecam: &'a Ecam,
    host: &'a PciHost,
    iommu: Option<u32>,
    mem32: Option<WindowAlloc>,
    mem64: Option<WindowAlloc>,
    next_bus: u16,
    functions: Vec<Function>,
    problems: Vec<String>,
}

/// Enumerates everything below the host bridge, assigns bus numbers and
/// BARs and enables memory decoding and bus mastering.  `iommu` is the
/// phandle of the IOMMU whose stream IDs are reported.
pub fn enumerate(ecam: &Ecam, host: &PciHost, iommu: Option<u32>) -> Topology {
    let below_4g = |w: &&PciWindow| w.pci_base.checked_add(w.size).is_some_and(|e| e <= 1 << 32);
    let mem = |w: &&PciWindow| matches!(w.space, PciSpace::Mem32 | PciSpace::Mem64);
    let mem32 = host
        .windows
        .iter()
        .filter(mem)
        .filter(below_4g)
        .min_by_key(|w| (w.prefetchable, w.pci_base))
        .copied();
    let mem64 = host
        .windows
        .iter()
        .filter(|w| w.space == PciSpace::Mem64 && !below_4g(w))
        .max_by_key(|w| w.size)
        .copied();
    let mut e = Enumerator {
        ecam,
        host,
        iommu,
        mem32: mem32.map(WindowAlloc::new),
        mem64: mem64.map(WindowAlloc::new),
        next_bus: u16::from(host.bus_start) + 1,
        functions: Vec::new(),
        problems: Vec::new(),
    };
    if e.mem32.is_none() {
        e.problems.push(String::from(
            "no memory window below 4 GiB in the host bridge's ranges",
        ));
    }
    e.scan_bus(host.bus_start, 0);
    Topology {
        functions: e.functions,
        problems: e.problems,
    }
}

impl Enumerator<'_> {
    fn scan_bus(&mut self, bus: u8, depth: usize) {
        for dev in 0..32u8 {
            let bdf0 = Bdf { bus, dev, func: 0 };
            if self.ecam.read16(bdf0, VENDOR_ID) == 0xffff {
                continue;
            }
            let multi = self.ecam.read8(bdf0, HEADER_TYPE) & 0x80 != 0;
            let functions = if multi { 8 } else { 1 };
            for func in 0..functions {
                let bdf = Bdf { bus, dev, func };
                if self.ecam.read16(bdf, VENDOR_ID) == 0xffff {
                    continue;
                }
                self.setup_function(bdf, depth);
            }
        }
    }

    fn setup_function(&mut self, bdf: Bdf, depth: usize) {
        let ecam = self.ecam;
        let id = ecam.read32(bdf, VENDOR_ID);
        let class_rev = ecam.read32(bdf, CLASS_REVISION);
        let header_type = ecam.read8(bdf, HEADER_TYPE) & 0x7f;
        // No decoding or DMA while the BARs are sized and moved.
        ecam.write16(bdf, COMMAND, 0);
        let stream_id = self
            .iommu
            .and_then(|iommu| self.host.stream_id(bdf.rid(), iommu));
        let index = self.functions.len();
        self.functions.push(Function {
            bdf,
            vendor_id: id as u16,
            device_id: (id >> 16) as u16,
            class: class_rev >> 8,
            header_type,
            bars: Vec::new(),
            bridge: None,
            stream_id,
        });
        let bars = match header_type {
            0 => {
                ecam.write32(bdf, ROM_TYPE0, 0);
                self.assign_bars(bdf, 6)
            }
            1 => {
                ecam.write32(bdf, ROM_TYPE1, 0);
                self.assign_bars(bdf, 2)
            }
            other => {
                self.problems.push(format!(
                    "{bdf}: header type {other} not supported, left disabled"
                ));
                return;
            }
        };
        let mut command = CMD_BUS_MASTER | CMD_INTX_DISABLE;
        if bars
            .iter()
            .any(|b| b.kind != BarKind::Io && b.pci_addr.is_some())
        {
            command |= CMD_MEMORY;
        }
        if let Some(f) = self.functions.get_mut(index) {
            f.bars = bars;
        }
        if header_type == 1 {
            let bridge = self.setup_bridge(bdf, depth);
            if let Some(f) = self.functions.get_mut(index) {
                f.bridge = bridge;
            }
            // Forward memory transactions downstream and DMA upstream.
            command |= CMD_MEMORY;
        }
        ecam.write16(bdf, COMMAND, command);
    }

    fn assign_bars(&mut self, bdf: Bdf, count: usize) -> Vec<Bar> {
        let ecam = self.ecam;
        let mut bars = Vec::new();
        let mut i = 0;
        while i < count {
            let reg = BAR0 + 4 * i;
            let original = ecam.read32(bdf, reg);
            let index = i as u8;
            if original & 1 != 0 {
                ecam.write32(bdf, reg, u32::MAX);
                let mask = ecam.read32(bdf, reg) & !3;
                ecam.write32(bdf, reg, 0);
                if mask != 0 {
                    bars.push(Bar {
                        index,
                        kind: BarKind::Io,
                        prefetchable: false,
                        size: 1 << mask.trailing_zeros(),
                        pci_addr: None,
                        cpu_addr: None,
                    });
                }
                i += 1;
                continue;
            }
            let is64 = (original >> 1) & 3 == 2;
            let prefetchable = original & (1 << 3) != 0;
            if is64 && i + 1 >= count {
                self.problems
                    .push(format!("{bdf} BAR{i}: 64-bit BAR in the last slot"));
                break;
            }
            ecam.write32(bdf, reg, u32::MAX);
            let low = ecam.read32(bdf, reg) & !0xf;
            let high = if is64 {
                ecam.write32(bdf, reg + 4, u32::MAX);
                ecam.read32(bdf, reg + 4)
            } else {
                u32::MAX
            };
            let mask = (u64::from(high) << 32) | u64::from(low);
            let step = if is64 { 2 } else { 1 };
            if low == 0 && (!is64 || high == 0) {
                // Not implemented.
                ecam.write32(bdf, reg, 0);
                if is64 {
                    ecam.write32(bdf, reg + 4, 0);
                }
                i += step;
                continue;
            }
            let size = 1u64 << mask.trailing_zeros();
            let use64 = is64 && prefetchable && self.mem64.is_some();
            let window = if use64 {
                self.mem64.as_mut()
            } else {
                self.mem32.as_mut()
            };
            let placed = window.and_then(|w| {
                let pci = w.alloc(size, size.max(MIN_BAR_ALIGN))?;
                Some((pci, w.to_cpu(pci)))
            });
            let (pci_addr, cpu_addr) = match placed {
                Some((pci, cpu)) => {
                    ecam.write32(bdf, reg, pci as u32);
                    if is64 {
                        ecam.write32(bdf, reg + 4, (pci >> 32) as u32);
                    }
                    let mut readback = u64::from(ecam.read32(bdf, reg) & !0xf);
                    if is64 {
                        readback |= u64::from(ecam.read32(bdf, reg + 4)) << 32;
                    }
                    if readback != pci {
                        self.problems.push(format!(
                            "{bdf} BAR{i}: wrote 0x{pci:x}, reads back 0x{readback:x}"
                        ));
                    }
                    (Some(pci), Some(cpu))
                }
                None => {
                    self.problems.push(format!(
                        "{bdf} BAR{i}: no window space for 0x{size:x} bytes"
                    ));
                    ecam.write32(bdf, reg, 0);
                    if is64 {
                        ecam.write32(bdf, reg + 4, 0);
                    }
                    (None, None)
                }
            };
            bars.push(Bar {
                index,
                kind: if is64 { BarKind::Mem64 } else { BarKind::Mem32 },
                prefetchable,
                size,
                pci_addr,
                cpu_addr,
            });
            i += step;
        }
        bars
    }

    fn setup_bridge(&mut self, bdf: Bdf, depth: usize) -> Option<Bridge> {
        let ecam = self.ecam;
        let bus_end = u16::from(self.host.bus_end);
        if depth >= MAX_BRIDGE_DEPTH || self.next_bus > bus_end {
            self.problems.push(format!(
                "{bdf}: no bus number left for the bridge (or nested too deep)"
            ));
            return None;
        }
        let secondary = self.next_bus as u8;
        self.next_bus += 1;
        let latency = ecam.read32(bdf, BUS_NUMBERS) & 0xff00_0000;
        let bus_numbers = |sub: u8| {
            latency | (u32::from(sub) << 16) | (u32::from(secondary) << 8) | u32::from(bdf.bus)
        };
        // Route every remaining bus number below the bridge while scanning.
        ecam.write32(bdf, BUS_NUMBERS, bus_numbers(self.host.bus_end));
        // I/O window closed (base above limit).
        ecam.write16(bdf, IO_BASE_LIMIT, 0x00f0);
        ecam.write32(bdf, IO_UPPER, 0);

        let mem_start = self.mem32.as_mut().map(|w| w.align_to(BRIDGE_WINDOW_ALIGN));
        let pref_start = self.mem64.as_mut().map(|w| w.align_to(BRIDGE_WINDOW_ALIGN));

        self.scan_bus(secondary, depth + 1);

        let subordinate = (self.next_bus - 1) as u8;
        ecam.write32(bdf, BUS_NUMBERS, bus_numbers(subordinate));

        let mem_end = self.mem32.as_mut().map(|w| w.align_to(BRIDGE_WINDOW_ALIGN));
        let pref_end = self.mem64.as_mut().map(|w| w.align_to(BRIDGE_WINDOW_ALIGN));
        let mem_window = match (mem_start, mem_end) {
            (Some(s), Some(e)) if e > s => Some((s, e - 1)),
            _ => None,
        };
        let pref_window = match (pref_start, pref_end) {
            (Some(s), Some(e)) if e > s => Some((s, e - 1)),
            _ => None,
        };
        match mem_window {
            Some((s, e)) => {
                let value = (((s >> 16) & 0xfff0) as u32) | ((((e >> 16) & 0xfff0) as u32) << 16);
                ecam.write32(bdf, MEM_BASE_LIMIT, value);
            }
            None => ecam.write32(bdf, MEM_BASE_LIMIT, 0x0000_fff0),
        }
        match pref_window {
            Some((s, e)) => {
                // The low nibble is read-only: 1 for a 64-bit window.
                let addr64 = ecam.read16(bdf, PREF_BASE_LIMIT) & 0xf == 1;
                if !addr64 && e >> 32 != 0 {
                    self.problems.push(format!(
                        "{bdf}: prefetchable window 0x{s:x}..=0x{e:x} needs 64-bit addressing, \
                         which the bridge lacks"
                    ));
                }
                let value = ((s >> 16) & 0xfff0) as u32 | ((((e >> 16) & 0xfff0) as u32) << 16);
                ecam.write32(bdf, PREF_BASE_LIMIT, value);
                if addr64 {
                    ecam.write32(bdf, PREF_BASE_UPPER, (s >> 32) as u32);
                    ecam.write32(bdf, PREF_LIMIT_UPPER, (e >> 32) as u32);
                }
            }
            None => {
                ecam.write32(bdf, PREF_BASE_LIMIT, 0x0000_fff0);
                ecam.write32(bdf, PREF_BASE_UPPER, u32::MAX);
                ecam.write32(bdf, PREF_LIMIT_UPPER, 0);
            }
        }
        Some(Bridge {
            secondary,
            subordinate,
            mem_window,
            pref_window,
        })
    }
}
