//! What a root task needs that other processes do not: an entry point with a stack (the
//! kernel starts the root task with none) and a way to end the QEMU run.

use crate::sys::init;

/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=4`):
/// writing `v` ends QEMU with status `(v << 1) | 1`, so 0 gives 1 (success) and 1 gives 3.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Bytes of the root task's stack.
pub const STACK_SIZE: usize = 64 * 1024;

/// Declares the root task's entry point `_start`: it points `rsp` at the top of a
/// static stack (16-byte aligned before the call, as the SysV ABI wants) and calls
/// `$main`, an `extern "C" fn(*const BootInfo) -> !`, with `rdi` (the bootinfo address
/// the kernel passes) untouched.
#[macro_export]
macro_rules! root_task_entry {
    ($main:path) => {
        #[repr(C, align(16))]
        struct RootStack([u8; $crate::root::STACK_SIZE]);

        #[no_mangle]
        static mut ROOT_STACK: RootStack = RootStack([0; $crate::root::STACK_SIZE]);

        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "    lea rsp, [rip + ROOT_STACK + {size}]",
            "    xor ebp, ebp",
            "    call {main}",
            "    ud2",
            size = const $crate::root::STACK_SIZE,
            main = sym $main,
        );
    };
}

/// Ends QEMU through `isa-debug-exit` with the root task's I/O port capability (status
/// 1 for success, 3 for failure). Without that device the write does nothing, so the
/// task then suspends itself.
pub fn exit_qemu(success: bool) -> ! {
    if let Err(e) = init::IO_PORT.out8(DEBUG_EXIT_PORT, u8::from(!success)) {
        crate::say!("root task: I/O port write failed: {e:?}");
    }
    crate::say!("root task: still running after the exit request (no isa-debug-exit device?)");
    loop {
        let _ = init::TCB.suspend();
    }
}
