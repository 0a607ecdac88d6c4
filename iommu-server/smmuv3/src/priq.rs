//! PRI queue records (SMMUv3 spec chapter 8 "Page request queue", the PRI queue record
//! layout): 16 bytes, two little-endian words, one per PCIe PRI Page Request the SMMU
//! received. Software answers a page request group (the requests with one PRG index, the
//! last of them flagged) with one CMD_PRI_RESP (§4.6) naming the StreamID, the
//! SubstreamID when the requests carried one, and the PRG index.
//!
//! Decoding is total: any two words give a [`PriRecord`].

use crate::regs::{field_get, genmask};

/// Bytes per PRI queue record.
pub const PRIQ_BYTES: usize = 16;

/// PRI.StreamID `[31:0]` of word 0.
pub const PRIQ_0_SID: u64 = genmask(31, 0);
/// PRI.SubstreamID `[51:32]` of word 0.
pub const PRIQ_0_SSID: u64 = genmask(51, 32);
/// PRI.PnU (word 0 bit 58): privileged access requested.
pub const PRIQ_0_PERM_PRIV: u64 = 1 << 58;
/// PRI.InD (word 0 bit 59): execute permission requested.
pub const PRIQ_0_PERM_EXEC: u64 = 1 << 59;
/// PRI.R (word 0 bit 60): read permission requested.
pub const PRIQ_0_PERM_READ: u64 = 1 << 60;
/// PRI.W (word 0 bit 61): write permission requested.
pub const PRIQ_0_PERM_WRITE: u64 = 1 << 61;
/// PRI.L (word 0 bit 62): last request of its group.
pub const PRIQ_0_PRG_LAST: u64 = 1 << 62;
/// PRI.SSV (word 0 bit 63): SubstreamID valid.
pub const PRIQ_0_SSID_V: u64 = 1 << 63;
/// PRI.PRGIndex `[8:0]` of word 1.
pub const PRIQ_1_PRG_IDX: u64 = genmask(8, 0);
/// PRI.Addr `[63:12]` of word 1: the page requested.
pub const PRIQ_1_ADDR: u64 = genmask(63, 12);

/// One PRI queue record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriRecord {
    /// The requester's StreamID.
    pub sid: u32,
    /// The SubstreamID (PASID), when SSV = 1.
    pub ssid: Option<u32>,
    /// Page address requested (bits `[63:12]`).
    pub addr: u64,
    /// Read access requested.
    pub read: bool,
    /// Write access requested.
    pub write: bool,
    /// Execute permission requested.
    pub exec: bool,
    /// Privileged access requested.
    pub privileged: bool,
    /// Last request of the group: the group now waits for its response.
    pub last: bool,
    /// Page request group index.
    pub prg_index: u16,
}

impl PriRecord {
    /// Decodes a record's two words.
    pub fn decode(w: [u64; 2]) -> Self {
        Self {
            sid: field_get(PRIQ_0_SID, w[0]) as u32,
            ssid: (w[0] & PRIQ_0_SSID_V != 0).then(|| field_get(PRIQ_0_SSID, w[0]) as u32),
            addr: w[1] & PRIQ_1_ADDR,
            read: w[0] & PRIQ_0_PERM_READ != 0,
            write: w[0] & PRIQ_0_PERM_WRITE != 0,
            exec: w[0] & PRIQ_0_PERM_EXEC != 0,
            privileged: w[0] & PRIQ_0_PERM_PRIV != 0,
            last: w[0] & PRIQ_0_PRG_LAST != 0,
            prg_index: field_get(PRIQ_1_PRG_IDX, w[1]) as u16,
        }
    }

    /// The record's two words (what an SMMU writes for this request).
    pub fn encode(&self) -> [u64; 2] {
        let flag = |b: bool, bit: u64| if b { bit } else { 0 };
        let w0 = u64::from(self.sid)
            | self
                .ssid
                .map_or(0, |s| PRIQ_0_SSID_V | ((u64::from(s) << 32) & PRIQ_0_SSID))
            | flag(self.privileged, PRIQ_0_PERM_PRIV)
            | flag(self.exec, PRIQ_0_PERM_EXEC)
            | flag(self.read, PRIQ_0_PERM_READ)
            | flag(self.write, PRIQ_0_PERM_WRITE)
            | flag(self.last, PRIQ_0_PRG_LAST);
        let w1 = (self.addr & PRIQ_1_ADDR) | (u64::from(self.prg_index) & PRIQ_1_PRG_IDX);
        [w0, w1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_at_the_spec_bit_positions() {
        let r = PriRecord::decode([
            0x1234_5678 | (0xabcde << 32) | (1 << 63) | (1 << 62) | (1 << 61) | (1 << 60),
            0xdead_b000 | 0x1a5,
        ]);
        assert_eq!(
            r,
            PriRecord {
                sid: 0x1234_5678,
                ssid: Some(0xabcde),
                addr: 0xdead_b000,
                read: true,
                write: true,
                exec: false,
                privileged: false,
                last: true,
                prg_index: 0x1a5,
            }
        );
        // SSV clear: no SubstreamID even with bits in the field.
        let r = PriRecord::decode([7 | (5 << 32) | (1 << 59) | (1 << 58), 0x1ff]);
        assert_eq!((r.sid, r.ssid, r.exec, r.privileged), (7, None, true, true));
        assert_eq!((r.addr, r.prg_index, r.last), (0, 0x1ff, false));
    }

    #[test]
    fn encode_round_trips_and_keeps_fields_in_range() {
        let r = PriRecord {
            sid: 3,
            ssid: Some(0xf_ffff),
            addr: 0x30_0000,
            read: false,
            write: true,
            exec: false,
            privileged: false,
            last: true,
            prg_index: 5,
        };
        assert_eq!(
            r.encode(),
            [
                3 | (0xf_ffff << 32) | (1 << 63) | (1 << 62) | (1 << 61),
                0x30_0005
            ]
        );
        assert_eq!(PriRecord::decode(r.encode()), r);
        // Out-of-range inputs are truncated to their fields, not spread into others.
        let wide = PriRecord {
            ssid: Some(u32::MAX),
            addr: 0xfff | 0x5000,
            prg_index: u16::MAX,
            ..r
        };
        let w = wide.encode();
        assert_eq!(
            w[0] & !(PRIQ_0_SSID | PRIQ_0_SSID_V),
            r.encode()[0] & !(PRIQ_0_SSID | PRIQ_0_SSID_V)
        );
        assert_eq!(w[1], 0x5000 | 0x1ff);
    }
}
