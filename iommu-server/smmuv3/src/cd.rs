//! Context descriptors (SMMUv3 spec §5.4 "Context Descriptor") and CD tables indexed by
//! SubstreamID (§5.3 "Level 1 Context Descriptor"; §3.3.2 for the table formats).
//!
//! A CD is 64 bytes: eight little-endian words. Word 0 carries the translation control
//! (TCR-like) fields, V and the ASID; word 1 TTB0; word 2 TTB1; word 3 MAIR.

use alloc::vec::Vec;

use crate::error::{Error, Unsupported};
use crate::features::{Features, Httu};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::regs::{field_get, field_prep, genmask};
use crate::ste::{S1Dss, S1Fmt, Stage1Ste, WalkAttrs};

/// Words per CD.
pub const CD_WORDS: usize = 8;
/// Bytes per CD.
pub const CD_BYTES: usize = 64;

/// CD.T0SZ `[5:0]`.
pub const CTXDESC_CD_0_TCR_T0SZ: u64 = genmask(5, 0);
/// CD.TG0 `[7:6]` (0 = 4KB, 1 = 64KB, 2 = 16KB).
pub const CTXDESC_CD_0_TCR_TG0: u64 = genmask(7, 6);
/// TG0 value for the 4KB granule.
pub const CTXDESC_CD_0_TCR_TG0_4K: u64 = 0;
/// CD.IR0 `[9:8]`: inner cacheability of TTB0 walks.
pub const CTXDESC_CD_0_TCR_IRGN0: u64 = genmask(9, 8);
/// CD.OR0 `[11:10]`.
pub const CTXDESC_CD_0_TCR_ORGN0: u64 = genmask(11, 10);
/// CD.SH0 `[13:12]`.
pub const CTXDESC_CD_0_TCR_SH0: u64 = genmask(13, 12);
/// CD.EPD0: disable TTB0 walks.
pub const CTXDESC_CD_0_TCR_EPD0: u64 = 1 << 14;
/// CD.ENDI: big-endian tables.
pub const CTXDESC_CD_0_ENDI: u64 = 1 << 15;
/// CD.EPD1: disable TTB1 walks.
pub const CTXDESC_CD_0_TCR_EPD1: u64 = 1 << 30;
/// CD.V: valid.
pub const CTXDESC_CD_0_V: u64 = 1 << 31;
/// CD.IPS `[34:32]`: intermediate physical (output) size.
pub const CTXDESC_CD_0_TCR_IPS: u64 = genmask(34, 32);
/// CD.AFFD: access flag faults disabled.
pub const CTXDESC_CD_0_AFFD: u64 = 1 << 35;
/// CD.TBI `[39:38]`: top byte ignore.
pub const CTXDESC_CD_0_TCR_TBI: u64 = genmask(39, 38);
/// CD.AA64: AArch64 tables.
pub const CTXDESC_CD_0_AA64: u64 = 1 << 41;
/// CD.HD: hardware dirty state update.
pub const CTXDESC_CD_0_TCR_HD: u64 = 1 << 42;
/// CD.HA: hardware access flag update.
pub const CTXDESC_CD_0_TCR_HA: u64 = 1 << 43;
/// CD.S: stall faults.
pub const CTXDESC_CD_0_S: u64 = 1 << 44;
/// CD.R: record faults.
pub const CTXDESC_CD_0_R: u64 = 1 << 45;
/// CD.A: abort (rather than RAZ/WI) terminated transactions.
pub const CTXDESC_CD_0_A: u64 = 1 << 46;
/// CD.ASET: ASID set (1 = not shared with PE broadcast TLBI).
pub const CTXDESC_CD_0_ASET: u64 = 1 << 47;
/// CD.ASID `[63:48]`.
pub const CTXDESC_CD_0_ASID: u64 = genmask(63, 48);
/// CD.HAD0 (word 1 bit 1): hierarchical attribute disable for TTB0 walks.
pub const CTXDESC_CD_1_HAD0: u64 = 1 << 1;
/// CD.TTB0 `[51:4]`.
pub const CTXDESC_CD_1_TTB0: u64 = genmask(51, 4);
/// CD.TTB1 `[51:4]` (word 2).
pub const CTXDESC_CD_2_TTB1: u64 = genmask(51, 4);

/// L1CD.V.
pub const CTXDESC_L1_DESC_V: u64 = 1 << 0;
/// L1CD.L2Ptr `[51:12]`.
pub const CTXDESC_L1_DESC_L2PTR: u64 = genmask(51, 12);
/// CDs per two-level leaf table (64KB leaves, STE.S1Fmt = 64K_L2).
pub const CTXDESC_L2_ENTRIES: usize = 1024;

/// Stage-1 context: what a CD describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdConfig {
    /// ASID tagging the TLB entries.
    pub asid: u16,
    /// Root of the stage-1 table (TTB0).
    pub ttb0: PhysAddr,
    /// T0SZ (input size = 64 - t0sz; 16..=39 for the 4KB granule).
    pub t0sz: u8,
    /// Walk attributes for TTB0.
    pub walk: WalkAttrs,
    /// IPS output size encoding (0 = 32 bits ... 5 = 48 bits).
    pub ips: u8,
    /// MAIR value the leaf entries' AttrIndx select from.
    pub mair: u64,
    /// Disable access flag faults.
    pub affd: bool,
    /// Hardware access flag update (needs HTTU).
    pub ha: bool,
    /// Hardware dirty update (needs HTTU = access+dirty).
    pub hd: bool,
    /// ASET: true keeps the ASID out of broadcast TLB maintenance.
    pub aset: bool,
    /// Hierarchical attribute disable (needs IDR3.HAD).
    pub had: bool,
}

/// A 64-byte context descriptor as host-order words (stored little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cd(pub [u64; CD_WORDS]);

impl Cd {
    /// The invalid CD.
    pub const fn invalid() -> Self {
        Self([0; CD_WORDS])
    }

    /// Encode without checking against features.
    pub fn encode(c: &CdConfig) -> Self {
        let mut w = [0u64; CD_WORDS];
        w[0] = field_prep(CTXDESC_CD_0_TCR_T0SZ, u64::from(c.t0sz))
            | field_prep(CTXDESC_CD_0_TCR_TG0, CTXDESC_CD_0_TCR_TG0_4K)
            | field_prep(CTXDESC_CD_0_TCR_IRGN0, u64::from(c.walk.inner))
            | field_prep(CTXDESC_CD_0_TCR_ORGN0, u64::from(c.walk.outer))
            | field_prep(CTXDESC_CD_0_TCR_SH0, u64::from(c.walk.share))
            | CTXDESC_CD_0_TCR_EPD1
            | CTXDESC_CD_0_V
            | field_prep(CTXDESC_CD_0_TCR_IPS, u64::from(c.ips))
            | if c.affd { CTXDESC_CD_0_AFFD } else { 0 }
            | CTXDESC_CD_0_AA64
            | if c.hd { CTXDESC_CD_0_TCR_HD } else { 0 }
            | if c.ha { CTXDESC_CD_0_TCR_HA } else { 0 }
            | CTXDESC_CD_0_R
            | CTXDESC_CD_0_A
            | if c.aset { CTXDESC_CD_0_ASET } else { 0 }
            | field_prep(CTXDESC_CD_0_ASID, u64::from(c.asid));
        w[1] = (c.ttb0.0 & CTXDESC_CD_1_TTB0) | if c.had { CTXDESC_CD_1_HAD0 } else { 0 };
        w[3] = c.mair;
        Self(w)
    }

    /// Check against the hardware, then encode.
    pub fn build(c: &CdConfig, f: &Features) -> Result<Self, Error> {
        f.require_stage1()?;
        f.check_asid(c.asid)?;
        if !(16..=39).contains(&c.t0sz) {
            return Err(Error::InvalidField("T0SZ"));
        }
        if c.ips > f.oas_encoding() {
            return Err(Unsupported::AddressSize.into());
        }
        if c.ha && f.httu == Httu::None {
            return Err(Unsupported::HardwareAccessFlag.into());
        }
        if c.hd && (f.httu != Httu::AccessDirty || !c.ha) {
            return Err(Unsupported::HardwareDirty.into());
        }
        if c.had && !f.had {
            return Err(Error::InvalidField("HAD0"));
        }
        if c.ttb0.0 & !CTXDESC_CD_1_TTB0 != 0 {
            return Err(Error::Misaligned);
        }
        Ok(Self::encode(c))
    }

    /// CD.V.
    pub fn valid(&self) -> bool {
        self.0[0] & CTXDESC_CD_0_V != 0
    }

    /// CD.ASID.
    pub fn asid(&self) -> u16 {
        field_get(CTXDESC_CD_0_ASID, self.0[0]) as u16
    }

    /// Bits the SMMU interprets for this CD (basis of the hitless update rules).
    pub fn used_bits(&self) -> [u64; CD_WORDS] {
        let mut used = [0u64; CD_WORDS];
        used[0] = CTXDESC_CD_0_V;
        if !self.valid() {
            return used;
        }
        used[0] = u64::MAX;
        used[1] = CTXDESC_CD_1_TTB0 | CTXDESC_CD_1_HAD0;
        if self.0[0] & CTXDESC_CD_0_TCR_EPD1 == 0 {
            used[2] = CTXDESC_CD_2_TTB1;
        }
        used[3] = u64::MAX;
        used
    }
}

/// Layout of the CDs a stream uses.
#[derive(Debug)]
enum Layout {
    /// `2^bits` CDs in one contiguous table (bits = 0: a single CD).
    Linear { bits: u8 },
    /// L1 table of `2^(bits-10)` descriptors pointing at 1024-CD leaves.
    TwoLevel {
        bits: u8,
        leaves: Vec<Option<PhysAddr>>,
    },
}

/// A CD or CD table owned by the driver.
#[derive(Debug)]
pub struct CdTable {
    base: PhysAddr,
    layout: Layout,
}

/// Where a CD lives, and whether reaching it changed an L1 descriptor (which then needs
/// CFGI_CD with Leaf = 0 before use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdSlot {
    /// Address of the 64-byte CD.
    pub addr: PhysAddr,
    /// An L1 descriptor was written to reach it.
    pub l1_written: bool,
}

impl CdTable {
    fn table_bytes(bits: u8) -> usize {
        CD_BYTES << bits
    }

    /// A single CD (STE.S1CDMax = 0): all the QEMU model supports (SSIDSIZE = 0).
    pub fn single<M: DmaMemory>(mem: &mut M) -> Result<Self, Error> {
        let base = mem
            .alloc_zeroed(CD_BYTES, CD_BYTES)
            .ok_or(Error::OutOfMemory)?;
        Ok(Self {
            base,
            layout: Layout::Linear { bits: 0 },
        })
    }

    /// A linear table of `2^ssid_bits` CDs. Refused when the SMMU has no substreams or
    /// fewer SubstreamID bits.
    pub fn linear<M: DmaMemory>(mem: &mut M, f: &Features, ssid_bits: u8) -> Result<Self, Error> {
        if f.ssid_bits == 0 || ssid_bits == 0 || ssid_bits > f.ssid_bits {
            return Err(Unsupported::Substreams.into());
        }
        if ssid_bits > 12 {
            // Keep linear tables at most 256KB; larger ones should be two-level.
            return Err(Error::InvalidField("linear CD table size"));
        }
        let bytes = Self::table_bytes(ssid_bits);
        let base = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
        Ok(Self {
            base,
            layout: Layout::Linear { bits: ssid_bits },
        })
    }

    /// A two-level table covering `2^ssid_bits` SubstreamIDs with 1024-CD leaves allocated
    /// on first use. Refused without IDR0.CD2L or enough SSIDSIZE.
    pub fn two_level<M: DmaMemory>(
        mem: &mut M,
        f: &Features,
        ssid_bits: u8,
    ) -> Result<Self, Error> {
        if f.ssid_bits == 0 || ssid_bits > f.ssid_bits {
            return Err(Unsupported::Substreams.into());
        }
        if !f.cd2l {
            return Err(Unsupported::TwoLevelCdTable.into());
        }
        if ssid_bits <= 10 {
            return Err(Error::InvalidField(
                "two-level CD table needs more than 10 SSID bits",
            ));
        }
        let l1_entries = 1usize << (ssid_bits - 10);
        let bytes = (l1_entries * 8).max(64);
        let base = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
        let mut leaves = Vec::new();
        leaves.resize(l1_entries, None);
        Ok(Self {
            base,
            layout: Layout::TwoLevel {
                bits: ssid_bits,
                leaves,
            },
        })
    }

    /// Base address (STE.S1ContextPtr).
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// log2 of the number of CDs (STE.S1CDMax).
    pub fn ssid_bits(&self) -> u8 {
        match self.layout {
            Layout::Linear { bits } | Layout::TwoLevel { bits, .. } => bits,
        }
    }

    /// The stage-1 STE fields pointing at this table.
    pub fn stage1_ste(&self, dss: S1Dss) -> Stage1Ste {
        Stage1Ste {
            context_ptr: self.base,
            cd_max: self.ssid_bits(),
            fmt: match self.layout {
                Layout::Linear { .. } => S1Fmt::Linear,
                Layout::TwoLevel { .. } => S1Fmt::TwoLevel64K,
            },
            dss,
            ..Stage1Ste::single_cd(self.base)
        }
    }

    /// Address of the CD for `ssid`, allocating its leaf table if needed.
    pub fn slot<M: DmaMemory>(&mut self, mem: &mut M, ssid: u32) -> Result<CdSlot, Error> {
        if u64::from(ssid) >> self.ssid_bits() != 0 {
            return Err(Error::InvalidSubstreamId(ssid));
        }
        match &mut self.layout {
            Layout::Linear { .. } => Ok(CdSlot {
                addr: PhysAddr(self.base.0 + u64::from(ssid) * CD_BYTES as u64),
                l1_written: false,
            }),
            Layout::TwoLevel { leaves, .. } => {
                let l1 = ssid as usize / CTXDESC_L2_ENTRIES;
                let l2 = ssid as usize % CTXDESC_L2_ENTRIES;
                let mut l1_written = false;
                let leaf = match leaves[l1] {
                    Some(p) => p,
                    None => {
                        let bytes = CTXDESC_L2_ENTRIES * CD_BYTES;
                        let p = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
                        // SAFETY: the L1 table is a live region of `leaves.len()` words.
                        let w = unsafe { Words::new(&*mem, self.base, leaves.len()) };
                        w.store(l1, CTXDESC_L1_DESC_V | (p.0 & CTXDESC_L1_DESC_L2PTR));
                        leaves[l1] = Some(p);
                        l1_written = true;
                        p
                    }
                };
                Ok(CdSlot {
                    addr: PhysAddr(leaf.0 + (l2 * CD_BYTES) as u64),
                    l1_written,
                })
            }
        }
    }

    /// Free the table and its leaves.
    ///
    /// # Safety
    /// No STE may point at the table any more, and the invalidation of those STEs must
    /// have completed (CFGI + CMD_SYNC), so the SMMU no longer reads it.
    pub unsafe fn free<M: DmaMemory>(self, mem: &mut M) {
        match self.layout {
            Layout::Linear { bits } => {
                let b = Self::table_bytes(bits);
                // SAFETY: allocated in `single`/`linear` with this size and alignment;
                // the caller guarantees the SMMU no longer reads it.
                unsafe { mem.free(self.base, b, b) }
            }
            Layout::TwoLevel { leaves, .. } => {
                let leaf_bytes = CTXDESC_L2_ENTRIES * CD_BYTES;
                for p in leaves.iter().flatten() {
                    // SAFETY: allocated in `slot` with this layout; unused per the caller.
                    unsafe { mem.free(*p, leaf_bytes, leaf_bytes) }
                }
                let b = (leaves.len() * 8).max(64);
                // SAFETY: allocated in `two_level` with this layout; unused per the caller.
                unsafe { mem.free(self.base, b, b) }
            }
        }
    }
}

/// The MAIR value used with [`crate::pagetable`]'s AttrIndx values:
/// index 0 Normal write-back (0xff), 1 Device-nGnRE (0x04), 2 Normal non-cacheable (0x44).
pub const DEFAULT_MAIR: u64 = 0x0044_04ff;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{IdRegs, QEMU_7_2_IDREGS};
    use crate::mem::IdentityHeap;

    fn cfg() -> CdConfig {
        CdConfig {
            asid: 0xbeef,
            ttb0: PhysAddr(0x0000_0123_4567_8000),
            t0sz: 25,
            walk: WalkAttrs {
                inner: 1,
                outer: 2,
                share: 3,
            },
            ips: 4,
            mair: DEFAULT_MAIR,
            affd: true,
            ha: false,
            hd: false,
            aset: true,
            had: false,
        }
    }

    #[test]
    fn cd_word0_fields() {
        let cd = Cd::encode(&cfg());
        let w0 = cd.0[0];
        assert_eq!(w0 & 0x3f, 25, "T0SZ");
        assert_eq!((w0 >> 6) & 3, 0, "TG0 4K");
        assert_eq!((w0 >> 8) & 3, 1, "IR0");
        assert_eq!((w0 >> 10) & 3, 2, "OR0");
        assert_eq!((w0 >> 12) & 3, 3, "SH0");
        assert_eq!((w0 >> 14) & 1, 0, "EPD0");
        assert_eq!((w0 >> 15) & 1, 0, "ENDI");
        assert_eq!((w0 >> 30) & 1, 1, "EPD1");
        assert_eq!((w0 >> 31) & 1, 1, "V");
        assert_eq!((w0 >> 32) & 7, 4, "IPS");
        assert_eq!((w0 >> 35) & 1, 1, "AFFD");
        assert_eq!((w0 >> 41) & 1, 1, "AA64");
        assert_eq!((w0 >> 42) & 3, 0, "HD/HA");
        assert_eq!((w0 >> 44) & 1, 0, "S");
        assert_eq!((w0 >> 45) & 1, 1, "R");
        assert_eq!((w0 >> 46) & 1, 1, "A");
        assert_eq!((w0 >> 47) & 1, 1, "ASET");
        assert_eq!(w0 >> 48, 0xbeef, "ASID");
        assert_eq!(cd.0[1], 0x0000_0123_4567_8000);
        assert_eq!(cd.0[2], 0);
        assert_eq!(cd.0[3], 0x0044_04ff);
        assert_eq!(cd.asid(), 0xbeef);
        let hw = Cd::encode(&CdConfig {
            ha: true,
            hd: true,
            had: true,
            ..cfg()
        });
        assert_eq!((hw.0[0] >> 42) & 3, 3);
        assert_eq!(hw.0[1] & 2, 2);
    }

    #[test]
    fn cd_refusals() {
        let q = Features::decode(&QEMU_7_2_IDREGS);
        assert!(Cd::build(&cfg(), &q).is_ok());
        assert_eq!(
            Cd::build(&CdConfig { ha: true, ..cfg() }, &q),
            Err(Error::Unsupported(Unsupported::HardwareAccessFlag))
        );
        assert_eq!(
            Cd::build(&CdConfig { ips: 5, ..cfg() }, &q),
            Err(Error::Unsupported(Unsupported::AddressSize))
        );
        assert_eq!(
            Cd::build(&CdConfig { t0sz: 12, ..cfg() }, &q),
            Err(Error::InvalidField("T0SZ"))
        );
        let small = Features::decode(&IdRegs {
            idr: [0x2 | (2 << 2) | (2 << 21), 0, 0, 0, 0, 0x14],
            aidr: 0,
        });
        assert_eq!(
            Cd::build(&cfg(), &small),
            Err(Error::Unsupported(Unsupported::Asid16))
        );
        assert!(Cd::build(
            &CdConfig {
                asid: 0xff,
                ..cfg()
            },
            &small
        )
        .is_ok());
    }

    #[test]
    fn cd_tables_refused_without_substreams() {
        let q = Features::decode(&QEMU_7_2_IDREGS);
        let mut m = IdentityHeap::new();
        assert_eq!(
            CdTable::linear(&mut m, &q, 4).err(),
            Some(Error::Unsupported(Unsupported::Substreams))
        );
        assert_eq!(
            CdTable::two_level(&mut m, &q, 16).err(),
            Some(Error::Unsupported(Unsupported::Substreams))
        );
        let single = CdTable::single(&mut m).unwrap();
        assert_eq!(single.ssid_bits(), 0);
        assert_eq!(single.base().0 % 64, 0);
        // SAFETY: never referenced by hardware.
        unsafe { single.free(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn linear_and_two_level_tables() {
        // S1P, AArch64, LE, CD2L, SSIDSIZE = 20.
        let f = Features::decode(&IdRegs {
            idr: [
                0x2 | (2 << 2) | (1 << 19) | (2 << 21),
                20 << 6,
                0,
                0,
                0,
                0x14,
            ],
            aidr: 0,
        });
        let mut m = IdentityHeap::new();
        let mut lin = CdTable::linear(&mut m, &f, 4).unwrap();
        let s = lin.slot(&mut m, 3).unwrap();
        assert_eq!(s.addr.0, lin.base().0 + 3 * 64);
        assert!(!s.l1_written);
        assert_eq!(lin.slot(&mut m, 16), Err(Error::InvalidSubstreamId(16)));
        let ste = lin.stage1_ste(S1Dss::Substream0);
        assert_eq!((ste.cd_max, ste.fmt), (4, S1Fmt::Linear));

        let mut two = CdTable::two_level(&mut m, &f, 16).unwrap();
        let a = two.slot(&mut m, 0x1401).unwrap();
        assert!(a.l1_written);
        let b = two.slot(&mut m, 0x1402).unwrap();
        assert!(!b.l1_written);
        assert_eq!(b.addr.0 - a.addr.0, 64);
        // SAFETY: the L1 table has 64 words and is live.
        let l1 = unsafe { Words::new(&m, two.base(), 64) };
        let d = l1.load(5);
        assert_eq!(d & 1, 1);
        assert_eq!(d & CTXDESC_L1_DESC_L2PTR, a.addr.0 - 64);
        assert_eq!(two.stage1_ste(S1Dss::Bypass).fmt, S1Fmt::TwoLevel64K);
        // SAFETY: never referenced by hardware.
        unsafe {
            lin.free(&mut m);
            two.free(&mut m);
        }
        assert_eq!(m.live_bytes, 0);
    }

    #[test]
    fn used_bits() {
        assert_eq!(
            Cd::invalid().used_bits(),
            [CTXDESC_CD_0_V, 0, 0, 0, 0, 0, 0, 0]
        );
        let u = Cd::encode(&cfg()).used_bits();
        assert_eq!(u[0], u64::MAX);
        assert_eq!(u[2], 0, "EPD1 set: TTB1 unused");
        assert_eq!(u[3], u64::MAX);
    }
}
