//! Measuring the TSC's rate against the 8254 PIT's channel 2 (1.193182 MHz), gated
//! through port 0x61 (the PC/AT keyboard controller's port B), so processes can turn
//! microseconds into TSC ticks for their hardware timeouts.

use sel4_rt::sys::{cap_type, Cap, Error};

const PIT_HZ: u64 = 1_193_182;
const PIT_CHANNEL2: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
const PORT_B: u16 = 0x61;
/// Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
const CH2_MODE0: u8 = 0b1011_0000;
/// Port B: bit 0 gates channel 2, bit 1 drives the speaker, bit 5 reads OUT2.
const GATE2: u8 = 1 << 0;
const SPEAKER: u8 = 1 << 1;
const OUT2: u8 = 1 << 5;

/// Most port reads spent waiting for the PIT before giving up.
const MAX_POLLS: u32 = 5_000_000;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Why the measurement failed.
#[derive(Debug)]
pub enum TscError {
    /// An I/O port invocation failed.
    Port(Error),
    /// OUT2 never rose.
    Timeout,
}

impl core::fmt::Display for TscError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TscError::Port(e) => write!(f, "I/O port access failed: {e:?}"),
            TscError::Timeout => write!(f, "PIT channel 2 never reached terminal count"),
        }
    }
}

/// TSC ticks per microsecond, over a 10 ms PIT interval.
pub fn ticks_per_us(ports: Cap<cap_type::IoPort>) -> Result<u64, TscError> {
    let count = PIT_HZ / 100;
    let port_b = ports.in8(PORT_B).map_err(TscError::Port)?;
    ports
        .out8(PORT_B, (port_b & !SPEAKER) & !GATE2)
        .map_err(TscError::Port)?;
    ports.out8(PIT_COMMAND, CH2_MODE0).map_err(TscError::Port)?;
    ports
        .out8(PIT_CHANNEL2, count as u8)
        .map_err(TscError::Port)?;
    ports
        .out8(PIT_CHANNEL2, (count >> 8) as u8)
        .map_err(TscError::Port)?;
    ports
        .out8(PORT_B, (port_b & !SPEAKER) | GATE2)
        .map_err(TscError::Port)?;
    let start = rdtsc();
    let mut polls = 0;
    while ports.in8(PORT_B).map_err(TscError::Port)? & OUT2 == 0 {
        polls += 1;
        if polls > MAX_POLLS {
            return Err(TscError::Timeout);
        }
    }
    let ticks = rdtsc() - start;
    ports.out8(PORT_B, port_b).map_err(TscError::Port)?;
    Ok((ticks * PIT_HZ / count / 1_000_000).max(1))
}
