//! Root, context and PASID structures (VT-d spec chapter 9).
//!
//! Legacy mode (RTADDR.TTM = 00b): a 4KB root table of 256 128-bit root entries (§9.1),
//! one per bus, each pointing at a 4KB context table of 256 128-bit context entries
//! (§9.3), one per devfn.
//!
//! Scalable mode (TTM = 01b): 128-bit scalable-mode root entries (§9.2) with a lower
//! (devfn 0..=127) and an upper (devfn 128..=255) context table pointer; each context
//! table holds 128 256-bit scalable-mode context entries (§9.4) pointing at a PASID
//! directory (§9.5) of 64-bit entries, each pointing at a PASID table (§9.6) of 64
//! 512-bit PASID entries. PASID bits `[19:6]` index the directory, `[5:0]` the table.
//!
//! Entries are little-endian word arrays built only through the field helpers below.

use crate::caps::TranslationKind;
use crate::regs::{field_get, field_prep, genmask};

// --- Root entry (§9.1) ---
/// Root entry word 0 bit 0: P, present.
pub const ROOT_LO_P: u64 = 1 << 0;
/// Root entry word 0 `[63:12]`: CTP, context table pointer.
pub const ROOT_LO_CTP: u64 = genmask(63, 12);

// --- Scalable-mode root entry (§9.2) ---
/// Word 0 bit 0: LP, lower context table present.
pub const SM_ROOT_LO_LP: u64 = 1 << 0;
/// Word 0 `[63:12]`: LCTP, lower context table pointer (devfn 0..=127).
pub const SM_ROOT_LO_LCTP: u64 = genmask(63, 12);
/// Word 1 bit 0 (bit 64): UP, upper context table present.
pub const SM_ROOT_HI_UP: u64 = 1 << 0;
/// Word 1 `[63:12]` (bits 127:76): UCTP, upper context table pointer (devfn 128..=255).
pub const SM_ROOT_HI_UCTP: u64 = genmask(63, 12);

// --- Legacy context entry (§9.3) ---
/// Word 0 bit 0: P.
pub const CTX_LO_P: u64 = 1 << 0;
/// Word 0 bit 1: FPD, fault processing disable.
pub const CTX_LO_FPD: u64 = 1 << 1;
/// Word 0 `[3:2]`: TT, translation type.
pub const CTX_LO_TT: u64 = genmask(3, 2);
/// Word 0 `[63:12]`: SLPTPTR, second-level page-table pointer (or ignored with TT=10b).
pub const CTX_LO_SLPTPTR: u64 = genmask(63, 12);
/// Word 1 `[2:0]` (bits 66:64): AW, address width (1 = 39-bit/3-level, 2 = 48/4, 3 = 57/5).
pub const CTX_HI_AW: u64 = genmask(2, 0);
/// Word 1 `[6:3]` (bits 70:67): AVAIL, software-available.
pub const CTX_HI_AVAIL: u64 = genmask(6, 3);
/// Word 1 `[23:8]` (bits 87:72): DID, domain identifier.
pub const CTX_HI_DID: u64 = genmask(23, 8);
/// TT 00b: untranslated requests translated through second-level tables; translation
/// requests and translated requests blocked.
pub const TT_UNTRANSLATED: u64 = 0;
/// TT 01b: as 00b plus ATS translation requests and translated requests (device-TLB).
pub const TT_ALL: u64 = 1;
/// TT 10b: pass-through (needs ECAP.PT).
pub const TT_PASS_THROUGH: u64 = 2;

// --- Scalable-mode context entry (§9.4) ---
/// Word 0 bit 0: P.
pub const SM_CTX_LO_P: u64 = 1 << 0;
/// Word 0 bit 1: FPD.
pub const SM_CTX_LO_FPD: u64 = 1 << 1;
/// Word 0 bit 2: DTE, device-TLB enable.
pub const SM_CTX_LO_DTE: u64 = 1 << 2;
/// Word 0 bit 3: PASIDE, PASID enable (requests with PASID allowed).
pub const SM_CTX_LO_PASIDE: u64 = 1 << 3;
/// Word 0 bit 4: PRE, page request enable.
pub const SM_CTX_LO_PRE: u64 = 1 << 4;
/// Word 0 `[11:9]`: PDTS, PASID directory size = 2^(PDTS + 7) entries.
pub const SM_CTX_LO_PDTS: u64 = genmask(11, 9);
/// Word 0 `[63:12]`: PASIDDIRPTR.
pub const SM_CTX_LO_PASIDDIRPTR: u64 = genmask(63, 12);
/// Word 1 `[19:0]` (bits 83:64): RID_PASID, the PASID used for requests without one.
pub const SM_CTX_HI_RID_PASID: u64 = genmask(19, 0);
/// Word 1 bit 20 (bit 84): RID_PRIV, privilege of requests without a PASID.
pub const SM_CTX_HI_RID_PRIV: u64 = 1 << 20;

// --- PASID directory entry (§9.5) ---
/// Bit 0: P.
pub const PASID_DIR_P: u64 = 1 << 0;
/// Bit 1: FPD.
pub const PASID_DIR_FPD: u64 = 1 << 1;
/// `[63:12]`: SMPTBLPTR, PASID table pointer.
pub const PASID_DIR_SMPTBLPTR: u64 = genmask(63, 12);

// --- PASID table entry (§9.6), 512 bits ---
/// Word 0 bit 0: P.
pub const PE0_P: u64 = 1 << 0;
/// Word 0 bit 1: FPD.
pub const PE0_FPD: u64 = 1 << 1;
/// Word 0 `[4:2]`: AW, second-level address width (as the legacy context AW).
pub const PE0_AW: u64 = genmask(4, 2);
/// Word 0 bit 5: SLEE, second-level execute enable.
pub const PE0_SLEE: u64 = 1 << 5;
/// Word 0 `[8:6]`: PGTT, PASID granular translation type.
pub const PE0_PGTT: u64 = genmask(8, 6);
/// Word 0 bit 9: SLADE, second-level accessed/dirty enable.
pub const PE0_SLADE: u64 = 1 << 9;
/// Word 0 `[63:12]`: SLPTPTR.
pub const PE0_SLPTPTR: u64 = genmask(63, 12);
/// Word 1 `[15:0]` (bits 79:64): DID.
pub const PE1_DID: u64 = genmask(15, 0);
/// Word 1 bit 23 (bit 87): PWSNP, page-walk snoop.
pub const PE1_PWSNP: u64 = 1 << 23;
/// Word 1 bit 24 (bit 88): PGSNP, page snoop.
pub const PE1_PGSNP: u64 = 1 << 24;
/// Word 1 bit 25 (bit 89): CD, cache disable.
pub const PE1_CD: u64 = 1 << 25;
/// Word 1 bit 26 (bit 90): EMTE, extended memory type enable.
pub const PE1_EMTE: u64 = 1 << 26;
/// Word 1 `[29:27]` (bits 93:91): EMT, extended memory type.
pub const PE1_EMT: u64 = genmask(29, 27);
/// Word 1 bit 30 (bit 94): PWT.
pub const PE1_PWT: u64 = 1 << 30;
/// Word 1 bit 31 (bit 95): PCD.
pub const PE1_PCD: u64 = 1 << 31;
/// Word 1 `[63:32]` (bits 127:96): PAT.
pub const PE1_PAT: u64 = genmask(63, 32);
/// Word 2 bit 0 (bit 128): SRE, supervisor request enable.
pub const PE2_SRE: u64 = 1 << 0;
/// Word 2 `[3:2]` (bits 131:130): FLPM, first-level paging mode (0 = 4-level, 1 = 5-level).
pub const PE2_FLPM: u64 = genmask(3, 2);
/// Word 2 bit 4 (bit 132): WPE, write protect enable.
pub const PE2_WPE: u64 = 1 << 4;
/// Word 2 bit 5 (bit 133): NXE, no-execute enable (first-level XD honoured).
pub const PE2_NXE: u64 = 1 << 5;
/// Word 2 bit 7 (bit 135): EAFE, extended accessed flag enable.
pub const PE2_EAFE: u64 = 1 << 7;
/// Word 2 `[63:12]` (bits 191:140): FLPTPTR, first-level page-table pointer.
pub const PE2_FLPTPTR: u64 = genmask(63, 12);
/// PGTT 001b: first-level translation.
pub const PGTT_FIRST_LEVEL: u64 = 1;
/// PGTT 010b: second-level translation.
pub const PGTT_SECOND_LEVEL: u64 = 2;
/// PGTT 011b: nested translation.
pub const PGTT_NESTED: u64 = 3;
/// PGTT 100b: pass-through.
pub const PGTT_PASS_THROUGH: u64 = 4;

/// Entries per PASID table (4KB / 64 bytes).
pub const PASID_TABLE_ENTRIES: usize = 64;
/// PDTS encoding of a one-page (512-entry) PASID directory: 2^(2 + 7) = 512.
pub const PDTS_ONE_PAGE: u64 = 2;

/// AW value for a second-level table of `levels` levels (3 -> 1, 4 -> 2, 5 -> 3).
pub const fn aw_for_levels(levels: u8) -> u64 {
    levels as u64 - 2
}

/// A legacy root entry (§9.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootEntry(pub [u64; 2]);

impl RootEntry {
    /// Present entry pointing at a context table.
    pub const fn new(context_table: u64) -> Self {
        Self([ROOT_LO_P | (context_table & ROOT_LO_CTP), 0])
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & ROOT_LO_P != 0
    }
    /// CTP.
    pub const fn context_table(&self) -> u64 {
        self.0[0] & ROOT_LO_CTP
    }
}

/// A scalable-mode root entry (§9.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalableRootEntry(pub [u64; 2]);

impl ScalableRootEntry {
    /// Set the lower (devfn < 128) context table.
    pub fn set_lower(&mut self, table: u64) {
        self.0[0] = SM_ROOT_LO_LP | (table & SM_ROOT_LO_LCTP);
    }
    /// Set the upper (devfn >= 128) context table.
    pub fn set_upper(&mut self, table: u64) {
        self.0[1] = SM_ROOT_HI_UP | (table & SM_ROOT_HI_UCTP);
    }
    /// The context table covering `devfn`, if present.
    pub const fn table_for(&self, devfn: u8) -> Option<u64> {
        let (w, p, m) = if devfn < 128 {
            (self.0[0], SM_ROOT_LO_LP, SM_ROOT_LO_LCTP)
        } else {
            (self.0[1], SM_ROOT_HI_UP, SM_ROOT_HI_UCTP)
        };
        if w & p != 0 {
            Some(w & m)
        } else {
            None
        }
    }
}

/// A legacy context entry (§9.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEntry(pub [u64; 2]);

impl ContextEntry {
    /// A present entry translating untranslated requests (TT = 00b) of domain `did`
    /// through the `levels`-level second-level table at `slptptr`.
    pub const fn translated(did: u16, slptptr: u64, levels: u8) -> Self {
        Self([
            CTX_LO_P | field_prep(CTX_LO_TT, TT_UNTRANSLATED) | (slptptr & CTX_LO_SLPTPTR),
            field_prep(CTX_HI_AW, aw_for_levels(levels)) | field_prep(CTX_HI_DID, did as u64),
        ])
    }
    /// A present pass-through entry (TT = 10b); AW must still name a supported width.
    pub const fn pass_through(did: u16, levels: u8) -> Self {
        Self([
            CTX_LO_P | field_prep(CTX_LO_TT, TT_PASS_THROUGH),
            field_prep(CTX_HI_AW, aw_for_levels(levels)) | field_prep(CTX_HI_DID, did as u64),
        ])
    }
    /// Set TT (with [`TT_ALL`] the device may use its device-TLB).
    pub const fn with_tt(mut self, tt: u64) -> Self {
        self.0[0] = (self.0[0] & !CTX_LO_TT) | field_prep(CTX_LO_TT, tt);
        self
    }
    /// Set FPD (no fault records for this device).
    pub const fn with_fpd(mut self) -> Self {
        self.0[0] |= CTX_LO_FPD;
        self
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & CTX_LO_P != 0
    }
    /// TT.
    pub const fn tt(&self) -> u64 {
        field_get(CTX_LO_TT, self.0[0])
    }
    /// DID.
    pub const fn did(&self) -> u16 {
        field_get(CTX_HI_DID, self.0[1]) as u16
    }
    /// AW.
    pub const fn aw(&self) -> u64 {
        field_get(CTX_HI_AW, self.0[1])
    }
    /// SLPTPTR.
    pub const fn slptptr(&self) -> u64 {
        self.0[0] & CTX_LO_SLPTPTR
    }
}

/// A scalable-mode context entry (§9.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalableContextEntry(pub [u64; 4]);

impl ScalableContextEntry {
    /// A present entry with a PASID directory of 2^(pdts + 7) entries at `pasid_dir`;
    /// requests without PASID use `rid_pasid`.
    pub const fn new(pasid_dir: u64, pdts: u64, rid_pasid: u32) -> Self {
        Self([
            SM_CTX_LO_P | field_prep(SM_CTX_LO_PDTS, pdts) | (pasid_dir & SM_CTX_LO_PASIDDIRPTR),
            field_prep(SM_CTX_HI_RID_PASID, rid_pasid as u64),
            0,
            0,
        ])
    }
    /// Set PASIDE (requests with a PASID accepted).
    pub const fn with_pasid_enable(mut self) -> Self {
        self.0[0] |= SM_CTX_LO_PASIDE;
        self
    }
    /// Set DTE (device-TLB).
    pub const fn with_device_tlb(mut self) -> Self {
        self.0[0] |= SM_CTX_LO_DTE;
        self
    }
    /// Set PRE (page requests).
    pub const fn with_page_requests(mut self) -> Self {
        self.0[0] |= SM_CTX_LO_PRE;
        self
    }
    /// Set FPD.
    pub const fn with_fpd(mut self) -> Self {
        self.0[0] |= SM_CTX_LO_FPD;
        self
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & SM_CTX_LO_P != 0
    }
    /// PASID directory pointer.
    pub const fn pasid_dir(&self) -> u64 {
        self.0[0] & SM_CTX_LO_PASIDDIRPTR
    }
    /// PDTS.
    pub const fn pdts(&self) -> u64 {
        field_get(SM_CTX_LO_PDTS, self.0[0])
    }
    /// Number of PASID directory entries, 2^(PDTS + 7).
    pub const fn pasid_dir_entries(&self) -> usize {
        1 << (self.pdts() + 7)
    }
    /// RID_PASID.
    pub const fn rid_pasid(&self) -> u32 {
        field_get(SM_CTX_HI_RID_PASID, self.0[1]) as u32
    }
}

/// A PASID directory entry (§9.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidDirEntry(pub u64);

impl PasidDirEntry {
    /// Present entry pointing at a PASID table.
    pub const fn new(table: u64) -> Self {
        Self(PASID_DIR_P | (table & PASID_DIR_SMPTBLPTR))
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0 & PASID_DIR_P != 0
    }
    /// SMPTBLPTR.
    pub const fn table(&self) -> u64 {
        self.0 & PASID_DIR_SMPTBLPTR
    }
}

/// Directory index of a PASID (bits `[19:6]`).
pub const fn pasid_dir_index(pasid: u32) -> usize {
    (pasid as usize >> 6) & 0x3fff
}

/// Table index of a PASID (bits `[5:0]`).
pub const fn pasid_table_index(pasid: u32) -> usize {
    pasid as usize & 0x3f
}

/// A 512-bit PASID table entry (§9.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidEntry(pub [u64; 8]);

impl PasidEntry {
    /// Second-level translation (PGTT = 010b) for domain `did` through the
    /// `levels`-level table at `slptptr`.
    pub const fn second_level(did: u16, slptptr: u64, levels: u8) -> Self {
        let mut e = [0; 8];
        e[0] = PE0_P
            | field_prep(PE0_AW, aw_for_levels(levels))
            | field_prep(PE0_PGTT, PGTT_SECOND_LEVEL)
            | (slptptr & PE0_SLPTPTR);
        e[1] = field_prep(PE1_DID, did as u64);
        Self(e)
    }
    /// First-level translation (PGTT = 001b) through the IA-32e table at `flptptr`
    /// (`five_level`: FLPM = 01b).
    pub const fn first_level(did: u16, flptptr: u64, five_level: bool) -> Self {
        let mut e = [0; 8];
        e[0] = PE0_P | field_prep(PE0_PGTT, PGTT_FIRST_LEVEL);
        e[1] = field_prep(PE1_DID, did as u64);
        e[2] = field_prep(PE2_FLPM, five_level as u64) | (flptptr & PE2_FLPTPTR);
        Self(e)
    }
    /// Nested translation (PGTT = 011b): first level at `flptptr` nested on the second
    /// level at `slptptr`.
    pub const fn nested(did: u16, flptptr: u64, slptptr: u64, levels: u8) -> Self {
        let mut e = Self::second_level(did, slptptr, levels);
        e.0[0] = (e.0[0] & !PE0_PGTT) | field_prep(PE0_PGTT, PGTT_NESTED);
        e.0[2] = flptptr & PE2_FLPTPTR;
        e
    }
    /// Pass-through (PGTT = 100b).
    pub const fn pass_through(did: u16) -> Self {
        let mut e = [0; 8];
        e[0] = PE0_P | field_prep(PE0_PGTT, PGTT_PASS_THROUGH);
        e[1] = field_prep(PE1_DID, did as u64);
        Self(e)
    }
    /// Entry for a [`TranslationKind`] (first-level and nested need `flptptr`).
    pub const fn for_kind(
        kind: TranslationKind,
        did: u16,
        slptptr: u64,
        flptptr: u64,
        levels: u8,
    ) -> Self {
        match kind {
            TranslationKind::FirstLevel => Self::first_level(did, flptptr, false),
            TranslationKind::SecondLevel => Self::second_level(did, slptptr, levels),
            TranslationKind::Nested => Self::nested(did, flptptr, slptptr, levels),
            TranslationKind::PassThrough => Self::pass_through(did),
        }
    }
    /// Set FPD.
    pub const fn with_fpd(mut self) -> Self {
        self.0[0] |= PE0_FPD;
        self
    }
    /// Set SLEE.
    pub const fn with_slee(mut self) -> Self {
        self.0[0] |= PE0_SLEE;
        self
    }
    /// Set SLADE.
    pub const fn with_slade(mut self) -> Self {
        self.0[0] |= PE0_SLADE;
        self
    }
    /// Set PWSNP (page walks snoop; needed when page-walk coherency is not implied).
    pub const fn with_pwsnp(mut self) -> Self {
        self.0[1] |= PE1_PWSNP;
        self
    }
    /// Set PGSNP (all accesses snoop; needs ECAP.SC).
    pub const fn with_pgsnp(mut self) -> Self {
        self.0[1] |= PE1_PGSNP;
        self
    }
    /// Set CD (cache disable).
    pub const fn with_cd(mut self) -> Self {
        self.0[1] |= PE1_CD;
        self
    }
    /// Set EMTE with memory type `emt`.
    pub const fn with_emt(mut self, emt: u64) -> Self {
        self.0[1] |= PE1_EMTE | field_prep(PE1_EMT, emt);
        self
    }
    /// Set SRE (supervisor requests; needs ECAP.SRS).
    pub const fn with_sre(mut self) -> Self {
        self.0[2] |= PE2_SRE;
        self
    }
    /// Set WPE (write protect for supervisor requests).
    pub const fn with_wpe(mut self) -> Self {
        self.0[2] |= PE2_WPE;
        self
    }
    /// Set NXE (first-level XD bits are honoured).
    pub const fn with_nxe(mut self) -> Self {
        self.0[2] |= PE2_NXE;
        self
    }
    /// Set EAFE (extended accessed flag; needs ECAP.EAFS).
    pub const fn with_eafe(mut self) -> Self {
        self.0[2] |= PE2_EAFE;
        self
    }
    /// P.
    pub const fn present(&self) -> bool {
        self.0[0] & PE0_P != 0
    }
    /// PGTT.
    pub const fn pgtt(&self) -> u64 {
        field_get(PE0_PGTT, self.0[0])
    }
    /// DID.
    pub const fn did(&self) -> u16 {
        field_get(PE1_DID, self.0[1]) as u16
    }
    /// AW.
    pub const fn aw(&self) -> u64 {
        field_get(PE0_AW, self.0[0])
    }
    /// SLPTPTR.
    pub const fn slptptr(&self) -> u64 {
        self.0[0] & PE0_SLPTPTR
    }
    /// FLPTPTR.
    pub const fn flptptr(&self) -> u64 {
        self.0[2] & PE2_FLPTPTR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_entries() {
        let r = RootEntry::new(0x1234_5000);
        assert_eq!(r.0, [0x1234_5001, 0]);
        assert!(r.present());
        assert_eq!(r.context_table(), 0x1234_5000);
        let mut s = ScalableRootEntry::default();
        assert_eq!(s.table_for(0), None);
        s.set_lower(0xa000);
        s.set_upper(0xb000);
        assert_eq!(s.0, [0xa001, 0xb001]);
        assert_eq!(s.table_for(127), Some(0xa000));
        assert_eq!(s.table_for(128), Some(0xb000));
    }

    #[test]
    fn legacy_context_entry_bits() {
        // QEMU-verified shape: TT = 0, AW = 1 (39-bit, 3-level).
        let c = ContextEntry::translated(5, 0x7654_3000, 3);
        assert_eq!(c.0[0], 0x7654_3001);
        assert_eq!(c.0[1], 0x0501); // DID 5 at bit 72 = word 1 bit 8; AW 1 at bit 64
        assert_eq!(
            (c.did(), c.aw(), c.tt(), c.slptptr()),
            (5, 1, 0, 0x7654_3000)
        );
        let c4 = ContextEntry::translated(0xffff, 0x1000, 4);
        assert_eq!(c4.0[1], 0x00ff_ff02);
        let pt = ContextEntry::pass_through(1, 3);
        assert_eq!(pt.0[0], 0b1001, "TT = 10b at bits 3:2");
        assert_eq!(pt.tt(), TT_PASS_THROUGH);
        assert_eq!(c.with_fpd().0[0] & 2, 2);
        assert_eq!(c.with_tt(TT_ALL).0[0] & 0xc, 0x4);
        assert_eq!(CTX_HI_AVAIL, 0x78);
    }

    #[test]
    fn scalable_context_entry_bits() {
        let c = ScalableContextEntry::new(0x9000, PDTS_ONE_PAGE, 0);
        assert_eq!(c.0, [0x9000 | (2 << 9) | 1, 0, 0, 0]);
        assert_eq!(c.pasid_dir_entries(), 512);
        assert_eq!(c.pasid_dir(), 0x9000);
        let c = ScalableContextEntry::new(0x9000, 0, 0xfffff)
            .with_pasid_enable()
            .with_device_tlb()
            .with_page_requests()
            .with_fpd();
        assert_eq!(c.0[0] & 0xfff, 0b1_1111);
        assert_eq!(c.rid_pasid(), 0xfffff);
        assert_eq!(c.0[1], 0xfffff);
        assert_eq!(SM_CTX_HI_RID_PRIV, 1 << 20);
        assert!(c.present());
    }

    #[test]
    fn pasid_directory_and_indices() {
        let d = PasidDirEntry::new(0xc000);
        assert_eq!(d.0, 0xc001);
        assert_eq!(d.table(), 0xc000);
        assert_eq!(PASID_DIR_FPD, 2);
        assert_eq!(pasid_dir_index(0), 0);
        assert_eq!(pasid_dir_index(64), 1);
        assert_eq!(pasid_table_index(65), 1);
        assert_eq!(pasid_dir_index(0xfffff), 0x3fff);
    }

    #[test]
    fn pasid_entry_second_level() {
        let e = PasidEntry::second_level(7, 0x5000, 3);
        // P, AW = 1 at [4:2], PGTT = 010b at [8:6].
        assert_eq!(e.0[0], 0x5000 | 1 | (1 << 2) | (2 << 6));
        assert_eq!(e.0[1], 7);
        assert_eq!((e.pgtt(), e.did(), e.aw(), e.slptptr()), (2, 7, 1, 0x5000));
        let f = e.with_fpd().with_slee().with_slade();
        assert_eq!(f.0[0] & 0x3ff, 0x2a7 | 0x20 | 0x200 | 2);
        let s = e.with_pwsnp().with_pgsnp().with_cd().with_emt(6);
        assert_eq!(s.0[1], 7 | 1 << 23 | 1 << 24 | 1 << 25 | 1 << 26 | 6 << 27);
        assert_eq!(
            (PE1_PWT, PE1_PCD, PE1_PAT),
            (1 << 30, 1 << 31, 0xffff_ffff << 32)
        );
    }

    #[test]
    fn pasid_entry_first_level_nested_and_pass_through() {
        let f = PasidEntry::first_level(3, 0xabc000, true)
            .with_sre()
            .with_wpe()
            .with_eafe()
            .with_nxe();
        assert_eq!(f.0[0], 1 | (1 << 6));
        assert_eq!(
            f.0[2],
            0xabc000 | 1 | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 7)
        );
        assert_eq!(f.flptptr(), 0xabc000);
        let n = PasidEntry::nested(3, 0x1000, 0x2000, 4);
        assert_eq!(n.pgtt(), PGTT_NESTED);
        assert_eq!((n.aw(), n.slptptr(), n.flptptr()), (2, 0x2000, 0x1000));
        let p = PasidEntry::pass_through(9);
        assert_eq!(p.0[0], 1 | (4 << 6));
        assert_eq!(p.did(), 9);
        assert_eq!(
            PasidEntry::for_kind(TranslationKind::SecondLevel, 1, 0x3000, 0, 3),
            PasidEntry::second_level(1, 0x3000, 3)
        );
    }
}
