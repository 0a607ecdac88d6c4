//! The EL1 identity map (virtual address == physical address).
//!
//! Why the MMU is on: with it off every data access is Device-nGnRnE, which
//! is uncached and faults on unaligned accesses.  (The `aarch64-unknown-none`
//! target compiles all code, `core` included, with `+strict-align`, so the
//! few steps before the MMU is enabled are safe; the MMU is enabled anyway so
//! that RAM is Normal write-back cacheable memory like on a real system,
//! device registers are Device-nGnRE, code is read-only, data is
//! non-executable, and the stacks sit above unmapped guard pages.)
//!
//! Tables: 4 KiB granule, 48-bit input addresses (levels 0..3), built at
//! boot from a static pool.  Two steps:
//! 1. [`AddressSpace::enable_for_image`] maps only what the linker placed —
//!    the image and the device tree area below it — and turns the MMU on, so
//!    the device tree is parsed from cacheable memory with the heap usable.
//! 2. [`AddressSpace::map`] then adds the rest of RAM and the device regions
//!    the device tree describes.  Only invalid entries are ever replaced, so
//!    the live tables need no break-before-make or TLB maintenance: invalid
//!    entries are never cached in TLBs.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::fmt;

use crate::cache;

const ENTRIES: usize = 512;
const TABLE_POOL: usize = 64;

/// Attribute indices in MAIR_EL1.
const MAIR_DEVICE_NGNRE: u64 = 0x04;
const MAIR_NORMAL_WB: u64 = 0xff;
const MAIR_NORMAL_NC: u64 = 0x44;
const ATTR_DEVICE: u64 = 0;
const ATTR_NORMAL: u64 = 1;
/// Index 2 holds Normal non-cacheable memory for later use.
const MAIR_VALUE: u64 = MAIR_DEVICE_NGNRE | (MAIR_NORMAL_WB << 8) | (MAIR_NORMAL_NC << 16);

const DESC_VALID: u64 = 1 << 0;
const DESC_TABLE_OR_PAGE: u64 = 1 << 1;
const DESC_AP_RO: u64 = 1 << 7;
const DESC_SH_INNER: u64 = 3 << 8;
const DESC_AF: u64 = 1 << 10;
const DESC_PXN: u64 = 1 << 53;
const DESC_UXN: u64 = 1 << 54;
const DESC_ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

const PAGE: u64 = 4096;
const VA_BITS: u32 = 48;

/// How a range is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    /// Normal write-back cacheable RAM.
    Normal {
        /// Writable.
        write: bool,
        /// Executable at EL1.
        exec: bool,
    },
    /// Device-nGnRE registers (never executable).
    Device,
}

impl MemType {
    /// Read-write data.
    pub const RW: MemType = MemType::Normal {
        write: true,
        exec: false,
    };
    /// Read-only data.
    pub const RO: MemType = MemType::Normal {
        write: false,
        exec: false,
    };
    /// Code.
    pub const RX: MemType = MemType::Normal {
        write: false,
        exec: true,
    };

    fn attributes(self) -> u64 {
        match self {
            MemType::Normal { write, exec } => {
                let mut a = (ATTR_NORMAL << 2) | DESC_SH_INNER | DESC_AF | DESC_UXN;
                if !write {
                    a |= DESC_AP_RO;
                }
                if !exec {
                    a |= DESC_PXN;
                }
                a
            }
            MemType::Device => (ATTR_DEVICE << 2) | DESC_AF | DESC_PXN | DESC_UXN,
        }
    }
}

/// Why a range could not be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The static table pool is used up.
    OutOfTables,
    /// The range is beyond the supported physical address size.
    TooHigh(u64),
    /// Part of the range is already mapped differently.
    Conflict(u64),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfTables => write!(f, "page-table pool exhausted"),
            Self::TooHigh(a) => write!(f, "address 0x{a:x} beyond the physical address size"),
            Self::Conflict(a) => write!(f, "0x{a:x} is already mapped with other attributes"),
        }
    }
}

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

struct Pool(UnsafeCell<[Table; TABLE_POOL]>);

// SAFETY: the pool is only accessed through the single `AddressSpace`, which
// `AddressSpace::take` hands out once.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([const { Table([0; ENTRIES]) }; TABLE_POOL]));
/// Set once the pool was handed out (plain load/store: may run with the MMU off).
static POOL_TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

extern "C" {
    static __ram_base: u8;
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __stack_guard: u8;
    static __exception_stack_guard: u8;
    static __image_end: u8;
}

/// Addresses the linker script defines.
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    /// Start of RAM, where QEMU places the device tree.
    pub ram_base: u64,
    /// First byte of the image (end of the device tree area).
    pub image_start: u64,
    /// End of code.
    pub text_end: u64,
    /// End of read-only data.
    pub rodata_end: u64,
    /// Guard page below the main stack.
    pub stack_guard: u64,
    /// Guard page below the exception stack.
    pub exception_stack_guard: u64,
    /// End of the image (page aligned).
    pub image_end: u64,
}

impl ImageLayout {
    /// The layout of the running image.
    pub fn get() -> Self {
        // Only the addresses of the linker symbols are used.
        let a = |p: *const u8| p as u64;
        ImageLayout {
            ram_base: a(&raw const __ram_base),
            image_start: a(&raw const __image_start),
            text_end: a(&raw const __text_end),
            rodata_end: a(&raw const __rodata_end),
            stack_guard: a(&raw const __stack_guard),
            exception_stack_guard: a(&raw const __exception_stack_guard),
            image_end: a(&raw const __image_end),
        }
    }
}

/// The identity map.
pub struct AddressSpace {
    tables: &'static mut [Table; TABLE_POOL],
    /// Tables handed out; tables[0] is the level-0 root.
    used: usize,
    /// Output address size in bits.
    pa_bits: u32,
    live: bool,
}

fn read_parange_bits() -> (u64, u32) {
    let mmfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        asm!("mrs {v}, id_aa64mmfr0_el1", v = out(reg) mmfr0, options(nomem, nostack, preserves_flags))
    };
    // TCR.IPS uses the same encoding; without LPA2, 4 KiB tables reach 48 bits.
    let parange = (mmfr0 & 0xf).min(5);
    let bits = match parange {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => 48,
    };
    (parange, bits)
}

impl AddressSpace {
    /// Takes the static table pool; `None` if it was already taken.
    fn take() -> Option<Self> {
        if POOL_TAKEN.load(core::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        POOL_TAKEN.store(true, core::sync::atomic::Ordering::Relaxed);
        // SAFETY: the flag above makes this the only reference to the pool
        // (single CPU, no interrupts); the pool is in .bss, zeroed at entry.
        let tables = unsafe { &mut *POOL.0.get() };
        Some(Self {
            tables,
            used: 1,
            pa_bits: read_parange_bits().1,
            live: false,
        })
    }

    /// Output address size of the CPU in bits.
    pub fn pa_bits(&self) -> u32 {
        self.pa_bits
    }

    /// Page-table pages used.
    pub fn tables_used(&self) -> usize {
        self.used
    }

    /// Maps the image (code read-only and executable, read-only data, data
    /// and stacks with unmapped guard pages) and the device tree area below
    /// it (read-only), then enables the MMU and caches.
    pub fn enable_for_image(layout: &ImageLayout) -> Result<Self, MapError> {
        let mut space = Self::take().ok_or(MapError::OutOfTables)?;
        let l = layout;
        space.map(l.ram_base, l.image_start, MemType::RO)?;
        space.map(l.image_start, l.text_end, MemType::RX)?;
        space.map(l.text_end, l.rodata_end, MemType::RO)?;
        space.map(l.rodata_end, l.stack_guard, MemType::RW)?;
        space.map(l.stack_guard + PAGE, l.exception_stack_guard, MemType::RW)?;
        space.map(l.exception_stack_guard + PAGE, l.image_end, MemType::RW)?;
        // SAFETY: the tables map the running code, its data and stacks at
        // their current addresses with the same contents.
        unsafe { space.activate(layout) };
        Ok(space)
    }

    fn table_ptr(&mut self, index: usize) -> *mut u64 {
        self.tables
            .get_mut(index)
            .map_or(core::ptr::null_mut(), |t| t.0.as_mut_ptr())
    }

    fn read_entry(&mut self, table: usize, index: usize) -> u64 {
        let p = self.table_ptr(table);
        assert!(!p.is_null() && index < ENTRIES);
        // SAFETY: `p` points to a table of the pool, index < ENTRIES.
        unsafe { p.add(index).read_volatile() }
    }

    fn write_entry(&mut self, table: usize, index: usize, value: u64) {
        let p = self.table_ptr(table);
        assert!(!p.is_null() && index < ENTRIES);
        // SAFETY: as in `read_entry`; only invalid entries are replaced, so a
        // live walk sees either the old invalid entry or the new one.
        unsafe { p.add(index).write_volatile(value) };
    }

    fn table_index_of(&self, desc: u64) -> Option<usize> {
        let addr = desc & DESC_ADDR_MASK;
        let base = self.tables.as_ptr() as u64;
        let offset = addr.checked_sub(base)?;
        let index = usize::try_from(offset / PAGE).ok()?;
        (index < self.used).then_some(index)
    }

    fn new_table(&mut self) -> Result<usize, MapError> {
        if self.used >= TABLE_POOL {
            return Err(MapError::OutOfTables);
        }
        let index = self.used;
        self.used += 1;
        Ok(index)
    }

    /// Maps `[start, end)` (rounded out to pages) as `ty`.  Pages already
    /// mapped with exactly the same attributes are left alone.
    pub fn map(&mut self, start: u64, end: u64, ty: MemType) -> Result<(), MapError> {
        let start = start & !(PAGE - 1);
        let end = end
            .checked_next_multiple_of(PAGE)
            .ok_or(MapError::TooHigh(end))?;
        if start >= end {
            return Ok(());
        }
        let limit = 1u64 << self.pa_bits.min(VA_BITS);
        if end > limit {
            return Err(MapError::TooHigh(end - 1));
        }
        self.map_level(0, 0, start, end, ty.attributes())?;
        if self.live {
            // SAFETY: barriers only: make the new entries visible to the
            // table walker before later accesses use them.
            unsafe { asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
        }
        Ok(())
    }

    fn map_level(
        &mut self,
        table: usize,
        level: u32,
        start: u64,
        end: u64,
        attrs: u64,
    ) -> Result<(), MapError> {
        let shift = 39 - 9 * level;
        let size = 1u64 << shift;
        let mut va = start;
        while va < end {
            let index = usize::try_from((va >> shift) & 511).unwrap_or(0);
            let block_start = va & !(size - 1);
            let next = end.min(block_start + size);
            let entry = self.read_entry(table, index);
            let whole = va == block_start && next - va == size;
            let leaf = if level == 3 {
                block_start | attrs | DESC_VALID | DESC_TABLE_OR_PAGE
            } else {
                block_start | attrs | DESC_VALID
            };
            if level >= 1 && whole && (level == 3 || entry & DESC_VALID == 0 || entry == leaf) {
                if entry & DESC_VALID == 0 {
                    self.write_entry(table, index, leaf);
                } else if entry != leaf {
                    return Err(MapError::Conflict(va));
                }
            } else if level == 3 {
                // Unreachable for page-aligned ranges; treat as a conflict.
                return Err(MapError::Conflict(va));
            } else if entry & DESC_VALID == 0 {
                let child = self.new_table()?;
                let addr = self.table_ptr(child) as u64;
                self.write_entry(table, index, addr | DESC_VALID | DESC_TABLE_OR_PAGE);
                self.map_level(child, level + 1, va, next, attrs)?;
            } else if entry & DESC_TABLE_OR_PAGE != 0 {
                let child = self.table_index_of(entry).ok_or(MapError::Conflict(va))?;
                self.map_level(child, level + 1, va, next, attrs)?;
            } else if entry != leaf {
                // A block with other attributes covers part of the range.
                return Err(MapError::Conflict(va));
            }
            va = next;
        }
        Ok(())
    }

    /// Loads the tables and turns on the MMU and caches.
    ///
    /// # Safety
    /// The tables must map all code, data and stacks in use at their current
    /// addresses.
    unsafe fn activate(&mut self, layout: &ImageLayout) {
        let (ips, _) = read_parange_bits();
        let t0sz = u64::from(64 - VA_BITS);
        // TG0 = 0 selects the 4 KiB granule.
        let tcr = t0sz
            | (1 << 8)   // IRGN0: inner write-back write-allocate
            | (1 << 10)  // ORGN0: outer write-back write-allocate
            | (3 << 12)  // SH0: inner shareable
            | (1 << 23)  // EPD1: no walks through TTBR1
            | (2 << 30)  // TG1: 4 KiB (unused)
            | (ips << 32);
        let root = self.table_ptr(0) as u64;
        // Drop any stale cache lines of the image (the tables, data and stacks
        // were written with the caches off).
        cache::clean_invalidate(
            layout.image_start as usize,
            (layout.image_end - layout.image_start) as usize,
        );
        // SAFETY: standard MMU enable sequence; the caller guarantees the
        // identity map covers everything in use, so execution continues at
        // the same addresses.
        unsafe {
            asm!(
                "msr mair_el1, {mair}",
                "msr tcr_el1, {tcr}",
                "msr ttbr0_el1, {root}",
                "dsb ish",
                "isb",
                "tlbi vmalle1",
                "ic iallu",
                "dsb ish",
                "isb",
                "mrs {tmp}, sctlr_el1",
                "orr {tmp}, {tmp}, {set}",
                "bic {tmp}, {tmp}, {clear}",
                "msr sctlr_el1, {tmp}",
                "isb",
                mair = in(reg) MAIR_VALUE,
                tcr = in(reg) tcr,
                root = in(reg) root,
                tmp = out(reg) _,
                // M (MMU), C (data cache), I (instruction cache)
                set = in(reg) (1u64 << 0) | (1 << 2) | (1 << 12),
                // A (alignment check), WXN
                clear = in(reg) (1u64 << 1) | (1 << 19),
                options(nostack)
            );
        }
        self.live = true;
    }
}
