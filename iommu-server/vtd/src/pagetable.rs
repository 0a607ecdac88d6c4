//! Second-level page tables (VT-d spec §3.7 "Second-Stage Translation", entry formats in
//! §9.8 "Second-Stage Paging Entries") and first-level entry encodings (§3.6, §9.7).
//!
//! A second-level table has 3 levels (39-bit input) or 4 levels (48-bit), chosen from
//! CAP.SAGAW and CAP.MGAW ([`crate::caps::Features::choose_levels`]). Level numbering
//! follows the spec's walk: level 1 holds 4KB leaves, level 2 may hold 2MB leaves and
//! level 3 1GB leaves (PS = 1) when CAP.SLLPS allows them. [`SecondLevel::map`] uses the
//! largest leaf that alignment and size permit; [`SecondLevel::unmap`] splits a large
//! leaf that is only partly unmapped.
//!
//! Each non-leaf entry keeps the number of present entries of the table it points to in
//! its ignored bits `[61:52]` ([`SL_COUNT`]), so unmap finds emptied tables without
//! scanning: it unlinks them and *retires* them, because the hardware's paging-structure
//! caches may still point at them until the caller's IOTLB invalidation completed.
//! [`SecondLevel::release_retired`], called after that invalidation, frees them or keeps
//! a few as spares for later maps.

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::regs::{field_prep, genmask};

/// 4KB page.
pub const PAGE_SIZE: u64 = 4096;
/// 2MB large page (level 2).
pub const PAGE_2M: u64 = 1 << 21;
/// 1GB large page (level 3).
pub const PAGE_1G: u64 = 1 << 30;
/// Entries per table.
pub const ENTRIES: usize = 512;

// --- Second-level paging entry (§9.8) ---
/// SL_PTE bit 0: R, read.
pub const SL_R: u64 = 1 << 0;
/// Bit 1: W, write.
pub const SL_W: u64 = 1 << 1;
/// Bit 2: X, execute (used with PASID-entry SLEE).
pub const SL_X: u64 = 1 << 2;
/// `[5:3]`: EMT, extended memory type (leaf, with EMTE).
pub const SL_EMT: u64 = genmask(5, 3);
/// Bit 6: IPAT, ignore PAT (leaf).
pub const SL_IPAT: u64 = 1 << 6;
/// Bit 7: PS, page size (leaf at level 2 or 3).
pub const SL_PS: u64 = 1 << 7;
/// Bit 8: A, accessed (with SLADE).
pub const SL_A: u64 = 1 << 8;
/// Bit 9: D, dirty (leaf, with SLADE).
pub const SL_D: u64 = 1 << 9;
/// Bit 11: SNP, snoop (leaf, with ECAP.SC).
pub const SL_SNP: u64 = 1 << 11;
/// `[51:12]`: ADDR, address of the next table or of the page.
pub const SL_ADDR: u64 = genmask(51, 12);
/// Bit 62: TM, transient mapping (leaf, device-TLB hint).
pub const SL_TM: u64 = 1 << 62;

// --- First-level (IA-32e) paging entry (§9.7) ---
/// FL bit 0: P, present.
pub const FL_P: u64 = 1 << 0;
/// Bit 1: R/W, writable.
pub const FL_RW: u64 = 1 << 1;
/// Bit 2: U/S, user accessible.
pub const FL_US: u64 = 1 << 2;
/// Bit 3: PWT.
pub const FL_PWT: u64 = 1 << 3;
/// Bit 4: PCD.
pub const FL_PCD: u64 = 1 << 4;
/// Bit 5: A, accessed.
pub const FL_A: u64 = 1 << 5;
/// Bit 6: D, dirty (leaf).
pub const FL_D: u64 = 1 << 6;
/// Bit 7: PS (leaf at level 2/3), or PAT in a 4KB leaf.
pub const FL_PS: u64 = 1 << 7;
/// Bit 8: G, global (leaf).
pub const FL_G: u64 = 1 << 8;
/// Bit 12: PAT in a 2MB/1GB leaf.
pub const FL_PAT_LARGE: u64 = 1 << 12;
/// `[51:12]`: ADDR (bit 12 is PAT in large leaves, so their addresses are aligned).
pub const FL_ADDR: u64 = genmask(51, 12);
/// Bit 63: XD, execute disable.
pub const FL_XD: u64 = 1 << 63;

/// Access permissions of a second-level mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
}

impl Prot {
    /// Read-only.
    pub const READ: Self = Self {
        read: true,
        write: false,
    };
    /// Write-only.
    pub const WRITE: Self = Self {
        read: false,
        write: true,
    };
    /// Read-write.
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
    };

    /// R/W bits of a leaf.
    pub fn bits(&self) -> Result<u64> {
        if !self.read && !self.write {
            return Err(Error::InvalidPermissions);
        }
        Ok(if self.read { SL_R } else { 0 } | if self.write { SL_W } else { 0 })
    }

    /// Permissions of an entry.
    pub const fn from_entry(e: u64) -> Self {
        Self {
            read: e & SL_R != 0,
            write: e & SL_W != 0,
        }
    }
}

/// Whether a second-level entry is present (any of R, W, X set; §9.8).
pub const fn sl_present(e: u64) -> bool {
    e & (SL_R | SL_W | SL_X) != 0
}

/// Second-level entry pointing at a next-level table (R and W set: the effective
/// permission is the intersection over all levels, so non-leaf entries grant both).
pub const fn sl_table_entry(table: u64) -> u64 {
    (table & SL_ADDR) | SL_R | SL_W
}

/// Second-level leaf at `level` (1 = 4KB, 2 = 2MB, 3 = 1GB) with R/W bits `rw`.
pub const fn sl_leaf_entry(pa: u64, level: u8, rw: u64) -> u64 {
    (pa & SL_ADDR) | rw | if level > 1 { SL_PS } else { 0 }
}

/// First-level entry pointing at a next-level table (present, writable, user; the leaf
/// decides the final permissions).
pub const fn fl_table_entry(table: u64) -> u64 {
    (table & FL_ADDR) | FL_P | FL_RW | FL_US
}

/// First-level leaf at `level` (1 = 4KB, 2 = 2MB, 3 = 1GB). `user`: U/S; `exec`: clears
/// XD (which needs execute requests, ECAP.ERS). A and D are preset so the hardware need
/// not write them back.
pub const fn fl_leaf_entry(pa: u64, level: u8, write: bool, user: bool, exec: bool) -> u64 {
    let mut e = (pa & FL_ADDR) | FL_P | FL_A;
    if level > 1 {
        e |= FL_PS;
    }
    if write {
        e |= FL_RW | FL_D;
    }
    if user {
        e |= FL_US;
    }
    if !exec {
        e |= FL_XD;
    }
    e
}

/// Non-leaf entry bits `[61:52]` (ignored by the hardware, §9.8): the number of present
/// entries in the table the entry points to, so emptied tables are found without scans.
pub const SL_COUNT: u64 = genmask(61, 52);

const fn count_of(e: u64) -> u64 {
    (e & SL_COUNT) >> 52
}

/// What an unmap removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unmapped {
    /// Bytes of mappings removed.
    pub bytes: u64,
    /// Leaf entries cleared.
    pub leaves: u64,
    /// Large leaves split into smaller ones because the range covered them partly.
    pub splits: u64,
    /// Tables emptied, unlinked from their parent and retired (freed or kept for reuse by
    /// [`SecondLevel::release_retired`] once the invalidation completed).
    pub tables_retired: u64,
}

impl Unmapped {
    /// Only leaf entries changed: the invalidation may set IH (paging-structure caches
    /// need not be flushed).
    pub const fn leaf_only(&self) -> bool {
        self.splits == 0 && self.tables_retired == 0
    }
}

/// A translation found by [`SecondLevel::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Output address of the input address.
    pub pa: u64,
    /// Leaf permissions.
    pub prot: Prot,
    /// Size of the leaf.
    pub page_size: u64,
}

/// Page sizes the hardware allows for second-level leaves (CAP.SLLPS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LargePages {
    /// 2MB leaves.
    pub l2m: bool,
    /// 1GB leaves.
    pub l1g: bool,
}

/// Default number of emptied tables kept for reuse.
pub const DEFAULT_SPARE_LIMIT: usize = 16;

/// A second-level page table.
#[derive(Debug)]
pub struct SecondLevel {
    root: PhysAddr,
    levels: u8,
    address_bits: u8,
    large: LargePages,
    coherent: bool,
    /// Tables linked into the tree (including the root).
    tables: usize,
    /// Emptied tables the hardware may still reference through its caches.
    retired: Vec<u64>,
    /// Zeroed tables ready for reuse.
    spare: Vec<u64>,
    spare_limit: usize,
}

const fn shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

const fn index(iova: u64, level: u8) -> usize {
    ((iova >> shift(level)) & 0x1ff) as usize
}

/// Output addresses are limited to 52 bits by the entry format.
const MAX_PA: u64 = 1 << 52;

/// Location of the entry that points at a table: (parent table, index).
type Slot = Option<(u64, usize)>;

impl SecondLevel {
    /// A new empty table with `levels` levels (3 or 4) translating `address_bits`-bit
    /// inputs (at most `12 + 9 * levels`, normally the MGAW). `coherent`: ECAP.C; when
    /// false every entry write is followed by [`DmaMemory::flush`].
    pub fn new<M: DmaMemory>(
        mem: &mut M,
        levels: u8,
        address_bits: u8,
        large: LargePages,
        coherent: bool,
    ) -> Result<Self> {
        if !(3..=4).contains(&levels) {
            return Err(Error::InvalidField("levels"));
        }
        if address_bits < 21 || u32::from(address_bits) > shift(levels) + 9 {
            return Err(Error::InvalidField("address width"));
        }
        let root = mem
            .alloc_zeroed(PAGE_SIZE as usize, PAGE_SIZE as usize)
            .ok_or(Error::OutOfMemory)?;
        Ok(Self {
            root,
            levels,
            address_bits,
            large,
            coherent,
            tables: 1,
            retired: Vec::new(),
            spare: Vec::new(),
            spare_limit: DEFAULT_SPARE_LIMIT,
        })
    }

    /// Address of the top-level table (SLPTPTR).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// Input address width in bits.
    pub fn address_bits(&self) -> u8 {
        self.address_bits
    }

    /// Tables linked into the tree (including the root).
    pub fn table_count(&self) -> usize {
        self.tables
    }

    /// Tables retired by unmap and not yet released.
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    /// Keep up to `n` released tables for reuse instead of freeing them.
    pub fn set_spare_limit(&mut self, n: usize) {
        self.spare_limit = n;
    }

    fn words<M: DmaMemory>(mem: &M, table: u64) -> Words {
        // SAFETY: `table` is the address of a live 4KB table this page table allocated
        // from `mem` (the root or a pointer read from one of its own entries); tables are
        // only freed by `release_retired` once unlinked and by `destroy`, which consumes
        // `self`.
        unsafe { Words::new(mem, PhysAddr(table), ENTRIES) }
    }

    #[inline(always)]
    fn store<M: DmaMemory>(&self, mem: &M, table: u64, w: &Words, i: usize, v: u64) {
        w.store(i, v);
        if !self.coherent {
            mem.flush(PhysAddr(table + 8 * i as u64), 8);
        }
    }

    /// Add `delta` to the entry count kept in the pointer at `slot`; returns the new count.
    fn adjust<M: DmaMemory>(&self, mem: &M, slot: Slot, delta: i64) -> u64 {
        let Some((t, i)) = slot else {
            return u64::MAX; // the root has no parent entry and is never released
        };
        let w = Self::words(mem, t);
        let e = w.load(i);
        let n = (count_of(e) as i64 + delta) as u64;
        self.store(mem, t, &w, i, (e & !SL_COUNT) | field_prep(SL_COUNT, n));
        n
    }

    fn alloc_table<M: DmaMemory>(&mut self, mem: &mut M) -> Result<u64> {
        let t = match self.spare.pop() {
            Some(t) => t,
            None => {
                mem.alloc_zeroed(PAGE_SIZE as usize, PAGE_SIZE as usize)
                    .ok_or(Error::OutOfMemory)?
                    .0
            }
        };
        self.tables += 1;
        Ok(t)
    }

    fn check_range(&self, iova: u64, size: u64) -> Result<()> {
        if !iova.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Misaligned);
        }
        let end = iova.checked_add(size).ok_or(Error::OutOfRange)?;
        if end > 1u64 << self.address_bits {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }

    fn leaf_level(&self, iova: u64, pa: u64, size: u64) -> u8 {
        let fits = |p: u64| iova.is_multiple_of(p) && pa.is_multiple_of(p) && size >= p;
        if self.large.l1g && fits(PAGE_1G) {
            3
        } else if self.large.l2m && fits(PAGE_2M) {
            2
        } else {
            1
        }
    }

    /// Walk to the table holding leaves of `want` level for `iova`, allocating missing
    /// tables. Where a table already exists at a level meant for a large leaf, the leaf
    /// goes one level lower. Returns the table, the leaf level used and the slot of the
    /// entry pointing at the table.
    fn descend_for_map<M: DmaMemory>(
        &mut self,
        mem: &mut M,
        iova: u64,
        mut want: u8,
    ) -> Result<(u64, u8, Slot)> {
        let mut table = self.root.0;
        let mut level = self.levels;
        let mut slot: Slot = None;
        loop {
            let w = Self::words(mem, table);
            let i = index(iova, level);
            let e = w.load(i);
            if level == want {
                if level > 1 && sl_present(e) && e & SL_PS == 0 {
                    want -= 1;
                } else {
                    return Ok((table, level, slot));
                }
            }
            let next = if !sl_present(e) {
                let t = self.alloc_table(mem)?;
                self.store(mem, table, &w, i, sl_table_entry(t));
                self.adjust(mem, slot, 1);
                t
            } else if e & SL_PS != 0 {
                return Err(Error::AlreadyMapped {
                    iova: iova & !((1u64 << shift(level)) - 1),
                });
            } else {
                e & SL_ADDR
            };
            slot = Some((table, i));
            table = next;
            level -= 1;
        }
    }

    /// Map `size` bytes at `iova` to `pa` with `prot`. Uses 2MB/1GB leaves where the
    /// hardware supports them and both addresses and the size allow. On error nothing
    /// of this call stays mapped.
    pub fn map<M: DmaMemory>(
        &mut self,
        mem: &mut M,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<()> {
        let rw = prot.bits()?;
        self.check_range(iova, size)?;
        if !pa.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Misaligned);
        }
        if pa.checked_add(size).is_none_or(|e| e > MAX_PA) {
            return Err(Error::OutOfRange);
        }
        let mut done = 0;
        while done < size {
            let (cur, cur_pa) = (iova + done, pa + done);
            let want = self.leaf_level(cur, cur_pa, size - done);
            let (bytes, err) = match self.descend_for_map(mem, cur, want) {
                Ok((table, level, slot)) => {
                    let (n, err) = self.fill(mem, table, level, cur, cur_pa, size - done, rw);
                    self.adjust(mem, slot, n as i64);
                    (n << shift(level), err)
                }
                Err(e) => (0, Some(e)),
            };
            done += bytes;
            if let Some(e) = err {
                if done > 0 {
                    // Only fresh leaves of this call are removed: no split, no
                    // allocation, so this cannot fail.
                    let _ = self.unmap(mem, iova, done);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Write leaves of `level` from `iova` into `table` until the table ends, `left` bytes
    /// are done or an entry is in use. Returns the leaves written and the error, if any.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    fn fill<M: DmaMemory>(
        &self,
        mem: &M,
        table: u64,
        level: u8,
        iova: u64,
        pa: u64,
        left: u64,
        rw: u64,
    ) -> (u64, Option<Error>) {
        let page = 1u64 << shift(level);
        let w = Self::words(mem, table);
        let first = index(iova, level);
        let n = (left / page).min((ENTRIES - first) as u64) as usize;
        let mut k = 0;
        while k < n {
            let e = w.load(first + k);
            if sl_present(e) {
                if level > 1 && e & SL_PS == 0 {
                    break; // a table below: the next round descends into it
                }
                let err = Error::AlreadyMapped {
                    iova: iova + k as u64 * page,
                };
                return (k as u64, Some(err));
            }
            let leaf = sl_leaf_entry(pa + k as u64 * page, level, rw);
            self.store(mem, table, &w, first + k, leaf);
            k += 1;
        }
        (k as u64, None)
    }

    /// Unlink emptied tables upwards from `table` (at `level`), whose pointer at
    /// `path[level + 1]` already counts zero entries.
    fn retire_upwards<M: DmaMemory>(
        &mut self,
        mem: &M,
        path: &[(u64, usize); 6],
        mut level: u8,
        mut table: u64,
        out: &mut Unmapped,
    ) {
        while level < self.levels {
            let (pt, pi) = path[usize::from(level) + 1];
            let pw = Self::words(mem, pt);
            if count_of(pw.load(pi)) != 0 {
                return;
            }
            self.store(mem, pt, &pw, pi, 0);
            self.retired.push(table);
            self.tables -= 1;
            out.tables_retired += 1;
            level += 1;
            table = pt;
            if level == self.levels {
                return;
            }
            let above = path[usize::from(level) + 1];
            self.adjust(mem, Some(above), -1);
        }
    }

    /// Remove mappings in `iova..iova+size` (holes are skipped). A large leaf only partly
    /// inside the range is split into next-level leaves first (which may need a table:
    /// on [`Error::OutOfMemory`] the mappings removed so far stay removed). Tables left
    /// empty are unlinked and retired. The caller must invalidate the IOTLB for the range
    /// (without IH unless [`Unmapped::leaf_only`]) before reusing the memory, then call
    /// [`SecondLevel::release_retired`].
    pub fn unmap<M: DmaMemory>(&mut self, mem: &mut M, iova: u64, size: u64) -> Result<Unmapped> {
        self.check_range(iova, size)?;
        let mut out = Unmapped::default();
        let end = iova + size;
        let mut cur = iova;
        // path[l] = (table at level l, index used in it).
        let mut path = [(0u64, 0usize); 6];
        'outer: while cur < end {
            let mut table = self.root.0;
            let mut level = self.levels;
            loop {
                let w = Self::words(mem, table);
                let page = 1u64 << shift(level);
                let i = index(cur, level);
                path[usize::from(level)] = (table, i);
                let e = w.load(i);
                let base = cur & !(page - 1);
                if !sl_present(e) {
                    cur = (base + page).min(end);
                    continue 'outer;
                }
                let leaf = level == 1 || e & SL_PS != 0;
                if leaf && base == cur && end - cur >= page {
                    // Clear a run of fully covered entries in this table.
                    let mut cleared = 0;
                    let mut j = i;
                    while j < ENTRIES && end - cur >= page {
                        let e = w.load(j);
                        if sl_present(e) {
                            if level > 1 && e & SL_PS == 0 {
                                break; // a table: descend from the top
                            }
                            self.store(mem, table, &w, j, 0);
                            cleared += 1;
                        }
                        cur += page;
                        j += 1;
                    }
                    out.bytes += cleared * page;
                    out.leaves += cleared;
                    if level < self.levels && cleared > 0 {
                        let parent = path[usize::from(level) + 1];
                        if self.adjust(mem, Some(parent), -(cleared as i64)) == 0 {
                            self.retire_upwards(mem, &path, level, table, &mut out);
                        }
                    }
                    continue 'outer;
                }
                if leaf {
                    // Partly covered large leaf: replace it with an equivalent table.
                    let t = self.alloc_table(mem)?;
                    let tw = Self::words(mem, t);
                    let sub = page / ENTRIES as u64;
                    let rw = e & (SL_R | SL_W | SL_X);
                    for k in 0..ENTRIES {
                        let pa = (e & SL_ADDR) + k as u64 * sub;
                        self.store(mem, t, &tw, k, sl_leaf_entry(pa, level - 1, rw));
                    }
                    let ptr = sl_table_entry(t) | field_prep(SL_COUNT, ENTRIES as u64);
                    self.store(mem, table, &w, i, ptr);
                    out.splits += 1;
                    table = t;
                } else {
                    table = e & SL_ADDR;
                }
                level -= 1;
            }
        }
        Ok(out)
    }

    /// Look up `iova`.
    pub fn translate<M: DmaMemory>(&self, mem: &M, iova: u64) -> Option<Translation> {
        if iova >> self.address_bits != 0 {
            return None;
        }
        let mut table = self.root.0;
        let mut level = self.levels;
        loop {
            let e = Self::words(mem, table).load(index(iova, level));
            if !sl_present(e) {
                return None;
            }
            if level == 1 || e & SL_PS != 0 {
                let page = 1u64 << shift(level);
                return Some(Translation {
                    pa: (e & SL_ADDR & !(page - 1)) | (iova & (page - 1)),
                    prot: Prot::from_entry(e),
                    page_size: page,
                });
            }
            table = e & SL_ADDR;
            level -= 1;
        }
    }

    /// Free (or keep as spares, up to the spare limit) the tables retired by unmap.
    ///
    /// # Safety
    /// Every IOTLB invalidation covering the unmaps that retired them must have completed
    /// (without IH), so the hardware's paging-structure caches no longer reference them.
    pub unsafe fn release_retired<M: DmaMemory>(&mut self, mem: &mut M) {
        while let Some(t) = self.retired.pop() {
            // Retired tables hold no present entries and their count bits were never set
            // in their own entries, so every word is zero: ready for reuse as is.
            if self.spare.len() < self.spare_limit {
                self.spare.push(t);
            } else {
                // SAFETY: allocated by this page table with this layout; unlinked and, by
                // the caller's guarantee, no longer cached by the hardware.
                unsafe { mem.free(PhysAddr(t), PAGE_SIZE as usize, PAGE_SIZE as usize) };
            }
        }
    }

    fn free_tree<M: DmaMemory>(mem: &mut M, table: u64, level: u8) {
        if level > 1 {
            let w = Self::words(mem, table);
            for i in 0..ENTRIES {
                let e = w.load(i);
                if sl_present(e) && e & SL_PS == 0 {
                    Self::free_tree(mem, e & SL_ADDR, level - 1);
                }
            }
        }
        // SAFETY: `table` was allocated from `mem` with this layout by this page table and
        // the caller of `destroy` guarantees no hardware uses it any more.
        unsafe { mem.free(PhysAddr(table), PAGE_SIZE as usize, PAGE_SIZE as usize) };
    }

    /// Free every table (linked, retired and spare).
    ///
    /// # Safety
    /// No context or PASID entry may point at this table, and the IOTLB and paging-structure
    /// caches must have been invalidated since the last entry pointed at it.
    pub unsafe fn destroy<M: DmaMemory>(mut self, mem: &mut M) {
        Self::free_tree(mem, self.root.0, self.levels);
        for t in self.retired.drain(..).chain(self.spare.drain(..)) {
            // SAFETY: unlinked tables allocated by this page table; the caller guarantees
            // the hardware no longer uses any of them.
            unsafe { mem.free(PhysAddr(t), PAGE_SIZE as usize, PAGE_SIZE as usize) };
        }
    }
}

/// Set the leaf bits `extra` (for example [`SL_SNP`] or [`SL_TM`]) on a leaf built by
/// [`sl_leaf_entry`], and the EMT field (with IPAT) when `emt` is given.
pub const fn sl_leaf_with(leaf: u64, extra: u64, emt: Option<u64>) -> u64 {
    match emt {
        Some(t) => leaf | extra | field_prep(SL_EMT, t) | SL_IPAT,
        None => leaf | extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::IdentityHeap;
    use std::collections::BTreeMap;

    const ALL: LargePages = LargePages {
        l2m: true,
        l1g: true,
    };

    fn pt(mem: &mut IdentityHeap, levels: u8, large: LargePages) -> SecondLevel {
        SecondLevel::new(mem, levels, 12 + 9 * levels, large, true).unwrap()
    }

    #[test]
    fn entry_bits_match_spec() {
        assert_eq!(
            (SL_R, SL_W, SL_X, SL_PS, SL_SNP, SL_TM),
            (1, 2, 4, 0x80, 0x800, 1 << 62)
        );
        assert_eq!((SL_IPAT, SL_A, SL_D), (0x40, 0x100, 0x200));
        assert_eq!(SL_ADDR, 0x000f_ffff_ffff_f000);
        assert_eq!(sl_table_entry(0x1234_5000), 0x1234_5003);
        assert_eq!(sl_leaf_entry(0x4000_0000, 3, SL_R), 0x4000_0081);
        assert_eq!(sl_leaf_entry(0x2000, 1, SL_W), 0x2002);
        assert_eq!(
            sl_leaf_with(0x2003, SL_SNP, Some(6)),
            0x2003 | 0x800 | 0x30 | 0x40
        );
        assert!(!sl_present(SL_PS | 0x1000));
        assert_eq!(Prot::from_entry(0x2001), Prot::READ);
        assert_eq!(
            Prot {
                read: false,
                write: false
            }
            .bits(),
            Err(Error::InvalidPermissions)
        );
    }

    #[test]
    fn first_level_entry_bits_match_spec() {
        assert_eq!(fl_table_entry(0x5000), 0x5007);
        // 4KB leaf, writable, supervisor, no execute: P|RW|A|D|XD.
        assert_eq!(
            fl_leaf_entry(0x6000, 1, true, false, false),
            0x6000 | 0x63 | FL_XD
        );
        // 2MB read-only user executable leaf: P|US|A|PS.
        assert_eq!(
            fl_leaf_entry(0x20_0000, 2, false, true, true),
            0x20_0000 | 0xa5
        );
        assert_eq!(
            (FL_PWT, FL_PCD, FL_G, FL_PAT_LARGE),
            (8, 0x10, 0x100, 0x1000)
        );
    }

    #[test]
    fn map_translate_unmap_4k() {
        let mut m = IdentityHeap::new();
        let mut t = pt(&mut m, 3, LargePages::default());
        t.map(&mut m, 0x10_0000, 0x8000_0000, 0x3000, Prot::READ_WRITE)
            .unwrap();
        let tr = t.translate(&m, 0x10_1234).unwrap();
        assert_eq!(tr.pa, 0x8000_1234);
        assert_eq!(tr.page_size, PAGE_SIZE);
        assert_eq!(tr.prot, Prot::READ_WRITE);
        assert_eq!(t.table_count(), 3, "root + level 2 + level 1");
        assert_eq!(
            t.map(&mut m, 0x10_2000, 0, 0x1000, Prot::READ),
            Err(Error::AlreadyMapped { iova: 0x10_2000 })
        );
        let u = t.unmap(&mut m, 0x10_0000, 0x3000).unwrap();
        assert_eq!(
            u,
            Unmapped {
                bytes: 0x3000,
                leaves: 3,
                splits: 0,
                tables_retired: 2
            }
        );
        assert!(!u.leaf_only());
        assert!(t.translate(&m, 0x10_0000).is_none());
        assert_eq!((t.table_count(), t.retired_count()), (1, 2));
        // SAFETY: no hardware caches these tables.
        unsafe { t.release_retired(&mut m) };
        assert_eq!(t.retired_count(), 0);
        // Spares are reused without new allocations.
        let live = m.live_regions;
        t.map(&mut m, 0x10_0000, 0x8000_0000, 0x1000, Prot::READ)
            .unwrap();
        assert_eq!(m.live_regions, live);
        let u = t.unmap(&mut m, 0x10_0000, 0x1000).unwrap();
        assert_eq!(u.tables_retired, 2);
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn errors_are_returned_not_panics() {
        let mut m = IdentityHeap::new();
        let mut t = pt(&mut m, 3, ALL);
        assert_eq!(
            t.map(&mut m, 0x1001, 0, 0x1000, Prot::READ),
            Err(Error::Misaligned)
        );
        assert_eq!(
            t.map(&mut m, 0x1000, 0x10, 0x1000, Prot::READ),
            Err(Error::Misaligned)
        );
        assert_eq!(
            t.map(&mut m, 0, 0, 0x1800, Prot::READ),
            Err(Error::Misaligned)
        );
        assert_eq!(
            t.map(&mut m, (1 << 39) - 0x1000, 0, 0x2000, Prot::READ),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            t.map(&mut m, u64::MAX - 0xfff, 0, 0x2000, Prot::READ),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            t.map(&mut m, 0, (1 << 52) - 0x1000, 0x2000, Prot::READ),
            Err(Error::OutOfRange)
        );
        assert_eq!(t.unmap(&mut m, 1 << 39, 0x1000), Err(Error::OutOfRange));
        assert!(SecondLevel::new(&mut m, 5, 57, ALL, true).is_err());
        assert!(SecondLevel::new(&mut m, 3, 48, ALL, true).is_err());
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
    }

    #[test]
    fn failed_map_leaves_nothing_mapped() {
        let mut m = IdentityHeap::new();
        let mut t = pt(&mut m, 3, ALL);
        t.map(&mut m, 0x5000, 0x5000, 0x1000, Prot::READ).unwrap();
        assert_eq!(
            t.map(&mut m, 0x1000, 0x9000, 0x8000, Prot::READ_WRITE),
            Err(Error::AlreadyMapped { iova: 0x5000 })
        );
        for a in (0x1000..0x5000).step_by(0x1000) {
            assert!(t.translate(&m, a).is_none(), "{a:#x} rolled back");
        }
        assert_eq!(t.translate(&m, 0x5000).unwrap().pa, 0x5000);
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
    }

    struct Oom(IdentityHeap, usize);
    // SAFETY: delegates to `IdentityHeap`, refusing allocations after a budget.
    unsafe impl DmaMemory for Oom {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            if self.1 == 0 {
                return None;
            }
            self.1 -= 1;
            self.0.alloc_zeroed(size, align)
        }
        unsafe fn free(&mut self, pa: PhysAddr, size: usize, align: usize) {
            // SAFETY: forwarded contract.
            unsafe { self.0.free(pa, size, align) }
        }
        fn virt(&self, pa: PhysAddr) -> *mut u8 {
            self.0.virt(pa)
        }
    }

    #[test]
    fn out_of_memory_is_reported() {
        let mut m = Oom(IdentityHeap::new(), 2);
        let mut t = SecondLevel::new(&mut m, 3, 39, LargePages::default(), true).unwrap();
        assert_eq!(
            t.map(&mut m, 0, 0, 0x1000, Prot::READ),
            Err(Error::OutOfMemory)
        );
        assert!(t.translate(&m, 0).is_none());
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
        assert_eq!(m.0.live_regions, 0);
    }

    #[test]
    fn large_pages_used_when_allowed_and_aligned() {
        let mut m = IdentityHeap::new();
        let mut t = pt(&mut m, 4, ALL);
        // 1GB + 2MB + 4KB, all aligned.
        let size = PAGE_1G + PAGE_2M + PAGE_SIZE;
        t.map(&mut m, PAGE_1G, 2 * PAGE_1G, size, Prot::READ)
            .unwrap();
        assert_eq!(t.translate(&m, PAGE_1G + 5).unwrap().page_size, PAGE_1G);
        assert_eq!(
            t.translate(&m, 2 * PAGE_1G + 7).unwrap(),
            Translation {
                pa: 3 * PAGE_1G + 7,
                prot: Prot::READ,
                page_size: PAGE_2M
            }
        );
        assert_eq!(
            t.translate(&m, 2 * PAGE_1G + PAGE_2M).unwrap().page_size,
            PAGE_SIZE
        );
        let u = t.unmap(&mut m, PAGE_1G, size).unwrap();
        assert_eq!((u.bytes, u.leaves, u.splits), (size, 3, 0));
        // Output misaligned to 2MB: only 4KB leaves.
        t.map(&mut m, 0, PAGE_SIZE, PAGE_2M, Prot::READ).unwrap();
        assert_eq!(t.translate(&m, 0).unwrap().page_size, PAGE_SIZE);
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
        // Without SLLPS: 4KB only.
        let mut t = pt(&mut m, 3, LargePages::default());
        t.map(&mut m, 0, 0, PAGE_2M, Prot::READ).unwrap();
        assert_eq!(t.translate(&m, 0).unwrap().page_size, PAGE_SIZE);
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
    }

    #[test]
    fn partial_unmap_splits_large_pages() {
        let mut m = IdentityHeap::new();
        let mut t = pt(&mut m, 3, ALL);
        t.map(&mut m, 0, 0x4000_0000, PAGE_1G, Prot::READ_WRITE)
            .unwrap();
        // Remove one 4KB page in the middle: 1GB -> 2MB leaves -> 4KB leaves.
        let hole = 0x1234_5000;
        let u = t.unmap(&mut m, hole, PAGE_SIZE).unwrap();
        assert_eq!((u.bytes, u.leaves, u.splits), (PAGE_SIZE, 1, 2));
        // The split tables count their remaining entries.
        let l2 = SecondLevel::words(&m, t.root().0).load(0);
        assert_eq!(count_of(l2), 512);
        let l1 = SecondLevel::words(&m, l2 & SL_ADDR).load(index(hole, 2));
        assert_eq!(count_of(l1), 511);
        assert!(t.translate(&m, hole).is_none());
        let below = t.translate(&m, hole - 1).unwrap();
        assert_eq!(
            (below.pa, below.page_size),
            (0x4000_0000 + hole - 1, PAGE_SIZE)
        );
        let far = t.translate(&m, 0x3000_0000).unwrap();
        assert_eq!((far.pa, far.page_size), (0x7000_0000, PAGE_2M));
        assert_eq!(far.prot, Prot::READ_WRITE);
        // Remapping the hole works; mapping over the rest does not.
        t.map(&mut m, hole, 0x9000, PAGE_SIZE, Prot::READ).unwrap();
        assert!(matches!(
            t.map(&mut m, 0, 0, PAGE_2M, Prot::READ),
            Err(Error::AlreadyMapped { .. })
        ));
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn emptied_tables_are_unlinked_and_counts_kept() {
        let mut m = IdentityHeap::new();
        let mut t = pt(&mut m, 3, ALL);
        t.map(&mut m, 0, 0, 2 * PAGE_SIZE, Prot::READ).unwrap();
        // The level-2 pointer counts 2 entries in the level-1 table; the root pointer 1.
        let l2 = SecondLevel::words(&m, t.root().0).load(0);
        assert_eq!(count_of(l2), 1);
        let l1 = SecondLevel::words(&m, l2 & SL_ADDR).load(0);
        assert_eq!(count_of(l1), 2);
        let u = t.unmap(&mut m, 0, PAGE_SIZE).unwrap();
        assert_eq!(u.tables_retired, 0);
        assert!(u.leaf_only());
        let u = t.unmap(&mut m, PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!(u.tables_retired, 2);
        assert_eq!(SecondLevel::words(&m, t.root().0).load(0), 0);
        // The range is free again for a 2MB leaf.
        t.map(&mut m, 0, 0, PAGE_2M, Prot::READ).unwrap();
        assert_eq!(t.translate(&m, PAGE_2M - 1).unwrap().page_size, PAGE_2M);
        assert_eq!(t.table_count(), 2);
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
    }

    /// Walk the tree: every pointer's count equals its table's present entries, no
    /// linked table is empty, and the number of linked tables matches `table_count`.
    fn check_counts(t: &SecondLevel, m: &IdentityHeap) {
        fn walk(m: &IdentityHeap, table: u64, level: u8, root: bool) -> usize {
            let w = SecondLevel::words(m, table);
            let mut tables = 1;
            let mut present = 0;
            for i in 0..ENTRIES {
                let e = w.load(i);
                if !sl_present(e) {
                    assert_eq!(e, 0, "cleared entries are zero");
                    continue;
                }
                present += 1;
                if level > 1 && e & SL_PS == 0 {
                    let child = SecondLevel::words(m, e & SL_ADDR);
                    let n = (0..ENTRIES).filter(|&k| sl_present(child.load(k))).count();
                    assert_eq!(count_of(e), n as u64, "count of pointer at level {level}");
                    tables += walk(m, e & SL_ADDR, level - 1, false);
                }
            }
            assert!(root || present > 0, "empty table left linked");
            tables
        }
        assert_eq!(walk(m, t.root().0, t.levels(), true), t.table_count());
    }

    /// Deterministic pseudo-random map/unmap sequences against a reference model.
    #[test]
    fn matches_reference_model() {
        let mut m = IdentityHeap::new();
        let mut t = pt(&mut m, 3, ALL);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // page -> pa
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let span = 4 * PAGE_2M / PAGE_SIZE; // 2048 pages, so 2MB leaves occur
        for _ in 0..400 {
            let start = rnd(span);
            let len = 1 + rnd(span - start).min(if rnd(4) == 0 { 1024 } else { 16 });
            let (iova, size) = (start * PAGE_SIZE, len * PAGE_SIZE);
            if rnd(2) == 0 {
                let pa = if rnd(2) == 0 {
                    iova
                } else {
                    iova + 0x1000_0000 + PAGE_SIZE
                };
                let free = (start..start + len).all(|p| !model.contains_key(&p));
                let r = t.map(&mut m, iova, pa, size, Prot::READ_WRITE);
                assert_eq!(r.is_ok(), free, "map {iova:#x}+{size:#x}");
                if free {
                    for p in 0..len {
                        model.insert(start + p, pa + p * PAGE_SIZE);
                    }
                }
            } else {
                let present = (start..start + len)
                    .filter(|p| model.contains_key(p))
                    .count();
                let u = t.unmap(&mut m, iova, size).unwrap();
                assert_eq!(u.bytes, present as u64 * PAGE_SIZE);
                // SAFETY: no hardware caches these tables.
                unsafe { t.release_retired(&mut m) };
                for p in start..start + len {
                    model.remove(&p);
                }
            }
            check_counts(&t, &m);
            for p in (0..span).step_by(61) {
                let got = t.translate(&m, p * PAGE_SIZE).map(|tr| tr.pa);
                assert_eq!(got, model.get(&p).copied(), "page {p}");
            }
        }
        // SAFETY: no hardware uses these tables.
        unsafe { t.destroy(&mut m) };
        assert_eq!(m.live_regions, 0);
    }
}
