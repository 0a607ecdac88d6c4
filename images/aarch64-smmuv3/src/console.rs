//! Console output: the PL011 UART once it is found in the device tree,
//! semihosting before that.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::mmio::Mmio;
use crate::semihosting;

const UARTDR: usize = 0x00;
const UARTFR: usize = 0x18;
const UARTCR: usize = 0x30;
const FR_TXFF: u32 = 1 << 5;
const CR_UARTEN: u32 = 1 << 0;
const CR_TXE: u32 = 1 << 8;
/// Upper bound on polls of a full transmit FIFO before a character is dropped.
const TX_SPIN_LIMIT: u32 = 1_000_000;

/// Base address of the PL011 in use; 0 until [`use_pl011`] is called.
static UART_BASE: AtomicUsize = AtomicUsize::new(0);

fn uart() -> Option<Mmio> {
    let base = UART_BASE.load(Ordering::Acquire);
    if base == 0 {
        return None;
    }
    // SAFETY: `use_pl011` only stores the base of a mapped PL011 register page.
    Some(unsafe { Mmio::new(base, 0x1000) })
}

/// Switches console output to the PL011 at `regs`, enabling its transmitter.
pub fn use_pl011(regs: Mmio) {
    let cr = regs.read32(UARTCR);
    if cr & (CR_UARTEN | CR_TXE) != CR_UARTEN | CR_TXE {
        regs.write32(UARTCR, cr | CR_UARTEN | CR_TXE);
    }
    UART_BASE.store(regs.base(), Ordering::Release);
}

fn uart_put(regs: &Mmio, byte: u8) {
    let mut spins = 0;
    while regs.read32(UARTFR) & FR_TXFF != 0 {
        spins += 1;
        if spins >= TX_SPIN_LIMIT {
            return;
        }
        core::hint::spin_loop();
    }
    regs.write32(UARTDR, u32::from(byte));
}

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match uart() {
            Some(regs) => {
                for b in s.bytes() {
                    if b == b'\n' {
                        uart_put(&regs, b'\r');
                    }
                    uart_put(&regs, b);
                }
            }
            None => semihosting::write_str(s),
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Console writes never fail.
    let _ = Console.write_fmt(args);
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
