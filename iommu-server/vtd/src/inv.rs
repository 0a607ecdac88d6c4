//! Invalidation (VT-d spec §6.5): descriptor encodings for queued invalidation (§6.5.2),
//! register-based invalidation through CCMD_REG and the IOTLB registers (§6.5.1), the
//! page-selective invalidation planner and the teardown order for entries.
//!
//! Descriptors are 128-bit in legacy mode and 256-bit in scalable mode (IQA.DW = 1); the
//! upper 128 bits of every descriptor type used here are zero, so [`Descriptor`] holds
//! four words and the queue writes two or four of them.

use alloc::vec::Vec;

use crate::error::{Error, Result, TimeoutKind};
use crate::regs::{self, field_get, field_prep, genmask, poll_until, PollTimeout, RegisterIo};

/// Descriptor word 0 `[3:0]`: type (low bits; `[11:9]` hold the high bits, zero for every
/// type defined up to 9).
pub const DESC_TYPE: u64 = genmask(3, 0);
/// Type 1: context-cache invalidate (§6.5.2.1).
pub const TYPE_CONTEXT_CACHE: u64 = 1;
/// Type 2: IOTLB invalidate (§6.5.2.3).
pub const TYPE_IOTLB: u64 = 2;
/// Type 3: device-TLB invalidate (§6.5.2.5).
pub const TYPE_DEVICE_TLB: u64 = 3;
/// Type 4: interrupt entry cache invalidate (§6.5.2.7).
pub const TYPE_IEC: u64 = 4;
/// Type 5: invalidation wait (§6.5.2.8).
pub const TYPE_WAIT: u64 = 5;
/// Type 6: PASID-based IOTLB invalidate (§6.5.2.4).
pub const TYPE_PASID_IOTLB: u64 = 6;
/// Type 7: PASID-cache invalidate (§6.5.2.2).
pub const TYPE_PASID_CACHE: u64 = 7;
/// Type 8: PASID-based device-TLB invalidate (§6.5.2.6).
pub const TYPE_PASID_DEVICE_TLB: u64 = 8;
/// Type 9: page group response (§7.7.1).
pub const TYPE_PAGE_GROUP_RESPONSE: u64 = 9;

/// Word 0 `[5:4]`: G, granularity (context-cache, IOTLB, PASID-based IOTLB, PASID-cache).
pub const DESC_G: u64 = genmask(5, 4);
/// Word 0 `[31:16]`: DID.
pub const DESC_DID: u64 = genmask(31, 16);
/// Context-cache word 0 `[47:32]`: SID.
pub const CC_SID: u64 = genmask(47, 32);
/// Context-cache word 0 `[49:48]`: FM, function mask.
pub const CC_FM: u64 = genmask(49, 48);
/// IOTLB word 0 bit 7: DR, drain reads.
pub const IOTLB_DR: u64 = 1 << 7;
/// IOTLB word 0 bit 6: DW, drain writes.
pub const IOTLB_DW: u64 = 1 << 6;
/// IOTLB / PASID-IOTLB word 1 `[63:12]`: ADDR.
pub const DESC_ADDR: u64 = genmask(63, 12);
/// IOTLB / PASID-IOTLB word 1 bit 6: IH, invalidation hint (leaf entries only).
pub const DESC_IH: u64 = 1 << 6;
/// IOTLB / PASID-IOTLB word 1 `[5:0]`: AM, address mask.
pub const DESC_AM: u64 = genmask(5, 0);
/// PASID-IOTLB / PASID-cache / PASID-device-TLB word 0 `[51:32]`: PASID.
pub const DESC_PASID: u64 = genmask(51, 32);
/// Device-TLB word 0 `[15:12]`: PFSID `[3:0]` (physical function source-id).
pub const DT_PFSID_LO: u64 = genmask(15, 12);
/// Device-TLB word 0 `[63:52]`: PFSID `[15:4]`.
pub const DT_PFSID_HI: u64 = genmask(63, 52);
/// Device-TLB word 0 `[20:16]`: MIP, max invalidations pending.
pub const DT_MIP: u64 = genmask(20, 16);
/// Device-TLB word 0 `[47:32]`: SID.
pub const DT_SID: u64 = genmask(47, 32);
/// Device-TLB word 1 bit 0: S, size (ADDR encodes a power-of-two range).
pub const DT_S: u64 = 1 << 0;
/// PASID-device-TLB word 0 `[8:4]`: MIP.
pub const PDT_MIP: u64 = genmask(8, 4);
/// PASID-device-TLB word 0 `[31:16]`: SID.
pub const PDT_SID: u64 = genmask(31, 16);
/// PASID-device-TLB word 1 bit 0: G, global (all PASIDs' global mappings).
pub const PDT_G: u64 = 1 << 0;
/// PASID-device-TLB word 1 bit 11: S, size.
pub const PDT_S: u64 = 1 << 11;
/// Wait word 0 bit 4: IF, interrupt flag.
pub const WAIT_IF: u64 = 1 << 4;
/// Wait word 0 bit 5: SW, status write.
pub const WAIT_SW: u64 = 1 << 5;
/// Wait word 0 bit 6: FN, fence (later descriptors wait for this one to complete).
pub const WAIT_FN: u64 = 1 << 6;
/// Wait word 0 bit 7: PD, page-request drain.
pub const WAIT_PD: u64 = 1 << 7;
/// Wait word 0 `[63:32]`: status data.
pub const WAIT_STATUS_DATA: u64 = genmask(63, 32);
/// Wait word 1 `[63:2]`: status address (4-byte aligned).
pub const WAIT_STATUS_ADDR: u64 = genmask(63, 2);

/// PASID-based IOTLB granularity 10b: all mappings of a PASID (non-global).
pub const PIOTLB_G_PASID: u64 = 2;
/// PASID-based IOTLB granularity 11b: page-selective within a PASID.
pub const PIOTLB_G_PAGE: u64 = 3;
/// PASID-cache granularity 00b: domain-selective.
pub const PC_G_DOMAIN: u64 = 0;
/// PASID-cache granularity 01b: PASID-selective within a domain.
pub const PC_G_PASID: u64 = 1;
/// PASID-cache granularity 11b: global.
pub const PC_G_GLOBAL: u64 = 3;

/// Context-cache invalidation granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextInvalidation {
    /// Everything.
    Global,
    /// Entries of one domain.
    Domain(u16),
    /// One device (source-id with function mask `fm`) in domain `did`.
    Device {
        /// Domain-id the entry had.
        did: u16,
        /// Source-id (requester ID).
        sid: u16,
        /// Function mask (0: exact SID).
        fm: u8,
    },
}

/// IOTLB invalidation granularity (second-level / legacy IOTLB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbInvalidation {
    /// Everything.
    Global,
    /// One domain.
    Domain(u16),
    /// 2^`am` pages at `addr` (aligned to that size) in domain `did`.
    Page {
        /// Domain-id.
        did: u16,
        /// Page address, aligned to 2^am pages.
        addr: u64,
        /// Address mask.
        am: u8,
        /// Only leaf entries changed (paging-structure caches may be kept).
        ih: bool,
    },
}

/// One invalidation descriptor (up to 256 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor(pub [u64; 4]);

impl Descriptor {
    /// Descriptor type.
    pub const fn kind(&self) -> u64 {
        self.0[0] & DESC_TYPE
    }

    /// Context-cache invalidate.
    pub const fn context_cache(inv: ContextInvalidation) -> Self {
        let w0 = match inv {
            ContextInvalidation::Global => field_prep(DESC_G, regs::GRAN_GLOBAL),
            ContextInvalidation::Domain(did) => {
                field_prep(DESC_G, regs::GRAN_DOMAIN) | field_prep(DESC_DID, did as u64)
            }
            ContextInvalidation::Device { did, sid, fm } => {
                field_prep(DESC_G, regs::GRAN_DEVICE_OR_PAGE)
                    | field_prep(DESC_DID, did as u64)
                    | field_prep(CC_SID, sid as u64)
                    | field_prep(CC_FM, fm as u64)
            }
        };
        Self([TYPE_CONTEXT_CACHE | w0, 0, 0, 0])
    }

    /// IOTLB invalidate; `drain` sets DR and DW (use when CAP.DRD/DWD).
    pub const fn iotlb(inv: IotlbInvalidation, drain: bool) -> Self {
        let d = if drain { IOTLB_DR | IOTLB_DW } else { 0 };
        let (w0, w1) = match inv {
            IotlbInvalidation::Global => (field_prep(DESC_G, regs::GRAN_GLOBAL), 0),
            IotlbInvalidation::Domain(did) => (
                field_prep(DESC_G, regs::GRAN_DOMAIN) | field_prep(DESC_DID, did as u64),
                0,
            ),
            IotlbInvalidation::Page { did, addr, am, ih } => (
                field_prep(DESC_G, regs::GRAN_DEVICE_OR_PAGE) | field_prep(DESC_DID, did as u64),
                (addr & DESC_ADDR) | if ih { DESC_IH } else { 0 } | field_prep(DESC_AM, am as u64),
            ),
        };
        Self([TYPE_IOTLB | w0 | d, w1, 0, 0])
    }

    /// PASID-based IOTLB invalidate: all of `pasid` in `did` (`page` = None) or 2^am
    /// pages at `addr`.
    pub const fn pasid_iotlb(did: u16, pasid: u32, page: Option<(u64, u8, bool)>) -> Self {
        let base = TYPE_PASID_IOTLB
            | field_prep(DESC_DID, did as u64)
            | field_prep(DESC_PASID, pasid as u64);
        match page {
            None => Self([base | field_prep(DESC_G, PIOTLB_G_PASID), 0, 0, 0]),
            Some((addr, am, ih)) => Self([
                base | field_prep(DESC_G, PIOTLB_G_PAGE),
                (addr & DESC_ADDR) | if ih { DESC_IH } else { 0 } | field_prep(DESC_AM, am as u64),
                0,
                0,
            ]),
        }
    }

    /// PASID-cache invalidate with granularity `g` ([`PC_G_DOMAIN`], [`PC_G_PASID`],
    /// [`PC_G_GLOBAL`]).
    pub const fn pasid_cache(g: u64, did: u16, pasid: u32) -> Self {
        Self([
            TYPE_PASID_CACHE
                | field_prep(DESC_G, g)
                | field_prep(DESC_DID, did as u64)
                | field_prep(DESC_PASID, pasid as u64),
            0,
            0,
            0,
        ])
    }

    /// Device-TLB invalidate of the ATS device `sid` (physical function `pfsid`), queue
    /// depth `mip`. `range`: None for everything, or 2^am pages at `addr` (S = 1 with the
    /// ATS encoding of the size in the low address bits).
    pub const fn device_tlb(sid: u16, pfsid: u16, mip: u8, range: Option<(u64, u8)>) -> Self {
        let w0 = TYPE_DEVICE_TLB
            | field_prep(DT_PFSID_LO, pfsid as u64 & 0xf)
            | field_prep(DT_PFSID_HI, pfsid as u64 >> 4)
            | field_prep(DT_MIP, mip as u64)
            | field_prep(DT_SID, sid as u64);
        Self([w0, ats_range(range, DT_S), 0, 0])
    }

    /// PASID-based device-TLB invalidate.
    pub const fn pasid_device_tlb(
        sid: u16,
        pfsid: u16,
        mip: u8,
        pasid: u32,
        range: Option<(u64, u8)>,
    ) -> Self {
        let w0 = TYPE_PASID_DEVICE_TLB
            | field_prep(PDT_MIP, mip as u64)
            | field_prep(DT_PFSID_LO, pfsid as u64 & 0xf)
            | field_prep(PDT_SID, sid as u64)
            | field_prep(DESC_PASID, pasid as u64)
            | field_prep(DT_PFSID_HI, pfsid as u64 >> 4);
        Self([w0, ats_range(range, PDT_S), 0, 0])
    }

    /// Invalidation wait. With `status`, the hardware writes `data` to the 4-byte aligned
    /// `addr` once every earlier descriptor completed; `fence` holds later descriptors
    /// back until then.
    pub const fn wait(status: Option<(u64, u32)>, fence: bool, interrupt: bool) -> Self {
        let mut w0 = TYPE_WAIT;
        let mut w1 = 0;
        if fence {
            w0 |= WAIT_FN;
        }
        if interrupt {
            w0 |= WAIT_IF;
        }
        if let Some((addr, data)) = status {
            w0 |= WAIT_SW | field_prep(WAIT_STATUS_DATA, data as u64);
            w1 = addr & WAIT_STATUS_ADDR;
        }
        Self([w0, w1, 0, 0])
    }
}

/// Address word of an ATS invalidation: without a range, all of the address space
/// (S = 1 and every address bit but the top one set); with 2^am pages at `addr`, the
/// address with bits `[11 + am - 1 : 12]` set and S = 1 (am = 0: exact page, S = 0).
const fn ats_range(range: Option<(u64, u8)>, s_bit: u64) -> u64 {
    match range {
        None => (u64::MAX >> 1) & DESC_ADDR | s_bit,
        Some((addr, 0)) => addr & DESC_ADDR,
        Some((addr, am)) => (addr & DESC_ADDR) | (((1u64 << am) - 1) >> 1) << 12 | s_bit,
    }
}

/// Perform a context-cache invalidation through CCMD_REG (§6.5.1.1) and wait for ICC to
/// clear. Refused (CAIG = 0) requests report [`Error::InvalidationRefused`].
pub fn context_invalidate_register<R: RegisterIo, T: PollTimeout>(
    regs: &mut R,
    timeout: &mut T,
    inv: ContextInvalidation,
) -> Result<()> {
    let v = match inv {
        ContextInvalidation::Global => field_prep(regs::CCMD_CIRG, regs::GRAN_GLOBAL),
        ContextInvalidation::Domain(did) => {
            field_prep(regs::CCMD_CIRG, regs::GRAN_DOMAIN)
                | field_prep(regs::CCMD_DID, u64::from(did))
        }
        ContextInvalidation::Device { did, sid, fm } => {
            field_prep(regs::CCMD_CIRG, regs::GRAN_DEVICE_OR_PAGE)
                | field_prep(regs::CCMD_DID, u64::from(did))
                | field_prep(regs::CCMD_SID, u64::from(sid))
                | field_prep(regs::CCMD_FM, u64::from(fm))
        }
    };
    regs.publish_barrier();
    regs.write64(regs::CCMD, regs::CCMD_ICC | v);
    let mut last = 0;
    if !poll_until(timeout, || {
        last = regs.read64(regs::CCMD);
        last & regs::CCMD_ICC == 0
    }) {
        return Err(Error::Timeout(TimeoutKind::ContextCommand));
    }
    if field_get(regs::CCMD_CAIG, last) == 0 {
        return Err(Error::InvalidationRefused);
    }
    Ok(())
}

/// Perform an IOTLB invalidation through IVA_REG / IOTLB_REG at `iotlb_base` (ECAP.IRO
/// * 16, §6.5.1.2) and wait for IVT to clear. `drain`: set DR and DW.
pub fn iotlb_invalidate_register<R: RegisterIo, T: PollTimeout>(
    regs: &mut R,
    timeout: &mut T,
    iotlb_base: usize,
    inv: IotlbInvalidation,
    drain: bool,
) -> Result<()> {
    let mut v = if drain {
        regs::IOTLB_DR | regs::IOTLB_DW
    } else {
        0
    };
    match inv {
        IotlbInvalidation::Global => v |= field_prep(regs::IOTLB_IIRG, regs::GRAN_GLOBAL),
        IotlbInvalidation::Domain(did) => {
            v |= field_prep(regs::IOTLB_IIRG, regs::GRAN_DOMAIN)
                | field_prep(regs::IOTLB_DID, u64::from(did))
        }
        IotlbInvalidation::Page { did, addr, am, ih } => {
            let iva = (addr & regs::IVA_ADDR)
                | if ih { regs::IVA_IH } else { 0 }
                | field_prep(regs::IVA_AM, u64::from(am));
            regs.write64(iotlb_base + regs::IVA_OFFSET, iva);
            v |= field_prep(regs::IOTLB_IIRG, regs::GRAN_DEVICE_OR_PAGE)
                | field_prep(regs::IOTLB_DID, u64::from(did));
        }
    }
    regs.publish_barrier();
    let reg = iotlb_base + regs::IOTLB_OFFSET;
    regs.write64(reg, regs::IOTLB_IVT | v);
    let mut last = 0;
    if !poll_until(timeout, || {
        last = regs.read64(reg);
        last & regs::IOTLB_IVT == 0
    }) {
        return Err(Error::Timeout(TimeoutKind::IotlbInvalidation));
    }
    if field_get(regs::IOTLB_IAIG, last) == 0 {
        return Err(Error::InvalidationRefused);
    }
    Ok(())
}

/// Default limit of page-selective invalidations per unmap before one domain-selective
/// invalidation is used instead.
pub const DEFAULT_MAX_PAGE_INVALIDATIONS: usize = 16;

/// Inputs of the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannerConfig {
    /// CAP.PSI.
    pub psi: bool,
    /// CAP.MAMV.
    pub mamv: u8,
    /// Above this many page-selective invalidations, use one domain-selective one.
    pub max_page_invalidations: usize,
}

impl PlannerConfig {
    /// From CAP with the default threshold.
    pub const fn from_cap(cap: &crate::caps::Cap) -> Self {
        Self {
            psi: cap.psi,
            mamv: cap.mamv,
            max_page_invalidations: DEFAULT_MAX_PAGE_INVALIDATIONS,
        }
    }
}

/// The invalidations that cover an unmapped range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidationPlan {
    /// Nothing was mapped.
    None,
    /// Page-selective invalidations, each 2^am pages aligned to their size; together they
    /// cover exactly the range.
    Pages(Vec<IotlbInvalidation>),
    /// One domain-selective invalidation.
    Domain(u16),
}

impl InvalidationPlan {
    /// Plan the IOTLB invalidations for `iova..iova+size` of domain `did` (both 4KB
    /// aligned): the fewest aligned power-of-two blocks with AM <= MAMV that cover the
    /// range exactly, or domain-selective without CAP.PSI or above the threshold.
    /// `leaf_only` sets IH (no paging-structure entry changed).
    pub fn new(cfg: &PlannerConfig, did: u16, iova: u64, size: u64, leaf_only: bool) -> Self {
        if size == 0 {
            return Self::None;
        }
        let Some(end) = iova.checked_add(size) else {
            return Self::Domain(did);
        };
        if !cfg.psi {
            return Self::Domain(did);
        }
        let mut out = Vec::new();
        let mut page = iova >> 12;
        let end = end >> 12;
        while page < end {
            let align = if page == 0 { 63 } else { page.trailing_zeros() };
            let fit = 63 - (end - page).leading_zeros();
            let am = align.min(fit).min(u32::from(cfg.mamv));
            if out.len() == cfg.max_page_invalidations {
                return Self::Domain(did);
            }
            out.push(IotlbInvalidation::Page {
                did,
                addr: page << 12,
                am: am as u8,
                ih: leaf_only,
            });
            page += 1 << am;
        }
        Self::Pages(out)
    }

    /// Number of IOTLB invalidations (for benchmarks).
    pub fn count(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Pages(p) => p.len(),
            Self::Domain(_) => 1,
        }
    }

    /// The invalidations as a list.
    pub fn invalidations(&self) -> Vec<IotlbInvalidation> {
        match self {
            Self::None => Vec::new(),
            Self::Pages(p) => p.clone(),
            Self::Domain(d) => alloc::vec![IotlbInvalidation::Domain(*d)],
        }
    }
}

/// One step of tearing down a context or PASID entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeardownStep {
    /// Clear the Present bit (one 64-bit store of word 0), so no new walk uses it.
    ClearPresent,
    /// Issue this descriptor (or its register-based equivalent).
    Invalidate(Descriptor),
    /// Wait for every invalidation issued so far to complete.
    Wait,
    /// Zero the rest of the entry (and free what it pointed at).
    ClearEntry,
}

/// What is being torn down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeardownTarget {
    /// Translation mode of the entry.
    pub mode: crate::caps::Mode,
    /// Domain-id the entry carried.
    pub did: u16,
    /// Requester ID.
    pub sid: u16,
    /// PASID (scalable mode; the RID_PASID for requests without PASID).
    pub pasid: u32,
    /// The device has ATS enabled: its device-TLB must be invalidated too
    /// (`pfsid`, `mip`).
    pub device_tlb: Option<(u16, u8)>,
}

/// The teardown order (VT-d spec §6.5.3.3 and the "Guidance to Software for
/// Invalidations" table): clear Present; invalidate the PASID cache (scalable) or
/// context cache (legacy); invalidate the IOTLB (in scalable mode also the PASID-based
/// IOTLB); then the device-TLB; wait; only then clear the entry.
pub fn teardown_steps(t: &TeardownTarget) -> Vec<TeardownStep> {
    use crate::caps::Mode;
    let mut s = alloc::vec![TeardownStep::ClearPresent];
    match t.mode {
        Mode::Legacy => {
            s.push(TeardownStep::Invalidate(Descriptor::context_cache(
                ContextInvalidation::Device {
                    did: t.did,
                    sid: t.sid,
                    fm: 0,
                },
            )));
            s.push(TeardownStep::Invalidate(Descriptor::iotlb(
                IotlbInvalidation::Domain(t.did),
                false,
            )));
            if let Some((pfsid, mip)) = t.device_tlb {
                s.push(TeardownStep::Invalidate(Descriptor::device_tlb(
                    t.sid, pfsid, mip, None,
                )));
            }
        }
        Mode::Scalable => {
            s.push(TeardownStep::Invalidate(Descriptor::pasid_cache(
                PC_G_PASID, t.did, t.pasid,
            )));
            // Second-level (and nested) translations are tagged with the DID and
            // invalidated by IOTLB descriptors; first-level ones by PASID-based IOTLB
            // descriptors. The entry may have been either, so both are issued.
            s.push(TeardownStep::Invalidate(Descriptor::iotlb(
                IotlbInvalidation::Domain(t.did),
                false,
            )));
            s.push(TeardownStep::Invalidate(Descriptor::pasid_iotlb(
                t.did, t.pasid, None,
            )));
            if let Some((pfsid, mip)) = t.device_tlb {
                s.push(TeardownStep::Invalidate(Descriptor::pasid_device_tlb(
                    t.sid, pfsid, mip, t.pasid, None,
                )));
            }
        }
    }
    s.push(TeardownStep::Wait);
    s.push(TeardownStep::ClearEntry);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::Mode;

    #[test]
    fn context_cache_descriptor_bits() {
        assert_eq!(
            Descriptor::context_cache(ContextInvalidation::Global).0,
            [0x11, 0, 0, 0]
        );
        assert_eq!(
            Descriptor::context_cache(ContextInvalidation::Domain(5)).0[0],
            0x0005_0021
        );
        let d = Descriptor::context_cache(ContextInvalidation::Device {
            did: 5,
            sid: 0x0010,
            fm: 2,
        });
        assert_eq!(d.0[0], 0x0002_0010_0005_0031);
        assert_eq!(d.kind(), TYPE_CONTEXT_CACHE);
    }

    #[test]
    fn iotlb_descriptor_bits() {
        assert_eq!(
            Descriptor::iotlb(IotlbInvalidation::Global, false).0,
            [0x12, 0, 0, 0]
        );
        assert_eq!(
            Descriptor::iotlb(IotlbInvalidation::Domain(3), true).0[0],
            0x0003_0022 | 0xc0
        );
        let p = Descriptor::iotlb(
            IotlbInvalidation::Page {
                did: 3,
                addr: 0x12_3400_0000,
                am: 9,
                ih: true,
            },
            false,
        );
        assert_eq!(p.0[0], 0x0003_0032);
        assert_eq!(p.0[1], 0x12_3400_0000 | 0x40 | 9);
    }

    #[test]
    fn pasid_descriptor_bits() {
        let p = Descriptor::pasid_iotlb(4, 0x12345, None);
        assert_eq!(p.0[0], 6 | (2 << 4) | (4 << 16) | (0x12345 << 32));
        let q = Descriptor::pasid_iotlb(4, 1, Some((0x20_0000, 9, false)));
        assert_eq!(q.0[0], 6 | (3 << 4) | (4 << 16) | (1 << 32));
        assert_eq!(q.0[1], 0x20_0009);
        let c = Descriptor::pasid_cache(PC_G_PASID, 2, 7);
        assert_eq!(c.0[0], 7 | (1 << 4) | (2 << 16) | (7 << 32));
        assert_eq!(Descriptor::pasid_cache(PC_G_GLOBAL, 0, 0).0[0], 0x37);
    }

    #[test]
    fn device_tlb_descriptor_bits() {
        let d = Descriptor::device_tlb(0x0100, 0x0123, 4, Some((0x5000, 0)));
        assert_eq!(
            d.0[0],
            3 | (0x3 << 12) | (4 << 16) | (0x0100 << 32) | (0x12 << 52)
        );
        assert_eq!(d.0[1], 0x5000);
        // 2 pages at 0x4000: bit 12 is the size bit pattern for 8KB with S = 1.
        let r = Descriptor::device_tlb(0x0100, 0x0100, 0, Some((0x4000, 1)));
        assert_eq!(r.0[1], 0x4000 | 1);
        let r4 = Descriptor::device_tlb(0x0100, 0x0100, 0, Some((0x8000, 2)));
        assert_eq!(r4.0[1], 0x8000 | 0x1000 | 1);
        let all = Descriptor::device_tlb(1, 1, 0, None);
        assert_eq!(all.0[1], 0x7fff_ffff_ffff_f001);
        let p = Descriptor::pasid_device_tlb(0x0200, 0x0200, 3, 9, Some((0x1000, 0)));
        assert_eq!(
            p.0[0],
            8 | (3 << 4) | (0x0200 << 16) | (9 << 32) | (0x20 << 52)
        );
        assert_eq!(
            Descriptor::pasid_device_tlb(1, 1, 0, 1, Some((0x4000, 1))).0[1],
            0x4800
        );
    }

    #[test]
    fn wait_descriptor_bits() {
        let w = Descriptor::wait(Some((0xdead_b000, 0x1234)), true, false);
        assert_eq!(w.0[0], 5 | 0x20 | 0x40 | (0x1234 << 32));
        assert_eq!(w.0[1], 0xdead_b000);
        assert_eq!(Descriptor::wait(None, false, true).0, [0x15, 0, 0, 0]);
        assert_eq!(WAIT_PD, 0x80);
        assert_eq!(
            Descriptor::wait(Some((0x1003, 1)), false, false).0[1],
            0x1000
        );
    }

    fn cfg(mamv: u8) -> PlannerConfig {
        PlannerConfig {
            psi: true,
            mamv,
            max_page_invalidations: 64,
        }
    }

    fn ams(p: &InvalidationPlan) -> Vec<(u64, u8)> {
        match p {
            InvalidationPlan::Pages(v) => v
                .iter()
                .map(|i| match i {
                    IotlbInvalidation::Page { addr, am, .. } => (*addr, *am),
                    _ => unreachable!(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn planner_uses_aligned_power_of_two_blocks() {
        assert_eq!(
            InvalidationPlan::new(&cfg(18), 1, 0, 0, true),
            InvalidationPlan::None
        );
        let one = InvalidationPlan::new(&cfg(18), 1, 0x5000, 0x1000, true);
        assert_eq!(ams(&one), alloc::vec![(0x5000, 0)]);
        let aligned = InvalidationPlan::new(&cfg(18), 1, 0x10_0000, 256 * 0x1000, true);
        assert_eq!(ams(&aligned), alloc::vec![(0x10_0000, 8)]);
        // Pages 3..=10: 3, 4..=7, 8..=9, 10.
        let odd = InvalidationPlan::new(&cfg(18), 1, 0x3000, 8 * 0x1000, false);
        assert_eq!(
            ams(&odd),
            alloc::vec![(0x3000, 0), (0x4000, 2), (0x8000, 1), (0xa000, 0)]
        );
        // MAMV caps each block.
        let capped = InvalidationPlan::new(&cfg(2), 1, 0, 16 * 0x1000, true);
        assert_eq!(capped.count(), 4);
        // 262144 pages aligned: one AM = 18 invalidation on QEMU.
        let big = InvalidationPlan::new(&cfg(18), 1, 1 << 30, 1 << 30, true);
        assert_eq!(ams(&big), alloc::vec![(1 << 30, 18)]);
    }

    #[test]
    fn planner_falls_back_to_domain() {
        let few = PlannerConfig {
            psi: true,
            mamv: 0,
            max_page_invalidations: 4,
        };
        assert_eq!(
            InvalidationPlan::new(&few, 7, 0, 4 * 0x1000, true).count(),
            4
        );
        assert_eq!(
            InvalidationPlan::new(&few, 7, 0, 5 * 0x1000, true),
            InvalidationPlan::Domain(7)
        );
        assert_eq!(
            InvalidationPlan::new(&few, 7, u64::MAX - 0xfff, 0x2000, true),
            InvalidationPlan::Domain(7),
            "overflowing range: whole domain"
        );
        let no_psi = PlannerConfig { psi: false, ..few };
        assert_eq!(
            InvalidationPlan::new(&no_psi, 7, 0, 0x1000, true).invalidations(),
            alloc::vec![IotlbInvalidation::Domain(7)]
        );
    }

    #[test]
    fn teardown_orders_present_caches_then_entry() {
        let t = TeardownTarget {
            mode: Mode::Scalable,
            did: 3,
            sid: 0x10,
            pasid: 0,
            device_tlb: Some((0x10, 0)),
        };
        let s = teardown_steps(&t);
        assert_eq!(s.first(), Some(&TeardownStep::ClearPresent));
        let kinds: Vec<u64> = s
            .iter()
            .filter_map(|x| match x {
                TeardownStep::Invalidate(d) => Some(d.kind()),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            alloc::vec![
                TYPE_PASID_CACHE,
                TYPE_IOTLB,
                TYPE_PASID_IOTLB,
                TYPE_PASID_DEVICE_TLB
            ]
        );
        assert_eq!(
            &s[s.len() - 2..],
            &[TeardownStep::Wait, TeardownStep::ClearEntry]
        );
        let l = teardown_steps(&TeardownTarget {
            mode: Mode::Legacy,
            device_tlb: None,
            ..t
        });
        assert_eq!(l.len(), 5);
        assert_eq!(
            l[1],
            TeardownStep::Invalidate(Descriptor::context_cache(ContextInvalidation::Device {
                did: 3,
                sid: 0x10,
                fm: 0
            }))
        );
    }
}
