//! The scenario list, and the scenarios that need no IOMMU driver: for
//! those the SMMU is as reset left it (SMMUEN = 0), where QEMU lets DMA
//! bypass translation. The SMMUv3 scenarios are in `smmu_scenarios`; each
//! turns translation off again when it ends.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::edu::{self, EduError};
use crate::fdt::{Fdt, FdtError};
use crate::frames::DmaBuffer;
use crate::harness::{Context, EduDevice, Scenario, Verdict};
use crate::pci::BarKind;
use crate::platform::Platform;
use crate::smmu_scenarios;

/// The scenarios, in the order they run.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "pcie-enumeration",
        run: pcie_enumeration,
    },
    Scenario {
        name: "edu-dma-untranslated",
        run: edu_dma_untranslated,
    },
    Scenario {
        name: "smmu-translated-dma",
        run: smmu_scenarios::translated_dma,
    },
    Scenario {
        name: "smmu-fault-translation",
        run: smmu_scenarios::fault_translation,
    },
    Scenario {
        name: "smmu-fault-permission",
        run: smmu_scenarios::fault_permission,
    },
    Scenario {
        name: "smmu-unmap-invalidates",
        run: smmu_scenarios::unmap_invalidates,
    },
    Scenario {
        name: "smmu-abort-ste",
        run: smmu_scenarios::abort_ste,
    },
    Scenario {
        name: "smmu-bypass-ste",
        run: smmu_scenarios::bypass_ste,
    },
    Scenario {
        name: "smmu-invalid-ste",
        run: smmu_scenarios::invalid_ste,
    },
    Scenario {
        name: "smmu-isolation",
        run: smmu_scenarios::isolation,
    },
    Scenario {
        name: "smmu-event-flood",
        run: smmu_scenarios::event_flood,
    },
    Scenario {
        name: "smmu-domain-lifecycle",
        run: smmu_scenarios::domain_lifecycle,
    },
    Scenario {
        name: "smmu-command-error",
        run: smmu_scenarios::command_error,
    },
    // Last of the SMMU scenarios: once a two-level stream table was
    // configured, QEMU treats every later table as two-level (smmu_rig).
    Scenario {
        name: "smmu-default-config",
        run: smmu_scenarios::default_config,
    },
    Scenario {
        name: "dtb-parser-robustness",
        run: dtb_parser_robustness,
    },
];

/// A deterministic byte stream (xorshift32).
pub(crate) struct Pattern(u32);

impl Pattern {
    pub(crate) fn new(seed: u32) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    pub(crate) fn next_u8(&mut self) -> u8 {
        (self.next_u32() >> 24) as u8
    }
}

/// The PCIe hierarchy was enumerated without problems, assigned BARs do not
/// overlap and lie inside the windows of the bridges above them, and at
/// least one edu device answers through its BAR.
fn pcie_enumeration(ctx: &mut Context<'_>) -> Verdict {
    let topo = ctx.pci;
    if let Some(first) = topo.problems.first() {
        return Err(format!(
            "{} enumeration problem(s), first: {first}",
            topo.problems.len()
        ));
    }

    // (cpu start, end, owner) of every assigned memory BAR.
    let mut ranges: Vec<(u64, u64, String)> = Vec::new();
    for f in &topo.functions {
        for b in &f.bars {
            if b.kind == BarKind::Io {
                continue;
            }
            let cpu = b.cpu_addr.ok_or_else(|| {
                format!(
                    "{} BAR{} (0x{:x} bytes) not assigned",
                    f.bdf, b.index, b.size
                )
            })?;
            ranges.push((cpu, cpu + b.size, format!("{} BAR{}", f.bdf, b.index)));
        }
    }
    ranges.sort_by_key(|r| r.0);
    for pair in ranges.windows(2) {
        if let [a, b] = pair {
            if b.0 < a.1 {
                return Err(format!("{} overlaps {}", a.2, b.2));
            }
        }
    }

    // Everything below a bridge decodes inside the bridge's windows.
    for bridge_fn in &topo.functions {
        let Some(bridge) = bridge_fn.bridge else {
            continue;
        };
        for f in &topo.functions {
            if f.bdf.bus < bridge.secondary || f.bdf.bus > bridge.subordinate {
                continue;
            }
            for b in f.bars.iter().filter(|b| b.kind != BarKind::Io) {
                let Some(pci) = b.pci_addr else { continue };
                let end = pci + b.size - 1;
                let inside = |w: Option<(u64, u64)>| w.is_some_and(|(s, e)| pci >= s && end <= e);
                if !inside(bridge.mem_window) && !inside(bridge.pref_window) {
                    return Err(format!(
                        "{} BAR{} at bus address 0x{pci:x} is outside the windows of bridge {}",
                        f.bdf, b.index, bridge_fn.bdf
                    ));
                }
            }
        }
    }

    if ctx.edus.is_empty() {
        return Err(format!(
            "no edu device ({:04x}:{:04x}) among {} PCI functions",
            edu::VENDOR_ID,
            edu::DEVICE_ID,
            topo.functions.len()
        ));
    }
    for dev in &ctx.edus {
        let ident = dev.edu.identification();
        if ident & 0xff != 0xed {
            return Err(format!(
                "{}: identification register reads 0x{ident:08x} through BAR0 at 0x{:x}",
                dev.bdf, dev.bar0_phys
            ));
        }
        let probe = 0x5a5a_0000 | u32::from(dev.requester_id);
        if !dev.edu.liveness_ok(probe) {
            return Err(format!(
                "{}: liveness register does not invert 0x{probe:08x}",
                dev.bdf
            ));
        }
        if !ctx.pci_host.iommu_map.is_empty() && ctx.smmu.is_some() && dev.stream_id.is_none() {
            return Err(format!(
                "{}: requester ID 0x{:04x} has no stream ID in iommu-map",
                dev.bdf, dev.requester_id
            ));
        }
        crate::println!(
            "  edu {} version {}.{} BAR0 0x{:x} requester-id 0x{:04x} stream-id {}",
            dev.bdf,
            ident >> 24,
            (ident >> 16) & 0xff,
            dev.bar0_phys,
            dev.requester_id,
            dev.stream_id
                .map_or(String::from("none"), |s| format!("0x{s:04x}"))
        );
    }
    let bridges = topo.functions.iter().filter(|f| f.bridge.is_some()).count();
    let mut buses: Vec<u8> = topo.functions.iter().map(|f| f.bdf.bus).collect();
    buses.sort_unstable();
    buses.dedup();
    crate::println!(
        "  {} functions ({bridges} bridges) on {} bus(es), {} edu device(s), {} memory BARs",
        topo.functions.len(),
        buses.len(),
        ctx.edus.len(),
        ranges.len()
    );
    Ok(())
}

/// DMA RAM -> edu -> RAM through every edu device with the SMMU bypassing
/// translation, checking the data that comes back.
fn edu_dma_untranslated(ctx: &mut Context<'_>) -> Verdict {
    if ctx.edus.is_empty() {
        return Err(String::from("no edu device found"));
    }
    if let Some(smmu) = &ctx.smmu {
        let cr0 = smmu.regs.read32(0x20);
        if cr0 & 1 != 0 {
            return Err(format!(
                "the SMMU translates (SMMU_CR0 = 0x{cr0:x}), bypass not available"
            ));
        }
        let gbpa = smmu.regs.read32(0x44);
        if gbpa & (1 << 20) != 0 {
            return Err(format!(
                "SMMU_GBPA.ABORT is set (0x{gbpa:x}): bypassing DMA would be aborted"
            ));
        }
        crate::println!(
            "  SMMU_CR0 0x{cr0:x} (SMMUEN=0), SMMU_GBPA 0x{gbpa:x}: DMA bypasses the SMMU"
        );
    }
    let devices = ctx.edus.clone();
    for (i, dev) in devices.iter().enumerate() {
        let seed = (u32::from(dev.requester_id) << 8) | i as u32;
        // The longest transfer the device accepts, then a short one at odd
        // offsets on both sides.
        round_trip(ctx, dev, 0, 0, edu::MAX_TRANSFER as usize, seed)?;
        round_trip(ctx, dev, 0x3a1, 0x123, 0x2c9, seed ^ 0x00ff_ff00)?;
    }
    Ok(())
}

fn round_trip(
    ctx: &mut Context<'_>,
    dev: &EduDevice,
    ram_offset: usize,
    edu_offset: u64,
    len: usize,
    seed: u32,
) -> Verdict {
    let total = ram_offset + len + 64;
    let alloc = |ctx: &mut Context<'_>| ctx.frames.alloc_dma(total).map_err(|e| format!("{e}"));
    let mut src = alloc(ctx)?;
    let mut dst = alloc(ctx)?;
    let mut pattern = Pattern::new(seed);
    let expected: Vec<u8> = (0..len).map(|_| pattern.next_u8()).collect();
    let src_bytes = src.as_mut_slice();
    src_bytes.fill(0xee);
    src_bytes
        .get_mut(ram_offset..ram_offset + len)
        .ok_or("buffer too small")?
        .copy_from_slice(&expected);
    // Fill the destination with the complement so that bytes the device did
    // not write are recognisable.
    for (d, e) in dst
        .as_mut_slice()
        .iter_mut()
        .skip(ram_offset)
        .zip(&expected)
    {
        *d = !e;
    }
    src.sync_for_device();
    dst.sync_for_device();

    let clock = ctx.clock;
    let edu_addr = edu::BUFFER_ADDR + edu_offset;
    let len64 = len as u64;
    let src_bus = src.phys() + ram_offset as u64;
    let dst_bus = dst.phys() + ram_offset as u64;
    dev.edu
        .dma_to_device(&clock, src_bus, edu_addr, len64, edu::DMA_TIMEOUT_US)
        .map_err(|e| dma_error(dev, "RAM -> edu", e))?;
    dev.edu
        .dma_from_device(&clock, edu_addr, dst_bus, len64, edu::DMA_TIMEOUT_US)
        .map_err(|e| dma_error(dev, "edu -> RAM", e))?;
    dst.sync_for_cpu();
    check(dev, &dst, ram_offset, &expected)?;
    crate::println!(
        "  {}: {len} bytes RAM 0x{src_bus:x} -> edu 0x{edu_addr:x} -> RAM 0x{dst_bus:x}: data matches",
        dev.bdf
    );
    Ok(())
}

fn dma_error(dev: &EduDevice, what: &str, e: EduError) -> String {
    format!("{} {what}: {e}", dev.bdf)
}

fn check(dev: &EduDevice, dst: &DmaBuffer, ram_offset: usize, expected: &[u8]) -> Verdict {
    let bytes = dst.as_slice();
    let got = bytes
        .get(ram_offset..ram_offset + expected.len())
        .ok_or("buffer too small")?;
    let differing = got.iter().zip(expected).filter(|(g, e)| g != e).count();
    if let Some(i) = got.iter().zip(expected).position(|(g, e)| g != e) {
        let untouched = got.iter().zip(expected).all(|(g, e)| *g == !*e);
        let hint = if untouched {
            " (nothing arrived: edu masks DMA addresses with its dma_mask, 28 bits by default; \
             start it with -device edu,dma_mask=0xffffffffffffffff)"
        } else {
            ""
        };
        return Err(format!(
            "{}: {differing} of {} bytes differ, first at offset {i}: expected 0x{:02x}, read 0x{:02x}{hint}",
            dev.bdf,
            expected.len(),
            expected.get(i).copied().unwrap_or(0),
            got.get(i).copied().unwrap_or(0),
        ));
    }
    // Nothing was written past the end of the transfer.
    let after = bytes.get(ram_offset + expected.len()..).unwrap_or(&[]);
    if let Some(i) = after.iter().position(|&b| b != 0) {
        return Err(format!(
            "{}: DMA wrote past the end of the transfer (offset +{i})",
            dev.bdf
        ));
    }
    Ok(())
}

/// Counts what the parser makes of a blob; errors are fine, panics are not
/// (a panic ends the run).
fn exercise(data: &[u8]) -> Result<usize, FdtError> {
    let fdt = Fdt::new(data)?;
    let mut nodes = 0usize;
    let mut it = fdt.nodes();
    while let Some(node) = it.next_node()? {
        nodes += 1;
        node.for_each_property(|p| {
            let _ = p.as_u32();
            let _ = p.as_str();
            let _ = p.strings().count();
            Ok(())
        })?;
        let mut n = 0;
        while node.reg(n)?.is_some() && n < 64 {
            n += 1;
        }
        let _ = node.is_compatible("arm,pl011")?;
        let _ = node.phandle()?;
        let _ = node.is_enabled()?;
    }
    fdt.for_each_reservation(|_, _| {})?;
    let _ = fdt.find_path("/chosen")?;
    let _ = fdt.alias("serial0")?;
    let _ = Platform::from_fdt(fdt);
    Ok(nodes)
}

fn header_word(data: &[u8], index: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = data.get(index * 4..index * 4 + 4) {
        b.copy_from_slice(src);
    }
    u32::from_be_bytes(b)
}

fn set_header_word(data: &mut [u8], index: usize, value: u32) {
    if let Some(dst) = data.get_mut(index * 4..index * 4 + 4) {
        dst.copy_from_slice(&value.to_be_bytes());
    }
}

/// The device tree parser returns errors, without panicking, on truncated
/// and corrupted copies of the blob QEMU passed.
fn dtb_parser_robustness(ctx: &mut Context<'_>) -> Verdict {
    let original = ctx.fdt.as_bytes();
    let reference =
        exercise(original).map_err(|e| format!("the original blob does not parse: {e}"))?;
    // The part of the blob in use: header, reservations, structure, strings.
    let used = [(2, 9), (3, 8)]
        .iter()
        .map(|&(off, size)| {
            header_word(original, off) as usize + header_word(original, size) as usize
        })
        .max()
        .unwrap_or(0)
        .min(original.len());
    let mut copy = ctx
        .frames
        .alloc_dma(original.len())
        .map_err(|e| format!("{e}"))?;
    let buf = copy.as_mut_slice();
    buf.copy_from_slice(original);
    if exercise(buf) != Ok(reference) {
        return Err(String::from("a copy of the blob parses differently"));
    }
    let (mut parsed, mut rejected) = (0usize, 0usize);
    let mut tally = |r: Result<usize, FdtError>| match r {
        Ok(_) => parsed += 1,
        Err(_) => rejected += 1,
    };

    // Truncated buffers (header unchanged): always an error.
    let step = (used / 256).max(1);
    for cut in (0..used).step_by(step).chain(0..64) {
        let r = exercise(buf.get(..cut).unwrap_or(&[]));
        if r.is_ok() {
            return Err(format!("a blob cut to {cut} bytes was accepted"));
        }
        tally(r);
    }
    // Truncated blobs whose totalsize says so.
    let totalsize = header_word(buf, 1);
    for cut in (0..used).step_by(step) {
        set_header_word(buf, 1, cut as u32);
        tally(exercise(buf.get(..cut).unwrap_or(&[])));
    }
    set_header_word(buf, 1, totalsize);

    // Random header fields.
    let mut rng = Pattern::new(0x1234_5678);
    for field in 0..10 {
        let saved = header_word(buf, field);
        for _ in 0..40 {
            let v = match rng.next_u32() % 4 {
                0 => rng.next_u32(),
                1 => rng.next_u32() % (used as u32 + 64),
                2 => saved.wrapping_add(rng.next_u32() % 16).wrapping_sub(8),
                _ => u32::MAX - rng.next_u32() % 16,
            };
            set_header_word(buf, field, v);
            tally(exercise(buf));
        }
        set_header_word(buf, field, saved);
    }

    // Random bytes and big-endian words in the structure and strings blocks.
    let start = 40;
    let span = (used - start.min(used)).max(1);
    for round in 0..1500 {
        let offset = start + rng.next_u32() as usize % span;
        let width = if round % 2 == 0 { 1 } else { 4 };
        let Some(window) = buf.get_mut(offset..offset + width) else {
            continue;
        };
        let mut saved = [0u8; 4];
        saved[..width].copy_from_slice(window);
        if width == 1 {
            window.fill(rng.next_u8());
        } else {
            let v = match rng.next_u32() % 3 {
                0 => rng.next_u32() % 10,
                1 => rng.next_u32(),
                _ => u32::MAX - rng.next_u32() % 64,
            };
            window.copy_from_slice(&v.to_be_bytes());
        }
        tally(exercise(buf));
        if let Some(window) = buf.get_mut(offset..offset + width) {
            window.copy_from_slice(&saved[..width]);
        }
    }
    if exercise(buf) != Ok(reference) {
        return Err(String::from("the restored copy parses differently"));
    }
    crate::println!(
        "  {} corrupted or truncated blobs: {parsed} parsed, {rejected} rejected with an error, no panic",
        parsed + rejected
    );
    Ok(())
}

/// A scenario that always fails, added with `-append inject=fail` to check
/// that a failure reaches QEMU's exit status.
pub const INJECTED_FAILURE: Scenario = Scenario {
    name: "injected-failure",
    run: |_| Err(String::from("failure requested with inject=fail")),
};
