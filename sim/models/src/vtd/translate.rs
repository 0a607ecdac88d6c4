//! Translation: root and context entries (§9.1 - §9.4), PASID directory and table
//! (§9.5, §9.6), second-level paging entries (§9.8) walked as §3.7 describes, and the
//! context cache, PASID cache and IOTLB in front of them (§6.2).
//!
//! The order of checks and the fault reason of each condition are QEMU 7.2's (see the
//! module documentation of [`super`]).

use std::collections::HashMap;

use super::State;

// --- Fault reasons (spec fault-condition tables; the codes QEMU 7.2 reports) ---
/// 1: root entry not present.
pub const FAULT_ROOT_NOT_PRESENT: u8 = 0x1;
/// 2: context entry not present.
pub const FAULT_CONTEXT_NOT_PRESENT: u8 = 0x2;
/// 3: invalid context entry programming (unsupported AW or TT, or the first table of
/// the walk could not be read).
pub const FAULT_CONTEXT_INVALID: u8 = 0x3;
/// 4: input address above the address width.
pub const FAULT_ADDRESS_BEYOND_WIDTH: u8 = 0x4;
/// 5: write without write permission (also a not-present entry on a write).
pub const FAULT_WRITE: u8 = 0x5;
/// 6: read without read permission (also a not-present entry on a read).
pub const FAULT_READ: u8 = 0x6;
/// 7: a paging entry below the top level could not be read.
pub const FAULT_PAGING_ENTRY_READ: u8 = 0x7;
/// 8: the root table could not be read.
pub const FAULT_ROOT_TABLE_READ: u8 = 0x8;
/// 9: the context table could not be read.
pub const FAULT_CONTEXT_TABLE_READ: u8 = 0x9;
/// 0xA: reserved bits set in a root entry.
pub const FAULT_ROOT_RESERVED: u8 = 0xa;
/// 0xB: reserved bits set in a context entry.
pub const FAULT_CONTEXT_RESERVED: u8 = 0xb;
/// 0xC: reserved bits set in a paging entry.
pub const FAULT_PAGING_RESERVED: u8 = 0xc;
/// 0xE: the translation lands in the interrupt address range (legacy).
pub const FAULT_INTERRUPT_ADDRESS: u8 = 0xe;
/// 0x58: PASID directory or table entry missing, unreadable or invalid.
pub const FAULT_PASID_TABLE: u8 = 0x58;
/// 0x87: the translation lands in the interrupt address range (scalable-mode capable).
pub const FAULT_SM_INTERRUPT_ADDRESS: u8 = 0x87;

/// Whether a condition is "qualified": not reported when FPD is set for the entry that
/// was used (QEMU 7.2's table).
pub fn qualified(reason: u8) -> bool {
    matches!(reason, 0x2..=0x7 | 0xc | 0xd | 0xe | 0x87)
}

/// First address of the interrupt range.
pub const INTERRUPT_FIRST: u64 = 0xfee0_0000;
/// Last address of the interrupt range.
pub const INTERRUPT_LAST: u64 = 0xfeef_ffff;

/// Whether `a` is in the interrupt address range.
pub fn in_interrupt_range(a: u64) -> bool {
    (INTERRUPT_FIRST..=INTERRUPT_LAST).contains(&a)
}

// --- Entry fields the walk reads ---
/// Root / context / PASID directory / PASID entry bit 0: P.
const P: u64 = 1;
/// Context entry (both formats) and PASID entry bit 1: FPD.
const FPD: u64 = 1 << 1;
/// Scalable-mode context entry bit 4: PRE.
pub const SM_CTX_PRE: u64 = 1 << 4;
/// Second-level entry R (0), W (1), PS (7).
const SL_R: u64 = 1 << 0;
const SL_W: u64 = 1 << 1;
const SL_PS: u64 = 1 << 7;
/// Second-level entry bit 11: SNP (reserved without snoop control and in legacy mode).
const SL_SNP: u64 = 1 << 11;
/// Second-level entry bit 62: TM (reserved without device-TLBs).
const SL_TM: u64 = 1 << 62;
/// Second-level entry bits ignored by hardware: 52..=61 and 63.
const SL_IGNORED: u64 = 0xbff0_0000_0000_0000;
/// PGTT values (§9.6).
const PGTT_FIRST_LEVEL: u64 = 1;
const PGTT_NESTED: u64 = 3;
const PGTT_PASS_THROUGH: u64 = 4;
/// Legacy context TT (§9.3).
const TT_PASS_THROUGH: u64 = 2;

/// Most IOTLB entries before the IOTLB is emptied (QEMU's limit).
pub const IOTLB_MAX: usize = 1024;

/// A PASID entry as cached: the words the walk uses and the FPD it implies.
#[derive(Clone, Copy, Debug)]
pub struct PasidInfo {
    pub pe: [u64; 3],
    pub fpd: bool,
}

impl PasidInfo {
    fn did(&self) -> u16 {
        (self.pe[1] & 0xffff) as u16
    }
    fn pgtt(&self) -> u64 {
        (self.pe[0] >> 6) & 7
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IotlbKey {
    sid: u16,
    pasid: Option<u32>,
    level: u8,
    gfn: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct IotlbEntry {
    did: u16,
    /// Output address of the page.
    page: u64,
    read: bool,
    write: bool,
    /// Page number of the (possibly large) page.
    gfn: u64,
    /// Address mask of the page.
    mask: u64,
    /// PGTT of the PASID entry used (0 in legacy mode).
    pgtt: u64,
}

/// The unit's translation caches.
#[derive(Default)]
pub struct Caches {
    /// Context entries by source-id (4 words; legacy uses 2).
    pub context: HashMap<u16, [u64; 4]>,
    /// PASID entries by (source-id, PASID).
    pub pasid: HashMap<(u16, u32), PasidInfo>,
    /// Translations.
    pub iotlb: HashMap<IotlbKey, IotlbEntry>,
}

impl Caches {
    /// Everything dropped (SRTP, TE changes).
    pub fn reset(&mut self) {
        self.context.clear();
        self.pasid.clear();
        self.iotlb.clear();
    }

    pub fn invalidate_context_all(&mut self) {
        self.context.clear();
    }

    /// Device-selective: source-ids equal to `sid` apart from the function bits FM masks.
    pub fn invalidate_context_device(&mut self, sid: u16, fm: u8) {
        let mask: u16 = match fm & 3 {
            0 => 0,
            1 => 4,
            2 => 6,
            _ => 7,
        };
        self.context.retain(|&s, _| (s & !mask) != (sid & !mask));
    }

    pub fn invalidate_iotlb_all(&mut self) {
        self.iotlb.clear();
    }

    pub fn invalidate_iotlb_domain(&mut self, did: u16) {
        self.iotlb.retain(|_, e| e.did != did);
    }

    /// Page-selective: 2^am pages at `addr` (aligned down to that size), and any large
    /// page containing `addr`.
    pub fn invalidate_iotlb_pages(&mut self, did: u16, addr: u64, am: u8) {
        let mask = !((1u64 << am) - 1);
        let gfn = (addr >> 12) & mask;
        self.iotlb.retain(|_, e| {
            !(e.did == did && ((e.gfn & mask) == gfn || e.gfn == (addr & e.mask) >> 12))
        });
    }

    /// PASID-based IOTLB invalidation: entries made through first-level or nested PASID
    /// entries of `pasid` in `did`, all (`page` None) or 2^am pages at an address.
    pub fn invalidate_iotlb_pasid(&mut self, did: u16, pasid: u32, page: Option<(u64, u8)>) {
        self.iotlb.retain(|k, e| {
            let first_level = e.pgtt == PGTT_FIRST_LEVEL || e.pgtt == PGTT_NESTED;
            let hit = e.did == did && k.pasid == Some(pasid) && first_level;
            let in_range = match page {
                None => true,
                Some((addr, am)) => {
                    let mask = !((1u64 << am) - 1);
                    (e.gfn & mask) == (addr >> 12) & mask || e.gfn == (addr & e.mask) >> 12
                }
            };
            !(hit && in_range)
        });
    }

    /// PASID-cache invalidation (§6.5.2.2): granularity 0 domain-selective, 1
    /// PASID-selective within a domain, 3 global (2 is reserved: nothing).
    pub fn invalidate_pasid(&mut self, g: u64, did: u16, pasid: u32) {
        match g {
            0 => self.pasid.retain(|_, e| e.did() != did),
            1 => self
                .pasid
                .retain(|&(_, p), e| !(e.did() == did && p == pasid)),
            3 => self.pasid.clear(),
            _ => {}
        }
    }
}

/// What a translation came to.
pub enum Outcome {
    Translated { pa: u64, read: bool, write: bool },
    Fault(Fault),
    PasidUnsupported,
}

/// A fault condition: its reason, whether FPD applies, and the PASID to report.
pub struct Fault {
    pub reason: u8,
    pub fpd: bool,
    pub pasid: Option<u32>,
}

fn fault(reason: u8, fpd: bool, pasid: Option<u32>) -> Outcome {
    Outcome::Fault(Fault { reason, fpd, pasid })
}

const fn shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

fn read_words<const N: usize>(s: &State, pa: u64) -> Option<[u64; N]> {
    let mut w = [0u64; N];
    for (i, x) in w.iter_mut().enumerate() {
        *x = s.mem.read_u64(pa.checked_add(8 * i as u64)?).ok()?;
    }
    Some(w)
}

/// The context entry of `sid` from memory, with QEMU's checks; the error is the fault
/// reason and the context entry's FPD.
pub(crate) fn read_context(s: &mut State, sid: u16) -> Result<[u64; 4], (u8, bool)> {
    let (bus, devfn) = (u64::from(sid >> 8), sid & 0xff);
    let haw = s.caps.haw_mask();
    let Some(re) = read_words::<2>(s, s.root + 16 * bus) else {
        return Err((FAULT_ROOT_TABLE_READ, false));
    };
    let upper = s.root_scalable && devfn > 127;
    let rw = if upper { re[1] } else { re[0] };
    if rw & P == 0 {
        return Err((FAULT_ROOT_NOT_PRESENT, false));
    }
    let root_rsvd = 0xffe | !haw;
    let bad_root = if s.root_scalable {
        re[0] & root_rsvd != 0 || re[1] & root_rsvd != 0
    } else {
        re[1] != 0 || re[0] & root_rsvd != 0
    };
    if bad_root {
        return Err((FAULT_ROOT_RESERVED, false));
    }
    let table = rw & !0xfff;
    let ce = if s.root_scalable {
        read_words::<4>(s, table + 32 * u64::from(devfn & 0x7f))
    } else {
        read_words::<2>(s, table + 16 * u64::from(devfn)).map(|w| [w[0], w[1], 0, 0])
    };
    let Some(ce) = ce else {
        return Err((FAULT_CONTEXT_TABLE_READ, false));
    };
    let fpd = ce[0] & FPD != 0;
    if ce[0] & P == 0 {
        return Err((FAULT_CONTEXT_NOT_PRESENT, fpd));
    }
    let reserved = if s.root_scalable {
        ce[0] & (0x1e0 | !haw) != 0
            || ce[1] & 0xffff_ffff_ffe0_0000 != 0
            || ce[2] != 0
            || ce[3] != 0
    } else {
        ce[1] & 0xffff_ffff_ff00_0080 != 0 || ce[0] & (0xff0 | !haw) != 0
    };
    if reserved {
        return Err((FAULT_CONTEXT_RESERVED, fpd));
    }
    if !s.root_scalable {
        let levels = 2 + (ce[1] & 7) as u32;
        let tt_ok = match (ce[0] >> 2) & 3 {
            0 => true,
            1 => s.caps.dt,
            2 => s.caps.pt,
            _ => false,
        };
        if !s.caps.level_supported(levels) || !tt_ok {
            return Err((FAULT_CONTEXT_INVALID, fpd));
        }
    }
    Ok(ce)
}

/// The PASID entry of `pasid` under scalable context entry `ce`, from the PASID cache or
/// memory (QEMU's checks: directory entry present, PGTT valid, AW supported, present).
fn pasid_entry(s: &mut State, sid: u16, ce: &[u64; 4], pasid: u32) -> Option<PasidInfo> {
    if let Some(p) = s.caches.pasid.get(&(sid, pasid)) {
        s.stats.pasid_hits += 1;
        return Some(*p);
    }
    s.stats.pasid_fetches += 1;
    let dir = ce[0] & !0xfff;
    let pdire = s
        .mem
        .read_u64(dir + 8 * u64::from((pasid >> 6) & 0x3fff))
        .ok()?;
    if pdire & P == 0 {
        return None;
    }
    let pe = read_words::<8>(s, (pdire & !0xfff) + 64 * u64::from(pasid & 0x3f))?;
    let pgtt_ok = match (pe[0] >> 6) & 7 {
        1..=3 => true,
        PGTT_PASS_THROUGH => s.caps.pt,
        _ => false,
    };
    let levels = 2 + ((pe[0] >> 2) & 7) as u32;
    if !pgtt_ok || !s.caps.level_supported(levels) || pe[0] & P == 0 {
        return None;
    }
    let info = PasidInfo {
        pe: [pe[0], pe[1], pe[2]],
        fpd: pdire & FPD != 0 || pe[0] & FPD != 0,
    };
    s.caches.pasid.insert((sid, pasid), info);
    Some(info)
}

fn iotlb_lookup(s: &mut State, sid: u16, pasid: Option<u32>, iova: u64) -> Option<Outcome> {
    for level in 1..=3u32 {
        let key = IotlbKey {
            sid,
            pasid,
            level: level as u8,
            gfn: (iova >> shift(level)) << (shift(level) - 12),
        };
        if let Some(e) = s.caches.iotlb.get(&key) {
            s.stats.iotlb_hits += 1;
            return Some(Outcome::Translated {
                pa: e.page | (iova & !e.mask),
                read: e.read,
                write: e.write,
            });
        }
    }
    None
}

/// Reserved bits of a second-level entry at `level` (QEMU's masks).
fn sl_reserved(s: &State, e: u64, level: u32) -> bool {
    let keep = s.caps.haw_mask() | SL_IGNORED;
    let tm = if s.caps.dt { SL_TM } else { 0 };
    let snp_ok = s.caps.smts || s.caps.sc;
    let snp = |m: u64| if snp_ok { m & !SL_SNP } else { m };
    let mask = match level {
        1 => snp(SL_SNP | !(keep | tm)),
        2 | 3 if e & SL_PS != 0 => {
            let align = if level == 2 { 0x1f_f000 } else { 0x3fff_f000 };
            snp(align | SL_SNP | !(keep | tm))
        }
        2 | 3 => SL_SNP | !keep,
        _ => SL_SNP | SL_PS | !keep,
    };
    e & mask != 0
}

struct Walk {
    page: u64,
    level: u32,
    read: bool,
    write: bool,
}

/// The second-level walk (§3.7) from the table at `base` with `aw` (AW field) for
/// `iova`; the error is the fault reason.
fn walk(s: &mut State, base: u64, aw: u64, iova: u64, write: bool) -> Result<Walk, u8> {
    s.stats.walks += 1;
    let top = 2 + aw as u32;
    let agaw = 30 + 9 * aw as u32;
    let limit = agaw.min(s.caps.aw);
    if limit < 64 && iova >> limit != 0 {
        return Err(FAULT_ADDRESS_BEYOND_WIDTH);
    }
    let haw = s.caps.haw_mask();
    let right = if write { SL_W } else { SL_R };
    let (mut read_ok, mut write_ok) = (true, true);
    let mut table = base;
    let mut level = top;
    loop {
        let idx = (iova >> shift(level)) & 0x1ff;
        let Ok(e) = s.mem.read_u64(table.wrapping_add(8 * idx)) else {
            return Err(if level == top {
                FAULT_CONTEXT_INVALID
            } else {
                FAULT_PAGING_ENTRY_READ
            });
        };
        read_ok &= e & SL_R != 0;
        write_ok &= e & SL_W != 0;
        if e & right == 0 {
            return Err(if write { FAULT_WRITE } else { FAULT_READ });
        }
        if sl_reserved(s, e, level) {
            return Err(FAULT_PAGING_RESERVED);
        }
        if level == 1 || e & SL_PS != 0 {
            let size = 1u64 << shift(level);
            let page = e & haw & !0xfff & !(size - 1);
            if page <= INTERRUPT_LAST && page + size > INTERRUPT_FIRST {
                return Err(if s.caps.smts {
                    FAULT_SM_INTERRUPT_ADDRESS
                } else {
                    FAULT_INTERRUPT_ADDRESS
                });
            }
            return Ok(Walk {
                page,
                level,
                read: read_ok,
                write: write_ok,
            });
        }
        table = e & haw & !0xfff;
        level -= 1;
    }
}

impl State {
    /// Translate one access of `sid` (with `pasid` if the request carries one) at `iova`.
    pub(crate) fn translate(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
    ) -> Outcome {
        if !self.translation {
            return Outcome::Translated {
                pa: iova,
                read: true,
                write: true,
            };
        }
        if let Some(p) = pasid {
            if !self.root_scalable || !self.caps.pasid || u64::from(p) >> self.caps.pasid_bits != 0
            {
                return Outcome::PasidUnsupported;
            }
        }
        let scalable = self.root_scalable;
        let rid2pasid = pasid.is_none() && scalable;
        if !rid2pasid {
            if let Some(hit) = iotlb_lookup(self, sid, pasid, iova) {
                return hit;
            }
        }
        // Context entry: cache or memory. In scalable mode a context entry is usable only
        // with a valid RID_PASID entry. Faults before the walk carry the PASID only when
        // the request had one (QEMU records none there, but no QEMU device sends one).
        let ce = match self.caches.context.get(&sid) {
            Some(ce) => {
                self.stats.context_hits += 1;
                *ce
            }
            None => {
                self.stats.context_fetches += 1;
                let ce = match read_context(self, sid) {
                    Ok(ce) => ce,
                    Err((reason, fpd)) => return fault(reason, fpd, pasid),
                };
                if scalable {
                    let rid_pasid = (ce[1] & 0xf_ffff) as u32;
                    if pasid_entry(self, sid, &ce, rid_pasid).is_none() {
                        return fault(FAULT_PASID_TABLE, ce[0] & FPD != 0, pasid);
                    }
                }
                self.caches.context.insert(sid, ce);
                ce
            }
        };
        let mut fpd = ce[0] & FPD != 0;
        let eff_pasid = if rid2pasid {
            Some((ce[1] & 0xf_ffff) as u32)
        } else {
            pasid
        };
        // Where the walk starts, and the domain it is tagged with.
        let (base, aw, did, pgtt) = if scalable {
            let p = eff_pasid.unwrap_or(0);
            let Some(info) = pasid_entry(self, sid, &ce, p) else {
                return fault(FAULT_PASID_TABLE, fpd, pasid);
            };
            fpd |= info.fpd;
            if info.pgtt() == PGTT_PASS_THROUGH {
                return Outcome::Translated {
                    pa: iova,
                    read: true,
                    write: true,
                };
            }
            // QEMU 7.2 walks the second-level pointer whatever PGTT says.
            (
                info.pe[0] & !0xfff,
                (info.pe[0] >> 2) & 7,
                info.did(),
                info.pgtt(),
            )
        } else {
            if (ce[0] >> 2) & 3 == TT_PASS_THROUGH {
                return Outcome::Translated {
                    pa: iova,
                    read: true,
                    write: true,
                };
            }
            (ce[0] & !0xfff, ce[1] & 7, ((ce[1] >> 8) & 0xffff) as u16, 0)
        };
        if rid2pasid {
            if let Some(hit) = iotlb_lookup(self, sid, eff_pasid, iova) {
                return hit;
            }
        }
        let report_pasid = if scalable { eff_pasid } else { None };
        match walk(self, base, aw, iova, write) {
            Err(reason) => fault(reason, fpd, report_pasid),
            Ok(w) => {
                if self.caches.iotlb.len() >= IOTLB_MAX {
                    self.caches.iotlb.clear();
                }
                let mask = !((1u64 << shift(w.level)) - 1);
                let gfn = (iova & mask) >> 12;
                self.caches.iotlb.insert(
                    IotlbKey {
                        sid,
                        pasid: report_pasid,
                        level: w.level as u8,
                        gfn,
                    },
                    IotlbEntry {
                        did,
                        page: w.page,
                        read: w.read,
                        write: w.write,
                        gfn,
                        mask,
                        pgtt,
                    },
                );
                Outcome::Translated {
                    pa: w.page | (iova & !mask),
                    read: w.read,
                    write: w.write,
                }
            }
        }
    }
}
