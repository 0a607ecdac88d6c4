//! Time source for timeouts: the Arm generic timer's physical counter
//! (`CNTPCT_EL0`, frequency `CNTFRQ_EL0`).

use core::arch::asm;
use core::fmt;

/// Reads the physical counter.
fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading CNTPCT_EL0 has no side effects; the ISB keeps the read
    // from being performed ahead of earlier instructions.
    unsafe {
        asm!("isb", "mrs {v}, cntpct_el0", v = out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

fn counter_frequency() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe {
        asm!("mrs {v}, cntfrq_el0", v = out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// A monotonic clock based on the generic timer.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    ticks_per_second: u64,
}

/// A poll did not see its condition before the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout {
    /// How long the poll waited, in microseconds.
    pub waited_us: u64,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {} us", self.waited_us)
    }
}

impl Clock {
    /// The clock, or `None` if firmware left `CNTFRQ_EL0` unset.
    pub fn new() -> Option<Self> {
        let ticks_per_second = counter_frequency();
        (ticks_per_second != 0).then_some(Self { ticks_per_second })
    }

    /// Counter ticks per second.
    pub fn frequency(&self) -> u64 {
        self.ticks_per_second
    }

    /// Current counter value.
    pub fn now(&self) -> u64 {
        counter()
    }

    /// Microseconds between two counter values.
    pub fn elapsed_us(&self, since: u64) -> u64 {
        let ticks = u128::from(counter().wrapping_sub(since));
        u64::try_from(ticks * 1_000_000 / u128::from(self.ticks_per_second)).unwrap_or(u64::MAX)
    }

    /// Calls `poll` until it returns `Some`, or until `timeout_us`
    /// microseconds have passed (`poll` is tried once more after the deadline,
    /// so a slow host cannot turn a completed operation into a timeout).
    pub fn poll_until<T>(
        &self,
        timeout_us: u64,
        mut poll: impl FnMut() -> Option<T>,
    ) -> Result<T, Timeout> {
        let start = self.now();
        loop {
            if let Some(v) = poll() {
                return Ok(v);
            }
            let waited_us = self.elapsed_us(start);
            if waited_us >= timeout_us {
                return poll().ok_or(Timeout { waited_us });
            }
            core::hint::spin_loop();
        }
    }

    /// Busy-waits for `us` microseconds.
    pub fn delay_us(&self, us: u64) {
        let start = self.now();
        while self.elapsed_us(start) < us {
            core::hint::spin_loop();
        }
    }
}
