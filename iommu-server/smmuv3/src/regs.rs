//! SMMUv3 register map (SMMUv3 spec, IHI 0070, chapter 6: §6.2 "Register overview",
//! §6.3 "Register formats"), with the field helpers, the register access seam and the
//! poll timeouts of [`iommu_hwio`] re-exported.
//!
//! Registers live in two 64KB pages: page 0 holds control, the stream table and the
//! command queue; page 1 (at [`PAGE1`]) holds the event and PRI queue producer and
//! consumer indices. Names follow the spec (`SMMU_CR0` becomes [`CR0`], field
//! `SMMU_CR0.SMMUEN` becomes [`CR0_SMMUEN`]). Offsets given to [`RegisterIo`] are from the
//! start of page 0 (page 1 registers include [`PAGE1`]); wrap the frame in [`Mmio`] with
//! its length [`FRAME_SIZE`].

pub use iommu_hwio::bits::{field_get, field_prep, genmask};
pub use iommu_hwio::mmio::{Mmio, RegisterIo};
pub(crate) use iommu_hwio::poll::poll_until;
#[cfg(target_arch = "aarch64")]
pub use iommu_hwio::poll::GenericTimer;
pub use iommu_hwio::poll::{Clock, Deadline, PollBudget, PollTimeout};

/// Offset of register page 1 (SMMUv3 spec §6.2).
pub const PAGE1: usize = 0x1_0000;
/// Length of the SMMU's register frame: both 64KB pages (the `reg` size to map and to
/// give [`Mmio::new`]).
pub const FRAME_SIZE: usize = 2 * PAGE1;

// --- Identification registers (§6.3.1 - §6.3.8) ---
/// SMMU_IDR0 (§6.3.1).
pub const IDR0: usize = 0x00;
/// SMMU_IDR1 (§6.3.2).
pub const IDR1: usize = 0x04;
/// SMMU_IDR2 (§6.3.3).
pub const IDR2: usize = 0x08;
/// SMMU_IDR3 (§6.3.4).
pub const IDR3: usize = 0x0c;
/// SMMU_IDR4 (§6.3.5).
pub const IDR4: usize = 0x10;
/// SMMU_IDR5 (§6.3.6).
pub const IDR5: usize = 0x14;
/// SMMU_IIDR (§6.3.7).
pub const IIDR: usize = 0x18;
/// SMMU_AIDR (§6.3.8).
pub const AIDR: usize = 0x1c;

// --- SMMU_CR0 / SMMU_CR0ACK (§6.3.9, §6.3.10) ---
/// SMMU_CR0.
pub const CR0: usize = 0x20;
/// SMMU_CR0ACK: reflects CR0 once a change has taken effect.
pub const CR0ACK: usize = 0x24;
/// CR0.SMMUEN: translation enable.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// CR0.PRIQEN: PRI queue enable.
pub const CR0_PRIQEN: u32 = 1 << 1;
/// CR0.EVENTQEN: event queue enable.
pub const CR0_EVENTQEN: u32 = 1 << 2;
/// CR0.CMDQEN: command queue enable.
pub const CR0_CMDQEN: u32 = 1 << 3;
/// CR0.ATSCHK: ATS translated-transaction check.
pub const CR0_ATSCHK: u32 = 1 << 4;

// --- SMMU_CR1 (§6.3.11): cacheability/shareability of table and queue accesses ---
/// SMMU_CR1.
pub const CR1: usize = 0x28;
/// CR1.QUEUE_IC `[1:0]`.
pub const CR1_QUEUE_IC: u64 = genmask(1, 0);
/// CR1.QUEUE_OC `[3:2]`.
pub const CR1_QUEUE_OC: u64 = genmask(3, 2);
/// CR1.QUEUE_SH `[5:4]`.
pub const CR1_QUEUE_SH: u64 = genmask(5, 4);
/// CR1.TABLE_IC `[7:6]`.
pub const CR1_TABLE_IC: u64 = genmask(7, 6);
/// CR1.TABLE_OC `[9:8]`.
pub const CR1_TABLE_OC: u64 = genmask(9, 8);
/// CR1.TABLE_SH `[11:10]`.
pub const CR1_TABLE_SH: u64 = genmask(11, 10);
/// CR1 cacheability: non-cacheable.
pub const CR1_CACHE_NC: u64 = 0;
/// CR1 cacheability: write-back.
pub const CR1_CACHE_WB: u64 = 1;
/// CR1 cacheability: write-through.
pub const CR1_CACHE_WT: u64 = 2;
/// Shareability: non-shareable.
pub const SH_NSH: u64 = 0;
/// Shareability: outer shareable.
pub const SH_OSH: u64 = 2;
/// Shareability: inner shareable.
pub const SH_ISH: u64 = 3;

// --- SMMU_CR2 (§6.3.12) ---
/// SMMU_CR2.
pub const CR2: usize = 0x2c;
/// CR2.E2H: EL2-E2H translation regime.
pub const CR2_E2H: u32 = 1 << 0;
/// CR2.RECINVSID: record C_BAD_STREAMID for out-of-range StreamIDs.
pub const CR2_RECINVSID: u32 = 1 << 1;
/// CR2.PTM: private TLB maintenance (ignore broadcast TLBI from PEs).
pub const CR2_PTM: u32 = 1 << 2;

// --- Misc control (§6.3.13 - §6.3.17) ---
/// SMMU_STATUSR.
pub const STATUSR: usize = 0x40;
/// SMMU_GBPA: global bypass attributes used while SMMUEN = 0.
pub const GBPA: usize = 0x44;
/// GBPA.ABORT: abort all incoming transactions while SMMUEN = 0.
pub const GBPA_ABORT: u32 = 1 << 20;
/// GBPA.UPDATE: write 1 with new values; reads 1 until the update completed.
pub const GBPA_UPDATE: u32 = 1 << 31;
/// SMMU_IRQ_CTRL.
pub const IRQ_CTRL: usize = 0x50;
/// SMMU_IRQ_CTRLACK.
pub const IRQ_CTRLACK: usize = 0x54;
/// IRQ_CTRL.GERROR_IRQEN.
pub const IRQ_CTRL_GERROR_IRQEN: u32 = 1 << 0;
/// IRQ_CTRL.PRIQ_IRQEN.
pub const IRQ_CTRL_PRIQ_IRQEN: u32 = 1 << 1;
/// IRQ_CTRL.EVENTQ_IRQEN.
pub const IRQ_CTRL_EVENTQ_IRQEN: u32 = 1 << 2;

// --- SMMU_GERROR / SMMU_GERRORN (§6.3.18, §6.3.19): toggle-style global errors ---
/// SMMU_GERROR: a bit that differs from GERRORN is an active error.
pub const GERROR: usize = 0x60;
/// SMMU_GERRORN: software toggles a bit to match GERROR to acknowledge it.
pub const GERRORN: usize = 0x64;
/// GERROR.CMDQ_ERR: the command queue stopped on an erroneous command.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// GERROR.EVENTQ_ABT_ERR.
pub const GERROR_EVENTQ_ABT_ERR: u32 = 1 << 2;
/// GERROR.PRIQ_ABT_ERR.
pub const GERROR_PRIQ_ABT_ERR: u32 = 1 << 3;
/// GERROR.MSI_CMDQ_ABT_ERR.
pub const GERROR_MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// GERROR.MSI_EVENTQ_ABT_ERR.
pub const GERROR_MSI_EVENTQ_ABT_ERR: u32 = 1 << 5;
/// GERROR.MSI_PRIQ_ABT_ERR.
pub const GERROR_MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
/// GERROR.MSI_GERROR_ABT_ERR.
pub const GERROR_MSI_GERROR_ABT_ERR: u32 = 1 << 7;
/// GERROR.SFM_ERR: the SMMU entered service failure mode.
pub const GERROR_SFM_ERR: u32 = 1 << 8;
/// All architected GERROR bits.
pub const GERROR_ERR_MASK: u32 = 0x1fd;
/// SMMU_GERROR_IRQ_CFG0 (MSI address).
pub const GERROR_IRQ_CFG0: usize = 0x68;

// --- Stream table (§6.3.23, §6.3.24) ---
/// SMMU_STRTAB_BASE (64-bit).
pub const STRTAB_BASE: usize = 0x80;
/// STRTAB_BASE.RA: read-allocate hint.
pub const STRTAB_BASE_RA: u64 = 1 << 62;
/// STRTAB_BASE.ADDR `[51:6]`.
pub const STRTAB_BASE_ADDR: u64 = genmask(51, 6);
/// SMMU_STRTAB_BASE_CFG.
pub const STRTAB_BASE_CFG: usize = 0x88;
/// STRTAB_BASE_CFG.LOG2SIZE `[5:0]`: log2 of the number of StreamIDs covered.
pub const STRTAB_BASE_CFG_LOG2SIZE: u64 = genmask(5, 0);
/// STRTAB_BASE_CFG.SPLIT `[10:6]`: StreamID bits resolved by the level-2 tables.
pub const STRTAB_BASE_CFG_SPLIT: u64 = genmask(10, 6);
/// STRTAB_BASE_CFG.FMT `[17:16]`.
pub const STRTAB_BASE_CFG_FMT: u64 = genmask(17, 16);
/// FMT value: linear table.
pub const STRTAB_BASE_CFG_FMT_LINEAR: u64 = 0;
/// FMT value: two-level table.
pub const STRTAB_BASE_CFG_FMT_2LVL: u64 = 1;

// --- Queues (§6.3.25 - §6.3.30) ---
/// SMMU_CMDQ_BASE (64-bit).
pub const CMDQ_BASE: usize = 0x90;
/// SMMU_CMDQ_PROD.
pub const CMDQ_PROD: usize = 0x98;
/// SMMU_CMDQ_CONS.
pub const CMDQ_CONS: usize = 0x9c;
/// SMMU_EVENTQ_BASE (64-bit).
pub const EVENTQ_BASE: usize = 0xa0;
/// SMMU_EVENTQ_PROD (page 1).
pub const EVENTQ_PROD: usize = PAGE1 + 0xa8;
/// SMMU_EVENTQ_CONS (page 1).
pub const EVENTQ_CONS: usize = PAGE1 + 0xac;
/// SMMU_PRIQ_BASE (64-bit).
pub const PRIQ_BASE: usize = 0xc0;
/// SMMU_PRIQ_PROD (page 1).
pub const PRIQ_PROD: usize = PAGE1 + 0xc8;
/// SMMU_PRIQ_CONS (page 1).
pub const PRIQ_CONS: usize = PAGE1 + 0xcc;
/// Q_BASE.RA / WA (bit 62): read-allocate (CMDQ) or write-allocate (EVENTQ, PRIQ) hint.
pub const Q_BASE_RWA: u64 = 1 << 62;
/// Q_BASE.ADDR `[51:5]`.
pub const Q_BASE_ADDR: u64 = genmask(51, 5);
/// Q_BASE.LOG2SIZE `[4:0]`.
pub const Q_BASE_LOG2SIZE: u64 = genmask(4, 0);
/// CMDQ_CONS.ERR `[30:24]`.
pub const CMDQ_CONS_ERR: u32 = 0x7f << 24;
/// EVENTQ_PROD.OVFLG (bit 31) / EVENTQ_CONS.OVACKFLG (bit 31).
pub const Q_OVERFLOW_FLAG: u32 = 1 << 31;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_offsets_match_spec() {
        assert_eq!((CR0, CR0ACK, CR1, CR2), (0x20, 0x24, 0x28, 0x2c));
        assert_eq!(
            (GERROR, GERRORN, IRQ_CTRL, IRQ_CTRLACK),
            (0x60, 0x64, 0x50, 0x54)
        );
        assert_eq!((STRTAB_BASE, STRTAB_BASE_CFG), (0x80, 0x88));
        assert_eq!((CMDQ_BASE, CMDQ_PROD, CMDQ_CONS), (0x90, 0x98, 0x9c));
        assert_eq!(
            (EVENTQ_BASE, EVENTQ_PROD, EVENTQ_CONS),
            (0xa0, 0x100a8, 0x100ac)
        );
        assert_eq!(CR1_TABLE_SH | CR1_QUEUE_IC, 0xc03);
        assert_eq!(CMDQ_CONS_ERR, 0x7f00_0000);
        assert_eq!(Q_BASE_ADDR, 0x000f_ffff_ffff_ffe0);
    }

    #[test]
    fn frame_holds_both_pages() {
        assert_eq!(FRAME_SIZE, 0x2_0000);
        const { assert!(PRIQ_CONS + 4 <= FRAME_SIZE && EVENTQ_CONS + 4 <= FRAME_SIZE) };
    }
}
