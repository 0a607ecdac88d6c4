//! VT-d remapping-hardware register map (VT-d spec §11.4 "Register Descriptions"), with
//! the field helpers, the register access seam and the poll timeouts of [`iommu_hwio`]
//! re-exported.
//!
//! Offsets are from the register base reported by the DRHD structure of the ACPI DMAR
//! table. Names follow the spec: `GCMD_REG` becomes [`GCMD`], field `GCMD_REG.TE`
//! becomes [`GCMD_TE`]. The IOTLB registers sit at `ECAP.IRO * 16` and the fault
//! recording registers at `CAP.FRO * 16` (see [`iotlb_reg`], [`frcd_reg`]).
//! Subsection numbers follow the flat register order of spec revision 3.x/4.x
//! (§11.4.1 VER_REG ... §11.4.35 PECTL_REG); the register name is the reference.

pub use iommu_hwio::bits::{field_get, field_prep, genmask};
pub use iommu_hwio::mmio::{Mmio, RegisterIo};
pub(crate) use iommu_hwio::poll::poll_until;
#[cfg(target_arch = "x86_64")]
pub use iommu_hwio::poll::Tsc;
pub use iommu_hwio::poll::{Clock, Deadline, PollBudget, PollTimeout};

// --- §11.4.1 - §11.4.3: identification ---
/// VER_REG (32-bit, §11.4.1): architecture version, MAX `[7:4]`, MIN `[3:0]`.
pub const VER: usize = 0x00;
/// CAP_REG (64-bit, §11.4.2); decoded by [`crate::caps::Cap`].
pub const CAP: usize = 0x08;
/// ECAP_REG (64-bit, §11.4.3); decoded by [`crate::caps::Ecap`].
pub const ECAP: usize = 0x10;

// --- §11.4.4, §11.4.5: GCMD_REG / GSTS_REG ---
/// GCMD_REG (32-bit, §11.4.4): global command.
pub const GCMD: usize = 0x18;
/// GSTS_REG (32-bit, §11.4.5): global status; bit n reports GCMD bit n.
pub const GSTS: usize = 0x1c;
/// GCMD.TE (31) / GSTS.TES: translation enable.
pub const GCMD_TE: u32 = 1 << 31;
/// GCMD.SRTP (30) / GSTS.RTPS: set root table pointer (one-shot).
pub const GCMD_SRTP: u32 = 1 << 30;
/// GCMD.SFL (29) / GSTS.FLS: set fault log (one-shot).
pub const GCMD_SFL: u32 = 1 << 29;
/// GCMD.EAFL (28) / GSTS.AFLS: enable advanced fault logging.
pub const GCMD_EAFL: u32 = 1 << 28;
/// GCMD.WBF (27) / GSTS.WBFS: write buffer flush (one-shot; GSTS.WBFS reads 1 while busy).
pub const GCMD_WBF: u32 = 1 << 27;
/// GCMD.QIE (26) / GSTS.QIES: queued invalidation enable.
pub const GCMD_QIE: u32 = 1 << 26;
/// GCMD.IRE (25) / GSTS.IRES: interrupt remapping enable.
pub const GCMD_IRE: u32 = 1 << 25;
/// GCMD.SIRTP (24) / GSTS.IRTPS: set interrupt remap table pointer (one-shot).
pub const GCMD_SIRTP: u32 = 1 << 24;
/// GCMD.CFI (23) / GSTS.CFIS: compatibility format interrupts.
pub const GCMD_CFI: u32 = 1 << 23;
/// GSTS bits that report one-shot commands; they must not be written back into GCMD
/// when software builds a GCMD value from GSTS (§11.4.4).
pub const GSTS_ONE_SHOT: u32 = GCMD_SRTP | GCMD_SFL | GCMD_WBF | GCMD_SIRTP;

// --- §11.4.6: RTADDR_REG ---
/// RTADDR_REG (64-bit, §11.4.6): root table address.
pub const RTADDR: usize = 0x20;
/// RTADDR.RTA `[63:12]`: 4KB-aligned root table address.
pub const RTADDR_RTA: u64 = genmask(63, 12);
/// RTADDR.TTM `[11:10]`: translation table mode.
pub const RTADDR_TTM: u64 = genmask(11, 10);
/// TTM 00b: legacy mode (root and context entries of §9.1/§9.3).
pub const TTM_LEGACY: u64 = 0;
/// TTM 01b: scalable mode (§9.2/§9.4).
pub const TTM_SCALABLE: u64 = 1;
/// TTM 11b: abort-DMA mode (every DMA blocked).
pub const TTM_ABORT_DMA: u64 = 3;

// --- §11.4.7: CCMD_REG ---
/// CCMD_REG (64-bit, §11.4.7): register-based context-cache invalidation.
pub const CCMD: usize = 0x28;
/// CCMD.ICC (63): invalidate context cache; hardware clears it when done.
pub const CCMD_ICC: u64 = 1 << 63;
/// CCMD.CIRG `[62:61]`: requested granularity.
pub const CCMD_CIRG: u64 = genmask(62, 61);
/// CCMD.CAIG `[60:59]`: actual granularity performed.
pub const CCMD_CAIG: u64 = genmask(60, 59);
/// CCMD.FM `[33:32]`: function mask (device-selective).
pub const CCMD_FM: u64 = genmask(33, 32);
/// CCMD.SID `[31:16]`: source-id (device-selective).
pub const CCMD_SID: u64 = genmask(31, 16);
/// CCMD.DID `[15:0]`: domain-id (domain- and device-selective).
pub const CCMD_DID: u64 = genmask(15, 0);
/// Granularity 01b: global.
pub const GRAN_GLOBAL: u64 = 1;
/// Granularity 10b: domain-selective.
pub const GRAN_DOMAIN: u64 = 2;
/// Granularity 11b: device-selective (CCMD) or page-selective (IOTLB).
pub const GRAN_DEVICE_OR_PAGE: u64 = 3;

// --- §11.4.9 - §11.4.15: fault status, fault event and fault log registers ---
/// FSTS_REG (32-bit, §11.4.9): fault status.
pub const FSTS: usize = 0x34;
/// FSTS.PFO (0): primary fault overflow (RW1C).
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS.PPF (1): primary pending fault (read-only; some F bit is set).
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS.AFO (2): advanced fault overflow.
pub const FSTS_AFO: u32 = 1 << 2;
/// FSTS.APF (3): advanced pending fault.
pub const FSTS_APF: u32 = 1 << 3;
/// FSTS.IQE (4): invalidation queue error (RW1C).
pub const FSTS_IQE: u32 = 1 << 4;
/// FSTS.ICE (5): invalidation completion error (RW1C).
pub const FSTS_ICE: u32 = 1 << 5;
/// FSTS.ITE (6): invalidation time-out error (RW1C).
pub const FSTS_ITE: u32 = 1 << 6;
/// FSTS.FRI `[15:8]`: index of the first pending fault recording register.
pub const FSTS_FRI: u64 = genmask(15, 8);
/// FSTS bits cleared by writing 1.
pub const FSTS_RW1C: u32 = FSTS_PFO | FSTS_AFO | FSTS_APF | FSTS_IQE | FSTS_ICE | FSTS_ITE;
/// FECTL_REG (32-bit, §11.4.10): fault event control.
pub const FECTL: usize = 0x38;
/// FECTL.IM (31): interrupt mask.
pub const FECTL_IM: u32 = 1 << 31;
/// FECTL.IP (30): interrupt pending.
pub const FECTL_IP: u32 = 1 << 30;
/// FEDATA_REG (32-bit, §11.4.11).
pub const FEDATA: usize = 0x3c;
/// FEADDR_REG (32-bit, §11.4.12).
pub const FEADDR: usize = 0x40;
/// FEUADDR_REG (32-bit, §11.4.13).
pub const FEUADDR: usize = 0x44;
/// AFLOG_REG (64-bit, §11.4.15): advanced fault log.
pub const AFLOG: usize = 0x58;

// --- §11.4.16 - §11.4.20: protected memory ---
/// PMEN_REG (32-bit, §11.4.16): protected memory enable.
pub const PMEN: usize = 0x64;
/// PMEN.EPM (31): enable protected memory.
pub const PMEN_EPM: u32 = 1 << 31;
/// PMEN.PRS (0): protected region status.
pub const PMEN_PRS: u32 = 1 << 0;
/// PLMBASE_REG (32-bit, §11.4.17).
pub const PLMBASE: usize = 0x68;
/// PLMLIMIT_REG (32-bit, §11.4.18).
pub const PLMLIMIT: usize = 0x6c;
/// PHMBASE_REG (64-bit, §11.4.19).
pub const PHMBASE: usize = 0x70;
/// PHMLIMIT_REG (64-bit, §11.4.20).
pub const PHMLIMIT: usize = 0x78;

// --- §11.4.21 - §11.4.29: queued invalidation ---
/// IQH_REG (64-bit, §11.4.21): invalidation queue head.
pub const IQH: usize = 0x80;
/// IQT_REG (64-bit, §11.4.22): invalidation queue tail.
pub const IQT: usize = 0x88;
/// IQH.QH / IQT.QT `[18:4]`: byte offset of the next descriptor in 128-bit units; with
/// 256-bit descriptors (IQA.DW = 1) bit 4 must be 0 and the index is `[18:5]`.
pub const IQ_OFFSET: u64 = genmask(18, 4);
/// IQA_REG (64-bit, §11.4.23): invalidation queue address; the queue must be aligned
/// to its size.
pub const IQA: usize = 0x90;
/// IQA.IQA `[63:12]`: 4KB-aligned queue base.
pub const IQA_ADDR: u64 = genmask(63, 12);
/// IQA.DW (11): descriptor width, 0 = 128-bit, 1 = 256-bit.
pub const IQA_DW: u64 = 1 << 11;
/// IQA.QS `[2:0]`: queue size is 2^QS 4KB pages.
pub const IQA_QS: u64 = genmask(2, 0);
/// ICS_REG (32-bit, §11.4.24): invalidation completion status.
pub const ICS: usize = 0x9c;
/// ICS.IWC (0): invalidation wait descriptor complete (RW1C).
pub const ICS_IWC: u32 = 1 << 0;
/// IECTL_REG (32-bit, §11.4.25): invalidation event control.
pub const IECTL: usize = 0xa0;
/// IEDATA_REG (32-bit, §11.4.26).
pub const IEDATA: usize = 0xa4;
/// IEADDR_REG (32-bit, §11.4.27).
pub const IEADDR: usize = 0xa8;
/// IEUADDR_REG (32-bit, §11.4.28).
pub const IEUADDR: usize = 0xac;
/// IQERCD_REG (64-bit, §11.4.29): invalidation queue error record.
pub const IQERCD: usize = 0xb0;
/// IQERCD.IQEI `[3:0]`: invalidation queue error info (0 not available, 1 invalid
/// tail, 2 descriptor fetch error, 3 invalid descriptor type, 4 reserved field set,
/// 5 invalid descriptor width, ...).
pub const IQERCD_IQEI: u64 = genmask(3, 0);

// --- §11.4.30: interrupt remapping table address ---
/// IRTA_REG (64-bit, §11.4.30).
pub const IRTA: usize = 0xb8;

// --- §11.4.31 - §11.4.35: page request queue ---
/// PQH_REG (64-bit, §11.4.31): page request queue head.
pub const PQH: usize = 0xc0;
/// PQT_REG (64-bit, §11.4.32): page request queue tail.
pub const PQT: usize = 0xc8;
/// PQH.PQH / PQT.PQT `[18:5]`: index of a 256-bit page request descriptor.
pub const PQ_INDEX: u64 = genmask(18, 5);
/// PQA_REG (64-bit, §11.4.33): page request queue address (size-aligned).
pub const PQA: usize = 0xd0;
/// PQA.PQA `[63:12]`.
pub const PQA_ADDR: u64 = genmask(63, 12);
/// PQA.PQS `[2:0]`: queue size is 2^PQS 4KB pages.
pub const PQA_PQS: u64 = genmask(2, 0);
/// PRS_REG (32-bit, §11.4.34): page request status.
pub const PRS: usize = 0xdc;
/// PRS.PPR (0): pending page request (RW1C).
pub const PRS_PPR: u32 = 1 << 0;
/// PRS.PRO (1): page request overflow (RW1C).
pub const PRS_PRO: u32 = 1 << 1;
/// PECTL_REG (32-bit, §11.4.35): page request event control.
pub const PECTL: usize = 0xe0;
/// PECTL.IM (31): interrupt mask.
pub const PECTL_IM: u32 = 1 << 31;
/// PECTL.IP (30): interrupt pending.
pub const PECTL_IP: u32 = 1 << 30;

// --- §11.4.8: IOTLB registers (at ECAP.IRO * 16) ---
/// IVA_REG (64-bit, §11.4.8.2 in the IOTLB register group): offset from the IOTLB
/// register group base.
pub const IVA_OFFSET: usize = 0x0;
/// IOTLB_REG (64-bit, §11.4.8.1): offset from the IOTLB register group base.
pub const IOTLB_OFFSET: usize = 0x8;
/// IOTLB.IVT (63): invalidate IOTLB; hardware clears it when done.
pub const IOTLB_IVT: u64 = 1 << 63;
/// IOTLB.IIRG `[61:60]`: requested granularity.
pub const IOTLB_IIRG: u64 = genmask(61, 60);
/// IOTLB.IAIG `[58:57]`: actual granularity performed (0 = request refused).
pub const IOTLB_IAIG: u64 = genmask(58, 57);
/// IOTLB.DR (49): drain reads.
pub const IOTLB_DR: u64 = 1 << 49;
/// IOTLB.DW (48): drain writes.
pub const IOTLB_DW: u64 = 1 << 48;
/// IOTLB.DID `[47:32]`.
pub const IOTLB_DID: u64 = genmask(47, 32);
/// IVA.ADDR `[63:12]`: page address of a page-selective invalidation.
pub const IVA_ADDR: u64 = genmask(63, 12);
/// IVA.IH (6): invalidation hint (only leaf entries changed).
pub const IVA_IH: u64 = 1 << 6;
/// IVA.AM `[5:0]`: address mask (2^AM pages).
pub const IVA_AM: u64 = genmask(5, 0);

/// Offset of the IOTLB register group from ECAP.IRO (units of 16 bytes).
pub const fn iotlb_reg(iro: u16) -> usize {
    iro as usize * 16
}

/// Offset of fault recording register `index` from CAP.FRO (units of 16 bytes); each
/// register is 128 bits (§11.4.14).
pub const fn frcd_reg(fro: u16, index: u16) -> usize {
    fro as usize * 16 + index as usize * 16
}

/// Bytes of a fault recording register.
pub const FRCD_SIZE: usize = 16;
/// FRCD bit 127 (bit 63 of the upper 64-bit half): F, fault; write 1 to clear.
pub const FRCD_HI_F: u64 = 1 << 63;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_offsets_match_spec() {
        assert_eq!((VER, CAP, ECAP, GCMD, GSTS), (0, 8, 0x10, 0x18, 0x1c));
        assert_eq!((RTADDR, CCMD, FSTS, FECTL), (0x20, 0x28, 0x34, 0x38));
        assert_eq!((FEDATA, FEADDR, FEUADDR, AFLOG), (0x3c, 0x40, 0x44, 0x58));
        assert_eq!(
            (PMEN, PLMBASE, PLMLIMIT, PHMBASE, PHMLIMIT),
            (0x64, 0x68, 0x6c, 0x70, 0x78)
        );
        assert_eq!((IQH, IQT, IQA, ICS, IECTL), (0x80, 0x88, 0x90, 0x9c, 0xa0));
        assert_eq!(
            (IQERCD, IRTA, PQH, PQT, PQA, PRS),
            (0xb0, 0xb8, 0xc0, 0xc8, 0xd0, 0xdc)
        );
        // QEMU: IRO = 0xf -> IOTLB group at 0xf0, IOTLB_REG at 0xf8; FRO = 0x22 -> 0x220.
        assert_eq!(iotlb_reg(0xf) + IOTLB_OFFSET, 0xf8);
        assert_eq!(frcd_reg(0x22, 0), 0x220);
        assert_eq!(frcd_reg(0x22, 3), 0x250);
    }

    #[test]
    fn command_bits_match_spec() {
        assert_eq!(GCMD_TE, 0x8000_0000);
        assert_eq!(GCMD_SRTP, 0x4000_0000);
        assert_eq!(GCMD_WBF, 0x0800_0000);
        assert_eq!(GCMD_QIE, 0x0400_0000);
        assert_eq!(GCMD_IRE, 0x0200_0000);
        assert_eq!(GSTS_ONE_SHOT, 0x6900_0000);
        assert_eq!(
            field_prep(CCMD_CIRG, GRAN_GLOBAL) | CCMD_ICC,
            0xa000_0000_0000_0000
        );
        assert_eq!(
            field_prep(CCMD_SID, 0x10) | field_prep(CCMD_FM, 3),
            0x3_0010_0000
        );
        assert_eq!(
            field_prep(IOTLB_IIRG, GRAN_DOMAIN) | IOTLB_IVT,
            0xa000_0000_0000_0000
        );
        assert_eq!(
            field_prep(IOTLB_DID, 5) | IOTLB_DR | IOTLB_DW,
            0x0003_0005_0000_0000
        );
        assert_eq!(field_prep(RTADDR_TTM, TTM_SCALABLE), 0x400);
        assert_eq!(field_prep(IQA_QS, 7) | IQA_DW, 0x807);
        assert_eq!((FSTS_IQE, FSTS_ICE, FSTS_ITE), (0x10, 0x20, 0x40));
        assert_eq!(field_get(FSTS_FRI, 0x0300), 3);
    }

    #[test]
    fn status_and_event_bits_match_spec() {
        assert_eq!((FSTS_PFO, FSTS_PPF, FSTS_AFO, FSTS_APF), (1, 2, 4, 8));
        assert_eq!(FSTS_RW1C, 0x7d);
        assert_eq!((FECTL_IM, FECTL_IP), (0x8000_0000, 0x4000_0000));
        assert_eq!((PMEN_EPM, PMEN_PRS), (0x8000_0000, 1));
        assert_eq!(ICS_IWC, 1);
        assert_eq!((PRS_PPR, PRS_PRO), (1, 2));
        assert_eq!(
            (PECTL, PECTL_IM, PECTL_IP),
            (0xe0, 0x8000_0000, 0x4000_0000)
        );
        assert_eq!(PQ_INDEX, 0x7_ffe0);
        assert_eq!(IQ_OFFSET, 0x7_fff0);
        assert_eq!(field_prep(PQA_PQS, 3), 3);
        assert_eq!(IVA_ADDR | IVA_IH | IVA_AM, !0xf80);
        assert_eq!(IOTLB_IAIG, 0x0600_0000_0000_0000);
        assert_eq!(CCMD_CAIG, 0x1800_0000_0000_0000);
        assert_eq!(
            (GCMD_SFL, GCMD_EAFL, GCMD_SIRTP, GCMD_CFI),
            (1 << 29, 1 << 28, 1 << 24, 1 << 23)
        );
        assert_eq!(FRCD_HI_F, 1 << 63);
        assert_eq!(field_prep(RTADDR_TTM, TTM_ABORT_DMA), 0xc00);
        assert_eq!(IQERCD_IQEI, 0xf);
    }
}
