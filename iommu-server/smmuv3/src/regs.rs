//! SMMUv3 register map (SMMUv3 spec, IHI 0070, chapter 6: §6.2 "Register overview",
//! §6.3 "Register formats"), field helpers, and the register access seam.
//!
//! Registers live in two 64KB pages: page 0 holds control, the stream table and the
//! command queue; page 1 (at [`PAGE1`]) holds the event and PRI queue producer and
//! consumer indices. Names follow the spec (`SMMU_CR0` becomes [`CR0`], field
//! `SMMU_CR0.SMMUEN` becomes [`CR0_SMMUEN`]).

/// Mask of bits `hi..=lo` of a 64-bit value.
pub const fn genmask(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Place `value` into the field described by `mask` (value is truncated to the field).
#[inline(always)]
pub const fn field_prep(mask: u64, value: u64) -> u64 {
    (value << mask.trailing_zeros()) & mask
}

/// Extract the field described by `mask`.
#[inline(always)]
pub const fn field_get(mask: u64, value: u64) -> u64 {
    (value & mask) >> mask.trailing_zeros()
}

/// Offset of register page 1 (SMMUv3 spec §6.2).
pub const PAGE1: usize = 0x1_0000;

// --- Identification registers (§6.3.1 - §6.3.8) ---
/// SMMU_IDR0 (§6.3.1).
pub const IDR0: usize = 0x00;
/// SMMU_IDR1 (§6.3.2).
pub const IDR1: usize = 0x04;
/// SMMU_IDR2 (§6.3.3).
pub const IDR2: usize = 0x08;
/// SMMU_IDR3 (§6.3.4).
pub const IDR3: usize = 0x0c;
/// SMMU_IDR4 (§6.3.5).
pub const IDR4: usize = 0x10;
/// SMMU_IDR5 (§6.3.6).
pub const IDR5: usize = 0x14;
/// SMMU_IIDR (§6.3.7).
pub const IIDR: usize = 0x18;
/// SMMU_AIDR (§6.3.8).
pub const AIDR: usize = 0x1c;

// --- SMMU_CR0 / SMMU_CR0ACK (§6.3.9, §6.3.10) ---
/// SMMU_CR0.
pub const CR0: usize = 0x20;
/// SMMU_CR0ACK: reflects CR0 once a change has taken effect.
pub const CR0ACK: usize = 0x24;
/// CR0.SMMUEN: translation enable.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// CR0.PRIQEN: PRI queue enable.
pub const CR0_PRIQEN: u32 = 1 << 1;
/// CR0.EVENTQEN: event queue enable.
pub const CR0_EVENTQEN: u32 = 1 << 2;
/// CR0.CMDQEN: command queue enable.
pub const CR0_CMDQEN: u32 = 1 << 3;
/// CR0.ATSCHK: ATS translated-transaction check.
pub const CR0_ATSCHK: u32 = 1 << 4;

// --- SMMU_CR1 (§6.3.11): cacheability/shareability of table and queue accesses ---
/// SMMU_CR1.
pub const CR1: usize = 0x28;
/// CR1.QUEUE_IC `[1:0]`.
pub const CR1_QUEUE_IC: u64 = genmask(1, 0);
/// CR1.QUEUE_OC `[3:2]`.
pub const CR1_QUEUE_OC: u64 = genmask(3, 2);
/// CR1.QUEUE_SH `[5:4]`.
pub const CR1_QUEUE_SH: u64 = genmask(5, 4);
/// CR1.TABLE_IC `[7:6]`.
pub const CR1_TABLE_IC: u64 = genmask(7, 6);
/// CR1.TABLE_OC `[9:8]`.
pub const CR1_TABLE_OC: u64 = genmask(9, 8);
/// CR1.TABLE_SH `[11:10]`.
pub const CR1_TABLE_SH: u64 = genmask(11, 10);
/// CR1 cacheability: non-cacheable.
pub const CR1_CACHE_NC: u64 = 0;
/// CR1 cacheability: write-back.
pub const CR1_CACHE_WB: u64 = 1;
/// CR1 cacheability: write-through.
pub const CR1_CACHE_WT: u64 = 2;
/// Shareability: non-shareable.
pub const SH_NSH: u64 = 0;
/// Shareability: outer shareable.
pub const SH_OSH: u64 = 2;
/// Shareability: inner shareable.
pub const SH_ISH: u64 = 3;

// --- SMMU_CR2 (§6.3.12) ---
/// SMMU_CR2.
pub const CR2: usize = 0x2c;
/// CR2.E2H: EL2-E2H translation regime.
pub const CR2_E2H: u32 = 1 << 0;
/// CR2.RECINVSID: record C_BAD_STREAMID for out-of-range StreamIDs.
pub const CR2_RECINVSID: u32 = 1 << 1;
/// CR2.PTM: private TLB maintenance (ignore broadcast TLBI from PEs).
pub const CR2_PTM: u32 = 1 << 2;

// --- Misc control (§6.3.13 - §6.3.17) ---
/// SMMU_STATUSR.
pub const STATUSR: usize = 0x40;
/// SMMU_GBPA: global bypass attributes used while SMMUEN = 0.
pub const GBPA: usize = 0x44;
/// GBPA.ABORT: abort all incoming transactions while SMMUEN = 0.
pub const GBPA_ABORT: u32 = 1 << 20;
/// GBPA.UPDATE: write 1 with new values; reads 1 until the update completed.
pub const GBPA_UPDATE: u32 = 1 << 31;
/// SMMU_IRQ_CTRL.
pub const IRQ_CTRL: usize = 0x50;
/// SMMU_IRQ_CTRLACK.
pub const IRQ_CTRLACK: usize = 0x54;
/// IRQ_CTRL.GERROR_IRQEN.
pub const IRQ_CTRL_GERROR_IRQEN: u32 = 1 << 0;
/// IRQ_CTRL.PRIQ_IRQEN.
pub const IRQ_CTRL_PRIQ_IRQEN: u32 = 1 << 1;
/// IRQ_CTRL.EVENTQ_IRQEN.
pub const IRQ_CTRL_EVENTQ_IRQEN: u32 = 1 << 2;

// --- SMMU_GERROR / SMMU_GERRORN (§6.3.18, §6.3.19): toggle-style global errors ---
/// SMMU_GERROR: a bit that differs from GERRORN is an active error.
pub const GERROR: usize = 0x60;
/// SMMU_GERRORN: software toggles a bit to match GERROR to acknowledge it.
pub const GERRORN: usize = 0x64;
/// GERROR.CMDQ_ERR: the command queue stopped on an erroneous command.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// GERROR.EVENTQ_ABT_ERR.
pub const GERROR_EVENTQ_ABT_ERR: u32 = 1 << 2;
/// GERROR.PRIQ_ABT_ERR.
pub const GERROR_PRIQ_ABT_ERR: u32 = 1 << 3;
/// GERROR.MSI_CMDQ_ABT_ERR.
pub const GERROR_MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// GERROR.MSI_EVENTQ_ABT_ERR.
pub const GERROR_MSI_EVENTQ_ABT_ERR: u32 = 1 << 5;
/// GERROR.MSI_PRIQ_ABT_ERR.
pub const GERROR_MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
/// GERROR.MSI_GERROR_ABT_ERR.
pub const GERROR_MSI_GERROR_ABT_ERR: u32 = 1 << 7;
/// GERROR.SFM_ERR: the SMMU entered service failure mode.
pub const GERROR_SFM_ERR: u32 = 1 << 8;
/// All architected GERROR bits.
pub const GERROR_ERR_MASK: u32 = 0x1fd;
/// SMMU_GERROR_IRQ_CFG0 (MSI address).
pub const GERROR_IRQ_CFG0: usize = 0x68;

// --- Stream table (§6.3.23, §6.3.24) ---
/// SMMU_STRTAB_BASE (64-bit).
pub const STRTAB_BASE: usize = 0x80;
/// STRTAB_BASE.RA: read-allocate hint.
pub const STRTAB_BASE_RA: u64 = 1 << 62;
/// STRTAB_BASE.ADDR `[51:6]`.
pub const STRTAB_BASE_ADDR: u64 = genmask(51, 6);
/// SMMU_STRTAB_BASE_CFG.
pub const STRTAB_BASE_CFG: usize = 0x88;
/// STRTAB_BASE_CFG.LOG2SIZE `[5:0]`: log2 of the number of StreamIDs covered.
pub const STRTAB_BASE_CFG_LOG2SIZE: u64 = genmask(5, 0);
/// STRTAB_BASE_CFG.SPLIT `[10:6]`: StreamID bits resolved by the level-2 tables.
pub const STRTAB_BASE_CFG_SPLIT: u64 = genmask(10, 6);
/// STRTAB_BASE_CFG.FMT `[17:16]`.
pub const STRTAB_BASE_CFG_FMT: u64 = genmask(17, 16);
/// FMT value: linear table.
pub const STRTAB_BASE_CFG_FMT_LINEAR: u64 = 0;
/// FMT value: two-level table.
pub const STRTAB_BASE_CFG_FMT_2LVL: u64 = 1;

// --- Queues (§6.3.25 - §6.3.30) ---
/// SMMU_CMDQ_BASE (64-bit).
pub const CMDQ_BASE: usize = 0x90;
/// SMMU_CMDQ_PROD.
pub const CMDQ_PROD: usize = 0x98;
/// SMMU_CMDQ_CONS.
pub const CMDQ_CONS: usize = 0x9c;
/// SMMU_EVENTQ_BASE (64-bit).
pub const EVENTQ_BASE: usize = 0xa0;
/// SMMU_EVENTQ_PROD (page 1).
pub const EVENTQ_PROD: usize = PAGE1 + 0xa8;
/// SMMU_EVENTQ_CONS (page 1).
pub const EVENTQ_CONS: usize = PAGE1 + 0xac;
/// SMMU_PRIQ_BASE (64-bit).
pub const PRIQ_BASE: usize = 0xc0;
/// SMMU_PRIQ_PROD (page 1).
pub const PRIQ_PROD: usize = PAGE1 + 0xc8;
/// SMMU_PRIQ_CONS (page 1).
pub const PRIQ_CONS: usize = PAGE1 + 0xcc;
/// Q_BASE.RA / WA (bit 62): read-allocate (CMDQ) or write-allocate (EVENTQ, PRIQ) hint.
pub const Q_BASE_RWA: u64 = 1 << 62;
/// Q_BASE.ADDR `[51:5]`.
pub const Q_BASE_ADDR: u64 = genmask(51, 5);
/// Q_BASE.LOG2SIZE `[4:0]`.
pub const Q_BASE_LOG2SIZE: u64 = genmask(4, 0);
/// CMDQ_CONS.ERR `[30:24]`.
pub const CMDQ_CONS_ERR: u32 = 0x7f << 24;
/// EVENTQ_PROD.OVFLG (bit 31) / EVENTQ_CONS.OVACKFLG (bit 31).
pub const Q_OVERFLOW_FLAG: u32 = 1 << 31;

/// Register access seam: bare metal uses [`Mmio`], host tests a recording fake.
///
/// Offsets are byte offsets from the start of register page 0 (page 1 registers
/// include [`PAGE1`]).
pub trait RegisterIo {
    /// 32-bit register read.
    fn read32(&mut self, offset: usize) -> u32;
    /// 32-bit register write.
    fn write32(&mut self, offset: usize, value: u32);
    /// 64-bit register read.
    fn read64(&mut self, offset: usize) -> u64;
    /// 64-bit register write.
    fn write64(&mut self, offset: usize, value: u64);
    /// Make every earlier CPU write to normal memory (tables, queue entries) visible to
    /// the SMMU before any later register write: called before publishing a producer
    /// index or enabling the SMMU.
    fn publish_barrier(&mut self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
    /// Order a register read that reports the SMMU's progress (a producer index) before
    /// later CPU reads of memory the SMMU wrote (queue entries).
    fn consume_barrier(&mut self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// Volatile MMIO access to a memory-mapped SMMU (both 64KB register pages).
#[derive(Debug)]
pub struct Mmio {
    base: *mut u8,
}

// SAFETY: `Mmio` only holds the address of device registers; moving it to another thread
// does not create aliasing of Rust-managed memory.
unsafe impl Send for Mmio {}

impl Mmio {
    /// Wrap the register block at `base` (for example the address from the device tree's
    /// `reg` property of the `arm,smmu-v3` node, identity-mapped as device memory).
    ///
    /// # Safety
    /// `base` must point to the SMMU's 128KB register frame, mapped as device memory for
    /// the lifetime of the returned value, and no other code may program the SMMU.
    pub const unsafe fn new(base: *mut u8) -> Self {
        Self { base }
    }

    /// The base address.
    pub fn base(&self) -> *mut u8 {
        self.base
    }
}

impl RegisterIo for Mmio {
    fn read32(&mut self, offset: usize) -> u32 {
        debug_assert!(offset < 2 * PAGE1 && offset & 3 == 0);
        // SAFETY: `new` guarantees `base` maps the 128KB register frame; offsets are the
        // architected register offsets inside it and 4-byte aligned.
        unsafe { core::ptr::read_volatile(self.base.add(offset) as *const u32) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        debug_assert!(offset < 2 * PAGE1 && offset & 3 == 0);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.base.add(offset) as *mut u32, value) }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        debug_assert!(offset < 2 * PAGE1 && offset & 7 == 0);
        // SAFETY: as in `read32`; 64-bit registers are 8-byte aligned and the SMMU
        // supports 64-bit single-copy atomic access to them (§6.2).
        unsafe { core::ptr::read_volatile(self.base.add(offset) as *const u64) }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        debug_assert!(offset < 2 * PAGE1 && offset & 7 == 0);
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile(self.base.add(offset) as *mut u64, value) }
    }

    fn publish_barrier(&mut self) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: a data memory barrier has no memory-safety effect; outer-shareable store
        // ordering makes table/queue writes visible to the SMMU before the register write.
        unsafe {
            core::arch::asm!("dmb oshst", options(nostack, preserves_flags))
        };
        #[cfg(not(target_arch = "aarch64"))]
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn consume_barrier(&mut self) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: a data memory barrier has no memory-safety effect; it orders the index
        // read before reads of queue entries the SMMU wrote.
        unsafe {
            core::arch::asm!("dmb oshld", options(nostack, preserves_flags))
        };
        #[cfg(not(target_arch = "aarch64"))]
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// How long a poll on the hardware may go on. Every wait in the driver calls
/// [`start`](PollTimeout::start) once and then [`expired`](PollTimeout::expired) after
/// each unsuccessful poll, reporting [`Error::Timeout`](crate::Error::Timeout) when it
/// returns true.
pub trait PollTimeout {
    /// A new wait begins.
    fn start(&mut self);
    /// One more unsuccessful poll happened; true once the wait must give up.
    fn expired(&mut self) -> bool;
}

/// A timeout counted in polls (no time source needed).
#[derive(Clone, Copy, Debug)]
pub struct PollBudget {
    max_polls: u64,
    polls: u64,
}

impl PollBudget {
    /// Give up after `max_polls` unsuccessful polls.
    pub const fn new(max_polls: u64) -> Self {
        Self {
            max_polls,
            polls: 0,
        }
    }
}

impl PollTimeout for PollBudget {
    fn start(&mut self) {
        self.polls = 0;
    }
    fn expired(&mut self) -> bool {
        self.polls += 1;
        self.polls > self.max_polls
    }
}

/// A monotonic time source in nanoseconds (for example CNTVCT_EL0 scaled by CNTFRQ_EL0).
pub trait Clock {
    /// Current time in nanoseconds.
    fn now_ns(&mut self) -> u64;
}

/// A timeout measured with a [`Clock`].
#[derive(Clone, Copy, Debug)]
pub struct Deadline<C: Clock> {
    clock: C,
    limit_ns: u64,
    started: u64,
}

impl<C: Clock> Deadline<C> {
    /// Give up once `limit_ns` nanoseconds passed since the wait began.
    pub const fn new(clock: C, limit_ns: u64) -> Self {
        Self {
            clock,
            limit_ns,
            started: 0,
        }
    }
}

impl<C: Clock> PollTimeout for Deadline<C> {
    fn start(&mut self) {
        self.started = self.clock.now_ns();
    }
    fn expired(&mut self) -> bool {
        self.clock.now_ns().wrapping_sub(self.started) > self.limit_ns
    }
}

/// The Arm generic timer's virtual counter (CNTVCT_EL0 / CNTFRQ_EL0) as a [`Clock`],
/// for bare-metal images.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenericTimer;

#[cfg(target_arch = "aarch64")]
impl Clock for GenericTimer {
    fn now_ns(&mut self) -> u64 {
        let cnt: u64;
        let frq: u64;
        // SAFETY: reading the virtual counter and its frequency has no side effects; the
        // ISB keeps the counter read from being hoisted above earlier polls.
        unsafe {
            core::arch::asm!("isb", "mrs {0}, cntvct_el0", out(reg) cnt, options(nostack));
            core::arch::asm!("mrs {0}, cntfrq_el0", out(reg) frq, options(nomem, nostack));
        }
        (u128::from(cnt) * 1_000_000_000 / u128::from(frq.max(1))) as u64
    }
}

/// Poll `done` until it returns true or `timeout` expires.
pub(crate) fn poll_until<T: PollTimeout>(timeout: &mut T, mut done: impl FnMut() -> bool) -> bool {
    timeout.start();
    loop {
        if done() {
            return true;
        }
        if timeout.expired() {
            // One last look: the condition may have become true while we were deciding.
            return done();
        }
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genmask_and_fields() {
        assert_eq!(genmask(3, 1), 0b1110);
        assert_eq!(genmask(63, 0), u64::MAX);
        assert_eq!(genmask(63, 59), 0xf800_0000_0000_0000);
        assert_eq!(field_prep(genmask(3, 1), 5), 0b1010);
        assert_eq!(field_prep(genmask(3, 1), 0xff), 0b1110, "value truncated");
        assert_eq!(field_get(genmask(17, 16), 0x1_0000), 1);
    }

    #[test]
    fn register_offsets_match_spec() {
        assert_eq!((CR0, CR0ACK, CR1, CR2), (0x20, 0x24, 0x28, 0x2c));
        assert_eq!(
            (GERROR, GERRORN, IRQ_CTRL, IRQ_CTRLACK),
            (0x60, 0x64, 0x50, 0x54)
        );
        assert_eq!((STRTAB_BASE, STRTAB_BASE_CFG), (0x80, 0x88));
        assert_eq!((CMDQ_BASE, CMDQ_PROD, CMDQ_CONS), (0x90, 0x98, 0x9c));
        assert_eq!(
            (EVENTQ_BASE, EVENTQ_PROD, EVENTQ_CONS),
            (0xa0, 0x100a8, 0x100ac)
        );
        assert_eq!(CR1_TABLE_SH | CR1_QUEUE_IC, 0xc03);
        assert_eq!(CMDQ_CONS_ERR, 0x7f00_0000);
        assert_eq!(Q_BASE_ADDR, 0x000f_ffff_ffff_ffe0);
    }

    #[test]
    fn mmio_accesses_the_frame() {
        extern crate std;
        let mut frame = std::vec![0u64; 2 * PAGE1 / 8];
        {
            // SAFETY: the buffer is 128KB, aligned, and outlives `m` (this block).
            let mut m = unsafe { Mmio::new(frame.as_mut_ptr() as *mut u8) };
            m.write32(CR0, 0xd);
            m.write64(STRTAB_BASE, 0x4000_0000_8000_0040);
            m.write32(EVENTQ_CONS, 0x8000_0003);
            assert_eq!(m.read32(CR0), 0xd);
            assert_eq!(m.read64(STRTAB_BASE), 0x4000_0000_8000_0040);
            assert_eq!(m.read32(STRTAB_BASE + 4), 0x4000_0000);
            assert_eq!(m.read32(EVENTQ_CONS), 0x8000_0003);
            m.publish_barrier();
            m.consume_barrier();
        }
        assert_eq!(frame[CR0 / 8] & 0xffff_ffff, 0xd);
        assert_eq!(frame[EVENTQ_CONS / 8] >> 32, 0x8000_0003);
    }

    #[test]
    fn poll_budget_expires_after_limit() {
        let mut t = PollBudget::new(3);
        let mut n = 0;
        assert!(!poll_until(&mut t, || {
            n += 1;
            false
        }));
        // 3 allowed unsuccessful polls plus the first and the final re-check.
        assert_eq!(n, 5);
        let mut k = 0;
        assert!(poll_until(&mut t, || {
            k += 1;
            k == 2
        }));
    }

    struct FakeClock(u64);
    impl Clock for FakeClock {
        fn now_ns(&mut self) -> u64 {
            self.0 += 10;
            self.0
        }
    }

    #[test]
    fn deadline_uses_clock() {
        let mut d = Deadline::new(FakeClock(0), 100);
        d.start();
        let mut polls = 0;
        while !d.expired() {
            polls += 1;
        }
        assert_eq!(polls, 10);
    }
}
