//! What every program of the seL4 image shares.
//!
//! - [`say!`]: a line on the kernel's debug console (the serial port);
//! - [`Tally`]: the `PASS <name>` / `FAIL <name>: <why>` convention;
//! - [`heap`]: the global allocator over a static area (on the image's target only);
//! - [`elf`]: reading the program headers of the executables init loads;
//! - [`start`]: the record init writes into each process it starts (where its memory,
//!   devices and capabilities are), and the fixed layout of a process's VSpace.
#![no_std]

extern crate alloc;

pub mod elf;
#[cfg(target_os = "none")]
pub mod heap;
pub mod start;

pub use sel4_sys_gen as sys;

/// Prints a line on the kernel's debug console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::sys::DebugConsole, $($arg)*);
    }};
}

/// Counts checks and prints one line per check.
#[derive(Debug, Default)]
pub struct Tally {
    /// Checks that passed.
    pub passed: usize,
    /// Checks that failed.
    pub failed: usize,
}

impl Tally {
    /// Records one check: `PASS <name>` or `FAIL <name>: <why>`.
    pub fn check<E: core::fmt::Display>(&mut self, name: &str, result: Result<(), E>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                say!("PASS {name}");
            }
            Err(why) => {
                self.failed += 1;
                say!("FAIL {name}: {why}");
            }
        }
    }
}
