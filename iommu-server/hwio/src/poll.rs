//! Poll timeouts: how long a wait on the hardware may go on.
//!
//! Drivers are generic over [`PollTimeout`]: a [`PollBudget`] counts polls and needs no
//! time source; a [`Deadline`] measures time with a [`Clock`] such as
//! `GenericTimer` (aarch64) or `Tsc` (x86_64). [`poll_until`] runs one wait.

/// How long a poll on the hardware may go on. Every wait in a driver calls
/// [`start`](PollTimeout::start) once and then [`expired`](PollTimeout::expired) after
/// each unsuccessful poll, reporting the driver's timeout error (`Error::Timeout`) when
/// it returns true.
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

/// A monotonic time source in nanoseconds (for example CNTVCT_EL0 scaled by CNTFRQ_EL0,
/// or the TSC scaled by its frequency).
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

/// The x86 time-stamp counter as a [`Clock`], for bare-metal images. Assumes an
/// invariant TSC; `ticks_per_us` comes from CPUID leaf 0x15 or a calibration.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Tsc {
    ticks_per_us: u64,
}

#[cfg(target_arch = "x86_64")]
impl Tsc {
    /// A clock counting `ticks_per_us` TSC ticks per microsecond (0 is treated as 1).
    pub const fn new(ticks_per_us: u64) -> Self {
        Self {
            ticks_per_us: if ticks_per_us == 0 { 1 } else { ticks_per_us },
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Clock for Tsc {
    fn now_ns(&mut self) -> u64 {
        // SAFETY: RDTSC only reads the time-stamp counter; it touches no memory.
        let t = unsafe { core::arch::x86_64::_rdtsc() };
        (u128::from(t) * 1000 / u128::from(self.ticks_per_us)) as u64
    }
}

/// Poll `done` until it returns true or `timeout` expires; true if `done` returned true.
pub fn poll_until<T: PollTimeout>(timeout: &mut T, mut done: impl FnMut() -> bool) -> bool {
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tsc_deadline_expires() {
        let mut c = Tsc::new(1);
        let a = c.now_ns();
        let mut d = Deadline::new(c, 1000);
        d.start();
        while !d.expired() {}
        assert!(c.now_ns() >= a + 1000);
    }
}
