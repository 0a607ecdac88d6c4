//! What every program of the seL4 image shares.
//!
//! - [`say!`]: a line on the kernel's debug console (the serial port);
//! - [`Tally`]: the `PASS <name>` / `FAIL <name>: <why>` convention;
//! - [`heap`]: the global allocator over a static area (on the image's target only);
//! - [`elf`]: reading the program headers of the executables init loads;
//! - [`start`]: the record init writes into each process it starts (where its memory,
//!   devices and capabilities are), and the fixed layout of a process's VSpace;
//! - [`root`]: the root task's entry point and the end of a QEMU run;
//! - [`Bdf`]: a PCI function's name as `bb:dd.f`.
#![no_std]

extern crate alloc;

pub mod elf;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_arch = "x86_64")]
pub mod root;
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

/// A PCI function (`bus << 8 | device << 3 | function`), shown as `bb:dd.f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdf(pub u16);

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.0 >> 8,
            (self.0 >> 3) & 0x1f,
            self.0 & 7
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    #[test]
    fn bdf_names() {
        assert_eq!(super::Bdf(0x0018).to_string(), "00:03.0");
        assert_eq!(super::Bdf(0x0100).to_string(), "01:00.0");
        assert_eq!(super::Bdf(0xfffa).to_string(), "ff:1f.2");
    }
}
