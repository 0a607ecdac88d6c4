//! SMMUv3 model: the register file, command queue, stream table, context descriptor and
//! stage-1 table walks, configuration cache, TLB and event queue of an Arm SMMUv3, as
//! QEMU 7.2 emulates it for `-M virt,iommu=smmuv3`.
//!
//! The SMMUv3 architecture specification (Arm IHI 0070) is cited as "spec §x.y"; its
//! register, structure, command and event names are used throughout (sections follow
//! the spec's layout: registers §6.3, STE §5.2, CD §5.4, commands chapter 4, events
//! §7.3). The AArch64 table format is the Arm ARM's (DDI 0487, D8).
//!
//! # What it does
//! - Registers ([`RegisterIo`]): IDR0..5, IIDR and AIDR with QEMU 7.2's values
//!   ([`Config::QEMU_7_2`]), CR0/CR0ACK, CR1, CR2, STATUSR, GBPA, IRQ_CTRL/IRQ_CTRLACK,
//!   GERROR/GERRORN, STRTAB_BASE/STRTAB_BASE_CFG, CMDQ_BASE/PROD/CONS and
//!   EVENTQ_BASE/PROD/CONS (register page 1 at 0x10000).
//! - Writing CMDQ_PROD (or enabling the queue, or acknowledging a command error in
//!   GERRORN) consumes the command queue from [`PhysMem`] at once: CFGI_STE,
//!   CFGI_STE_RANGE (CFGI_ALL), CFGI_CD, CFGI_CD_ALL, TLBI_NH_ALL, TLBI_NH_ASID,
//!   TLBI_NH_VA and TLBI_NH_VAA (with range invalidation, IDR3.RIL), TLBI_NSNH_ALL,
//!   CMD_SYNC; prefetches are ignored. An unknown or malformed command stops the queue
//!   with CMDQ_CONS.ERR = CERROR_ILL and GERROR.CMDQ_ERR (spec §7.1); a command the
//!   model cannot fetch gives CERROR_ABT.
//! - DMA ([`Smmuv3::translate`], [`Smmuv3::dma_read`], [`Smmuv3::dma_write`]) walks the
//!   stream table (linear or two-level), the STE, the CD (a single CD, or a linear or
//!   two-level CD table when substreams are configured, [`Config::with_substreams`]) and
//!   the AArch64 stage-1 tables (4KB, 16KB or 64KB granule, blocks, AP read-only), and
//!   copies data to and from [`PhysMem`].
//! - A configuration cache (the decoded STE and CDs of a stream, filled on use, dropped
//!   only by CFGI commands) and a TLB (leaf translations keyed by ASID, granule, level
//!   and address, filled on use, dropped only by TLBI commands) make a missing
//!   invalidation observable: the model keeps translating with what it cached.
//! - Faults are written as 32-byte event records (spec §7.3) into the event queue in
//!   RAM, with EVENTQ_PROD advanced.
//! - Beyond QEMU, with [`Config::with_pri`]: IDR0.PRI and a PRI queue (PRIQ_BASE,
//!   PRIQ_PROD, PRIQ_CONS, CR0.PRIQEN). Page requests from devices
//!   ([`Smmuv3::page_request`]) are written as 16-byte PRI queue records (spec chapter 8);
//!   CMD_PRI_RESP is executed and its responses kept for tests
//!   ([`Smmuv3::pri_responses`]). Without it the PRI registers behave as on QEMU.
//!
//! # Where QEMU 7.2 and the specification differ
//! The model follows QEMU (the agreement test compares its records with QEMU's):
//! - SMMUEN = 0 lets DMA bypass translation; GBPA is not implemented (reads 0, writes
//!   ignored), so GBPA.ABORT has no effect (spec §6.3.14: GBPA governs traffic while
//!   SMMUEN = 0).
//! - A record that does not fit in a full event queue is dropped and
//!   GERROR.EVENTQ_ABT_ERR is raised; EVENTQ_PROD.OVFLG is never toggled (spec §7.4:
//!   toggle OVFLG).
//! - Stage-1 fault records (F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION) carry
//!   CLASS = CD (0b00), as measured on QEMU 7.2, which does not fill the field for them
//!   (the faulting access is the input transaction), and PnU = InD = 0: QEMU treats
//!   every transaction as a privileged data access.
//! - Permissions: only AP\[2\] (read-only) and APTable\[1\] are checked; AP\[1\]
//!   (unprivileged access) and the execute-never bits are ignored. The TLB keeps the
//!   leaf's permission only, so a write hitting an entry cached by a read is not
//!   checked against APTable again.
//! - No Access flag faults and no address size faults on output addresses (QEMU 7.2
//!   checks neither). [`Config::access_flag_faults`] and
//!   [`Config::address_size_faults`] turn the specification's checks on.
//! - Any CFGI command naming a StreamID (CFGI_STE, CFGI_STE_RANGE, CFGI_CD, CFGI_CD_ALL)
//!   drops everything cached for that stream: its STE and all its CDs.
//! - Commands for features the model does not advertise (TLBI_EL2_*, TLBI_EL3_*,
//!   TLBI_S12_VMALL, TLBI_S2_IPA, ATC_INV, RESUME, STALL_TERM, and PRI_RESP without
//!   [`Config::with_pri`]) are accepted and do nothing (spec chapter 4: CERROR_ILL). Reserved fields are not checked;
//!   only SSec = 1 in a configuration invalidation is malformed (CERROR_ILL).
//! - CMDQ_CONS.ERR keeps its value after the error was acknowledged (until software
//!   writes CMDQ_CONS).
//! - STE decoding: S1STALLD = 1 and a stage-2 or nested Config are C_BAD_STE; with the
//!   QEMU identification registers (SSIDSIZE = 0) S1CDMax != 0 is C_BAD_STE as well.
//! - Stream table: a linear table's base is masked with its size as
//!   `~((1 << (LOG2SIZE + 5)) - 1)`, a two-level table's with
//!   `~((1 << max(5, LOG2SIZE - SPLIT + 2)) - 1)`; once STRTAB_BASE_CFG was written with
//!   FMT = 2-level, the table stays two-level until the model is rebuilt (QEMU never
//!   clears the flag); an L1 descriptor with Span = 0 is C_BAD_STREAMID and one whose
//!   level-2 index exceeds `2^Span - 1` is C_BAD_STE (spec §5.1: the L2 table holds
//!   `2^(Span-1)` STEs).
//! - A level-0 block descriptor is used as a block (the 4KB granule forbids it).
//! - The TLB holds at most [`Config::tlb_capacity`] entries (QEMU: 256) and is emptied
//!   entirely when full.
//! - F_WALK_EABT is recorded even when CD.R = 0.
//! - Registers page 0 and page 1 are aliases of each other.
//! - F_STE_FETCH, F_CD_FETCH and F_WALK_EABT carry the fetch address in word 3
//!   (FetchAddr, spec §7.3); QEMU's placement of it is not something the QEMU image
//!   can observe (its tables are always in RAM).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use iommu_hwio::mmio::RegisterIo;
use sim_physmem::{OutOfRange, PhysMem};

use crate::Access;

// ---------------------------------------------------------------------------------------
// Register map (spec §6.2, §6.3).
// ---------------------------------------------------------------------------------------

/// Register offsets (bytes from the start of page 0; page 1 starts at [`regs::PAGE1`]).
pub mod regs {
    /// Offset of register page 1.
    pub const PAGE1: usize = 0x1_0000;
    /// SMMU_IDR0 (§6.3.1); IDR1..IDR5 follow at 4-byte steps.
    pub const IDR0: usize = 0x00;
    /// SMMU_IDR5 (§6.3.6).
    pub const IDR5: usize = 0x14;
    /// SMMU_IIDR (§6.3.7).
    pub const IIDR: usize = 0x18;
    /// SMMU_AIDR (§6.3.8).
    pub const AIDR: usize = 0x1c;
    /// SMMU_CR0 (§6.3.9).
    pub const CR0: usize = 0x20;
    /// SMMU_CR0ACK (§6.3.10).
    pub const CR0ACK: usize = 0x24;
    /// SMMU_CR1 (§6.3.11).
    pub const CR1: usize = 0x28;
    /// SMMU_CR2 (§6.3.12).
    pub const CR2: usize = 0x2c;
    /// SMMU_STATUSR (§6.3.13).
    pub const STATUSR: usize = 0x40;
    /// SMMU_GBPA (§6.3.14).
    pub const GBPA: usize = 0x44;
    /// SMMU_IRQ_CTRL (§6.3.16).
    pub const IRQ_CTRL: usize = 0x50;
    /// SMMU_IRQ_CTRLACK (§6.3.17).
    pub const IRQ_CTRLACK: usize = 0x54;
    /// SMMU_GERROR (§6.3.18).
    pub const GERROR: usize = 0x60;
    /// SMMU_GERRORN (§6.3.19).
    pub const GERRORN: usize = 0x64;
    /// SMMU_GERROR_IRQ_CFG0 (§6.3.20, 64-bit).
    pub const GERROR_IRQ_CFG0: usize = 0x68;
    /// SMMU_GERROR_IRQ_CFG1 (§6.3.21).
    pub const GERROR_IRQ_CFG1: usize = 0x70;
    /// SMMU_GERROR_IRQ_CFG2 (§6.3.22).
    pub const GERROR_IRQ_CFG2: usize = 0x74;
    /// SMMU_STRTAB_BASE (§6.3.23, 64-bit).
    pub const STRTAB_BASE: usize = 0x80;
    /// SMMU_STRTAB_BASE_CFG (§6.3.24).
    pub const STRTAB_BASE_CFG: usize = 0x88;
    /// SMMU_CMDQ_BASE (§6.3.25, 64-bit).
    pub const CMDQ_BASE: usize = 0x90;
    /// SMMU_CMDQ_PROD (§6.3.26).
    pub const CMDQ_PROD: usize = 0x98;
    /// SMMU_CMDQ_CONS (§6.3.27).
    pub const CMDQ_CONS: usize = 0x9c;
    /// SMMU_EVENTQ_BASE (§6.3.28, 64-bit).
    pub const EVENTQ_BASE: usize = 0xa0;
    /// SMMU_EVENTQ_PROD (§6.3.29), in page 1.
    pub const EVENTQ_PROD: usize = PAGE1 + 0xa8;
    /// SMMU_EVENTQ_CONS (§6.3.30), in page 1.
    pub const EVENTQ_CONS: usize = PAGE1 + 0xac;
    /// SMMU_EVENTQ_IRQ_CFG0 (§6.3.31, 64-bit).
    pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
    /// SMMU_EVENTQ_IRQ_CFG1 (§6.3.32).
    pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
    /// SMMU_EVENTQ_IRQ_CFG2 (§6.3.33).
    pub const EVENTQ_IRQ_CFG2: usize = 0xbc;
    /// SMMU_PRIQ_BASE (§6.3.34, 64-bit).
    pub const PRIQ_BASE: usize = 0xc0;
    /// SMMU_PRIQ_PROD (§6.3.35), in page 1.
    pub const PRIQ_PROD: usize = PAGE1 + 0xc8;
    /// SMMU_PRIQ_CONS (§6.3.36), in page 1.
    pub const PRIQ_CONS: usize = PAGE1 + 0xcc;
    /// SMMU_PRIQ_IRQ_CFG0 (§6.3.37, 64-bit).
    pub const PRIQ_IRQ_CFG0: usize = 0xd0;
    /// SMMU_PRIQ_IRQ_CFG1 (§6.3.38).
    pub const PRIQ_IRQ_CFG1: usize = 0xd8;
    /// SMMU_PRIQ_IRQ_CFG2 (§6.3.39).
    pub const PRIQ_IRQ_CFG2: usize = 0xdc;

    /// CR0.SMMUEN.
    pub const CR0_SMMUEN: u32 = 1 << 0;
    /// CR0.PRIQEN.
    pub const CR0_PRIQEN: u32 = 1 << 1;
    /// CR0.EVENTQEN.
    pub const CR0_EVENTQEN: u32 = 1 << 2;
    /// CR0.CMDQEN.
    pub const CR0_CMDQEN: u32 = 1 << 3;
    /// CR0 bits that are RES0: not reflected in CR0ACK.
    pub const CR0_RES0: u32 = 0xffff_fc20;
    /// GERROR.CMDQ_ERR.
    pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
    /// GERROR.EVENTQ_ABT_ERR.
    pub const GERROR_EVENTQ_ABT_ERR: u32 = 1 << 2;
    /// GERROR.PRIQ_ABT_ERR.
    pub const GERROR_PRIQ_ABT_ERR: u32 = 1 << 3;
    /// *Q_PROD.OVFLG (bit 31).
    pub const Q_OVFLG: u32 = 1 << 31;
    /// CMDQ_CONS.ERR `[30:24]`.
    pub const CMDQ_CONS_ERR_SHIFT: u32 = 24;
    /// CMDQ_CONS.ERR mask.
    pub const CMDQ_CONS_ERR: u32 = 0x7f << CMDQ_CONS_ERR_SHIFT;
    /// SMMU_*Q_BASE.ADDR `[51:5]` (and the mask QEMU applies to STRTAB_BASE).
    pub const Q_BASE_ADDR: u64 = 0x000f_ffff_ffff_ffe0;
    /// SMMU_*Q_BASE.LOG2SIZE `[4:0]`.
    pub const Q_BASE_LOG2SIZE: u64 = 0x1f;
    /// STRTAB_BASE_CFG.LOG2SIZE `[5:0]`.
    pub const STRTAB_CFG_LOG2SIZE: u32 = 0x3f;
    /// STRTAB_BASE_CFG.SPLIT `[10:6]`.
    pub const STRTAB_CFG_SPLIT_SHIFT: u32 = 6;
    /// STRTAB_BASE_CFG.FMT `[17:16]`.
    pub const STRTAB_CFG_FMT_SHIFT: u32 = 16;
}

/// CMDQ_CONS.ERR codes (spec §7.1).
pub mod cerror {
    /// CERROR_ILL: an unknown opcode or a malformed command.
    pub const ILL: u32 = 1;
    /// CERROR_ABT: the command could not be fetched.
    pub const ABT: u32 = 2;
}

/// Event type codes (spec §7.3).
pub mod event {
    /// C_BAD_STREAMID.
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// F_STE_FETCH.
    pub const F_STE_FETCH: u8 = 0x03;
    /// C_BAD_STE.
    pub const C_BAD_STE: u8 = 0x04;
    /// F_STREAM_DISABLED.
    pub const F_STREAM_DISABLED: u8 = 0x06;
    /// C_BAD_SUBSTREAMID.
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    /// F_CD_FETCH.
    pub const F_CD_FETCH: u8 = 0x09;
    /// C_BAD_CD.
    pub const C_BAD_CD: u8 = 0x0a;
    /// F_WALK_EABT.
    pub const F_WALK_EABT: u8 = 0x0b;
    /// F_TRANSLATION.
    pub const F_TRANSLATION: u8 = 0x10;
    /// F_ADDR_SIZE.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// F_ACCESS.
    pub const F_ACCESS: u8 = 0x12;
    /// F_PERMISSION.
    pub const F_PERMISSION: u8 = 0x13;

    /// Word 0: Type `[7:0]`, SSV (bit 11), SubstreamID `[31:12]`, StreamID `[63:32]`.
    pub const W0_SSV: u64 = 1 << 11;
    /// Word 0 SubstreamID shift.
    pub const W0_SSID_SHIFT: u32 = 12;
    /// Word 0 StreamID shift.
    pub const W0_SID_SHIFT: u32 = 32;
    /// Word 1: RnW (bit 35).
    pub const W1_RNW: u64 = 1 << 35;
    /// Word 1: CLASS `[41:40]`.
    pub const W1_CLASS_SHIFT: u32 = 40;
    /// CLASS: translation table walk.
    pub const CLASS_TT: u64 = 0b01;
    /// Word 3: FetchAddr `[51:3]`.
    pub const W3_FETCH_ADDR: u64 = 0x000f_ffff_ffff_fff8;
}

/// Command opcodes (spec chapter 4).
mod op {
    pub const PREFETCH_CONFIG: u8 = 0x01;
    pub const PREFETCH_ADDR: u8 = 0x02;
    pub const CFGI_STE: u8 = 0x03;
    pub const CFGI_STE_RANGE: u8 = 0x04;
    pub const CFGI_CD: u8 = 0x05;
    pub const CFGI_CD_ALL: u8 = 0x06;
    pub const TLBI_NH_ALL: u8 = 0x10;
    pub const TLBI_NH_ASID: u8 = 0x11;
    pub const TLBI_NH_VA: u8 = 0x12;
    pub const TLBI_NH_VAA: u8 = 0x13;
    pub const TLBI_EL3_ALL: u8 = 0x18;
    pub const TLBI_EL3_VA: u8 = 0x1a;
    pub const TLBI_EL2_ALL: u8 = 0x20;
    pub const TLBI_EL2_ASID: u8 = 0x21;
    pub const TLBI_EL2_VA: u8 = 0x22;
    pub const TLBI_EL2_VAA: u8 = 0x23;
    pub const TLBI_S12_VMALL: u8 = 0x28;
    pub const TLBI_S2_IPA: u8 = 0x2a;
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    pub const ATC_INV: u8 = 0x40;
    pub const PRI_RESP: u8 = 0x41;
    pub const RESUME: u8 = 0x44;
    pub const STALL_TERM: u8 = 0x45;
    pub const CMD_SYNC: u8 = 0x46;
}

/// Bits `[hi:lo]` of `v`.
const fn bits(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

/// Mask of the low `n` bits (all 64 for `n >= 64`).
const fn low_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

// ---------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------

/// What the model advertises and which of the specification's checks it applies beyond
/// QEMU 7.2's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// SMMU_IDR0..SMMU_IDR5.
    pub idr: [u32; 6],
    /// SMMU_IIDR.
    pub iidr: u32,
    /// SMMU_AIDR.
    pub aidr: u32,
    /// Access flag faults (F_ACCESS) for leaf descriptors with AF = 0 when CD.AFFD = 0
    /// (spec §3.13 / Arm ARM D8). QEMU 7.2: off.
    pub access_flag_faults: bool,
    /// Address size faults (F_ADDR_SIZE) for table and output addresses beyond the CD's
    /// IPS (spec §3.4). QEMU 7.2: off.
    pub address_size_faults: bool,
    /// TLB entries kept before the TLB is emptied (QEMU: 256).
    pub tlb_capacity: usize,
}

/// IDR0.CD2L: two-level CD tables.
const IDR0_CD2L: u32 = 1 << 19;
/// IDR0.PRI: page request interface (a PRI queue).
const IDR0_PRI: u32 = 1 << 16;
/// IDR1.PRIQS `[15:11]`.
const IDR1_PRIQS_SHIFT: u32 = 11;
/// IDR1.SSIDSIZE `[10:6]`.
const IDR1_SSIDSIZE_SHIFT: u32 = 6;
/// IDR1.SIDSIZE `[5:0]`.
const IDR1_SIDSIZE: u32 = 0x3f;
/// IDR5.OAS `[2:0]`.
const IDR5_OAS: u32 = 0x7;
/// IDR1.EVENTQS `[20:16]` and IDR1.CMDQS `[25:21]`.
const IDR1_EVENTQS_SHIFT: u32 = 16;
const IDR1_CMDQS_SHIFT: u32 = 21;

impl Config {
    /// QEMU 7.2's `-M virt,iommu=smmuv3` (measured on Debian's 7.2.22): IDR0 = 0x0d40101a
    /// (S1P, AArch64 tables, COHACC, ASID16, little-endian tables, no stall, TERM_MODEL,
    /// two-level stream tables), IDR1 = 0x02730010 (SIDSIZE 16, SSIDSIZE 0, EVENTQS =
    /// CMDQS = 19), IDR3 = 0x1404 (HAD, RIL, BBML2), IDR5 = 0x74 (OAS 44 bits, 4KB, 16KB
    /// and 64KB granules), AIDR = 1 (SMMUv3.1), IIDR = 0 (not implemented).
    pub const QEMU_7_2: Config = Config {
        idr: [0x0d40_101a, 0x0273_0010, 0, 0x1404, 0, 0x74],
        iidr: 0,
        aidr: 1,
        access_flag_faults: false,
        address_size_faults: false,
        tlb_capacity: 256,
    };

    /// This configuration with `ssid_bits` SubstreamID bits (IDR1.SSIDSIZE) and, with
    /// `two_level_cd`, two-level CD tables (IDR0.CD2L): what QEMU lacks and PASID
    /// support needs. STEs with S1CDMax != 0 are then walked as the specification says.
    pub const fn with_substreams(mut self, ssid_bits: u8, two_level_cd: bool) -> Self {
        let ssid = (ssid_bits as u32 & 0x1f) << IDR1_SSIDSIZE_SHIFT;
        self.idr[1] = (self.idr[1] & !(0x1f << IDR1_SSIDSIZE_SHIFT)) | ssid;
        if two_level_cd {
            self.idr[0] |= IDR0_CD2L;
        } else {
            self.idr[0] &= !IDR0_CD2L;
        }
        self
    }

    /// This configuration with a PRI queue of up to `2^log2` records (IDR0.PRI,
    /// IDR1.PRIQS): page requests from devices ([`Smmuv3::page_request`]) and CMD_PRI_RESP
    /// (what QEMU 7.2 lacks).
    pub const fn with_pri(mut self, log2: u8) -> Self {
        self.idr[0] |= IDR0_PRI;
        self.idr[1] = (self.idr[1] & !(0x1f << IDR1_PRIQS_SHIFT))
            | ((log2 as u32 & 0x1f) << IDR1_PRIQS_SHIFT);
        self
    }

    /// This configuration with the specification's Access flag and address size checks.
    pub const fn with_spec_checks(mut self) -> Self {
        self.access_flag_faults = true;
        self.address_size_faults = true;
        self
    }

    fn sid_bits(&self) -> u32 {
        self.idr[1] & IDR1_SIDSIZE
    }

    fn ssid_bits(&self) -> u32 {
        (self.idr[1] >> IDR1_SSIDSIZE_SHIFT) & 0x1f
    }

    fn cd2l(&self) -> bool {
        self.idr[0] & IDR0_CD2L != 0
    }

    fn cmdq_log2(&self) -> u32 {
        (self.idr[1] >> IDR1_CMDQS_SHIFT) & 0x1f
    }

    fn eventq_log2(&self) -> u32 {
        (self.idr[1] >> IDR1_EVENTQS_SHIFT) & 0x1f
    }

    fn pri(&self) -> bool {
        self.idr[0] & IDR0_PRI != 0
    }

    fn priq_log2(&self) -> u32 {
        (self.idr[1] >> IDR1_PRIQS_SHIFT) & 0x1f
    }

    fn oas_bits(&self) -> u32 {
        oas_bits(self.idr[5] & IDR5_OAS)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::QEMU_7_2
    }
}

/// The IPS / OAS encoding as a number of address bits.
fn oas_bits(enc: u32) -> u32 {
    match enc {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

// ---------------------------------------------------------------------------------------
// Public results.
// ---------------------------------------------------------------------------------------

/// A successful translation of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Output (physical) address.
    pub pa: u64,
    /// Bytes from `pa` to the end of the page or block that translated it (the 4KB page
    /// for untranslated traffic).
    pub len: u64,
    /// Whether the entry allows writes.
    pub writable: bool,
}

/// Why a DMA access did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The STE aborts the stream's traffic: terminated without an event.
    Aborted,
    /// A fault. `event` is the type of the record it gives (for example
    /// [`event::F_TRANSLATION`]); `recorded` says whether the record was written to the
    /// event queue (not when CD.R = 0, the event queue is disabled, or the queue was
    /// full).
    Fault {
        /// Event type code.
        event: u8,
        /// Whether the record reached the event queue.
        recorded: bool,
    },
    /// The access translated to an address outside simulated RAM (a bus error: no
    /// event).
    Bus(OutOfRange),
}

impl std::fmt::Display for DmaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DmaError::Aborted => f.write_str("aborted by the STE"),
            DmaError::Fault { event, recorded } => write!(
                f,
                "SMMU fault, event type {event:#x} ({})",
                if *recorded {
                    "recorded"
                } else {
                    "not recorded"
                }
            ),
            DmaError::Bus(e) => write!(f, "bus error: {e}"),
        }
    }
}

impl std::error::Error for DmaError {}

/// Counters, for tests that need to see the caches at work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Translations served by the TLB.
    pub tlb_hits: u64,
    /// Stage-1 table walks.
    pub walks: u64,
    /// Stream configurations served by the configuration cache.
    pub config_hits: u64,
    /// Stream configurations fetched and decoded from memory.
    pub config_fetches: u64,
    /// Commands consumed.
    pub commands: u64,
    /// Event records written.
    pub events: u64,
    /// Event records dropped because the queue was full or could not be written.
    pub events_lost: u64,
    /// PRI queue records written.
    pub page_requests: u64,
    /// Page requests dropped because the PRI queue was full or could not be written.
    pub page_requests_lost: u64,
}

/// A page request a device sends (PCIe PRI Page Request Message), as
/// [`Smmuv3::page_request`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriRequest {
    pub sid: u32,
    pub ssid: Option<u32>,
    /// Address of the page wanted.
    pub addr: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub privileged: bool,
    /// Last request of its group.
    pub last: bool,
    /// Page request group index (9 bits).
    pub prg_index: u16,
}

/// A PRI response as the device receives it: from CMD_PRI_RESP, or from the model itself
/// for a group whose last request it had to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriResponse {
    pub sid: u32,
    pub ssid: Option<u32>,
    pub prg_index: u16,
    /// CMD_PRI_RESP.Resp: 0 Deny, 1 Fail, 2 Success.
    pub resp: u8,
    /// Sent by the model for a dropped last request, not by software.
    pub from_hardware: bool,
}

// ---------------------------------------------------------------------------------------
// Internal state.
// ---------------------------------------------------------------------------------------

/// A queue as QEMU keeps it: base register, log2 of its size (clamped to the IDR1
/// maximum), producer and consumer registers.
#[derive(Clone, Copy, Debug, Default)]
struct Queue {
    base: u64,
    log2: u32,
    prod: u32,
    cons: u32,
}

impl Queue {
    fn set_base(&mut self, base: u64, max_log2: u32) {
        self.base = base;
        self.log2 = ((base & regs::Q_BASE_LOG2SIZE) as u32).min(max_log2);
    }

    fn index_mask(&self) -> u32 {
        low_mask(self.log2) as u32
    }

    fn wrap(&self, v: u32) -> u32 {
        (v >> self.log2) & 1
    }

    fn empty(&self) -> bool {
        self.prod & self.index_mask() == self.cons & self.index_mask()
            && self.wrap(self.prod) == self.wrap(self.cons)
    }

    fn full(&self) -> bool {
        self.prod & self.index_mask() == self.cons & self.index_mask()
            && self.wrap(self.prod) != self.wrap(self.cons)
    }

    /// Address of the entry `v` points at.
    fn entry(&self, v: u32, size: u64) -> u64 {
        (self.base & regs::Q_BASE_ADDR).wrapping_add(u64::from(v & self.index_mask()) * size)
    }

    /// `v` advanced by one entry in its index and wrap bits, other bits kept.
    fn incr(&self, v: u32) -> u32 {
        let m = low_mask(self.log2 + 1) as u32;
        (v & !m) | (v.wrapping_add(1) & m)
    }
}

/// A decoded STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SteConfig {
    Abort,
    Bypass,
    Stage1(S1Ste),
}

/// The stage-1 fields of an STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct S1Ste {
    ctx_ptr: u64,
    cd_max: u32,
    fmt: u64,
    dss: u64,
}

/// One translation table (TTB0 or TTB1) of a CD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TtInfo {
    disabled: bool,
    tsz: u32,
    /// log2 of the granule: 12, 14 or 16.
    granule: u32,
    ttb: u64,
    had: bool,
}

/// A decoded CD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CdConfig {
    asid: u16,
    tt: [TtInfo; 2],
    tbi: u64,
    oas: u32,
    record: bool,
    affd: bool,
}

/// What the configuration cache holds for one stream.
#[derive(Clone, Debug)]
struct StreamEntry {
    ste: SteConfig,
    /// Decoded CDs by SubstreamID (0 for the single CD and for non-substream traffic
    /// using CD 0).
    cds: HashMap<u32, CdConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TlbKey {
    asid: u16,
    /// Input address of the page or block.
    base: u64,
    granule: u32,
    level: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TlbEntry {
    pa: u64,
    /// Size of the page or block minus one.
    mask: u64,
    writable: bool,
}

/// A fault, before it becomes a record.
#[derive(Clone, Copy, Debug, Default)]
struct FaultInfo {
    kind: u8,
    sid: u32,
    ssid: Option<u32>,
    addr: u64,
    rnw: bool,
    class: u64,
    /// Word 3 (FetchAddr).
    fetch: u64,
    /// Whether the fault is recorded (CD.R for stage-1 faults).
    record: bool,
}

impl FaultInfo {
    fn config(kind: u8, sid: u32, ssid: Option<u32>) -> Self {
        FaultInfo {
            kind,
            sid,
            ssid,
            record: true,
            ..FaultInfo::default()
        }
    }

    /// The 32-byte record (spec §7.3), as four host-order words.
    fn record_words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        w[0] = u64::from(self.kind) | (u64::from(self.sid) << event::W0_SID_SHIFT);
        if let Some(s) = self.ssid {
            w[0] |= event::W0_SSV | (u64::from(s & 0xf_ffff) << event::W0_SSID_SHIFT);
        }
        match self.kind {
            event::F_STE_FETCH | event::F_CD_FETCH => {
                w[3] = self.fetch & event::W3_FETCH_ADDR;
            }
            event::F_WALK_EABT
            | event::F_TRANSLATION
            | event::F_ADDR_SIZE
            | event::F_ACCESS
            | event::F_PERMISSION => {
                if self.rnw {
                    w[1] |= event::W1_RNW;
                }
                w[1] |= (self.class & 3) << event::W1_CLASS_SHIFT;
                w[2] = self.addr;
                w[3] = self.fetch & event::W3_FETCH_ADDR;
            }
            _ => {}
        }
        w
    }
}

/// Outcome of a translation before events are recorded.
enum Step {
    Done(Translation),
    Abort,
    Fault(FaultInfo),
}

struct Inner {
    mem: Arc<PhysMem>,
    cfg: Config,
    cr: [u32; 3],
    cr0ack: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_base_cfg: u32,
    /// QEMU's sticky "two-level stream table" flag and its SPLIT.
    two_level: bool,
    sid_split: u32,
    cmdq: Queue,
    eventq: Queue,
    /// The PRI queue (only with [`Config::with_pri`]).
    priq: Queue,
    /// PRI responses delivered to devices, in order.
    pri_responses: Vec<PriResponse>,
    /// Registers stored but without behaviour (IRQ configuration).
    plain: HashMap<usize, u32>,
    configs: HashMap<u32, StreamEntry>,
    tlb: HashMap<TlbKey, TlbEntry>,
    stats: Stats,
}

// ---------------------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------------------

/// An SMMUv3. Clones share the device: one clone is the driver's [`RegisterIo`], another
/// the simulated devices' DMA path.
#[derive(Clone)]
pub struct Smmuv3 {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Smmuv3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Smmuv3")
            .field("cr0", &s.cr[0])
            .field("tlb_entries", &s.tlb.len())
            .field("cached_streams", &s.configs.len())
            .finish()
    }
}

impl Smmuv3 {
    /// An SMMU as QEMU 7.2 emulates it, in front of `mem`, in its reset state.
    pub fn new(mem: Arc<PhysMem>) -> Self {
        Self::with_config(mem, Config::QEMU_7_2)
    }

    /// An SMMU with the given identification and checks, in its reset state.
    pub fn with_config(mem: Arc<PhysMem>, cfg: Config) -> Self {
        let mut inner = Inner {
            mem,
            cfg,
            cr: [0; 3],
            cr0ack: 0,
            irq_ctrl: 0,
            gerror: 0,
            gerrorn: 0,
            strtab_base: 0,
            strtab_base_cfg: 0,
            two_level: false,
            sid_split: 0,
            cmdq: Queue::default(),
            eventq: Queue::default(),
            priq: Queue::default(),
            pri_responses: Vec::new(),
            plain: HashMap::new(),
            configs: HashMap::new(),
            tlb: HashMap::new(),
            stats: Stats::default(),
        };
        // Reset values of the queue bases: LOG2SIZE at the maximum (as QEMU).
        let (cq, eq) = (inner.cfg.cmdq_log2(), inner.cfg.eventq_log2());
        inner.cmdq.set_base(u64::from(cq), cq);
        inner.eventq.set_base(u64::from(eq), eq);
        let pq = inner.cfg.priq_log2();
        inner.priq.set_base(u64::from(pq), pq);
        Smmuv3 {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held (a failed test assertion elsewhere) leaves
        // consistent state behind: every update is a plain field write.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The RAM the model reads tables from and DMA goes to.
    pub fn mem(&self) -> Arc<PhysMem> {
        self.lock().mem.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// Entries in the TLB.
    pub fn tlb_entries(&self) -> usize {
        self.lock().tlb.len()
    }

    /// Streams whose configuration is cached.
    pub fn cached_streams(&self) -> usize {
        self.lock().configs.len()
    }

    /// A page request from a device (PCIe PRI): written into the PRI queue as a 16-byte
    /// record (spec chapter 8), with PRIQ_PROD advanced. Returns whether the SMMU took it:
    /// not without PRI ([`Config::with_pri`]) or while CR0.PRIQEN = 0. A request that
    /// does not fit in a full queue is dropped, PRIQ_PROD.OVFLG toggles (spec §7.4) and,
    /// if it was the last of its group, the model answers the group itself with Success
    /// (the device then retries its access); one that cannot be written raises
    /// GERROR.PRIQ_ABT_ERR. The model does not look the StreamID up: routing it is
    /// software's job.
    pub fn page_request(&self, r: PriRequest) -> bool {
        self.lock().page_request(r)
    }

    /// PRI responses delivered to devices so far, in order.
    pub fn pri_responses(&self) -> Vec<PriResponse> {
        self.lock().pri_responses.clone()
    }

    /// Translates one access of stream `sid` (with SubstreamID `ssid`, if the transaction
    /// carries one) at `iova`, recording an event for a fault as the hardware does.
    pub fn translate(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Translation, DmaError> {
        self.lock().translate(sid, ssid, iova, access)
    }

    /// DMA read of `buf.len()` bytes at `iova` by stream `sid`: translated page by page
    /// (each page or block once), copied from RAM. Stops at the first access that
    /// faults (its event recorded), leaving the rest of `buf` as it was.
    pub fn dma_read(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<(), DmaError> {
        let mut s = self.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let a = iova.wrapping_add(done as u64);
            let t = s.translate(sid, ssid, a, Access::Read)?;
            let n = (buf.len() - done).min(usize::try_from(t.len).unwrap_or(usize::MAX));
            s.mem
                .read(t.pa, &mut buf[done..done + n])
                .map_err(DmaError::Bus)?;
            done += n;
        }
        Ok(())
    }

    /// DMA write of `data` at `iova` by stream `sid`, as [`dma_read`](Self::dma_read).
    pub fn dma_write(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<(), DmaError> {
        let mut s = self.lock();
        let mut done = 0usize;
        while done < data.len() {
            let a = iova.wrapping_add(done as u64);
            let t = s.translate(sid, ssid, a, Access::Write)?;
            let n = (data.len() - done).min(usize::try_from(t.len).unwrap_or(usize::MAX));
            s.mem
                .write(t.pa, &data[done..done + n])
                .map_err(DmaError::Bus)?;
            done += n;
        }
        Ok(())
    }
}

impl RegisterIo for Smmuv3 {
    fn read32(&mut self, offset: usize) -> u32 {
        self.lock().read32(offset)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.lock().write32(offset, value)
    }

    fn read64(&mut self, offset: usize) -> u64 {
        self.lock().read64(offset)
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.lock().write64(offset, value)
    }
}

// ---------------------------------------------------------------------------------------
// Registers.
// ---------------------------------------------------------------------------------------

impl Inner {
    fn read32(&mut self, offset: usize) -> u32 {
        // QEMU: register pages 0 and 1 are exact aliases.
        let o = offset & !regs::PAGE1;
        match o {
            0x00..=0x14 if o.is_multiple_of(4) => self.cfg.idr[o / 4],
            regs::IIDR => self.cfg.iidr,
            regs::AIDR => self.cfg.aidr,
            regs::CR0 => self.cr[0],
            regs::CR0ACK => self.cr0ack,
            regs::CR1 => self.cr[1],
            regs::CR2 => self.cr[2],
            // STATUSR (no dormancy), GBPA (not implemented in QEMU 7.2): read as zero.
            regs::STATUSR | regs::GBPA => 0,
            regs::IRQ_CTRL | regs::IRQ_CTRLACK => self.irq_ctrl,
            regs::GERROR => self.gerror,
            regs::GERRORN => self.gerrorn,
            regs::STRTAB_BASE => self.strtab_base as u32,
            o if o == regs::STRTAB_BASE + 4 => (self.strtab_base >> 32) as u32,
            regs::STRTAB_BASE_CFG => self.strtab_base_cfg,
            regs::CMDQ_BASE => self.cmdq.base as u32,
            o if o == regs::CMDQ_BASE + 4 => (self.cmdq.base >> 32) as u32,
            regs::CMDQ_PROD => self.cmdq.prod,
            regs::CMDQ_CONS => self.cmdq.cons,
            regs::EVENTQ_BASE => self.eventq.base as u32,
            o if o == regs::EVENTQ_BASE + 4 => (self.eventq.base >> 32) as u32,
            o if o == regs::EVENTQ_PROD & !regs::PAGE1 => self.eventq.prod,
            o if o == regs::EVENTQ_CONS & !regs::PAGE1 => self.eventq.cons,
            regs::PRIQ_BASE if self.cfg.pri() => self.priq.base as u32,
            o if o == regs::PRIQ_BASE + 4 && self.cfg.pri() => (self.priq.base >> 32) as u32,
            o if o == regs::PRIQ_PROD & !regs::PAGE1 && self.cfg.pri() => self.priq.prod,
            o if o == regs::PRIQ_CONS & !regs::PAGE1 && self.cfg.pri() => self.priq.cons,
            _ => self.plain.get(&o).copied().unwrap_or(0),
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let o = offset & !regs::PAGE1;
        match o {
            regs::CR0 => {
                self.cr[0] = value;
                self.cr0ack = value & !regs::CR0_RES0;
                // The command queue may just have been enabled.
                self.consume_commands();
            }
            regs::CR1 => self.cr[1] = value,
            regs::CR2 => self.cr[2] = value,
            regs::IRQ_CTRL => self.irq_ctrl = value,
            regs::GERRORN => {
                // Acknowledging CMDQ_ERR lets the queue run again.
                self.gerrorn = value;
                self.consume_commands();
            }
            regs::GERROR_IRQ_CFG1
            | regs::GERROR_IRQ_CFG2
            | regs::EVENTQ_IRQ_CFG1
            | regs::EVENTQ_IRQ_CFG2 => {
                self.plain.insert(o, value);
            }
            o if o == regs::GERROR_IRQ_CFG0
                || o == regs::GERROR_IRQ_CFG0 + 4
                || o == regs::EVENTQ_IRQ_CFG0
                || o == regs::EVENTQ_IRQ_CFG0 + 4 =>
            {
                self.plain.insert(o, value);
            }
            regs::STRTAB_BASE => {
                self.strtab_base = (self.strtab_base & !0xffff_ffff) | u64::from(value);
            }
            o if o == regs::STRTAB_BASE + 4 => {
                self.strtab_base = (self.strtab_base & 0xffff_ffff) | (u64::from(value) << 32);
            }
            regs::STRTAB_BASE_CFG => self.write_strtab_cfg(value),
            regs::CMDQ_BASE => {
                let b = (self.cmdq.base & !0xffff_ffff) | u64::from(value);
                self.cmdq.set_base(b, self.cfg.cmdq_log2());
            }
            o if o == regs::CMDQ_BASE + 4 => {
                let b = (self.cmdq.base & 0xffff_ffff) | (u64::from(value) << 32);
                self.cmdq.set_base(b, self.cfg.cmdq_log2());
            }
            regs::CMDQ_PROD => {
                self.cmdq.prod = value;
                self.consume_commands();
            }
            regs::CMDQ_CONS => self.cmdq.cons = value,
            regs::EVENTQ_BASE => {
                let b = (self.eventq.base & !0xffff_ffff) | u64::from(value);
                self.eventq.set_base(b, self.cfg.eventq_log2());
            }
            o if o == regs::EVENTQ_BASE + 4 => {
                let b = (self.eventq.base & 0xffff_ffff) | (u64::from(value) << 32);
                self.eventq.set_base(b, self.cfg.eventq_log2());
            }
            o if o == regs::EVENTQ_PROD & !regs::PAGE1 => self.eventq.prod = value,
            o if o == regs::EVENTQ_CONS & !regs::PAGE1 => self.eventq.cons = value,
            regs::PRIQ_BASE if self.cfg.pri() => {
                let b = (self.priq.base & !0xffff_ffff) | u64::from(value);
                self.priq.set_base(b, self.cfg.priq_log2());
            }
            o if o == regs::PRIQ_BASE + 4 && self.cfg.pri() => {
                let b = (self.priq.base & 0xffff_ffff) | (u64::from(value) << 32);
                self.priq.set_base(b, self.cfg.priq_log2());
            }
            o if o == regs::PRIQ_PROD & !regs::PAGE1 && self.cfg.pri() => self.priq.prod = value,
            o if o == regs::PRIQ_CONS & !regs::PAGE1 && self.cfg.pri() => self.priq.cons = value,
            regs::PRIQ_IRQ_CFG1 | regs::PRIQ_IRQ_CFG2 if self.cfg.pri() => {
                self.plain.insert(o, value);
            }
            o if (o == regs::PRIQ_IRQ_CFG0 || o == regs::PRIQ_IRQ_CFG0 + 4) && self.cfg.pri() => {
                self.plain.insert(o, value);
            }
            // Identification, ACK and status registers are read-only; GERROR is written
            // by the SMMU only; GBPA is not implemented in QEMU 7.2: writes ignored.
            _ => {}
        }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        let o = offset & !regs::PAGE1;
        match o {
            regs::STRTAB_BASE => self.strtab_base,
            regs::CMDQ_BASE => self.cmdq.base,
            regs::EVENTQ_BASE => self.eventq.base,
            regs::PRIQ_BASE if self.cfg.pri() => self.priq.base,
            regs::GERROR_IRQ_CFG0 | regs::EVENTQ_IRQ_CFG0 => {
                let lo = self.plain.get(&o).copied().unwrap_or(0);
                let hi = self.plain.get(&(o + 4)).copied().unwrap_or(0);
                u64::from(lo) | (u64::from(hi) << 32)
            }
            // QEMU: other 64-bit accesses read as zero.
            _ => 0,
        }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let o = offset & !regs::PAGE1;
        match o {
            regs::STRTAB_BASE => self.strtab_base = value,
            regs::CMDQ_BASE => self.cmdq.set_base(value, self.cfg.cmdq_log2()),
            regs::EVENTQ_BASE => self.eventq.set_base(value, self.cfg.eventq_log2()),
            regs::PRIQ_BASE if self.cfg.pri() => self.priq.set_base(value, self.cfg.priq_log2()),
            regs::GERROR_IRQ_CFG0 | regs::EVENTQ_IRQ_CFG0 => {
                self.plain.insert(o, value as u32);
                self.plain.insert(o + 4, (value >> 32) as u32);
            }
            // QEMU: other 64-bit accesses are ignored.
            _ => {}
        }
    }

    fn write_strtab_cfg(&mut self, value: u32) {
        self.strtab_base_cfg = value;
        if (value >> regs::STRTAB_CFG_FMT_SHIFT) & 3 == 1 {
            // QEMU sets its two-level flag here and never clears it.
            self.two_level = true;
            self.sid_split = (value >> regs::STRTAB_CFG_SPLIT_SHIFT) & 0x1f;
        }
    }

    /// Toggles the GERROR bits of `mask` that are not already active (an active error
    /// stays active until acknowledged).
    fn raise_gerror(&mut self, mask: u32) {
        let active = self.gerror ^ self.gerrorn;
        self.gerror ^= !active & mask;
    }

    fn smmu_enabled(&self) -> bool {
        self.cr[0] & regs::CR0_SMMUEN != 0
    }

    fn read_u64(&self, pa: u64) -> Result<u64, OutOfRange> {
        if !pa.is_multiple_of(8) {
            return Err(OutOfRange { pa, len: 8 });
        }
        self.mem.read_u64(pa)
    }

    // -----------------------------------------------------------------------------------
    // Command queue (spec §3.5, chapter 4, §7.1).
    // -----------------------------------------------------------------------------------

    fn consume_commands(&mut self) {
        if self.cr[0] & regs::CR0_CMDQEN == 0 {
            return;
        }
        // One lap of the ring at most per PROD write, plus margin: a bound even when
        // software writes nonsense into PROD.
        let mut budget = 2u64 << self.cmdq.log2;
        while !self.cmdq.empty() && budget > 0 {
            budget -= 1;
            if (self.gerror ^ self.gerrorn) & regs::GERROR_CMDQ_ERR != 0 {
                return;
            }
            let at = self.cmdq.entry(self.cmdq.cons, 16);
            let w = match (self.read_u64(at), self.read_u64(at.wrapping_add(8))) {
                (Ok(a), Ok(b)) => [a, b],
                _ => {
                    self.command_error(cerror::ABT);
                    return;
                }
            };
            self.stats.commands += 1;
            if let Err(code) = self.execute(w) {
                self.command_error(code);
                return;
            }
            self.cmdq.cons = self.cmdq.incr(self.cmdq.cons);
        }
    }

    fn command_error(&mut self, code: u32) {
        self.cmdq.cons = (self.cmdq.cons & !regs::CMDQ_CONS_ERR)
            | ((code << regs::CMDQ_CONS_ERR_SHIFT) & regs::CMDQ_CONS_ERR);
        self.raise_gerror(regs::GERROR_CMDQ_ERR);
    }

    /// Runs one command; `Err` carries the CMDQ_CONS.ERR code.
    fn execute(&mut self, w: [u64; 2]) -> Result<(), u32> {
        let opcode = bits(w[0], 7, 0) as u8;
        let sid = bits(w[0], 63, 32) as u32;
        // SSec (word 0 bit 10): a Non-secure command queue cannot name Secure streams.
        let ssec = w[0] & (1 << 10) != 0;
        match opcode {
            // Without MSIs or SEV the completion of a CMD_SYNC is its consumption.
            op::CMD_SYNC | op::PREFETCH_CONFIG | op::PREFETCH_ADDR => Ok(()),
            op::CFGI_STE | op::CFGI_CD | op::CFGI_CD_ALL => {
                if ssec {
                    return Err(cerror::ILL);
                }
                self.configs.remove(&sid);
                Ok(())
            }
            op::CFGI_STE_RANGE => {
                if ssec {
                    return Err(cerror::ILL);
                }
                let range = bits(w[1], 4, 0) as u32;
                let mask = low_mask(range + 1) as u32;
                let start = sid & !mask;
                self.configs
                    .retain(|&s, _| !(s >= start && s - start <= mask));
                Ok(())
            }
            op::TLBI_NH_ALL | op::TLBI_NSNH_ALL => {
                self.tlb.clear();
                Ok(())
            }
            op::TLBI_NH_ASID => {
                let asid = bits(w[0], 63, 48) as u16;
                self.tlb.retain(|k, _| k.asid != asid);
                Ok(())
            }
            op::TLBI_NH_VA | op::TLBI_NH_VAA => {
                let asid = (opcode == op::TLBI_NH_VA).then(|| bits(w[0], 63, 48) as u16);
                self.tlbi_range(asid, w);
                Ok(())
            }
            op::PRI_RESP if self.cfg.pri() => {
                // SSV (word 0 bit 11), SubstreamID [31:12]; PRGIndex [8:0] and Resp
                // [13:12] of word 1 (spec §4.6); Resp = 0b11 is reserved.
                let resp = bits(w[1], 13, 12) as u8;
                if ssec || resp == 3 {
                    return Err(cerror::ILL);
                }
                self.pri_responses.push(PriResponse {
                    sid,
                    ssid: (w[0] & (1 << 11) != 0).then(|| bits(w[0], 31, 12) as u32),
                    prg_index: bits(w[1], 8, 0) as u16,
                    resp,
                    from_hardware: false,
                });
                Ok(())
            }
            op::TLBI_EL3_ALL
            | op::TLBI_EL3_VA
            | op::TLBI_EL2_ALL
            | op::TLBI_EL2_ASID
            | op::TLBI_EL2_VA
            | op::TLBI_EL2_VAA
            | op::TLBI_S12_VMALL
            | op::TLBI_S2_IPA
            | op::ATC_INV
            | op::PRI_RESP
            | op::RESUME
            | op::STALL_TERM => Ok(()),
            _ => Err(cerror::ILL),
        }
    }

    /// CMD_TLBI_NH_VA / CMD_TLBI_NH_VAA (spec §4.4.2, §4.4.3): one address, or with
    /// TG != 0 a range of `(NUM + 1) << SCALE` granules (IDR3.RIL), split into aligned
    /// power-of-two blocks as QEMU does.
    fn tlbi_range(&mut self, asid: Option<u16>, w: [u64; 2]) {
        let addr = w[1] & !0xfff;
        let tg = bits(w[1], 11, 10) as u32;
        let ttl = bits(w[1], 9, 8) as u32;
        if tg == 0 {
            self.tlbi_iova(asid, addr, 0, 1, ttl);
            return;
        }
        let num = bits(w[0], 16, 12);
        let scale = bits(w[0], 24, 20) as u32;
        let granule = tg * 2 + 10;
        let pages = (num + 1) << scale;
        let len = pages << granule;
        let end = addr.saturating_add(len - 1);
        let mut a = addr;
        // Each block at least doubles the alignment of the next start or halves what
        // is left, so 130 blocks cover any range.
        for _ in 0..130 {
            let mask = aligned_pow2_mask(a, end);
            self.tlbi_iova(asid, a, tg, (mask >> granule).wrapping_add(1), ttl);
            match a.checked_add(mask).and_then(|x| x.checked_add(1)) {
                Some(next) if next <= end => a = next,
                _ => break,
            }
        }
    }

    /// Drops the TLB entries of `asid` (all ASIDs for `None`) that contain `iova` or lie
    /// inside `[iova, iova + pages granules)`.
    fn tlbi_iova(&mut self, asid: Option<u16>, iova: u64, tg: u32, pages: u64, ttl: u32) {
        let granule = if tg != 0 { tg * 2 + 10 } else { 12 };
        if let (Some(a), true, true) = (asid, ttl != 0, pages == 1) {
            // QEMU first tries the one entry the level hint names.
            let key = TlbKey {
                asid: a,
                base: iova,
                granule,
                level: ttl,
            };
            if tg != 0 && self.tlb.remove(&key).is_some() {
                return;
            }
        }
        let mask = pages
            .checked_shl(granule)
            .map_or(u64::MAX, |b| b.wrapping_sub(1));
        self.tlb.retain(|k, e| {
            if asid.is_some_and(|a| a != k.asid) {
                return true;
            }
            let hit = (iova & !e.mask) == k.base || (k.base & !mask) == iova;
            !hit
        });
    }

    // -----------------------------------------------------------------------------------
    // Event queue (spec §3.5, §7.3, §7.4).
    // -----------------------------------------------------------------------------------

    fn record(&mut self, f: &FaultInfo) -> bool {
        if !f.record || self.cr[0] & regs::CR0_EVENTQEN == 0 {
            return false;
        }
        let q = self.eventq;
        if q.full() {
            // QEMU 7.2: the record is lost and reported as an event queue write abort
            // (the specification toggles EVENTQ_PROD.OVFLG instead).
            self.stats.events_lost += 1;
            self.raise_gerror(regs::GERROR_EVENTQ_ABT_ERR);
            return false;
        }
        let at = q.entry(q.prod, 32);
        let words = f.record_words();
        let mut ok = at.is_multiple_of(8);
        for (i, w) in words.iter().enumerate() {
            ok = ok && self.mem.write_u64(at + 8 * i as u64, *w).is_ok();
        }
        if !ok {
            self.stats.events_lost += 1;
            self.raise_gerror(regs::GERROR_EVENTQ_ABT_ERR);
            return false;
        }
        self.eventq.prod = q.incr(q.prod);
        self.stats.events += 1;
        true
    }

    fn page_request(&mut self, r: PriRequest) -> bool {
        if !self.cfg.pri() || self.cr[0] & regs::CR0_PRIQEN == 0 {
            return false;
        }
        let q = self.priq;
        if q.full() {
            self.stats.page_requests_lost += 1;
            self.priq.prod ^= regs::Q_OVFLG;
            if r.last {
                self.pri_responses.push(PriResponse {
                    sid: r.sid,
                    ssid: r.ssid,
                    prg_index: r.prg_index,
                    resp: 2,
                    from_hardware: true,
                });
            }
            return true;
        }
        let flag = |b: bool, bit: u32| if b { 1u64 << bit } else { 0 };
        // PRI queue record: StreamID [31:0], SubstreamID [51:32], PnU 58, InD 59, R 60,
        // W 61, L 62, SSV 63; word 1: PRGIndex [8:0], Addr [63:12].
        let w0 = u64::from(r.sid)
            | r.ssid
                .map_or(0, |s| (u64::from(s) & low_mask(20)) << 32 | 1 << 63)
            | flag(r.privileged, 58)
            | flag(r.exec, 59)
            | flag(r.read, 60)
            | flag(r.write, 61)
            | flag(r.last, 62);
        let w1 = (r.addr & !low_mask(12)) | (u64::from(r.prg_index) & low_mask(9));
        let at = q.entry(q.prod, 16);
        let ok = at.is_multiple_of(8)
            && self.mem.write_u64(at, w0).is_ok()
            && self.mem.write_u64(at + 8, w1).is_ok();
        if !ok {
            self.stats.page_requests_lost += 1;
            self.raise_gerror(regs::GERROR_PRIQ_ABT_ERR);
            return true;
        }
        self.priq.prod = q.incr(q.prod);
        self.stats.page_requests += 1;
        true
    }

    // -----------------------------------------------------------------------------------
    // Translation.
    // -----------------------------------------------------------------------------------

    fn translate(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Translation, DmaError> {
        match self.translate_step(sid, ssid, iova, access) {
            Step::Done(t) => Ok(t),
            Step::Abort => Err(DmaError::Aborted),
            Step::Fault(f) => {
                let recorded = self.record(&f);
                Err(DmaError::Fault {
                    event: f.kind,
                    recorded,
                })
            }
        }
    }

    fn translate_step(&mut self, sid: u32, ssid: Option<u32>, iova: u64, access: Access) -> Step {
        let untranslated = Step::Done(Translation {
            pa: iova,
            len: 0x1000 - (iova & 0xfff),
            writable: true,
        });
        if !self.smmu_enabled() {
            return untranslated;
        }
        let (ste, cd) = match self.stream_config(sid, ssid) {
            Ok(c) => c,
            Err(f) => return Step::Fault(f),
        };
        let cd = match (ste, cd) {
            (SteConfig::Abort, _) => return Step::Abort,
            (SteConfig::Bypass, _) | (SteConfig::Stage1(_), None) => return untranslated,
            (SteConfig::Stage1(_), Some(cd)) => cd,
        };
        let write = access == Access::Write;
        let fault = |kind: u8| FaultInfo {
            kind,
            sid,
            ssid,
            addr: iova,
            rnw: !write,
            record: cd.record,
            ..FaultInfo::default()
        };
        let Some(tt) = select_tt(&cd, iova) else {
            return Step::Fault(fault(event::F_TRANSLATION));
        };
        if tt.disabled {
            return Step::Fault(fault(event::F_TRANSLATION));
        }
        if let Some(e) = self.tlb_lookup(&cd, &tt, iova) {
            self.stats.tlb_hits += 1;
            if write && !e.writable {
                return Step::Fault(fault(event::F_PERMISSION));
            }
            let off = iova & e.mask;
            return Step::Done(Translation {
                pa: e.pa.wrapping_add(off),
                len: e.mask - off + 1,
                writable: e.writable,
            });
        }
        self.stats.walks += 1;
        match self.walk(&cd, &tt, iova, write) {
            Ok((key, e)) => {
                if self.tlb.len() >= self.cfg.tlb_capacity {
                    self.tlb.clear();
                }
                self.tlb.insert(key, e);
                let off = iova & e.mask;
                Step::Done(Translation {
                    pa: e.pa.wrapping_add(off),
                    len: e.mask - off + 1,
                    writable: e.writable,
                })
            }
            Err((kind, fetch)) => {
                let mut f = fault(kind);
                if kind == event::F_WALK_EABT {
                    f.class = event::CLASS_TT;
                    f.fetch = fetch;
                    // QEMU records external aborts whatever CD.R says.
                    f.record = true;
                }
                Step::Fault(f)
            }
        }
    }

    fn tlb_lookup(&self, cd: &CdConfig, tt: &TtInfo, iova: u64) -> Option<TlbEntry> {
        let stride = tt.granule - 3;
        let inputsize = 64 - tt.tsz;
        let start = 4 - (inputsize - 4) / stride;
        (start..=3).find_map(|level| {
            let shift = level_shift(level, tt.granule);
            let key = TlbKey {
                asid: cd.asid,
                base: iova & !low_mask(shift),
                granule: tt.granule,
                level,
            };
            self.tlb.get(&key).copied()
        })
    }

    /// The stage-1 walk (Arm ARM D8; QEMU's `smmu_ptw_64`). `Err` is the event type and,
    /// for F_WALK_EABT, the descriptor address.
    fn walk(
        &self,
        cd: &CdConfig,
        tt: &TtInfo,
        iova: u64,
        write: bool,
    ) -> Result<(TlbKey, TlbEntry), (u8, u64)> {
        let g = tt.granule;
        let stride = g - 3;
        let inputsize = 64 - tt.tsz;
        let mut level = 4 - (inputsize - 4) / stride;
        let index_mask = low_mask(inputsize - stride * (4 - level));
        let mut base = bits(tt.ttb, 47, 0) & !index_mask;
        let oas_limit = low_mask(cd.oas);
        let addr_check = |a: u64| -> Result<(), (u8, u64)> {
            if self.cfg.address_size_faults && a & !oas_limit != 0 {
                Err((event::F_ADDR_SIZE, 0))
            } else {
                Ok(())
            }
        };
        addr_check(base)?;
        while level <= 3 {
            let shift = level_shift(level, g);
            let index = ((iova & low_mask(inputsize)) >> shift) & low_mask(stride);
            let pte_addr = base.wrapping_add(index * 8);
            let pte = self
                .read_u64(pte_addr)
                .map_err(|_| (event::F_WALK_EABT, pte_addr))?;
            let kind = pte & 3;
            if kind & 1 == 0 || (level == 3 && kind == 1) {
                // Invalid, or the reserved encoding at level 3.
                return Err((event::F_TRANSLATION, 0));
            }
            if level < 3 && kind == 3 {
                // Table descriptor: APTable[1] (bit 62) makes everything below read-only
                // unless hierarchical attributes are disabled (CD.HAD0/1).
                if write && pte & (1 << 62) != 0 && !tt.had {
                    return Err((event::F_PERMISSION, 0));
                }
                base = bits(pte, 47, g) << g;
                addr_check(base)?;
                level += 1;
                continue;
            }
            // Page (level 3) or block (levels 0..2) descriptor.
            let out = bits(pte, 47, shift) << shift;
            addr_check(out)?;
            if self.cfg.access_flag_faults && !cd.affd && pte & (1 << 10) == 0 {
                return Err((event::F_ACCESS, 0));
            }
            // AP[2] (bit 7): read-only.
            let read_only = pte & (1 << 7) != 0;
            if write && read_only {
                return Err((event::F_PERMISSION, 0));
            }
            let mask = low_mask(shift);
            return Ok((
                TlbKey {
                    asid: cd.asid,
                    base: iova & !mask,
                    granule: g,
                    level,
                },
                TlbEntry {
                    pa: out,
                    mask,
                    writable: !read_only,
                },
            ));
        }
        Err((event::F_TRANSLATION, 0))
    }

    // -----------------------------------------------------------------------------------
    // Configuration: stream table, STE, CD (spec §3.3, §5.1 - §5.4).
    // -----------------------------------------------------------------------------------

    /// The stream's STE and, for stage-1 translation of this transaction, its CD
    /// (`None` when stage 1 is bypassed for non-substream traffic, S1DSS = bypass).
    fn stream_config(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
    ) -> Result<(SteConfig, Option<CdConfig>), FaultInfo> {
        let cached = self.configs.get(&sid).map(|e| e.ste);
        let ste = match cached {
            Some(ste) => {
                self.stats.config_hits += 1;
                ste
            }
            None => {
                self.stats.config_fetches += 1;
                self.fetch_ste(sid, ssid)?
            }
        };
        // As QEMU, only a configuration that could be used is cached: a freshly
        // fetched STE is kept once the transaction's CD (if it needs one) decoded too.
        let keep = |this: &mut Self, cd: Option<(u32, CdConfig)>| {
            let e = this.configs.entry(sid).or_insert_with(|| StreamEntry {
                ste,
                cds: HashMap::new(),
            });
            if let Some((index, cd)) = cd {
                e.cds.insert(index, cd);
            }
        };
        let s1 = match ste {
            SteConfig::Stage1(s1) => s1,
            other => {
                keep(self, None);
                return Ok((other, None));
            }
        };
        // Which CD this transaction uses (spec §5.2 S1CDMax, S1DSS).
        let bad_ssid = |s| FaultInfo::config(event::C_BAD_SUBSTREAMID, sid, s);
        let index = match ssid {
            Some(s) if s1.cd_max == 0 || u64::from(s) >> s1.cd_max != 0 => {
                return Err(bad_ssid(ssid));
            }
            // With S1DSS = SSID0, CD 0 is reserved for non-substream traffic.
            Some(0) if s1.dss == 0b10 => return Err(bad_ssid(ssid)),
            Some(s) => s,
            None if s1.cd_max == 0 => 0,
            None => match s1.dss {
                0b00 => {
                    return Err(FaultInfo::config(event::F_STREAM_DISABLED, sid, None));
                }
                0b01 => {
                    keep(self, None);
                    return Ok((ste, None));
                }
                0b10 => 0,
                // Reserved: the STE is not usable.
                _ => return Err(FaultInfo::config(event::C_BAD_STE, sid, None)),
            },
        };
        if let Some(cd) = self.configs.get(&sid).and_then(|e| e.cds.get(&index)) {
            return Ok((ste, Some(*cd)));
        }
        let cd = self.fetch_cd(sid, ssid, &s1, index)?;
        keep(self, Some((index, cd)));
        Ok((ste, Some(cd)))
    }

    /// Finds and decodes the STE of `sid` (QEMU's `smmu_find_ste` and `decode_ste`).
    fn fetch_ste(&self, sid: u32, ssid: Option<u32>) -> Result<SteConfig, FaultInfo> {
        let cfg_fault = |kind| FaultInfo::config(kind, sid, ssid);
        let log2size = self.strtab_base_cfg & regs::STRTAB_CFG_LOG2SIZE;
        if u64::from(sid) >> log2size.min(self.cfg.sid_bits()) != 0 {
            return Err(cfg_fault(event::C_BAD_STREAMID));
        }
        let ste_addr = if self.two_level {
            let split = self.sid_split;
            let align = (log2size as i64 - i64::from(split) - 1 + 3).max(5) as u32;
            let base = self.strtab_base & regs::Q_BASE_ADDR & !low_mask(align);
            let l1 = u64::from(sid) >> split;
            let l2 = u64::from(sid) & low_mask(split);
            let l1_addr = base.wrapping_add(l1 * 8);
            let desc = self.read_u64(l1_addr).map_err(|_| FaultInfo {
                fetch: l1_addr,
                ..cfg_fault(event::F_STE_FETCH)
            })?;
            // L1STD (spec §5.1): Span [4:0], L2Ptr [51:6].
            let span = bits(desc, 4, 0) as u32;
            if span == 0 {
                return Err(cfg_fault(event::C_BAD_STREAMID));
            }
            if l2 > low_mask(span) {
                return Err(cfg_fault(event::C_BAD_STE));
            }
            (bits(desc, 51, 6) << 6).wrapping_add(l2 * 64)
        } else {
            let base = self.strtab_base & regs::Q_BASE_ADDR & !low_mask(log2size + 5);
            base.wrapping_add(u64::from(sid) * 64)
        };
        let mut ste = [0u64; 8];
        for (i, w) in ste.iter_mut().enumerate() {
            let a = ste_addr.wrapping_add(8 * i as u64);
            *w = self.read_u64(a).map_err(|_| FaultInfo {
                fetch: ste_addr,
                ..cfg_fault(event::F_STE_FETCH)
            })?;
        }
        self.decode_ste(&ste).ok_or(cfg_fault(event::C_BAD_STE))
    }

    /// STE (spec §5.2): V `[0]`, Config `[3:1]`, S1Fmt `[5:4]`, S1ContextPtr `[51:6]`,
    /// S1CDMax `[63:59]`; S1DSS `[65:64]`, S1STALLD `[91]`. `None`: C_BAD_STE.
    fn decode_ste(&self, w: &[u64; 8]) -> Option<SteConfig> {
        if w[0] & 1 == 0 {
            return None;
        }
        let config = bits(w[0], 3, 1);
        if config & 0b100 == 0 {
            return Some(SteConfig::Abort);
        }
        if config == 0b100 {
            return Some(SteConfig::Bypass);
        }
        if config & 0b010 != 0 {
            // Stage 2 and nested: IDR0.S2P = 0.
            return None;
        }
        let cd_max = bits(w[0], 63, 59) as u32;
        let fmt = bits(w[0], 5, 4);
        let ssid_bits = self.cfg.ssid_bits();
        if cd_max != 0 {
            if ssid_bits == 0 || cd_max > ssid_bits {
                return None;
            }
            if fmt == 3 || (fmt != 0 && !self.cfg.cd2l()) {
                return None;
            }
        }
        if w[1] & (1 << 27) != 0 {
            // S1STALLD with a stall model that cannot stall (IDR0.STALL_MODEL = 0b01).
            return None;
        }
        Some(SteConfig::Stage1(S1Ste {
            ctx_ptr: bits(w[0], 51, 6) << 6,
            cd_max,
            fmt,
            dss: bits(w[1], 1, 0),
        }))
    }

    /// Fetches and decodes CD `index` of a stage-1 STE.
    fn fetch_cd(
        &self,
        sid: u32,
        ssid: Option<u32>,
        s1: &S1Ste,
        index: u32,
    ) -> Result<CdConfig, FaultInfo> {
        let fetch_fault = |addr| FaultInfo {
            fetch: addr,
            ..FaultInfo::config(event::F_CD_FETCH, sid, ssid)
        };
        let cd_addr = if s1.cd_max == 0 || s1.fmt == 0 {
            s1.ctx_ptr.wrapping_add(u64::from(index) * 64)
        } else {
            // Two-level: L1CD (spec §5.3) V [0], L2Ptr [51:12]; leaves of 64 CDs (4KB,
            // S1Fmt = 1) or 1024 CDs (64KB, S1Fmt = 2).
            let leaf_bits = if s1.fmt == 1 { 6 } else { 10 };
            let l1_addr = s1.ctx_ptr.wrapping_add(u64::from(index >> leaf_bits) * 8);
            let desc = self.read_u64(l1_addr).map_err(|_| fetch_fault(l1_addr))?;
            if desc & 1 == 0 {
                return Err(FaultInfo::config(event::C_BAD_SUBSTREAMID, sid, ssid));
            }
            (bits(desc, 51, 12) << 12).wrapping_add((u64::from(index) & low_mask(leaf_bits)) * 64)
        };
        let mut cd = [0u64; 8];
        for (i, w) in cd.iter_mut().enumerate() {
            *w = self
                .read_u64(cd_addr.wrapping_add(8 * i as u64))
                .map_err(|_| fetch_fault(cd_addr))?;
        }
        self.decode_cd(&cd)
            .ok_or(FaultInfo::config(event::C_BAD_CD, sid, ssid))
    }

    /// CD (spec §5.4), QEMU's `decode_cd`: V and AA64 must be set, A set (TERM_MODEL =
    /// 1), S clear (no stall), HA and HD clear (no HTTU); each enabled table needs T*SZ
    /// in 16..=39, a 4KB, 16KB or 64KB granule, little-endian tables and a TTB inside
    /// the output size. `None`: C_BAD_CD.
    fn decode_cd(&self, w: &[u64; 8]) -> Option<CdConfig> {
        let w0 = w[0];
        let valid = w0 & (1 << 31) != 0;
        let aa64 = w0 & (1 << 41) != 0;
        let a = w0 & (1 << 46) != 0;
        let s = w0 & (1 << 44) != 0;
        let ha_hd = w0 & (3 << 42) != 0;
        if !valid || !aa64 || !a || s || ha_hd {
            return None;
        }
        let oas = oas_bits(bits(w0, 34, 32) as u32).min(self.cfg.oas_bits());
        let endi = w0 & (1 << 15) != 0;
        let mut tt = [TtInfo::default(); 2];
        for (i, t) in tt.iter_mut().enumerate() {
            let sh = 16 * i as u32;
            t.disabled = w0 & (1 << (14 + sh)) != 0;
            if t.disabled {
                continue;
            }
            let tsz = bits(w0, 5 + sh, sh) as u32;
            if !(16..=39).contains(&tsz) {
                return None;
            }
            let tg = bits(w0, 7 + sh, 6 + sh);
            let granule = match (i, tg) {
                (0, 0) | (1, 2) => 12,
                (0, 2) | (1, 1) => 14,
                (0, 1) | (1, 3) => 16,
                _ => 0,
            };
            if granule == 0 || endi {
                return None;
            }
            // TTB0 in word 1, TTB1 in word 2: [51:4]; HAD0/HAD1 bit 1.
            let ttb = bits(w[1 + i], 51, 4) << 4;
            if ttb & !low_mask(oas) != 0 {
                return None;
            }
            *t = TtInfo {
                disabled: false,
                tsz,
                granule,
                ttb,
                had: w[1 + i] & 2 != 0,
            };
        }
        Some(CdConfig {
            asid: bits(w0, 63, 48) as u16,
            tt,
            tbi: bits(w0, 39, 38),
            oas,
            record: w0 & (1 << 45) != 0,
            affd: w0 & (1 << 35) != 0,
        })
    }
}

/// Bit position of the address bits a level-`level` entry maps with granule `g`.
fn level_shift(level: u32, g: u32) -> u32 {
    g + (3 - level) * (g - 3)
}

/// Which of the CD's tables translates `iova` (QEMU's `select_tt`): TTB0 when the bits
/// above its input size are zero, TTB1 when they are ones (the top byte excluded with
/// TBI), else the one with T*SZ = 0, else none (a translation fault).
fn select_tt(cd: &CdConfig, iova: u64) -> Option<TtInfo> {
    let tbi = if iova & (1 << 55) != 0 {
        cd.tbi & 2 != 0
    } else {
        cd.tbi & 1 != 0
    };
    let top = if tbi { 8 } else { 0 };
    let high = |tsz: u32| -> u64 {
        // Bits [63 - top : 64 - tsz] of the address.
        let width = tsz - top.min(tsz);
        if width == 0 {
            0
        } else {
            (iova >> (64 - tsz)) & low_mask(width)
        }
    };
    let (t0, t1) = (&cd.tt[0], &cd.tt[1]);
    if t0.tsz != 0 && high(t0.tsz) == 0 {
        return Some(*t0);
    }
    if t1.tsz != 0 {
        let width = t1.tsz - top.min(t1.tsz);
        if high(t1.tsz) == low_mask(width) {
            return Some(*t1);
        }
    }
    if t0.tsz == 0 {
        return Some(*t0);
    }
    if t1.tsz == 0 {
        return Some(*t1);
    }
    None
}

/// The largest `2^n - 1` such that `start` is aligned to `2^n` and `start + 2^n - 1 <=
/// end` (QEMU's `dma_aligned_pow2_mask` for 64-bit addresses).
fn aligned_pow2_mask(start: u64, end: u64) -> u64 {
    let size_mask = end.wrapping_sub(start);
    let align_mask = if start == 0 {
        u64::MAX
    } else {
        (start & start.wrapping_neg()) - 1
    };
    if align_mask <= size_mask {
        align_mask
    } else if size_mask == u64::MAX {
        u64::MAX
    } else {
        let n = size_mask + 1;
        (1u64 << (63 - n.leading_zeros())) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_sit_at_the_spec_bit_positions() {
        let f = FaultInfo {
            kind: event::F_TRANSLATION,
            sid: 0x1234_5678,
            ssid: Some(0xabcde),
            addr: 0xdead_beef_0000_1004,
            rnw: true,
            class: event::CLASS_TT,
            fetch: 0x000f_0000_0000_0fff,
            record: true,
        };
        let w = f.record_words();
        // Type [7:0], SSV [11], SubstreamID [31:12], StreamID [63:32].
        assert_eq!(w[0], 0x1234_5678_abcd_e810);
        // RnW [35], CLASS [41:40].
        assert_eq!(w[1], (1 << 35) | (1 << 40));
        // InputAddr, FetchAddr [51:3].
        assert_eq!((w[2], w[3]), (0xdead_beef_0000_1004, 0x000f_0000_0000_0ff8));
        // Configuration errors carry the stream only; fetch aborts their FetchAddr.
        let bad = FaultInfo::config(event::C_BAD_STE, 8, None);
        assert_eq!(bad.record_words(), [0x8_0000_0004, 0, 0, 0]);
        let fetch = FaultInfo {
            fetch: 0x4000_0048,
            ..FaultInfo::config(event::F_STE_FETCH, 2, None)
        };
        assert_eq!(fetch.record_words(), [0x2_0000_0003, 0, 0, 0x4000_0048]);
        // A read-write write fault: RnW = 0; CLASS 0 (as QEMU 7.2 writes it).
        let w = FaultInfo {
            kind: event::F_PERMISSION,
            addr: 0x80,
            ..FaultInfo::config(event::F_PERMISSION, 1, None)
        }
        .record_words();
        assert_eq!(w, [0x1_0000_0013, 0, 0x80, 0]);
    }

    #[test]
    fn queue_indices_wrap_and_keep_other_bits() {
        let mut q = Queue::default();
        q.set_base(0x4000_0000 | 2, 19);
        assert_eq!(q.log2, 2);
        assert!(q.empty() && !q.full());
        q.prod = 0b100;
        assert!(q.full() && !q.empty());
        assert_eq!(q.incr(0b011), 0b100);
        assert_eq!(q.incr(0b111), 0b000);
        // ERR in CMDQ_CONS and OVFLG in EVENTQ_PROD survive an increment.
        assert_eq!(q.incr(0x8100_0003), 0x8100_0004);
        assert_eq!(q.entry(0x8100_0005, 16), 0x4000_0010);
        q.set_base(0x4000_0000 | 31, 19);
        assert_eq!(q.log2, 19, "clamped to IDR1.CMDQS / EVENTQS");
    }

    #[test]
    fn range_splits_like_qemu() {
        assert_eq!(aligned_pow2_mask(0x2000, 0x5fff), 0x1fff);
        assert_eq!(aligned_pow2_mask(0x4000, 0x5fff), 0x1fff);
        assert_eq!(aligned_pow2_mask(0x1000, 0x1fff), 0xfff);
        assert_eq!(aligned_pow2_mask(0, u64::MAX), u64::MAX);
        assert_eq!(aligned_pow2_mask(0, 0x2fff), 0x1fff);
        assert_eq!(level_shift(3, 12), 12);
        assert_eq!(level_shift(1, 12), 30);
        assert_eq!(level_shift(2, 16), 29);
    }

    fn cd(tsz0: u32, tsz1: u32, tbi: u64) -> CdConfig {
        let tt = |tsz| TtInfo {
            disabled: tsz == 0,
            tsz,
            granule: 12,
            ttb: 0,
            had: false,
        };
        CdConfig {
            asid: 1,
            tt: [tt(tsz0), tt(tsz1)],
            tbi,
            oas: 44,
            record: true,
            affd: false,
        }
    }

    #[test]
    fn table_selection_follows_t0sz_t1sz_and_tbi() {
        // TTB0 only (EPD1): inside its 39 bits; above it, TTB1 (disabled) is picked.
        let c = cd(25, 0, 0);
        assert_eq!(select_tt(&c, 0x7f_ffff_ffff).map(|t| t.tsz), Some(25));
        let t = select_tt(&c, 0x80_0000_0000).unwrap();
        assert!(t.disabled);
        // Both: the gap between them translates nothing.
        let c = cd(25, 25, 0);
        assert_eq!(
            select_tt(&c, 0xffff_ff80_0000_0000).map(|t| t.tsz),
            Some(25)
        );
        assert!(select_tt(&c, 0x0000_8000_0000_0000).is_none());
        // TBI0 ignores the top byte for TTB0.
        assert!(select_tt(&cd(25, 25, 0), 0x5a00_0000_1000_0000).is_none());
        assert!(select_tt(&cd(25, 25, 1), 0x5a00_0000_1000_0000).is_some());
    }

    #[test]
    fn ste_and_cd_fields_decode_at_the_spec_bit_positions() {
        let mem = PhysMem::new(0x4000_0000, 0x1000);
        let m = Smmuv3::with_config(mem, Config::QEMU_7_2.with_substreams(8, true));
        let s = m.lock();
        // V [0], Config [3:1] = S1, S1Fmt [5:4], S1ContextPtr [51:6], S1CDMax [63:59];
        // S1DSS [65:64].
        let ste = [
            1 | (0b101 << 1) | (2 << 4) | 0x1234_5678_9ac0 | (8 << 59),
            0b10,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        assert_eq!(
            s.decode_ste(&ste),
            Some(SteConfig::Stage1(S1Ste {
                ctx_ptr: 0x1234_5678_9ac0,
                cd_max: 8,
                fmt: 2,
                dss: 0b10,
            }))
        );
        assert_eq!(
            s.decode_ste(&[1 | (0b100 << 1), 0, 0, 0, 0, 0, 0, 0]),
            Some(SteConfig::Bypass)
        );
        assert_eq!(
            s.decode_ste(&[1 | (0b011 << 1), 0, 0, 0, 0, 0, 0, 0]),
            Some(SteConfig::Abort)
        );
        assert_eq!(
            s.decode_ste(&[1 | (0b110 << 1), 0, 0, 0, 0, 0, 0, 0]),
            None,
            "stage 2"
        );
        assert_eq!(
            s.decode_ste(&[0b101 << 1, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "V = 0"
        );
        let mut stalld = ste;
        stalld[1] |= 1 << 27;
        assert_eq!(s.decode_ste(&stalld), None, "S1STALLD");
        let mut big = ste;
        big[0] |= 1 << 63; // S1CDMax 24 > SSIDSIZE 8
        assert_eq!(s.decode_ste(&big), None);
        // CD: T0SZ [5:0], TG0 [7:6], EPD1 [30], V [31], IPS [34:32], AA64 [41], R [45],
        // A [46], ASID [63:48]; TTB0 [51:4] of word 1, HAD0 bit 1.
        let w0 = 25
            | (1 << 6)
            | (1 << 30)
            | (1 << 31)
            | (2 << 32)
            | (1 << 41)
            | (1 << 45)
            | (1 << 46)
            | (0xbeef << 48);
        let c = s
            .decode_cd(&[w0, 0x00ab_cdef_0000 | 2, 0, 0, 0, 0, 0, 0])
            .unwrap();
        assert_eq!(c.asid, 0xbeef);
        assert_eq!(c.oas, 40);
        assert!(c.record && !c.affd);
        assert_eq!(
            c.tt[0],
            TtInfo {
                disabled: false,
                tsz: 25,
                granule: 16,
                ttb: 0x00ab_cdef_0000,
                had: true
            }
        );
        assert!(c.tt[1].disabled);
        // QEMU's conditions for C_BAD_CD.
        for bad in [
            w0 & !(1 << 31),         // V
            w0 & !(1 << 41),         // AA64
            w0 & !(1 << 46),         // A
            w0 | (1 << 44),          // S
            w0 | (1 << 43),          // HA
            w0 | (1 << 15),          // ENDI
            (w0 & !0x3f) | 15,       // T0SZ < 16
            (w0 & !0xc0) | (3 << 6), // TG0 reserved
        ] {
            assert!(
                s.decode_cd(&[bad, 0x1000, 0, 0, 0, 0, 0, 0]).is_none(),
                "{bad:#x}"
            );
        }
        // TTB0 beyond the output size.
        assert!(s.decode_cd(&[w0, 1 << 41, 0, 0, 0, 0, 0, 0]).is_none());
    }
}
