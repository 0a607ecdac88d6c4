//! The seL4 syscalls on x86_64, and typed invocations built on them.
//!
//! ABI (seL4 5.0.0, `syscall` instruction): `rdx` holds the syscall number, `rdi` the
//! capability (or the badge on return), `rsi` the message info, `r10`, `r8`, `r9`, `r15`
//! message registers 0 to 3; further message registers and extra caps are in the IPC
//! buffer. The kernel clobbers `rcx` and `r11` (used by `sysret`) and expects the user
//! stack pointer in `rbx`, returning it there. LLVM reserves `rbx`, so every wrapper saves
//! it in `r12` (which the kernel preserves as part of the thread's context), loads `rsp`
//! into it, and puts both back after the instruction.
//!
//! The syscalls are safe functions: the `syscall` instruction changes no memory of this
//! process except the IPC buffer, which this crate reaches only through raw pointers.

use core::arch::asm;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::{
    cap_type, Cap, CapRights, InvocationLabel, IpcBuffer, MessageInfo, ObjectType, Result, Syscall,
    Word, MSG_MAX_EXTRA_CAPS, MSG_MAX_LENGTH,
};

/// Message registers passed in machine registers.
pub const REGISTER_MRS: usize = 4;

/// Sends a message (`seL4_Send`), blocking until it is delivered.
pub fn send(dest: crate::CPtr, info: MessageInfo, mrs: [Word; REGISTER_MRS]) {
    raw_send(Syscall::Send, dest, info, mrs);
}

/// Sends if a receiver is waiting, otherwise drops the message (`seL4_NBSend`).
pub fn nb_send(dest: crate::CPtr, info: MessageInfo, mrs: [Word; REGISTER_MRS]) {
    raw_send(Syscall::NBSend, dest, info, mrs);
}

/// Signals a notification (`seL4_Signal`: a Send with an empty message).
pub fn signal(dest: Cap<cap_type::Notification>) {
    raw_send(
        Syscall::Send,
        dest.cptr(),
        MessageInfo::new(0, 0, 0, 0),
        [0; 4],
    );
}

/// A received message: its info, the badge of the capability it came through and the
/// first four message registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Message info.
    pub info: MessageInfo,
    /// Badge of the sender's capability (or the notification word for a notification).
    pub badge: Word,
    /// Message registers 0 to 3.
    pub mrs: [Word; REGISTER_MRS],
}

/// Calls (`seL4_Call`): sends and waits for the reply.
pub fn call(dest: crate::CPtr, info: MessageInfo, mrs: [Word; REGISTER_MRS]) -> Received {
    raw_send_recv(Syscall::Call, dest, info, mrs)
}

/// Waits for a message (`seL4_Recv`).
pub fn recv(src: crate::CPtr) -> Received {
    raw_recv(Syscall::Recv, src)
}

/// Polls for a message (`seL4_NBRecv`); with none waiting, the label and length are 0.
pub fn nb_recv(src: crate::CPtr) -> Received {
    raw_recv(Syscall::NBRecv, src)
}

/// Waits on a notification (`seL4_Wait`: a Recv) and returns the signalled bits.
pub fn wait(src: Cap<cap_type::Notification>) -> Word {
    raw_recv(Syscall::Recv, src.cptr()).badge
}

/// Replies to the last caller (`seL4_Reply`).
pub fn reply(info: MessageInfo, mrs: [Word; REGISTER_MRS]) {
    let [mut mr0, mut mr1, mut mr2, mut mr3] = mrs;
    // SAFETY: the kernel ABI described in the module docs; rbx is saved in r12 and
    // restored, every register the kernel may change is declared.
    unsafe {
        asm!(
            "mov r12, rbx",
            "mov rbx, rsp",
            "syscall",
            "mov rsp, rbx",
            "mov rbx, r12",
            in("rdx") Syscall::Reply as isize,
            inout("rsi") info.0 => _,
            inout("r10") mr0,
            inout("r8") mr1,
            inout("r9") mr2,
            inout("r15") mr3,
            out("rdi") _,
            out("rcx") _,
            out("r11") _,
            out("r12") _,
        );
    }
    let _ = (mr0, mr1, mr2, mr3);
}

/// Replies to the last caller and waits for the next message (`seL4_ReplyRecv`).
pub fn reply_recv(src: crate::CPtr, info: MessageInfo, mrs: [Word; REGISTER_MRS]) -> Received {
    raw_send_recv(Syscall::ReplyRecv, src, info, mrs)
}

/// Gives up the rest of the time slice (`seL4_Yield`).
pub fn yield_now() {
    // SAFETY: the kernel ABI described in the module docs; no arguments, and every
    // register the kernel may change is declared.
    unsafe {
        asm!(
            "mov r12, rbx",
            "mov rbx, rsp",
            "syscall",
            "mov rsp, rbx",
            "mov rbx, r12",
            in("rdx") Syscall::Yield as isize,
            out("rsi") _,
            out("rdi") _,
            out("rcx") _,
            out("r11") _,
            out("r12") _,
        );
    }
}

/// Writes one byte to the kernel's debug console (`seL4_DebugPutChar`, debug kernels).
pub fn debug_put_char(c: u8) {
    let _ = raw_send_recv(Syscall::DebugPutChar, Word::from(c), MessageInfo(0), [0; 4]);
}

/// Writes a string to the kernel's debug console.
pub fn debug_print(s: &str) {
    s.bytes().for_each(debug_put_char);
}

/// A `core::fmt::Write` sink on the kernel's debug console.
#[derive(Debug, Default, Clone, Copy)]
pub struct DebugConsole;

impl core::fmt::Write for DebugConsole {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        debug_print(s);
        Ok(())
    }
}

fn raw_send(sys: Syscall, dest: crate::CPtr, info: MessageInfo, mrs: [Word; REGISTER_MRS]) {
    let [mr0, mr1, mr2, mr3] = mrs;
    // SAFETY: the kernel ABI described in the module docs; rbx is saved in r12 and
    // restored, every register the kernel may change is declared.
    unsafe {
        asm!(
            "mov r12, rbx",
            "mov rbx, rsp",
            "syscall",
            "mov rsp, rbx",
            "mov rbx, r12",
            in("rdx") sys as isize,
            inout("rdi") dest => _,
            inout("rsi") info.0 => _,
            inout("r10") mr0 => _,
            inout("r8") mr1 => _,
            inout("r9") mr2 => _,
            inout("r15") mr3 => _,
            out("rcx") _,
            out("r11") _,
            out("r12") _,
        );
    }
}

fn raw_recv(sys: Syscall, src: crate::CPtr) -> Received {
    let (badge, info, mr0, mr1, mr2, mr3);
    // SAFETY: the kernel ABI described in the module docs; the kernel writes the badge,
    // info and message registers into the declared outputs.
    unsafe {
        asm!(
            "mov r12, rbx",
            "mov rbx, rsp",
            "syscall",
            "mov rsp, rbx",
            "mov rbx, r12",
            in("rdx") sys as isize,
            inout("rdi") src => badge,
            out("rsi") info,
            out("r10") mr0,
            out("r8") mr1,
            out("r9") mr2,
            out("r15") mr3,
            out("rcx") _,
            out("r11") _,
            out("r12") _,
        );
    }
    Received {
        info: MessageInfo(info),
        badge,
        mrs: [mr0, mr1, mr2, mr3],
    }
}

fn raw_send_recv(
    sys: Syscall,
    dest: crate::CPtr,
    info: MessageInfo,
    mrs: [Word; REGISTER_MRS],
) -> Received {
    let [mut mr0, mut mr1, mut mr2, mut mr3] = mrs;
    let (badge, out_info);
    // SAFETY: the kernel ABI described in the module docs; rbx is saved in r12 and
    // restored, every register the kernel may change is declared.
    unsafe {
        asm!(
            "mov r12, rbx",
            "mov rbx, rsp",
            "syscall",
            "mov rsp, rbx",
            "mov rbx, r12",
            in("rdx") sys as isize,
            inout("rdi") dest => badge,
            inout("rsi") info.0 => out_info,
            inout("r10") mr0,
            inout("r8") mr1,
            inout("r9") mr2,
            inout("r15") mr3,
            out("rcx") _,
            out("r11") _,
            out("r12") _,
        );
    }
    Received {
        info: MessageInfo(out_info),
        badge,
        mrs: [mr0, mr1, mr2, mr3],
    }
}

// ---------------------------------------------------------------------------------------
// IPC buffer
// ---------------------------------------------------------------------------------------

static IPC_BUFFER: AtomicPtr<IpcBuffer> = AtomicPtr::new(core::ptr::null_mut());

/// Records where this thread's IPC buffer is mapped (for the root task:
/// `BootInfo::ipc_buffer`). Invocations with more than four message registers or with
/// extra caps need it.
///
/// # Safety
/// `buffer` must be the IPC buffer the kernel uses for the calling thread, mapped
/// readable and writable for as long as this program runs, and this crate must be used
/// by that one thread only.
pub unsafe fn set_ipc_buffer(buffer: *mut IpcBuffer) {
    IPC_BUFFER.store(buffer, Ordering::Relaxed);
}

/// Message register `i` of the last message received, for registers beyond the first
/// four (those come back in [`Received::mrs`]).
///
/// # Panics
/// If [`set_ipc_buffer`] was not called or `i` is not below [`MSG_MAX_LENGTH`].
pub fn ipc_buffer_mr(i: usize) -> Word {
    assert!(i < MSG_MAX_LENGTH);
    let buffer = IPC_BUFFER.load(Ordering::Relaxed);
    assert!(!buffer.is_null(), "set_ipc_buffer first");
    // SAFETY: set_ipc_buffer's contract: the buffer is mapped and only this thread uses
    // it; the index is in bounds (asserted above).
    unsafe { core::ptr::addr_of!((*buffer).msg[i]).read_volatile() }
}

/// A call with up to [`MSG_MAX_LENGTH`] message registers and [`MSG_MAX_EXTRA_CAPS`]
/// extra caps. Returns the reply, or the kernel's error.
///
/// # Panics
/// If it needs the IPC buffer and [`set_ipc_buffer`] was not called, or if `mrs` or
/// `caps` are longer than a message can be.
pub fn invoke(
    dest: crate::CPtr,
    label: InvocationLabel,
    mrs: &[Word],
    caps: &[Word],
) -> Result<Received> {
    assert!(mrs.len() <= MSG_MAX_LENGTH && caps.len() <= MSG_MAX_EXTRA_CAPS);
    let mut regs = [0; REGISTER_MRS];
    let n = mrs.len().min(REGISTER_MRS);
    regs[..n].copy_from_slice(&mrs[..n]);
    if mrs.len() > REGISTER_MRS || !caps.is_empty() {
        let buffer = IPC_BUFFER.load(Ordering::Relaxed);
        assert!(!buffer.is_null(), "set_ipc_buffer first");
        for (i, &mr) in mrs.iter().enumerate().skip(REGISTER_MRS) {
            // SAFETY: set_ipc_buffer's contract: the buffer is mapped and only this thread
            // uses it; the index is below MSG_MAX_LENGTH (asserted above).
            unsafe { core::ptr::addr_of_mut!((*buffer).msg[i]).write_volatile(mr) };
        }
        for (i, &cap) in caps.iter().enumerate() {
            // SAFETY: as above; the index is below MSG_MAX_EXTRA_CAPS.
            unsafe { core::ptr::addr_of_mut!((*buffer).caps_or_badges[i]).write_volatile(cap) };
        }
    }
    let info = MessageInfo::new(label as Word, 0, caps.len() as Word, mrs.len() as Word);
    let reply = call(dest, info, regs);
    match reply.info.error() {
        None => Ok(reply),
        Some(e) => Err(e),
    }
}

/// [`invoke`] for invocations whose reply carries nothing but success.
fn invoke_unit(
    dest: crate::CPtr,
    label: InvocationLabel,
    mrs: &[Word],
    caps: &[Word],
) -> Result<()> {
    invoke(dest, label, mrs, caps).map(|_| ())
}

impl Cap<cap_type::IoPort> {
    /// Writes a byte to an I/O port (`seL4_X86_IOPort_Out8`).
    pub fn out8(self, port: u16, value: u8) -> Result<()> {
        let mrs = [Word::from(port), Word::from(value)];
        invoke_unit(self.cptr(), InvocationLabel::X86IOPortOut8, &mrs, &[])
    }

    /// Writes a 32-bit value to an I/O port (`seL4_X86_IOPort_Out32`).
    pub fn out32(self, port: u16, value: u32) -> Result<()> {
        let mrs = [Word::from(port), Word::from(value)];
        invoke_unit(self.cptr(), InvocationLabel::X86IOPortOut32, &mrs, &[])
    }

    /// Reads a byte from an I/O port (`seL4_X86_IOPort_In8`).
    pub fn in8(self, port: u16) -> Result<u8> {
        invoke(
            self.cptr(),
            InvocationLabel::X86IOPortIn8,
            &[Word::from(port)],
            &[],
        )
        .map(|r| r.mrs[0] as u8)
    }

    /// Reads a 32-bit value from an I/O port (`seL4_X86_IOPort_In32`).
    pub fn in32(self, port: u16) -> Result<u32> {
        invoke(
            self.cptr(),
            InvocationLabel::X86IOPortIn32,
            &[Word::from(port)],
            &[],
        )
        .map(|r| r.mrs[0] as u32)
    }
}

impl Cap<cap_type::Untyped> {
    /// Creates `count` objects of `object_type` (`seL4_Untyped_Retype`) in consecutive
    /// slots starting at `offset` of the CNode found at `index`/`depth` from `root`.
    /// Needs the IPC buffer ([`set_ipc_buffer`]).
    #[allow(clippy::too_many_arguments)] // the kernel invocation's own parameter list
    pub fn retype(
        self,
        object_type: ObjectType,
        size_bits: Word,
        root: Cap<cap_type::CNode>,
        index: Word,
        depth: Word,
        offset: Word,
        count: Word,
    ) -> Result<()> {
        let mrs = [object_type as Word, size_bits, index, depth, offset, count];
        invoke_unit(
            self.cptr(),
            InvocationLabel::UntypedRetype,
            &mrs,
            &[root.cptr()],
        )
    }
}

impl Cap<cap_type::CNode> {
    /// Copies the capability at `src` (in `src_root` at `src_depth`) to `dest` in this
    /// CNode, with `rights` (`seL4_CNode_Copy`). Needs the IPC buffer.
    #[allow(clippy::too_many_arguments)] // the kernel invocation's own parameter list
    pub fn copy(
        self,
        dest: Word,
        dest_depth: Word,
        src_root: Cap<cap_type::CNode>,
        src: Word,
        src_depth: Word,
        rights: CapRights,
    ) -> Result<()> {
        let mrs = [dest, dest_depth, src, src_depth, rights.0];
        invoke_unit(
            self.cptr(),
            InvocationLabel::CNodeCopy,
            &mrs,
            &[src_root.cptr()],
        )
    }

    /// Copies the capability at `src` (in `src_root` at `src_depth`) to `dest` in this
    /// CNode with `rights` and cap data `data` — a badge ([`crate::cap_data::badge`]) or a
    /// guard ([`crate::cap_data::guard`]) (`seL4_CNode_Mint`). Needs the IPC buffer.
    #[allow(clippy::too_many_arguments)] // the kernel invocation's own parameter list
    pub fn mint(
        self,
        dest: Word,
        dest_depth: Word,
        src_root: Cap<cap_type::CNode>,
        src: Word,
        src_depth: Word,
        rights: CapRights,
        data: Word,
    ) -> Result<()> {
        let mrs = [dest, dest_depth, src, src_depth, rights.0, data];
        invoke_unit(
            self.cptr(),
            InvocationLabel::CNodeMint,
            &mrs,
            &[src_root.cptr()],
        )
    }
}

impl Cap<cap_type::CNode> {
    /// Deletes the capability at `index`/`depth` of this CNode (`seL4_CNode_Delete`).
    pub fn delete(self, index: Word, depth: Word) -> Result<()> {
        invoke_unit(
            self.cptr(),
            InvocationLabel::CNodeDelete,
            &[index, depth],
            &[],
        )
    }
}

impl Cap<cap_type::Tcb> {
    /// Sets the thread's fault endpoint (a CPtr in its own CSpace), priority and maximum
    /// controlled priority, CSpace root (with its guard as `cspace_data`), VSpace and IPC
    /// buffer (`seL4_TCB_Configure`). Needs the IPC buffer.
    #[allow(clippy::too_many_arguments)] // the kernel invocation's own parameter list
    pub fn configure(
        self,
        fault_ep: Word,
        priority: u8,
        mcp: u8,
        cspace: Cap<cap_type::CNode>,
        cspace_data: Word,
        vspace: Cap<cap_type::Pml4>,
        ipc_buffer: Word,
        ipc_buffer_frame: Cap<cap_type::Page>,
    ) -> Result<()> {
        use crate::bitfields::PrioProps as P;
        let props = P::MCP.set(P::PRIO.set(0, Word::from(priority)), Word::from(mcp));
        let mrs = [fault_ep, props, cspace_data, 0, ipc_buffer];
        let caps = [cspace.cptr(), vspace.cptr(), ipc_buffer_frame.cptr()];
        invoke_unit(self.cptr(), InvocationLabel::TCBConfigure, &mrs, &caps)
    }

    /// Writes the thread's registers and optionally resumes it
    /// (`seL4_TCB_WriteRegisters`). Needs the IPC buffer.
    pub fn write_registers(self, resume: bool, regs: &crate::UserContext) -> Result<()> {
        let words = regs.words();
        let mut mrs = [0; 2 + crate::UserContext::WORDS];
        // resume_target (8 bits) and arch_flags (8 bits) share the first word.
        mrs[0] = Word::from(resume);
        mrs[1] = crate::UserContext::WORDS as Word;
        mrs[2..].copy_from_slice(&words);
        invoke_unit(self.cptr(), InvocationLabel::TCBWriteRegisters, &mrs, &[])
    }

    /// Sets the thread's priority (`seL4_TCB_SetPriority`).
    pub fn set_priority(self, priority: u8) -> Result<()> {
        invoke_unit(
            self.cptr(),
            InvocationLabel::TCBSetPriority,
            &[Word::from(priority)],
            &[],
        )
    }

    /// Makes the thread runnable (`seL4_TCB_Resume`).
    pub fn resume(self) -> Result<()> {
        invoke_unit(self.cptr(), InvocationLabel::TCBResume, &[], &[])
    }

    /// Stops the thread (`seL4_TCB_Suspend`).
    pub fn suspend(self) -> Result<()> {
        invoke_unit(self.cptr(), InvocationLabel::TCBSuspend, &[], &[])
    }

    /// Binds a notification to the thread, so that a Recv on an endpoint also returns when
    /// the notification is signalled (`seL4_TCB_BindNotification`). Needs the IPC buffer.
    pub fn bind_notification(self, ntfn: Cap<cap_type::Notification>) -> Result<()> {
        invoke_unit(
            self.cptr(),
            InvocationLabel::TCBBindNotification,
            &[],
            &[ntfn.cptr()],
        )
    }
}

impl Cap<cap_type::Page> {
    /// Maps the frame at `vaddr` of `vspace` with `rights` and `attr` (a
    /// [`crate::vm_attributes`] value) (`seL4_X86_Page_Map`). Needs the IPC buffer.
    pub fn map(
        self,
        vspace: Cap<cap_type::Pml4>,
        vaddr: Word,
        rights: CapRights,
        attr: Word,
    ) -> Result<()> {
        invoke_unit(
            self.cptr(),
            InvocationLabel::X86PageMap,
            &[vaddr, rights.0, attr],
            &[vspace.cptr()],
        )
    }

    /// Unmaps the frame (`seL4_X86_Page_Unmap`).
    pub fn unmap(self) -> Result<()> {
        invoke_unit(self.cptr(), InvocationLabel::X86PageUnmap, &[], &[])
    }

    /// The frame's physical address (`seL4_X86_Page_GetAddress`).
    pub fn address(self) -> Result<Word> {
        invoke(self.cptr(), InvocationLabel::X86PageGetAddress, &[], &[]).map(|r| r.mrs[0])
    }
}

/// Paging structures below the PML4 all map the same way: at an address of a VSpace.
macro_rules! paging_map {
    ($kind:ident, $label:ident, $name:literal) => {
        impl Cap<cap_type::$kind> {
            #[doc = concat!("Installs the structure in `vspace` for the range around `vaddr` (`", $name, "`). Needs the IPC buffer.")]
            pub fn map(self, vspace: Cap<cap_type::Pml4>, vaddr: Word, attr: Word) -> Result<()> {
                invoke_unit(
                    self.cptr(),
                    InvocationLabel::$label,
                    &[vaddr, attr],
                    &[vspace.cptr()],
                )
            }
        }
    };
}

paging_map!(Pdpt, X86PDPTMap, "seL4_X86_PDPT_Map");
paging_map!(
    PageDirectory,
    X86PageDirectoryMap,
    "seL4_X86_PageDirectory_Map"
);
paging_map!(PageTable, X86PageTableMap, "seL4_X86_PageTable_Map");

impl Cap<cap_type::AsidPool> {
    /// Gives `vspace` an address-space ID from this pool (`seL4_X86_ASIDPool_Assign`).
    /// Needs the IPC buffer.
    pub fn assign(self, vspace: Cap<cap_type::Pml4>) -> Result<()> {
        invoke_unit(
            self.cptr(),
            InvocationLabel::X86ASIDPoolAssign,
            &[],
            &[vspace.cptr()],
        )
    }
}

impl Cap<cap_type::IrqControl> {
    /// Creates, at `index`/`depth` of `root`, the handler capability of an MSI that
    /// device `bus:dev.func` raises with the kernel's IRQ number `irq`
    /// (`seL4_IRQControl_GetMSI`; `handle` is the caller's own tag). Needs the IPC buffer.
    #[allow(clippy::too_many_arguments)] // the kernel invocation's own parameter list
    pub fn get_msi(
        self,
        root: Cap<cap_type::CNode>,
        index: Word,
        depth: Word,
        bus: Word,
        dev: Word,
        func: Word,
        handle: Word,
        irq: Word,
    ) -> Result<()> {
        invoke_unit(
            self.cptr(),
            InvocationLabel::X86IRQIssueIRQHandlerMSI,
            &[index, depth, bus, dev, func, handle, irq],
            &[root.cptr()],
        )
    }
}

impl Cap<cap_type::IrqHandler> {
    /// Delivers the interrupt to `ntfn` (`seL4_IRQHandler_SetNotification`). Needs the
    /// IPC buffer.
    pub fn set_notification(self, ntfn: Cap<cap_type::Notification>) -> Result<()> {
        invoke_unit(
            self.cptr(),
            InvocationLabel::IRQSetIRQHandler,
            &[],
            &[ntfn.cptr()],
        )
    }

    /// Re-enables the interrupt after it was handled (`seL4_IRQHandler_Ack`).
    pub fn ack(self) -> Result<()> {
        invoke_unit(self.cptr(), InvocationLabel::IRQAckIRQ, &[], &[])
    }
}
