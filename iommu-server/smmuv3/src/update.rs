//! Hitless STE and CD updates (SMMUv3 spec §3.21.3 "Configuration structures and
//! configuration invalidation completion"; single-copy atomicity of 64-bit words, §3.21.1).
//!
//! The SMMU may fetch an entry at any time, reading its words in any order, and may keep
//! a cached copy until a CFGI + CMD_SYNC. A multi-word change must therefore never leave
//! memory in a state whose *interpreted* bits (those the current V/Config uses) mix the
//! old and the new configuration. The rules, applied by [`update_entry`]:
//!
//! 1. **Stage unused bits.** Copy the target's values into every bit the current entry
//!    does not use. This changes nothing the SMMU interprets. If anything was written:
//!    CFGI + SYNC (so no fetch or cached copy still holds the old values of those bits).
//! 2. **One critical word.** If now only word 0 (V/Config) differs in bits the *target*
//!    uses, write word 0 in one 64-bit store: the entry flips from old to new atomically.
//!    CFGI + SYNC. Bits the old entry used but the new one does not are then cleaned up
//!    without a further sync (the SMMU ignores them).
//! 3. **One other word.** If exactly one non-critical word differs, write it in one
//!    store (e.g. a CD's TTB0). CFGI + SYNC.
//! 4. **Break.** Otherwise make the entry harmless first (STE: V = 1, Config = abort, so
//!    traffic aborts without events; CD: V = 0), CFGI + SYNC; write all other words,
//!    CFGI + SYNC; write word 0, CFGI + SYNC.
//!
//! Resulting sync counts (tested below): STE abort <-> bypass 1 (the abort entry carries
//! the bypass word-1 defaults), bypass -> S1 2, abort/invalid -> S1 2, S1 -> abort 1,
//! S1 -> S1 with another CD pointer 1, S1 -> S1 with another CD pointer and another walk
//! cacheability 3; CD ASID-only 1, TTB0-only 1, ASID and TTB0 3, invalid -> valid 2,
//! valid -> invalid 1.

use crate::cd::{Cd, CTXDESC_CD_0_V};
use crate::error::Result;
use crate::regs::field_prep;
use crate::ste::{Ste, STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_0_V};

/// Words in an STE or CD.
pub const ENTRY_WORDS: usize = 8;

/// How a kind of entry is interpreted.
pub trait EntryKind {
    /// Bits of each word the SMMU interprets for `words`.
    fn used_bits(words: &[u64; ENTRY_WORDS]) -> [u64; ENTRY_WORDS];
    /// Word 0 of the harmless form of an entry whose word 0 is `w0`.
    fn quiesce(w0: u64) -> u64;
}

/// Stream table entries.
#[derive(Debug)]
pub enum SteKind {}

impl EntryKind for SteKind {
    fn used_bits(words: &[u64; ENTRY_WORDS]) -> [u64; ENTRY_WORDS] {
        Ste(*words).used_bits()
    }
    fn quiesce(w0: u64) -> u64 {
        (w0 & !STRTAB_STE_0_CFG)
            | STRTAB_STE_0_V
            | field_prep(STRTAB_STE_0_CFG, STRTAB_STE_0_CFG_ABORT)
    }
}

/// Context descriptors.
#[derive(Debug)]
pub enum CdKind {}

impl EntryKind for CdKind {
    fn used_bits(words: &[u64; ENTRY_WORDS]) -> [u64; ENTRY_WORDS] {
        Cd(*words).used_bits()
    }
    fn quiesce(w0: u64) -> u64 {
        w0 & !CTXDESC_CD_0_V
    }
}

/// Where an entry lives and how its invalidation is issued.
pub trait EntryTarget {
    /// Current value of word `i` in memory.
    fn read(&self, i: usize) -> u64;
    /// Store word `i` (one single-copy-atomic 64-bit store).
    fn write(&mut self, i: usize, value: u64);
    /// Make the SMMU forget cached copies and wait: CFGI_STE / CFGI_CD + CMD_SYNC.
    fn sync(&mut self) -> Result<()>;
}

/// Update the entry at `t` to `target` following the rules in the module docs.
/// Returns the number of syncs issued.
pub fn update_entry<K: EntryKind, T: EntryTarget>(
    t: &mut T,
    target: &[u64; ENTRY_WORDS],
) -> Result<usize> {
    let mut cur = [0u64; ENTRY_WORDS];
    for (i, w) in cur.iter_mut().enumerate() {
        *w = t.read(i);
    }
    if &cur == target {
        return Ok(0);
    }
    let mut syncs = 0;
    let used_cur = K::used_bits(&cur);
    let used_tgt = K::used_bits(target);

    // Rule 1: stage bits the current entry ignores. Word 0 last, so a reader that sees
    // the staged word 0 also finds the other staged words (not required, but cheap).
    let mut staged = cur;
    for i in 0..ENTRY_WORDS {
        staged[i] = (cur[i] & used_cur[i]) | (target[i] & !used_cur[i]);
    }
    if staged != cur {
        for i in (0..ENTRY_WORDS).rev() {
            if staged[i] != cur[i] {
                t.write(i, staged[i]);
            }
        }
        t.sync()?;
        syncs += 1;
        cur = staged;
        if &cur == target {
            return Ok(syncs);
        }
    }

    let differing = (0..ENTRY_WORDS).filter(|&i| cur[i] != target[i]).count();
    // Rule 2: word 0 flips the configuration; all other words already agree with the
    // target in the bits the target uses.
    let others_ready = (1..ENTRY_WORDS).all(|j| (cur[j] ^ target[j]) & used_tgt[j] == 0);
    if cur[0] != target[0] && others_ready {
        t.write(0, target[0]);
        t.sync()?;
        syncs += 1;
        for j in 1..ENTRY_WORDS {
            if cur[j] != target[j] {
                t.write(j, target[j]);
            }
        }
        return Ok(syncs);
    }
    // Rule 3: exactly one (non-critical) word differs.
    if differing == 1 {
        let k = (0..ENTRY_WORDS).find(|&i| cur[i] != target[i]).unwrap_or(0);
        t.write(k, target[k]);
        t.sync()?;
        return Ok(syncs + 1);
    }
    // Rule 4: break, rewrite, make.
    t.write(0, K::quiesce(cur[0]));
    t.sync()?;
    for j in 1..ENTRY_WORDS {
        if cur[j] != target[j] {
            t.write(j, target[j]);
        }
    }
    t.sync()?;
    t.write(0, target[0]);
    t.sync()?;
    Ok(syncs + 3)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::cd::{CdConfig, DEFAULT_MAIR};
    use crate::mem::PhysAddr;
    use crate::ste::{Stage1Ste, StreamConfig, WalkAttrs};
    use std::vec::Vec;

    /// An entry in memory that checks, after every single store, that the interpreted
    /// view is the old entry, the new entry or the harmless form, never a mix.
    struct Checked<K: EntryKind> {
        mem: [u64; 8],
        allowed: Vec<[u64; 8]>,
        syncs: usize,
        writes: usize,
        _k: core::marker::PhantomData<K>,
    }

    fn view<K: EntryKind>(w: &[u64; 8]) -> [u64; 8] {
        let u = K::used_bits(w);
        let mut v = [0; 8];
        for i in 0..8 {
            v[i] = w[i] & u[i];
        }
        v
    }

    impl<K: EntryKind> Checked<K> {
        fn new(from: [u64; 8], to: [u64; 8]) -> Self {
            let mut q = from;
            q[0] = K::quiesce(from[0]);
            Self {
                mem: from,
                allowed: std::vec![view::<K>(&from), view::<K>(&to), view::<K>(&q)],
                syncs: 0,
                writes: 0,
                _k: core::marker::PhantomData,
            }
        }
    }

    impl<K: EntryKind> EntryTarget for Checked<K> {
        fn read(&self, i: usize) -> u64 {
            self.mem[i]
        }
        fn write(&mut self, i: usize, value: u64) {
            self.mem[i] = value;
            self.writes += 1;
            let v = view::<K>(&self.mem);
            assert!(
                self.allowed.contains(&v),
                "torn entry exposed: {:x?}",
                self.mem
            );
        }
        fn sync(&mut self) -> Result<()> {
            self.syncs += 1;
            Ok(())
        }
    }

    fn ste_syncs(from: Ste, to: Ste) -> usize {
        let mut t = Checked::<SteKind>::new(from.0, to.0);
        let n = update_entry::<SteKind, _>(&mut t, &to.0).unwrap();
        assert_eq!(t.mem, to.0, "entry ends equal to the target");
        assert_eq!(n, t.syncs);
        n
    }

    fn cd_syncs(from: Cd, to: Cd) -> usize {
        let mut t = Checked::<CdKind>::new(from.0, to.0);
        let n = update_entry::<CdKind, _>(&mut t, &to.0).unwrap();
        assert_eq!(t.mem, to.0);
        assert_eq!(n, t.syncs);
        n
    }

    fn s1(ptr: u64) -> Ste {
        Ste::encode(&StreamConfig::Stage1(Stage1Ste::single_cd(PhysAddr(ptr))))
    }

    #[test]
    fn ste_sync_counts() {
        assert_eq!(ste_syncs(Ste::abort(), Ste::abort()), 0);
        assert_eq!(ste_syncs(Ste::abort(), Ste::bypass()), 1);
        assert_eq!(ste_syncs(Ste::bypass(), Ste::abort()), 1);
        assert_eq!(ste_syncs(Ste::bypass(), s1(0x4000_0000)), 2);
        assert_eq!(ste_syncs(Ste::abort(), s1(0x4000_0000)), 2);
        assert_eq!(ste_syncs(Ste::invalid(), s1(0x4000_0000)), 2);
        assert_eq!(ste_syncs(s1(0x4000_0000), Ste::abort()), 1);
        assert_eq!(ste_syncs(s1(0x4000_0000), Ste::bypass()), 1);
        assert_eq!(ste_syncs(s1(0x4000_0000), s1(0x5000_0040)), 1);
        let other_walk = Ste::encode(&StreamConfig::Stage1(Stage1Ste {
            walk: WalkAttrs {
                inner: 0,
                outer: 0,
                share: 2,
            },
            ..Stage1Ste::single_cd(PhysAddr(0x5000_0040))
        }));
        assert_eq!(ste_syncs(s1(0x4000_0000), other_walk), 3);
    }

    fn cd(asid: u16, ttb: u64) -> Cd {
        Cd::encode(&CdConfig {
            asid,
            ttb0: PhysAddr(ttb),
            t0sz: 25,
            walk: WalkAttrs::WB_ISH,
            ips: 4,
            mair: DEFAULT_MAIR,
            affd: false,
            ha: false,
            hd: false,
            aset: true,
            had: false,
        })
    }

    #[test]
    fn cd_sync_counts() {
        assert_eq!(cd_syncs(cd(1, 0x1000), cd(2, 0x1000)), 1, "ASID only");
        assert_eq!(cd_syncs(cd(1, 0x1000), cd(1, 0x2000)), 1, "TTB0 only");
        assert_eq!(cd_syncs(cd(1, 0x1000), cd(2, 0x2000)), 3, "ASID and TTB0");
        assert_eq!(cd_syncs(Cd::invalid(), cd(1, 0x1000)), 2);
        assert_eq!(cd_syncs(cd(1, 0x1000), Cd::invalid()), 1);
    }

    #[test]
    fn break_path_goes_through_abort() {
        let from = s1(0x4000_0000);
        let to = Ste::encode(&StreamConfig::Stage1(Stage1Ste {
            walk: WalkAttrs {
                inner: 0,
                outer: 0,
                share: 0,
            },
            ..Stage1Ste::single_cd(PhysAddr(0x8000_0000))
        }));
        struct Log(Ste, Vec<(usize, u64)>, usize);
        impl EntryTarget for Log {
            fn read(&self, i: usize) -> u64 {
                self.0 .0[i]
            }
            fn write(&mut self, i: usize, v: u64) {
                self.0 .0[i] = v;
                self.1.push((i, v));
            }
            fn sync(&mut self) -> Result<()> {
                self.2 += 1;
                Ok(())
            }
        }
        let mut l = Log(from, Vec::new(), 0);
        update_entry::<SteKind, _>(&mut l, &to.0).unwrap();
        let (first_idx, first_val) = l.1[0];
        assert_eq!(first_idx, 0);
        assert_eq!(first_val & 0xf, 0x1, "V=1, Config=abort");
        assert_eq!(l.1.last().unwrap().0, 0, "word 0 written last");
    }

    #[test]
    fn sync_errors_propagate() {
        struct Failing([u64; 8]);
        impl EntryTarget for Failing {
            fn read(&self, i: usize) -> u64 {
                self.0[i]
            }
            fn write(&mut self, i: usize, v: u64) {
                self.0[i] = v;
            }
            fn sync(&mut self) -> Result<()> {
                Err(crate::Error::Timeout(
                    crate::error::TimeoutKind::CommandSync,
                ))
            }
        }
        let mut f = Failing(Ste::abort().0);
        assert!(update_entry::<SteKind, _>(&mut f, &Ste::bypass().0).is_err());
    }
}
