//! Event records (SMMUv3 spec §7.3 "Event records"): 32 bytes, four little-endian words.
//! Decoding is total: any bytes give an [`Event`] (unknown types become
//! [`Event::Unknown`]); only a buffer of the wrong length is an error.
//!
//! [`Event`]'s `Display` is the canonical one-line form of a record (every field the
//! decoded type carries, `key=value`), which the QEMU image and the hardware model print
//! so that their records can be compared as text.

use core::fmt;

use crate::error::Error;
use crate::regs::{field_get, genmask};

/// Bytes per event record.
pub const EVT_BYTES: usize = 32;

/// EVT.Type `[7:0]`.
pub const EVTQ_0_ID: u64 = genmask(7, 0);
/// EVT.SSV (bit 11).
pub const EVTQ_0_SSV: u64 = 1 << 11;
/// EVT.SubstreamID `[31:12]`.
pub const EVTQ_0_SSID: u64 = genmask(31, 12);
/// EVT.StreamID `[63:32]`.
pub const EVTQ_0_SID: u64 = genmask(63, 32);
/// EVT.STAG `[15:0]` of word 1.
pub const EVTQ_1_STAG: u64 = genmask(15, 0);
/// EVT.Stall (word 1 bit 31).
pub const EVTQ_1_STALL: u64 = 1 << 31;
/// EVT.PnU (word 1 bit 33): privileged access.
pub const EVTQ_1_PNU: u64 = 1 << 33;
/// EVT.InD (word 1 bit 34): instruction fetch.
pub const EVTQ_1_IND: u64 = 1 << 34;
/// EVT.RnW (word 1 bit 35): read.
pub const EVTQ_1_RNW: u64 = 1 << 35;
/// EVT.S2 (word 1 bit 39): fault at stage 2.
pub const EVTQ_1_S2: u64 = 1 << 39;
/// EVT.CLASS `[41:40]` of word 1.
pub const EVTQ_1_CLASS: u64 = genmask(41, 40);
/// EVT.IPA `[51:12]` of word 3.
pub const EVTQ_3_IPA: u64 = genmask(51, 12);
/// EVT.FetchAddr `[51:3]` of word 3.
pub const EVTQ_3_FETCH_ADDR: u64 = genmask(51, 3);

/// F_UUT.
pub const EVT_ID_UUT: u8 = 0x01;
/// C_BAD_STREAMID.
pub const EVT_ID_BAD_STREAMID: u8 = 0x02;
/// F_STE_FETCH.
pub const EVT_ID_STE_FETCH: u8 = 0x03;
/// C_BAD_STE.
pub const EVT_ID_BAD_STE: u8 = 0x04;
/// F_BAD_ATS_TREQ.
pub const EVT_ID_BAD_ATS_TREQ: u8 = 0x05;
/// F_STREAM_DISABLED.
pub const EVT_ID_STREAM_DISABLED: u8 = 0x06;
/// F_TRANSL_FORBIDDEN.
pub const EVT_ID_TRANSL_FORBIDDEN: u8 = 0x07;
/// C_BAD_SUBSTREAMID.
pub const EVT_ID_BAD_SUBSTREAMID: u8 = 0x08;
/// F_CD_FETCH.
pub const EVT_ID_CD_FETCH: u8 = 0x09;
/// C_BAD_CD.
pub const EVT_ID_BAD_CD: u8 = 0x0a;
/// F_WALK_EABT.
pub const EVT_ID_WALK_EABT: u8 = 0x0b;
/// F_TRANSLATION.
pub const EVT_ID_TRANSLATION: u8 = 0x10;
/// F_ADDR_SIZE.
pub const EVT_ID_ADDR_SIZE: u8 = 0x11;
/// F_ACCESS.
pub const EVT_ID_ACCESS: u8 = 0x12;
/// F_PERMISSION.
pub const EVT_ID_PERMISSION: u8 = 0x13;
/// F_TLB_CONFLICT.
pub const EVT_ID_TLB_CONFLICT: u8 = 0x20;
/// F_CFG_CONFLICT.
pub const EVT_ID_CFG_CONFLICT: u8 = 0x21;
/// E_PAGE_REQUEST.
pub const EVT_ID_PAGE_REQUEST: u8 = 0x24;
/// F_VMS_FETCH.
pub const EVT_ID_VMS_FETCH: u8 = 0x25;

/// Which part of the walk faulted (EVT.CLASS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// CD fetch.
    Cd,
    /// Stage-1 translation table fetch.
    TranslationTable,
    /// The input address itself.
    InputAddress,
    /// Reserved encoding.
    Reserved,
}

/// Identity of the faulting stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRef {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, when SSV = 1.
    pub ssid: Option<u32>,
}

/// The access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Input address.
    pub addr: u64,
    /// Read (RnW = 1) or write.
    pub read: bool,
    /// Privileged (PnU = 1).
    pub privileged: bool,
    /// Instruction fetch (InD = 1).
    pub instruction: bool,
}

/// Fields of the translation-related faults (F_TRANSLATION, F_ADDR_SIZE, F_ACCESS,
/// F_PERMISSION, F_WALK_EABT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslationFault {
    /// Stream.
    pub stream: StreamRef,
    /// Access.
    pub access: Access,
    /// The transaction is stalled (Stall = 1) and `stag` identifies it for CMD_RESUME.
    pub stall: bool,
    /// Stall tag.
    pub stag: u16,
    /// Fault arose at stage 2.
    pub s2: bool,
    /// Class.
    pub class: FaultClass,
    /// IPA, for stage-2 faults.
    pub ipa: Option<u64>,
}

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// F_UUT: unsupported upstream transaction.
    Uut {
        /// Stream.
        stream: StreamRef,
        /// Access.
        access: Access,
    },
    /// C_BAD_STREAMID: StreamID out of range.
    BadStreamId(StreamRef),
    /// F_STE_FETCH: abort fetching the STE.
    SteFetch {
        /// Stream.
        stream: StreamRef,
        /// Address of the fetch.
        fetch_addr: u64,
    },
    /// C_BAD_STE: invalid or misconfigured STE.
    BadSte(StreamRef),
    /// F_BAD_ATS_TREQ: bad ATS translation request.
    BadAtsTreq {
        /// Stream.
        stream: StreamRef,
        /// Access.
        access: Access,
    },
    /// F_STREAM_DISABLED: non-substream traffic with S1DSS = terminate.
    StreamDisabled(StreamRef),
    /// F_TRANSL_FORBIDDEN: translated (ATS) transaction forbidden.
    TranslForbidden {
        /// Stream.
        stream: StreamRef,
        /// Access.
        access: Access,
    },
    /// C_BAD_SUBSTREAMID: SubstreamID out of range.
    BadSubstreamId(StreamRef),
    /// F_CD_FETCH: abort fetching a CD.
    CdFetch {
        /// Stream.
        stream: StreamRef,
        /// Address of the fetch.
        fetch_addr: u64,
    },
    /// C_BAD_CD: invalid or misconfigured CD.
    BadCd(StreamRef),
    /// F_WALK_EABT: external abort during a table walk.
    WalkEabt {
        /// Fault details.
        fault: TranslationFault,
        /// Address of the fetch.
        fetch_addr: u64,
    },
    /// F_TRANSLATION: no valid translation.
    Translation(TranslationFault),
    /// F_ADDR_SIZE: address size fault.
    AddrSize(TranslationFault),
    /// F_ACCESS: access flag fault.
    Access(TranslationFault),
    /// F_PERMISSION: permission fault.
    Permission(TranslationFault),
    /// F_TLB_CONFLICT: TLB conflict.
    TlbConflict {
        /// Stream.
        stream: StreamRef,
        /// Input address.
        addr: u64,
        /// Raw record for the reason fields.
        raw: [u64; 4],
    },
    /// F_CFG_CONFLICT: configuration cache conflict.
    CfgConflict {
        /// Stream.
        stream: StreamRef,
        /// Raw record for the reason fields.
        raw: [u64; 4],
    },
    /// E_PAGE_REQUEST: speculative page request hint.
    PageRequest {
        /// Stream.
        stream: StreamRef,
        /// Address.
        addr: u64,
        /// Raw record.
        raw: [u64; 4],
    },
    /// F_VMS_FETCH: abort fetching a VMS.
    VmsFetch {
        /// Address of the fetch.
        fetch_addr: u64,
        /// Raw record.
        raw: [u64; 4],
    },
    /// IMPLEMENTATION DEFINED events (0xe0..=0xef).
    ImplementationDefined {
        /// Type code.
        code: u8,
        /// Raw record.
        raw: [u64; 4],
    },
    /// Any other type code.
    Unknown {
        /// Type code.
        code: u8,
        /// Raw record.
        raw: [u64; 4],
    },
}

impl Event {
    /// Decode a record given as four host-order words. Never fails.
    pub fn decode(w: [u64; 4]) -> Self {
        let code = field_get(EVTQ_0_ID, w[0]) as u8;
        let stream = StreamRef {
            sid: field_get(EVTQ_0_SID, w[0]) as u32,
            ssid: (w[0] & EVTQ_0_SSV != 0).then(|| field_get(EVTQ_0_SSID, w[0]) as u32),
        };
        let access = Access {
            addr: w[2],
            read: w[1] & EVTQ_1_RNW != 0,
            privileged: w[1] & EVTQ_1_PNU != 0,
            instruction: w[1] & EVTQ_1_IND != 0,
        };
        let s2 = w[1] & EVTQ_1_S2 != 0;
        let fault = TranslationFault {
            stream,
            access,
            stall: w[1] & EVTQ_1_STALL != 0,
            stag: field_get(EVTQ_1_STAG, w[1]) as u16,
            s2,
            class: match field_get(EVTQ_1_CLASS, w[1]) {
                0 => FaultClass::Cd,
                1 => FaultClass::TranslationTable,
                2 => FaultClass::InputAddress,
                _ => FaultClass::Reserved,
            },
            ipa: s2.then_some(w[3] & EVTQ_3_IPA),
        };
        let fetch_addr = w[3] & EVTQ_3_FETCH_ADDR;
        match code {
            EVT_ID_UUT => Event::Uut { stream, access },
            EVT_ID_BAD_STREAMID => Event::BadStreamId(stream),
            EVT_ID_STE_FETCH => Event::SteFetch { stream, fetch_addr },
            EVT_ID_BAD_STE => Event::BadSte(stream),
            EVT_ID_BAD_ATS_TREQ => Event::BadAtsTreq { stream, access },
            EVT_ID_STREAM_DISABLED => Event::StreamDisabled(stream),
            EVT_ID_TRANSL_FORBIDDEN => Event::TranslForbidden { stream, access },
            EVT_ID_BAD_SUBSTREAMID => Event::BadSubstreamId(stream),
            EVT_ID_CD_FETCH => Event::CdFetch { stream, fetch_addr },
            EVT_ID_BAD_CD => Event::BadCd(stream),
            EVT_ID_WALK_EABT => Event::WalkEabt { fault, fetch_addr },
            EVT_ID_TRANSLATION => Event::Translation(fault),
            EVT_ID_ADDR_SIZE => Event::AddrSize(fault),
            EVT_ID_ACCESS => Event::Access(fault),
            EVT_ID_PERMISSION => Event::Permission(fault),
            EVT_ID_TLB_CONFLICT => Event::TlbConflict {
                stream,
                addr: w[2],
                raw: w,
            },
            EVT_ID_CFG_CONFLICT => Event::CfgConflict { stream, raw: w },
            EVT_ID_PAGE_REQUEST => Event::PageRequest {
                stream,
                addr: w[2] & !0xfff,
                raw: w,
            },
            EVT_ID_VMS_FETCH => Event::VmsFetch { fetch_addr, raw: w },
            0xe0..=0xef => Event::ImplementationDefined { code, raw: w },
            _ => Event::Unknown { code, raw: w },
        }
    }

    /// Decode 32 little-endian bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        if b.len() != EVT_BYTES {
            return Err(Error::BadLength);
        }
        let mut w = [0u64; 4];
        for (i, c) in b.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            w[i] = u64::from_le_bytes(a);
        }
        Ok(Self::decode(w))
    }

    /// The StreamID, for every type that carries one.
    pub fn stream(&self) -> Option<StreamRef> {
        match self {
            Event::Uut { stream, .. }
            | Event::BadStreamId(stream)
            | Event::SteFetch { stream, .. }
            | Event::BadSte(stream)
            | Event::BadAtsTreq { stream, .. }
            | Event::StreamDisabled(stream)
            | Event::TranslForbidden { stream, .. }
            | Event::BadSubstreamId(stream)
            | Event::CdFetch { stream, .. }
            | Event::BadCd(stream)
            | Event::TlbConflict { stream, .. }
            | Event::CfgConflict { stream, .. }
            | Event::PageRequest { stream, .. } => Some(*stream),
            Event::WalkEabt { fault, .. }
            | Event::Translation(fault)
            | Event::AddrSize(fault)
            | Event::Access(fault)
            | Event::Permission(fault) => Some(fault.stream),
            Event::VmsFetch { .. }
            | Event::ImplementationDefined { .. }
            | Event::Unknown { .. } => None,
        }
    }
}

impl Event {
    /// The record's type code (EVT.Type).
    pub fn code(&self) -> u8 {
        match self {
            Event::Uut { .. } => EVT_ID_UUT,
            Event::BadStreamId(_) => EVT_ID_BAD_STREAMID,
            Event::SteFetch { .. } => EVT_ID_STE_FETCH,
            Event::BadSte(_) => EVT_ID_BAD_STE,
            Event::BadAtsTreq { .. } => EVT_ID_BAD_ATS_TREQ,
            Event::StreamDisabled(_) => EVT_ID_STREAM_DISABLED,
            Event::TranslForbidden { .. } => EVT_ID_TRANSL_FORBIDDEN,
            Event::BadSubstreamId(_) => EVT_ID_BAD_SUBSTREAMID,
            Event::CdFetch { .. } => EVT_ID_CD_FETCH,
            Event::BadCd(_) => EVT_ID_BAD_CD,
            Event::WalkEabt { .. } => EVT_ID_WALK_EABT,
            Event::Translation(_) => EVT_ID_TRANSLATION,
            Event::AddrSize(_) => EVT_ID_ADDR_SIZE,
            Event::Access(_) => EVT_ID_ACCESS,
            Event::Permission(_) => EVT_ID_PERMISSION,
            Event::TlbConflict { .. } => EVT_ID_TLB_CONFLICT,
            Event::CfgConflict { .. } => EVT_ID_CFG_CONFLICT,
            Event::PageRequest { .. } => EVT_ID_PAGE_REQUEST,
            Event::VmsFetch { .. } => EVT_ID_VMS_FETCH,
            Event::ImplementationDefined { code, .. } | Event::Unknown { code, .. } => *code,
        }
    }
}

impl fmt::Display for StreamRef {
    /// `sid=<hex> ssid=<hex|->`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sid={:#x} ssid=", self.sid)?;
        match self.ssid {
            Some(s) => write!(f, "{s:#x}"),
            None => f.write_str("-"),
        }
    }
}

impl fmt::Display for Access {
    /// `addr=<hex> rnw=<0|1> ind=<0|1> pnu=<0|1>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "addr={:#x} rnw={} ind={} pnu={}",
            self.addr,
            u8::from(self.read),
            u8::from(self.instruction),
            u8::from(self.privileged)
        )
    }
}

impl fmt::Display for FaultClass {
    /// The spec's CLASS mnemonics in lower case: `cd`, `tt`, `in`, or `reserved`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultClass::Cd => "cd",
            FaultClass::TranslationTable => "tt",
            FaultClass::InputAddress => "in",
            FaultClass::Reserved => "reserved",
        })
    }
}

impl fmt::Display for TranslationFault {
    /// `<stream> <access> class=<c> s2=<0|1> ipa=<hex|-> stall=<0|1> stag=<hex>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} class={} s2={} ipa=",
            self.stream,
            self.access,
            self.class,
            u8::from(self.s2)
        )?;
        match self.ipa {
            Some(ipa) => write!(f, "{ipa:#x}")?,
            None => f.write_str("-")?,
        }
        write!(f, " stall={} stag={:#x}", u8::from(self.stall), self.stag)
    }
}

struct Raw<'a>(&'a [u64; 4]);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.0;
        write!(f, "raw={:#x},{:#x},{:#x},{:#x}", w[0], w[1], w[2], w[3])
    }
}

/// The canonical one-line form of a record: `type=<hex>` followed by every field the
/// decoded type carries, as `key=value` in a fixed order, numbers in hexadecimal and
/// flags as 0/1 (`-` for an absent SubstreamID or IPA), for example
/// `type=0x10 sid=0x10 ssid=- addr=0x10000080 rnw=0 ind=0 pnu=0 class=cd s2=0 ipa=- stall=0 stag=0x0`.
/// Types whose reason fields are not decoded end with the raw record words
/// (`raw=<w0>,<w1>,<w2>,<w3>`).
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type={:#x}", self.code())?;
        match self {
            Event::Uut { stream, access }
            | Event::BadAtsTreq { stream, access }
            | Event::TranslForbidden { stream, access } => write!(f, " {stream} {access}"),
            Event::BadStreamId(stream)
            | Event::BadSte(stream)
            | Event::StreamDisabled(stream)
            | Event::BadSubstreamId(stream)
            | Event::BadCd(stream) => write!(f, " {stream}"),
            Event::SteFetch { stream, fetch_addr } | Event::CdFetch { stream, fetch_addr } => {
                write!(f, " {stream} fetch={fetch_addr:#x}")
            }
            Event::WalkEabt { fault, fetch_addr } => write!(f, " {fault} fetch={fetch_addr:#x}"),
            Event::Translation(fault)
            | Event::AddrSize(fault)
            | Event::Access(fault)
            | Event::Permission(fault) => write!(f, " {fault}"),
            Event::TlbConflict { stream, addr, raw } | Event::PageRequest { stream, addr, raw } => {
                write!(f, " {stream} addr={addr:#x} {}", Raw(raw))
            }
            Event::CfgConflict { stream, raw } => write!(f, " {stream} {}", Raw(raw)),
            Event::VmsFetch { fetch_addr, raw } => {
                write!(f, " fetch={fetch_addr:#x} {}", Raw(raw))
            }
            Event::ImplementationDefined { raw, .. } | Event::Unknown { raw, .. } => {
                write!(f, " {}", Raw(raw))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w0(code: u8, sid: u32, ssid: Option<u32>) -> u64 {
        u64::from(code)
            | (u64::from(sid) << 32)
            | ssid.map_or(0, |s| (1 << 11) | (u64::from(s) << 12))
    }

    #[test]
    fn translation_fault_fields() {
        let rec = [
            w0(0x10, 0x0008, None),
            (1 << 35) | (1 << 33) | (1 << 40) | (1 << 31) | 0x1234,
            0xdead_b000,
            0,
        ];
        let Event::Translation(f) = Event::decode(rec) else {
            panic!()
        };
        assert_eq!(f.stream, StreamRef { sid: 8, ssid: None });
        assert_eq!(
            f.access,
            Access {
                addr: 0xdead_b000,
                read: true,
                privileged: true,
                instruction: false
            }
        );
        assert!(f.stall);
        assert_eq!(f.stag, 0x1234);
        assert_eq!(f.class, FaultClass::TranslationTable);
        assert!(!f.s2);
        assert_eq!(f.ipa, None);
        let perm = [
            w0(0x13, 1, Some(0xfffff)),
            (1 << 34) | (1 << 39) | (2 << 40),
            0x1000,
            0x000f_ffff_ffff_f000 | 0xfff,
        ];
        let Event::Permission(p) = Event::decode(perm) else {
            panic!()
        };
        assert_eq!(p.stream.ssid, Some(0xfffff));
        assert!(p.access.instruction && !p.access.read && !p.access.privileged);
        assert_eq!(p.ipa, Some(0x000f_ffff_ffff_f000));
        assert_eq!(p.class, FaultClass::InputAddress);
        assert!(matches!(
            Event::decode([w0(0x11, 1, None), 0, 0, 0]),
            Event::AddrSize(_)
        ));
        assert!(matches!(
            Event::decode([w0(0x12, 1, None), 0, 0, 0]),
            Event::Access(_)
        ));
    }

    #[test]
    fn configuration_events() {
        let s = StreamRef {
            sid: 0x10,
            ssid: None,
        };
        assert_eq!(
            Event::decode([w0(0x02, 0x10, None), 0, 0, 0]),
            Event::BadStreamId(s)
        );
        assert_eq!(
            Event::decode([w0(0x04, 0x10, None), 0, 0, 0]),
            Event::BadSte(s)
        );
        assert_eq!(
            Event::decode([w0(0x06, 0x10, None), 0, 0, 0]),
            Event::StreamDisabled(s)
        );
        assert_eq!(
            Event::decode([w0(0x0a, 0x10, None), 0, 0, 0]),
            Event::BadCd(s)
        );
        assert_eq!(
            Event::decode([w0(0x08, 0x10, Some(3)), 0, 0, 0]),
            Event::BadSubstreamId(StreamRef {
                sid: 0x10,
                ssid: Some(3)
            })
        );
        assert_eq!(
            Event::decode([w0(0x03, 0x10, None), 0, 0, 0x4000_0048]),
            Event::SteFetch {
                stream: s,
                fetch_addr: 0x4000_0048
            }
        );
        assert_eq!(
            Event::decode([w0(0x09, 0x10, None), 0, 0, 0xffff_0000_4000_0047]),
            Event::CdFetch {
                stream: s,
                fetch_addr: 0x000f_0000_4000_0040
            }
        );
        let Event::WalkEabt { fault, fetch_addr } =
            Event::decode([w0(0x0b, 0x10, None), 1 << 35, 0x5000, 0x8008])
        else {
            panic!()
        };
        assert_eq!((fault.access.addr, fetch_addr), (0x5000, 0x8008));
        assert!(matches!(
            Event::decode([w0(0x01, 0x10, None), 1 << 35, 7, 0]),
            Event::Uut {
                access: Access {
                    addr: 7,
                    read: true,
                    ..
                },
                ..
            }
        ));
        assert!(matches!(
            Event::decode([w0(0x05, 1, None), 0, 0, 0]),
            Event::BadAtsTreq { .. }
        ));
        assert!(matches!(
            Event::decode([w0(0x07, 1, None), 1 << 35, 0x9000, 0]),
            Event::TranslForbidden {
                access: Access {
                    addr: 0x9000,
                    read: true,
                    ..
                },
                ..
            }
        ));
        assert!(matches!(
            Event::decode([w0(0x20, 1, None), 0, 0x10, 0]),
            Event::TlbConflict { addr: 0x10, .. }
        ));
        assert!(matches!(
            Event::decode([w0(0x21, 1, None), 0, 0, 0]),
            Event::CfgConflict { .. }
        ));
        assert!(matches!(
            Event::decode([w0(0x24, 1, None), 0, 0x1fff, 0]),
            Event::PageRequest { addr: 0x1000, .. }
        ));
        assert!(matches!(
            Event::decode([w0(0x25, 0, None), 0, 0, 0x88]),
            Event::VmsFetch {
                fetch_addr: 0x88,
                ..
            }
        ));
        assert!(matches!(
            Event::decode([0xe3, 0, 0, 0]),
            Event::ImplementationDefined { code: 0xe3, .. }
        ));
        assert_eq!(
            Event::decode([0x0c, 1, 2, 3]),
            Event::Unknown {
                code: 0x0c,
                raw: [0x0c, 1, 2, 3]
            }
        );
        assert_eq!(Event::decode([0x0c, 1, 2, 3]).stream(), None);
        assert_eq!(
            Event::decode([w0(0x04, 5, None), 0, 0, 0])
                .stream()
                .unwrap()
                .sid,
            5
        );
    }

    #[test]
    fn canonical_form_names_every_field() {
        extern crate std;
        use std::string::ToString;

        let tr = Event::decode([
            w0(0x10, 0x10, None),
            (1 << 35) | (1 << 40) | (1 << 31) | 0x12,
            0x4000_0040,
            0,
        ]);
        assert_eq!(
            tr.to_string(),
            "type=0x10 sid=0x10 ssid=- addr=0x40000040 rnw=1 ind=0 pnu=0 class=tt s2=0 ipa=- \
             stall=1 stag=0x12"
        );
        let perm = Event::decode([
            w0(0x13, 0x100, Some(5)),
            (1 << 34) | (1 << 33) | (1 << 39) | (2 << 40),
            0x1000_0080,
            0x0000_0012_3456_7fff,
        ]);
        assert_eq!(
            perm.to_string(),
            "type=0x13 sid=0x100 ssid=0x5 addr=0x10000080 rnw=0 ind=1 pnu=1 class=in s2=1 \
             ipa=0x1234567000 stall=0 stag=0x0"
        );
        assert_eq!(
            Event::decode([w0(0x04, 0x10, None), 0, 0, 0]).to_string(),
            "type=0x4 sid=0x10 ssid=-"
        );
        assert_eq!(
            Event::decode([w0(0x08, 1, Some(0xfffff)), 0, 0, 0]).to_string(),
            "type=0x8 sid=0x1 ssid=0xfffff"
        );
        assert_eq!(
            Event::decode([w0(0x03, 2, None), 0, 0, 0x4000_0048]).to_string(),
            "type=0x3 sid=0x2 ssid=- fetch=0x40000048"
        );
        assert_eq!(
            Event::decode([w0(0x0b, 2, None), 1 << 40, 0x5000, 0x8008]).to_string(),
            "type=0xb sid=0x2 ssid=- addr=0x5000 rnw=0 ind=0 pnu=0 class=tt s2=0 ipa=- \
             stall=0 stag=0x0 fetch=0x8008"
        );
        assert_eq!(
            Event::decode([0x0c, 1, 2, 3]).to_string(),
            "type=0xc raw=0xc,0x1,0x2,0x3"
        );
        assert_eq!(
            Event::decode([w0(0x24, 1, None), 0, 0x1fff, 0]).to_string(),
            "type=0x24 sid=0x1 ssid=- addr=0x1000 raw=0x100000024,0x0,0x1fff,0x0"
        );
        // Records that differ in any decoded field print differently; equal records print
        // the same; the type code always comes first and the form is one line.
        let base = [w0(0x10, 8, None), 1 << 35, 0x1000, 0];
        let variants = [
            [w0(0x10, 9, None), 1 << 35, 0x1000, 0],
            [w0(0x10, 8, Some(0)), 1 << 35, 0x1000, 0],
            [w0(0x10, 8, None), 0, 0x1000, 0],
            [w0(0x10, 8, None), (1 << 35) | (1 << 34), 0x1000, 0],
            [w0(0x10, 8, None), (1 << 35) | (1 << 33), 0x1000, 0],
            [w0(0x10, 8, None), (1 << 35) | (1 << 40), 0x1000, 0],
            [w0(0x10, 8, None), (1 << 35) | (1 << 39), 0x1000, 0x2000],
            [w0(0x10, 8, None), (1 << 35) | (1 << 31), 0x1000, 0],
            [w0(0x10, 8, None), (1 << 35) | 1, 0x1000, 0],
            [w0(0x10, 8, None), 1 << 35, 0x1004, 0],
            [w0(0x11, 8, None), 1 << 35, 0x1000, 0],
        ];
        let b = Event::decode(base).to_string();
        assert_eq!(b, Event::decode(base).to_string());
        for v in variants {
            assert_ne!(Event::decode(v).to_string(), b, "{v:x?}");
        }
        for code in 0..=255u8 {
            let e = Event::decode([u64::from(code) | (7 << 32), 1 << 35, 0x40, 0x80]);
            let s = e.to_string();
            assert!(s.starts_with(&std::format!("type={code:#x}")), "{s}");
            assert!(!s.contains('\n'));
            assert_eq!(e.code(), code);
        }
    }

    #[test]
    fn bytes_and_arbitrary_input() {
        let mut b = [0u8; 32];
        b[0] = 0x10;
        b[4] = 0x2a;
        b[12] = 0x08; // word 1 bit 35 (RnW)
        b[16] = 0x00;
        b[17] = 0x30;
        let e = Event::from_bytes(&b).unwrap();
        let Event::Translation(f) = e else { panic!() };
        assert_eq!(
            (f.stream.sid, f.access.addr, f.access.read),
            (0x2a, 0x3000, true)
        );
        assert_eq!(Event::from_bytes(&b[..31]), Err(Error::BadLength));
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = Event::decode([x, x.rotate_left(9), x.rotate_left(19), x.rotate_left(33)]);
            let _ = e.stream();
        }
        for code in 0..=255u8 {
            let _ = Event::decode([
                u64::from(code) | u64::MAX << 8,
                u64::MAX,
                u64::MAX,
                u64::MAX,
            ]);
        }
    }
}
