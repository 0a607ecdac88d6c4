//! Command encodings (SMMUv3 spec chapter 4 "Commands": §4.2 prefetch, §4.3
//! configuration invalidation, §4.4 TLB invalidation, §4.6 CMD_PRI_RESP, §4.7 CMD_SYNC,
//! §4.8 CMD_RESUME / CMD_STALL_TERM). A command is 16 bytes: two little-endian words,
//! the opcode in word 0 bits `[7:0]`.

use crate::error::Error;
use crate::regs::{field_get, field_prep, genmask};

/// Bytes per command queue entry.
pub const CMD_BYTES: usize = 16;

/// CMD.Opcode `[7:0]`.
pub const CMDQ_0_OP: u64 = genmask(7, 0);
/// CMD.SSV (word 0 bit 11): the SubstreamID field is valid.
pub const CMDQ_0_SSV: u64 = 1 << 11;

/// CMD_PREFETCH_CONFIG.
pub const CMDQ_OP_PREFETCH_CFG: u8 = 0x01;
/// CMD_CFGI_STE.
pub const CMDQ_OP_CFGI_STE: u8 = 0x03;
/// CMD_CFGI_STE_RANGE (CMD_CFGI_ALL is this opcode with Range = 31).
pub const CMDQ_OP_CFGI_STE_RANGE: u8 = 0x04;
/// CMD_CFGI_CD.
pub const CMDQ_OP_CFGI_CD: u8 = 0x05;
/// CMD_CFGI_CD_ALL.
pub const CMDQ_OP_CFGI_CD_ALL: u8 = 0x06;
/// CMD_TLBI_NH_ALL.
pub const CMDQ_OP_TLBI_NH_ALL: u8 = 0x10;
/// CMD_TLBI_NH_ASID.
pub const CMDQ_OP_TLBI_NH_ASID: u8 = 0x11;
/// CMD_TLBI_NH_VA.
pub const CMDQ_OP_TLBI_NH_VA: u8 = 0x12;
/// CMD_TLBI_NH_VAA.
pub const CMDQ_OP_TLBI_NH_VAA: u8 = 0x13;
/// CMD_TLBI_EL2_ALL.
pub const CMDQ_OP_TLBI_EL2_ALL: u8 = 0x20;
/// CMD_TLBI_EL2_ASID.
pub const CMDQ_OP_TLBI_EL2_ASID: u8 = 0x21;
/// CMD_TLBI_S12_VMALL.
pub const CMDQ_OP_TLBI_S12_VMALL: u8 = 0x28;
/// CMD_TLBI_NSNH_ALL.
pub const CMDQ_OP_TLBI_NSNH_ALL: u8 = 0x30;
/// CMD_PRI_RESP.
pub const CMDQ_OP_PRI_RESP: u8 = 0x41;
/// CMD_RESUME.
pub const CMDQ_OP_RESUME: u8 = 0x44;
/// CMD_STALL_TERM.
pub const CMDQ_OP_STALL_TERM: u8 = 0x45;
/// CMD_SYNC.
pub const CMDQ_OP_CMD_SYNC: u8 = 0x46;

/// Configuration commands: SubstreamID `[31:12]`.
pub const CMDQ_CFGI_0_SSID: u64 = genmask(31, 12);
/// Configuration commands: StreamID `[63:32]`.
pub const CMDQ_CFGI_0_SID: u64 = genmask(63, 32);
/// CFGI_STE / CFGI_CD: Leaf (word 1 bit 0).
pub const CMDQ_CFGI_1_LEAF: u64 = 1 << 0;
/// CFGI_STE_RANGE: Range `[4:0]` of word 1; 2^(Range+1) StreamIDs.
pub const CMDQ_CFGI_1_RANGE: u64 = genmask(4, 0);

/// TLBI: NUM `[16:12]` (range = (NUM + 1) * 2^SCALE granules).
pub const CMDQ_TLBI_0_NUM: u64 = genmask(16, 12);
/// TLBI: SCALE `[24:20]`.
pub const CMDQ_TLBI_0_SCALE: u64 = genmask(24, 20);
/// TLBI: VMID `[47:32]`.
pub const CMDQ_TLBI_0_VMID: u64 = genmask(47, 32);
/// TLBI: ASID `[63:48]`.
pub const CMDQ_TLBI_0_ASID: u64 = genmask(63, 48);
/// TLBI: Leaf (word 1 bit 0).
pub const CMDQ_TLBI_1_LEAF: u64 = 1 << 0;
/// TLBI: TTL `[9:8]`, level hint.
pub const CMDQ_TLBI_1_TTL: u64 = genmask(9, 8);
/// TLBI: TG `[11:10]`, granule of a range invalidation (0 = not a range, 1 = 4KB,
/// 2 = 16KB, 3 = 64KB).
pub const CMDQ_TLBI_1_TG: u64 = genmask(11, 10);
/// TLBI: Address `[63:12]`.
pub const CMDQ_TLBI_1_VA: u64 = genmask(63, 12);

/// PRI_RESP: PRG index `[8:0]` of word 1.
pub const CMDQ_PRI_1_GRPID: u64 = genmask(8, 0);
/// PRI_RESP: Resp `[13:12]` of word 1.
pub const CMDQ_PRI_1_RESP: u64 = genmask(13, 12);
/// RESUME: Action `[13:12]` of word 0.
pub const CMDQ_RESUME_0_ACTION: u64 = genmask(13, 12);
/// RESUME: STAG `[15:0]` of word 1.
pub const CMDQ_RESUME_1_STAG: u64 = genmask(15, 0);

/// CMD_SYNC: CS `[13:12]` completion signal.
pub const CMDQ_SYNC_0_CS: u64 = genmask(13, 12);
/// CMD_SYNC: MSH `[23:22]` MSI shareability.
pub const CMDQ_SYNC_0_MSH: u64 = genmask(23, 22);
/// CMD_SYNC: MSIAttr `[27:24]`.
pub const CMDQ_SYNC_0_MSIATTR: u64 = genmask(27, 24);
/// CMD_SYNC: MSIData `[63:32]`.
pub const CMDQ_SYNC_0_MSIDATA: u64 = genmask(63, 32);
/// CMD_SYNC: MSIAddress `[51:2]` of word 1.
pub const CMDQ_SYNC_1_MSIADDR: u64 = genmask(51, 2);

/// Range part of a TLBI (SMMUv3.2 / IDR3.RIL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRange {
    /// NUM (0..=31): the range has NUM + 1 chunks.
    pub num: u8,
    /// SCALE (0..=31): each chunk is 2^SCALE granules.
    pub scale: u8,
    /// TG: 1 = 4KB, 2 = 16KB, 3 = 64KB.
    pub tg: u8,
}

impl TlbiRange {
    /// Granules covered.
    pub fn granules(&self) -> u64 {
        (u64::from(self.num) + 1) << self.scale
    }
}

/// CMD_SYNC completion signal (CS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncSignal {
    /// SIG_NONE: completion is seen by polling CMDQ_CONS.
    None,
    /// SIG_IRQ: write MSIData to MSIAddress (needs IDR0.MSI).
    Irq {
        /// MSI target.
        addr: u64,
        /// MSI payload.
        data: u32,
        /// MSIAttr.
        attr: u8,
        /// MSH.
        sh: u8,
    },
    /// SIG_SEV: send an event (needs IDR0.SEV).
    Sev,
}

/// PRI response (CMD_PRI_RESP.Resp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriResponse {
    /// Invalid request.
    Deny,
    /// Failure.
    Fail,
    /// Success.
    Success,
}

/// What a stalled transaction does (CMD_RESUME.Action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeAction {
    /// Terminate (abort or RAZ/WI per the configuration).
    Terminate,
    /// Retry the translation.
    Retry,
    /// Abort.
    Abort,
}

/// A command queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Prefetch the configuration of a stream.
    PrefetchConfig {
        /// StreamID.
        sid: u32,
        /// SubstreamID.
        ssid: Option<u32>,
    },
    /// Invalidate the cached STE of `sid` (Leaf: only the STE, not L1 descriptors).
    CfgiSte {
        /// StreamID.
        sid: u32,
        /// Leaf.
        leaf: bool,
    },
    /// Invalidate STEs `sid & !(2^(range+1)-1)` .. + 2^(range+1).
    CfgiSteRange {
        /// StreamID.
        sid: u32,
        /// Range (0..=31).
        range: u8,
    },
    /// Invalidate all configuration (CFGI_STE_RANGE with Range = 31).
    CfgiAll,
    /// Invalidate a cached CD.
    CfgiCd {
        /// StreamID.
        sid: u32,
        /// SubstreamID.
        ssid: u32,
        /// Leaf: only the CD (not L1 CD descriptors).
        leaf: bool,
    },
    /// Invalidate all CDs of a stream.
    CfgiCdAll {
        /// StreamID.
        sid: u32,
    },
    /// Invalidate all non-hyp stage-1 entries of a VMID.
    TlbiNhAll {
        /// VMID.
        vmid: u16,
    },
    /// Invalidate by ASID.
    TlbiNhAsid {
        /// ASID.
        asid: u16,
        /// VMID.
        vmid: u16,
    },
    /// Invalidate by address (and ASID), optionally a range.
    TlbiNhVa {
        /// ASID.
        asid: u16,
        /// VMID.
        vmid: u16,
        /// Address (4KB aligned; bits `[11:0]` ignored).
        addr: u64,
        /// Only leaf entries.
        leaf: bool,
        /// TTL level hint (0 = none).
        ttl: u8,
        /// Range fields (None: a single address).
        range: Option<TlbiRange>,
    },
    /// Invalidate by address, all ASIDs.
    TlbiNhVaa {
        /// VMID.
        vmid: u16,
        /// Address.
        addr: u64,
        /// Only leaf entries.
        leaf: bool,
    },
    /// Invalidate all EL2 entries.
    TlbiEl2All,
    /// Invalidate EL2 entries of an ASID.
    TlbiEl2Asid {
        /// ASID.
        asid: u16,
    },
    /// Invalidate stage-1 and stage-2 entries of a VMID.
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// Invalidate all non-secure non-hyp entries.
    TlbiNsnhAll,
    /// Respond to a PRI page request group.
    PriResp {
        /// StreamID.
        sid: u32,
        /// SubstreamID.
        ssid: Option<u32>,
        /// Page request group index.
        grpid: u16,
        /// Response.
        resp: PriResponse,
    },
    /// Resume a stalled transaction.
    Resume {
        /// StreamID.
        sid: u32,
        /// Stall tag from the fault event.
        stag: u16,
        /// Action.
        action: ResumeAction,
    },
    /// Terminate all stalled transactions of a stream.
    StallTerm {
        /// StreamID.
        sid: u32,
    },
    /// Wait for completion of all earlier commands.
    Sync(SyncSignal),
}

fn op(o: u8) -> u64 {
    u64::from(o)
}

fn sid(s: u32) -> u64 {
    field_prep(CMDQ_CFGI_0_SID, u64::from(s))
}

fn ssid(s: Option<u32>) -> u64 {
    match s {
        Some(v) => CMDQ_0_SSV | field_prep(CMDQ_CFGI_0_SSID, u64::from(v)),
        None => 0,
    }
}

impl Command {
    /// Opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Command::PrefetchConfig { .. } => CMDQ_OP_PREFETCH_CFG,
            Command::CfgiSte { .. } => CMDQ_OP_CFGI_STE,
            Command::CfgiSteRange { .. } | Command::CfgiAll => CMDQ_OP_CFGI_STE_RANGE,
            Command::CfgiCd { .. } => CMDQ_OP_CFGI_CD,
            Command::CfgiCdAll { .. } => CMDQ_OP_CFGI_CD_ALL,
            Command::TlbiNhAll { .. } => CMDQ_OP_TLBI_NH_ALL,
            Command::TlbiNhAsid { .. } => CMDQ_OP_TLBI_NH_ASID,
            Command::TlbiNhVa { .. } => CMDQ_OP_TLBI_NH_VA,
            Command::TlbiNhVaa { .. } => CMDQ_OP_TLBI_NH_VAA,
            Command::TlbiEl2All => CMDQ_OP_TLBI_EL2_ALL,
            Command::TlbiEl2Asid { .. } => CMDQ_OP_TLBI_EL2_ASID,
            Command::TlbiS12Vmall { .. } => CMDQ_OP_TLBI_S12_VMALL,
            Command::TlbiNsnhAll => CMDQ_OP_TLBI_NSNH_ALL,
            Command::PriResp { .. } => CMDQ_OP_PRI_RESP,
            Command::Resume { .. } => CMDQ_OP_RESUME,
            Command::StallTerm { .. } => CMDQ_OP_STALL_TERM,
            Command::Sync(_) => CMDQ_OP_CMD_SYNC,
        }
    }

    /// The two words of the queue entry (host order; stored little-endian).
    pub fn encode(&self) -> [u64; 2] {
        let o = op(self.opcode());
        let vmid = |v: u16| field_prep(CMDQ_TLBI_0_VMID, u64::from(v));
        let asid = |a: u16| field_prep(CMDQ_TLBI_0_ASID, u64::from(a));
        let leaf = |l: bool| if l { CMDQ_CFGI_1_LEAF } else { 0 };
        match *self {
            Command::PrefetchConfig { sid: s, ssid: ss } => [o | sid(s) | ssid(ss), 0],
            Command::CfgiSte { sid: s, leaf: l } => [o | sid(s), leaf(l)],
            Command::CfgiSteRange { sid: s, range } => {
                [o | sid(s), field_prep(CMDQ_CFGI_1_RANGE, u64::from(range))]
            }
            Command::CfgiAll => [o, field_prep(CMDQ_CFGI_1_RANGE, 31)],
            Command::CfgiCd {
                sid: s,
                ssid: ss,
                leaf: l,
            } => [
                o | sid(s) | field_prep(CMDQ_CFGI_0_SSID, u64::from(ss)),
                leaf(l),
            ],
            Command::CfgiCdAll { sid: s } => [o | sid(s), 0],
            Command::TlbiNhAll { vmid: v } => [o | vmid(v), 0],
            Command::TlbiNhAsid { asid: a, vmid: v } => [o | vmid(v) | asid(a), 0],
            Command::TlbiNhVa {
                asid: a,
                vmid: v,
                addr,
                leaf: l,
                ttl,
                range,
            } => {
                let (num, scale, tg) = match range {
                    Some(r) => (r.num, r.scale, r.tg),
                    None => (0, 0, 0),
                };
                [
                    o | vmid(v)
                        | asid(a)
                        | field_prep(CMDQ_TLBI_0_NUM, u64::from(num))
                        | field_prep(CMDQ_TLBI_0_SCALE, u64::from(scale)),
                    (addr & CMDQ_TLBI_1_VA)
                        | field_prep(CMDQ_TLBI_1_TTL, u64::from(ttl))
                        | field_prep(CMDQ_TLBI_1_TG, u64::from(tg))
                        | if l { CMDQ_TLBI_1_LEAF } else { 0 },
                ]
            }
            Command::TlbiNhVaa {
                vmid: v,
                addr,
                leaf: l,
            } => [
                o | vmid(v),
                (addr & CMDQ_TLBI_1_VA) | if l { CMDQ_TLBI_1_LEAF } else { 0 },
            ],
            Command::TlbiEl2All | Command::TlbiNsnhAll => [o, 0],
            Command::TlbiEl2Asid { asid: a } => [o | asid(a), 0],
            Command::TlbiS12Vmall { vmid: v } => [o | vmid(v), 0],
            Command::PriResp {
                sid: s,
                ssid: ss,
                grpid,
                resp,
            } => {
                let r = match resp {
                    PriResponse::Deny => 0,
                    PriResponse::Fail => 1,
                    PriResponse::Success => 2,
                };
                [
                    o | sid(s) | ssid(ss),
                    field_prep(CMDQ_PRI_1_GRPID, u64::from(grpid)) | field_prep(CMDQ_PRI_1_RESP, r),
                ]
            }
            Command::Resume {
                sid: s,
                stag,
                action,
            } => {
                let a = match action {
                    ResumeAction::Terminate => 0,
                    ResumeAction::Retry => 1,
                    ResumeAction::Abort => 2,
                };
                [
                    o | sid(s) | field_prep(CMDQ_RESUME_0_ACTION, a),
                    field_prep(CMDQ_RESUME_1_STAG, u64::from(stag)),
                ]
            }
            Command::StallTerm { sid: s } => [o | sid(s), 0],
            Command::Sync(sig) => match sig {
                SyncSignal::None => [o | field_prep(CMDQ_SYNC_0_CS, 0), 0],
                SyncSignal::Sev => [o | field_prep(CMDQ_SYNC_0_CS, 2), 0],
                SyncSignal::Irq {
                    addr,
                    data,
                    attr,
                    sh,
                } => [
                    o | field_prep(CMDQ_SYNC_0_CS, 1)
                        | field_prep(CMDQ_SYNC_0_MSH, u64::from(sh))
                        | field_prep(CMDQ_SYNC_0_MSIATTR, u64::from(attr))
                        | field_prep(CMDQ_SYNC_0_MSIDATA, u64::from(data)),
                    addr & CMDQ_SYNC_1_MSIADDR,
                ],
            },
        }
    }

    /// Decode an entry (used by test models and diagnostics). Unknown opcodes and
    /// reserved field values are errors, never panics.
    pub fn decode(w: [u64; 2]) -> Result<Self, Error> {
        let o = field_get(CMDQ_0_OP, w[0]) as u8;
        let s = field_get(CMDQ_CFGI_0_SID, w[0]) as u32;
        let ss = field_get(CMDQ_CFGI_0_SSID, w[0]) as u32;
        let ssv = (w[0] & CMDQ_0_SSV != 0).then_some(ss);
        let vmid = field_get(CMDQ_TLBI_0_VMID, w[0]) as u16;
        let asid = field_get(CMDQ_TLBI_0_ASID, w[0]) as u16;
        let leaf = w[1] & 1 != 0;
        Ok(match o {
            CMDQ_OP_PREFETCH_CFG => Command::PrefetchConfig { sid: s, ssid: ssv },
            CMDQ_OP_CFGI_STE => Command::CfgiSte { sid: s, leaf },
            CMDQ_OP_CFGI_STE_RANGE => {
                let range = field_get(CMDQ_CFGI_1_RANGE, w[1]) as u8;
                if range == 31 {
                    Command::CfgiAll
                } else {
                    Command::CfgiSteRange { sid: s, range }
                }
            }
            CMDQ_OP_CFGI_CD => Command::CfgiCd {
                sid: s,
                ssid: ss,
                leaf,
            },
            CMDQ_OP_CFGI_CD_ALL => Command::CfgiCdAll { sid: s },
            CMDQ_OP_TLBI_NH_ALL => Command::TlbiNhAll { vmid },
            CMDQ_OP_TLBI_NH_ASID => Command::TlbiNhAsid { asid, vmid },
            CMDQ_OP_TLBI_NH_VA => {
                let tg = field_get(CMDQ_TLBI_1_TG, w[1]) as u8;
                Command::TlbiNhVa {
                    asid,
                    vmid,
                    addr: w[1] & CMDQ_TLBI_1_VA,
                    leaf,
                    ttl: field_get(CMDQ_TLBI_1_TTL, w[1]) as u8,
                    range: (tg != 0).then(|| TlbiRange {
                        num: field_get(CMDQ_TLBI_0_NUM, w[0]) as u8,
                        scale: field_get(CMDQ_TLBI_0_SCALE, w[0]) as u8,
                        tg,
                    }),
                }
            }
            CMDQ_OP_TLBI_NH_VAA => Command::TlbiNhVaa {
                vmid,
                addr: w[1] & CMDQ_TLBI_1_VA,
                leaf,
            },
            CMDQ_OP_TLBI_EL2_ALL => Command::TlbiEl2All,
            CMDQ_OP_TLBI_EL2_ASID => Command::TlbiEl2Asid { asid },
            CMDQ_OP_TLBI_S12_VMALL => Command::TlbiS12Vmall { vmid },
            CMDQ_OP_TLBI_NSNH_ALL => Command::TlbiNsnhAll,
            CMDQ_OP_PRI_RESP => Command::PriResp {
                sid: s,
                ssid: ssv,
                grpid: field_get(CMDQ_PRI_1_GRPID, w[1]) as u16,
                resp: match field_get(CMDQ_PRI_1_RESP, w[1]) {
                    0 => PriResponse::Deny,
                    1 => PriResponse::Fail,
                    2 => PriResponse::Success,
                    _ => return Err(Error::InvalidField("PRI_RESP.Resp")),
                },
            },
            CMDQ_OP_RESUME => Command::Resume {
                sid: s,
                stag: field_get(CMDQ_RESUME_1_STAG, w[1]) as u16,
                action: match field_get(CMDQ_RESUME_0_ACTION, w[0]) {
                    0 => ResumeAction::Terminate,
                    1 => ResumeAction::Retry,
                    2 => ResumeAction::Abort,
                    _ => return Err(Error::InvalidField("RESUME.Action")),
                },
            },
            CMDQ_OP_STALL_TERM => Command::StallTerm { sid: s },
            CMDQ_OP_CMD_SYNC => Command::Sync(match field_get(CMDQ_SYNC_0_CS, w[0]) {
                0 => SyncSignal::None,
                1 => SyncSignal::Irq {
                    addr: w[1] & CMDQ_SYNC_1_MSIADDR,
                    data: field_get(CMDQ_SYNC_0_MSIDATA, w[0]) as u32,
                    attr: field_get(CMDQ_SYNC_0_MSIATTR, w[0]) as u8,
                    sh: field_get(CMDQ_SYNC_0_MSH, w[0]) as u8,
                },
                2 => SyncSignal::Sev,
                _ => return Err(Error::InvalidField("CMD_SYNC.CS")),
            }),
            _ => return Err(Error::InvalidField("opcode")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfgi_encodings() {
        assert_eq!(
            Command::CfgiSte {
                sid: 0x1234,
                leaf: true
            }
            .encode(),
            [0x0000_1234_0000_0003, 1]
        );
        assert_eq!(
            Command::CfgiSte {
                sid: 7,
                leaf: false
            }
            .encode(),
            [0x0000_0007_0000_0003, 0]
        );
        assert_eq!(
            Command::CfgiSteRange {
                sid: 0x100,
                range: 7
            }
            .encode(),
            [0x0000_0100_0000_0004, 7]
        );
        assert_eq!(Command::CfgiAll.encode(), [0x04, 31]);
        assert_eq!(
            Command::CfgiCd {
                sid: 0x10,
                ssid: 0xabcde,
                leaf: true
            }
            .encode(),
            [0x0000_0010_abcd_e005, 1]
        );
        assert_eq!(
            Command::CfgiCdAll { sid: 0xffff_ffff }.encode(),
            [0xffff_ffff_0000_0006, 0]
        );
        assert_eq!(
            Command::PrefetchConfig {
                sid: 2,
                ssid: Some(5)
            }
            .encode(),
            [0x0000_0002_0000_5801, 0]
        );
    }

    #[test]
    fn tlbi_encodings() {
        assert_eq!(
            Command::TlbiNhAll { vmid: 3 }.encode(),
            [0x0000_0003_0000_0010, 0]
        );
        assert_eq!(
            Command::TlbiNhAsid {
                asid: 0xabcd,
                vmid: 3
            }
            .encode(),
            [0xabcd_0003_0000_0011, 0]
        );
        assert_eq!(Command::TlbiNsnhAll.encode(), [0x30, 0]);
        assert_eq!(Command::TlbiEl2All.encode(), [0x20, 0]);
        assert_eq!(
            Command::TlbiEl2Asid { asid: 9 }.encode(),
            [0x0009_0000_0000_0021, 0]
        );
        assert_eq!(
            Command::TlbiS12Vmall { vmid: 9 }.encode(),
            [0x0000_0009_0000_0028, 0]
        );
        let va = Command::TlbiNhVa {
            asid: 1,
            vmid: 0,
            addr: 0x1234_5678_9abc_d000,
            leaf: true,
            ttl: 3,
            range: None,
        };
        assert_eq!(va.encode(), [0x0001_0000_0000_0012, 0x1234_5678_9abc_d301]);
        let r = Command::TlbiNhVa {
            asid: 2,
            vmid: 0,
            addr: 0x4000_0000,
            leaf: false,
            ttl: 0,
            range: Some(TlbiRange {
                num: 31,
                scale: 9,
                tg: 1,
            }),
        };
        let w = r.encode();
        assert_eq!((w[0] >> 12) & 0x1f, 31, "NUM");
        assert_eq!((w[0] >> 20) & 0x1f, 9, "SCALE");
        assert_eq!((w[1] >> 10) & 3, 1, "TG 4K");
        assert_eq!(w[1] & 1, 0);
        assert_eq!(w[1] & !0xfff, 0x4000_0000);
        assert_eq!(
            TlbiRange {
                num: 31,
                scale: 9,
                tg: 1
            }
            .granules(),
            32 * 512
        );
        assert_eq!(
            Command::TlbiNhVaa {
                vmid: 1,
                addr: 0x5000,
                leaf: true
            }
            .encode(),
            [0x0000_0001_0000_0013, 0x5001]
        );
    }

    #[test]
    fn sync_pri_resume_encodings() {
        assert_eq!(Command::Sync(SyncSignal::None).encode(), [0x46, 0]);
        assert_eq!(Command::Sync(SyncSignal::Sev).encode(), [0x2046, 0]);
        let m = Command::Sync(SyncSignal::Irq {
            addr: 0x0009_0000_0040,
            data: 0xdead_beef,
            attr: 0xf,
            sh: 3,
        })
        .encode();
        assert_eq!(
            m[0],
            0xdead_beef_0000_0000 | (0xf << 24) | (3 << 22) | (1 << 12) | 0x46
        );
        assert_eq!(m[1], 0x0009_0000_0040);
        assert_eq!(
            Command::PriResp {
                sid: 5,
                ssid: Some(3),
                grpid: 0x1ff,
                resp: PriResponse::Success
            }
            .encode(),
            [0x0000_0005_0000_3841, 0x21ff]
        );
        assert_eq!(
            Command::Resume {
                sid: 8,
                stag: 0xbeef,
                action: ResumeAction::Retry
            }
            .encode(),
            [0x0000_0008_0000_1044, 0xbeef]
        );
        assert_eq!(
            Command::Resume {
                sid: 8,
                stag: 1,
                action: ResumeAction::Abort
            }
            .encode()[0]
                & 0x3000,
            0x2000
        );
        assert_eq!(
            Command::StallTerm { sid: 1 }.encode(),
            [0x0000_0001_0000_0045, 0]
        );
    }

    #[test]
    fn decode_round_trips() {
        let cmds = [
            Command::PrefetchConfig { sid: 1, ssid: None },
            Command::CfgiSte { sid: 3, leaf: true },
            Command::CfgiSteRange {
                sid: 0x40,
                range: 5,
            },
            Command::CfgiAll,
            Command::CfgiCd {
                sid: 1,
                ssid: 2,
                leaf: false,
            },
            Command::CfgiCdAll { sid: 4 },
            Command::TlbiNhAll { vmid: 1 },
            Command::TlbiNhAsid { asid: 5, vmid: 0 },
            Command::TlbiNhVa {
                asid: 5,
                vmid: 0,
                addr: 0x7000,
                leaf: true,
                ttl: 0,
                range: Some(TlbiRange {
                    num: 0,
                    scale: 9,
                    tg: 1,
                }),
            },
            Command::TlbiNhVaa {
                vmid: 0,
                addr: 0x1000,
                leaf: false,
            },
            Command::TlbiEl2All,
            Command::TlbiEl2Asid { asid: 1 },
            Command::TlbiS12Vmall { vmid: 2 },
            Command::TlbiNsnhAll,
            Command::PriResp {
                sid: 1,
                ssid: None,
                grpid: 3,
                resp: PriResponse::Deny,
            },
            Command::Resume {
                sid: 1,
                stag: 2,
                action: ResumeAction::Terminate,
            },
            Command::StallTerm { sid: 9 },
            Command::Sync(SyncSignal::Sev),
            Command::Sync(SyncSignal::Irq {
                addr: 0x1000,
                data: 1,
                attr: 1,
                sh: 2,
            }),
        ];
        for c in cmds {
            assert_eq!(Command::decode(c.encode()), Ok(c));
        }
        assert!(Command::decode([0xff, 0]).is_err());
        assert!(Command::decode([0x3046, 0]).is_err());
    }
}
