//! A deterministic simulation of a capability microkernel, for host tests.
//!
//! # Model
//! - **Processes** are closures, each on its own OS thread, but only one runs at a time:
//!   a baton passes at every kernel entry (every system call), and the scheduler decides
//!   who gets it with a seeded [`SplitMix64`]. OS scheduling therefore never changes the
//!   outcome: a run is reproduced by its seed ([`SimConfig::seed`]).
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
//!   device DMA jobs; and, for the root task, object and process creation.
//! - **Devices** do DMA on their own, one page per step, through their IOMMU
//!   ([`machine::IommuUnit`]), whatever happens to the process that programmed them, and
//!   send page requests (PRI) to IOMMUs that take them. The kernel notes every DMA that
//!   reaches memory and reports DMA into memory no capability refers to any more.
//! - **Death**: a process ends by returning, panicking (a fault) or being killed; its
//!   capabilities are deleted (a frame's memory returns to the pool when its last
//!   capability goes, so a server holding a copy keeps it alive) and the kernel sends a
//!   one-byte [`DeathCause`] message to its fault endpoint, badged as its supervisor set
//!   it up.
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

pub mod cap;
pub mod endpoint;
mod kernel;
pub mod machine;
pub mod rng;

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

pub use cap::{CPtr, CapInfo, ObjKind, Pid, Rights, SysError};
pub use kernel::{
    DeathCause, Entry, Event, Exit, Injection, KillPoint, Note, Received, RecvKind, Reply, Syscall,
    Wait,
};
pub use rng::SplitMix64;
pub use sim_physmem::{PhysMem, SimDma, FRAME};

use cap::Obj;
use kernel::{Create, Inbox, Kernel, Next, PState, Waker};
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
    /// How long a thread that passed the baton spins before yielding and then sleeping
    /// (iterations). A baton that comes back within this time costs no OS wake-up, but a
    /// spinning thread occupies a core: spin long only when the machine has cores to
    /// spare (benchmarks), briefly otherwise.
    pub spin: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            ram_base: 0x4000_0000,
            ram_bytes: 64 << 20,
            inject: Injection::default(),
            trace: true,
            spin: 100,
        }
    }
}

/// The marker a killed process's thread unwinds with.
struct Killed;

const NOBODY: u32 = u32::MAX;

struct Shared {
    kernel: Mutex<Kernel>,
    /// The process holding the baton (`NOBODY`: the simulation is idle).
    current: AtomicU32,
    idle: Mutex<bool>,
    idle_cv: Condvar,
    joins: Mutex<Vec<JoinHandle<()>>>,
    spin: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Kernel> {
        self.kernel.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_baton(&self, me: Pid, waker: &Waker) {
        let mut spins = 0u32;
        while self.current.load(Ordering::SeqCst) != me {
            if spins < self.spin {
                spins += 1;
                std::hint::spin_loop();
            } else if spins < self.spin.saturating_add(64) {
                spins += 1;
                std::thread::yield_now();
            } else {
                waker.sleeping.store(true, Ordering::SeqCst);
                if self.current.load(Ordering::SeqCst) != me {
                    std::thread::park();
                }
                waker.sleeping.store(false, Ordering::SeqCst);
            }
        }
    }

    fn set_idle(&self) {
        *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.idle_cv.notify_all();
    }

    fn wait_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while !*idle {
            idle = self
                .idle_cv
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Gives the baton to `p` (called with the kernel locked; `k` is released).
    fn hand_to(&self, k: MutexGuard<'_, Kernel>, p: Pid) {
        let w = k.procs[p as usize]
            .thread
            .clone()
            .expect("a runnable process has a thread");
        self.current.store(p, Ordering::SeqCst);
        drop(k);
        w.wake();
    }

    /// Passes the baton on after the holder's kernel work; does not wait for it back.
    fn pass_on(&self, mut k: MutexGuard<'_, Kernel>) {
        if k.shutting_down {
            self.current.store(NOBODY, Ordering::SeqCst);
            drop(k);
            self.set_idle();
            return;
        }
        match k.schedule() {
            Next::Run(p) => self.hand_to(k, p),
            Next::Idle => {
                self.current.store(NOBODY, Ordering::SeqCst);
                drop(k);
                self.set_idle();
            }
        }
    }

    /// The scheduling point at the end of every system call of `me`: passes the baton to
    /// whoever the scheduler picks and waits until it comes back. Unwinds if `me` was
    /// killed meanwhile.
    fn switch<'a>(&'a self, me: Pid, mut k: MutexGuard<'a, Kernel>) -> MutexGuard<'a, Kernel> {
        let mine = k.procs[me as usize]
            .thread
            .clone()
            .expect("a running process has a thread");
        match k.schedule() {
            Next::Run(p) if p == me => {}
            Next::Run(p) => {
                self.hand_to(k, p);
                self.wait_baton(me, &mine);
                k = self.lock();
            }
            Next::Idle => {
                self.current.store(NOBODY, Ordering::SeqCst);
                drop(k);
                self.set_idle();
                self.wait_baton(me, &mine);
                k = self.lock();
            }
        }
        if k.is_dying(me) {
            drop(k);
            resume_unwind(Box::new(Killed));
        }
        k
    }

    fn start_thread(self: &Arc<Self>, k: &mut Kernel, pid: Pid) {
        let entry = k.procs[pid as usize]
            .entry
            .take()
            .expect("a created process has its program");
        let shared = self.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Waker>>(1);
        let handle = std::thread::Builder::new()
            .name(format!("sim:{}", k.procs[pid as usize].name))
            .spawn(move || {
                let waker = rx.recv().expect("the kernel sends the waker");
                shared.body(pid, entry, waker)
            })
            .expect("spawn a process thread");
        let waker = Arc::new(Waker {
            thread: handle.thread().clone(),
            sleeping: AtomicBool::new(false),
        });
        tx.send(waker.clone())
            .expect("the thread waits for its waker");
        k.procs[pid as usize].thread = Some(waker);
        self.joins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }

    /// A process's thread: wait for the baton, run the program, report how it ended.
    fn body(self: Arc<Self>, pid: Pid, entry: Entry, waker: Arc<Waker>) {
        self.wait_baton(pid, &waker);
        drop(waker);
        let dying = self.lock().is_dying(pid);
        let outcome: Result<(), Box<dyn Any + Send>> = if dying {
            drop(entry);
            Err(Box::new(Killed))
        } else {
            let ctx = Ctx {
                shared: self.clone(),
                pid,
                _thread_bound: std::marker::PhantomData,
            };
            catch_unwind(AssertUnwindSafe(move || entry(ctx)))
        };
        let mut k = self.lock();
        match outcome {
            Ok(()) => k.kill(pid, Exit::Returned),
            Err(p) if p.is::<Killed>() => {}
            Err(p) => k.kill(pid, Exit::Panicked(panic_message(p.as_ref()))),
        }
        k.reaped(pid);
        self.pass_on(k);
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
    shared: Arc<Shared>,
    seed: u64,
    down: bool,
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let mem = PhysMem::new(config.ram_base, config.ram_bytes);
        Sim {
            shared: Arc::new(Shared {
                kernel: Mutex::new(Kernel::new(config.seed, mem, config.inject, config.trace)),
                current: AtomicU32::new(NOBODY),
                idle: Mutex::new(true),
                idle_cv: Condvar::new(),
                joins: Mutex::new(Vec::new()),
                spin: config.spin,
            }),
            seed: config.seed,
            down: false,
        }
    }

    /// Simulated RAM (for tests to judge what DMA did).
    pub fn phys(&self) -> Arc<PhysMem> {
        self.shared.lock().mem.clone()
    }

    /// Adds an IOMMU; returns its index.
    pub fn add_iommu(&self, name: &str, unit: Arc<Mutex<dyn IommuUnit>>) -> u32 {
        self.shared.lock().add_iommu(name, unit)
    }

    /// Adds a device behind IOMMU `iommu` with StreamID/requester ID `stream` and a
    /// buffer of `buffer_bytes`; returns its index.
    pub fn add_device(&self, name: &str, iommu: u32, stream: u32, buffer_bytes: u64) -> u32 {
        self.shared
            .lock()
            .add_device(name, iommu, stream, buffer_bytes)
    }

    pub fn endpoint(&self, name: &str) -> Object {
        Object(self.shared.lock().new_endpoint(name))
    }

    pub fn notification(&self, name: &str) -> Object {
        Object(self.shared.lock().new_notification(name))
    }

    /// A frame of `pages` contiguous pages (freed when the last capability given to a
    /// process goes).
    pub fn frame(&self, pages: u64) -> Result<Object, SysError> {
        self.shared.lock().new_frame(pages).map(Object)
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
        let mut k = self.shared.lock();
        let pid = k.new_process(name, daemon, entry);
        for g in caps {
            k.install_outside(pid, g.object.0, g.badge, g.rights, g.name);
        }
        k.procs[pid as usize].state = PState::Ready;
        self.shared.start_thread(&mut k, pid);
        pid
    }

    /// Creates and starts the root task: it holds untyped memory (`untyped`), every
    /// IOMMU's register frame (`mmio:<name>`) and interrupt (`irq:<name>`) and every
    /// device (`device:<name>`), and builds the rest of the system with them.
    pub fn spawn_root(&self, name: &str, entry: Entry) -> Pid {
        let mut k = self.shared.lock();
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
        k.procs[pid as usize].state = PState::Ready;
        self.shared.start_thread(&mut k, pid);
        pid
    }

    /// Runs until nothing can run (every process ended or waits); returns what happened
    /// so far. Can be called again after spawning more processes.
    pub fn run(&self) -> RunReport {
        assert!(!self.down, "the simulation was shut down");
        let mut k = self.shared.lock();
        *self
            .shared
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        match k.schedule() {
            Next::Run(p) => {
                self.shared.hand_to(k, p);
                self.shared.wait_idle();
            }
            Next::Idle => drop(k),
        }
        self.report()
    }

    fn report(&self) -> RunReport {
        let k = self.shared.lock();
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
        }
    }

    /// What process `name` holds, seen from outside (for tests): each capability with
    /// the name it was given under, if any.
    pub fn caps_of(&self, name: &str) -> Option<Vec<(Option<String>, CapInfo)>> {
        self.shared.lock().caps_of(name)
    }

    /// Bytes of RAM held by live frames.
    pub fn live_frame_bytes(&self) -> u64 {
        self.shared.lock().live_frame_bytes()
    }

    /// Ends every process still waiting (their threads unwind, one at a time) and joins
    /// the threads. Also done on drop.
    pub fn shutdown(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        let pids: Vec<Pid> = {
            let mut k = self.shared.lock();
            k.shutting_down = true;
            (0..k.procs.len() as Pid)
                .filter(|&p| k.procs[p as usize].thread.is_some())
                .collect()
        };
        for p in pids {
            let mut k = self.shared.lock();
            let Some(_) = k.procs[p as usize].thread else {
                continue;
            };
            if !matches!(k.procs[p as usize].state, PState::Dying(_)) {
                k.procs[p as usize].state = PState::Dying(Exit::Shutdown);
            }
            *self
                .shared
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = false;
            self.shared.hand_to(k, p);
            self.shared.wait_idle();
        }
        let joins = std::mem::take(
            &mut *self
                .shared
                .joins
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for j in joins {
            let _ = j.join();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A process's view of the kernel: its system calls. Every call except
/// [`Ctx::lookup`], [`Ctx::names`], [`Ctx::now`] and accesses through a mapping is a
/// kernel entry and a scheduling point.
///
/// A process is one thread: a `Ctx` stays on the thread it was given to (it is neither
/// `Send` nor `Sync`), and a program must enter the kernel now and then (a loop without
/// system calls keeps the baton forever).
#[derive(Clone)]
pub struct Ctx {
    shared: Arc<Shared>,
    pid: Pid,
    _thread_bound: std::marker::PhantomData<std::rc::Rc<()>>,
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
        self.shared.lock().procs[self.pid as usize]
            .names
            .get(name)
            .copied()
    }

    /// The current step (the number of kernel entries and device steps so far): the
    /// simulation's clock. Reading it is not a kernel entry.
    pub fn now(&self) -> u64 {
        self.shared.lock().step
    }

    /// Every named capability.
    pub fn names(&self) -> Vec<(String, CPtr)> {
        self.shared.lock().procs[self.pid as usize]
            .names
            .iter()
            .map(|(n, &s)| (n.clone(), s))
            .collect()
    }

    /// Enters the kernel. A process that is unwinding (its destructors run after it was
    /// killed) gets no more kernel service.
    fn enter(&self, call: Syscall) -> Result<MutexGuard<'_, Kernel>, SysError> {
        let mut k = self.shared.lock();
        if std::thread::panicking() || k.procs[self.pid as usize].state != PState::Ready {
            return Err(SysError::IllegalOperation);
        }
        k.enter(self.pid, call);
        if k.is_dying(self.pid) {
            drop(k);
            resume_unwind(Box::new(Killed));
        }
        Ok(k)
    }

    fn leave<'a>(&'a self, k: MutexGuard<'a, Kernel>) -> MutexGuard<'a, Kernel> {
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

    fn inbox(&self, mut k: MutexGuard<'_, Kernel>) -> Inbox {
        k.take_inbox(self.pid)
            .expect("a process woken from a blocking call has its result")
    }

    // ----- IPC -----

    /// Sends `msg` (and `caps`, which needs the grant right) and waits for the reply.
    pub fn call(&self, ep: CPtr, msg: &[u8], caps: &[CPtr]) -> Result<Reply, SysError> {
        let mut k = self.enter(Syscall::Call)?;
        let r = k.send(self.pid, ep, msg, caps, true, true);
        let k = self.leave(k);
        r?;
        match self.inbox(k) {
            Inbox::Reply(r) => Ok(r),
            _ => unreachable!("a caller is woken by a reply"),
        }
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

    fn received(&self, k: MutexGuard<'_, Kernel>) -> Received {
        match self.inbox(k) {
            Inbox::Message(m) => m,
            Inbox::Signal(word) => Received {
                badge: word,
                kind: RecvKind::Notification,
                bytes: Vec::new(),
                caps: Vec::new(),
            },
            Inbox::Reply(_) => unreachable!("a receiver is woken by a message"),
        }
    }

    /// Waits for a message on `ep` (or a signal of the bound notification).
    pub fn recv(&self, ep: CPtr) -> Result<Received, SysError> {
        let mut k = self.enter(Syscall::Recv)?;
        let r = k.recv(self.pid, ep);
        let k = self.leave(k);
        r?;
        Ok(self.received(k))
    }

    /// Replies to the last call received (dropped if the caller is gone).
    pub fn reply(&self, msg: &[u8], caps: &[CPtr]) -> Result<(), SysError> {
        self.simple(Syscall::Reply, |k, p| k.reply(p, msg, caps))
    }

    /// Replies, then waits for the next message, in one kernel entry.
    pub fn reply_recv(&self, ep: CPtr, msg: &[u8], caps: &[CPtr]) -> Result<Received, SysError> {
        let mut k = self.enter(Syscall::ReplyRecv)?;
        let r = k
            .reply(self.pid, msg, caps)
            .and_then(|_| k.recv(self.pid, ep));
        let k = self.leave(k);
        r?;
        Ok(self.received(k))
    }

    pub fn signal(&self, ntfn: CPtr) -> Result<(), SysError> {
        self.simple(Syscall::Signal, |k, p| k.signal(p, ntfn))
    }

    /// Waits until the notification's word is non-zero; returns and clears it.
    pub fn wait(&self, ntfn: CPtr) -> Result<u64, SysError> {
        let mut k = self.enter(Syscall::Wait)?;
        let r = k.wait(self.pid, ntfn, true);
        let k = self.leave(k);
        match r? {
            Some(w) => Ok(w),
            None => match self.inbox(k) {
                Inbox::Signal(w) => Ok(w),
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
        let shared = self.shared.clone();
        self.simple(Syscall::Start, |k, p| {
            let child = k.start(p, process)?;
            shared.start_thread(k, child);
            Ok(())
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
