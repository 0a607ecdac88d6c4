//! Entry point, exception vectors and the exception report.
//!
//! QEMU starts an ELF `-kernel` at its entry point with the MMU and caches
//! off, at EL1 on `virt` (EL2 with `virtualization=on`; EL2 is left for EL1
//! here).  The entry code:
//! - parks every CPU other than the first (QEMU keeps secondaries powered off
//!   on `virt`, so this is only a safeguard),
//! - installs the exception vectors first, so that any fault from then on is
//!   reported instead of hanging,
//! - enables FP/SIMD (the target's code uses NEON registers),
//! - runs the image on `SP_EL0` (`SPSel = 0`) while exceptions run on
//!   `SP_EL1`, a separate stack: a stack overflow into the unmapped guard page
//!   still gets reported,
//! - zeroes `.bss`, then calls `rust_main(x0, entry_el)` with the `x0` value
//!   QEMU left and the exception level the image was entered at.

use core::arch::global_asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::semihosting;

/// Exit status when an unexpected exception was taken.
pub const EXIT_EXCEPTION: u32 = 3;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mov     x19, x0
    mrs     x20, CurrentEL
    lsr     x20, x20, #2

    /* Only the CPU with affinity 0.0.0 runs the image. */
    mrs     x1, mpidr_el1
    and     x1, x1, #0xffffff
    cbnz    x1, .Lpark

    cmp     x20, #2
    b.eq    .Lfrom_el2
    cmp     x20, #1
    b.eq    .Lel1
    b       .Lunsupported_el

.Lfrom_el2:
    /* EL1 runs AArch64, may use the physical counter and timer, has FP. */
    mov     x1, #(1 << 31)
    msr     hcr_el2, x1
    mov     x1, #3
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    ldr     x1, =0x30d00800
    msr     sctlr_el1, x1
    mov     x1, #0x3c5
    msr     spsr_el2, x1
    adr     x1, .Lel1
    msr     elr_el2, x1
    isb
    eret

.Lel1:
    msr     daifset, #0xf
    adrp    x1, exception_vectors
    add     x1, x1, :lo12:exception_vectors
    msr     vbar_el1, x1

    /* MMU and caches off, alignment checking off, SP alignment checks on. */
    ldr     x1, =0x30d00818
    msr     sctlr_el1, x1

    /* FP/SIMD accessible at EL1 and EL0. */
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb

    ldr     x1, =__exception_stack_top
    mov     sp, x1
    ldr     x1, =__stack_top
    msr     sp_el0, x1
    msr     spsel, #0

    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:
    mov     x0, x19
    mov     x1, x20
    bl      rust_main
    /* rust_main never returns; fall into the failure exit if it did. */
    b       .Lexit_failure

.Lunsupported_el:
    adr     x1, .Lmsg_el
    mov     w0, #0x04
    hlt     #0xf000
.Lexit_failure:
    adr     x1, .Lexit_block
    mov     w0, #0x18
    hlt     #0xf000
.Lpark:
    wfe
    b       .Lpark

    .balign 8
.Lexit_block:
    .quad   0x20026
    .quad   2
.Lmsg_el:
    .asciz  "boot: started at an exception level other than EL1/EL2\n"
    .balign 4
    .ltorg

    .section .text.vectors, "ax"
    .balign 0x800
    .global exception_vectors
exception_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    mov     x0, #\kind
    b       .Lexception_common
    .endr

.Lexception_common:
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    mrs     x4, spsr_el1
    mov     x5, x30
    mrs     x6, sp_el0
    bl      rust_exception
    b       .
"#
);

const VECTOR_NAMES: [&str; 16] = [
    "synchronous, current EL, SP_EL0",
    "IRQ, current EL, SP_EL0",
    "FIQ, current EL, SP_EL0",
    "SError, current EL, SP_EL0",
    "synchronous, current EL, SP_ELx",
    "IRQ, current EL, SP_ELx",
    "FIQ, current EL, SP_ELx",
    "SError, current EL, SP_ELx",
    "synchronous, lower EL, AArch64",
    "IRQ, lower EL, AArch64",
    "FIQ, lower EL, AArch64",
    "SError, lower EL, AArch64",
    "synchronous, lower EL, AArch32",
    "IRQ, lower EL, AArch32",
    "FIQ, lower EL, AArch32",
    "SError, lower EL, AArch32",
];

fn exception_class_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE",
        0x07 => "FP/SIMD access trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "system register access trapped",
        0x20 | 0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 | 0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        0x3c => "BRK",
        _ => "other",
    }
}

fn fault_status_name(fsc: u64) -> &'static str {
    match fsc {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x09..=0x0b => "access flag fault",
        0x0d..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x21 => "alignment fault",
        _ => "other fault",
    }
}

/// How many times the exception report has been entered.
static EXCEPTION_DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Reports an unexpected exception and ends the run with [`EXIT_EXCEPTION`].
#[no_mangle]
extern "C" fn rust_exception(
    kind: u64,
    esr: u64,
    elr: u64,
    far: u64,
    spsr: u64,
    lr: u64,
    sp_el0: u64,
) -> ! {
    // Plain load and store: the MMU may still be off, where exclusive
    // accesses to Device memory are not guaranteed to work.
    let depth = EXCEPTION_DEPTH.load(Ordering::Relaxed);
    EXCEPTION_DEPTH.store(depth + 1, Ordering::Relaxed);
    match depth {
        0 => {}
        1 => {
            // The report itself faulted: leave without printing through the UART.
            semihosting::write_str("exception while reporting an exception\n");
            semihosting::exit(EXIT_EXCEPTION)
        }
        _ => semihosting::exit(EXIT_EXCEPTION),
    }
    let ec = (esr >> 26) & 0x3f;
    let name = usize::try_from(kind)
        .ok()
        .and_then(|k| VECTOR_NAMES.get(k))
        .copied()
        .unwrap_or("unknown vector");
    crate::println!();
    crate::println!("EXCEPTION: {name}");
    crate::println!(
        "  ESR_EL1=0x{esr:016x} (EC=0x{ec:02x}: {}, ISS=0x{:07x})",
        exception_class_name(ec),
        esr & 0x1ff_ffff
    );
    if matches!(ec, 0x20 | 0x21 | 0x24 | 0x25) {
        let fsc = esr & 0x3f;
        let access = if ec >= 0x24 && esr & (1 << 6) != 0 {
            "write"
        } else {
            "read"
        };
        crate::println!(
            "  fault status 0x{fsc:02x}: {} at level {}, {access}",
            fault_status_name(fsc),
            fsc & 3
        );
    }
    crate::println!("  ELR_EL1=0x{elr:016x} FAR_EL1=0x{far:016x} SPSR_EL1=0x{spsr:08x}");
    crate::println!("  LR=0x{lr:016x} SP_EL0=0x{sp_el0:016x}");
    crate::println!("exiting with status {EXIT_EXCEPTION}");
    semihosting::exit(EXIT_EXCEPTION)
}
