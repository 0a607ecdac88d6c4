//! Feature discovery: SMMU_IDR0..5 and SMMU_AIDR decoded into [`Features`]
//! (SMMUv3 spec §6.3.1 - §6.3.8).

use crate::error::{Error, Unsupported};
use crate::regs::{self, genmask, RegisterIo};

// SMMU_IDR0 fields (§6.3.1).
/// IDR0.S2P: stage-2 translation supported.
pub const IDR0_S2P: u64 = 1 << 0;
/// IDR0.S1P: stage-1 translation supported.
pub const IDR0_S1P: u64 = 1 << 1;
/// IDR0.TTF `[3:2]`: translation table formats.
pub const IDR0_TTF: u64 = genmask(3, 2);
/// IDR0.COHACC: coherent access to tables and queues.
pub const IDR0_COHACC: u64 = 1 << 4;
/// IDR0.BTM: broadcast TLB maintenance.
pub const IDR0_BTM: u64 = 1 << 5;
/// IDR0.HTTU `[7:6]`: hardware translation table update (1 = Access flag, 2 = + dirty).
pub const IDR0_HTTU: u64 = genmask(7, 6);
/// IDR0.HYP: EL2 translation regime.
pub const IDR0_HYP: u64 = 1 << 9;
/// IDR0.ATS: PCIe ATS.
pub const IDR0_ATS: u64 = 1 << 10;
/// IDR0.ASID16: 16-bit ASIDs.
pub const IDR0_ASID16: u64 = 1 << 12;
/// IDR0.MSI: MSI delivery of IRQs.
pub const IDR0_MSI: u64 = 1 << 13;
/// IDR0.SEV: SEV on CMD_SYNC completion / queue updates.
pub const IDR0_SEV: u64 = 1 << 14;
/// IDR0.ATOS: address translation operations.
pub const IDR0_ATOS: u64 = 1 << 15;
/// IDR0.PRI: PCIe page request interface.
pub const IDR0_PRI: u64 = 1 << 16;
/// IDR0.VMW: VMID wildcard matching.
pub const IDR0_VMW: u64 = 1 << 17;
/// IDR0.VMID16: 16-bit VMIDs.
pub const IDR0_VMID16: u64 = 1 << 18;
/// IDR0.CD2L: two-level CD tables.
pub const IDR0_CD2L: u64 = 1 << 19;
/// IDR0.VATOS: virtual ATOS page.
pub const IDR0_VATOS: u64 = 1 << 20;
/// IDR0.TTENDIAN `[22:21]`: table endianness (0 mixed, 2 little, 3 big).
pub const IDR0_TTENDIAN: u64 = genmask(22, 21);
/// IDR0.STALL_MODEL `[25:24]` (0 stall+terminate, 1 terminate only, 2 stall forced).
pub const IDR0_STALL_MODEL: u64 = genmask(25, 24);
/// IDR0.TERM_MODEL: 1 = terminated transactions always abort (no RAZ/WI option).
pub const IDR0_TERM_MODEL: u64 = 1 << 26;
/// IDR0.ST_LEVEL `[28:27]` (0 linear only, 1 linear and two-level).
pub const IDR0_ST_LEVEL: u64 = genmask(28, 27);

// SMMU_IDR1 fields (§6.3.2).
/// IDR1.SIDSIZE `[5:0]`.
pub const IDR1_SIDSIZE: u64 = genmask(5, 0);
/// IDR1.SSIDSIZE `[10:6]`.
pub const IDR1_SSIDSIZE: u64 = genmask(10, 6);
/// IDR1.PRIQS `[15:11]`.
pub const IDR1_PRIQS: u64 = genmask(15, 11);
/// IDR1.EVENTQS `[20:16]`.
pub const IDR1_EVENTQS: u64 = genmask(20, 16);
/// IDR1.CMDQS `[25:21]`.
pub const IDR1_CMDQS: u64 = genmask(25, 21);
/// IDR1.REL: base addresses are relative (fixed) when presets apply.
pub const IDR1_REL: u64 = 1 << 28;
/// IDR1.QUEUES_PRESET.
pub const IDR1_QUEUES_PRESET: u64 = 1 << 29;
/// IDR1.TABLES_PRESET.
pub const IDR1_TABLES_PRESET: u64 = 1 << 30;

// SMMU_IDR3 fields (§6.3.4).
/// IDR3.HAD: hierarchical attribute disable.
pub const IDR3_HAD: u64 = 1 << 2;
/// IDR3.RIL: range invalidation.
pub const IDR3_RIL: u64 = 1 << 10;
/// IDR3.BBML `[12:11]`: break-before-make level.
pub const IDR3_BBML: u64 = genmask(12, 11);

// SMMU_IDR5 fields (§6.3.6).
/// IDR5.OAS `[2:0]`.
pub const IDR5_OAS: u64 = genmask(2, 0);
/// IDR5.GRAN4K.
pub const IDR5_GRAN4K: u64 = 1 << 4;
/// IDR5.GRAN16K.
pub const IDR5_GRAN16K: u64 = 1 << 5;
/// IDR5.GRAN64K.
pub const IDR5_GRAN64K: u64 = 1 << 6;
/// IDR5.VAX `[11:10]`: 1 = 52-bit VA.
pub const IDR5_VAX: u64 = genmask(11, 10);
/// IDR5.STALL_MAX `[31:16]`.
pub const IDR5_STALL_MAX: u64 = genmask(31, 16);

/// Raw identification register values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRegs {
    /// SMMU_IDR0..SMMU_IDR5.
    pub idr: [u32; 6],
    /// SMMU_AIDR.
    pub aidr: u32,
}

impl IdRegs {
    /// Read the identification registers.
    pub fn read<R: RegisterIo>(regs: &mut R) -> Self {
        let offs = [
            regs::IDR0,
            regs::IDR1,
            regs::IDR2,
            regs::IDR3,
            regs::IDR4,
            regs::IDR5,
        ];
        let mut idr = [0u32; 6];
        for (v, off) in idr.iter_mut().zip(offs) {
            *v = regs.read32(off);
        }
        Self {
            idr,
            aidr: regs.read32(regs::AIDR),
        }
    }
}

/// Supported translation table formats (IDR0.TTF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormats {
    /// 0b01: AArch32 (LPAE) only.
    AArch32,
    /// 0b10: AArch64 only.
    AArch64,
    /// 0b11: both.
    Both,
    /// 0b00: reserved.
    Reserved,
}

/// Table endianness (IDR0.TTENDIAN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableEndian {
    /// Both endiannesses.
    Mixed,
    /// Little-endian only.
    Little,
    /// Big-endian only.
    Big,
    /// Reserved encoding.
    Reserved,
}

/// Stall model (IDR0.STALL_MODEL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallModel {
    /// Stall and terminate models both supported.
    StallAndTerminate,
    /// Stall is not supported (terminate only).
    TerminateOnly,
    /// Stall is forced (STE.S1STALLD/S2S must not disable it).
    StallForced,
    /// Reserved encoding.
    Reserved,
}

/// Hardware translation table update (IDR0.HTTU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Httu {
    /// No hardware update.
    None,
    /// Access flag only.
    Access,
    /// Access flag and dirty state.
    AccessDirty,
}

/// Decoded SMMU features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Stage-1 translation.
    pub stage1: bool,
    /// Stage-2 translation.
    pub stage2: bool,
    /// Table formats.
    pub table_formats: TableFormats,
    /// Coherent table/queue access.
    pub coherent: bool,
    /// Broadcast TLB maintenance.
    pub btm: bool,
    /// Hardware table update.
    pub httu: Httu,
    /// EL2 regime.
    pub hyp: bool,
    /// PCIe ATS.
    pub ats: bool,
    /// 16-bit ASIDs.
    pub asid16: bool,
    /// MSIs.
    pub msi: bool,
    /// SEV.
    pub sev: bool,
    /// ATOS.
    pub atos: bool,
    /// PRI.
    pub pri: bool,
    /// VMID wildcards.
    pub vmw: bool,
    /// 16-bit VMIDs.
    pub vmid16: bool,
    /// Two-level CD tables.
    pub cd2l: bool,
    /// VATOS.
    pub vatos: bool,
    /// Table endianness.
    pub endian: TableEndian,
    /// Stall model.
    pub stall_model: StallModel,
    /// Terminate model (1: aborts always abort).
    pub term_model: bool,
    /// Two-level stream table supported.
    pub two_level_strtab: bool,
    /// StreamID width in bits.
    pub sid_bits: u8,
    /// SubstreamID width in bits (0: no substreams).
    pub ssid_bits: u8,
    /// log2 of the maximum PRI queue entries (0: no PRI queue).
    pub priq_log2: u8,
    /// log2 of the maximum event queue entries.
    pub eventq_log2: u8,
    /// log2 of the maximum command queue entries.
    pub cmdq_log2: u8,
    /// Queue base addresses preset / relative.
    pub rel: bool,
    /// Queue bases preset.
    pub queues_preset: bool,
    /// Table bases preset.
    pub tables_preset: bool,
    /// Hierarchical attribute disable.
    pub had: bool,
    /// Range invalidation (TLBI with NUM/SCALE/TG).
    pub ril: bool,
    /// Break-before-make level (0, 1 or 2).
    pub bbml: u8,
    /// Output address size in bits (32..52).
    pub oas_bits: u8,
    /// 4KB granule.
    pub gran4k: bool,
    /// 16KB granule.
    pub gran16k: bool,
    /// 64KB granule.
    pub gran64k: bool,
    /// 52-bit virtual addresses (IDR5.VAX = 1).
    pub vax52: bool,
    /// Maximum outstanding stalled transactions.
    pub stall_max: u16,
    /// Architecture revision from SMMU_AIDR: (major, minor), e.g. (3, 1) for SMMUv3.1.
    pub arch_version: (u8, u8),
}

impl Features {
    /// Decode raw identification registers. Every bit pattern decodes (reserved encodings
    /// become `Reserved` variants or the closest conservative value).
    pub fn decode(id: &IdRegs) -> Self {
        let idr0 = u64::from(id.idr[0]);
        let idr1 = u64::from(id.idr[1]);
        let idr3 = u64::from(id.idr[3]);
        let idr5 = u64::from(id.idr[5]);
        let get = |mask: u64, v: u64| regs::field_get(mask, v);
        let flag = |mask: u64, v: u64| v & mask != 0;
        let oas_bits = match get(IDR5_OAS, idr5) {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            // 6 = 52 bits; 7 is reserved and treated as the largest defined size.
            _ => 52,
        };
        Self {
            stage1: flag(IDR0_S1P, idr0),
            stage2: flag(IDR0_S2P, idr0),
            table_formats: match get(IDR0_TTF, idr0) {
                1 => TableFormats::AArch32,
                2 => TableFormats::AArch64,
                3 => TableFormats::Both,
                _ => TableFormats::Reserved,
            },
            coherent: flag(IDR0_COHACC, idr0),
            btm: flag(IDR0_BTM, idr0),
            httu: match get(IDR0_HTTU, idr0) {
                1 => Httu::Access,
                2 => Httu::AccessDirty,
                _ => Httu::None,
            },
            hyp: flag(IDR0_HYP, idr0),
            ats: flag(IDR0_ATS, idr0),
            asid16: flag(IDR0_ASID16, idr0),
            msi: flag(IDR0_MSI, idr0),
            sev: flag(IDR0_SEV, idr0),
            atos: flag(IDR0_ATOS, idr0),
            pri: flag(IDR0_PRI, idr0),
            vmw: flag(IDR0_VMW, idr0),
            vmid16: flag(IDR0_VMID16, idr0),
            cd2l: flag(IDR0_CD2L, idr0),
            vatos: flag(IDR0_VATOS, idr0),
            endian: match get(IDR0_TTENDIAN, idr0) {
                0 => TableEndian::Mixed,
                2 => TableEndian::Little,
                3 => TableEndian::Big,
                _ => TableEndian::Reserved,
            },
            stall_model: match get(IDR0_STALL_MODEL, idr0) {
                0 => StallModel::StallAndTerminate,
                1 => StallModel::TerminateOnly,
                2 => StallModel::StallForced,
                _ => StallModel::Reserved,
            },
            term_model: flag(IDR0_TERM_MODEL, idr0),
            two_level_strtab: get(IDR0_ST_LEVEL, idr0) == 1,
            sid_bits: get(IDR1_SIDSIZE, idr1) as u8,
            ssid_bits: get(IDR1_SSIDSIZE, idr1) as u8,
            priq_log2: get(IDR1_PRIQS, idr1) as u8,
            eventq_log2: get(IDR1_EVENTQS, idr1) as u8,
            cmdq_log2: get(IDR1_CMDQS, idr1) as u8,
            rel: flag(IDR1_REL, idr1),
            queues_preset: flag(IDR1_QUEUES_PRESET, idr1),
            tables_preset: flag(IDR1_TABLES_PRESET, idr1),
            had: flag(IDR3_HAD, idr3),
            ril: flag(IDR3_RIL, idr3),
            bbml: get(IDR3_BBML, idr3) as u8,
            oas_bits,
            gran4k: flag(IDR5_GRAN4K, idr5),
            gran16k: flag(IDR5_GRAN16K, idr5),
            gran64k: flag(IDR5_GRAN64K, idr5),
            vax52: get(IDR5_VAX, idr5) == 1,
            stall_max: get(IDR5_STALL_MAX, idr5) as u16,
            arch_version: (3 + (id.aidr >> 4 & 0xf) as u8, (id.aidr & 0xf) as u8),
        }
    }

    /// Read and decode the identification registers.
    pub fn probe<R: RegisterIo>(regs: &mut R) -> Self {
        Self::decode(&IdRegs::read(regs))
    }

    /// Whether AArch64 translation tables are supported.
    pub fn aarch64_tables(&self) -> bool {
        matches!(
            self.table_formats,
            TableFormats::AArch64 | TableFormats::Both
        )
    }

    /// Whether stall can be disabled for a stream (STE.S1STALLD usable).
    pub fn stall_optional(&self) -> bool {
        self.stall_model == StallModel::StallAndTerminate
    }

    /// Check what this driver needs for stage-1 domains with 4KB little-endian AArch64
    /// tables, reporting the first missing capability.
    pub fn require_stage1(&self) -> Result<(), Error> {
        if !self.stage1 {
            return Err(Unsupported::Stage1.into());
        }
        if !self.aarch64_tables() {
            return Err(Unsupported::AArch64Tables.into());
        }
        if self.endian == TableEndian::Big || self.endian == TableEndian::Reserved {
            return Err(Unsupported::LittleEndianTables.into());
        }
        if !self.gran4k {
            return Err(Unsupported::Granule4K.into());
        }
        Ok(())
    }

    /// Check that an ASID fits (8 bits unless ASID16).
    pub fn check_asid(&self, asid: u16) -> Result<(), Error> {
        if asid > 0xff && !self.asid16 {
            return Err(Unsupported::Asid16.into());
        }
        Ok(())
    }

    /// Check that a VMID fits (8 bits unless VMID16).
    pub fn check_vmid(&self, vmid: u16) -> Result<(), Error> {
        if vmid > 0xff && !self.vmid16 {
            return Err(Unsupported::Vmid16.into());
        }
        Ok(())
    }

    /// The IPS/PS encoding (0..=6) of the output address size, as used by CD.IPS and
    /// STE.S2PS.
    pub fn oas_encoding(&self) -> u8 {
        match self.oas_bits {
            32 => 0,
            36 => 1,
            40 => 2,
            42 => 3,
            44 => 4,
            48 => 5,
            _ => 6,
        }
    }
}

/// QEMU 7.2's `-M virt,iommu=smmuv3` identification registers (measured).
pub const QEMU_7_2_IDREGS: IdRegs = IdRegs {
    idr: [0x0d40_101a, 0x0273_0010, 0, 0x1404, 0, 0x74],
    aidr: 1,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_qemu_values() {
        let f = Features::decode(&QEMU_7_2_IDREGS);
        assert!(f.stage1);
        assert!(!f.stage2);
        assert_eq!(f.table_formats, TableFormats::AArch64);
        assert!(f.coherent);
        assert!(f.asid16);
        assert!(!f.vmid16);
        assert_eq!(f.endian, TableEndian::Little);
        assert!(f.two_level_strtab);
        assert_eq!(f.stall_model, StallModel::TerminateOnly);
        assert!(f.term_model);
        assert!(!f.ats && !f.pri && !f.msi && !f.btm && !f.atos && !f.cd2l && !f.hyp);
        assert_eq!(f.httu, Httu::None);
        assert_eq!(f.sid_bits, 16);
        assert_eq!(f.ssid_bits, 0);
        assert_eq!(f.cmdq_log2, 19);
        assert_eq!(f.eventq_log2, 19);
        assert_eq!(f.priq_log2, 0);
        assert!(f.ril);
        assert!(f.had);
        assert_eq!(f.bbml, 2);
        assert_eq!(f.oas_bits, 44);
        assert_eq!(f.oas_encoding(), 4);
        assert!(f.gran4k && f.gran16k && f.gran64k);
        assert!(!f.vax52);
        assert_eq!(f.arch_version, (3, 1));
        assert!(f.require_stage1().is_ok());
        assert!(f.check_asid(0xffff).is_ok());
        assert_eq!(
            f.check_vmid(0x100),
            Err(Error::Unsupported(Unsupported::Vmid16))
        );
    }

    #[test]
    fn decodes_each_idr0_bit() {
        type Getter = fn(&Features) -> bool;
        let cases: [(u32, Getter); 14] = [
            (1 << 0, |f| f.stage2),
            (1 << 1, |f| f.stage1),
            (1 << 4, |f| f.coherent),
            (1 << 5, |f| f.btm),
            (1 << 9, |f| f.hyp),
            (1 << 10, |f| f.ats),
            (1 << 12, |f| f.asid16),
            (1 << 13, |f| f.msi),
            (1 << 14, |f| f.sev),
            (1 << 15, |f| f.atos),
            (1 << 16, |f| f.pri),
            (1 << 17, |f| f.vmw),
            (1 << 18, |f| f.vmid16),
            (1 << 19, |f| f.cd2l),
        ];
        for (bit, get) in cases {
            let on = Features::decode(&IdRegs {
                idr: [bit, 0, 0, 0, 0, 0],
                aidr: 0,
            });
            let off = Features::decode(&IdRegs::default());
            assert!(get(&on), "bit {bit:#x}");
            assert!(!get(&off), "bit {bit:#x} clear");
        }
        let f = |idr0| {
            Features::decode(&IdRegs {
                idr: [idr0, 0, 0, 0, 0, 0],
                aidr: 0,
            })
        };
        assert_eq!(f(1 << 6).httu, Httu::Access);
        assert_eq!(f(2 << 6).httu, Httu::AccessDirty);
        assert_eq!(f(3 << 2).table_formats, TableFormats::Both);
        assert_eq!(f(1 << 2).table_formats, TableFormats::AArch32);
        assert_eq!(f(3 << 21).endian, TableEndian::Big);
        assert_eq!(f(0).endian, TableEndian::Mixed);
        assert_eq!(f(2 << 24).stall_model, StallModel::StallForced);
        assert_eq!(f(0).stall_model, StallModel::StallAndTerminate);
        assert!(f(0).stall_optional());
        assert!(f(1 << 27).two_level_strtab);
        assert!(!f(2 << 27).two_level_strtab);
    }

    #[test]
    fn decodes_idr1_idr3_idr5() {
        let f = Features::decode(&IdRegs {
            idr: [
                0,
                (7 << 21) | (8 << 16) | (9 << 11) | (20 << 6) | 32,
                0,
                0,
                0,
                (5 << 10) | 6,
            ],
            aidr: 0x12,
        });
        assert_eq!((f.cmdq_log2, f.eventq_log2, f.priq_log2), (7, 8, 9));
        assert_eq!((f.ssid_bits, f.sid_bits), (20, 32));
        assert_eq!(f.oas_bits, 52);
        assert!(!f.gran4k);
        assert_eq!(
            f.require_stage1(),
            Err(Error::Unsupported(Unsupported::Stage1))
        );
        assert_eq!(f.arch_version, (4, 2));
        let g = Features::decode(&IdRegs {
            idr: [
                0x2 | (2 << 2),
                0,
                0,
                1 << 11,
                0,
                (1 << 10) | (0x1234 << 16) | 0x10,
            ],
            aidr: 0,
        });
        assert_eq!(g.bbml, 1);
        assert!(!g.ril);
        assert!(g.vax52);
        assert_eq!(g.stall_max, 0x1234);
        assert_eq!(g.oas_bits, 32);
        assert!(g.require_stage1().is_ok());
        let be = Features::decode(&IdRegs {
            idr: [0x2 | (2 << 2) | (3 << 21), 0, 0, 0, 0, 0x10],
            aidr: 0,
        });
        assert_eq!(
            be.require_stage1(),
            Err(Error::Unsupported(Unsupported::LittleEndianTables))
        );
    }

    #[test]
    fn any_bits_decode_without_panic() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let id = IdRegs {
                idr: [
                    x,
                    x.rotate_left(7),
                    x,
                    x.rotate_left(3),
                    x,
                    x.rotate_left(11),
                ],
                aidr: x,
            };
            let f = Features::decode(&id);
            assert!((32..=52).contains(&f.oas_bits));
            assert!(f.sid_bits <= 63);
        }
    }
}
