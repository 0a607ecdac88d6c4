//! Arm semihosting (A64: `HLT #0xF000`, operation in `w0`, parameter in `x1`).
//!
//! Used to end QEMU with a status code and as the console until the UART
//! has been found.  QEMU must run with `-semihosting-config enable=on`
//! (otherwise `HLT` is an undefined instruction and the run cannot report
//! its status).

use core::arch::asm;

const SYS_WRITE0: u64 = 0x04;
const SYS_EXIT: u64 = 0x18;
/// `ADP_Stopped_ApplicationExit`: with it, `SYS_EXIT` on A64 carries an exit
/// status that QEMU uses as its own process exit status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// Performs one semihosting call.
///
/// # Safety
/// `param` must be what `op` expects: for the calls used here, the address of
/// a readable parameter block or NUL-terminated string that stays valid for
/// the duration of the call.
unsafe fn call(op: u64, param: usize) -> u64 {
    let ret: u64;
    // SAFETY: the semihosting trap reads only the memory `param` points to,
    // which the caller guarantees is valid.
    unsafe {
        asm!("hlt #0xf000", inout("x0") op => ret, in("x1") param, options(nostack));
    }
    ret
}

/// Writes `s` to the debug console (QEMU's stdout/stderr).
pub fn write_str(s: &str) {
    let mut buf = [0u8; 128];
    for chunk in s.as_bytes().chunks(buf.len() - 1) {
        let mut n = 0;
        for &b in chunk {
            // A NUL would end the string early; show it as '?'.
            if let Some(slot) = buf.get_mut(n) {
                *slot = if b == 0 { b'?' } else { b };
                n += 1;
            }
        }
        if let Some(slot) = buf.get_mut(n) {
            *slot = 0;
        }
        // SAFETY: `buf` is a NUL-terminated string on our stack.
        unsafe {
            call(SYS_WRITE0, buf.as_ptr() as usize);
        }
    }
}

/// Ends the run: QEMU exits with `status` as its process exit status.
pub fn exit(status: u32) -> ! {
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: `block` is the two-word parameter block SYS_EXIT reads on A64.
    unsafe {
        call(SYS_EXIT, block.as_ptr() as usize);
    }
    // Only reached if the host ignored the request: nothing is left to do.
    loop {
        // SAFETY: waiting for an interrupt has no memory effects.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}
