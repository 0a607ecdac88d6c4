//! TLB invalidation planning after an unmap (SMMUv3 spec §4.4 "TLB invalidation";
//! range invalidation: CMD_TLBI_NH_VA with TG/NUM/SCALE when SMMU_IDR3.RIL = 1).
//!
//! With RIL = 1 a contiguous range of `n` granules is covered by one command per group
//! of up to five significant bits of `n` (at most 8 commands for any range up to 2^40
//! pages; one command for any power of two, so 512 pages take one). With RIL = 0 the
//! planner issues one CMD_TLBI_NH_VA per smallest removed leaf, or a single
//! CMD_TLBI_NH_ASID once that would exceed a threshold.

use crate::cmd::{Command, TlbiRange};
use crate::pagetable::{Unmapped, BLOCK_1G, BLOCK_2M, PAGE_SHIFT, PAGE_SIZE};

/// Default limit of per-page commands before invalidating the whole ASID.
pub const DEFAULT_MAX_PER_PAGE: u64 = 64;

/// How invalidations may be expressed on this SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationPolicy {
    /// Range invalidation available (IDR3.RIL).
    pub ril: bool,
    /// Above this many per-page commands, use one TLBI_NH_ASID instead.
    pub max_per_page: u64,
}

impl InvalidationPolicy {
    /// Policy for the given RIL capability with the default threshold.
    pub const fn new(ril: bool) -> Self {
        Self {
            ril,
            max_per_page: DEFAULT_MAX_PER_PAGE,
        }
    }
}

/// The commands invalidating one unmapped range, produced lazily (no allocation).
#[derive(Clone, Debug)]
pub struct TlbiPlan {
    asid: u16,
    vmid: u16,
    leaf: bool,
    ttl: u8,
    addr: u64,
    kind: PlanKind,
}

#[derive(Clone, Debug)]
enum PlanKind {
    Done,
    /// Range commands over `pages` 4KB granules.
    Range {
        pages: u64,
    },
    /// One command every `step` bytes, `left` of them.
    PerLeaf {
        step: u64,
        left: u64,
    },
    /// One TLBI_NH_ASID.
    Asid,
}

fn ttl_for(u: &Unmapped) -> u8 {
    if u.min_leaf != u.max_leaf || !u.leaf_only() {
        return 0;
    }
    match u.min_leaf {
        PAGE_SIZE => 3,
        BLOCK_2M => 2,
        BLOCK_1G => 1,
        _ => 0,
    }
}

impl TlbiPlan {
    /// Plan the invalidation of what `u` reports removed from the tables of `asid`.
    pub fn new(policy: &InvalidationPolicy, asid: u16, vmid: u16, u: &Unmapped) -> Self {
        let mut plan = Self {
            asid,
            vmid,
            leaf: u.leaf_only(),
            ttl: ttl_for(u),
            addr: u.iova & !(PAGE_SIZE - 1),
            kind: PlanKind::Done,
        };
        if u.is_empty() {
            return plan;
        }
        plan.kind = if policy.ril {
            PlanKind::Range {
                pages: u.size.div_ceil(PAGE_SIZE),
            }
        } else {
            let step = if u.min_leaf == 0 {
                PAGE_SIZE
            } else {
                u.min_leaf
            };
            let left = u.size.div_ceil(step);
            if left > policy.max_per_page {
                PlanKind::Asid
            } else {
                PlanKind::PerLeaf { step, left }
            }
        };
        plan
    }

    /// Number of commands the plan issues (excluding the CMD_SYNC the caller adds).
    pub fn command_count(&self) -> usize {
        self.clone().count()
    }
}

impl Iterator for TlbiPlan {
    type Item = Command;

    fn next(&mut self) -> Option<Command> {
        match &mut self.kind {
            PlanKind::Done => None,
            PlanKind::Asid => {
                self.kind = PlanKind::Done;
                Some(Command::TlbiNhAsid {
                    asid: self.asid,
                    vmid: self.vmid,
                })
            }
            PlanKind::PerLeaf { step, left } => {
                let cmd = Command::TlbiNhVa {
                    asid: self.asid,
                    vmid: self.vmid,
                    addr: self.addr,
                    leaf: self.leaf,
                    ttl: self.ttl,
                    range: None,
                };
                self.addr += *step;
                *left -= 1;
                if *left == 0 {
                    self.kind = PlanKind::Done;
                }
                Some(cmd)
            }
            PlanKind::Range { pages } => {
                let p = *pages;
                let scale = p.trailing_zeros().min(31);
                let chunks = p >> scale;
                let num = if chunks & 31 != 0 {
                    chunks & 31
                } else {
                    chunks.min(32)
                };
                let covered = num << scale;
                let cmd = Command::TlbiNhVa {
                    asid: self.asid,
                    vmid: self.vmid,
                    addr: self.addr,
                    leaf: self.leaf,
                    ttl: self.ttl,
                    range: Some(TlbiRange {
                        num: (num - 1) as u8,
                        scale: scale as u8,
                        tg: 1,
                    }),
                };
                self.addr += covered << PAGE_SHIFT;
                *pages -= covered;
                if *pages == 0 {
                    self.kind = PlanKind::Done;
                }
                Some(cmd)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn pages(iova: u64, n: u64) -> Unmapped {
        Unmapped {
            iova,
            size: n * PAGE_SIZE,
            bytes: n * PAGE_SIZE,
            leaves: n,
            min_leaf: PAGE_SIZE,
            max_leaf: PAGE_SIZE,
            tables_freed: 0,
            blocks_split: 0,
        }
    }

    /// Pages covered by range commands, checked to be contiguous from `start`.
    fn covered(cmds: &[Command], start: u64) -> u64 {
        let mut next = start;
        let mut total = 0;
        for c in cmds {
            let Command::TlbiNhVa {
                addr,
                range: Some(r),
                ..
            } = c
            else {
                panic!("not a range command: {c:?}");
            };
            assert_eq!(*addr, next);
            assert!(r.num <= 31 && r.scale <= 31 && r.tg == 1);
            next += r.granules() * PAGE_SIZE;
            total += r.granules();
        }
        total
    }

    #[test]
    fn ril_512_pages_is_one_command() {
        let p = TlbiPlan::new(&InvalidationPolicy::new(true), 3, 0, &pages(0x20_0000, 512));
        let cmds: Vec<_> = p.clone().collect();
        assert_eq!(cmds.len(), 1);
        assert_eq!(p.command_count(), 1);
        assert_eq!(
            cmds[0],
            Command::TlbiNhVa {
                asid: 3,
                vmid: 0,
                addr: 0x20_0000,
                leaf: true,
                ttl: 3,
                range: Some(TlbiRange {
                    num: 0,
                    scale: 9,
                    tg: 1
                })
            }
        );
    }

    #[test]
    fn ril_covers_any_size_exactly_with_few_commands() {
        for n in [
            1u64,
            2,
            3,
            31,
            32,
            33,
            255,
            256,
            257,
            511,
            513,
            1000,
            262_144,
            262_143,
            (1 << 30) - 1,
            1 << 33,
        ] {
            let cmds: Vec<_> =
                TlbiPlan::new(&InvalidationPolicy::new(true), 1, 0, &pages(0x1000, n)).collect();
            assert_eq!(covered(&cmds, 0x1000), n, "n = {n}");
            let bits = 64 - n.leading_zeros() - n.trailing_zeros();
            assert!(
                cmds.len() as u32 <= bits.div_ceil(5).max(1),
                "n = {n}: {}",
                cmds.len()
            );
        }
    }

    #[test]
    fn no_ril_per_page_then_asid() {
        let pol = InvalidationPolicy::new(false);
        let cmds: Vec<_> = TlbiPlan::new(&pol, 4, 0, &pages(0x5000, 3)).collect();
        assert_eq!(cmds.len(), 3);
        for (i, c) in cmds.iter().enumerate() {
            assert_eq!(
                *c,
                Command::TlbiNhVa {
                    asid: 4,
                    vmid: 0,
                    addr: 0x5000 + i as u64 * PAGE_SIZE,
                    leaf: true,
                    ttl: 3,
                    range: None
                }
            );
        }
        let big: Vec<_> = TlbiPlan::new(&pol, 4, 0, &pages(0, 512)).collect();
        assert_eq!(big, [Command::TlbiNhAsid { asid: 4, vmid: 0 }]);
        assert_eq!(TlbiPlan::new(&pol, 4, 0, &pages(0, 64)).command_count(), 64);
    }

    #[test]
    fn blocks_use_block_steps_and_tables_force_non_leaf() {
        let pol = InvalidationPolicy::new(false);
        let u = Unmapped {
            iova: 0x4000_0000,
            size: 4 * BLOCK_2M,
            bytes: 4 * BLOCK_2M,
            leaves: 4,
            min_leaf: BLOCK_2M,
            max_leaf: BLOCK_2M,
            tables_freed: 1,
            blocks_split: 0,
        };
        let cmds: Vec<_> = TlbiPlan::new(&pol, 1, 0, &u).collect();
        assert_eq!(cmds.len(), 4);
        let Command::TlbiNhVa {
            leaf, ttl, addr, ..
        } = cmds[1]
        else {
            panic!()
        };
        assert!(!leaf, "freed tables need walk-cache invalidation");
        assert_eq!(ttl, 0);
        assert_eq!(addr, 0x4000_0000 + BLOCK_2M);
        assert_eq!(
            TlbiPlan::new(&pol, 1, 0, &Unmapped::default()).command_count(),
            0
        );
    }
}
