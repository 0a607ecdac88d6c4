//! Fault reporting (VT-d spec chapter 7, "Primary Fault Logging"; fault recording
//! registers §11.4.14; fault reason encodings from the spec's fault-condition tables)
//! and page requests (page request descriptors, page group response descriptors).

use crate::inv::{Descriptor, TYPE_PAGE_GROUP_RESPONSE};
use crate::regs::{field_get, field_prep, genmask};

// --- Fault recording register (128 bits, as two 64-bit halves) ---
/// Low half `[63:12]`: FI, fault information (page address of the faulting request).
pub const FRCD_LO_FI: u64 = genmask(63, 12);
/// High half `[15:0]` (bits 79:64): SID, source identifier.
pub const FRCD_HI_SID: u64 = genmask(15, 0);
/// High half bit 28 (bit 92): T2, type bit 2.
pub const FRCD_HI_T2: u64 = 1 << 28;
/// High half bit 29 (bit 93): PRIV, privileged (supervisor) request.
pub const FRCD_HI_PRIV: u64 = 1 << 29;
/// High half bit 30 (bit 94): EXE, execute request.
pub const FRCD_HI_EXE: u64 = 1 << 30;
/// High half bit 31 (bit 95): PP, PASID present.
pub const FRCD_HI_PP: u64 = 1 << 31;
/// High half `[39:32]` (bits 103:96): FR, fault reason.
pub const FRCD_HI_FR: u64 = genmask(39, 32);
/// High half `[59:40]` (bits 123:104): PV, PASID value.
pub const FRCD_HI_PV: u64 = genmask(59, 40);
/// High half `[61:60]` (bits 125:124): AT, address type of the request.
pub const FRCD_HI_AT: u64 = genmask(61, 60);
/// High half bit 62 (bit 126): T1, type: 0 = write request, 1 = read request.
pub const FRCD_HI_T1: u64 = 1 << 62;
/// High half bit 63 (bit 127): F, fault (write 1 to clear).
pub const FRCD_HI_F: u64 = crate::regs::FRCD_HI_F;

/// Fault reasons (the VT-d spec's fault-condition tables). Legacy-mode DMA remapping faults are 1..=0xD,
/// interrupt remapping faults 0x20..=0x27; other values (scalable-mode faults and
/// reserved codes) decode as [`FaultReason::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// 1: the root entry's P is clear.
    RootEntryNotPresent,
    /// 2: the context entry's P is clear.
    ContextEntryNotPresent,
    /// 3: invalid programming of the context entry (for example AW not in SAGAW).
    ContextEntryInvalid,
    /// 4: input address above the guest address width.
    AddressBeyondWidth,
    /// 5: write to a page without write permission (also unmapped writes on QEMU).
    WriteDenied,
    /// 6: read from a page without read permission (also unmapped reads on QEMU).
    ReadDenied,
    /// 7: error accessing a second-level paging entry.
    PagingEntryAccess,
    /// 8: error accessing the root table.
    RootTableAccess,
    /// 9: error accessing a context table.
    ContextTableAccess,
    /// 0xA: reserved bits set in a root entry.
    RootEntryReserved,
    /// 0xB: reserved bits set in a context entry.
    ContextEntryReserved,
    /// 0xC: reserved bits set in a paging entry.
    PagingEntryReserved,
    /// 0xD: the context entry's TT blocks this kind of request.
    TranslationTypeBlocked,
    /// 0x20..=0x27: an interrupt remapping fault (code kept).
    InterruptRemapping(u8),
    /// Any other code (scalable-mode faults, reserved values).
    Unknown(u8),
}

impl FaultReason {
    /// Decode the FR field.
    pub const fn from_raw(code: u8) -> Self {
        match code {
            1 => Self::RootEntryNotPresent,
            2 => Self::ContextEntryNotPresent,
            3 => Self::ContextEntryInvalid,
            4 => Self::AddressBeyondWidth,
            5 => Self::WriteDenied,
            6 => Self::ReadDenied,
            7 => Self::PagingEntryAccess,
            8 => Self::RootTableAccess,
            9 => Self::ContextTableAccess,
            0xa => Self::RootEntryReserved,
            0xb => Self::ContextEntryReserved,
            0xc => Self::PagingEntryReserved,
            0xd => Self::TranslationTypeBlocked,
            0x20..=0x27 => Self::InterruptRemapping(code),
            c => Self::Unknown(c),
        }
    }

    /// The FR code.
    pub const fn code(&self) -> u8 {
        match self {
            Self::RootEntryNotPresent => 1,
            Self::ContextEntryNotPresent => 2,
            Self::ContextEntryInvalid => 3,
            Self::AddressBeyondWidth => 4,
            Self::WriteDenied => 5,
            Self::ReadDenied => 6,
            Self::PagingEntryAccess => 7,
            Self::RootTableAccess => 8,
            Self::ContextTableAccess => 9,
            Self::RootEntryReserved => 0xa,
            Self::ContextEntryReserved => 0xb,
            Self::PagingEntryReserved => 0xc,
            Self::TranslationTypeBlocked => 0xd,
            Self::InterruptRemapping(c) | Self::Unknown(c) => *c,
        }
    }
}

/// Kind of request that faulted (T1, with T2 = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessType {
    /// T1 = 0: write request.
    Write,
    /// T1 = 1: read request (or AtomicOp).
    Read,
}

/// A decoded fault record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// Index of the fault recording register.
    pub index: u16,
    /// Page address of the faulting request (FI; for interrupt remapping faults, bits
    /// `[63:48]` hold the interrupt index).
    pub address: u64,
    /// Requester ID.
    pub source_id: u16,
    /// Fault reason.
    pub reason: FaultReason,
    /// T1.
    pub access: AccessType,
    /// T2 (set for request kinds newer revisions of the spec add).
    pub t2: bool,
    /// AT: address type of the request (0 untranslated, 1 translation request,
    /// 2 translated).
    pub address_type: u8,
    /// PASID if PP was set.
    pub pasid: Option<u32>,
    /// PRIV.
    pub privileged: bool,
    /// EXE.
    pub execute: bool,
}

impl FaultRecord {
    /// Decode a fault recording register from its low and high halves; `None` if F is
    /// clear.
    pub const fn decode(index: u16, lo: u64, hi: u64) -> Option<Self> {
        if hi & FRCD_HI_F == 0 {
            return None;
        }
        Some(Self {
            index,
            address: lo & FRCD_LO_FI,
            source_id: field_get(FRCD_HI_SID, hi) as u16,
            reason: FaultReason::from_raw(field_get(FRCD_HI_FR, hi) as u8),
            access: if hi & FRCD_HI_T1 != 0 {
                AccessType::Read
            } else {
                AccessType::Write
            },
            t2: hi & FRCD_HI_T2 != 0,
            address_type: field_get(FRCD_HI_AT, hi) as u8,
            pasid: if hi & FRCD_HI_PP != 0 {
                Some(field_get(FRCD_HI_PV, hi) as u32)
            } else {
                None
            },
            privileged: hi & FRCD_HI_PRIV != 0,
            execute: hi & FRCD_HI_EXE != 0,
        })
    }
}

/// The canonical one-line form of a fault record, used wherever records from different
/// sources (QEMU, the simulation's model) are compared: every architectural field, the
/// recording register's index left out (which register a fault lands in depends on
/// history, not on the fault).
///
/// `source=<bus>:<dev>.<fn> addr=<hex> access=<read|write> reason=<hex> pasid=<hex|-> at=<n>
/// priv=<0|1> exe=<0|1> t2=<0|1>`
impl core::fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let sid = self.source_id;
        write!(
            f,
            "source={:02x}:{:02x}.{} addr={:#x} access={} reason={:#x} pasid=",
            sid >> 8,
            (sid >> 3) & 0x1f,
            sid & 7,
            self.address,
            match self.access {
                AccessType::Read => "read",
                AccessType::Write => "write",
            },
            self.reason.code(),
        )?;
        match self.pasid {
            Some(p) => write!(f, "{p:#x}")?,
            None => f.write_str("-")?,
        }
        write!(
            f,
            " at={} priv={} exe={} t2={}",
            self.address_type,
            u8::from(self.privileged),
            u8::from(self.execute),
            u8::from(self.t2)
        )
    }
}

// --- Page request descriptor (256 bits, §7.5.1) ---
/// Word 0 `[7:0]`: type (1 = page request).
pub const PRQ0_TYPE: u64 = genmask(7, 0);
/// Word 0 bit 8: PASID present.
pub const PRQ0_PP: u64 = 1 << 8;
/// Word 0 `[31:16]`: RID, requester ID.
pub const PRQ0_RID: u64 = genmask(31, 16);
/// Word 0 `[51:32]`: PASID.
pub const PRQ0_PASID: u64 = genmask(51, 32);
/// Word 0 bit 52: EXE, execute requested.
pub const PRQ0_EXE: u64 = 1 << 52;
/// Word 0 bit 53: PM / PRIV, privileged-mode access requested. (Words 2 and 3 are
/// reserved in current spec revisions.)
pub const PRQ0_PRIV: u64 = 1 << 53;
/// Word 1 bit 0: RD, read access requested.
pub const PRQ1_RD: u64 = 1 << 0;
/// Word 1 bit 1: WR, write access requested.
pub const PRQ1_WR: u64 = 1 << 1;
/// Word 1 bit 2: LPIG, last page in group.
pub const PRQ1_LPIG: u64 = 1 << 2;
/// Word 1 `[11:3]`: PRGI, page request group index.
pub const PRQ1_PRGI: u64 = genmask(11, 3);
/// Word 1 `[63:12]`: ADDR, page address.
pub const PRQ1_ADDR: u64 = genmask(63, 12);
/// Page request descriptor type value.
pub const PRQ_TYPE_PAGE_REQUEST: u64 = 1;

/// Why a page request descriptor could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequestError {
    /// The type field is not a page request.
    NotAPageRequest(u8),
}

/// A decoded page request (§7.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Requester ID.
    pub rid: u16,
    /// PASID, if present.
    pub pasid: Option<u32>,
    /// Page address.
    pub address: u64,
    /// Read requested.
    pub read: bool,
    /// Write requested.
    pub write: bool,
    /// Execute requested.
    pub execute: bool,
    /// Privileged access requested.
    pub privileged: bool,
    /// Last page in group: the group needs a response.
    pub last_in_group: bool,
    /// Page request group index.
    pub group_index: u16,
}

impl PageRequest {
    /// Decode a descriptor read from the page request queue.
    pub const fn decode(w: [u64; 4]) -> Result<Self, PageRequestError> {
        let t = field_get(PRQ0_TYPE, w[0]);
        if t != PRQ_TYPE_PAGE_REQUEST {
            return Err(PageRequestError::NotAPageRequest(t as u8));
        }
        Ok(Self {
            rid: field_get(PRQ0_RID, w[0]) as u16,
            pasid: if w[0] & PRQ0_PP != 0 {
                Some(field_get(PRQ0_PASID, w[0]) as u32)
            } else {
                None
            },
            address: w[1] & PRQ1_ADDR,
            read: w[1] & PRQ1_RD != 0,
            write: w[1] & PRQ1_WR != 0,
            execute: w[0] & PRQ0_EXE != 0,
            privileged: w[0] & PRQ0_PRIV != 0,
            last_in_group: w[1] & PRQ1_LPIG != 0,
            group_index: field_get(PRQ1_PRGI, w[1]) as u16,
        })
    }
}

// --- Page group response descriptor (§7.7.1) ---
/// Word 0 bit 4: PP, PASID present.
pub const PGR0_PP: u64 = 1 << 4;
/// Word 0 `[15:12]`: response code.
pub const PGR0_RC: u64 = genmask(15, 12);
/// Word 0 `[31:16]`: RID.
pub const PGR0_RID: u64 = genmask(31, 16);
/// Word 0 `[51:32]`: PASID.
pub const PGR0_PASID: u64 = genmask(51, 32);
/// Word 1 `[11:3]`: PRGI.
pub const PGR1_PRGI: u64 = genmask(11, 3);

/// Page group response codes (PCIe PRG response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseCode {
    /// 0: success, the pages are mapped.
    Success = 0,
    /// 1: invalid request, the device must not retry.
    InvalidRequest = 1,
    /// 0xF: response failure, the device disables its PRI.
    Failure = 0xf,
}

/// Largest page request group index (PRGI is 9 bits).
pub const MAX_GROUP_INDEX: u16 = 0x1ff;

/// What a page group response names (§7.7.1): the requester, the PASID the requests
/// carried, and the page request group index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageGroup {
    /// Requester ID.
    pub rid: u16,
    /// PASID of the group's requests, if they carried one.
    pub pasid: Option<u32>,
    /// Page request group index (PRGI, at most [`MAX_GROUP_INDEX`]).
    pub index: u16,
}

impl PageRequest {
    /// The group this request belongs to (what its response names).
    pub const fn group(&self) -> PageGroup {
        PageGroup {
            rid: self.rid,
            pasid: self.pasid,
            index: self.group_index,
        }
    }
}

/// Encode the page group response to `group` (sent through the invalidation queue once
/// the last request of the group, LPIG = 1, was handled). Earlier spec revisions also
/// defined private-data fields here; current ones reserve them, so they stay zero.
/// Fields wider than their encodings are truncated; [`crate::Vtd::page_group_response`]
/// refuses them first.
pub const fn group_response(group: &PageGroup, code: ResponseCode) -> Descriptor {
    let mut w0 = TYPE_PAGE_GROUP_RESPONSE
        | field_prep(PGR0_RC, code as u64)
        | field_prep(PGR0_RID, group.rid as u64);
    if let Some(p) = group.pasid {
        w0 |= PGR0_PP | field_prep(PGR0_PASID, p as u64);
    }
    Descriptor([w0, field_prep(PGR1_PRGI, group.index as u64), 0, 0])
}

/// Encode the page group response to the group of `req` (see [`group_response`]).
pub const fn page_group_response(req: &PageRequest, code: ResponseCode) -> Descriptor {
    group_response(&req.group(), code)
}

/// Result of draining the fault recording registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Records delivered.
    pub records: u32,
    /// FSTS.PFO was set: faults were lost because every register was full (cleared).
    pub overflowed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn fault_record_bits_match_spec() {
        // QEMU: unmapped read from 00:03.0 at 0x1234_5678 -> FR = 6, T = 1.
        let hi = FRCD_HI_F | FRCD_HI_T1 | (6u64 << 32) | 0x0018;
        let r = FaultRecord::decode(0, 0x1234_5000, hi).unwrap();
        assert_eq!(r.address, 0x1234_5000);
        assert_eq!(r.source_id, 0x18);
        assert_eq!(r.reason, FaultReason::ReadDenied);
        assert_eq!(r.access, AccessType::Read);
        assert_eq!(r.pasid, None);
        // Scalable mode on QEMU: PP = 1, PV = 0; write fault FR = 5.
        let hi = FRCD_HI_F | FRCD_HI_PP | (5u64 << 32) | 0x0018;
        let w = FaultRecord::decode(1, 0x2000, hi).unwrap();
        assert_eq!(
            (w.access, w.pasid, w.reason),
            (AccessType::Write, Some(0), FaultReason::WriteDenied)
        );
        // Every other field at its bit position.
        let hi = FRCD_HI_F
            | (0xabcde << 40)
            | FRCD_HI_PP
            | FRCD_HI_EXE
            | FRCD_HI_PRIV
            | FRCD_HI_T2
            | (2 << 60);
        let x = FaultRecord::decode(2, 0xfff, hi).unwrap();
        assert_eq!(x.address, 0);
        assert_eq!(x.pasid, Some(0xabcde));
        assert!(x.execute && x.privileged && x.t2);
        assert_eq!(x.address_type, 2);
        assert_eq!(FaultRecord::decode(0, 0x1000, hi & !FRCD_HI_F), None);
        assert_eq!(FRCD_HI_F, 1 << 63);
    }

    #[test]
    fn fault_record_canonical_form() {
        let hi = FRCD_HI_F | FRCD_HI_T1 | (6u64 << 32) | 0x0018;
        let r = FaultRecord::decode(3, 0x0a00_0000, hi).unwrap();
        assert_eq!(
            r.to_string(),
            "source=00:03.0 addr=0xa000000 access=read reason=0x6 pasid=- at=0 priv=0 exe=0 t2=0"
        );
        let hi = FRCD_HI_F | FRCD_HI_PP | (5u64 << 32) | 0x0100 | (1 << 60);
        let w = FaultRecord::decode(0, 0x2000, hi).unwrap();
        assert_eq!(
            w.to_string(),
            "source=01:00.0 addr=0x2000 access=write reason=0x5 pasid=0x0 at=1 priv=0 exe=0 t2=0"
        );
    }

    #[test]
    fn fault_reasons_round_trip() {
        for c in 0..=255u8 {
            assert_eq!(FaultReason::from_raw(c).code(), c);
        }
        assert_eq!(
            FaultReason::from_raw(0x22),
            FaultReason::InterruptRemapping(0x22)
        );
        assert_eq!(FaultReason::from_raw(0x30), FaultReason::Unknown(0x30));
        assert_eq!(FaultReason::from_raw(0), FaultReason::Unknown(0));
    }

    #[test]
    fn page_request_decode_and_response() {
        let w0 = 1 | PRQ0_PP | (0x0310 << 16) | (0x42 << 32) | PRQ0_PRIV;
        let w1 = 0x7654_3000 | PRQ1_WR | PRQ1_RD | PRQ1_LPIG | (0x1ab << 3);
        let r = PageRequest::decode([w0, w1, 0xfeed, 0]).unwrap();
        assert_eq!(r.rid, 0x0310);
        assert_eq!(r.pasid, Some(0x42));
        assert_eq!(r.address, 0x7654_3000);
        assert!(r.read && r.write && !r.execute && r.privileged && r.last_in_group);
        assert_eq!(r.group_index, 0x1ab);
        assert_eq!(
            PageRequest::decode([2, 0, 0, 0]),
            Err(PageRequestError::NotAPageRequest(2))
        );
        let d = page_group_response(&r, ResponseCode::InvalidRequest);
        assert_eq!(
            d.0[0],
            9 | PGR0_PP | (1 << 12) | (0x0310 << 16) | (0x42 << 32)
        );
        assert_eq!(d.0, [d.0[0], 0x1ab << 3, 0, 0]);
        assert_eq!(
            r.group(),
            PageGroup {
                rid: 0x0310,
                pasid: Some(0x42),
                index: 0x1ab
            }
        );
        assert_eq!(group_response(&r.group(), ResponseCode::InvalidRequest), d);
        // PRGI's 9 bits end at bit 11 of word 1; the PASID's 20 at bit 51 of word 0.
        let widest = PageGroup {
            rid: 0xffff,
            pasid: Some(0xf_ffff),
            index: MAX_GROUP_INDEX,
        };
        let w = group_response(&widest, ResponseCode::Failure);
        assert_eq!(
            w.0[0],
            9 | PGR0_PP | (0xf << 12) | (0xffff << 16) | (0xf_ffff << 32)
        );
        assert_eq!(w.0[1], 0xff8);
        let no_pasid = PageRequest { pasid: None, ..r };
        assert_eq!(
            page_group_response(&no_pasid, ResponseCode::Failure).0[0],
            9 | (0xf << 12) | (0x0310 << 16)
        );
    }
}
