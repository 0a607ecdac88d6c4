//! A deterministic simulation of a capability microkernel, for host tests.
//!
//! # Model
//! - **Processes** are closures, each run as a stackful coroutine with its own stack
//!   ([`SimConfig::stack_bytes`]) on the thread that runs the simulation ([`Sim::run`]).
//!   Every kernel entry (every system call) is a scheduling point: the scheduler picks who
//!   runs next with a seeded [`SplitMix64`]; if it picks another process, the caller
//!   resumes the chosen one's coroutine (or suspends to whoever resumed it, when the
//!   chosen one is up its chain of resumers or nothing can run). Nothing runs in
//!   parallel and the OS never schedules anything, so a run is reproduced by its seed
//!   ([`SimConfig::seed`]).
//! - **Capability spaces**: a process names objects only through slots ([`CPtr`]) of its
//!   own space, holding capabilities with a badge and [`Rights`]: endpoints,
//!   notifications, frames of simulated RAM ([`sim_physmem::PhysMem`]), devices, IOMMU
//!   register frames and interrupts, untyped memory (the root task's) and processes
//!   (supervision). A badge is set once, when an unbadged capability is minted, so a
//!   holder cannot forge another.
//! - **System calls** ([`Ctx`]): `call`, `recv`, `reply`, `reply_recv`, `send`, `nb_send`
//!   on endpoints, with capabilities transferred along (seL4's extra caps, needing the
//!   grant right); `signal`, `wait`, `poll` and binding on notifications; frame
//!   read/write only through frame capabilities; capability copy, mint and delete;
//!   device DMA jobs; and, for the root task, object and process creation. As in seL4,
//!   `call` and `reply_recv` without capabilities take a fastpath when the other side
//!   already waits and nothing is queued or delayed; it leaves the kernel exactly as
//!   the general path would (same states, same trace, same scheduling decisions).
//!   A receive or call made with a buffer for the answer (`recv_into`, `reply_recv_into`,
//!   `call_into`) registers that buffer with the kernel for the duration of the call, and
//!   the message is copied straight into it: one copy from sender to receiver, as
//!   between seL4 IPC buffers, rather than into a kernel-side buffer and out again.
//!   The functions from a call or receive down to the coroutine switch are inlined into
//!   one another (`#[inline(always)]`): after a switch, each return into a caller's frame
//!   runs against a return-address predictor filled by the other process's calls and
//!   mispredicts, so a request round trip costs about one such return per frame between
//!   the switch and the program.
//! - **Devices** do DMA on their own, one page per step, through their IOMMU
//!   ([`machine::IommuUnit`]), whatever happens to the process that programmed them, and
//!   send page requests (PRI) to IOMMUs that take them. The kernel notes every DMA that
//!   reaches memory and reports DMA into memory no capability refers to any more.
//! - **Death**: a process ends by returning, panicking (a fault) or being killed; its
//!   capabilities are deleted (a frame's memory returns to the pool when its last
//!   capability goes, so a server holding a copy keeps it alive) and the kernel sends a
//!   one-byte [`DeathCause`] message to its fault endpoint, badged as its supervisor set
//!   it up. A killed process unwinds its stack (its destructors run, without kernel
//!   service) when it is next resumed; one killed before it ever ran just drops its
//!   program.
//! - **Fault injection** ([`Injection`]): kill a process at its Nth kernel entry or at a
//!   global step, deliver endpoint messages late by up to k steps, and reorder which
//!   waiting sender an endpoint delivers first (only between different senders, as seL4
//!   could by scheduling them differently).
//! - **Deadlock detection**: when nothing can run, the run ends; non-daemon processes
//!   still waiting are reported with what they wait for ([`RunReport::deadlock`]).
//!
//! [`endpoint`] implements the [`platform`] seam over these capabilities, so the servers'
//! unmodified request loops run as simulated processes.
//!
//! Simplifications, each chosen to keep the model small where tests do not depend on it:
//! a frame's memory returns to the pool when its last capability is deleted (seL4 would
//! need the untyped to be revoked); a server that dies while owing a reply leaves its
//! caller blocked, as seL4 does; caps arrive in fresh slots of the receiver's space
//! (no receive window).

mod bytes;
pub mod cap;
pub mod endpoint;
mod kernel;
pub mod machine;
pub mod rng;

use std::any::Any;
use std::cell::{Cell, RefCell, RefMut};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};

pub use cap::{CPtr, CapInfo, ObjKind, Pid, Rights, SysError};
pub use kernel::{
    DeathCause, Entry, Event, Exit, Injection, KillPoint, Note, Received, ReceivedInto, RecvKind,
    Reply, Syscall, Wait,
};
pub use rng::SplitMix64;
pub use sim_physmem::{PhysMem, SimDma, FRAME};

use bytes::Landing;
use cap::Obj;
use kernel::{Create, Inbox, Kernel, Next, PState};
use machine::{DeviceDesc, DmaJob, IommuUnit, JobStatus, RegisterIo};

/// How to build a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Every scheduling, delay and reordering decision follows from it.
    pub seed: u64,
    /// Physical address of simulated RAM.
    pub ram_base: u64,
    /// Size of simulated RAM.
    pub ram_bytes: usize,
    pub inject: Injection,
    /// Keep the full trace (its hash is always kept).
    pub trace: bool,
    /// Size of each process's stack, with a guard page below it. The memory is
    /// reserved, not committed: a process only costs the pages its deepest call touched.
    /// A process that overflows its stack hits the guard page, which ends the whole host
    /// process with SIGSEGV: raise this for programs with deep recursion or large
    /// buffers on the stack.
    pub stack_bytes: usize,
}

/// The default [`SimConfig::stack_bytes`]: 256 KiB. The deepest process of the
/// capability suite (iommu-server) touches 28 KiB of its stack in a debug build and
/// 10 KiB in a release build, and printing a panic's backtrace from a process takes
/// about 24 KiB; the rest is headroom for test programs.
pub const DEFAULT_STACK_BYTES: usize = 256 << 10;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            ram_base: 0x4000_0000,
            ram_bytes: 64 << 20,
            inject: Injection::default(),
            trace: true,
            stack_bytes: DEFAULT_STACK_BYTES,
        }
    }
}

/// The marker a killed process unwinds with.
struct Killed;

/// A process's coroutine. Resumed by the run loop (or by a process acting for it, see
/// [`Shared::hand_over`]), it suspends at a scheduling point that picked another process,
/// and returns when its program ended, each time handing back the scheduler's choice of
/// who runs next. It is resumed with whether a process resumes it (see
/// [`Running::nested`]).
type Process = Coroutine<bool, Next, Next, DefaultStack>;

/// The yielder of a process's coroutine: the way back to whoever resumed it.
type ProcYielder = Yielder<bool, Next>;

/// How a call's kernel entry returns: with the kernel, the reply's capabilities and, if
/// the reply went to the caller's registered buffer, its length.
type Answered<'a> = (RefMut<'a, Kernel>, Vec<CPtr>, Option<usize>);

/// How a blocking system call's kernel entry returns: with the kernel and what woke the
/// process (see [`Ctx::woken`]).
type Woken<'a> = (RefMut<'a, Kernel>, (Inbox, Option<usize>, Vec<CPtr>));

/// The coroutine executing now.
#[derive(Clone, Copy)]
struct Running {
    pid: Pid,
    yielder: *const ProcYielder,
    /// Resumed by another process (which waits in [`Shared::hand_over`] until it is
    /// picked again) rather than by the run loop.
    nested: bool,
}

struct Shared {
    kernel: RefCell<Kernel>,
    /// The coroutine of each started process that has not ended, by pid; taken out
    /// while it runs.
    coroutines: RefCell<Vec<Option<Box<Process>>>>,
    /// The running process and its coroutine's yielder. A coroutine sets it when it
    /// starts and whenever it is resumed, on its own stack; whoever resumed it resets it
    /// as soon as the coroutine stops. So it names the coroutine executing now, if any.
    running: Cell<Option<Running>>,
    stack_bytes: usize,
    /// Coroutine switches into a process so far (see [`RunReport::switches`]).
    switches: Cell<u64>,
}

/// Restores [`Shared::running`] to what it was before a coroutine was resumed, when the
/// resumer gets control back (also when the coroutine panicked outside its program, a
/// bug of the simulation).
struct Stopped<'a> {
    running: &'a Cell<Option<Running>>,
    before: Option<Running>,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.running.set(self.before);
    }
}

impl Shared {
    fn kernel(&self) -> RefMut<'_, Kernel> {
        self.kernel.borrow_mut()
    }

    /// The run loop: resumes the processes the scheduler picks, starting with `next`,
    /// until it finds nothing to run.
    fn drive(&self, mut next: Next) {
        assert!(
            self.running.get().is_none(),
            "the simulation is run from inside one of its processes"
        );
        while let Next::Run(p) = next {
            next = self.resume(p, false);
        }
    }

    /// Resumes process `p`'s coroutine until it stops; returns the scheduler's choice it
    /// stopped with. `nested`: the caller is a process's coroutine, not the run loop.
    #[inline(always)]
    fn resume(&self, p: Pid, nested: bool) -> Next {
        let mut co = self.coroutines.borrow_mut()[p as usize]
            .take()
            .expect("a process the scheduler picks has a coroutine");
        let result = {
            let _stopped = Stopped {
                running: &self.running,
                before: self.running.get(),
            };
            self.switches.set(self.switches.get() + 1);
            co.resume(nested)
        };
        match result {
            CoroutineResult::Yield(n) => {
                let empty = self.coroutines.borrow_mut()[p as usize].replace(co);
                debug_assert!(empty.is_none(), "a coroutine has one place");
                // Nothing to drop: the place was emptied above.
                core::mem::forget(empty);
                n
            }
            CoroutineResult::Return(n) => n,
        }
    }

    /// Sets [`Shared::running`] when the coroutine of `pid` gets control, resumed by a
    /// process (`nested`) or the run loop.
    #[inline(always)]
    fn resumed(&self, pid: Pid, yielder: *const ProcYielder, nested: bool) {
        self.running.set(Some(Running {
            pid,
            yielder,
            nested,
        }));
    }

    /// Hands control on from `me` to the scheduler's choice `next` and returns when the
    /// scheduler picks `me` again. Must be called by `me`, with the kernel released.
    ///
    /// The running process runs the scheduler's choices itself, each as a coroutine nested
    /// in its own, until it is picked again. A choice it cannot resume (a process up its
    /// chain of resumers, which waits in this loop for its own turn) and "nothing can run"
    /// (which only the run loop handles) go back to whoever resumed it. Every process is
    /// resumed exactly when the scheduler picks it, in the order the run loop would; who
    /// resumes it changes nothing else. A call to a waiting server and its reply thus take
    /// one coroutine switch each, as a kernel that switches straight to the receiver
    /// would: the caller resumes the server, which goes back to its resumer with the reply.
    #[inline(always)]
    fn hand_over(&self, me: Pid, mut next: Next) {
        let running = self
            .running
            .get()
            .expect("a process hands over only while it runs");
        debug_assert_eq!(running.pid, me, "a process hands over only itself");
        loop {
            match next {
                Next::Run(p) if p == me => return,
                // A process the run loop resumed has no process up its chain, so it
                // resumes every choice.
                Next::Run(p) if !running.nested || self.resumable(p) => {
                    next = self.resume(p, true);
                }
                _ => {
                    self.suspend(running, next);
                    return;
                }
            }
        }
    }

    /// Whether `p`'s coroutine is suspended (it is taken out while it runs, which for a
    /// process the scheduler picks means it is up the running process's chain of
    /// resumers).
    #[inline(always)]
    fn resumable(&self, p: Pid) -> bool {
        self.coroutines
            .borrow()
            .get(p as usize)
            .is_some_and(Option::is_some)
    }

    /// Suspends the running coroutine with `next` for whoever resumed it; returns when it
    /// is resumed again.
    #[inline(always)]
    fn suspend(&self, running: Running, next: Next) {
        // SAFETY: `running` holds the yielder of the coroutine executing now (the
        // coroutine sets it on its own stack when it gets control, its resumer resets it
        // when it stops), so the yielder is alive and belongs to the coroutine whose stack
        // we are on, which is what `Yielder::suspend` requires.
        let nested = unsafe { (*running.yielder).suspend(next) };
        self.resumed(running.pid, running.yielder, nested);
    }

    /// Passes control on after a process ended: the scheduler's next choice.
    fn pass_on(&self, mut k: RefMut<'_, Kernel>) -> Next {
        if k.shutting_down {
            Next::Idle
        } else {
            k.schedule()
        }
    }

    /// The scheduling point at the end of every system call of `me`: if the scheduler
    /// picks another process (or nothing), `me` suspends until it is picked again.
    /// Unwinds if `me` was killed meanwhile.
    #[inline(always)]
    fn switch<'a>(&'a self, me: Pid, mut k: RefMut<'a, Kernel>) -> RefMut<'a, Kernel> {
        match k.schedule() {
            Next::Run(p) if p == me => {}
            next => {
                drop(k);
                self.hand_over(me, next);
                k = self.kernel();
            }
        }
        if k.is_dying(me) {
            drop(k);
            resume_unwind(Box::new(Killed));
        }
        k
    }

    /// Gives the started process `pid` its coroutine (it runs when the scheduler picks
    /// it).
    fn start_process(self: &Rc<Self>, k: &mut Kernel, pid: Pid) -> Result<(), SysError> {
        let stack = DefaultStack::new(self.stack_bytes).map_err(|_| SysError::NotEnoughMemory)?;
        let entry = k.procs[pid as usize]
            .entry
            .take()
            .expect("a created process has its program");
        let shared = self.clone();
        let co = Coroutine::with_stack(stack, move |yielder: &ProcYielder, nested| {
            shared.resumed(pid, yielder, nested);
            shared.body(pid, entry)
        });
        let mut cos = self.coroutines.borrow_mut();
        if cos.len() <= pid as usize {
            cos.resize_with(pid as usize + 1, || None);
        }
        cos[pid as usize] = Some(Box::new(co));
        k.procs[pid as usize].has_coroutine = true;
        Ok(())
    }

    /// A process's coroutine: run the program, report how it ended, and say who runs
    /// next.
    fn body(self: Rc<Self>, pid: Pid, entry: Entry) -> Next {
        let dying = self.kernel().is_dying(pid);
        let outcome: Result<(), Box<dyn Any + Send>> = if dying {
            drop(entry);
            Err(Box::new(Killed))
        } else {
            let ctx = Ctx {
                shared: self.clone(),
                pid,
            };
            catch_unwind(AssertUnwindSafe(move || entry(ctx)))
        };
        let mut k = self.kernel();
        match outcome {
            Ok(()) => k.kill(pid, Exit::Returned),
            Err(p) if p.is::<Killed>() => {}
            Err(p) => k.kill(pid, Exit::Panicked(panic_message(p.as_ref()))),
        }
        k.reaped(pid);
        self.pass_on(k)
    }
}

/// The message of a panic payload.
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// A kernel object created from outside the simulation (by the test that builds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object(Obj);

/// A capability given to a process created from outside the simulation.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The name the process looks it up by ([`Ctx::lookup`]).
    pub name: &'a str,
    pub object: Object,
    /// 0: unbadged.
    pub badge: u64,
    pub rights: Rights,
}

/// What a run phase did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    /// Steps so far (kernel entries and device steps).
    pub steps: u64,
    /// Hash of the whole trace so far.
    pub trace_hash: u64,
    /// The trace so far (empty unless [`SimConfig::trace`]).
    pub trace: Vec<Event>,
    pub notes: Vec<Note>,
    /// Processes that ended, and how.
    pub exits: Vec<(String, Exit)>,
    /// Non-daemon processes still waiting when nothing could run, with what they wait
    /// for: a deadlock.
    pub deadlock: Vec<(String, String)>,
    /// Daemons (servers) still waiting, with what they wait for.
    pub waiting: Vec<(String, String)>,
    /// Kernel entries each process made so far.
    pub entries: Vec<(String, u64)>,
    /// Coroutine resumes so far, by the run loop or by a process: the simulation's
    /// context switches into a process (each has one back out). A call to a waiting
    /// server with its reply takes one.
    pub switches: u64,
}

impl RunReport {
    /// What is wrong with the run whatever the test: deadlocks, processes that faulted,
    /// DMA into freed memory.
    pub fn problems(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .deadlock
            .iter()
            .map(|(p, w)| format!("deadlock: `{p}` waits for {w}"))
            .collect();
        for (name, exit) in &self.exits {
            if let Exit::Panicked(msg) = exit {
                v.push(format!("`{name}` faulted: {msg}"));
            }
        }
        for n in &self.notes {
            if let Note::DmaToFreeMemory {
                step,
                device,
                paddr,
                len,
            } = n
            {
                v.push(format!(
                    "step {step}: device {device} DMA reached freed memory {paddr:#x}+{len:#x}"
                ));
            }
        }
        v
    }

    /// How process `name` ended, if it did.
    pub fn exit_of(&self, name: &str) -> Option<&Exit> {
        self.exits.iter().find(|(n, _)| n == name).map(|(_, e)| e)
    }
}

/// A simulation: the machine, the kernel and its processes.
pub struct Sim {
    shared: Rc<Shared>,
    seed: u64,
    down: bool,
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let mem = PhysMem::new(config.ram_base, config.ram_bytes);
        Sim {
            shared: Rc::new(Shared {
                kernel: RefCell::new(Kernel::new(config.seed, mem, config.inject, config.trace)),
                coroutines: RefCell::new(Vec::new()),
                running: Cell::new(None),
                stack_bytes: config.stack_bytes,
                switches: Cell::new(0),
            }),
            seed: config.seed,
            down: false,
        }
    }

    /// Simulated RAM (for tests to judge what DMA did).
    pub fn phys(&self) -> Arc<PhysMem> {
        self.shared.kernel().mem.clone()
    }

    /// Adds an IOMMU; returns its index.
    pub fn add_iommu(&self, name: &str, unit: Arc<Mutex<dyn IommuUnit>>) -> u32 {
        self.shared.kernel().add_iommu(name, unit)
    }

    /// Adds a device behind IOMMU `iommu` with StreamID/requester ID `stream` and a
    /// buffer of `buffer_bytes`; returns its index.
    pub fn add_device(&self, name: &str, iommu: u32, stream: u32, buffer_bytes: u64) -> u32 {
        self.shared
            .kernel()
            .add_device(name, iommu, stream, buffer_bytes)
    }

    pub fn endpoint(&self, name: &str) -> Object {
        Object(self.shared.kernel().new_endpoint(name))
    }

    pub fn notification(&self, name: &str) -> Object {
        Object(self.shared.kernel().new_notification(name))
    }

    /// A frame of `pages` contiguous pages (freed when the last capability given to a
    /// process goes).
    pub fn frame(&self, pages: u64) -> Result<Object, SysError> {
        self.shared.kernel().new_frame(pages).map(Object)
    }

    /// The device `d` (for [`Grant`]).
    pub fn device(&self, d: u32) -> Object {
        Object(Obj::Device(d))
    }

    /// The register frame of IOMMU `u`.
    pub fn iommu_mmio(&self, u: u32) -> Object {
        Object(Obj::Mmio(u))
    }

    /// The interrupt of IOMMU `u`.
    pub fn iommu_irq(&self, u: u32) -> Object {
        Object(Obj::Irq(u))
    }

    /// Creates and starts a process holding exactly `caps`.
    pub fn spawn(&self, name: &str, daemon: bool, caps: &[Grant<'_>], entry: Entry) -> Pid {
        let mut k = self.shared.kernel();
        let pid = k.new_process(name, daemon, entry);
        for g in caps {
            k.install_outside(pid, g.object.0, g.badge, g.rights, g.name);
        }
        k.set_state(pid, PState::Ready);
        self.shared
            .start_process(&mut k, pid)
            .expect("reserve a process stack");
        pid
    }

    /// Creates and starts the root task: it holds untyped memory (`untyped`), every
    /// IOMMU's register frame (`mmio:<name>`) and interrupt (`irq:<name>`) and every
    /// device (`device:<name>`), and builds the rest of the system with them.
    pub fn spawn_root(&self, name: &str, entry: Entry) -> Pid {
        let mut k = self.shared.kernel();
        let pid = k.new_process(name, true, entry);
        k.install_new(pid, Obj::Untyped, Some("untyped"));
        for u in 0..k.iommu_count() {
            let n = k.iommu_name(u).to_string();
            k.install_new(pid, Obj::Mmio(u), Some(&format!("mmio:{n}")));
            k.install_new(pid, Obj::Irq(u), Some(&format!("irq:{n}")));
        }
        for d in 0..k.device_count() {
            let n = k.device_name(d).to_string();
            k.install_new(pid, Obj::Device(d), Some(&format!("device:{n}")));
        }
        k.set_state(pid, PState::Ready);
        self.shared
            .start_process(&mut k, pid)
            .expect("reserve a process stack");
        pid
    }

    /// Runs until nothing can run (every process ended or waits); returns what happened
    /// so far. Can be called again after spawning more processes.
    pub fn run(&self) -> RunReport {
        assert!(!self.down, "the simulation was shut down");
        let next = self.shared.kernel().schedule();
        self.shared.drive(next);
        self.report()
    }

    fn report(&self) -> RunReport {
        let k = self.shared.kernel();
        RunReport {
            seed: self.seed,
            steps: k.step,
            trace_hash: k.trace_hash,
            trace: k.trace.clone(),
            notes: k.notes.clone(),
            exits: k.exits(),
            deadlock: k.blocked(false),
            waiting: k
                .blocked(true)
                .into_iter()
                .filter(|(n, _)| k.procs.iter().any(|p| &p.name == n && p.daemon))
                .collect(),
            entries: k.entries(),
            switches: self.shared.switches.get(),
        }
    }

    /// What process `name` holds, seen from outside (for tests): each capability with
    /// the name it was given under, if any.
    pub fn caps_of(&self, name: &str) -> Option<Vec<(Option<String>, CapInfo)>> {
        self.shared.kernel().caps_of(name)
    }

    /// Bytes of RAM held by live frames.
    pub fn live_frame_bytes(&self) -> u64 {
        self.shared.kernel().live_frame_bytes()
    }

    /// Ends every process still waiting: each is resumed, one at a time, to unwind its
    /// stack. Also done on drop.
    pub fn shutdown(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        let pids: Vec<Pid> = {
            let mut k = self.shared.kernel();
            k.shutting_down = true;
            (0..k.procs.len() as Pid)
                .filter(|&p| k.procs[p as usize].has_coroutine)
                .collect()
        };
        for p in pids {
            let mut k = self.shared.kernel();
            if !k.procs[p as usize].has_coroutine {
                continue;
            }
            k.shut_down(p);
            drop(k);
            self.shared.drive(Next::Run(p));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Unwinding the processes now would start unwinding inside this one: leave
            // their coroutines (and stacks) be.
            let coroutines = std::mem::take(&mut *self.shared.coroutines.borrow_mut());
            std::mem::forget(coroutines);
            return;
        }
        self.shutdown();
    }
}

/// A process's view of the kernel: its system calls. Every call except
/// [`Ctx::lookup`], [`Ctx::names`], [`Ctx::now`] and accesses through a mapping is a
/// kernel entry and a scheduling point.
///
/// A `Ctx` belongs to its process's coroutine: it is neither `Send` nor `Sync`, and a
/// kernel entry through it from anywhere else panics. Processes are scheduled only at
/// kernel entries, so a program must enter the kernel now and then (a loop without
/// system calls keeps every other process from running, forever).
#[derive(Clone)]
pub struct Ctx {
    shared: Rc<Shared>,
    pid: Pid,
}

impl core::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Ctx({})", self.pid)
    }
}

impl Ctx {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The slot of the capability given under `name` (like reading boot information; not
    /// a kernel entry).
    pub fn lookup(&self, name: &str) -> Option<CPtr> {
        self.shared.kernel().procs[self.pid as usize]
            .names
            .get(name)
            .copied()
    }

    /// The current step (the number of kernel entries and device steps so far): the
    /// simulation's clock. Reading it is not a kernel entry.
    pub fn now(&self) -> u64 {
        self.shared.kernel().step
    }

    /// Every named capability.
    pub fn names(&self) -> Vec<(String, CPtr)> {
        self.shared.kernel().procs[self.pid as usize]
            .names
            .iter()
            .map(|(n, &s)| (n.clone(), s))
            .collect()
    }

    /// Enters the kernel. A process that is unwinding (its destructors run after it was
    /// killed) gets no more kernel service.
    #[inline(always)]
    fn enter(&self, call: Syscall) -> Result<RefMut<'_, Kernel>, SysError> {
        assert!(
            self.shared.running.get().is_some_and(|r| r.pid == self.pid),
            "the Ctx of process {} used outside it",
            self.pid
        );
        if std::thread::panicking() {
            return Err(SysError::IllegalOperation);
        }
        let mut k = self.shared.kernel();
        if k.enter(self.pid, call)? {
            drop(k);
            resume_unwind(Box::new(Killed));
        }
        Ok(k)
    }

    #[inline(always)]
    fn leave<'a>(&'a self, k: RefMut<'a, Kernel>) -> RefMut<'a, Kernel> {
        self.shared.switch(self.pid, k)
    }

    /// A system call that does not block.
    fn simple<R>(
        &self,
        call: Syscall,
        op: impl FnOnce(&mut Kernel, Pid) -> Result<R, SysError>,
    ) -> Result<R, SysError> {
        let mut k = self.enter(call)?;
        let r = op(&mut k, self.pid);
        drop(self.leave(k));
        r
    }

    /// What woke this process from its blocking system call, with the length of the
    /// message in its registered buffer (if one was) and the capabilities that came.
    #[inline(always)]
    fn woken(&self, k: &mut Kernel) -> (Inbox, Option<usize>, Vec<CPtr>) {
        let (inbox, landed, caps) = k.take_woken(self.pid);
        let inbox = inbox.expect("a process woken from a blocking call has its result");
        (inbox, landed, caps)
    }

    /// Copies the message buffer into `out` (as much as fits); returns the message's
    /// length.
    fn copy_msg(&self, k: &Kernel, out: &mut [u8]) -> usize {
        let msg = k.procs[self.pid as usize].msg.as_slice();
        let n = msg.len().min(out.len());
        bytes::copy(&mut out[..n], &msg[..n]);
        msg.len()
    }

    // ----- IPC -----

    /// Sends `msg` (and `caps`, which needs the grant right) and waits for the reply.
    pub fn call(&self, ep: CPtr, msg: &[u8], caps: &[CPtr]) -> Result<Reply, SysError> {
        let (k, caps, _) = self.call_entry(ep, msg, caps, None)?;
        Ok(Reply {
            bytes: k.procs[self.pid as usize].msg.as_slice().to_vec(),
            caps,
        })
    }

    /// The kernel entry of a call; returns with the reply's capabilities and, if the
    /// reply's bytes went to `landing`, their length (else they are in the message
    /// buffer).
    #[inline(always)]
    fn call_entry(
        &self,
        ep: CPtr,
        msg: &[u8],
        caps: &[CPtr],
        landing: Option<Landing>,
    ) -> Result<Answered<'_>, SysError> {
        let mut k = self.enter(Syscall::Call)?;
        let r = if caps.is_empty() && k.call_fast(self.pid, ep, msg, landing) {
            Ok(true)
        } else {
            if let Some(l) = landing {
                k.set_landing(self.pid, l);
            }
            k.send(self.pid, ep, msg, caps, true, true)
        };
        let k = self.leave(k);
        match self.woken_from(k, r)? {
            (k, (Inbox::Reply, landed, caps)) => Ok((k, caps, landed)),
            _ => unreachable!("a caller is woken by a reply"),
        }
    }

    /// [`Ctx::call`] with the reply copied into `reply` (as much as fits) instead of a new
    /// buffer; returns the reply's length and the capabilities that came with it.
    #[inline(always)]
    pub fn call_into(
        &self,
        ep: CPtr,
        msg: &[u8],
        caps: &[CPtr],
        reply: &mut [u8],
    ) -> Result<(usize, Vec<CPtr>), SysError> {
        let (k, caps, landed) = self.call_entry(ep, msg, caps, Some(Landing::of(reply)))?;
        let len = match landed {
            Some(len) => len,
            None => self.copy_msg(&k, reply),
        };
        Ok((len, caps))
    }

    /// Sends `msg` and waits until a receiver took it.
    pub fn send(&self, ep: CPtr, msg: &[u8], caps: &[CPtr]) -> Result<(), SysError> {
        self.simple(Syscall::Send, |k, p| {
            k.send(p, ep, msg, caps, false, true).map(|_| ())
        })
    }

    /// Sends `msg` if a receiver is waiting now; returns whether it was delivered.
    pub fn nb_send(&self, ep: CPtr, msg: &[u8]) -> Result<bool, SysError> {
        self.simple(Syscall::NbSend, |k, p| {
            k.send(p, ep, msg, &[], false, false)
        })
    }

    /// What a receive returned with (`woken`, see [`Ctx::woken`]); the bytes copied into
    /// `out` (already there if the receive says how many went there).
    #[inline(always)]
    fn received_into(
        &self,
        k: RefMut<'_, Kernel>,
        woken: (Inbox, Option<usize>, Vec<CPtr>),
        out: &mut [u8],
    ) -> ReceivedInto {
        match woken {
            (Inbox::Message { badge, kind }, landed, caps) => ReceivedInto {
                badge,
                kind,
                len: match landed {
                    Some(len) => len,
                    None => self.copy_msg(&k, out),
                },
                caps,
            },
            (Inbox::Signal(word), _, _) => ReceivedInto {
                badge: word,
                kind: RecvKind::Notification,
                len: 0,
                caps: Vec::new(),
            },
            (Inbox::Reply, _, _) => unreachable!("a receiver is woken by a message"),
        }
    }

    fn received(
        &self,
        k: RefMut<'_, Kernel>,
        woken: (Inbox, Option<usize>, Vec<CPtr>),
    ) -> Received {
        let mut bytes = vec![0; k.procs[self.pid as usize].msg.len()];
        let r = self.received_into(k, woken, &mut bytes);
        bytes.truncate(r.len);
        Received {
            badge: r.badge,
            kind: r.kind,
            bytes,
            caps: r.caps,
        }
    }

    /// Waits for a message on `ep` (or a signal of the bound notification).
    pub fn recv(&self, ep: CPtr) -> Result<Received, SysError> {
        let (k, woken) = self.recv_entry(ep, None)?;
        Ok(self.received(k, woken))
    }

    /// [`Ctx::recv`] with the message copied into `out` (as much as fits).
    pub fn recv_into(&self, ep: CPtr, out: &mut [u8]) -> Result<ReceivedInto, SysError> {
        let (k, woken) = self.recv_entry(ep, Some(Landing::of(out)))?;
        Ok(self.received_into(k, woken, out))
    }

    /// The kernel entry of a receive; returns once something arrived, with what woke
    /// this process (see [`Ctx::woken`]).
    fn recv_entry(&self, ep: CPtr, landing: Option<Landing>) -> Result<Woken<'_>, SysError> {
        let mut k = self.enter(Syscall::Recv)?;
        if let Some(l) = landing {
            k.set_landing(self.pid, l);
        }
        let r = k.recv(self.pid, ep);
        let k = self.leave(k);
        self.woken_from(k, r)
    }

    /// What a blocking system call that returned `r` (and then gave control away and got
    /// it back) returns: its error, or what woke this process.
    #[inline(always)]
    fn woken_from<'a, T>(
        &self,
        mut k: RefMut<'a, Kernel>,
        r: Result<T, SysError>,
    ) -> Result<Woken<'a>, SysError> {
        if let Err(e) = r {
            // Ends the buffer's registration; nothing arrived.
            k.take_woken(self.pid);
            return Err(e);
        }
        let woken = self.woken(&mut k);
        Ok((k, woken))
    }

    /// Replies to the last call received (dropped if the caller is gone).
    pub fn reply(&self, msg: &[u8], caps: &[CPtr]) -> Result<(), SysError> {
        self.simple(Syscall::Reply, |k, p| k.reply(p, msg, caps))
    }

    /// The kernel entry of a reply-and-receive; returns once something arrived.
    #[inline(always)]
    fn reply_recv_entry(
        &self,
        ep: CPtr,
        msg: &[u8],
        caps: &[CPtr],
        landing: Option<Landing>,
    ) -> Result<Woken<'_>, SysError> {
        let mut k = self.enter(Syscall::ReplyRecv)?;
        let r = if caps.is_empty() && k.reply_recv_fast(self.pid, ep, msg, landing) {
            Ok(false)
        } else {
            if let Some(l) = landing {
                k.set_landing(self.pid, l);
            }
            k.reply(self.pid, msg, caps)
                .and_then(|_| k.recv(self.pid, ep))
        };
        let k = self.leave(k);
        self.woken_from(k, r)
    }

    /// Replies, then waits for the next message, in one kernel entry.
    pub fn reply_recv(&self, ep: CPtr, msg: &[u8], caps: &[CPtr]) -> Result<Received, SysError> {
        let (k, woken) = self.reply_recv_entry(ep, msg, caps, None)?;
        Ok(self.received(k, woken))
    }

    /// [`Ctx::reply_recv`] with the next message copied into `out` (as much as fits).
    #[inline(always)]
    pub fn reply_recv_into(
        &self,
        ep: CPtr,
        msg: &[u8],
        caps: &[CPtr],
        out: &mut [u8],
    ) -> Result<ReceivedInto, SysError> {
        let (k, woken) = self.reply_recv_entry(ep, msg, caps, Some(Landing::of(out)))?;
        Ok(self.received_into(k, woken, out))
    }

    pub fn signal(&self, ntfn: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::Signal, |k, p| k.signal(p, ntfn))
    }

    /// Waits until the notification's word is non-zero; returns and clears it.
    pub fn wait(&self, ntfn: CPtr) -> Result<u64, SysError> {
        let mut k = self.enter(Syscall::Wait)?;
        let r = k.wait(self.pid, ntfn, true);
        let mut k = self.leave(k);
        match r? {
            Some(w) => Ok(w),
            None => match self.woken(&mut k) {
                (Inbox::Signal(w), _, _) => Ok(w),
                _ => unreachable!("a waiter is woken by a signal"),
            },
        }
    }

    /// Returns and clears the notification's word (0 if nothing was signalled).
    pub fn poll(&self, ntfn: CPtr) -> Result<u64, SysError> {
        self.simple(Syscall::Poll, |k, p| {
            k.wait(p, ntfn, false).map(|w| w.unwrap_or(0))
        })
    }

    /// Binds a notification: its signals arrive through [`Ctx::recv`].
    pub fn bind_notification(&self, ntfn: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::Bind, |k, p| k.bind(p, ntfn))
    }

    /// A kernel entry that does nothing (lets the scheduler choose again).
    pub fn yield_now(&self) {
        let _ = self.simple(Syscall::Yield, |_, _| Ok(()));
    }

    // ----- capabilities -----

    /// Copies a capability with at most `rights`.
    pub fn copy(&self, slot: CPtr, rights: Rights) -> Result<CPtr, SysError> {
        self.simple(Syscall::Copy, |k, p| k.copy(p, slot, rights))
    }

    /// Mints a badged copy of an unbadged endpoint or notification capability.
    pub fn mint(&self, slot: CPtr, badge: u64, rights: Rights) -> Result<CPtr, SysError> {
        self.simple(Syscall::Mint, |k, p| k.mint(p, slot, badge, rights))
    }

    pub fn delete(&self, slot: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::Delete, |k, p| k.delete(p, slot))
    }

    /// Kind, badge and rights of one of the process's own capabilities.
    pub fn identify(&self, slot: CPtr) -> Result<CapInfo, SysError> {
        self.simple(Syscall::Identify, |k, p| k.identify(p, slot))
    }

    // ----- frames -----

    pub fn frame_read(&self, frame: CPtr, offset: u64, buf: &mut [u8]) -> Result<(), SysError> {
        self.simple(Syscall::FrameRead, |k, p| {
            k.frame_read(p, frame, offset, buf)
        })
    }

    pub fn frame_write(&self, frame: CPtr, offset: u64, data: &[u8]) -> Result<(), SysError> {
        self.simple(Syscall::FrameWrite, |k, p| {
            k.frame_write(p, frame, offset, data)
        })
    }

    /// Physical address and size of a frame (seL4 `Page_GetAddress`).
    pub fn frame_info(&self, frame: CPtr) -> Result<(u64, u64), SysError> {
        self.simple(Syscall::FrameInfo, |k, p| k.frame_info(p, frame))
    }

    /// Maps a frame (which needs read and write rights) into the process and returns a
    /// DMA-memory provider over it, for a driver's tables and queues. The mapping keeps
    /// the frame alive for the process's lifetime.
    pub fn map_dma(&self, frame: CPtr) -> Result<SimDma, SysError> {
        let (pa, len, mem) = self.simple(Syscall::Map, |k, p| {
            let (pa, len) = k.map_frame(p, frame)?;
            Ok((pa, len, k.mem.clone()))
        })?;
        Ok(SimDma::new(mem, pa, len))
    }

    // ----- IOMMUs and devices -----

    /// Maps an IOMMU's register frame.
    pub fn map_mmio(&self, mmio: CPtr) -> Result<SimMmio, SysError> {
        let regs = self.simple(Syscall::Map, |k, p| k.mmio(p, mmio))?;
        Ok(SimMmio { regs })
    }

    /// Routes an IOMMU's interrupt to a notification (signalled with its badge).
    pub fn irq_set_notification(&self, irq: CPtr, ntfn: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::IrqSetNotification, |k, p| {
            k.irq_set_notification(p, irq, ntfn)
        })
    }

    /// Acknowledges an interrupt: the next one is delivered.
    pub fn irq_ack(&self, irq: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::IrqAck, |k, p| k.irq_ack(p, irq))
    }

    pub fn device_info(&self, dev: CPtr) -> Result<DeviceDesc, SysError> {
        self.simple(Syscall::DeviceInfo, |k, p| k.device_info(p, dev))
    }

    /// Starts a DMA job; returns its id. The device runs it on its own.
    pub fn device_submit(&self, dev: CPtr, job: DmaJob) -> Result<u64, SysError> {
        self.simple(Syscall::DeviceSubmit, |k, p| k.device_submit(p, dev, job))
    }

    /// Makes the device send a page request to its IOMMU; returns whether the IOMMU took
    /// it.
    pub fn device_page_request(
        &self,
        dev: CPtr,
        request: machine::PageRequest,
    ) -> Result<bool, SysError> {
        self.simple(Syscall::DevicePageRequest, |k, p| {
            k.device_page_request(p, dev, request)
        })
    }

    /// Jobs that ended since the last call.
    pub fn device_results(&self, dev: CPtr) -> Result<Vec<JobStatus>, SysError> {
        self.simple(Syscall::DeviceResults, |k, p| k.device_results(p, dev))
    }

    /// Writes the device's buffer (through its BAR).
    pub fn device_write(&self, dev: CPtr, offset: u64, data: &[u8]) -> Result<(), SysError> {
        self.simple(Syscall::DeviceBuffer, |k, p| {
            k.device_buffer(p, dev, offset, None, Some(data))
        })
    }

    /// Reads the device's buffer.
    pub fn device_read(&self, dev: CPtr, offset: u64, buf: &mut [u8]) -> Result<(), SysError> {
        self.simple(Syscall::DeviceBuffer, |k, p| {
            k.device_buffer(p, dev, offset, Some(buf), None)
        })
    }

    /// Signals `ntfn` whenever one of the device's jobs ends.
    pub fn device_set_notification(&self, dev: CPtr, ntfn: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::DeviceSetNotification, |k, p| {
            k.device_set_notification(p, dev, ntfn)
        })
    }

    // ----- the root task's -----

    pub fn create_endpoint(&self, untyped: CPtr, name: &str) -> Result<CPtr, SysError> {
        self.simple(Syscall::Create, |k, p| {
            k.create(p, untyped, Create::Endpoint, name)
        })
    }

    pub fn create_notification(&self, untyped: CPtr, name: &str) -> Result<CPtr, SysError> {
        self.simple(Syscall::Create, |k, p| {
            k.create(p, untyped, Create::Notification, name)
        })
    }

    /// A frame of `pages` physically contiguous, zeroed pages.
    pub fn create_frame(&self, untyped: CPtr, pages: u64) -> Result<CPtr, SysError> {
        self.simple(Syscall::Create, |k, p| {
            k.create(p, untyped, Create::Frame { pages }, "frame")
        })
    }

    /// A process (not started) that will run `entry`.
    pub fn create_process(
        &self,
        untyped: CPtr,
        name: &str,
        daemon: bool,
        entry: Entry,
    ) -> Result<CPtr, SysError> {
        self.simple(Syscall::Create, |k, p| {
            k.create(p, untyped, Create::Process { daemon, entry }, name)
        })
    }

    /// Gives a process (not dead) a copy of capability `src` with at most `rights`,
    /// minted with `badge` if given, under `name`; returns its slot there.
    pub fn give(
        &self,
        process: CPtr,
        src: CPtr,
        name: &str,
        badge: Option<u64>,
        rights: Rights,
    ) -> Result<CPtr, SysError> {
        self.simple(Syscall::Give, |k, p| {
            k.give(p, process, src, name, badge, rights)
        })
    }

    /// Where the kernel reports the process's end: a message on `ep` with the badge of
    /// that capability.
    pub fn set_fault_handler(&self, process: CPtr, ep: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::SetFaultHandler, |k, p| {
            k.set_fault_handler(p, process, ep)
        })
    }

    pub fn start(&self, process: CPtr) -> Result<(), SysError> {
        let shared = &self.shared;
        self.simple(Syscall::Start, |k, p| {
            let child = k.start(p, process)?;
            let started = shared.start_process(k, child);
            if started.is_err() {
                // No stack for it: it stays created.
                k.set_state(child, PState::Created);
            }
            started
        })
    }

    pub fn kill(&self, process: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::Kill, |k, p| k.kill_child(p, process))
    }
}

/// An IOMMU's register frame as mapped by the process holding its capability.
pub struct SimMmio {
    regs: Box<dyn RegisterIo + Send>,
}

impl SimMmio {
    /// A register handle obtained outside the simulation (from a model the caller
    /// holds), in the type a mapped register frame has: for code outside the simulation
    /// that runs the same driver code as a process does (benchmarks).
    pub fn outside(regs: Box<dyn RegisterIo + Send>) -> Self {
        SimMmio { regs }
    }
}

impl RegisterIo for SimMmio {
    fn read32(&mut self, offset: usize) -> u32 {
        self.regs.read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.regs.write32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.regs.read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.regs.write64(offset, value)
    }
    fn publish_barrier(&mut self) {
        self.regs.publish_barrier()
    }
    fn consume_barrier(&mut self) {
        self.regs.consume_barrier()
    }
}
