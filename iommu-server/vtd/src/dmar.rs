//! ACPI DMA Remapping Reporting table (DMAR, VT-d spec chapter 8) parsed from untrusted
//! bytes.
//!
//! The table is a standard 36-byte ACPI header (§8.1), host address width, flags and
//! reserved bytes up to offset 48, then remapping structures, each starting with a 16-bit
//! type and a 16-bit length (§8.2). Every length is checked against the bytes present;
//! nothing here panics on malformed input, and unknown structure types are skipped by
//! their length (their type and length are kept for diagnostics).

use alloc::vec::Vec;

/// DMAR table errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarError {
    /// Fewer bytes than the fixed 48-byte header.
    TooShort,
    /// The signature is not "DMAR".
    BadSignature,
    /// The header's length field is smaller than the header or larger than the buffer.
    BadLength {
        /// Length field of the ACPI header.
        declared: u32,
        /// Bytes supplied.
        available: usize,
    },
    /// The bytes of the table do not sum to zero.
    BadChecksum,
    /// A remapping structure's length is below its fixed part or runs past the table.
    BadStructureLength {
        /// Offset of the structure in the table.
        offset: usize,
    },
    /// A device scope entry's length is below 6, odd-sized path, or runs past its
    /// structure.
    BadScopeLength {
        /// Offset of the scope entry in the table.
        offset: usize,
    },
    /// The host address width is outside what VT-d allows.
    BadHostAddressWidth(u8),
    /// A device scope path element names a device above 31 or a function above 7.
    BadPath,
    /// A device scope has an empty path.
    EmptyPath,
}

impl From<DmarError> for crate::error::Error {
    fn from(e: DmarError) -> Self {
        crate::error::Error::Dmar(e)
    }
}

/// DMAR flags (§8.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmarFlags {
    /// INTR_REMAP (bit 0): the platform supports interrupt remapping.
    pub intr_remap: bool,
    /// X2APIC_OPT_OUT (bit 1): firmware asks the OS not to enable x2APIC mode.
    pub x2apic_opt_out: bool,
    /// DMA_CTRL_PLATFORM_OPT_IN (bit 2): firmware set up DMA protection and the OS may
    /// rely on it to protect against early DMA.
    pub dma_ctrl_platform_opt_in: bool,
}

/// DMAR flags bit 0.
pub const DMAR_INTR_REMAP: u8 = 1 << 0;
/// DMAR flags bit 1.
pub const DMAR_X2APIC_OPT_OUT: u8 = 1 << 1;
/// DMAR flags bit 2.
pub const DMAR_DMA_CTRL_PLATFORM_OPT_IN: u8 = 1 << 2;

/// Remapping structure type 0: DMA remapping hardware unit definition (§8.3).
pub const TYPE_DRHD: u16 = 0;
/// Type 1: reserved memory region reporting (§8.4).
pub const TYPE_RMRR: u16 = 1;
/// Type 2: root port ATS capability reporting (§8.5).
pub const TYPE_ATSR: u16 = 2;
/// Type 3: remapping hardware static affinity (§8.6).
pub const TYPE_RHSA: u16 = 3;
/// Type 4: ACPI name-space device declaration (§8.7).
pub const TYPE_ANDD: u16 = 4;
/// Type 5: SoC integrated address translation cache (§8.8).
pub const TYPE_SATC: u16 = 5;

/// DRHD flags bit 0: the unit covers every PCI device of its segment not claimed by
/// another DRHD.
pub const DRHD_INCLUDE_PCI_ALL: u8 = 1 << 0;
/// ATSR flags bit 0: every root port of the segment supports ATS.
pub const ATSR_ALL_PORTS: u8 = 1 << 0;
/// SATC flags bit 0: devices must have ATS enabled.
pub const SATC_ATC_REQUIRED: u8 = 1 << 0;

/// Kind of a device scope entry (§8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    /// 1: PCI endpoint device.
    PciEndpoint,
    /// 2: PCI sub-hierarchy (a bridge and everything below it).
    PciSubHierarchy,
    /// 3: I/O APIC (enumeration id = APIC id).
    IoApic,
    /// 4: HPET (enumeration id = HPET number).
    Hpet,
    /// 5: ACPI name-space device (enumeration id = ANDD device number).
    AcpiNamespace,
    /// Any other value.
    Unknown(u8),
}

impl ScopeKind {
    /// Decode the type byte.
    pub const fn from_raw(v: u8) -> Self {
        match v {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::Hpet,
            5 => Self::AcpiNamespace,
            x => Self::Unknown(x),
        }
    }
}

/// One element of a device scope path: a device and function on the current bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathElement {
    /// PCI device number.
    pub device: u8,
    /// PCI function number.
    pub function: u8,
}

/// A device scope entry (§8.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    /// Entry type.
    pub kind: ScopeKind,
    /// Flags byte (offset 2; newer revisions define REQ_WO_PASID bits).
    pub flags: u8,
    /// Enumeration id (APIC id, HPET number or ANDD device number).
    pub enumeration_id: u8,
    /// Bus number of the first path element.
    pub start_bus: u8,
    /// Path from the start bus down to the device.
    pub path: Vec<PathElement>,
}

/// A PCI bus/device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device (0..=31).
    pub device: u8,
    /// Function (0..=7).
    pub function: u8,
}

impl Bdf {
    /// A BDF; `None` if device or function is out of range.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Self {
            bus,
            device,
            function,
        })
    }

    /// The 16-bit requester ID (source-id): bus `[15:8]`, device `[7:3]`, function `[2:0]`.
    pub const fn requester_id(&self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16) << 3 | self.function as u16
    }

    /// devfn byte (device `[7:3]`, function `[2:0]`).
    pub const fn devfn(&self) -> u8 {
        self.device << 3 | self.function
    }
}

/// Reads PCI configuration space of a segment, for resolving scope paths through bridges.
pub trait PciConfig {
    /// Read the byte at `offset` of the configuration space of `bdf` in `segment`.
    fn read8(&mut self, segment: u16, bdf: Bdf, offset: u16) -> u8;
}

/// Offset of the secondary bus number in a type-1 (bridge) configuration header.
pub const PCI_SECONDARY_BUS: u16 = 0x19;

impl DeviceScope {
    /// Resolve the scope's path to the device it names (§8.3.1.1): every element but the
    /// last is a bridge whose secondary bus number holds the next element's bus.
    pub fn resolve<C: PciConfig>(&self, segment: u16, cfg: &mut C) -> Result<Bdf, DmarError> {
        let (last, bridges) = self.path.split_last().ok_or(DmarError::EmptyPath)?;
        let mut bus = self.start_bus;
        for e in bridges {
            let bridge = Bdf::new(bus, e.device, e.function).ok_or(DmarError::BadPath)?;
            bus = cfg.read8(segment, bridge, PCI_SECONDARY_BUS);
        }
        Bdf::new(bus, last.device, last.function).ok_or(DmarError::BadPath)
    }
}

/// DMA remapping hardware unit (DRHD, §8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drhd {
    /// Flags byte.
    pub flags: u8,
    /// INCLUDE_PCI_ALL.
    pub include_pci_all: bool,
    /// Register set size: 2^size 4KB pages (0 on tables older than revision 3: one page).
    pub size: u8,
    /// PCI segment.
    pub segment: u16,
    /// Register base address.
    pub register_base: u64,
    /// Devices covered (besides INCLUDE_PCI_ALL).
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    /// Bytes of the register set.
    pub fn register_bytes(&self) -> u64 {
        4096u64 << self.size.min(20)
    }
}

/// Reserved memory region (RMRR, §8.4): memory devices in `scopes` may DMA to before and
/// after the OS takes over (must stay identity-mapped for them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    /// PCI segment.
    pub segment: u16,
    /// First byte (4KB aligned).
    pub base: u64,
    /// Last byte (inclusive; the region ends 4KB aligned).
    pub limit: u64,
    /// Devices using the region.
    pub scopes: Vec<DeviceScope>,
}

/// Root port ATS capability (ATSR, §8.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atsr {
    /// ALL_PORTS.
    pub all_ports: bool,
    /// PCI segment.
    pub segment: u16,
    /// Root ports that support ATS (when not ALL_PORTS).
    pub scopes: Vec<DeviceScope>,
}

/// Remapping hardware static affinity (RHSA, §8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rhsa {
    /// Register base of the DRHD this applies to.
    pub register_base: u64,
    /// Proximity domain.
    pub proximity_domain: u32,
}

/// ACPI name-space device declaration (ANDD, §8.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Andd {
    /// Device number used as enumeration id by ACPI name-space scopes.
    pub device_number: u8,
    /// Object name (bytes up to the terminating NUL, not validated as text).
    pub object_name: Vec<u8>,
}

/// SoC integrated address translation cache (SATC, §8.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Satc {
    /// ATC_REQUIRED.
    pub atc_required: bool,
    /// PCI segment.
    pub segment: u16,
    /// Devices with an integrated ATC.
    pub scopes: Vec<DeviceScope>,
}

/// A structure of an unknown type, skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownStructure {
    /// Structure type.
    pub kind: u16,
    /// Its length.
    pub length: u16,
}

/// A parsed DMAR table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dmar {
    /// ACPI header revision.
    pub revision: u8,
    /// OEM id.
    pub oem_id: [u8; 6],
    /// OEM table id.
    pub oem_table_id: [u8; 8],
    /// Host address width in bits (the table stores width - 1).
    pub host_address_width: u8,
    /// Flags.
    pub flags: DmarFlags,
    /// Raw flags byte.
    pub raw_flags: u8,
    /// Remapping units in table order.
    pub drhds: Vec<Drhd>,
    /// Reserved memory regions.
    pub rmrrs: Vec<Rmrr>,
    /// ATS reporting structures.
    pub atsrs: Vec<Atsr>,
    /// Affinity structures.
    pub rhsas: Vec<Rhsa>,
    /// Name-space devices.
    pub andds: Vec<Andd>,
    /// SATC structures.
    pub satcs: Vec<Satc>,
    /// Structures of unknown type that were skipped.
    pub unknown: Vec<UnknownStructure>,
}

/// Size of the DMAR header including HAW, flags and reserved bytes.
pub const DMAR_HEADER_LEN: usize = 48;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parse device scope entries in `table[start..end]`.
fn parse_scopes(table: &[u8], start: usize, end: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut out = Vec::new();
    let mut o = start;
    while o < end {
        let bad = DmarError::BadScopeLength { offset: o };
        if end - o < 6 {
            return Err(bad);
        }
        let kind = table[o];
        let len = usize::from(table[o + 1]);
        if len < 6 || (len - 6) % 2 != 0 || len > end - o {
            return Err(bad);
        }
        let path = table[o + 6..o + len]
            .chunks_exact(2)
            .map(|p| PathElement {
                device: p[0],
                function: p[1],
            })
            .collect();
        out.push(DeviceScope {
            kind: ScopeKind::from_raw(kind),
            flags: table[o + 2],
            enumeration_id: table[o + 4],
            start_bus: table[o + 5],
            path,
        });
        o += len;
    }
    Ok(out)
}

impl Dmar {
    /// Parse a DMAR table. `bytes` may be longer than the table (the header's length
    /// field decides); the checksum covers exactly that length.
    pub fn parse(bytes: &[u8]) -> Result<Self, DmarError> {
        if bytes.len() < DMAR_HEADER_LEN {
            return Err(DmarError::TooShort);
        }
        if &bytes[0..4] != b"DMAR" {
            return Err(DmarError::BadSignature);
        }
        let declared = u32_at(bytes, 4).ok_or(DmarError::TooShort)?;
        let len = declared as usize;
        if len < DMAR_HEADER_LEN || len > bytes.len() {
            return Err(DmarError::BadLength {
                declared,
                available: bytes.len(),
            });
        }
        let t = &bytes[..len];
        if t.iter().fold(0u8, |a, &b| a.wrapping_add(b)) != 0 {
            return Err(DmarError::BadChecksum);
        }
        let haw = t[36].wrapping_add(1);
        // §8.1: the width is at least 32 bits (and at most 64).
        if !(32..=64).contains(&haw) {
            return Err(DmarError::BadHostAddressWidth(t[36]));
        }
        let raw_flags = t[37];
        let mut d = Dmar {
            revision: t[8],
            oem_id: t[10..16].try_into().unwrap_or_default(),
            oem_table_id: t[16..24].try_into().unwrap_or_default(),
            host_address_width: haw,
            flags: DmarFlags {
                intr_remap: raw_flags & DMAR_INTR_REMAP != 0,
                x2apic_opt_out: raw_flags & DMAR_X2APIC_OPT_OUT != 0,
                dma_ctrl_platform_opt_in: raw_flags & DMAR_DMA_CTRL_PLATFORM_OPT_IN != 0,
            },
            raw_flags,
            ..Dmar::default()
        };
        let mut o = DMAR_HEADER_LEN;
        while o < len {
            let bad = DmarError::BadStructureLength { offset: o };
            let kind = u16_at(t, o).ok_or(bad)?;
            let slen = usize::from(u16_at(t, o + 2).ok_or(bad)?);
            let fixed = match kind {
                TYPE_DRHD => 16,
                TYPE_RMRR => 24,
                TYPE_ATSR | TYPE_SATC => 8,
                TYPE_RHSA => 20,
                TYPE_ANDD => 8,
                _ => 4,
            };
            if slen < fixed || slen > len - o {
                return Err(bad);
            }
            let end = o + slen;
            match kind {
                TYPE_DRHD => d.drhds.push(Drhd {
                    flags: t[o + 4],
                    include_pci_all: t[o + 4] & DRHD_INCLUDE_PCI_ALL != 0,
                    size: t[o + 5],
                    segment: u16_at(t, o + 6).ok_or(bad)?,
                    register_base: u64_at(t, o + 8).ok_or(bad)?,
                    scopes: parse_scopes(t, o + 16, end)?,
                }),
                TYPE_RMRR => d.rmrrs.push(Rmrr {
                    segment: u16_at(t, o + 6).ok_or(bad)?,
                    base: u64_at(t, o + 8).ok_or(bad)?,
                    limit: u64_at(t, o + 16).ok_or(bad)?,
                    scopes: parse_scopes(t, o + 24, end)?,
                }),
                TYPE_ATSR => d.atsrs.push(Atsr {
                    all_ports: t[o + 4] & ATSR_ALL_PORTS != 0,
                    segment: u16_at(t, o + 6).ok_or(bad)?,
                    scopes: parse_scopes(t, o + 8, end)?,
                }),
                TYPE_RHSA => d.rhsas.push(Rhsa {
                    register_base: u64_at(t, o + 8).ok_or(bad)?,
                    proximity_domain: u32_at(t, o + 16).ok_or(bad)?,
                }),
                TYPE_ANDD => {
                    let name = &t[o + 8..end];
                    let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                    d.andds.push(Andd {
                        device_number: t[o + 7],
                        object_name: name[..n].to_vec(),
                    })
                }
                TYPE_SATC => d.satcs.push(Satc {
                    atc_required: t[o + 4] & SATC_ATC_REQUIRED != 0,
                    segment: u16_at(t, o + 6).ok_or(bad)?,
                    scopes: parse_scopes(t, o + 8, end)?,
                }),
                _ => d.unknown.push(UnknownStructure {
                    kind,
                    length: slen as u16,
                }),
            }
            o = end;
        }
        Ok(d)
    }

    /// The DRHD responsible for `bdf` on `segment` (§8.3: a unit listing the device, or a
    /// bridge above it, in its scopes wins over the segment's INCLUDE_PCI_ALL unit).
    pub fn unit_for<C: PciConfig>(&self, segment: u16, bdf: Bdf, cfg: &mut C) -> Option<&Drhd> {
        let explicit = self.drhds.iter().find(|u| {
            u.segment == segment
                && u.scopes
                    .iter()
                    .any(|s| match (s.kind, s.resolve(segment, cfg)) {
                        (ScopeKind::PciEndpoint, Ok(b)) => b == bdf,
                        (ScopeKind::PciSubHierarchy, Ok(b)) => {
                            b == bdf || covers_subtree(segment, b, bdf, cfg)
                        }
                        _ => false,
                    })
        });
        explicit.or_else(|| {
            self.drhds
                .iter()
                .find(|u| u.segment == segment && u.include_pci_all)
        })
    }
}

/// Whether `dev` sits below bridge `bridge` (its bus lies within the bridge's
/// secondary..=subordinate range).
fn covers_subtree<C: PciConfig>(segment: u16, bridge: Bdf, dev: Bdf, cfg: &mut C) -> bool {
    let secondary = cfg.read8(segment, bridge, PCI_SECONDARY_BUS);
    let subordinate = cfg.read8(segment, bridge, PCI_SECONDARY_BUS + 1);
    (secondary..=subordinate).contains(&dev.bus) && secondary != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Build a DMAR table with a correct length and checksum.
    fn table(haw_minus_1: u8, flags: u8, structs: &[Vec<u8>]) -> Vec<u8> {
        let mut t = vec![0u8; DMAR_HEADER_LEN];
        t[0..4].copy_from_slice(b"DMAR");
        t[8] = 1;
        t[10..16].copy_from_slice(b"BOCHS ");
        t[16..24].copy_from_slice(b"BXPC    ");
        t[36] = haw_minus_1;
        t[37] = flags;
        for s in structs {
            t.extend_from_slice(s);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t);
        t
    }

    fn fix_checksum(t: &mut [u8]) {
        t[9] = 0;
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
    }

    fn scope(kind: u8, enum_id: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
        let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, enum_id, bus];
        for &(d, f) in path {
            s.extend_from_slice(&[d, f]);
        }
        s
    }

    fn structure(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&kind.to_le_bytes());
        s.extend_from_slice(&((4 + body.len()) as u16).to_le_bytes());
        s.extend_from_slice(body);
        s
    }

    fn drhd(flags: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![flags, 0];
        b.extend_from_slice(&segment.to_le_bytes());
        b.extend_from_slice(&base.to_le_bytes());
        for s in scopes {
            b.extend_from_slice(s);
        }
        structure(TYPE_DRHD, &b)
    }

    /// The shape QEMU 7.2 q35 builds with intel-iommu,intremap=on: one DRHD with
    /// INCLUDE_PCI_ALL at 0xfed90000 whose scope is the I/O APIC.
    fn qemu_table() -> Vec<u8> {
        table(
            38,
            DMAR_INTR_REMAP,
            &[drhd(
                DRHD_INCLUDE_PCI_ALL,
                0,
                0xfed9_0000,
                &[scope(3, 0, 0xff, &[(0, 0)])],
            )],
        )
    }

    #[test]
    fn parses_qemu_shape() {
        let d = Dmar::parse(&qemu_table()).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert!(d.flags.intr_remap && !d.flags.x2apic_opt_out);
        assert!(!d.flags.dma_ctrl_platform_opt_in);
        assert_eq!(&d.oem_id, b"BOCHS ");
        assert_eq!(d.drhds.len(), 1);
        let u = &d.drhds[0];
        assert!(u.include_pci_all);
        assert_eq!((u.segment, u.register_base), (0, 0xfed9_0000));
        assert_eq!(u.register_bytes(), 4096);
        assert_eq!(u.scopes.len(), 1);
        assert_eq!(u.scopes[0].kind, ScopeKind::IoApic);
        assert_eq!(u.scopes[0].start_bus, 0xff);
        assert_eq!(
            u.scopes[0].path,
            vec![PathElement {
                device: 0,
                function: 0
            }]
        );
        assert!(d.rmrrs.is_empty() && d.unknown.is_empty());
    }

    #[test]
    fn parses_every_structure_type() {
        let mut rmrr = vec![0, 0, 1, 0];
        rmrr.extend_from_slice(&0x7f00_0000u64.to_le_bytes());
        rmrr.extend_from_slice(&0x7f0f_ffffu64.to_le_bytes());
        rmrr.extend_from_slice(&scope(1, 0, 0, &[(0x14, 0)]));
        let atsr = structure(TYPE_ATSR, &[ATSR_ALL_PORTS, 0, 0, 0]);
        let mut rhsa = vec![0; 4];
        rhsa.extend_from_slice(&0xfed9_1000u64.to_le_bytes());
        rhsa.extend_from_slice(&2u32.to_le_bytes());
        let andd = structure(TYPE_ANDD, &[0, 0, 0, 7, b'\\', b'_', b'S', b'B', 0]);
        let mut satc = vec![SATC_ATC_REQUIRED, 0, 0, 0];
        satc.extend_from_slice(&scope(1, 0, 0, &[(2, 0)]));
        let unknown = structure(0x77, &[1, 2, 3, 4]);
        let t = table(
            45,
            DMAR_INTR_REMAP | DMAR_X2APIC_OPT_OUT | DMAR_DMA_CTRL_PLATFORM_OPT_IN,
            &[
                drhd(0, 0, 0xfed9_1000, &[scope(1, 0, 0, &[(2, 0)])]),
                drhd(DRHD_INCLUDE_PCI_ALL, 0, 0xfed9_0000, &[]),
                structure(TYPE_RMRR, &rmrr),
                atsr,
                structure(TYPE_RHSA, &rhsa),
                andd,
                structure(TYPE_SATC, &satc),
                unknown,
            ],
        );
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.host_address_width, 46);
        assert!(d.flags.intr_remap && d.flags.x2apic_opt_out && d.flags.dma_ctrl_platform_opt_in);
        assert_eq!(d.drhds.len(), 2);
        assert!(!d.drhds[0].include_pci_all && d.drhds[1].include_pci_all);
        assert_eq!(d.rmrrs.len(), 1);
        assert_eq!(d.rmrrs[0].segment, 1);
        assert_eq!(
            (d.rmrrs[0].base, d.rmrrs[0].limit),
            (0x7f00_0000, 0x7f0f_ffff)
        );
        assert_eq!(d.rmrrs[0].scopes[0].kind, ScopeKind::PciEndpoint);
        assert!(d.atsrs[0].all_ports && d.atsrs[0].scopes.is_empty());
        assert_eq!(
            d.rhsas[0],
            Rhsa {
                register_base: 0xfed9_1000,
                proximity_domain: 2
            }
        );
        assert_eq!(d.andds[0].device_number, 7);
        assert_eq!(d.andds[0].object_name, b"\\_SB".to_vec());
        assert!(d.satcs[0].atc_required);
        assert_eq!(
            d.unknown,
            vec![UnknownStructure {
                kind: 0x77,
                length: 8
            }]
        );
    }

    #[test]
    fn rejects_malformed_tables() {
        let good = qemu_table();
        assert_eq!(Dmar::parse(&good[..40]), Err(DmarError::TooShort));
        let mut sig = good.clone();
        sig[0] = b'X';
        assert_eq!(Dmar::parse(&sig), Err(DmarError::BadSignature));
        let mut sum = good.clone();
        sum[40] ^= 1;
        assert_eq!(Dmar::parse(&sum), Err(DmarError::BadChecksum));
        let mut long = good.clone();
        long[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Dmar::parse(&long),
            Err(DmarError::BadLength { .. })
        ));
        let mut short = good.clone();
        short[4..8].copy_from_slice(&20u32.to_le_bytes());
        assert!(matches!(
            Dmar::parse(&short),
            Err(DmarError::BadLength { .. })
        ));
        // Structure length 0 would loop forever if accepted.
        let mut zero = good.clone();
        zero[50..52].copy_from_slice(&0u16.to_le_bytes());
        fix_checksum(&mut zero);
        assert_eq!(
            Dmar::parse(&zero),
            Err(DmarError::BadStructureLength { offset: 48 })
        );
        // Structure running past the table.
        let mut past = good.clone();
        past[50..52].copy_from_slice(&200u16.to_le_bytes());
        fix_checksum(&mut past);
        assert!(matches!(
            Dmar::parse(&past),
            Err(DmarError::BadStructureLength { .. })
        ));
        // Scope entry with an odd length.
        let mut odd = good.clone();
        odd[48 + 16 + 1] = 7;
        fix_checksum(&mut odd);
        assert!(matches!(
            Dmar::parse(&odd),
            Err(DmarError::BadScopeLength { .. })
        ));
        // Scope entry longer than its structure.
        let mut over = good.clone();
        over[48 + 16 + 1] = 10;
        fix_checksum(&mut over);
        assert!(matches!(
            Dmar::parse(&over),
            Err(DmarError::BadScopeLength { .. })
        ));
        // A truncated structure header at the end.
        let mut tail = table(38, 0, &[vec![0, 0]]);
        assert!(matches!(
            Dmar::parse(&tail),
            Err(DmarError::BadStructureLength { offset: 48 })
        ));
        tail[36] = 20;
        fix_checksum(&mut tail);
        assert_eq!(Dmar::parse(&tail), Err(DmarError::BadHostAddressWidth(20)));
        // Trailing bytes beyond the declared length are ignored.
        let mut extra = good.clone();
        extra.extend_from_slice(&[0xaa; 5]);
        assert!(Dmar::parse(&extra).is_ok());
    }

    #[test]
    fn never_panics_on_truncations_and_bit_flips() {
        let t = qemu_table();
        for n in 0..t.len() {
            let _ = Dmar::parse(&t[..n]);
        }
        for i in 0..t.len() {
            for bit in 0..8 {
                let mut m = t.clone();
                m[i] ^= 1 << bit;
                fix_checksum(&mut m);
                let _ = Dmar::parse(&m);
            }
        }
    }

    /// Random structure soup behind a valid header: every outcome is a value, never a
    /// panic, and a successful parse only reports structures that fit the table.
    #[test]
    fn random_bodies_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let mut body = Vec::new();
            let n = round % 97;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Bias towards small lengths and known types so deeper paths are reached.
                let b = match x % 5 {
                    0 => (x >> 8) as u8 % 6,
                    1 => 8 + (x >> 16) as u8 % 24,
                    _ => (x >> 24) as u8,
                };
                body.push(b);
            }
            let t = table(38, 0, &[body]);
            if let Ok(d) = Dmar::parse(&t) {
                let scopes: usize = d.drhds.iter().map(|u| u.scopes.len()).sum();
                assert!(scopes * 6 <= t.len());
            }
        }
    }

    struct Bridges;
    impl PciConfig for Bridges {
        fn read8(&mut self, _seg: u16, bdf: Bdf, offset: u16) -> u8 {
            // 00:1c.0 is a root port to bus 2..=3; 02:00.0 is a switch port to bus 3.
            match (bdf.bus, bdf.device, bdf.function, offset) {
                (0, 0x1c, 0, PCI_SECONDARY_BUS) => 2,
                (0, 0x1c, 0, 0x1a) => 3,
                (2, 0, 0, PCI_SECONDARY_BUS) => 3,
                (2, 0, 0, 0x1a) => 3,
                _ => 0,
            }
        }
    }

    #[test]
    fn resolves_paths_through_bridges() {
        let s = DeviceScope {
            kind: ScopeKind::PciEndpoint,
            flags: 0,
            enumeration_id: 0,
            start_bus: 0,
            path: vec![
                PathElement {
                    device: 0x1c,
                    function: 0,
                },
                PathElement {
                    device: 0,
                    function: 0,
                },
                PathElement {
                    device: 5,
                    function: 1,
                },
            ],
        };
        let b = s.resolve(0, &mut Bridges).unwrap();
        assert_eq!(b, Bdf::new(3, 5, 1).unwrap());
        assert_eq!(b.requester_id(), 0x0329);
        assert_eq!(b.devfn(), 0x29);
        let mut bad = s.clone();
        bad.path[2].function = 8;
        assert_eq!(bad.resolve(0, &mut Bridges), Err(DmarError::BadPath));
        bad.path.clear();
        assert_eq!(bad.resolve(0, &mut Bridges), Err(DmarError::EmptyPath));
    }

    #[test]
    fn unit_lookup_prefers_explicit_scope() {
        let t = table(
            38,
            0,
            &[
                drhd(0, 0, 0x1000, &[scope(2, 0, 0, &[(0x1c, 0)])]),
                drhd(DRHD_INCLUDE_PCI_ALL, 0, 0x2000, &[]),
            ],
        );
        let d = Dmar::parse(&t).unwrap();
        let under = Bdf::new(3, 0, 0).unwrap();
        let other = Bdf::new(0, 2, 0).unwrap();
        assert_eq!(
            d.unit_for(0, under, &mut Bridges).map(|u| u.register_base),
            Some(0x1000)
        );
        assert_eq!(
            d.unit_for(0, other, &mut Bridges).map(|u| u.register_base),
            Some(0x2000)
        );
        assert!(d.unit_for(1, other, &mut Bridges).is_none());
    }
}
