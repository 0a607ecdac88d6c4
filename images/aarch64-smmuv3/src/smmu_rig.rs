//! What the SMMU scenarios share: the `smmuv3` driver running on the SMMU
//! the device tree describes, with its tables and queues in memory from the
//! frame allocator, the generic timer for its timeouts, and the edu devices
//! that have a StreamID.
//!
//! Every scenario initialises the SMMU afresh ([`Rig::start`]); dropping the
//! [`Rig`] turns translation off again (SMMUEN = 0, so later scenarios find
//! the SMMU as reset left it).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use smmuv3::event::Event;
use smmuv3::evtq::DrainReport;
use smmuv3::regs::{Deadline, GenericTimer};
use smmuv3::ste::Ste;
use smmuv3::strtab::StreamTableFormat;
use smmuv3::{DmaMemory, PhysAddr, RegisterIo, Smmu, SmmuConfig, StreamTableChoice};

use crate::frames::{FrameAllocator, OutOfMemory};
use crate::harness::{Context, EduDevice};
use crate::time::Clock;

/// Longest the driver waits for the SMMU (CR0ACK, CMD_SYNC): 100 ms.
const SMMU_TIMEOUT_NS: u64 = 100_000_000;
/// Memory for everything but the stream table: queues, CDs, page tables.
const POOL_BASE_BYTES: u64 = 1 << 20;
/// Input address size of the stage-1 domains (3-level tables, T0SZ = 25).
pub const VA_BITS: u8 = 39;
/// Default event queue size: 2^9 records, room for the 4-byte accesses of
/// several failed 64-byte DMAs.
pub const EVTQ_LOG2: u8 = 9;

/// [`DmaMemory`] for the driver: one contiguous block from the frame
/// allocator, handed out in increasing address order. Freed regions are kept
/// by size and reused (zeroed again) for requests of the same size.
pub struct FramePool {
    start: u64,
    end: u64,
    next: u64,
    free: Vec<(u64, usize)>,
}

impl FramePool {
    /// A pool of `size` bytes (whole pages) from `frames`.
    pub fn new(frames: &mut FrameAllocator, size: u64) -> Result<Self, OutOfMemory> {
        let start = frames.alloc(size, 1 << 21)?;
        let size = size.next_multiple_of(crate::frames::PAGE_SIZE);
        Ok(Self {
            start,
            end: start + size,
            next: start,
            free: Vec::new(),
        })
    }

    /// Bytes handed out so far (not counting reuse).
    pub fn used(&self) -> u64 {
        self.next - self.start
    }
}

// SAFETY: the pool owns `[start, end)`, identity-mapped read-write normal RAM
// from the frame allocator (zeroed when it was allocated). Bump allocation
// hands every byte out at most once; a freed region is only handed out again
// after being zeroed, and only after the driver returned it. QEMU's SMMU is
// coherent with the CPU's caches (the driver checks IDR0.COHACC).
unsafe impl DmaMemory for FramePool {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align as u64;
        if let Some(i) = self
            .free
            .iter()
            .position(|&(pa, s)| s == size && pa % align == 0)
        {
            let (pa, _) = self.free.swap_remove(i);
            // SAFETY: `[pa, pa + size)` lies inside the pool, was returned by
            // the driver (which no longer uses it) and is handed out only now.
            unsafe { core::ptr::write_bytes(pa as usize as *mut u8, 0, size) };
            return Some(PhysAddr(pa));
        }
        let start = self.next.checked_next_multiple_of(align)?;
        let end = start.checked_add(size as u64)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(PhysAddr(start))
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize, _align: usize) {
        self.free.push((pa.0, size));
    }

    fn virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as usize as *mut u8
    }
}

/// The driver as the scenarios use it.
pub type Driver = Smmu<smmuv3::Mmio, FramePool, Deadline<GenericTimer>>;

/// An edu device behind the SMMU.
#[derive(Clone, Debug)]
pub struct Target {
    /// The device.
    pub dev: EduDevice,
    /// Its StreamID.
    pub sid: u32,
}

/// An initialised SMMU and the devices behind it.
pub struct Rig {
    /// The driver.
    pub smmu: Driver,
    /// Every edu device with a StreamID, in enumeration order.
    pub targets: Vec<Target>,
    /// StreamID bits the stream table covers.
    pub sid_bits: u8,
    /// SMMU_STRTAB_BASE_CFG as programmed.
    pub strtab_cfg: u32,
}

/// How to initialise the SMMU.
#[derive(Clone, Copy, Debug)]
pub struct RigConfig {
    /// log2 of the event queue's records.
    pub evtq_log2: u8,
    /// What unconfigured StreamIDs do.
    pub unassigned: Ste,
    /// `None`: a linear stream table sized for the StreamIDs in use (what
    /// QEMU is known to handle). `Some(bits)`: the driver's automatic choice
    /// for `bits`-bit StreamIDs (two-level above 8 bits).
    pub auto_strtab_bits: Option<u8>,
    /// Input address size of stage-1 domains.
    pub va_bits: u8,
}

impl Default for RigConfig {
    fn default() -> Self {
        Self {
            evtq_log2: EVTQ_LOG2,
            unassigned: Ste::abort(),
            auto_strtab_bits: None,
            va_bits: VA_BITS,
        }
    }
}

/// Set once a two-level stream table was configured in this boot. QEMU
/// (hw/arm/smmuv3.c, the STRTAB_BASE_CFG write) sets its two-level flag when
/// FMT = 2-level is written and never clears it when FMT = linear is written
/// later: from then on it walks a linear table as a two-level one, and every
/// STE reads as invalid. A linear table after a two-level one is therefore
/// refused with an explanation instead of failing with C_BAD_STE events.
static TWO_LEVEL_CONFIGURED: AtomicBool = AtomicBool::new(false);

/// Bits needed to index a linear stream table that holds `max_sid`.
pub fn sid_bits_for(max_sid: u32) -> u8 {
    (32 - max_sid.leading_zeros()).max(1) as u8
}

impl Rig {
    /// Initialises the SMMU with a linear stream table sized for the
    /// StreamIDs of the edu devices found, every StreamID aborting until a
    /// scenario configures it.
    pub fn start(ctx: &mut Context<'_>, cfg: RigConfig) -> Result<Self, String> {
        let info = ctx.smmu.as_ref().ok_or_else(|| {
            String::from("no SMMUv3 in the device tree (start QEMU with -M virt,iommu=smmuv3)")
        })?;
        if info.size < 0x2_0000 {
            return Err(format!(
                "SMMU register region 0x{:x} bytes, two 64 KiB pages needed",
                info.size
            ));
        }
        let base = info.base;
        let targets: Vec<Target> = ctx
            .edus
            .iter()
            .filter_map(|d| {
                d.stream_id.map(|sid| Target {
                    dev: d.clone(),
                    sid,
                })
            })
            .collect();
        let max_sid = targets
            .iter()
            .map(|t| t.sid)
            .max()
            .ok_or_else(|| String::from("no edu device with a StreamID"))?;
        let (sid_bits, strtab) = match cfg.auto_strtab_bits {
            None => (
                sid_bits_for(max_sid),
                StreamTableChoice::Fixed(StreamTableFormat::Linear),
            ),
            Some(bits) => (bits, StreamTableChoice::Auto),
        };
        // A linear table's size; a two-level table needs less (its level-2
        // tables come from the pool as StreamIDs are configured).
        if cfg.auto_strtab_bits.is_none() && TWO_LEVEL_CONFIGURED.load(Ordering::Relaxed) {
            return Err(String::from(
                "a two-level stream table was configured earlier in this boot, and QEMU keeps \
                 walking later linear tables as two-level ones: run scenarios with a two-level \
                 table last",
            ));
        }
        let strtab_bytes = 64u64 << sid_bits;
        // Room for the stream table at its own alignment.
        let pool = FramePool::new(ctx.frames, POOL_BASE_BYTES + 2 * strtab_bytes)
            .map_err(|e| format!("SMMU memory: {e}"))?;
        // SAFETY: the SMMU's two register pages are identity-mapped as Device
        // memory for the whole run (main.rs maps the device tree's `reg`,
        // checked above to hold both pages), and only this driver programs
        // the SMMU while the rig exists (scenarios run one at a time and the
        // previous rig was dropped).
        let regs = unsafe { smmuv3::Mmio::new(base as usize as *mut u8, smmuv3::regs::FRAME_SIZE) };
        let config = SmmuConfig {
            cmdq_log2: 8,
            evtq_log2: cfg.evtq_log2,
            sid_bits,
            strtab,
            unassigned: cfg.unassigned,
            va_bits: cfg.va_bits,
            ..SmmuConfig::default()
        };
        let mut smmu = Smmu::new(
            regs,
            pool,
            Deadline::new(GenericTimer, SMMU_TIMEOUT_NS),
            config,
        )
        .map_err(|e| format!("SMMU initialisation: {e}"))?;
        let cfg_reg = smmu.regs_mut().read32(smmuv3::regs::STRTAB_BASE_CFG);
        if (cfg_reg >> 16) & 3 == 1 {
            TWO_LEVEL_CONFIGURED.store(true, Ordering::Relaxed);
        }
        let format = match (cfg_reg >> 16) & 3 {
            0 => "linear",
            1 => "two-level",
            _ => "reserved-format",
        };
        crate::println!(
            "  SMMU at 0x{base:x} enabled: {format} stream table for {}-bit StreamIDs \
             (STRTAB_BASE_CFG 0x{cfg_reg:x}), {}-bit IOVAs, event queue {} records, {} device(s) with a StreamID",
            cfg_reg & 0x3f,
            cfg.va_bits,
            1u32 << cfg.evtq_log2,
            targets.len()
        );
        Ok(Self {
            smmu,
            targets,
            sid_bits: (cfg_reg & 0x3f) as u8,
            strtab_cfg: cfg_reg,
        })
    }

    /// Drains the event queue once.
    pub fn drain(&mut self) -> (Vec<Event>, DrainReport) {
        let mut events = Vec::new();
        let report = self.smmu.drain_events(|e| events.push(e));
        (events, report)
    }

    /// Collects the events the SMMU recorded: waits `settle_us` (DMA that
    /// completed has already produced its events; this is margin), then
    /// drains until the queue stays empty (at most 64 drains).
    pub fn events(&mut self, clock: &Clock, settle_us: u64) -> Vec<Event> {
        clock.delay_us(settle_us);
        let mut all = Vec::new();
        for _ in 0..64 {
            let (events, _) = self.drain();
            if events.is_empty() {
                break;
            }
            all.extend(events);
        }
        all
    }

    /// Fails if the SMMU reports an active global error.
    pub fn check_global_errors(&mut self) -> Result<(), String> {
        match self.smmu.global_errors() {
            0 => Ok(()),
            g => Err(format!(
                "SMMU global error(s) active: GERROR ^ GERRORN = 0x{g:x}"
            )),
        }
    }

    /// Prints the command queue counters.
    pub fn print_stats(&self, what: &str) {
        let s = self.smmu.cmdq_stats();
        crate::println!(
            "  cmdq {what}: {} commands issued ({} CMD_SYNC), {} command errors",
            s.commands,
            s.syncs,
            s.errors
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Err(e) = self.smmu.disable() {
            crate::println!("  SMMU disable: {e}");
        }
    }
}
