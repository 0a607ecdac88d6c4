//! The remapping unit's register layout (VT-d spec §11.4) and table-entry fields (chapter
//! 9), as the model needs them, and the register file itself.
//!
//! The model keeps its own copy of the layout rather than borrowing the driver's, so a
//! wrong constant in one is caught by the other. Names follow the spec (`GCMD_REG.TE` is
//! [`GCMD_TE`]); each group cites its section.
//!
//! [`RegFile`] holds the register page as bytes with, per byte, which bits software may
//! write, which are write-1-to-clear and which always read as zero (write-only fields).
//! That is how QEMU's intel-iommu describes its registers too, and it makes 32- and 64-bit
//! accesses to either half of a 64-bit register behave alike.

// --- §11.4.1 - §11.4.3: identification ---
/// VER_REG (32-bit).
pub const VER: usize = 0x00;
/// CAP_REG (64-bit).
pub const CAP: usize = 0x08;
/// ECAP_REG (64-bit).
pub const ECAP: usize = 0x10;

// --- §11.4.4 / §11.4.5: GCMD_REG / GSTS_REG (bit n of GSTS reports command bit n) ---
/// GCMD_REG (32-bit, write-only).
pub const GCMD: usize = 0x18;
/// GSTS_REG (32-bit, read-only).
pub const GSTS: usize = 0x1c;
/// TE / TES (31): translation enable.
pub const GCMD_TE: u32 = 1 << 31;
/// SRTP / RTPS (30): set root table pointer.
pub const GCMD_SRTP: u32 = 1 << 30;
/// SFL / FLS (29): set fault log.
pub const GCMD_SFL: u32 = 1 << 29;
/// WBF / WBFS (27): write buffer flush.
pub const GCMD_WBF: u32 = 1 << 27;
/// QIE / QIES (26): queued invalidation enable.
pub const GCMD_QIE: u32 = 1 << 26;
/// IRE / IRES (25): interrupt remapping enable.
pub const GCMD_IRE: u32 = 1 << 25;
/// SIRTP / IRTPS (24): set interrupt remap table pointer.
pub const GCMD_SIRTP: u32 = 1 << 24;

// --- §11.4.6: RTADDR_REG ---
/// RTADDR_REG (64-bit).
pub const RTADDR: usize = 0x20;
/// RTADDR bit 10: TTM = 01b, scalable mode (bit 11 is the other TTM bit).
pub const RTADDR_SMT: u64 = 1 << 10;

// --- §11.4.7: CCMD_REG ---
/// CCMD_REG (64-bit).
pub const CCMD: usize = 0x28;
/// CCMD.ICC (63).
pub const CCMD_ICC: u64 = 1 << 63;
/// CCMD.CIRG `[62:61]` shift.
pub const CCMD_CIRG_SHIFT: u32 = 61;
/// CCMD.CAIG `[60:59]` shift.
pub const CCMD_CAIG_SHIFT: u32 = 59;

// --- §11.4.9 - §11.4.13: fault status and event ---
/// FSTS_REG (32-bit).
pub const FSTS: usize = 0x34;
/// FSTS.PFO (0): primary fault overflow.
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS.PPF (1): primary pending fault.
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS.IQE (4): invalidation queue error.
pub const FSTS_IQE: u32 = 1 << 4;
/// FSTS.FRI `[15:8]` shift.
pub const FSTS_FRI_SHIFT: u32 = 8;
/// FECTL_REG (32-bit).
pub const FECTL: usize = 0x38;
/// FECTL.IM (31) / IECTL.IM / PECTL.IM: interrupt mask.
pub const CTL_IM: u32 = 1 << 31;
/// FECTL.IP (30) / IECTL.IP / PECTL.IP: interrupt pending.
pub const CTL_IP: u32 = 1 << 30;
/// FEDATA_REG.
pub const FEDATA: usize = 0x3c;
/// FEADDR_REG.
pub const FEADDR: usize = 0x40;
/// FEUADDR_REG.
pub const FEUADDR: usize = 0x44;
/// PMEN_REG (§11.4.16).
pub const PMEN: usize = 0x64;

// --- §11.4.21 - §11.4.29: queued invalidation ---
/// IQH_REG (64-bit).
pub const IQH: usize = 0x80;
/// IQT_REG (64-bit).
pub const IQT: usize = 0x88;
/// IQA_REG (64-bit).
pub const IQA: usize = 0x90;
/// IQA.DW (11): 256-bit descriptors.
pub const IQA_DW: u64 = 1 << 11;
/// IQA.QS `[2:0]`.
pub const IQA_QS: u64 = 0x7;
/// ICS_REG (32-bit).
pub const ICS: usize = 0x9c;
/// ICS.IWC (0).
pub const ICS_IWC: u32 = 1;
/// IECTL_REG.
pub const IECTL: usize = 0xa0;
/// IEDATA_REG.
pub const IEDATA: usize = 0xa4;
/// IEADDR_REG.
pub const IEADDR: usize = 0xa8;
/// IEUADDR_REG.
pub const IEUADDR: usize = 0xac;
/// IQERCD_REG (64-bit).
pub const IQERCD: usize = 0xb0;
/// IRTA_REG (§11.4.30).
pub const IRTA: usize = 0xb8;

// --- §11.4.31 - §11.4.35: page request queue ---
/// PQH_REG (64-bit).
pub const PQH: usize = 0xc0;
/// PQT_REG (64-bit).
pub const PQT: usize = 0xc8;
/// PQA_REG (64-bit).
pub const PQA: usize = 0xd0;
/// PRS_REG (32-bit).
pub const PRS: usize = 0xdc;
/// PRS.PPR (0): pending page request.
pub const PRS_PPR: u32 = 1 << 0;
/// PRS.PRO (1): page request overflow.
pub const PRS_PRO: u32 = 1 << 1;
/// PECTL_REG.
pub const PECTL: usize = 0xe0;
/// PEDATA_REG.
pub const PEDATA: usize = 0xe4;
/// PEADDR_REG.
pub const PEADDR: usize = 0xe8;
/// PQH/PQT index field `[18:5]`.
pub const PQ_INDEX: u64 = 0x7_ffe0;

// --- §11.4.8: IOTLB registers, at ECAP.IRO * 16 ---
/// IVA_REG offset in the group.
pub const IVA_OFFSET: usize = 0;
/// IOTLB_REG offset in the group.
pub const IOTLB_OFFSET: usize = 8;
/// IOTLB.IVT (63).
pub const IOTLB_IVT: u64 = 1 << 63;
/// IOTLB.IIRG `[61:60]` shift.
pub const IOTLB_IIRG_SHIFT: u32 = 60;
/// IOTLB.IAIG `[58:57]` shift.
pub const IOTLB_IAIG_SHIFT: u32 = 57;
/// IOTLB.DID `[47:32]` shift.
pub const IOTLB_DID_SHIFT: u32 = 32;

// --- §11.4.14: fault recording registers, at CAP.FRO * 16, 16 bytes each ---
/// FRCD high half bit 63 (bit 127): F.
pub const FRCD_F: u64 = 1 << 63;
/// FRCD high half bit 62 (bit 126): T1, 1 = read.
pub const FRCD_T1: u64 = 1 << 62;
/// FRCD high half bit 31 (bit 95): PP, PASID present.
pub const FRCD_PP: u64 = 1 << 31;
/// FRCD high half `[39:32]` shift: FR.
pub const FRCD_FR_SHIFT: u32 = 32;
/// FRCD high half `[59:40]` shift: PV.
pub const FRCD_PV_SHIFT: u32 = 40;

// --- CAP_REG / ECAP_REG fields the model reads (§11.4.2, §11.4.3) ---
/// CAP.RWBF (4).
pub const CAP_RWBF: u64 = 1 << 4;
/// CAP.SAGAW `[12:8]` shift.
pub const CAP_SAGAW_SHIFT: u32 = 8;
/// CAP.MGAW `[21:16]` shift.
pub const CAP_MGAW_SHIFT: u32 = 16;
/// CAP.FRO `[33:24]` shift.
pub const CAP_FRO_SHIFT: u32 = 24;
/// CAP.SLLPS `[37:34]` shift.
pub const CAP_SLLPS_SHIFT: u32 = 34;
/// CAP.NFR `[47:40]` shift.
pub const CAP_NFR_SHIFT: u32 = 40;
/// CAP.MAMV `[53:48]` shift.
pub const CAP_MAMV_SHIFT: u32 = 48;
/// ECAP.QI (1).
pub const ECAP_QI: u64 = 1 << 1;
/// ECAP.DT (2).
pub const ECAP_DT: u64 = 1 << 2;
/// ECAP.IR (3).
pub const ECAP_IR: u64 = 1 << 3;
/// ECAP.MHMV `[23:20]`: interrupt-entry-cache handle mask.
pub const ECAP_MHMV: u64 = 0xf << 20;
/// ECAP.PT (6).
pub const ECAP_PT: u64 = 1 << 6;
/// ECAP.SC (7).
pub const ECAP_SC: u64 = 1 << 7;
/// ECAP.IRO `[17:8]` shift.
pub const ECAP_IRO_SHIFT: u32 = 8;
/// ECAP.PRS (29).
pub const ECAP_PRS: u64 = 1 << 29;
/// ECAP.SRS (31).
pub const ECAP_SRS: u64 = 1 << 31;
/// ECAP.PSS `[39:35]` shift.
pub const ECAP_PSS_SHIFT: u32 = 35;
/// ECAP.PASID (40).
pub const ECAP_PASID: u64 = 1 << 40;
/// ECAP.SMTS (43).
pub const ECAP_SMTS: u64 = 1 << 43;
/// ECAP.SLTS (46).
pub const ECAP_SLTS: u64 = 1 << 46;

/// Bytes of the register page (the DRHD's size on QEMU).
pub const REG_BYTES: usize = 4096;

/// The register page: values and per-bit access semantics.
#[derive(Clone)]
pub struct RegFile {
    csr: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    wo: Vec<u8>,
}

impl RegFile {
    /// Every register reads zero and ignores writes until defined.
    pub fn new() -> Self {
        RegFile {
            csr: vec![0; REG_BYTES],
            wmask: vec![0; REG_BYTES],
            w1c: vec![0; REG_BYTES],
            wo: vec![0; REG_BYTES],
        }
    }

    fn put(v: &mut [u8], o: usize, x: u64, n: usize) {
        v[o..o + n].copy_from_slice(&x.to_le_bytes()[..n]);
    }

    fn get(v: &[u8], o: usize, n: usize) -> u64 {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&v[o..o + n]);
        u64::from_le_bytes(b)
    }

    /// Define `n` bytes (4 or 8) at `o`: reset value, writable bits, write-1-to-clear bits.
    pub fn define(&mut self, o: usize, n: usize, value: u64, wmask: u64, w1c: u64) {
        Self::put(&mut self.csr, o, value, n);
        Self::put(&mut self.wmask, o, wmask, n);
        Self::put(&mut self.w1c, o, w1c, n);
    }

    /// Mark bits of `n` bytes at `o` write-only (they read as zero).
    pub fn define_write_only(&mut self, o: usize, n: usize, mask: u64) {
        Self::put(&mut self.wo, o, mask, n);
    }

    /// Whether an `n`-byte access at `o` is naturally aligned and inside the page.
    pub fn valid(o: usize, n: usize) -> bool {
        o.is_multiple_of(n) && o + n <= REG_BYTES
    }

    /// The stored value, write-only bits included (the hardware's own view).
    pub fn raw(&self, o: usize, n: usize) -> u64 {
        Self::get(&self.csr, o, n)
    }

    /// Store a value as the hardware does (no masks).
    pub fn set_raw(&mut self, o: usize, n: usize, v: u64) {
        Self::put(&mut self.csr, o, v, n);
    }

    /// Clear the bits of `clear`, then set those of `set` (hardware update).
    pub fn update(&mut self, o: usize, n: usize, clear: u64, set: u64) -> u64 {
        let v = (self.raw(o, n) & !clear) | set;
        self.set_raw(o, n, v);
        v
    }

    /// What software reads.
    pub fn read(&self, o: usize, n: usize) -> u64 {
        self.raw(o, n) & !Self::get(&self.wo, o, n)
    }

    /// What a software write leaves: writable bits take the value, write-1-to-clear bits
    /// written as 1 clear.
    pub fn write(&mut self, o: usize, n: usize, v: u64) {
        let old = self.raw(o, n);
        let wmask = Self::get(&self.wmask, o, n);
        let w1c = Self::get(&self.w1c, o, n);
        self.set_raw(o, n, ((old & !wmask) | (v & wmask)) & !(w1c & v));
    }
}

impl Default for RegFile {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_bits_match_spec() {
        assert_eq!(
            (VER, CAP, ECAP, GCMD, GSTS, RTADDR, CCMD),
            (0, 8, 0x10, 0x18, 0x1c, 0x20, 0x28)
        );
        assert_eq!(
            (FSTS, FECTL, FEDATA, FEADDR, FEUADDR, PMEN),
            (0x34, 0x38, 0x3c, 0x40, 0x44, 0x64)
        );
        assert_eq!(
            (IQH, IQT, IQA, ICS, IECTL, IQERCD, IRTA),
            (0x80, 0x88, 0x90, 0x9c, 0xa0, 0xb0, 0xb8)
        );
        assert_eq!((PQH, PQT, PQA, PRS, PECTL), (0xc0, 0xc8, 0xd0, 0xdc, 0xe0));
        assert_eq!(
            (GCMD_TE, GCMD_SRTP, GCMD_WBF, GCMD_QIE, GCMD_IRE, GCMD_SIRTP),
            (
                0x8000_0000,
                0x4000_0000,
                0x0800_0000,
                0x0400_0000,
                0x0200_0000,
                0x0100_0000
            )
        );
        assert_eq!((FSTS_PFO, FSTS_PPF, FSTS_IQE), (1, 2, 0x10));
        assert_eq!(1u64 << CCMD_CAIG_SHIFT, 0x0800_0000_0000_0000);
        assert_eq!(1u64 << IOTLB_IAIG_SHIFT, 0x0200_0000_0000_0000);
        assert_eq!((FRCD_F, FRCD_T1, FRCD_PP), (1 << 63, 1 << 62, 0x8000_0000));
        // QEMU 7.2: CAP.FRO = 0x22 -> records at 0x220; ECAP.IRO = 0xf -> IOTLB at 0xf8.
        let cap: u64 = 0x00d2_008c_2226_0206;
        assert_eq!(((cap >> CAP_FRO_SHIFT) & 0x3ff) * 16, 0x220);
        assert_eq!(((0xf00f4au64 >> ECAP_IRO_SHIFT) & 0x3ff) * 16 + 8, 0xf8);
        assert_eq!((cap >> CAP_MGAW_SHIFT) & 0x3f, 38);
    }

    #[test]
    fn register_file_masks() {
        let mut r = RegFile::new();
        r.define(0x34, 4, 0, 0, 0x11);
        r.set_raw(0x34, 4, 0x13);
        r.write(0x34, 4, 0x3);
        assert_eq!(r.read(0x34, 4), 0x12, "PFO cleared, PPF read-only");
        r.define(0x88, 8, 0, 0x7fff0, 0);
        r.write(0x88, 8, 0xffff_ffff);
        assert_eq!(r.read(0x88, 8), 0x7fff0);
        r.write(0x8c, 4, 0xffff);
        assert_eq!(r.read(0x88, 8), 0x7fff0, "upper half not writable");
        r.define(0x18, 4, 0, 0xff80_0000, 0);
        r.define_write_only(0x18, 4, 0xff80_0000);
        r.write(0x18, 4, 0x8000_0000);
        assert_eq!(r.read(0x18, 4), 0, "write-only reads zero");
        assert_eq!(r.raw(0x18, 4), 0x8000_0000);
        assert!(RegFile::valid(0xff8, 8) && !RegFile::valid(0xffc, 8) && !RegFile::valid(2, 4));
    }
}
