//! AArch64 stage-1 translation tables with the 4KB granule (Arm ARM D8 "The AArch64
//! Virtual Memory System Architecture"; used by the SMMU through CD.TTB0, SMMUv3 spec
//! §3.4 / §5.4).
//!
//! The input size is `64 - T0SZ` bits (25..=48); the walk starts at level
//! `4 - ceil((bits - 12) / 9)`. Level 1 and level 2 entries may be 1GB and 2MB blocks,
//! used whenever the IOVA, the output address and the remaining size allow.
//!
//! Tables come from a [`DmaMemory`]. Tables emptied by [`PageTable::unmap`] are *retired*:
//! the SMMU's walk caches may still point at them until the caller's TLB invalidation
//! completed, so they are only reused or freed by [`PageTable::release_retired`], which
//! the caller invokes after the invalidation.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::regs::{field_get, field_prep, genmask};

/// Translation granule.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Entries per table.
pub const PTES_PER_TABLE: usize = 512;
/// 2MB block (level 2).
pub const BLOCK_2M: u64 = 1 << 21;
/// 1GB block (level 1).
pub const BLOCK_1G: u64 = 1 << 30;

/// Descriptor bit 0: valid.
pub const PTE_VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (levels 0-2) or page (level 3); 0 at levels 1-2 is a block.
pub const PTE_TYPE_TABLE: u64 = 1 << 1;
/// Same bit, named for level-3 page descriptors.
pub const PTE_TYPE_PAGE: u64 = 1 << 1;
/// AttrIndx `[4:2]`: MAIR attribute index.
pub const PTE_ATTRINDX: u64 = genmask(4, 2);
/// NS (bit 5).
pub const PTE_NS: u64 = 1 << 5;
/// `AP[1]` (bit 6): unprivileged (EL0 / PnU = 0) access allowed.
pub const PTE_AP_UNPRIV: u64 = 1 << 6;
/// `AP[2]` (bit 7): read-only.
pub const PTE_AP_RDONLY: u64 = 1 << 7;
/// SH `[9:8]`: shareability.
pub const PTE_SH: u64 = genmask(9, 8);
/// AF (bit 10): access flag.
pub const PTE_AF: u64 = 1 << 10;
/// nG (bit 11): not global (TLB entries tagged with the ASID).
pub const PTE_NG: u64 = 1 << 11;
/// Output address `[47:12]`.
pub const PTE_ADDR: u64 = genmask(47, 12);
/// DBM (bit 51).
pub const PTE_DBM: u64 = 1 << 51;
/// Contiguous hint (bit 52).
pub const PTE_CONT: u64 = 1 << 52;
/// PXN (bit 53): privileged execute-never.
pub const PTE_PXN: u64 = 1 << 53;
/// UXN/XN (bit 54): unprivileged execute-never.
pub const PTE_UXN: u64 = 1 << 54;

/// MAIR index of Normal write-back memory (see [`crate::cd::DEFAULT_MAIR`]).
pub const MAIR_IDX_NORMAL: u64 = 0;
/// MAIR index of Device-nGnRE memory.
pub const MAIR_IDX_DEVICE: u64 = 1;
/// MAIR index of Normal non-cacheable memory.
pub const MAIR_IDX_NORMAL_NC: u64 = 2;

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemAttr {
    /// Normal, write-back cacheable, inner shareable.
    Normal,
    /// Normal, non-cacheable, outer shareable.
    NormalNonCacheable,
    /// Device-nGnRE (for example a peer device's MMIO window).
    Device,
}

/// Access permissions of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot {
    /// Reads allowed (must be true: AArch64 stage 1 has no write-only permission).
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Instruction fetches (InD = 1) allowed.
    pub exec: bool,
    /// Unprivileged (PnU = 0) accesses allowed as well as privileged ones.
    pub unprivileged: bool,
    /// Memory type.
    pub attr: MemAttr,
}

impl Prot {
    /// Read-only data, any privilege, normal memory.
    pub const READ: Self = Self {
        read: true,
        write: false,
        exec: false,
        unprivileged: true,
        attr: MemAttr::Normal,
    };
    /// Read-write data, any privilege, normal memory.
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
        exec: false,
        unprivileged: true,
        attr: MemAttr::Normal,
    };

    /// Leaf descriptor bits (without V, type bit and address).
    pub fn pte_attrs(&self) -> Result<u64> {
        if !self.read {
            return Err(Error::InvalidPermissions);
        }
        let (idx, sh) = match self.attr {
            MemAttr::Normal => (MAIR_IDX_NORMAL, crate::regs::SH_ISH),
            MemAttr::NormalNonCacheable => (MAIR_IDX_NORMAL_NC, crate::regs::SH_OSH),
            MemAttr::Device => (MAIR_IDX_DEVICE, crate::regs::SH_OSH),
        };
        let mut a = PTE_AF | PTE_NG | field_prep(PTE_ATTRINDX, idx) | field_prep(PTE_SH, sh);
        if !self.write {
            a |= PTE_AP_RDONLY;
        }
        if self.unprivileged {
            a |= PTE_AP_UNPRIV;
        }
        if !self.exec {
            a |= PTE_UXN | PTE_PXN;
        }
        Ok(a)
    }

    /// Permissions encoded in a leaf descriptor.
    pub fn from_pte(pte: u64) -> Self {
        Self {
            read: true,
            write: pte & PTE_AP_RDONLY == 0,
            exec: pte & (PTE_UXN | PTE_PXN) != (PTE_UXN | PTE_PXN),
            unprivileged: pte & PTE_AP_UNPRIV != 0,
            attr: match field_get(PTE_ATTRINDX, pte) {
                MAIR_IDX_DEVICE => MemAttr::Device,
                MAIR_IDX_NORMAL_NC => MemAttr::NormalNonCacheable,
                _ => MemAttr::Normal,
            },
        }
    }
}

/// What an unmap removed: the input to TLB invalidation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unmapped {
    /// Start of the requested range.
    pub iova: u64,
    /// Size of the requested range.
    pub size: u64,
    /// Bytes of mappings removed (0: nothing was mapped).
    pub bytes: u64,
    /// Number of leaf entries cleared.
    pub leaves: u64,
    /// Smallest leaf size removed (0 if none).
    pub min_leaf: u64,
    /// Largest leaf size removed (0 if none).
    pub max_leaf: u64,
    /// Tables emptied and retired (walk caches must be invalidated: non-leaf TLBI).
    pub tables_freed: u32,
    /// Blocks split into next-level tables to unmap part of them.
    pub blocks_split: u32,
}

impl Unmapped {
    /// Nothing was removed and no table changed: no invalidation needed.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0 && self.tables_freed == 0 && self.blocks_split == 0
    }

    /// Whether only leaf entries changed (TLBI with Leaf = 1 suffices).
    pub fn leaf_only(&self) -> bool {
        self.tables_freed == 0
    }

    fn record_leaf(&mut self, size: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.bytes += size * n;
        self.leaves += n;
        self.min_leaf = if self.min_leaf == 0 {
            size
        } else {
            self.min_leaf.min(size)
        };
        self.max_leaf = self.max_leaf.max(size);
    }
}

/// Result of a translation lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Output address.
    pub pa: u64,
    /// Level of the leaf (1, 2 or 3).
    pub level: u8,
    /// The leaf descriptor.
    pub pte: u64,
}

/// A stage-1 translation table.
#[derive(Debug)]
pub struct PageTable {
    root: PhysAddr,
    va_bits: u8,
    oa_bits: u8,
    start_level: u8,
    root_entries: usize,
    tables: usize,
    retired: Vec<PhysAddr>,
    spare: Vec<PhysAddr>,
    spare_limit: usize,
}

/// Table descriptor bits `[11:2]` are IGNORED by the walk (VMSAv8-64 table descriptor
/// format): this table keeps the number of valid entries of the next-level table there,
/// so emptied tables are found without scanning them.
pub const PTE_TABLE_COUNT: u64 = genmask(11, 2);

#[inline(always)]
fn table_desc(child: PhysAddr, count: u32) -> u64 {
    (child.0 & PTE_ADDR)
        | field_prep(PTE_TABLE_COUNT, u64::from(count))
        | PTE_TYPE_TABLE
        | PTE_VALID
}

#[inline(always)]
fn table_count(desc: u64) -> u32 {
    field_get(PTE_TABLE_COUNT, desc) as u32
}

#[inline(always)]
const fn level_shift(level: u8) -> u32 {
    PAGE_SHIFT + 9 * (3 - level as u32)
}

impl PageTable {
    /// A new empty table for `va_bits`-bit inputs (25..=48) and `oa_bits`-bit outputs
    /// (at most 48 with the 4KB granule).
    pub fn new<M: DmaMemory>(mem: &mut M, va_bits: u8, oa_bits: u8) -> Result<Self> {
        if !(25..=48).contains(&va_bits) {
            return Err(Error::InvalidField("VA size"));
        }
        if !(32..=48).contains(&oa_bits) {
            return Err(Error::InvalidField("OA size"));
        }
        let levels = (u32::from(va_bits) - PAGE_SHIFT).div_ceil(9) as u8;
        let start_level = 4 - levels;
        let root_entries = 1usize << (u32::from(va_bits) - level_shift(start_level));
        let root = mem
            .alloc_zeroed(PAGE_SIZE as usize, PAGE_SIZE as usize)
            .ok_or(Error::OutOfMemory)?;
        Ok(Self {
            root,
            va_bits,
            oa_bits,
            start_level,
            root_entries,
            tables: 1,
            retired: Vec::new(),
            spare: Vec::new(),
            spare_limit: 16,
        })
    }

    /// Root table address (CD.TTB0).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// T0SZ for the CD.
    pub fn t0sz(&self) -> u8 {
        64 - self.va_bits
    }

    /// Input address bits.
    pub fn va_bits(&self) -> u8 {
        self.va_bits
    }

    /// Level the walk starts at.
    pub fn start_level(&self) -> u8 {
        self.start_level
    }

    /// Tables currently linked into the tree (including the root).
    pub fn table_count(&self) -> usize {
        self.tables
    }

    /// Tables retired by unmaps and not yet released.
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    /// Keep up to `n` zeroed frames for reuse instead of returning them to the provider.
    pub fn set_spare_limit(&mut self, n: usize) {
        self.spare_limit = n;
    }

    #[inline(always)]
    fn table<M: DmaMemory>(&self, mem: &M, pa: PhysAddr) -> Words {
        // SAFETY: every table address in the tree was allocated from `mem` as a 4KB
        // (512-word) region owned by this page table.
        unsafe { Words::new(mem, pa, PTES_PER_TABLE) }
    }

    #[inline(always)]
    fn index(&self, iova: u64, level: u8) -> usize {
        let i = (iova >> level_shift(level)) as usize;
        if level == self.start_level {
            i & (self.root_entries - 1)
        } else {
            i & (PTES_PER_TABLE - 1)
        }
    }

    fn alloc_table<M: DmaMemory>(&mut self, mem: &mut M) -> Result<PhysAddr> {
        let pa = match self.spare.pop() {
            Some(pa) => pa,
            None => mem
                .alloc_zeroed(PAGE_SIZE as usize, PAGE_SIZE as usize)
                .ok_or(Error::OutOfMemory)?,
        };
        self.tables += 1;
        Ok(pa)
    }

    fn check_range(&self, iova: u64, size: u64) -> Result<u64> {
        if (iova | size) & (PAGE_SIZE - 1) != 0 || size == 0 {
            return Err(Error::Misaligned);
        }
        let end = iova.checked_add(size).ok_or(Error::OutOfRange)?;
        if end > 1u64 << self.va_bits {
            return Err(Error::OutOfRange);
        }
        Ok(end)
    }

    /// Map `[iova, iova + size)` to `[pa, pa + size)`. All three must be 4KB aligned.
    /// Uses 1GB/2MB blocks where alignment and size allow. On error nothing of the range
    /// stays mapped (already written entries are removed again).
    pub fn map<M: DmaMemory>(
        &mut self,
        mem: &mut M,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<()> {
        let end = self.check_range(iova, size)?;
        if pa & (PAGE_SIZE - 1) != 0 {
            return Err(Error::Misaligned);
        }
        match pa.checked_add(size) {
            Some(pend) if pend <= 1u64 << self.oa_bits => {}
            _ => return Err(Error::OutOfRange),
        }
        let attrs = prot.pte_attrs()?;
        let mut done = iova;
        let root = self.root;
        let mut added = 0;
        let r = self.map_level(
            mem,
            root,
            self.start_level,
            iova,
            pa,
            end,
            attrs,
            &mut done,
            &mut added,
        );
        if r.is_err() && done > iova {
            // Roll back what this call mapped; blocks lie wholly inside, so no split is
            // needed and this cannot fail for lack of memory.
            let _ = self.unmap_inner(mem, iova, done, &mut Vec::new());
        }
        r
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "recursive walk state kept in registers"
    )]
    /// Map `[iova, end)` inside `table`; `added` counts entries of `table` made valid.
    fn map_level<M: DmaMemory>(
        &mut self,
        mem: &mut M,
        table: PhysAddr,
        level: u8,
        mut iova: u64,
        mut pa: u64,
        end: u64,
        attrs: u64,
        done: &mut u64,
        added: &mut u32,
    ) -> Result<()> {
        let t = self.table(mem, table);
        if level == 3 {
            // Hot loop: [iova, end) lies inside this table. Check first, then write, so a
            // conflict leaves this chunk untouched.
            let first = self.index(iova, 3);
            let n = ((end - iova) >> PAGE_SHIFT) as usize;
            let slots = &t.atomics()[first..first + n];
            if let Some(k) = slots
                .iter()
                .position(|e| u64::from_le(e.load(Ordering::Relaxed)) & PTE_VALID != 0)
            {
                *done = iova;
                return Err(Error::AlreadyMapped {
                    iova: iova + ((k as u64) << PAGE_SHIFT),
                });
            }
            let mut desc = attrs | PTE_VALID | PTE_TYPE_PAGE | pa;
            for e in slots {
                e.store(desc.to_le(), Ordering::Relaxed);
                desc += PAGE_SIZE;
            }
            *added += n as u32;
            *done = end;
            return Ok(());
        }
        let size = 1u64 << level_shift(level);
        while iova < end {
            let i = self.index(iova, level);
            let next = ((iova | (size - 1)) + 1).min(end);
            let e = t.load(i);
            if e & PTE_VALID == 0 {
                if level >= 1 && (iova | pa) & (size - 1) == 0 && next - iova == size {
                    t.store(i, attrs | PTE_VALID | (pa & PTE_ADDR));
                    *added += 1;
                    *done = next;
                } else {
                    let child = self.alloc_table(mem)?;
                    // The child is zeroed; linking it first is safe because its entries
                    // are invalid until written below.
                    t.store(i, child.0 | PTE_TYPE_TABLE | PTE_VALID);
                    let mut n = 0;
                    let r =
                        self.map_level(mem, child, level + 1, iova, pa, next, attrs, done, &mut n);
                    if n == 0 {
                        // Nothing went in (error): unlink; walks may have seen it.
                        t.store(i, 0);
                        self.tables -= 1;
                        self.retired.push(child);
                    } else {
                        t.store(i, table_desc(child, n));
                        *added += 1;
                    }
                    r?;
                }
            } else if e & PTE_TYPE_TABLE != 0 {
                let child = PhysAddr(e & PTE_ADDR);
                let mut n = 0;
                let r = self.map_level(mem, child, level + 1, iova, pa, next, attrs, done, &mut n);
                if n != 0 {
                    t.store(i, table_desc(child, table_count(e) + n));
                }
                r?;
            } else {
                *done = iova;
                return Err(Error::AlreadyMapped { iova });
            }
            pa += next - iova;
            iova = next;
        }
        Ok(())
    }

    /// Look up one address.
    pub fn translate<M: DmaMemory>(&self, mem: &M, iova: u64) -> Option<Translation> {
        if iova >> self.va_bits != 0 {
            return None;
        }
        let mut table = self.root;
        let mut level = self.start_level;
        loop {
            let e = self.table(mem, table).load(self.index(iova, level));
            if e & PTE_VALID == 0 {
                return None;
            }
            let shift = level_shift(level);
            if level == 3 || e & PTE_TYPE_TABLE == 0 {
                let mask = (1u64 << shift) - 1;
                return Some(Translation {
                    pa: (e & PTE_ADDR & !mask) | (iova & mask),
                    level,
                    pte: e,
                });
            }
            table = PhysAddr(e & PTE_ADDR);
            level += 1;
        }
    }

    /// Level of the block containing `a` that `[start, end)` covers only partly.
    fn partial_block_level<M: DmaMemory>(
        &self,
        mem: &M,
        a: u64,
        start: u64,
        end: u64,
    ) -> Option<u8> {
        let t = self.translate(mem, a)?;
        if t.level == 3 {
            return None;
        }
        let size = 1u64 << level_shift(t.level);
        let bstart = a & !(size - 1);
        (bstart < start || bstart + size > end).then_some(t.level)
    }

    /// Remove the mappings in `[iova, iova + size)` (addresses not mapped are skipped).
    /// Blocks only partly inside the range are split; tables left empty are retired.
    /// The caller must invalidate the TLB for the range (see [`crate::tlbi`]) and then
    /// call [`release_retired`](Self::release_retired).
    ///
    /// Fails only before changing anything: out of range, misaligned, or out of memory
    /// for the (at most four) tables a split needs.
    pub fn unmap<M: DmaMemory>(&mut self, mem: &mut M, iova: u64, size: u64) -> Result<Unmapped> {
        let end = self.check_range(iova, size)?;
        let mut need = 0usize;
        let last = end - PAGE_SIZE;
        let boundaries = if last == iova {
            &[iova][..]
        } else {
            &[iova, last][..]
        };
        for &a in boundaries {
            if let Some(l) = self.partial_block_level(mem, a, iova, end) {
                need += usize::from(3 - l);
            }
        }
        let mut reserve = Vec::new();
        for _ in 0..need {
            match self.alloc_table(mem) {
                Ok(p) => {
                    // Counted when linked by a split.
                    self.tables -= 1;
                    reserve.push(p);
                }
                Err(e) => {
                    self.spare.append(&mut reserve);
                    return Err(e);
                }
            }
        }
        let out = self.unmap_inner(mem, iova, end, &mut reserve);
        // Unused reserved frames are still zero.
        self.spare.append(&mut reserve);
        Ok(out)
    }

    fn unmap_inner<M: DmaMemory>(
        &mut self,
        mem: &mut M,
        iova: u64,
        end: u64,
        reserve: &mut Vec<PhysAddr>,
    ) -> Unmapped {
        let mut out = Unmapped {
            iova,
            size: end - iova,
            ..Unmapped::default()
        };
        let root = self.root;
        self.unmap_level(mem, root, self.start_level, iova, end, &mut out, reserve);
        out
    }

    #[allow(clippy::too_many_arguments, reason = "recursive walk state")]
    /// Unmap `[iova, end)` inside `table`; returns how many of its entries became invalid.
    fn unmap_level<M: DmaMemory>(
        &mut self,
        mem: &mut M,
        table: PhysAddr,
        level: u8,
        iova: u64,
        end: u64,
        out: &mut Unmapped,
        reserve: &mut Vec<PhysAddr>,
    ) -> u32 {
        let t = self.table(mem, table);
        if level == 3 {
            let first = self.index(iova, 3);
            let n = ((end - iova) >> PAGE_SHIFT) as usize;
            let mut cleared = 0;
            for e in &t.atomics()[first..first + n] {
                if u64::from_le(e.load(Ordering::Relaxed)) & PTE_VALID != 0 {
                    e.store(0, Ordering::Relaxed);
                    cleared += 1;
                }
            }
            out.record_leaf(PAGE_SIZE, u64::from(cleared));
            return cleared;
        }
        let size = 1u64 << level_shift(level);
        let mut a = iova;
        let mut cleared = 0;
        while a < end {
            let i = self.index(a, level);
            let estart = a & !(size - 1);
            let eend = estart + size;
            let next = eend.min(end);
            let e = t.load(i);
            let whole = a == estart && next == eend;
            if e & PTE_VALID == 0 {
                // Nothing mapped here.
            } else if e & PTE_TYPE_TABLE == 0 {
                // Block.
                if whole {
                    t.store(i, 0);
                    out.record_leaf(size, 1);
                    cleared += 1;
                } else if let Some(child) = reserve.pop() {
                    // Split: a next-level table reproducing the block, then unmap in it.
                    // Addresses outside the range keep translating identically; one
                    // store swaps block for table (break-before-make is relaxed by
                    // IDR3.BBML; the caller's TLBI covers the old block entry).
                    let ct = self.table(mem, child);
                    let csize = size >> 9;
                    let base = e & PTE_ADDR;
                    let attrs = e & !(PTE_ADDR | PTE_VALID | PTE_TYPE_TABLE);
                    let ty = if level + 1 == 3 { PTE_TYPE_PAGE } else { 0 };
                    for k in 0..PTES_PER_TABLE {
                        ct.store(k, attrs | ty | PTE_VALID | (base + k as u64 * csize));
                    }
                    self.tables += 1;
                    t.store(i, table_desc(child, PTES_PER_TABLE as u32));
                    out.blocks_split += 1;
                    let c = self.unmap_level(mem, child, level + 1, a, next, out, reserve);
                    t.store(i, table_desc(child, PTES_PER_TABLE as u32 - c));
                }
                // (No reserved table: impossible, `unmap` reserves one per partial block.)
            } else {
                let child = PhysAddr(e & PTE_ADDR);
                let c = self.unmap_level(mem, child, level + 1, a, next, out, reserve);
                let left = table_count(e).saturating_sub(c);
                if left == 0 {
                    debug_assert!((0..PTES_PER_TABLE).all(|k| self.table(mem, child).load(k) == 0));
                    t.store(i, 0);
                    self.tables -= 1;
                    self.retired.push(child);
                    out.tables_freed += 1;
                    cleared += 1;
                } else if c != 0 {
                    t.store(i, table_desc(child, left));
                }
            }
            a = next;
        }
        cleared
    }

    /// Make tables retired by earlier unmaps reusable (or free them).
    ///
    /// # Safety
    /// The TLB invalidation covering every unmap since the last call must have completed
    /// (CMD_SYNC consumed), so the SMMU's walk caches no longer reference these tables.
    pub unsafe fn release_retired<M: DmaMemory>(&mut self, mem: &mut M) {
        while let Some(p) = self.retired.pop() {
            if self.spare.len() < self.spare_limit {
                self.spare.push(p);
            } else {
                // SAFETY: `p` is a 4KB table from `mem`, unlinked, and per the caller no
                // longer cached by the SMMU.
                unsafe { mem.free(p, PAGE_SIZE as usize, PAGE_SIZE as usize) };
            }
        }
    }

    /// Free every table.
    ///
    /// # Safety
    /// No CD may reference this table any more, and the invalidations making the SMMU
    /// forget it (CFGI_CD, TLBI for the ASID, CMD_SYNC) must have completed.
    pub unsafe fn destroy<M: DmaMemory>(mut self, mem: &mut M) {
        fn free_tree<M: DmaMemory>(pt: &PageTable, mem: &mut M, table: PhysAddr, level: u8) {
            if level < 3 {
                let t = pt.table(mem, table);
                let n = if level == pt.start_level {
                    pt.root_entries
                } else {
                    PTES_PER_TABLE
                };
                for k in 0..n {
                    let e = t.load(k);
                    if e & PTE_VALID != 0 && e & PTE_TYPE_TABLE != 0 {
                        free_tree(pt, mem, PhysAddr(e & PTE_ADDR), level + 1);
                    }
                }
            }
            // SAFETY: `table` was allocated from `mem` as a 4KB frame; the caller of
            // `destroy` guarantees the SMMU no longer uses it.
            unsafe { mem.free(table, PAGE_SIZE as usize, PAGE_SIZE as usize) };
        }
        free_tree(&self, mem, self.root, self.start_level);
        self.spare_limit = 0;
        // SAFETY: forwarded from this function's contract.
        unsafe { self.release_retired(mem) };
        for p in self.spare.drain(..) {
            // SAFETY: spare frames are unlinked 4KB frames from `mem`.
            unsafe { mem.free(p, PAGE_SIZE as usize, PAGE_SIZE as usize) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::IdentityHeap;

    fn pt(va: u8) -> (IdentityHeap, PageTable) {
        let mut m = IdentityHeap::new();
        let p = PageTable::new(&mut m, va, 48).unwrap();
        (m, p)
    }

    #[test]
    fn levels_from_va_size() {
        for (va, start, root) in [
            (48, 0, 512),
            (39, 1, 512),
            (44, 0, 32),
            (30, 2, 512),
            (25, 2, 16),
            (40, 0, 2),
        ] {
            let (mut m, p) = pt(va);
            assert_eq!(p.start_level(), start, "va {va}");
            assert_eq!(p.root_entries, root, "va {va}");
            assert_eq!(p.t0sz(), 64 - va);
            // SAFETY: never used by hardware.
            unsafe { p.destroy(&mut m) };
            assert_eq!(m.live_regions, 0);
        }
        let mut m = IdentityHeap::new();
        assert!(PageTable::new(&mut m, 49, 48).is_err());
        assert!(PageTable::new(&mut m, 24, 48).is_err());
    }

    #[test]
    fn page_descriptor_bits() {
        let (mut m, mut p) = pt(48);
        p.map(&mut m, 0x1000, 0x8000_2000, 0x1000, Prot::READ_WRITE)
            .unwrap();
        let t = p.translate(&m, 0x1234).unwrap();
        assert_eq!(t.level, 3);
        assert_eq!(t.pa, 0x8000_2234);
        let e = t.pte;
        assert_eq!(e & 3, 3, "valid page");
        assert_eq!((e >> 2) & 7, 0, "AttrIndx normal");
        assert_eq!((e >> 6) & 3, 0b01, "AP: RW, unprivileged allowed");
        assert_eq!((e >> 8) & 3, 3, "inner shareable");
        assert_eq!((e >> 10) & 1, 1, "AF");
        assert_eq!((e >> 11) & 1, 1, "nG");
        assert_eq!(e & PTE_ADDR, 0x8000_2000);
        assert_eq!((e >> 53) & 3, 3, "PXN and UXN");
        let ro = Prot {
            unprivileged: false,
            exec: true,
            attr: MemAttr::Device,
            ..Prot::READ
        };
        p.map(&mut m, 0x2000, 0x9000_0000, 0x1000, ro).unwrap();
        let e = p.translate(&m, 0x2000).unwrap().pte;
        assert_eq!((e >> 6) & 3, 0b10, "AP: RO, privileged only");
        assert_eq!((e >> 2) & 7, 1, "Device index");
        assert_eq!((e >> 8) & 3, 2, "outer shareable");
        assert_eq!((e >> 53) & 3, 0, "executable");
        assert_eq!(Prot::from_pte(e), ro);
        let nc = Prot {
            attr: MemAttr::NormalNonCacheable,
            ..Prot::READ_WRITE
        };
        assert_eq!(field_get(PTE_ATTRINDX, nc.pte_attrs().unwrap()), 2);
        assert_eq!(
            p.map(
                &mut m,
                0x3000,
                0x3000,
                0x1000,
                Prot {
                    read: false,
                    ..Prot::READ_WRITE
                }
            ),
            Err(Error::InvalidPermissions)
        );
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
    }

    #[test]
    fn blocks_where_alignment_allows() {
        let (mut m, mut p) = pt(48);
        // 1GB + 2MB + 4KB, all aligned: one 1G block, one 2M block, one page.
        let size = BLOCK_1G + BLOCK_2M + PAGE_SIZE;
        p.map(&mut m, 0x40_0000_0000, 0x8000_0000, size, Prot::READ_WRITE)
            .unwrap();
        let a = p.translate(&m, 0x40_0000_0000 + 12345).unwrap();
        assert_eq!((a.level, a.pa), (1, 0x8000_0000 + 12345));
        assert_eq!(a.pte & 3, 1, "block descriptor: bit 1 clear");
        assert_eq!(a.pte & PTE_ADDR, 0x8000_0000);
        let b = p.translate(&m, 0x40_4000_0000 + 7).unwrap();
        assert_eq!((b.level, b.pa), (2, 0xc000_0007));
        let c = p.translate(&m, 0x40_4020_0000).unwrap();
        assert_eq!((c.level, c.pa), (3, 0xc020_0000));
        assert!(p.translate(&m, 0x40_4020_1000).is_none());
        // Misaligned output: the same size only gets pages and 2M blocks cannot be used.
        p.map(&mut m, 0x100_0000_0000, 0x1000, BLOCK_2M, Prot::READ)
            .unwrap();
        assert_eq!(p.translate(&m, 0x100_0000_0000).unwrap().level, 3);
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn map_errors() {
        let (mut m, mut p) = pt(39);
        assert_eq!(
            p.map(&mut m, 0x1001, 0, 0x1000, Prot::READ),
            Err(Error::Misaligned)
        );
        assert_eq!(
            p.map(&mut m, 0x1000, 0x10, 0x1000, Prot::READ),
            Err(Error::Misaligned)
        );
        assert_eq!(
            p.map(&mut m, 0x1000, 0, 0x10, Prot::READ),
            Err(Error::Misaligned)
        );
        assert_eq!(
            p.map(&mut m, 0x1000, 0, 0, Prot::READ),
            Err(Error::Misaligned)
        );
        assert_eq!(
            p.map(&mut m, 1 << 39, 0, 0x1000, Prot::READ),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            p.map(&mut m, 0, 1 << 48, 0x1000, Prot::READ),
            Err(Error::OutOfRange)
        );
        p.map(&mut m, 0x5000, 0x5000, 0x1000, Prot::READ).unwrap();
        // Overlapping map fails and leaves the earlier part of the new range unmapped.
        assert_eq!(
            p.map(&mut m, 0x2000, 0x2000, 0x8000, Prot::READ),
            Err(Error::AlreadyMapped { iova: 0x5000 })
        );
        assert!(p.translate(&m, 0x2000).is_none());
        assert!(p.translate(&m, 0x4000).is_none());
        assert!(p.translate(&m, 0x5000).is_some());
        // A page inside an existing block.
        p.map(&mut m, 0x4000_0000, 0x4000_0000, BLOCK_1G, Prot::READ)
            .unwrap();
        assert_eq!(
            p.map(&mut m, 0x4000_1000, 0, 0x1000, Prot::READ),
            Err(Error::AlreadyMapped { iova: 0x4000_1000 })
        );
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    /// A provider that fails after a number of allocations.
    struct Limited {
        heap: IdentityHeap,
        left: usize,
    }
    // SAFETY: delegates to `IdentityHeap`, only refusing some allocations.
    unsafe impl DmaMemory for Limited {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            self.heap.alloc_zeroed(size, align)
        }
        unsafe fn free(&mut self, pa: PhysAddr, size: usize, align: usize) {
            // SAFETY: forwarded contract.
            unsafe { self.heap.free(pa, size, align) }
        }
        fn virt(&self, pa: PhysAddr) -> *mut u8 {
            self.heap.virt(pa)
        }
    }

    #[test]
    fn out_of_memory_rolls_back() {
        let mut m = Limited {
            heap: IdentityHeap::new(),
            left: 4,
        };
        let mut p = PageTable::new(&mut m, 48, 48).unwrap();
        // Root + L1 + L2 + one L3 fit; the second L3 table does not.
        let r = p.map(&mut m, 0x1f_f000, 0x1f_f000, 0x3000, Prot::READ);
        assert_eq!(r, Err(Error::OutOfMemory));
        assert!(p.translate(&m, 0x1f_f000).is_none(), "rolled back");
        // Splitting a block needs memory too; refused before any change.
        m.left = 10;
        p.map(&mut m, 0x4000_0000, 0x4000_0000, BLOCK_1G, Prot::READ)
            .unwrap();
        m.left = 0;
        assert_eq!(
            p.unmap(&mut m, 0x4000_1000, 0x1000),
            Err(Error::OutOfMemory)
        );
        assert_eq!(p.translate(&m, 0x4000_1000).unwrap().level, 1);
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.heap.live_regions, 0);
    }

    #[test]
    fn unmap_reports_and_frees() {
        let (mut m, mut p) = pt(48);
        p.map(
            &mut m,
            0x20_0000,
            0x20_0000,
            512 * PAGE_SIZE - PAGE_SIZE,
            Prot::READ,
        )
        .unwrap();
        assert_eq!(p.table_count(), 4);
        let u = p.unmap(&mut m, 0x20_0000, 0x10_0000).unwrap();
        assert_eq!(u.bytes, 0x10_0000);
        assert_eq!(u.leaves, 256);
        assert_eq!((u.min_leaf, u.max_leaf), (PAGE_SIZE, PAGE_SIZE));
        assert_eq!(u.tables_freed, 0);
        assert!(u.leaf_only());
        let u = p.unmap(&mut m, 0x30_0000, 0x10_0000).unwrap();
        assert_eq!(u.leaves, 255, "one page of the range was never mapped");
        assert_eq!(u.tables_freed, 3, "L3, L2 and L1 emptied");
        assert!(!u.leaf_only());
        assert_eq!(p.table_count(), 1);
        assert_eq!(p.retired_count(), 3);
        // Unmapping nothing.
        let u = p.unmap(&mut m, 0x1000_0000, 0x1000).unwrap();
        assert!(u.is_empty());
        // SAFETY: never used by hardware.
        unsafe { p.release_retired(&mut m) };
        assert_eq!(p.retired_count(), 0);
        // Spare tables are reused: no new allocations for the same shape.
        let before = m.live_regions;
        p.map(&mut m, 0x20_0000, 0x20_0000, 0x1000, Prot::READ)
            .unwrap();
        assert_eq!(m.live_regions, before);
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn table_descriptors_count_valid_entries() {
        let (mut m, mut p) = pt(39);
        p.map(&mut m, 0x20_0000, 0x20_0000, 5 * PAGE_SIZE, Prot::READ)
            .unwrap();
        p.map(&mut m, 0x40_0000, 0x40_0000, BLOCK_2M, Prot::READ)
            .unwrap();
        let root = p.table(&m, p.root());
        let l1e = root.load(0);
        assert_eq!(l1e & 3, 3, "table descriptor");
        assert_eq!(table_count(l1e), 2, "one L3 table and one 2M block below");
        let l2 = p.table(&m, PhysAddr(l1e & PTE_ADDR));
        assert_eq!(table_count(l2.load(1)), 5);
        assert_eq!(l2.load(1) & PTE_ADDR, l2.load(1) & !0xfff & ((1 << 48) - 1));
        p.unmap(&mut m, 0x20_1000, 2 * PAGE_SIZE).unwrap();
        assert_eq!(table_count(l2.load(1)), 3);
        // Translation ignores the count bits.
        assert_eq!(p.translate(&m, 0x20_0000).unwrap().pa, 0x20_0000);
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn partial_unmap_splits_blocks() {
        let (mut m, mut p) = pt(48);
        p.map(
            &mut m,
            0x4000_0000,
            0x1_0000_0000,
            BLOCK_1G,
            Prot::READ_WRITE,
        )
        .unwrap();
        // Punch one page out of the middle of the 1G block: 1G -> 2M table -> 4K table.
        let u = p.unmap(&mut m, 0x4020_3000, 0x1000).unwrap();
        assert_eq!(u.blocks_split, 2);
        assert_eq!(u.bytes, 0x1000);
        assert!(p.translate(&m, 0x4020_3000).is_none());
        let n = p.translate(&m, 0x4020_2fff).unwrap();
        assert_eq!((n.level, n.pa), (3, 0x1_0020_2fff));
        assert_eq!(
            Prot::from_pte(n.pte),
            Prot::READ_WRITE,
            "attributes preserved"
        );
        let n = p.translate(&m, 0x4020_4000).unwrap();
        assert_eq!(n.pa, 0x1_0020_4000);
        let far = p.translate(&m, 0x7fff_ffff).unwrap();
        assert_eq!((far.level, far.pa), (2, 0x1_3fff_ffff));
        assert_eq!(far.pte & 3, 1, "still a block");
        // A range straddling two 2M blocks splits both ends.
        p.map(&mut m, 0x8000_0000, 0x8000_0000, 2 * BLOCK_2M, Prot::READ)
            .unwrap();
        let u = p.unmap(&mut m, 0x8010_0000, BLOCK_2M).unwrap();
        assert_eq!(u.blocks_split, 2);
        assert_eq!(u.bytes, BLOCK_2M);
        assert!(p.translate(&m, 0x800f_f000).is_some());
        assert!(p.translate(&m, 0x8010_0000).is_none());
        assert!(p.translate(&m, 0x802f_f000).is_none());
        assert!(p.translate(&m, 0x8030_0000).is_some());
        // Whole-block unmap does not split.
        p.map(&mut m, 0xc000_0000, 0xc000_0000, BLOCK_2M, Prot::READ)
            .unwrap();
        let u = p.unmap(&mut m, 0xc000_0000, BLOCK_2M).unwrap();
        assert_eq!((u.blocks_split, u.leaves, u.min_leaf), (0, 1, BLOCK_2M));
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    /// Random maps (pages and 2MB blocks) and unmaps of arbitrary sub-ranges (splitting
    /// blocks) checked page by page against a plain map of what should be mapped.
    #[test]
    fn matches_reference_model() {
        extern crate std;
        use std::collections::BTreeMap;
        let (mut m, mut p) = pt(39);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // page number -> output page
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        const SPACE: u64 = 8 << 21; // 16MB of IOVA: 8 2MB regions
        let (mut splits, mut conflicts, mut freed) = (0, 0, 0);
        for step in 0..400 {
            if rnd(3) != 0 {
                // Map: sometimes 2MB-aligned runs (blocks), sometimes pages.
                let (iova, pa, size) = if rnd(2) == 0 {
                    let blocks = 1 + rnd(2);
                    let i = rnd(8 - blocks + 1) * BLOCK_2M;
                    (i, 0x1_0000_0000 + rnd(64) * BLOCK_2M, blocks * BLOCK_2M)
                } else {
                    let n = 1 + rnd(700);
                    let i = rnd(SPACE / PAGE_SIZE - n) * PAGE_SIZE;
                    (i, 0x2_0000_0000 + rnd(1 << 16) * PAGE_SIZE, n * PAGE_SIZE)
                };
                let first = iova / PAGE_SIZE;
                let n = size / PAGE_SIZE;
                let conflict = (first..first + n).find(|pg| model.contains_key(pg));
                match p.map(&mut m, iova, pa, size, Prot::READ) {
                    Ok(()) => {
                        assert_eq!(conflict, None, "step {step}: map should have failed");
                        for k in 0..n {
                            model.insert(first + k, pa / PAGE_SIZE + k);
                        }
                    }
                    Err(Error::AlreadyMapped { iova: at }) => {
                        assert!(conflict.is_some(), "step {step}: spurious conflict");
                        conflicts += 1;
                        assert!(
                            model.contains_key(&(at / PAGE_SIZE)),
                            "step {step}: reported address"
                        );
                    }
                    Err(e) => panic!("step {step}: {e:?}"),
                }
            } else {
                let n = 1 + rnd(1200);
                let iova = rnd(SPACE / PAGE_SIZE - n) * PAGE_SIZE;
                let u = p.unmap(&mut m, iova, n * PAGE_SIZE).unwrap();
                let first = iova / PAGE_SIZE;
                let removed = (first..first + n)
                    .filter(|pg| model.remove(pg).is_some())
                    .count() as u64;
                assert_eq!(u.bytes, removed * PAGE_SIZE, "step {step}");
                splits += u.blocks_split;
                freed += u.tables_freed;
            }
            // SAFETY: never used by hardware.
            unsafe { p.release_retired(&mut m) };
            for _ in 0..64 {
                let pg = rnd(SPACE / PAGE_SIZE);
                let got = p.translate(&m, pg * PAGE_SIZE + 0x123).map(|t| t.pa);
                assert_eq!(
                    got,
                    model.get(&pg).map(|o| o * PAGE_SIZE + 0x123),
                    "step {step} page {pg:#x}"
                );
            }
        }
        assert!(
            splits > 0 && conflicts > 0 && freed > 0,
            "{splits} {conflicts} {freed}"
        );
        let all: std::vec::Vec<u64> = model.keys().copied().collect();
        for pg in all {
            assert!(p.translate(&m, pg * PAGE_SIZE).is_some());
        }
        p.unmap(&mut m, 0, SPACE).unwrap();
        assert_eq!(
            p.table_count(),
            1,
            "every emptied table was found through the counts"
        );
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn map_unmap_round_trip_many() {
        let (mut m, mut p) = pt(39);
        let mut x: u64 = 0x9e37_79b9;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = (x % 4096) * PAGE_SIZE;
            let n = 1 + (x >> 20) % 600;
            let size = n * PAGE_SIZE;
            match p.map(&mut m, page, page + 0x1_0000_0000, size, Prot::READ) {
                Ok(()) => {
                    assert_eq!(
                        p.translate(&m, page + size - 1).unwrap().pa,
                        page + 0x1_0000_0000 + size - 1
                    );
                    let u = p.unmap(&mut m, page, size).unwrap();
                    assert_eq!(u.bytes, size);
                }
                Err(e) => panic!("{e:?}"),
            }
            // SAFETY: never used by hardware.
            unsafe { p.release_retired(&mut m) };
            assert_eq!(p.table_count(), 1, "all tables emptied");
        }
        // SAFETY: never used by hardware.
        unsafe { p.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }
}
