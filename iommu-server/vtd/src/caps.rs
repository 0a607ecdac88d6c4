//! CAP_REG and ECAP_REG (VT-d spec §11.4.2, §11.4.3) decoded into typed feature sets,
//! plus checks that refuse configurations the hardware lacks.

use crate::error::{Result, Unsupported};
use crate::regs::{field_get, genmask, RegisterIo};

// --- CAP_REG fields (§11.4.2) ---
/// CAP.ND `[2:0]`: number of domains supported = 2^(4 + 2 * ND).
pub const CAP_ND: u64 = genmask(2, 0);
/// CAP.AFL (3): advanced fault logging.
pub const CAP_AFL: u64 = 1 << 3;
/// CAP.RWBF (4): required write-buffer flushing.
pub const CAP_RWBF: u64 = 1 << 4;
/// CAP.PLMR (5): protected low-memory region.
pub const CAP_PLMR: u64 = 1 << 5;
/// CAP.PHMR (6): protected high-memory region.
pub const CAP_PHMR: u64 = 1 << 6;
/// CAP.CM (7): caching mode (not-present and erroneous entries may be cached).
pub const CAP_CM: u64 = 1 << 7;
/// CAP.SAGAW `[12:8]`: supported adjusted guest address widths (second-level depths).
pub const CAP_SAGAW: u64 = genmask(12, 8);
/// CAP.MGAW `[21:16]`: maximum guest address width minus one.
pub const CAP_MGAW: u64 = genmask(21, 16);
/// CAP.ZLR (22): zero-length reads.
pub const CAP_ZLR: u64 = 1 << 22;
/// CAP.FRO `[33:24]`: fault recording register offset in 16-byte units.
pub const CAP_FRO: u64 = genmask(33, 24);
/// CAP.SLLPS `[37:34]`: second-level large page support (bit 0: 2MB, bit 1: 1GB).
pub const CAP_SLLPS: u64 = genmask(37, 34);
/// CAP.PSI (39): page-selective invalidation.
pub const CAP_PSI: u64 = 1 << 39;
/// CAP.NFR `[47:40]`: number of fault recording registers minus one.
pub const CAP_NFR: u64 = genmask(47, 40);
/// CAP.MAMV `[53:48]`: maximum address mask value for page-selective invalidation.
pub const CAP_MAMV: u64 = genmask(53, 48);
/// CAP.DWD (54): write draining.
pub const CAP_DWD: u64 = 1 << 54;
/// CAP.DRD (55): read draining.
pub const CAP_DRD: u64 = 1 << 55;
/// CAP.FL1GP (56): first-level 1GB pages.
pub const CAP_FL1GP: u64 = 1 << 56;
/// CAP.PI (59): posted interrupts.
pub const CAP_PI: u64 = 1 << 59;
/// CAP.FL5LP (60): first-level 5-level paging.
pub const CAP_FL5LP: u64 = 1 << 60;
/// CAP.ESIRTPS (62): enhanced set interrupt remap table pointer.
pub const CAP_ESIRTPS: u64 = 1 << 62;
/// CAP.ESRTPS (63): enhanced set root table pointer (SRTP also invalidates caches).
pub const CAP_ESRTPS: u64 = 1 << 63;

/// SAGAW bit for 39-bit, 3-level second-level tables.
pub const SAGAW_39_3LEVEL: u8 = 1 << 1;
/// SAGAW bit for 48-bit, 4-level tables.
pub const SAGAW_48_4LEVEL: u8 = 1 << 2;
/// SAGAW bit for 57-bit, 5-level tables.
pub const SAGAW_57_5LEVEL: u8 = 1 << 3;

// --- ECAP_REG fields (§11.4.3) ---
/// ECAP.C (0): page-walk coherency.
pub const ECAP_C: u64 = 1 << 0;
/// ECAP.QI (1): queued invalidation.
pub const ECAP_QI: u64 = 1 << 1;
/// ECAP.DT (2): device-TLB (ATS).
pub const ECAP_DT: u64 = 1 << 2;
/// ECAP.IR (3): interrupt remapping.
pub const ECAP_IR: u64 = 1 << 3;
/// ECAP.EIM (4): extended interrupt mode (x2APIC).
pub const ECAP_EIM: u64 = 1 << 4;
/// ECAP.PT (6): pass-through.
pub const ECAP_PT: u64 = 1 << 6;
/// ECAP.SC (7): snoop control.
pub const ECAP_SC: u64 = 1 << 7;
/// ECAP.IRO `[17:8]`: IOTLB register offset in 16-byte units.
pub const ECAP_IRO: u64 = genmask(17, 8);
/// ECAP.MHMV `[23:20]`: maximum handle mask value (interrupt-entry-cache invalidation).
pub const ECAP_MHMV: u64 = genmask(23, 20);
/// ECAP.MTS (25): memory type support.
pub const ECAP_MTS: u64 = 1 << 25;
/// ECAP.NEST (26): nested translation.
pub const ECAP_NEST: u64 = 1 << 26;
/// ECAP.PRS (29): page requests.
pub const ECAP_PRS: u64 = 1 << 29;
/// ECAP.ERS (30): execute requests.
pub const ECAP_ERS: u64 = 1 << 30;
/// ECAP.SRS (31): supervisor requests.
pub const ECAP_SRS: u64 = 1 << 31;
/// ECAP.NWFS (33): no write flag.
pub const ECAP_NWFS: u64 = 1 << 33;
/// ECAP.EAFS (34): extended accessed flag.
pub const ECAP_EAFS: u64 = 1 << 34;
/// ECAP.PSS `[39:35]`: PASID size supported minus one.
pub const ECAP_PSS: u64 = genmask(39, 35);
/// ECAP.PASID (40): process address space IDs.
pub const ECAP_PASID: u64 = 1 << 40;
/// ECAP.DIT (41): device-TLB invalidation throttling.
pub const ECAP_DIT: u64 = 1 << 41;
/// ECAP.PDS (42): page-request drain.
pub const ECAP_PDS: u64 = 1 << 42;
/// ECAP.SMTS (43): scalable-mode translation.
pub const ECAP_SMTS: u64 = 1 << 43;
/// ECAP.VCS (44): virtual command.
pub const ECAP_VCS: u64 = 1 << 44;
/// ECAP.SLADS (45): second-level accessed/dirty.
pub const ECAP_SLADS: u64 = 1 << 45;
/// ECAP.SLTS (46): second-level translation (in scalable mode).
pub const ECAP_SLTS: u64 = 1 << 46;
/// ECAP.FLTS (47): first-level translation.
pub const ECAP_FLTS: u64 = 1 << 47;
/// ECAP.SMPWCS (48): scalable-mode page-walk coherency.
pub const ECAP_SMPWCS: u64 = 1 << 48;
/// ECAP.RPS (49): RID-PASID support.
pub const ECAP_RPS: u64 = 1 << 49;

/// QEMU 7.2 `intel-iommu` defaults (measured): CAP.
pub const QEMU_7_2_CAP: u64 = 0x00d2_008c_2226_0206;
/// QEMU 7.2 ECAP, legacy mode.
pub const QEMU_7_2_ECAP_LEGACY: u64 = 0x00f0_0f4a;
/// QEMU 7.2 ECAP with `x-scalable-mode=on`.
pub const QEMU_7_2_ECAP_SCALABLE: u64 = 0x4800_80f0_0f4a;
/// QEMU 7.2 ECAP with `x-scalable-mode=on,x-pasid-mode=on`.
pub const QEMU_7_2_ECAP_PASID: u64 = 0x4900_80f0_0f4a;

/// CAP_REG decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Raw value.
    pub raw: u64,
    /// ND: domain-id width code; [`Cap::domains`] gives the count.
    pub nd: u8,
    /// AFL: advanced fault logging.
    pub afl: bool,
    /// RWBF: write buffers must be flushed after table updates.
    pub rwbf: bool,
    /// PLMR: protected low-memory region.
    pub plmr: bool,
    /// PHMR: protected high-memory region.
    pub phmr: bool,
    /// CM: caching mode; not-present entries may be cached, so making an entry present
    /// needs an invalidation too.
    pub cm: bool,
    /// SAGAW bitmap (see [`SAGAW_39_3LEVEL`] and friends).
    pub sagaw: u8,
    /// MGAW: maximum guest address width in bits.
    pub mgaw: u8,
    /// ZLR: zero-length reads.
    pub zlr: bool,
    /// FRO: fault recording register offset in 16-byte units.
    pub fro: u16,
    /// SLLPS: 2MB second-level pages.
    pub sl_2m: bool,
    /// SLLPS: 1GB second-level pages.
    pub sl_1g: bool,
    /// PSI: page-selective invalidation.
    pub psi: bool,
    /// NFR: number of fault recording registers (already plus one).
    pub nfr: u16,
    /// MAMV: largest address mask of a page-selective invalidation.
    pub mamv: u8,
    /// DWD: write draining.
    pub dwd: bool,
    /// DRD: read draining.
    pub drd: bool,
    /// FL1GP: first-level 1GB pages.
    pub fl1gp: bool,
    /// PI: posted interrupts.
    pub pi: bool,
    /// FL5LP: first-level 5-level paging.
    pub fl5lp: bool,
    /// ESRTPS: SRTP also invalidates all caches.
    pub esrtps: bool,
    /// ESIRTPS: SIRTP also invalidates the interrupt entry cache.
    pub esirtps: bool,
}

impl Cap {
    /// Decode a CAP_REG value.
    pub const fn decode(raw: u64) -> Self {
        Self {
            raw,
            nd: field_get(CAP_ND, raw) as u8,
            afl: raw & CAP_AFL != 0,
            rwbf: raw & CAP_RWBF != 0,
            plmr: raw & CAP_PLMR != 0,
            phmr: raw & CAP_PHMR != 0,
            cm: raw & CAP_CM != 0,
            sagaw: field_get(CAP_SAGAW, raw) as u8,
            mgaw: field_get(CAP_MGAW, raw) as u8 + 1,
            zlr: raw & CAP_ZLR != 0,
            fro: field_get(CAP_FRO, raw) as u16,
            sl_2m: field_get(CAP_SLLPS, raw) & 1 != 0,
            sl_1g: field_get(CAP_SLLPS, raw) & 2 != 0,
            psi: raw & CAP_PSI != 0,
            nfr: field_get(CAP_NFR, raw) as u16 + 1,
            mamv: field_get(CAP_MAMV, raw) as u8,
            dwd: raw & CAP_DWD != 0,
            drd: raw & CAP_DRD != 0,
            fl1gp: raw & CAP_FL1GP != 0,
            pi: raw & CAP_PI != 0,
            fl5lp: raw & CAP_FL5LP != 0,
            esrtps: raw & CAP_ESRTPS != 0,
            esirtps: raw & CAP_ESIRTPS != 0,
        }
    }

    /// Number of domain-ids (2^(4 + 2 * ND)); ND values above 6 are reserved and treated
    /// as 6 (65536).
    pub const fn domains(&self) -> u32 {
        let nd = if self.nd > 6 { 6 } else { self.nd };
        1 << (4 + 2 * nd as u32)
    }

    /// Whether a second-level table with `levels` levels (3, 4 or 5) is supported.
    pub const fn supports_levels(&self, levels: u8) -> bool {
        match levels {
            3 => self.sagaw & SAGAW_39_3LEVEL != 0,
            4 => self.sagaw & SAGAW_48_4LEVEL != 0,
            5 => self.sagaw & SAGAW_57_5LEVEL != 0,
            _ => false,
        }
    }
}

/// ECAP_REG decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecap {
    /// Raw value.
    pub raw: u64,
    /// C: page-walk coherency.
    pub c: bool,
    /// QI: queued invalidation.
    pub qi: bool,
    /// DT: device-TLBs.
    pub dt: bool,
    /// IR: interrupt remapping.
    pub ir: bool,
    /// EIM: extended interrupt mode.
    pub eim: bool,
    /// PT: pass-through.
    pub pt: bool,
    /// SC: snoop control.
    pub sc: bool,
    /// IRO: IOTLB register offset in 16-byte units.
    pub iro: u16,
    /// MHMV: maximum handle mask value.
    pub mhmv: u8,
    /// MTS: memory type support.
    pub mts: bool,
    /// NEST: nested translation.
    pub nest: bool,
    /// PRS: page requests.
    pub prs: bool,
    /// ERS: execute requests.
    pub ers: bool,
    /// SRS: supervisor requests.
    pub srs: bool,
    /// NWFS: no write flag.
    pub nwfs: bool,
    /// EAFS: extended accessed flag.
    pub eafs: bool,
    /// PSS: PASID width in bits (PSS + 1; meaningful only with `pasid`).
    pub pasid_bits: u8,
    /// PASID: PASID support.
    pub pasid: bool,
    /// DIT: device-TLB invalidation throttling.
    pub dit: bool,
    /// PDS: page-request drain.
    pub pds: bool,
    /// SMTS: scalable-mode translation.
    pub smts: bool,
    /// VCS: virtual command.
    pub vcs: bool,
    /// SLADS: second-level accessed/dirty.
    pub slads: bool,
    /// SLTS: second-level translation in scalable mode.
    pub slts: bool,
    /// FLTS: first-level translation.
    pub flts: bool,
    /// SMPWCS: scalable-mode page-walk coherency.
    pub smpwcs: bool,
    /// RPS: RID-PASID.
    pub rps: bool,
}

impl Ecap {
    /// Decode an ECAP_REG value.
    pub const fn decode(raw: u64) -> Self {
        Self {
            raw,
            c: raw & ECAP_C != 0,
            qi: raw & ECAP_QI != 0,
            dt: raw & ECAP_DT != 0,
            ir: raw & ECAP_IR != 0,
            eim: raw & ECAP_EIM != 0,
            pt: raw & ECAP_PT != 0,
            sc: raw & ECAP_SC != 0,
            iro: field_get(ECAP_IRO, raw) as u16,
            mhmv: field_get(ECAP_MHMV, raw) as u8,
            mts: raw & ECAP_MTS != 0,
            nest: raw & ECAP_NEST != 0,
            prs: raw & ECAP_PRS != 0,
            ers: raw & ECAP_ERS != 0,
            srs: raw & ECAP_SRS != 0,
            nwfs: raw & ECAP_NWFS != 0,
            eafs: raw & ECAP_EAFS != 0,
            pasid_bits: field_get(ECAP_PSS, raw) as u8 + 1,
            pasid: raw & ECAP_PASID != 0,
            dit: raw & ECAP_DIT != 0,
            pds: raw & ECAP_PDS != 0,
            smts: raw & ECAP_SMTS != 0,
            vcs: raw & ECAP_VCS != 0,
            slads: raw & ECAP_SLADS != 0,
            slts: raw & ECAP_SLTS != 0,
            flts: raw & ECAP_FLTS != 0,
            smpwcs: raw & ECAP_SMPWCS != 0,
            rps: raw & ECAP_RPS != 0,
        }
    }
}

/// Translation table mode (RTADDR.TTM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Legacy root/context entries (§9.1, §9.3).
    Legacy,
    /// Scalable-mode root/context entries with PASID tables (§9.2, §9.4-§9.6).
    Scalable,
}

/// Translation type of a scalable-mode PASID entry (PGTT) or what a legacy context entry
/// asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationKind {
    /// First-level (IA-32e style) tables.
    FirstLevel,
    /// Second-level tables.
    SecondLevel,
    /// First-level nested on second-level.
    Nested,
    /// No translation.
    PassThrough,
}

/// CAP and ECAP together, with checks for what a configuration needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// VER_REG major.minor.
    pub version: (u8, u8),
    /// Decoded CAP_REG.
    pub cap: Cap,
    /// Decoded ECAP_REG.
    pub ecap: Ecap,
}

impl Features {
    /// Decode raw register values.
    pub const fn new(ver: u32, cap: u64, ecap: u64) -> Self {
        Self {
            version: (((ver >> 4) & 0xf) as u8, (ver & 0xf) as u8),
            cap: Cap::decode(cap),
            ecap: Ecap::decode(ecap),
        }
    }

    /// Read VER, CAP and ECAP.
    pub fn probe<R: RegisterIo>(regs: &mut R) -> Self {
        let ver = regs.read32(crate::regs::VER);
        let cap = regs.read64(crate::regs::CAP);
        let ecap = regs.read64(crate::regs::ECAP);
        Self::new(ver, cap, ecap)
    }

    /// Refuse `mode` if the hardware lacks it.
    pub fn check_mode(&self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Legacy => Ok(()),
            Mode::Scalable if self.ecap.smts => Ok(()),
            Mode::Scalable => Err(Unsupported::ScalableMode.into()),
        }
    }

    /// The preferred mode: scalable when ECAP.SMTS and ECAP.SLTS (the driver uses
    /// second-level tables), legacy otherwise.
    pub const fn preferred_mode(&self) -> Mode {
        if self.ecap.smts && self.ecap.slts {
            Mode::Scalable
        } else {
            Mode::Legacy
        }
    }

    /// Refuse queued invalidation without ECAP.QI.
    pub fn check_queued_invalidation(&self) -> Result<()> {
        if self.ecap.qi {
            Ok(())
        } else {
            Err(Unsupported::QueuedInvalidation.into())
        }
    }

    /// Refuse register-based invalidation on hardware that dropped it (VER_REG major
    /// version 6 and later support only queued invalidation, VT-d spec §6.5).
    pub fn check_register_invalidation(&self) -> Result<()> {
        if self.version.0 < 6 {
            Ok(())
        } else {
            Err(Unsupported::RegisterInvalidation.into())
        }
    }

    /// Refuse a PASID value the hardware cannot tag (no ECAP.PASID, or wider than PSS).
    /// PASID 0 used as RID_PASID needs only scalable mode.
    pub fn check_pasid(&self, pasid: u32) -> Result<()> {
        if pasid == 0 {
            return Ok(());
        }
        if !self.ecap.pasid || u64::from(pasid) >> self.pasid_bits() != 0 {
            return Err(Unsupported::Pasid.into());
        }
        Ok(())
    }

    /// PASID width in bits: ECAP.PSS + 1, at most 20 (PASIDs are 20 bits; larger PSS
    /// values are reserved). Meaningful only with ECAP.PASID.
    pub const fn pasid_bits(&self) -> u8 {
        if self.ecap.pasid_bits > 20 {
            20
        } else {
            self.ecap.pasid_bits
        }
    }

    /// Refuse a second-level depth not in SAGAW (only 3 and 4 levels are driven here).
    pub fn check_levels(&self, levels: u8) -> Result<()> {
        if (levels == 3 || levels == 4) && self.cap.supports_levels(levels) {
            Ok(())
        } else {
            Err(Unsupported::PageTableLevels(levels).into())
        }
    }

    /// The depth to use for second-level tables: the smallest of 3 or 4 levels listed in
    /// SAGAW that covers MGAW, else the largest supported one.
    pub fn choose_levels(&self) -> Result<u8> {
        let covers = |l: u8| 12 + 9 * u32::from(l) >= u32::from(self.cap.mgaw);
        let ok: &[u8] = &[3, 4];
        if let Some(&l) = ok
            .iter()
            .find(|&&l| self.cap.supports_levels(l) && covers(l))
        {
            return Ok(l);
        }
        ok.iter()
            .rev()
            .copied()
            .find(|&l| self.cap.supports_levels(l))
            .ok_or(Unsupported::PageTableLevels(3).into())
    }

    /// Input address bits usable with `levels`-level tables (limited by MGAW).
    pub fn address_bits(&self, levels: u8) -> u8 {
        (12 + 9 * levels).min(self.cap.mgaw)
    }

    /// Refuse a second-level leaf size the hardware lacks (4KB, 2MB or 1GB).
    pub fn check_second_level_page(&self, size: u64) -> Result<()> {
        match size {
            0x1000 => Ok(()),
            0x20_0000 if self.cap.sl_2m => Ok(()),
            0x20_0000 => Err(Unsupported::LargePage2M.into()),
            0x4000_0000 if self.cap.sl_1g => Ok(()),
            0x4000_0000 => Err(Unsupported::LargePage1G.into()),
            _ => Err(crate::error::Error::InvalidField("page size")),
        }
    }

    /// Refuse a PASID-entry translation type (PGTT) the hardware lacks.
    pub fn check_translation(&self, kind: TranslationKind) -> Result<()> {
        let ok = match kind {
            TranslationKind::FirstLevel => self.ecap.flts,
            TranslationKind::SecondLevel => self.ecap.slts,
            TranslationKind::Nested => self.ecap.nest && self.ecap.flts && self.ecap.slts,
            TranslationKind::PassThrough => self.ecap.pt,
        };
        if ok {
            return Ok(());
        }
        Err(match kind {
            TranslationKind::FirstLevel => Unsupported::FirstLevel,
            TranslationKind::SecondLevel => Unsupported::SecondLevel,
            TranslationKind::Nested => Unsupported::Nested,
            TranslationKind::PassThrough => Unsupported::PassThrough,
        }
        .into())
    }

    /// Refuse first-level paging features the hardware lacks.
    pub fn check_first_level(&self, five_level: bool, pages_1g: bool) -> Result<()> {
        self.check_translation(TranslationKind::FirstLevel)?;
        if five_level && !self.cap.fl5lp {
            return Err(Unsupported::FirstLevel5Level.into());
        }
        if pages_1g && !self.cap.fl1gp {
            return Err(Unsupported::FirstLevel1G.into());
        }
        Ok(())
    }

    /// Refuse device-TLB use without ECAP.DT.
    pub fn check_device_tlb(&self) -> Result<()> {
        if self.ecap.dt {
            Ok(())
        } else {
            Err(Unsupported::DeviceTlb.into())
        }
    }

    /// Refuse page requests without ECAP.PRS.
    pub fn check_page_requests(&self) -> Result<()> {
        if self.ecap.prs {
            Ok(())
        } else {
            Err(Unsupported::PageRequests.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn qemu_cap_decodes_as_measured() {
        let c = Cap::decode(QEMU_7_2_CAP);
        assert_eq!(c.nd, 6);
        assert_eq!(c.domains(), 65536);
        assert!(!c.afl && !c.rwbf && !c.plmr && !c.phmr && !c.cm);
        assert_eq!(c.sagaw, SAGAW_39_3LEVEL);
        assert!(c.supports_levels(3) && !c.supports_levels(4));
        assert_eq!(c.mgaw, 39);
        assert!(!c.zlr);
        assert_eq!(c.fro, 0x22);
        assert_eq!(crate::regs::frcd_reg(c.fro, 0), 0x220);
        assert!(c.sl_2m && c.sl_1g);
        assert!(c.psi);
        assert_eq!(c.nfr, 1);
        assert_eq!(c.mamv, 18);
        assert!(c.dwd && c.drd);
        assert!(!c.fl1gp && !c.pi && !c.fl5lp && !c.esrtps);
    }

    #[test]
    fn cap_bit_positions() {
        assert!(Cap::decode(1 << 7).cm);
        assert!(Cap::decode(1 << 4).rwbf);
        assert!(Cap::decode(1 << 3).afl);
        assert_eq!(Cap::decode(0b100 << 8).sagaw, SAGAW_48_4LEVEL);
        assert_eq!(Cap::decode(47 << 16).mgaw, 48);
        assert!(Cap::decode(1 << 22).zlr);
        assert!(Cap::decode(1 << 34).sl_2m && !Cap::decode(1 << 34).sl_1g);
        assert!(Cap::decode(1 << 35).sl_1g);
        assert_eq!(Cap::decode(7 << 40).nfr, 8);
        assert_eq!(Cap::decode(0x3f << 48).mamv, 63);
        assert!(Cap::decode(1 << 56).fl1gp);
        assert!(Cap::decode(1 << 59).pi);
        assert!(Cap::decode(1 << 60).fl5lp);
        assert!(Cap::decode(1 << 63).esrtps);
        assert_eq!(Cap::decode(0).domains(), 16);
        assert_eq!(Cap::decode(2).domains(), 256);
    }

    #[test]
    fn qemu_ecap_legacy() {
        let e = Ecap::decode(QEMU_7_2_ECAP_LEGACY);
        assert!(e.qi && e.ir && e.pt);
        assert!(!e.c && !e.dt && !e.eim && !e.sc);
        assert_eq!(e.iro, 0xf);
        assert_eq!(e.mhmv, 15);
        assert!(!e.smts && !e.pasid && !e.prs && !e.nest && !e.flts && !e.ers && !e.slads);
        assert!(!e.slts && !e.srs);
    }

    #[test]
    fn qemu_ecap_scalable_and_pasid() {
        let s = Ecap::decode(QEMU_7_2_ECAP_SCALABLE);
        assert!(s.smts && s.slts && s.srs);
        assert!(!s.pasid && !s.flts && !s.nest && !s.prs);
        assert_eq!(s.iro, 0xf);
        let p = Ecap::decode(QEMU_7_2_ECAP_PASID);
        assert!(p.smts && p.slts && p.srs && p.pasid);
        assert_eq!(p.pasid_bits, 1, "PSS = 0");
        assert_eq!(p.raw ^ s.raw, ECAP_PASID);
    }

    #[test]
    fn ecap_bit_positions() {
        assert!(Ecap::decode(1).c);
        assert!(Ecap::decode(1 << 2).dt);
        assert!(Ecap::decode(1 << 4).eim);
        assert!(Ecap::decode(1 << 7).sc);
        assert!(Ecap::decode(1 << 25).mts);
        assert!(Ecap::decode(1 << 26).nest);
        assert!(Ecap::decode(1 << 29).prs);
        assert!(Ecap::decode(1 << 30).ers);
        assert!(Ecap::decode(1 << 33).nwfs);
        assert!(Ecap::decode(1 << 34).eafs);
        assert_eq!(Ecap::decode(19 << 35).pasid_bits, 20);
        assert!(Ecap::decode(1 << 41).dit);
        assert!(Ecap::decode(1 << 42).pds);
        assert!(Ecap::decode(1 << 44).vcs);
        assert!(Ecap::decode(1 << 45).slads);
        assert!(Ecap::decode(1 << 47).flts);
        assert!(Ecap::decode(1 << 48).smpwcs);
        assert!(Ecap::decode(1 << 49).rps);
    }

    #[test]
    fn refusals_follow_capabilities() {
        let legacy = Features::new(0x10, QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY);
        assert_eq!(legacy.version, (1, 0));
        assert_eq!(legacy.preferred_mode(), Mode::Legacy);
        assert_eq!(
            legacy.check_mode(Mode::Scalable),
            Err(Error::Unsupported(Unsupported::ScalableMode))
        );
        assert_eq!(legacy.check_pasid(0), Ok(()));
        assert_eq!(legacy.check_pasid(1), Err(Unsupported::Pasid.into()));
        assert_eq!(legacy.check_queued_invalidation(), Ok(()));
        assert_eq!(legacy.check_register_invalidation(), Ok(()));
        let v6 = Features::new(0x60, QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY);
        assert_eq!(v6.version, (6, 0));
        assert_eq!(
            v6.check_register_invalidation(),
            Err(Unsupported::RegisterInvalidation.into())
        );
        let no_qi = Features::new(0x10, QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY & !ECAP_QI);
        assert_eq!(
            no_qi.check_queued_invalidation(),
            Err(Unsupported::QueuedInvalidation.into())
        );
        assert_eq!(legacy.check_levels(3), Ok(()));
        assert_eq!(
            legacy.check_levels(4),
            Err(Unsupported::PageTableLevels(4).into())
        );
        assert_eq!(legacy.choose_levels(), Ok(3));
        assert_eq!(legacy.address_bits(3), 39);
        assert_eq!(legacy.check_second_level_page(0x20_0000), Ok(()));
        let no_large = Features::new(0x10, QEMU_7_2_CAP & !CAP_SLLPS, QEMU_7_2_ECAP_LEGACY);
        assert_eq!(
            no_large.check_second_level_page(0x20_0000),
            Err(Unsupported::LargePage2M.into())
        );
        assert_eq!(
            no_large.check_second_level_page(0x4000_0000),
            Err(Unsupported::LargePage1G.into())
        );
        assert_eq!(
            legacy.check_translation(TranslationKind::FirstLevel),
            Err(Unsupported::FirstLevel.into())
        );
        assert_eq!(
            legacy.check_first_level(false, false),
            Err(Unsupported::FirstLevel.into())
        );
        assert_eq!(
            legacy.check_translation(TranslationKind::PassThrough),
            Ok(())
        );
        assert_eq!(
            legacy.check_device_tlb(),
            Err(Unsupported::DeviceTlb.into())
        );
        assert_eq!(
            legacy.check_page_requests(),
            Err(Unsupported::PageRequests.into())
        );

        let pasid = Features::new(0x10, QEMU_7_2_CAP, QEMU_7_2_ECAP_PASID);
        assert_eq!(pasid.preferred_mode(), Mode::Scalable);
        assert_eq!(pasid.check_mode(Mode::Scalable), Ok(()));
        assert_eq!(pasid.check_pasid(1), Ok(()), "PSS = 0 allows a 1-bit PASID");
        assert_eq!(pasid.check_pasid(2), Err(Unsupported::Pasid.into()));
        assert_eq!(pasid.pasid_bits(), 1);
        let wide = Features::new(0x10, QEMU_7_2_CAP, QEMU_7_2_ECAP_PASID | (19 << 35));
        assert_eq!(wide.pasid_bits(), 20);
        assert_eq!(wide.check_pasid(0xf_ffff), Ok(()));
        assert_eq!(wide.check_pasid(0x10_0000), Err(Unsupported::Pasid.into()));
        // PSS values beyond 19 are reserved: still 20 bits.
        let reserved = Features::new(0x10, QEMU_7_2_CAP, QEMU_7_2_ECAP_PASID | (31 << 35));
        assert_eq!(reserved.pasid_bits(), 20);
        assert_eq!(
            reserved.check_pasid(0x10_0000),
            Err(Unsupported::Pasid.into())
        );
        assert_eq!(
            pasid.check_translation(TranslationKind::SecondLevel),
            Ok(())
        );
        assert_eq!(
            pasid.check_translation(TranslationKind::Nested),
            Err(Unsupported::Nested.into())
        );
        let flts = Features::new(0x10, QEMU_7_2_CAP, QEMU_7_2_ECAP_PASID | ECAP_FLTS);
        assert_eq!(flts.check_first_level(false, false), Ok(()));
        assert_eq!(
            flts.check_first_level(true, false),
            Err(Unsupported::FirstLevel5Level.into())
        );
        assert_eq!(
            flts.check_first_level(false, true),
            Err(Unsupported::FirstLevel1G.into())
        );
    }

    #[test]
    fn four_level_chosen_for_aw48() {
        // QEMU with aw-bits=48: SAGAW has 39 and 48, MGAW 48.
        let cap = (QEMU_7_2_CAP & !(CAP_SAGAW | CAP_MGAW)) | (0b110 << 8) | (47 << 16);
        let f = Features::new(0x10, cap, QEMU_7_2_ECAP_LEGACY);
        assert_eq!(f.choose_levels(), Ok(4));
        assert_eq!(f.address_bits(4), 48);
        let none = Features::new(0x10, QEMU_7_2_CAP & !CAP_SAGAW, QEMU_7_2_ECAP_LEGACY);
        assert!(none.choose_levels().is_err());
    }
}
