//! Stream table entries (SMMUv3 spec §5.2 "Stream Table Entry") and level-1 stream table
//! descriptors (§5.1 "Level 1 Stream Table Descriptor").
//!
//! An STE is 64 bytes: eight little-endian 64-bit words, filled only through the field
//! constants below (`STRTAB_STE_<word>_<FIELD>`).

use crate::error::{Error, Unsupported};
use crate::features::{Features, StallModel};
use crate::mem::PhysAddr;
use crate::regs::{field_get, field_prep, genmask};

/// Words per STE.
pub const STE_WORDS: usize = 8;
/// Bytes per STE.
pub const STE_BYTES: usize = 64;

// Word 0.
/// STE.V: valid.
pub const STRTAB_STE_0_V: u64 = 1 << 0;
/// STE.Config `[3:1]`.
pub const STRTAB_STE_0_CFG: u64 = genmask(3, 1);
/// Config: abort all traffic (no event).
pub const STRTAB_STE_0_CFG_ABORT: u64 = 0b000;
/// Config: bypass both stages.
pub const STRTAB_STE_0_CFG_BYPASS: u64 = 0b100;
/// Config: stage 1 translates, stage 2 bypass.
pub const STRTAB_STE_0_CFG_S1_TRANS: u64 = 0b101;
/// Config: stage 1 bypass, stage 2 translates.
pub const STRTAB_STE_0_CFG_S2_TRANS: u64 = 0b110;
/// Config: both stages translate (nested).
pub const STRTAB_STE_0_CFG_NESTED: u64 = 0b111;
/// STE.S1Fmt `[5:4]`: CD table format.
pub const STRTAB_STE_0_S1FMT: u64 = genmask(5, 4);
/// S1Fmt: linear CD table (or a single CD when S1CDMax = 0).
pub const STRTAB_STE_0_S1FMT_LINEAR: u64 = 0;
/// S1Fmt: two-level CD table, 4KB (64-CD) leaf tables.
pub const STRTAB_STE_0_S1FMT_4K_L2: u64 = 1;
/// S1Fmt: two-level CD table, 64KB (1024-CD) leaf tables.
pub const STRTAB_STE_0_S1FMT_64K_L2: u64 = 2;
/// STE.S1ContextPtr `[51:6]`.
pub const STRTAB_STE_0_S1CTXPTR: u64 = genmask(51, 6);
/// STE.S1CDMax `[63:59]`: log2 of the number of CDs.
pub const STRTAB_STE_0_S1CDMAX: u64 = genmask(63, 59);

// Word 1.
/// STE.S1DSS `[1:0]`: what non-substream traffic does when S1CDMax > 0.
pub const STRTAB_STE_1_S1DSS: u64 = genmask(1, 0);
/// S1DSS: terminate non-substream traffic.
pub const STRTAB_STE_1_S1DSS_TERMINATE: u64 = 0;
/// S1DSS: non-substream traffic bypasses stage 1.
pub const STRTAB_STE_1_S1DSS_BYPASS: u64 = 1;
/// S1DSS: non-substream traffic uses CD 0.
pub const STRTAB_STE_1_S1DSS_SSID0: u64 = 2;
/// STE.S1CIR `[3:2]`: inner cacheability of CD and stage-1 table walks.
pub const STRTAB_STE_1_S1CIR: u64 = genmask(3, 2);
/// STE.S1COR `[5:4]`: outer cacheability.
pub const STRTAB_STE_1_S1COR: u64 = genmask(5, 4);
/// STE.S1CSH `[7:6]`: shareability.
pub const STRTAB_STE_1_S1CSH: u64 = genmask(7, 6);
/// S1C{I,O}R: non-cacheable.
pub const STRTAB_STE_1_S1C_CACHE_NC: u64 = 0;
/// S1C{I,O}R: write-back read-allocate.
pub const STRTAB_STE_1_S1C_CACHE_WBRA: u64 = 1;
/// S1C{I,O}R: write-through.
pub const STRTAB_STE_1_S1C_CACHE_WT: u64 = 2;
/// S1C{I,O}R: write-back.
pub const STRTAB_STE_1_S1C_CACHE_WB: u64 = 3;
/// STE.S1STALLD: disable stall for stage-1 faults.
pub const STRTAB_STE_1_S1STALLD: u64 = 1 << 27;
/// STE.EATS `[29:28]`: ATS behaviour.
pub const STRTAB_STE_1_EATS: u64 = genmask(29, 28);
/// STE.STRW `[31:30]`: stream world / translation regime.
pub const STRTAB_STE_1_STRW: u64 = genmask(31, 30);
/// STRW: Non-secure EL1&0.
pub const STRTAB_STE_1_STRW_NSEL1: u64 = 0;
/// STRW: EL2 (or EL2-E2H).
pub const STRTAB_STE_1_STRW_EL2: u64 = 2;
/// STE word 1 `[51:32]`: the incoming-attribute overrides (MemAttr, MTCFG, ALLOCCFG,
/// SHCFG, NSCFG, PRIVCFG, INSTCFG), all applying whenever the STE is valid and not abort.
pub const STRTAB_STE_1_OVERRIDES: u64 = genmask(51, 32);
/// STE.SHCFG `[45:44]`: shareability override.
pub const STRTAB_STE_1_SHCFG: u64 = genmask(45, 44);
/// SHCFG: use the incoming shareability.
pub const STRTAB_STE_1_SHCFG_INCOMING: u64 = 1;

// Word 2.
/// STE.S2VMID `[15:0]`.
pub const STRTAB_STE_2_S2VMID: u64 = genmask(15, 0);
/// STE.S2T0SZ `[37:32]`.
pub const STRTAB_STE_2_S2T0SZ: u64 = genmask(37, 32);
/// STE.S2SL0 `[39:38]`.
pub const STRTAB_STE_2_S2SL0: u64 = genmask(39, 38);
/// STE.S2IR0 `[41:40]`.
pub const STRTAB_STE_2_S2IR0: u64 = genmask(41, 40);
/// STE.S2OR0 `[43:42]`.
pub const STRTAB_STE_2_S2OR0: u64 = genmask(43, 42);
/// STE.S2SH0 `[45:44]`.
pub const STRTAB_STE_2_S2SH0: u64 = genmask(45, 44);
/// STE.S2TG `[47:46]` (0 = 4KB, 1 = 64KB, 2 = 16KB).
pub const STRTAB_STE_2_S2TG: u64 = genmask(47, 46);
/// STE.S2PS `[50:48]`.
pub const STRTAB_STE_2_S2PS: u64 = genmask(50, 48);
/// STE.S2AA64: stage-2 tables are AArch64.
pub const STRTAB_STE_2_S2AA64: u64 = 1 << 51;
/// STE.S2ENDI: stage-2 tables are big-endian.
pub const STRTAB_STE_2_S2ENDI: u64 = 1 << 52;
/// STE.S2AFFD: stage-2 access flag fault disable.
pub const STRTAB_STE_2_S2AFFD: u64 = 1 << 53;
/// STE.S2PTW: protected table walk.
pub const STRTAB_STE_2_S2PTW: u64 = 1 << 54;
/// STE.S2S: stall stage-2 faults.
pub const STRTAB_STE_2_S2S: u64 = 1 << 57;
/// STE.S2R: record stage-2 faults.
pub const STRTAB_STE_2_S2R: u64 = 1 << 58;

// Word 3.
/// STE.S2TTB `[51:4]`.
pub const STRTAB_STE_3_S2TTB: u64 = genmask(51, 4);

// Level-1 stream table descriptor (§5.1).
/// L1STD.Span `[4:0]`: 0 = invalid, otherwise the L2 table holds 2^(Span-1) STEs.
pub const STRTAB_L1_DESC_SPAN: u64 = genmask(4, 0);
/// L1STD.L2Ptr `[51:6]`.
pub const STRTAB_L1_DESC_L2PTR: u64 = genmask(51, 6);

/// Encode a level-1 stream table descriptor for an L2 table of `2^split` STEs.
pub fn l1_desc(l2: PhysAddr, split: u8) -> u64 {
    field_prep(STRTAB_L1_DESC_SPAN, u64::from(split) + 1) | (l2.0 & STRTAB_L1_DESC_L2PTR)
}

/// Table-walk cache attributes (STE.S1C* for CD and stage-1 walks, STE.S2*0 for stage 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkAttrs {
    /// Inner cacheability (0 NC, 1 WBRA, 2 WT, 3 WB).
    pub inner: u8,
    /// Outer cacheability.
    pub outer: u8,
    /// Shareability (0 NSH, 2 OSH, 3 ISH).
    pub share: u8,
}

impl WalkAttrs {
    /// Write-back read-allocate, inner shareable: right for coherent SMMUs.
    pub const WB_ISH: Self = Self {
        inner: 1,
        outer: 1,
        share: 3,
    };
}

/// CD table format (STE.S1Fmt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Fmt {
    /// Linear table (or one CD).
    Linear,
    /// Two-level, 4KB leaf tables.
    TwoLevel4K,
    /// Two-level, 64KB leaf tables.
    TwoLevel64K,
}

/// Non-substream traffic when substreams are enabled (STE.S1DSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Dss {
    /// Terminate.
    Terminate,
    /// Bypass stage 1.
    Bypass,
    /// Use CD 0.
    Substream0,
}

/// Translation regime (STE.STRW).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamWorld {
    /// Non-secure EL1&0.
    NsEl1,
    /// EL2.
    El2,
}

/// Stage-1 part of an STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Ste {
    /// Address of the CD (or CD table).
    pub context_ptr: PhysAddr,
    /// log2 of the number of CDs (0: one CD, no substreams).
    pub cd_max: u8,
    /// CD table format.
    pub fmt: S1Fmt,
    /// Non-substream behaviour (meaningful when `cd_max > 0`).
    pub dss: S1Dss,
    /// CD and stage-1 walk attributes.
    pub walk: WalkAttrs,
    /// Translation regime.
    pub world: StreamWorld,
    /// Disable stalling (STE.S1STALLD); needs a stall model that allows it.
    pub stall_disable: bool,
}

impl Stage1Ste {
    /// A single CD at `cd` (no substreams), NS-EL1, write-back walks.
    pub const fn single_cd(cd: PhysAddr) -> Self {
        Self {
            context_ptr: cd,
            cd_max: 0,
            fmt: S1Fmt::Linear,
            dss: S1Dss::Terminate,
            walk: WalkAttrs::WB_ISH,
            world: StreamWorld::NsEl1,
            stall_disable: false,
        }
    }
}

/// Stage-2 part of an STE (AArch64 4KB tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Ste {
    /// VMID.
    pub vmid: u16,
    /// Stage-2 table base.
    pub ttb: PhysAddr,
    /// S2T0SZ (IPA size = 64 - t0sz).
    pub t0sz: u8,
    /// S2SL0 starting level encoding (4KB granule: 0 = level 2, 1 = level 1, 2 = level 0).
    pub sl0: u8,
    /// Walk attributes.
    pub walk: WalkAttrs,
    /// S2PS output size encoding.
    pub ps: u8,
    /// Access flag faults disabled.
    pub affd: bool,
    /// Protected table walk.
    pub ptw: bool,
    /// Record faults.
    pub record: bool,
    /// Stall faults.
    pub stall: bool,
}

/// What an STE does with a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamConfig {
    /// V = 0: the SMMU reports C_BAD_STE for traffic.
    Invalid,
    /// Abort silently.
    Abort,
    /// Pass through untranslated.
    Bypass,
    /// Stage-1 translation.
    Stage1(Stage1Ste),
    /// Stage-2 translation.
    Stage2(Stage2Ste),
    /// Nested stage 1 + stage 2.
    Nested(Stage1Ste, Stage2Ste),
}

/// A 64-byte stream table entry as eight host-order words (stored little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ste(pub [u64; STE_WORDS]);

impl Ste {
    /// Word 1 shared by abort and bypass entries: incoming shareability. Keeping it in the
    /// abort entry too makes abort <-> bypass a single-word (hitless) change.
    const DEFAULT_W1: u64 = field_prep(STRTAB_STE_1_SHCFG, STRTAB_STE_1_SHCFG_INCOMING);

    /// The invalid (all-zero) entry.
    pub const fn invalid() -> Self {
        Self([0; STE_WORDS])
    }

    /// A valid entry aborting all traffic.
    pub const fn abort() -> Self {
        let mut w = [0; STE_WORDS];
        w[0] = STRTAB_STE_0_V | field_prep(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_ABORT);
        w[1] = Self::DEFAULT_W1;
        Self(w)
    }

    /// A valid entry bypassing translation.
    pub const fn bypass() -> Self {
        let mut w = [0; STE_WORDS];
        w[0] = STRTAB_STE_0_V | field_prep(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_BYPASS);
        w[1] = Self::DEFAULT_W1;
        Self(w)
    }

    fn s1_words(w: &mut [u64; STE_WORDS], s1: &Stage1Ste) {
        let fmt = match s1.fmt {
            S1Fmt::Linear => STRTAB_STE_0_S1FMT_LINEAR,
            S1Fmt::TwoLevel4K => STRTAB_STE_0_S1FMT_4K_L2,
            S1Fmt::TwoLevel64K => STRTAB_STE_0_S1FMT_64K_L2,
        };
        w[0] |= field_prep(STRTAB_STE_0_S1FMT, fmt)
            | (s1.context_ptr.0 & STRTAB_STE_0_S1CTXPTR)
            | field_prep(STRTAB_STE_0_S1CDMAX, u64::from(s1.cd_max));
        let dss = match s1.dss {
            S1Dss::Terminate => STRTAB_STE_1_S1DSS_TERMINATE,
            S1Dss::Bypass => STRTAB_STE_1_S1DSS_BYPASS,
            S1Dss::Substream0 => STRTAB_STE_1_S1DSS_SSID0,
        };
        let strw = match s1.world {
            StreamWorld::NsEl1 => STRTAB_STE_1_STRW_NSEL1,
            StreamWorld::El2 => STRTAB_STE_1_STRW_EL2,
        };
        w[1] |= field_prep(STRTAB_STE_1_S1DSS, dss)
            | field_prep(STRTAB_STE_1_S1CIR, u64::from(s1.walk.inner))
            | field_prep(STRTAB_STE_1_S1COR, u64::from(s1.walk.outer))
            | field_prep(STRTAB_STE_1_S1CSH, u64::from(s1.walk.share))
            | field_prep(STRTAB_STE_1_STRW, strw)
            | if s1.stall_disable {
                STRTAB_STE_1_S1STALLD
            } else {
                0
            };
    }

    fn s2_words(w: &mut [u64; STE_WORDS], s2: &Stage2Ste) {
        w[2] = field_prep(STRTAB_STE_2_S2VMID, u64::from(s2.vmid))
            | field_prep(STRTAB_STE_2_S2T0SZ, u64::from(s2.t0sz))
            | field_prep(STRTAB_STE_2_S2SL0, u64::from(s2.sl0))
            | field_prep(STRTAB_STE_2_S2IR0, u64::from(s2.walk.inner))
            | field_prep(STRTAB_STE_2_S2OR0, u64::from(s2.walk.outer))
            | field_prep(STRTAB_STE_2_S2SH0, u64::from(s2.walk.share))
            | field_prep(STRTAB_STE_2_S2TG, 0)
            | field_prep(STRTAB_STE_2_S2PS, u64::from(s2.ps))
            | STRTAB_STE_2_S2AA64
            | if s2.affd { STRTAB_STE_2_S2AFFD } else { 0 }
            | if s2.ptw { STRTAB_STE_2_S2PTW } else { 0 }
            | if s2.record { STRTAB_STE_2_S2R } else { 0 }
            | if s2.stall { STRTAB_STE_2_S2S } else { 0 };
        w[3] = s2.ttb.0 & STRTAB_STE_3_S2TTB;
    }

    /// Encode `cfg` without checking it against the hardware (see [`Ste::build`]).
    pub fn encode(cfg: &StreamConfig) -> Self {
        let cfg_bits = |c| STRTAB_STE_0_V | field_prep(STRTAB_STE_0_CFG, c);
        match cfg {
            StreamConfig::Invalid => Self::invalid(),
            StreamConfig::Abort => Self::abort(),
            StreamConfig::Bypass => Self::bypass(),
            StreamConfig::Stage1(s1) => {
                let mut w = [0; STE_WORDS];
                w[0] = cfg_bits(STRTAB_STE_0_CFG_S1_TRANS);
                w[1] = Self::DEFAULT_W1;
                Self::s1_words(&mut w, s1);
                Self(w)
            }
            StreamConfig::Stage2(s2) => {
                let mut w = [0; STE_WORDS];
                w[0] = cfg_bits(STRTAB_STE_0_CFG_S2_TRANS);
                w[1] = Self::DEFAULT_W1;
                Self::s2_words(&mut w, s2);
                Self(w)
            }
            StreamConfig::Nested(s1, s2) => {
                let mut w = [0; STE_WORDS];
                w[0] = cfg_bits(STRTAB_STE_0_CFG_NESTED);
                w[1] = Self::DEFAULT_W1;
                Self::s1_words(&mut w, s1);
                Self::s2_words(&mut w, s2);
                Self(w)
            }
        }
    }

    /// Check `cfg` against the hardware's features, then encode it. A configuration the
    /// SMMU lacks is refused with [`Error::Unsupported`].
    pub fn build(cfg: &StreamConfig, f: &Features) -> Result<Self, Error> {
        let check_s1 = |s1: &Stage1Ste| -> Result<(), Error> {
            f.require_stage1()?;
            if s1.context_ptr.0 & !STRTAB_STE_0_S1CTXPTR != 0 {
                return Err(Error::Misaligned);
            }
            if s1.cd_max > 0 && (f.ssid_bits == 0 || s1.cd_max > f.ssid_bits) {
                return Err(Unsupported::Substreams.into());
            }
            if s1.fmt != S1Fmt::Linear && !f.cd2l {
                return Err(Unsupported::TwoLevelCdTable.into());
            }
            if s1.world == StreamWorld::El2 && !f.hyp {
                return Err(Error::InvalidField("STRW"));
            }
            if s1.stall_disable && !f.stall_optional() {
                // With a terminate-only or forced-stall model S1STALLD must be 0.
                return Err(Unsupported::Stall.into());
            }
            Ok(())
        };
        let check_s2 = |s2: &Stage2Ste| -> Result<(), Error> {
            if !f.stage2 {
                return Err(Unsupported::Stage2.into());
            }
            f.check_vmid(s2.vmid)?;
            if s2.ttb.0 & !STRTAB_STE_3_S2TTB != 0 || s2.ttb.0 & 0xfff != 0 {
                return Err(Error::Misaligned);
            }
            if !(16..=39).contains(&s2.t0sz) || s2.sl0 > 2 {
                return Err(Error::InvalidField("S2T0SZ/S2SL0"));
            }
            if s2.ps > f.oas_encoding() {
                return Err(Unsupported::AddressSize.into());
            }
            if s2.stall && f.stall_model == StallModel::TerminateOnly {
                return Err(Unsupported::Stall.into());
            }
            Ok(())
        };
        match cfg {
            StreamConfig::Stage1(s1) => check_s1(s1)?,
            StreamConfig::Stage2(s2) => check_s2(s2)?,
            StreamConfig::Nested(s1, s2) => {
                if !(f.stage1 && f.stage2) {
                    return Err(Unsupported::Nested.into());
                }
                check_s1(s1)?;
                check_s2(s2)?;
            }
            _ => {}
        }
        Ok(Self::encode(cfg))
    }

    /// STE.V.
    pub fn valid(&self) -> bool {
        self.0[0] & STRTAB_STE_0_V != 0
    }

    /// STE.Config.
    pub fn config(&self) -> u64 {
        field_get(STRTAB_STE_0_CFG, self.0[0])
    }

    /// Bits of each word the SMMU interprets for this entry's current V/Config: the basis
    /// of the hitless update rules in [`crate::update`].
    pub fn used_bits(&self) -> [u64; STE_WORDS] {
        let mut used = [0u64; STE_WORDS];
        used[0] = STRTAB_STE_0_V;
        if !self.valid() {
            return used;
        }
        used[0] |= STRTAB_STE_0_CFG;
        let cfg = self.config();
        if cfg & 0b100 == 0 {
            // Abort (0b0xx): nothing else is read.
            return used;
        }
        used[1] |= STRTAB_STE_1_OVERRIDES | STRTAB_STE_1_EATS | STRTAB_STE_1_STRW;
        if cfg & 0b001 != 0 {
            used[0] |= STRTAB_STE_0_S1FMT | STRTAB_STE_0_S1CTXPTR | STRTAB_STE_0_S1CDMAX;
            used[1] |= STRTAB_STE_1_S1DSS
                | STRTAB_STE_1_S1CIR
                | STRTAB_STE_1_S1COR
                | STRTAB_STE_1_S1CSH
                | STRTAB_STE_1_S1STALLD;
            // Stage-1 TLB entries are tagged with the VMID for the NS-EL1 regime.
            if field_get(STRTAB_STE_1_STRW, self.0[1]) == STRTAB_STE_1_STRW_NSEL1 {
                used[2] |= STRTAB_STE_2_S2VMID;
            }
        }
        if cfg & 0b010 != 0 {
            used[2] = u64::MAX;
            used[3] |= STRTAB_STE_3_S2TTB;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{IdRegs, QEMU_7_2_IDREGS};

    fn qemu() -> Features {
        Features::decode(&QEMU_7_2_IDREGS)
    }

    fn full() -> Features {
        // S1P, S2P, AArch64, COHACC, ASID16, VMID16, CD2L, HYP, LE, stall+terminate,
        // 2-level strtab; SSIDSIZE 20, SIDSIZE 16; 48-bit OAS, 4K granule.
        Features::decode(&IdRegs {
            idr: [
                0x3 | (2 << 2)
                    | (1 << 4)
                    | (1 << 9)
                    | (1 << 12)
                    | (1 << 18)
                    | (1 << 19)
                    | (2 << 21)
                    | (1 << 27),
                (8 << 21) | (8 << 16) | (20 << 6) | 16,
                0,
                1 << 10,
                0,
                0x15,
            ],
            aidr: 1,
        })
    }

    #[test]
    fn abort_and_bypass_words() {
        assert_eq!(Ste::abort().0[0], 0x1);
        assert_eq!(Ste::bypass().0[0], 0x9, "V=1, Config=0b100 at [3:1]");
        assert_eq!(Ste::bypass().0[1], 1 << 44, "SHCFG=incoming at [45:44]");
        assert_eq!(Ste::abort().0[1], Ste::bypass().0[1]);
        assert_eq!(Ste::invalid().0, [0; 8]);
        assert!(Ste::bypass().0[2..].iter().all(|&w| w == 0));
    }

    #[test]
    fn stage1_ste_fields() {
        let s1 = Stage1Ste {
            context_ptr: PhysAddr(0x0000_0abc_def0_1240),
            cd_max: 5,
            fmt: S1Fmt::TwoLevel64K,
            dss: S1Dss::Substream0,
            walk: WalkAttrs {
                inner: 1,
                outer: 3,
                share: 2,
            },
            world: StreamWorld::NsEl1,
            stall_disable: true,
        };
        let ste = Ste::encode(&StreamConfig::Stage1(s1));
        let w0 = ste.0[0];
        assert_eq!(w0 & 1, 1);
        assert_eq!((w0 >> 1) & 7, 0b101);
        assert_eq!((w0 >> 4) & 3, 2);
        assert_eq!(w0 & 0x000f_ffff_ffff_ffc0, 0x0000_0abc_def0_1240);
        assert_eq!(w0 >> 59, 5);
        let w1 = ste.0[1];
        assert_eq!(w1 & 3, 2, "S1DSS");
        assert_eq!((w1 >> 2) & 3, 1, "S1CIR");
        assert_eq!((w1 >> 4) & 3, 3, "S1COR");
        assert_eq!((w1 >> 6) & 3, 2, "S1CSH");
        assert_eq!((w1 >> 27) & 1, 1, "S1STALLD");
        assert_eq!((w1 >> 30) & 3, 0, "STRW");
        assert_eq!((w1 >> 44) & 3, 1, "SHCFG");
        let el2 = Ste::encode(&StreamConfig::Stage1(Stage1Ste {
            world: StreamWorld::El2,
            ..Stage1Ste::single_cd(PhysAddr(0x1000))
        }));
        assert_eq!((el2.0[1] >> 30) & 3, 2);
        assert_eq!(el2.0[0] >> 59, 0);
        assert_eq!((el2.0[0] >> 4) & 3, 0);
    }

    #[test]
    fn stage2_and_nested_fields() {
        let s2 = Stage2Ste {
            vmid: 0x1234,
            ttb: PhysAddr(0x0008_7654_3000),
            t0sz: 24,
            sl0: 1,
            walk: WalkAttrs::WB_ISH,
            ps: 5,
            affd: true,
            ptw: true,
            record: true,
            stall: false,
        };
        let ste = Ste::encode(&StreamConfig::Stage2(s2));
        assert_eq!((ste.0[0] >> 1) & 7, 0b110);
        let w2 = ste.0[2];
        assert_eq!(w2 & 0xffff, 0x1234);
        assert_eq!((w2 >> 32) & 0x3f, 24);
        assert_eq!((w2 >> 38) & 3, 1);
        assert_eq!((w2 >> 40) & 3, 1);
        assert_eq!((w2 >> 42) & 3, 1);
        assert_eq!((w2 >> 44) & 3, 3);
        assert_eq!((w2 >> 46) & 3, 0);
        assert_eq!((w2 >> 48) & 7, 5);
        assert_eq!((w2 >> 51) & 1, 1, "S2AA64");
        assert_eq!((w2 >> 52) & 1, 0, "little-endian");
        assert_eq!((w2 >> 53) & 1, 1);
        assert_eq!((w2 >> 54) & 1, 1);
        assert_eq!((w2 >> 57) & 1, 0);
        assert_eq!((w2 >> 58) & 1, 1);
        assert_eq!(ste.0[3], 0x0008_7654_3000);
        let n = Ste::encode(&StreamConfig::Nested(
            Stage1Ste::single_cd(PhysAddr(0x4000_0040)),
            s2,
        ));
        assert_eq!((n.0[0] >> 1) & 7, 0b111);
        assert_eq!(n.0[0] & STRTAB_STE_0_S1CTXPTR, 0x4000_0040);
        assert_eq!(n.0[2], w2);
        assert!(Ste::build(
            &StreamConfig::Nested(Stage1Ste::single_cd(PhysAddr(0x40)), s2),
            &full()
        )
        .is_ok());
    }

    #[test]
    fn refuses_what_qemu_lacks() {
        let f = qemu();
        let s2 = Stage2Ste {
            vmid: 1,
            ttb: PhysAddr(0x1000),
            t0sz: 25,
            sl0: 1,
            walk: WalkAttrs::WB_ISH,
            ps: 4,
            affd: false,
            ptw: false,
            record: true,
            stall: false,
        };
        assert_eq!(
            Ste::build(&StreamConfig::Stage2(s2), &f),
            Err(Error::Unsupported(Unsupported::Stage2))
        );
        assert_eq!(
            Ste::build(
                &StreamConfig::Nested(Stage1Ste::single_cd(PhysAddr(0x40)), s2),
                &f
            ),
            Err(Error::Unsupported(Unsupported::Nested))
        );
        let table = Stage1Ste {
            cd_max: 4,
            ..Stage1Ste::single_cd(PhysAddr(0x1000))
        };
        assert_eq!(
            Ste::build(&StreamConfig::Stage1(table), &f),
            Err(Error::Unsupported(Unsupported::Substreams))
        );
        let two = Stage1Ste {
            fmt: S1Fmt::TwoLevel4K,
            ..Stage1Ste::single_cd(PhysAddr(0x1000))
        };
        assert_eq!(
            Ste::build(&StreamConfig::Stage1(two), &f),
            Err(Error::Unsupported(Unsupported::TwoLevelCdTable))
        );
        let stalld = Stage1Ste {
            stall_disable: true,
            ..Stage1Ste::single_cd(PhysAddr(0x1000))
        };
        assert_eq!(
            Ste::build(&StreamConfig::Stage1(stalld), &f),
            Err(Error::Unsupported(Unsupported::Stall))
        );
        assert_eq!(
            Ste::build(
                &StreamConfig::Stage1(Stage1Ste::single_cd(PhysAddr(0x1010))),
                &f
            ),
            Err(Error::Misaligned)
        );
        assert!(Ste::build(
            &StreamConfig::Stage1(Stage1Ste::single_cd(PhysAddr(0x1040))),
            &f
        )
        .is_ok());
        // With full hardware the same requests pass.
        let g = full();
        assert!(Ste::build(&StreamConfig::Stage2(s2), &g).is_ok());
        assert!(Ste::build(&StreamConfig::Stage1(table), &g).is_ok());
        assert!(Ste::build(&StreamConfig::Stage1(two), &g).is_ok());
        assert!(Ste::build(&StreamConfig::Stage1(stalld), &g).is_ok());
    }

    #[test]
    fn l1_descriptor() {
        let d = l1_desc(PhysAddr(0x8000_4000), 8);
        assert_eq!(d & 0x1f, 9);
        assert_eq!(d & STRTAB_L1_DESC_L2PTR, 0x8000_4000);
    }

    #[test]
    fn used_bits_follow_config() {
        assert_eq!(Ste::invalid().used_bits()[0], 1);
        assert_eq!(Ste::abort().used_bits(), [0xf, 0, 0, 0, 0, 0, 0, 0]);
        let b = Ste::bypass().used_bits();
        assert_ne!(b[1] & STRTAB_STE_1_SHCFG, 0);
        assert_eq!(b[0], 0xf);
        let s1 = Ste::encode(&StreamConfig::Stage1(Stage1Ste::single_cd(PhysAddr(0x40))));
        let u = s1.used_bits();
        assert_eq!(u[0] & STRTAB_STE_0_S1CTXPTR, STRTAB_STE_0_S1CTXPTR);
        assert_eq!(u[3], 0);
    }
}
