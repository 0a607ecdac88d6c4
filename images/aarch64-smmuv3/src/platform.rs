//! What the image needs from the device tree: RAM, the PL011 console, the
//! SMMUv3 and the generic ECAM PCIe host bridge.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::fdt::{Fdt, FdtError, Node};
use crate::frames::PhysRange;

/// A region of MMIO registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}..0x{:x}", self.base, self.end())
    }
}

/// An interrupt as the GIC numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// GIC interrupt ID (SPI n = 32 + n, PPI n = 16 + n).
    pub intid: u32,
    /// Trigger flags cell (1 = edge rising, 4 = level high).
    pub flags: u32,
}

/// The SMMUv3 node.
#[derive(Clone, Debug)]
pub struct SmmuNode {
    /// Register region (two 64 KiB pages on SMMUv3).
    pub regs: Region,
    /// Interrupts by name (`eventq`, `priq`, `cmdq-sync`, `gerror`).
    pub interrupts: Vec<(String, Interrupt)>,
    /// `dma-coherent` is present: the SMMU snoops CPU caches.
    pub dma_coherent: bool,
    /// The node's phandle (what `iommu-map` refers to).
    pub phandle: Option<u32>,
}

impl SmmuNode {
    /// The interrupt called `name`.
    pub fn interrupt(&self, name: &str) -> Option<Interrupt> {
        self.interrupts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i)
    }
}

/// Kind of a PCI address space in `ranges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciSpace {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Mem32,
    /// 64-bit memory space.
    Mem64,
}

/// One entry of the host bridge's `ranges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// Address space.
    pub space: PciSpace,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Address on the PCI side.
    pub pci_base: u64,
    /// Address on the CPU side.
    pub cpu_base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl PciWindow {
    /// The CPU-side region.
    pub fn cpu_region(&self) -> Region {
        Region {
            base: self.cpu_base,
            size: self.size,
        }
    }
}

/// One entry of `iommu-map`: requester IDs `rid_base..rid_base + length`
/// map to stream IDs `sid_base..` of the IOMMU `iommu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapEntry {
    /// First requester ID.
    pub rid_base: u32,
    /// Phandle of the IOMMU.
    pub iommu: u32,
    /// Stream ID of `rid_base`.
    pub sid_base: u32,
    /// Number of IDs.
    pub length: u32,
}

/// The `pci-host-ecam-generic` node.
#[derive(Clone, Debug)]
pub struct PciHost {
    /// ECAM region (config space of `bus_start` at its base).
    pub ecam: Region,
    /// First bus number (`bus-range`).
    pub bus_start: u8,
    /// Last bus number, limited by `bus-range` and the size of the ECAM.
    pub bus_end: u8,
    /// Address windows from `ranges`.
    pub windows: Vec<PciWindow>,
    /// `iommu-map` entries.
    pub iommu_map: Vec<IommuMapEntry>,
    /// `iommu-map-mask` (all ones when absent).
    pub iommu_map_mask: u32,
    /// `dma-coherent` is present.
    pub dma_coherent: bool,
}

impl PciHost {
    /// The stream ID that requester ID `rid` has at the IOMMU `iommu`.
    pub fn stream_id(&self, rid: u16, iommu: u32) -> Option<u32> {
        let rid = u32::from(rid) & self.iommu_map_mask;
        self.iommu_map.iter().find_map(|e| {
            let offset = rid.checked_sub(e.rid_base)?;
            (e.iommu == iommu && offset < e.length).then(|| e.sid_base.wrapping_add(offset))
        })
    }
}

/// Where the console UART was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartSource {
    /// Through `/chosen/stdout-path`.
    StdoutPath,
    /// The first enabled `arm,pl011` node.
    Compatible,
}

/// The platform description taken from the device tree.
pub struct Platform<'a> {
    /// The blob.
    pub fdt: Fdt<'a>,
    /// RAM banks from `/memory` nodes.
    pub ram: Vec<PhysRange>,
    /// Entries of the memory reservation block.
    pub reserved: Vec<PhysRange>,
    /// The PL011 console.
    pub uart: Option<(Region, UartSource)>,
    /// The SMMUv3.
    pub smmu: Option<SmmuNode>,
    /// The PCIe host bridge.
    pub pci: Option<PciHost>,
    /// `/chosen/bootargs` (QEMU's `-append`).
    pub bootargs: &'a str,
}

/// Why the device tree could not be used.
#[derive(Clone, Debug)]
pub enum PlatformError {
    /// The blob is malformed.
    Fdt(FdtError),
    /// Something required is missing or unusable.
    Missing(&'static str),
}

impl From<FdtError> for PlatformError {
    fn from(e: FdtError) -> Self {
        Self::Fdt(e)
    }
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fdt(e) => write!(f, "device tree: {e}"),
            Self::Missing(what) => write!(f, "device tree: {what}"),
        }
    }
}

type Result<T> = core::result::Result<T, PlatformError>;

impl<'a> Platform<'a> {
    /// Extracts the platform description from `fdt`.
    pub fn from_fdt(fdt: Fdt<'a>) -> Result<Self> {
        let mut ram = Vec::new();
        let mut it = fdt.nodes();
        while let Some(node) = it.next_node()? {
            let is_memory = node
                .property("device_type")?
                .is_some_and(|p| p.as_str().ok() == Some("memory"));
            if !is_memory || !node.is_enabled()? {
                continue;
            }
            let mut n = 0;
            while let Some((base, size)) = node.reg(n)? {
                if size != 0 {
                    let end = base
                        .checked_add(size)
                        .ok_or(PlatformError::Missing("memory range overflows"))?;
                    ram.push(PhysRange { start: base, end });
                }
                n += 1;
            }
        }
        if ram.is_empty() {
            return Err(PlatformError::Missing("no /memory node"));
        }
        let mut reserved = Vec::new();
        fdt.for_each_reservation(|addr, size| {
            reserved.push(PhysRange {
                start: addr,
                end: addr.saturating_add(size),
            })
        })?;
        let bootargs = match fdt.find_path("/chosen")? {
            Some(chosen) => match chosen.property("bootargs")? {
                Some(p) => p.as_str()?,
                None => "",
            },
            None => "",
        };
        Ok(Self {
            fdt,
            ram,
            reserved,
            uart: find_uart(&fdt)?,
            smmu: find_smmu(&fdt)?,
            pci: find_pci(&fdt)?,
            bootargs,
        })
    }
}

fn first_reg(node: &Node<'_>, what: &'static str) -> Result<Region> {
    let (base, size) = node.reg(0)?.ok_or(PlatformError::Missing(what))?;
    if size == 0 || base.checked_add(size).is_none() {
        return Err(PlatformError::Missing(what));
    }
    Ok(Region { base, size })
}

fn find_uart(fdt: &Fdt<'_>) -> Result<Option<(Region, UartSource)>> {
    if let Some(chosen) = fdt.find_path("/chosen")? {
        if let Some(p) = chosen.property("stdout-path")? {
            let spec = p.as_str()?;
            // "path-or-alias[:options]"
            let name = spec.split(':').next().unwrap_or(spec);
            let path = if name.starts_with('/') {
                Some(name)
            } else {
                fdt.alias(name)?
            };
            if let Some(path) = path {
                if let Some(node) = fdt.find_path(path)? {
                    if node.is_compatible("arm,pl011")? && node.is_enabled()? {
                        return Ok(Some((
                            first_reg(&node, "PL011 reg")?,
                            UartSource::StdoutPath,
                        )));
                    }
                }
            }
        }
    }
    match fdt.find_compatible("arm,pl011")? {
        Some(node) => Ok(Some((
            first_reg(&node, "PL011 reg")?,
            UartSource::Compatible,
        ))),
        None => Ok(None),
    }
}

fn find_smmu(fdt: &Fdt<'_>) -> Result<Option<SmmuNode>> {
    let Some(node) = fdt.find_compatible("arm,smmu-v3")? else {
        return Ok(None);
    };
    let regs = first_reg(&node, "SMMUv3 reg")?;
    let mut interrupts = Vec::new();
    if let Some(p) = node.property("interrupts")? {
        let parent = node.interrupt_parent().ok_or(PlatformError::Missing(
            "SMMUv3 has interrupts but no interrupt-parent",
        ))?;
        let controller = fdt
            .find_phandle(parent)?
            .ok_or(PlatformError::Missing("SMMUv3 interrupt-parent not found"))?;
        let cells = controller
            .property("#interrupt-cells")?
            .ok_or(PlatformError::Missing(
                "interrupt controller without #interrupt-cells",
            ))?
            .as_u32()?;
        let gic = controller.is_compatible("arm,cortex-a15-gic")?
            || controller.is_compatible("arm,gic-400")?
            || controller.is_compatible("arm,gic-v3")?;
        if cells != 3 || !gic {
            return Err(PlatformError::Missing(
                "SMMUv3 interrupt parent is not a GIC with 3 cells",
            ));
        }
        let names: Vec<String> = match node.property("interrupt-names")? {
            Some(n) => n
                .strings()
                .map(|s| String::from(core::str::from_utf8(s).unwrap_or("?")))
                .collect(),
            None => Vec::new(),
        };
        let mut c = p.cells()?;
        let mut index = 0usize;
        while !c.is_empty() {
            let kind = c.next_u32()?;
            let number = c.next_u32()?;
            let flags = c.next_u32()?;
            let intid = match kind {
                0 => number.checked_add(32),
                1 => number.checked_add(16),
                _ => None,
            }
            .ok_or(PlatformError::Missing("SMMUv3 interrupt of unknown type"))?;
            let name = names
                .get(index)
                .cloned()
                .unwrap_or_else(|| alloc::format!("irq{index}"));
            interrupts.push((name, Interrupt { intid, flags }));
            index += 1;
        }
    }
    Ok(Some(SmmuNode {
        regs,
        interrupts,
        dma_coherent: node.has_property("dma-coherent")?,
        phandle: node.phandle()?,
    }))
}

fn find_pci(fdt: &Fdt<'_>) -> Result<Option<PciHost>> {
    let Some(node) = fdt.find_compatible("pci-host-ecam-generic")? else {
        return Ok(None);
    };
    let ecam = first_reg(&node, "PCIe ECAM reg")?;
    let (mut bus_start, mut bus_end) = (0u32, 255u32);
    if let Some(p) = node.property("bus-range")? {
        let mut c = p.cells()?;
        bus_start = c.next_u32()?;
        bus_end = c.next_u32()?;
    }
    // 1 MiB of ECAM per bus.
    let ecam_buses = ecam.size >> 20;
    if ecam_buses == 0 || bus_start > bus_end || bus_end > 255 {
        return Err(PlatformError::Missing(
            "PCIe bus-range / ECAM size unusable",
        ));
    }
    let bus_end = bus_end.min(bus_start + u32::try_from(ecam_buses - 1).unwrap_or(255));
    let (bus_start, bus_end) = (
        u8::try_from(bus_start).map_err(|_| PlatformError::Missing("PCIe bus-range"))?,
        u8::try_from(bus_end.min(255)).map_err(|_| PlatformError::Missing("PCIe bus-range"))?,
    );

    let mut windows = Vec::new();
    if let Some(p) = node.property("ranges")? {
        if node.address_cells() != 3 {
            return Err(PlatformError::Missing("PCIe host #address-cells is not 3"));
        }
        let parent_ac = node.parent_address_cells();
        let sc = node.size_cells();
        let mut c = p.cells()?;
        while !c.is_empty() {
            let hi = c.next_u32()?;
            let pci_base = c.next_value(2)?;
            let cpu_base = c.next_value(parent_ac)?;
            let size = c.next_value(sc)?;
            let space = match (hi >> 24) & 3 {
                1 => PciSpace::Io,
                2 => PciSpace::Mem32,
                3 => PciSpace::Mem64,
                _ => continue,
            };
            if size == 0
                || cpu_base.checked_add(size).is_none()
                || pci_base.checked_add(size).is_none()
            {
                return Err(PlatformError::Missing("PCIe range overflows"));
            }
            windows.push(PciWindow {
                space,
                prefetchable: hi & (1 << 30) != 0,
                pci_base,
                cpu_base,
                size,
            });
        }
    }

    let mut iommu_map = Vec::new();
    if let Some(p) = node.property("iommu-map")? {
        let mut c = p.cells()?;
        while !c.is_empty() {
            let rid_base = c.next_u32()?;
            let iommu = c.next_u32()?;
            let iommu_node = fdt.find_phandle(iommu)?.ok_or(PlatformError::Missing(
                "iommu-map refers to an unknown phandle",
            ))?;
            let iommu_cells = match iommu_node.property("#iommu-cells")? {
                Some(p) => p.as_u32()?,
                None => return Err(PlatformError::Missing("IOMMU without #iommu-cells")),
            };
            if iommu_cells != 1 {
                return Err(PlatformError::Missing(
                    "iommu-map with #iommu-cells other than 1",
                ));
            }
            let sid_base = c.next_u32()?;
            let length = c.next_u32()?;
            iommu_map.push(IommuMapEntry {
                rid_base,
                iommu,
                sid_base,
                length,
            });
        }
    }
    let iommu_map_mask = match node.property("iommu-map-mask")? {
        Some(p) => p.as_u32()?,
        None => u32::MAX,
    };
    Ok(Some(PciHost {
        ecam,
        bus_start,
        bus_end,
        windows,
        iommu_map,
        iommu_map_mask,
        dma_coherent: node.has_property("dma-coherent")?,
    }))
}
