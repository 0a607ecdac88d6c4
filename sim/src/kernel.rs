//! The kernel proper: objects, capability spaces, IPC, devices, the scheduler and fault
//! injection. Everything here runs on behalf of the one process running (see `lib.rs`),
//! between two scheduling points, so the order of every effect is decided by the
//! scheduler.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use sim_physmem::{PhysMem, RangeAllocator, FRAME};

use crate::bytes::{Landing, MsgBuf};
use crate::cap::{CPtr, Cap, CapInfo, Obj, ObjKind, Pid, Rights, SysError};
use crate::machine::{
    Access, DeviceDesc, DmaDirection, DmaFault, DmaJob, DmaRequest, IommuUnit, JobStatus,
    PageRequest, RegisterIo,
};
use crate::rng::SplitMix64;

/// A process's program.
pub type Entry = Box<dyn FnOnce(crate::Ctx) + Send + 'static>;

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Its program returned.
    Returned,
    /// Killed (by fault injection or by its supervisor) at this step.
    Killed { step: u64 },
    /// Its program panicked (the simulation's model of a fault).
    Panicked(String),
    /// Still blocked when the simulation shut down (servers waiting for requests).
    Shutdown,
}

/// Why a supervisor hears about a process: the first byte of the message the kernel
/// sends to the process's fault endpoint when it ends.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathCause {
    /// Its program returned.
    Exited = 1,
    /// It was killed.
    Killed = 2,
    /// It faulted (panicked).
    Faulted = 3,
}

impl DeathCause {
    /// Decodes a fault message.
    pub fn decode(bytes: &[u8]) -> Option<DeathCause> {
        match bytes {
            [1] => Some(DeathCause::Exited),
            [2] => Some(DeathCause::Killed),
            [3] => Some(DeathCause::Faulted),
            _ => None,
        }
    }

    fn of(exit: &Exit) -> DeathCause {
        match exit {
            Exit::Returned | Exit::Shutdown => DeathCause::Exited,
            Exit::Killed { .. } => DeathCause::Killed,
            Exit::Panicked(_) => DeathCause::Faulted,
        }
    }
}

/// What a blocked process waits for (object indices are the kernel's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Receive(u32),
    Send(u32),
    Call(u32),
    Reply(Pid),
    Notification(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PState {
    /// Created, not started.
    Created,
    Ready,
    Blocked(Wait),
    /// Ended ([`ProcObj::exit`] says how); its coroutine still has to unwind.
    Dying,
    /// Ended ([`ProcObj::exit`] says how).
    Dead,
}

/// How a received message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvKind {
    /// A call: the receiver owes a reply.
    Call,
    /// A send (or a message from the kernel): no reply expected.
    Send,
    /// The bound notification was signalled; the badge is the notification word.
    Notification,
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The badge of the capability the sender used (the notification word for
    /// [`RecvKind::Notification`]).
    pub badge: u64,
    pub kind: RecvKind,
    pub bytes: Vec<u8>,
    /// Capabilities that came with the message, now in the receiver's space.
    pub caps: Vec<CPtr>,
}

/// A received message whose bytes were copied into the receiver's buffer
/// ([`crate::Ctx::recv_into`], [`crate::Ctx::reply_recv_into`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedInto {
    /// As in [`Received`].
    pub badge: u64,
    pub kind: RecvKind,
    /// The message's length (bytes beyond the buffer were not copied).
    pub len: usize,
    pub caps: Vec<CPtr>,
}

/// A reply to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub caps: Vec<CPtr>,
}

/// What a blocking call returned with. Message and reply bytes are in the process's
/// message buffer ([`ProcObj::msg`], its IPC buffer), so handing a message over copies it
/// once and allocates nothing. Capabilities that came with a message or reply are in
/// [`ProcObj::caps_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inbox {
    Message { badge: u64, kind: RecvKind },
    Reply,
    Signal(u64),
}

/// The system calls, as recorded in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syscall {
    Call,
    Send,
    NbSend,
    Recv,
    Reply,
    ReplyRecv,
    Signal,
    Wait,
    Poll,
    Bind,
    Yield,
    Copy,
    Mint,
    Delete,
    Identify,
    FrameRead,
    FrameWrite,
    FrameInfo,
    Map,
    IrqSetNotification,
    IrqAck,
    DeviceSubmit,
    DevicePageRequest,
    DeviceResults,
    DeviceBuffer,
    DeviceSetNotification,
    DeviceInfo,
    Create,
    Give,
    SetFaultHandler,
    Start,
    Kill,
}

/// One scheduling-relevant event: what a run did, in order. Two runs with the same seed
/// and the same programs have the same trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A process entered the kernel.
    Syscall { step: u64, pid: Pid, call: Syscall },
    /// A device did one page of DMA (`ok`: the IOMMU let it through).
    Dma {
        step: u64,
        device: u32,
        iova: u64,
        ok: bool,
    },
}

/// What happened that tests judge a run by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A process ended.
    Died {
        step: u64,
        pid: Pid,
        name: String,
        exit: Exit,
    },
    /// The last capability to a frame was deleted: its memory went back to the pool.
    FrameFreed { step: u64, paddr: u64, bytes: u64 },
    /// A page of DMA reached memory.
    Dma {
        step: u64,
        device: u32,
        iova: u64,
        paddr: u64,
        len: u64,
        write: bool,
    },
    /// An IOMMU blocked a DMA access.
    DmaBlocked { step: u64, device: u32, iova: u64 },
    /// DMA reached memory that no capability refers to (freed memory): always a bug.
    DmaToFreeMemory {
        step: u64,
        device: u32,
        paddr: u64,
        len: u64,
    },
}

/// Where fault injection kills a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillPoint {
    /// At the process's `entry`-th kernel entry (1 = its first system call); the call
    /// does not happen.
    AtEntry { process: String, entry: u64 },
    /// At global step `step`, whatever the process is doing (blocked in a call, waiting
    /// for a reply, ready to run).
    AtStep { process: String, step: u64 },
}

/// Fault injection of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injection {
    pub kills: Vec<KillPoint>,
    /// Probability (per mille) that a message sent to an endpoint is delivered late.
    pub delay_per_mille: u32,
    /// A late message becomes deliverable 1..=max_delay steps after it was sent.
    pub max_delay: u64,
    /// Probability (per mille) that a receive takes a waiting sender other than the
    /// first (only among different senders: one sender's messages stay in order).
    pub reorder_per_mille: u32,
}

struct Pending {
    /// `None`: a message from the kernel (a fault message).
    from: Option<Pid>,
    badge: u64,
    bytes: Vec<u8>,
    caps: Vec<Cap>,
    call: bool,
    ready_at: u64,
}

struct EndpointObj {
    name: String,
    queue: VecDeque<Pending>,
    receivers: PidQueue,
}

struct NtfnObj {
    name: String,
    word: u64,
    waiters: VecDeque<Pid>,
    bound: Option<Pid>,
}

struct FrameObj {
    paddr: u64,
    pages: u64,
    refs: u32,
}

struct ActiveJob {
    id: u64,
    job: DmaJob,
    done: u64,
}

struct DeviceObj {
    name: String,
    iommu: u32,
    stream: u32,
    buffer: Vec<u8>,
    jobs: VecDeque<ActiveJob>,
    finished: Vec<JobStatus>,
    completion: Option<(u32, u64)>,
    next_id: u64,
}

struct IommuObj {
    name: String,
    unit: Arc<Mutex<dyn IommuUnit>>,
    irq: Option<(u32, u64)>,
    /// Delivered and not yet acknowledged.
    masked: bool,
    /// Raised while masked.
    latched: bool,
}

pub(crate) struct ProcObj {
    pub name: String,
    pub daemon: bool,
    /// Set only through [`Kernel::set_state`] (which keeps the scheduler's lists).
    state: PState,
    /// How it ended, once it has.
    exit: Option<Exit>,
    cspace: Vec<Option<Cap>>,
    pub names: BTreeMap<String, CPtr>,
    pub entries: u64,
    pub inbox: Option<Inbox>,
    /// The slots of the capabilities the message or reply in `inbox` brought (installed
    /// in its capability space); taken with the inbox, so empty while none is waiting.
    caps_in: Vec<CPtr>,
    /// The bytes of the last message or reply delivered to it (its IPC buffer), unless
    /// they went to `landing`.
    pub msg: MsgBuf,
    /// Its own buffer for the message or reply it waits for now, registered for the
    /// duration of that system call (see [`Kernel::set_landing`]).
    landing: Option<Landing>,
    /// The length of the message put in `landing` (`None`: none was, look in `msg`).
    landed: Option<usize>,
    reply_to: Option<Pid>,
    bound: Option<u32>,
    fault: Option<(u32, u64)>,
    pub entry: Option<Entry>,
    /// Started, and its coroutine has not ended yet.
    pub has_coroutine: bool,
    /// Frames mapped into its address space (kept alive by the mapping).
    mapped: Vec<Cap>,
}

/// What the scheduler decided.
pub(crate) enum Next {
    Run(Pid),
    /// Nothing can run: the run phase is over (finished or deadlocked).
    Idle,
}

pub(crate) struct Kernel {
    pub step: u64,
    rng: SplitMix64,
    pub procs: Vec<ProcObj>,
    eps: Vec<EndpointObj>,
    ntfns: Vec<NtfnObj>,
    frames: Vec<FrameObj>,
    /// Live frames by physical address.
    live_frames: BTreeMap<u64, u32>,
    pub mem: Arc<PhysMem>,
    pool: RangeAllocator,
    devices: Vec<DeviceObj>,
    iommus: Vec<IommuObj>,
    inject: Injection,
    pub record_trace: bool,
    pub trace: Vec<Event>,
    pub trace_hash: u64,
    pub notes: Vec<Note>,
    pub shutting_down: bool,
    /// The ready processes (kept by `set_state`).
    ready: PidSet,
    /// How many processes are dying (their coroutines still have to unwind).
    dying: u32,
    /// How many devices have DMA jobs.
    busy_devices: u32,
}

/// Processes waiting in line (an endpoint's receivers), first come first served. Rarely
/// more than one waits, so a vector whose single entry is taken without shifting.
#[derive(Debug, Default)]
struct PidQueue(Vec<Pid>);

impl PidQueue {
    #[inline(always)]
    fn push_back(&mut self, pid: Pid) {
        self.0.push(pid);
    }

    #[inline(always)]
    fn pop_front(&mut self) -> Option<Pid> {
        match self.0.len() {
            0 => None,
            1 => self.0.pop(),
            _ => Some(self.0.remove(0)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn retain(&mut self, keep: impl FnMut(&Pid) -> bool) {
        self.0.retain(keep);
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &Pid> {
        self.0.iter()
    }
}

/// A set of pids, as a bit set: the ready processes, which the scheduler counts and picks
/// from at every kernel entry. Pids below 64 (every system this repository describes)
/// live in one word kept inline, so the common updates touch no heap memory.
#[derive(Debug, Default)]
struct PidSet {
    /// Pids 0..64.
    low: u64,
    /// Pids from 64 on, 64 to a word.
    high: Vec<u64>,
}

impl PidSet {
    #[inline(always)]
    fn set(&mut self, pid: Pid, member: bool) {
        if pid < 64 {
            let bit = 1u64 << pid;
            if member {
                self.low |= bit;
            } else {
                self.low &= !bit;
            }
        } else {
            self.set_high(pid - 64, member);
        }
    }

    #[cold]
    fn set_high(&mut self, pid: Pid, member: bool) {
        let (w, bit) = ((pid / 64) as usize, 1u64 << (pid % 64));
        if w >= self.high.len() {
            if !member {
                return;
            }
            self.high.resize(w + 1, 0);
        }
        if member {
            self.high[w] |= bit;
        } else {
            self.high[w] &= !bit;
        }
    }

    /// The members' words in pid order, 64 pids each.
    fn words(&self) -> impl Iterator<Item = u64> + '_ {
        core::iter::once(self.low).chain(self.high.iter().copied())
    }

    fn len(&self) -> u32 {
        self.words().map(u64::count_ones).sum()
    }

    /// The only member, if the set has exactly one.
    #[inline(always)]
    fn single(&self) -> Option<Pid> {
        let w = self.low;
        if self.high.is_empty() {
            return (w != 0 && w & (w - 1) == 0).then(|| w.trailing_zeros());
        }
        let mut found = None;
        for (i, w) in self.words().enumerate() {
            if w == 0 {
                continue;
            }
            if found.is_some() || w & (w - 1) != 0 {
                return None;
            }
            found = Some(i as Pid * 64 + w.trailing_zeros());
        }
        found
    }

    /// The `k`-th member in pid order (`k < len`).
    fn nth(&self, mut k: u32) -> Pid {
        for (i, w) in self.words().enumerate() {
            let mut w = w;
            while w != 0 {
                if k == 0 {
                    return i as Pid * 64 + w.trailing_zeros();
                }
                w &= w - 1;
                k -= 1;
            }
        }
        unreachable!("k < len")
    }
}

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(17)
}

impl Kernel {
    pub fn new(seed: u64, mem: Arc<PhysMem>, inject: Injection, record_trace: bool) -> Kernel {
        let pool = RangeAllocator::new(mem.base(), mem.end() - mem.base());
        Kernel {
            step: 0,
            rng: SplitMix64::new(seed),
            procs: Vec::new(),
            eps: Vec::new(),
            ntfns: Vec::new(),
            frames: Vec::new(),
            live_frames: BTreeMap::new(),
            mem,
            pool,
            devices: Vec::new(),
            iommus: Vec::new(),
            inject,
            record_trace,
            trace: Vec::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            notes: Vec::new(),
            shutting_down: false,
            ready: PidSet::default(),
            dying: 0,
            busy_devices: 0,
        }
    }

    #[inline]
    fn record(&mut self, e: Event) {
        let v = match e {
            Event::Syscall { step, pid, call } => mix(mix(step, u64::from(pid)), call as u64),
            Event::Dma {
                step,
                device,
                iova,
                ok,
            } => mix(mix(mix(step, u64::from(device) | 1 << 40), iova), ok as u64),
        };
        self.trace_hash = mix(self.trace_hash, v);
        if self.record_trace {
            self.trace.push(e);
        }
    }

    // ----- machine and objects -----

    pub fn add_iommu(&mut self, name: &str, unit: Arc<Mutex<dyn IommuUnit>>) -> u32 {
        self.iommus.push(IommuObj {
            name: name.into(),
            unit,
            irq: None,
            masked: false,
            latched: false,
        });
        self.iommus.len() as u32 - 1
    }

    pub fn add_device(&mut self, name: &str, iommu: u32, stream: u32, buffer_bytes: u64) -> u32 {
        assert!((iommu as usize) < self.iommus.len(), "no IOMMU {iommu}");
        self.devices.push(DeviceObj {
            name: name.into(),
            iommu,
            stream,
            buffer: vec![0; buffer_bytes as usize],
            jobs: VecDeque::new(),
            finished: Vec::new(),
            completion: None,
            next_id: 1,
        });
        self.devices.len() as u32 - 1
    }

    pub fn iommu_count(&self) -> u32 {
        self.iommus.len() as u32
    }

    pub fn device_count(&self) -> u32 {
        self.devices.len() as u32
    }

    pub fn new_endpoint(&mut self, name: &str) -> Obj {
        self.eps.push(EndpointObj {
            name: name.into(),
            queue: VecDeque::new(),
            receivers: PidQueue::default(),
        });
        Obj::Endpoint(self.eps.len() as u32 - 1)
    }

    pub fn new_notification(&mut self, name: &str) -> Obj {
        self.ntfns.push(NtfnObj {
            name: name.into(),
            word: 0,
            waiters: VecDeque::new(),
            bound: None,
        });
        Obj::Notification(self.ntfns.len() as u32 - 1)
    }

    pub fn new_frame(&mut self, pages: u64) -> Result<Obj, SysError> {
        if pages == 0 {
            return Err(SysError::InvalidArgument);
        }
        let bytes = pages.checked_mul(FRAME).ok_or(SysError::InvalidArgument)?;
        let paddr = self
            .pool
            .alloc(bytes, FRAME)
            .ok_or(SysError::NotEnoughMemory)?;
        self.mem.zero(paddr, bytes).expect("pool inside RAM");
        let id = self.frames.len() as u32;
        self.frames.push(FrameObj {
            paddr,
            pages,
            refs: 0,
        });
        self.live_frames.insert(paddr, id);
        Ok(Obj::Frame(id))
    }

    pub fn new_process(&mut self, name: &str, daemon: bool, entry: Entry) -> Pid {
        self.procs.push(ProcObj {
            name: name.into(),
            daemon,
            state: PState::Created,
            exit: None,
            cspace: vec![None],
            names: BTreeMap::new(),
            entries: 0,
            inbox: None,
            msg: MsgBuf::default(),
            landing: None,
            landed: None,
            caps_in: Vec::new(),
            reply_to: None,
            bound: None,
            fault: None,
            entry: Some(entry),
            has_coroutine: false,
            mapped: Vec::new(),
        });
        self.procs.len() as u32 - 1
    }

    /// Sets a process's state, keeping the ready list and the dying count.
    #[inline]
    pub fn set_state(&mut self, pid: Pid, state: PState) {
        let p = &mut self.procs[pid as usize];
        let was_ready = matches!(p.state, PState::Ready);
        let was_dying = matches!(p.state, PState::Dying);
        let ready = matches!(state, PState::Ready);
        let dying = matches!(state, PState::Dying);
        p.state = state;
        if ready != was_ready {
            self.ready.set(pid, ready);
        }
        if dying != was_dying {
            if dying {
                self.dying += 1;
            } else {
                self.dying -= 1;
            }
        }
    }

    // ----- capability spaces -----

    /// Counts a new reference to the object of `cap` (only frames are counted: their
    /// memory returns to the pool when the last reference goes).
    fn retain(&mut self, cap: &Cap) {
        if let Obj::Frame(f) = cap.obj {
            self.frames[f as usize].refs += 1;
        }
    }

    fn release(&mut self, cap: Cap) {
        if let Obj::Frame(f) = cap.obj {
            let fr = &mut self.frames[f as usize];
            fr.refs -= 1;
            if fr.refs == 0 {
                let (paddr, bytes) = (fr.paddr, fr.pages * FRAME);
                self.live_frames.remove(&paddr);
                self.pool.free(paddr, bytes);
                self.notes.push(Note::FrameFreed {
                    step: self.step,
                    paddr,
                    bytes,
                });
            }
        }
    }

    /// Puts `cap` (already retained) into a free slot of `pid`'s space.
    fn install(&mut self, pid: Pid, cap: Cap, name: Option<&str>) -> CPtr {
        let p = &mut self.procs[pid as usize];
        let slot = match p.cspace.iter().skip(1).position(Option::is_none) {
            Some(i) => i + 1,
            None => {
                p.cspace.push(None);
                p.cspace.len() - 1
            }
        };
        p.cspace[slot] = Some(cap);
        if let Some(n) = name {
            p.names.insert(n.into(), slot as CPtr);
        }
        slot as CPtr
    }

    /// Puts capabilities (already retained) into free slots of `pid`'s space.
    fn install_all(&mut self, pid: Pid, caps: Vec<Cap>) -> Vec<CPtr> {
        if caps.is_empty() {
            return Vec::new();
        }
        caps.into_iter()
            .map(|c| self.install(pid, c, None))
            .collect()
    }

    /// Creates `obj` and a capability with every right to it in `pid`'s space.
    pub fn install_new(&mut self, pid: Pid, obj: Obj, name: Option<&str>) -> CPtr {
        let cap = Cap {
            obj,
            badge: 0,
            rights: Rights::ALL,
        };
        self.retain(&cap);
        self.install(pid, cap, name)
    }

    /// Gives `pid` a capability to `obj` (from outside the simulation).
    pub fn install_outside(&mut self, pid: Pid, obj: Obj, badge: u64, rights: Rights, name: &str) {
        let cap = Cap { obj, badge, rights };
        self.retain(&cap);
        self.install(pid, cap, Some(name));
    }

    fn cap(&self, pid: Pid, slot: CPtr) -> Result<Cap, SysError> {
        self.procs[pid as usize]
            .cspace
            .get(slot as usize)
            .copied()
            .flatten()
            .ok_or(SysError::InvalidCap)
    }

    /// The capability in `slot`, checked for kind and rights.
    fn cap_as(&self, pid: Pid, slot: CPtr, kind: ObjKind, need: Rights) -> Result<Cap, SysError> {
        let cap = self.cap(pid, slot)?;
        if cap.obj.kind() != kind {
            return Err(SysError::WrongType);
        }
        if !cap.rights.contains(need) {
            return Err(SysError::NoRights);
        }
        Ok(cap)
    }

    pub fn identify(&self, pid: Pid, slot: CPtr) -> Result<CapInfo, SysError> {
        let cap = self.cap(pid, slot)?;
        Ok(CapInfo {
            kind: cap.obj.kind(),
            badge: cap.badge,
            rights: cap.rights,
        })
    }

    /// A copy of a capability with at most its rights (seL4 `CNode_Copy`).
    pub fn copy(&mut self, pid: Pid, slot: CPtr, rights: Rights) -> Result<CPtr, SysError> {
        let mut cap = self.cap(pid, slot)?;
        cap.rights = cap.rights.intersect(rights);
        self.retain(&cap);
        Ok(self.install(pid, cap, None))
    }

    /// A badged copy (seL4 `CNode_Mint`): only an unbadged endpoint or notification
    /// capability can be badged, so a holder of a badged capability cannot make one that
    /// speaks with another badge.
    pub fn mint(
        &mut self,
        pid: Pid,
        slot: CPtr,
        badge: u64,
        rights: Rights,
    ) -> Result<CPtr, SysError> {
        let cap = self.minted(pid, slot, badge, rights)?;
        self.retain(&cap);
        Ok(self.install(pid, cap, None))
    }

    fn minted(&self, pid: Pid, slot: CPtr, badge: u64, rights: Rights) -> Result<Cap, SysError> {
        let mut cap = self.cap(pid, slot)?;
        if !matches!(cap.obj, Obj::Endpoint(_) | Obj::Notification(_)) {
            return Err(SysError::WrongType);
        }
        if badge == 0 {
            return Err(SysError::InvalidArgument);
        }
        if cap.badge != 0 {
            return Err(SysError::AlreadyBadged);
        }
        cap.badge = badge;
        cap.rights = cap.rights.intersect(rights);
        Ok(cap)
    }

    pub fn delete(&mut self, pid: Pid, slot: CPtr) -> Result<(), SysError> {
        let p = &mut self.procs[pid as usize];
        let cap = p
            .cspace
            .get_mut(slot as usize)
            .and_then(Option::take)
            .ok_or(SysError::InvalidCap)?;
        p.names.retain(|_, s| *s != slot);
        self.release(cap);
        Ok(())
    }

    // ----- entering the kernel, dying -----

    /// Counts a kernel entry of `pid` (a step) and fires the kill points it reaches.
    /// Returns whether `pid` was killed by one of them; a process that is not ready (it
    /// is dying and unwinds) gets no entry: [`SysError::IllegalOperation`].
    #[inline(always)]
    pub fn enter(&mut self, pid: Pid, call: Syscall) -> Result<bool, SysError> {
        let p = &mut self.procs[pid as usize];
        if p.state != PState::Ready {
            return Err(SysError::IllegalOperation);
        }
        p.entries += 1;
        self.tick();
        self.record(Event::Syscall {
            step: self.step,
            pid,
            call,
        });
        if self.inject.kills.is_empty() {
            return Ok(false);
        }
        self.fire_entry_kills(pid);
        Ok(self.is_dying(pid))
    }

    /// Fires the kill point at the current entry of `pid`, if there is one.
    #[cold]
    fn fire_entry_kills(&mut self, pid: Pid) {
        let p = &self.procs[pid as usize];
        let hit = self.inject.kills.iter().position(|k| {
            matches!(k, KillPoint::AtEntry { process, entry } if *process == p.name && *entry == p.entries)
        });
        if let Some(i) = hit {
            self.inject.kills.remove(i);
            self.kill(pid, Exit::Killed { step: self.step });
        }
    }

    /// Advances time by one step and fires the step kill points. A point whose process
    /// has not been started yet waits for it; one whose process already ended is dropped.
    #[inline]
    fn tick(&mut self) {
        self.step += 1;
        if !self.inject.kills.is_empty() {
            self.fire_step_kills();
        }
    }

    fn fire_step_kills(&mut self) {
        let mut i = 0;
        while i < self.inject.kills.len() {
            let KillPoint::AtStep { process, step } = &self.inject.kills[i] else {
                i += 1;
                continue;
            };
            if *step > self.step {
                i += 1;
                continue;
            }
            let named = |p: &ProcObj| p.name == *process;
            let running = self
                .procs
                .iter()
                .position(|p| named(p) && matches!(p.state, PState::Ready | PState::Blocked(_)));
            let waiting = self
                .procs
                .iter()
                .any(|p| named(p) && p.state == PState::Created);
            match running {
                Some(v) => {
                    self.inject.kills.remove(i);
                    self.kill(v as Pid, Exit::Killed { step: self.step });
                }
                None if waiting => i += 1,
                None => {
                    self.inject.kills.remove(i);
                }
            }
        }
    }

    /// Ends a process with a coroutine at shutdown (its coroutine then unwinds);
    /// one already dying keeps how it ended.
    pub fn shut_down(&mut self, pid: Pid) {
        if self.procs[pid as usize].state != PState::Dying {
            self.procs[pid as usize].exit = Some(Exit::Shutdown);
            self.set_state(pid, PState::Dying);
        }
    }

    #[inline(always)]
    pub fn is_dying(&self, pid: Pid) -> bool {
        // The count first: it is kept with every state change and is usually zero.
        self.dying != 0 && matches!(self.procs[pid as usize].state, PState::Dying)
    }

    /// Ends a process: it leaves every queue, its capabilities are deleted (frames whose
    /// last reference it held return to the pool), and its supervisor is told. Its
    /// coroutine, if it has one, unwinds when next resumed.
    pub fn kill(&mut self, pid: Pid, exit: Exit) {
        let state = self.procs[pid as usize].state;
        match state {
            PState::Dying | PState::Dead => return,
            PState::Blocked(Wait::Receive(e)) => {
                self.eps[e as usize].receivers.retain(|&r| r != pid);
            }
            PState::Blocked(Wait::Send(e)) | PState::Blocked(Wait::Call(e)) => {
                let q = &mut self.eps[e as usize].queue;
                if let Some(i) = q.iter().position(|m| m.from == Some(pid)) {
                    let m = q.remove(i).expect("found");
                    for c in m.caps {
                        self.release(c);
                    }
                }
            }
            PState::Blocked(Wait::Notification(n)) => {
                self.ntfns[n as usize].waiters.retain(|&w| w != pid);
            }
            PState::Blocked(Wait::Reply(_)) | PState::Ready | PState::Created => {}
        }
        let p = &mut self.procs[pid as usize];
        p.reply_to = None;
        p.inbox = None;
        p.landing = None;
        p.landed = None;
        p.caps_in.clear();
        if let Some(n) = p.bound.take() {
            self.ntfns[n as usize].bound = None;
        }
        let caps: Vec<Cap> = p.cspace.iter_mut().filter_map(Option::take).collect();
        let mapped = std::mem::take(&mut p.mapped);
        p.names.clear();
        let fault = p.fault.take();
        let has_coroutine = p.has_coroutine;
        let name = p.name.clone();
        p.entry = None;
        p.exit = Some(exit.clone());
        self.set_state(
            pid,
            if has_coroutine {
                PState::Dying
            } else {
                PState::Dead
            },
        );
        for c in caps.into_iter().chain(mapped) {
            self.release(c);
        }
        self.notes.push(Note::Died {
            step: self.step,
            pid,
            name,
            exit: exit.clone(),
        });
        if let Some((ep, badge)) = fault {
            self.eps[ep as usize].queue.push_back(Pending {
                from: None,
                badge,
                bytes: vec![DeathCause::of(&exit) as u8],
                caps: Vec::new(),
                call: false,
                ready_at: self.step,
            });
            self.try_deliver(ep);
        }
    }

    /// The coroutine of a dying process has unwound (or its program ended).
    pub fn reaped(&mut self, pid: Pid) {
        if self.procs[pid as usize].state == PState::Dying {
            self.set_state(pid, PState::Dead);
        }
        self.procs[pid as usize].has_coroutine = false;
    }

    // ----- IPC -----

    fn delay(&mut self) -> u64 {
        if self.inject.delay_per_mille > 0 && self.rng.chance(self.inject.delay_per_mille) {
            1 + self.rng.below(self.inject.max_delay.max(1))
        } else {
            0
        }
    }

    /// Snapshots the capabilities a message carries (each retained).
    fn carried(&mut self, pid: Pid, caps: &[CPtr]) -> Result<Vec<Cap>, SysError> {
        if caps.is_empty() {
            return Ok(Vec::new());
        }
        let caps = caps
            .iter()
            .map(|&s| self.cap(pid, s))
            .collect::<Result<Vec<Cap>, SysError>>()?;
        for c in &caps {
            self.retain(c);
        }
        Ok(caps)
    }

    /// Send, call or non-blocking send through an endpoint capability.
    pub fn send(
        &mut self,
        pid: Pid,
        slot: CPtr,
        bytes: &[u8],
        caps: &[CPtr],
        call: bool,
        blocking: bool,
    ) -> Result<bool, SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Endpoint, Rights::WRITE)?;
        if !caps.is_empty() && !cap.rights.contains(Rights::GRANT) {
            return Err(SysError::NoRights);
        }
        let Obj::Endpoint(ep) = cap.obj else {
            unreachable!("checked kind")
        };
        let caps = self.carried(pid, caps)?;
        let delay = if blocking { self.delay() } else { 0 };
        let e = &mut self.eps[ep as usize];
        // A receiver waits and no message is queued before this one: hand it over now
        // (the path every call to an idle server takes). Non-blocking sends are only
        // delivered this way.
        if !blocking || (delay == 0 && e.queue.is_empty()) {
            match e.receivers.pop_front() {
                Some(r) => {
                    self.deliver(r, Some(pid), cap.badge, bytes, caps, call);
                    return Ok(true);
                }
                None if !blocking => {
                    // seL4_NBSend: dropped when nobody waits.
                    for c in caps {
                        self.release(c);
                    }
                    return Ok(false);
                }
                None => {}
            }
        }
        self.eps[ep as usize].queue.push_back(Pending {
            from: Some(pid),
            badge: cap.badge,
            bytes: bytes.to_vec(),
            caps,
            call,
            ready_at: self.step + delay,
        });
        self.set_state(
            pid,
            PState::Blocked(if call { Wait::Call(ep) } else { Wait::Send(ep) }),
        );
        self.try_deliver(ep);
        Ok(true)
    }

    /// Receive from an endpoint (a bound notification that has been signalled comes
    /// first). Returns whether something was delivered now (else `pid` is blocked).
    pub fn recv(&mut self, pid: Pid, slot: CPtr) -> Result<bool, SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Endpoint, Rights::READ)?;
        let Obj::Endpoint(ep) = cap.obj else {
            unreachable!("checked kind")
        };
        if let Some(n) = self.procs[pid as usize].bound {
            let word = std::mem::take(&mut self.ntfns[n as usize].word);
            if word != 0 {
                self.procs[pid as usize].inbox = Some(Inbox::Signal(word));
                self.set_state(pid, PState::Ready);
                return Ok(true);
            }
        }
        self.set_state(pid, PState::Blocked(Wait::Receive(ep)));
        self.eps[ep as usize].receivers.push_back(pid);
        self.try_deliver(ep);
        Ok(matches!(self.procs[pid as usize].state, PState::Ready))
    }

    /// Replies to the caller `pid` last received a call from. A caller that has gone
    /// (killed) is not an error: the reply is dropped.
    pub fn reply(&mut self, pid: Pid, bytes: &[u8], caps: &[CPtr]) -> Result<(), SysError> {
        let caps = self.carried(pid, caps)?;
        let Some(caller) = self.procs[pid as usize].reply_to.take() else {
            for c in caps {
                self.release(c);
            }
            return Ok(());
        };
        if self.procs[caller as usize].state != PState::Blocked(Wait::Reply(pid)) {
            for c in caps {
                self.release(c);
            }
            return Ok(());
        }
        let slots = self.install_all(caller, caps);
        self.put_message(caller, bytes);
        let c = &mut self.procs[caller as usize];
        c.inbox = Some(Inbox::Reply);
        c.caps_in = slots;
        self.set_state(caller, PState::Ready);
        Ok(())
    }

    /// Registers `pid`'s own buffer for the message or reply it is about to wait for in
    /// the system call it is in now. The registration ends with [`Kernel::take_woken`]
    /// in the same system call, or when `pid` is killed.
    #[inline(always)]
    pub fn set_landing(&mut self, pid: Pid, landing: Landing) {
        self.procs[pid as usize].landing = Some(landing);
    }

    /// What `pid` takes back when its blocking system call returns: what woke it (none
    /// if the call failed without blocking), the length of the message put in its
    /// registered buffer if one was (else the message, if any, is in its message buffer),
    /// and the capabilities that came with it. Ends the buffer's registration.
    #[inline(always)]
    pub fn take_woken(&mut self, pid: Pid) -> (Option<Inbox>, Option<usize>, Vec<CPtr>) {
        let p = &mut self.procs[pid as usize];
        p.landing = None;
        let caps = if p.caps_in.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut p.caps_in)
        };
        (p.inbox.take(), p.landed.take(), caps)
    }

    /// Gives `bytes` to `to`, which waits for them: into its registered buffer if it has
    /// one, else into its message buffer.
    #[inline(always)]
    fn put_message(&mut self, to: Pid, bytes: &[u8]) {
        let p = &mut self.procs[to as usize];
        match p.landing {
            Some(landing) => {
                // SAFETY: `to` registered this buffer (a `&mut [u8]` it holds) for the
                // system call it is in now and does not touch it until it takes the
                // registration back in that call (`take_woken`, after it runs again);
                // a kill drops the registration first. Messages are only given to a
                // process waiting in such a call, so the buffer is alive and unused.
                unsafe { landing.fill(bytes) };
                p.landed = Some(bytes.len());
            }
            None => p.msg.set(bytes),
        }
    }

    /// The call fastpath (as seL4's): a call without capabilities through an endpoint
    /// capability with the write right, to an endpoint whose receiver already waits with
    /// no message queued before this one and no delivery delay to draw. It does exactly
    /// what [`Kernel::send`] then does (hand the message to the receiver, which owes
    /// `pid` a reply) without the general checks. Returns `false`, having changed nothing,
    /// when the case does not apply; the caller then takes [`Kernel::send`]. `landing`:
    /// the caller's buffer for the reply, registered as [`Kernel::set_landing`] does.
    #[inline]
    pub fn call_fast(
        &mut self,
        pid: Pid,
        slot: CPtr,
        bytes: &[u8],
        landing: Option<Landing>,
    ) -> bool {
        let Some(Some(cap)) = self.procs[pid as usize].cspace.get(slot as usize) else {
            return false;
        };
        let (Obj::Endpoint(ep), badge) = (cap.obj, cap.badge) else {
            return false;
        };
        if !cap.rights.contains(Rights::WRITE) || self.inject.delay_per_mille != 0 {
            return false;
        }
        let e = &mut self.eps[ep as usize];
        if !e.queue.is_empty() {
            return false;
        }
        let Some(r) = e.receivers.pop_front() else {
            return false;
        };
        self.put_message(r, bytes);
        let rp = &mut self.procs[r as usize];
        debug_assert_eq!(rp.state, PState::Blocked(Wait::Receive(ep)));
        rp.inbox = Some(Inbox::Message {
            badge,
            kind: RecvKind::Call,
        });
        rp.reply_to = Some(pid);
        rp.state = PState::Ready;
        self.ready.set(r, true);
        // The caller is running, so ready (it entered the kernel).
        let me = &mut self.procs[pid as usize];
        me.state = PState::Blocked(Wait::Reply(r));
        me.landing = landing;
        self.ready.set(pid, false);
        true
    }

    /// The reply-and-receive fastpath: a reply without capabilities to a caller that
    /// waits for it, then a receive through an endpoint capability with the read right
    /// on an endpoint with no message queued, by a process whose bound notification (if
    /// any) has not been signalled, so the receiver blocks. It does exactly what
    /// [`Kernel::reply`] then [`Kernel::recv`] do in that case. Returns `false`, having
    /// changed nothing, when the case does not apply. `landing`: the receiver's buffer for
    /// the next message, registered as [`Kernel::set_landing`] does.
    #[inline]
    pub fn reply_recv_fast(
        &mut self,
        pid: Pid,
        slot: CPtr,
        bytes: &[u8],
        landing: Option<Landing>,
    ) -> bool {
        let me = &self.procs[pid as usize];
        let Some(caller) = me.reply_to else {
            return false;
        };
        let Some(Some(cap)) = me.cspace.get(slot as usize) else {
            return false;
        };
        let Obj::Endpoint(ep) = cap.obj else {
            return false;
        };
        if !cap.rights.contains(Rights::READ)
            || me.bound.is_some_and(|n| self.ntfns[n as usize].word != 0)
            || !self.eps[ep as usize].queue.is_empty()
            || self.procs[caller as usize].state != PState::Blocked(Wait::Reply(pid))
        {
            return false;
        }
        self.put_message(caller, bytes);
        let c = &mut self.procs[caller as usize];
        c.inbox = Some(Inbox::Reply);
        c.state = PState::Ready;
        self.ready.set(caller, true);
        let me = &mut self.procs[pid as usize];
        me.reply_to = None;
        me.state = PState::Blocked(Wait::Receive(ep));
        me.landing = landing;
        self.ready.set(pid, false);
        self.eps[ep as usize].receivers.push_back(pid);
        true
    }

    /// Which waiting message of `ep` to deliver next: the first deliverable one, or with
    /// injected reordering the first deliverable one of a randomly chosen sender.
    fn pick(&mut self, ep: u32) -> Option<usize> {
        let now = self.step;
        let q = &self.eps[ep as usize].queue;
        let first = q.iter().position(|m| m.ready_at <= now)?;
        if self.inject.reorder_per_mille == 0 || q.len() == 1 {
            return Some(first);
        }
        let mut firsts: Vec<usize> = Vec::new();
        for (i, m) in q.iter().enumerate() {
            if m.ready_at > now {
                continue;
            }
            // One sender's messages stay in order (kernel messages count as one sender).
            if q.iter()
                .take(i)
                .any(|o| o.from == m.from && o.ready_at <= now)
            {
                continue;
            }
            firsts.push(i);
        }
        if firsts.len() > 1 && self.rng.chance(self.inject.reorder_per_mille) {
            Some(firsts[self.rng.below(firsts.len() as u64) as usize])
        } else {
            Some(first)
        }
    }

    /// Matches waiting receivers of `ep` with its deliverable messages.
    fn try_deliver(&mut self, ep: u32) {
        while !self.eps[ep as usize].receivers.is_empty() {
            let Some(i) = self.pick(ep) else { return };
            let m = self.eps[ep as usize].queue.remove(i).expect("picked");
            let r = self.eps[ep as usize]
                .receivers
                .pop_front()
                .expect("checked");
            self.deliver(r, m.from, m.badge, &m.bytes, m.caps, m.call);
        }
    }

    /// Hands a message to receiver `r`; a caller (`from`, `None` for the kernel) then waits
    /// for `r`'s reply, a sender goes on.
    fn deliver(
        &mut self,
        r: Pid,
        from: Option<Pid>,
        badge: u64,
        bytes: &[u8],
        caps: Vec<Cap>,
        call: bool,
    ) {
        let slots = self.install_all(r, caps);
        let kind = if call { RecvKind::Call } else { RecvKind::Send };
        self.put_message(r, bytes);
        let rp = &mut self.procs[r as usize];
        rp.inbox = Some(Inbox::Message { badge, kind });
        rp.caps_in = slots;
        rp.reply_to = if call { from } else { None };
        self.set_state(r, PState::Ready);
        if let Some(s) = from {
            self.set_state(
                s,
                if call {
                    PState::Blocked(Wait::Reply(r))
                } else {
                    PState::Ready
                },
            );
        }
    }

    /// The earliest step at which a delayed message becomes deliverable to a waiting
    /// receiver.
    fn next_due(&self) -> Option<u64> {
        self.eps
            .iter()
            .filter(|e| !e.receivers.is_empty())
            .flat_map(|e| e.queue.iter().map(|m| m.ready_at))
            .filter(|&t| t > self.step)
            .min()
    }

    /// Delivers delayed messages that became due to waiting receivers; returns whether
    /// any was delivered.
    fn deliver_due(&mut self) -> bool {
        let mut any = false;
        for ep in 0..self.eps.len() as u32 {
            let e = &self.eps[ep as usize];
            if !e.receivers.is_empty() && !e.queue.is_empty() {
                let before = self.eps[ep as usize].queue.len();
                self.try_deliver(ep);
                any |= self.eps[ep as usize].queue.len() != before;
            }
        }
        any
    }

    // ----- notifications -----

    fn notify(&mut self, n: u32, badge: u64) {
        let nt = &mut self.ntfns[n as usize];
        if let Some(w) = nt.waiters.pop_front() {
            self.procs[w as usize].inbox = Some(Inbox::Signal(badge));
            self.set_state(w, PState::Ready);
            return;
        }
        if let Some(b) = nt.bound {
            if let PState::Blocked(Wait::Receive(ep)) = self.procs[b as usize].state {
                self.eps[ep as usize].receivers.retain(|&r| r != b);
                let word = std::mem::take(&mut self.ntfns[n as usize].word) | badge;
                self.procs[b as usize].inbox = Some(Inbox::Signal(word));
                self.set_state(b, PState::Ready);
                return;
            }
        }
        self.ntfns[n as usize].word |= badge;
    }

    pub fn signal(&mut self, pid: Pid, slot: CPtr) -> Result<(), SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Notification, Rights::WRITE)?;
        let Obj::Notification(n) = cap.obj else {
            unreachable!("checked kind")
        };
        self.notify(n, cap.badge);
        Ok(())
    }

    /// Wait (blocking) or poll: returns the word if it was non-zero.
    pub fn wait(&mut self, pid: Pid, slot: CPtr, blocking: bool) -> Result<Option<u64>, SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Notification, Rights::READ)?;
        let Obj::Notification(n) = cap.obj else {
            unreachable!("checked kind")
        };
        let word = std::mem::take(&mut self.ntfns[n as usize].word);
        if word != 0 || !blocking {
            return Ok(Some(word));
        }
        self.ntfns[n as usize].waiters.push_back(pid);
        self.set_state(pid, PState::Blocked(Wait::Notification(n)));
        Ok(None)
    }

    pub fn bind(&mut self, pid: Pid, slot: CPtr) -> Result<(), SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Notification, Rights::READ)?;
        let Obj::Notification(n) = cap.obj else {
            unreachable!("checked kind")
        };
        if self.ntfns[n as usize].bound.is_some() || self.procs[pid as usize].bound.is_some() {
            return Err(SysError::IllegalOperation);
        }
        self.ntfns[n as usize].bound = Some(pid);
        self.procs[pid as usize].bound = Some(n);
        Ok(())
    }

    // ----- frames -----

    fn frame(&self, pid: Pid, slot: CPtr, need: Rights) -> Result<(u64, u64), SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Frame, need)?;
        let Obj::Frame(f) = cap.obj else {
            unreachable!("checked kind")
        };
        let fr = &self.frames[f as usize];
        Ok((fr.paddr, fr.pages * FRAME))
    }

    pub fn frame_info(&self, pid: Pid, slot: CPtr) -> Result<(u64, u64), SysError> {
        self.frame(pid, slot, Rights::NONE)
    }

    pub fn frame_read(
        &self,
        pid: Pid,
        slot: CPtr,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SysError> {
        let (pa, len) = self.frame(pid, slot, Rights::READ)?;
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > len) {
            return Err(SysError::RangeError);
        }
        self.mem
            .read(pa + offset, buf)
            .map_err(|_| SysError::RangeError)
    }

    pub fn frame_write(
        &self,
        pid: Pid,
        slot: CPtr,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SysError> {
        let (pa, len) = self.frame(pid, slot, Rights::WRITE)?;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > len)
        {
            return Err(SysError::RangeError);
        }
        self.mem
            .write(pa + offset, data)
            .map_err(|_| SysError::RangeError)
    }

    /// Maps a frame (read-write) into the process: the mapping keeps it alive until the
    /// process ends. Returns its physical address and size.
    pub fn map_frame(&mut self, pid: Pid, slot: CPtr) -> Result<(u64, u64), SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Frame, Rights::RW)?;
        let r = self.frame(pid, slot, Rights::RW)?;
        self.retain(&cap);
        self.procs[pid as usize].mapped.push(cap);
        Ok(r)
    }

    // ----- IOMMUs and devices -----

    pub fn mmio(&self, pid: Pid, slot: CPtr) -> Result<Box<dyn RegisterIo + Send>, SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Mmio, Rights::NONE)?;
        let Obj::Mmio(u) = cap.obj else {
            unreachable!("checked kind")
        };
        let mut unit = self.iommus[u as usize]
            .unit
            .try_lock()
            .expect("an IOMMU model is only used by the running process");
        Ok(unit.registers())
    }

    pub fn irq_set_notification(
        &mut self,
        pid: Pid,
        irq: CPtr,
        ntfn: CPtr,
    ) -> Result<(), SysError> {
        let cap = self.cap_as(pid, irq, ObjKind::Irq, Rights::NONE)?;
        let n = self.cap_as(pid, ntfn, ObjKind::Notification, Rights::WRITE)?;
        let (Obj::Irq(u), Obj::Notification(ni)) = (cap.obj, n.obj) else {
            unreachable!("checked kinds")
        };
        self.iommus[u as usize].irq = Some((ni, n.badge));
        Ok(())
    }

    pub fn irq_ack(&mut self, pid: Pid, irq: CPtr) -> Result<(), SysError> {
        let cap = self.cap_as(pid, irq, ObjKind::Irq, Rights::NONE)?;
        let Obj::Irq(u) = cap.obj else {
            unreachable!("checked kind")
        };
        let io = &mut self.iommus[u as usize];
        io.masked = false;
        if std::mem::take(&mut io.latched) {
            self.raise(u);
        }
        Ok(())
    }

    /// The IOMMU raised its interrupt: signal its notification unless a delivered one is
    /// still unacknowledged (then it stays pending until the acknowledgement).
    fn raise(&mut self, u: u32) {
        let io = &mut self.iommus[u as usize];
        match io.irq {
            Some((n, badge)) if !io.masked => {
                io.masked = true;
                self.notify(n, badge);
            }
            _ => io.latched = true,
        }
    }

    fn device(&self, pid: Pid, slot: CPtr) -> Result<u32, SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Device, Rights::NONE)?;
        let Obj::Device(d) = cap.obj else {
            unreachable!("checked kind")
        };
        Ok(d)
    }

    pub fn device_info(&self, pid: Pid, slot: CPtr) -> Result<DeviceDesc, SysError> {
        let d = &self.devices[self.device(pid, slot)? as usize];
        Ok(DeviceDesc {
            iommu: d.iommu,
            stream: d.stream,
            buffer_bytes: d.buffer.len() as u64,
        })
    }

    pub fn device_submit(&mut self, pid: Pid, slot: CPtr, job: DmaJob) -> Result<u64, SysError> {
        let d = self.device(pid, slot)?;
        let d = &mut self.devices[d as usize];
        if job.len == 0
            || job
                .buffer_offset
                .checked_add(job.len)
                .is_none_or(|e| e > d.buffer.len() as u64)
            || job.iova.checked_add(job.len).is_none()
        {
            return Err(SysError::RangeError);
        }
        let id = d.next_id;
        d.next_id += 1;
        if d.jobs.is_empty() {
            self.busy_devices += 1;
        }
        d.jobs.push_back(ActiveJob { id, job, done: 0 });
        Ok(id)
    }

    /// The device sends a page request to its IOMMU (as its driver programmed it to);
    /// returns whether the IOMMU took it.
    pub fn device_page_request(
        &mut self,
        pid: Pid,
        slot: CPtr,
        request: PageRequest,
    ) -> Result<bool, SysError> {
        let d = self.device(pid, slot)?;
        let (u, stream) = {
            let dev = &self.devices[d as usize];
            (dev.iommu, dev.stream)
        };
        let unit = self.iommus[u as usize].unit.clone();
        let (taken, irq) = {
            let mut unit = unit
                .try_lock()
                .expect("an IOMMU model is only used by the running process");
            let taken = unit.page_request(stream, request);
            (taken, unit.take_interrupt())
        };
        if irq {
            self.raise(u);
        }
        Ok(taken)
    }

    pub fn device_results(&mut self, pid: Pid, slot: CPtr) -> Result<Vec<JobStatus>, SysError> {
        let d = self.device(pid, slot)?;
        Ok(std::mem::take(&mut self.devices[d as usize].finished))
    }

    pub fn device_buffer(
        &mut self,
        pid: Pid,
        slot: CPtr,
        offset: u64,
        read: Option<&mut [u8]>,
        write: Option<&[u8]>,
    ) -> Result<(), SysError> {
        let d = self.device(pid, slot)?;
        let d = &mut self.devices[d as usize];
        let len = read.as_ref().map_or(0, |b| b.len()) + write.map_or(0, |b| b.len());
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= d.buffer.len() as u64)
            .ok_or(SysError::RangeError)? as usize;
        let range = offset as usize..end;
        if let Some(b) = read {
            b.copy_from_slice(&d.buffer[range]);
        } else if let Some(b) = write {
            d.buffer[range].copy_from_slice(b);
        }
        Ok(())
    }

    pub fn device_set_notification(
        &mut self,
        pid: Pid,
        slot: CPtr,
        ntfn: CPtr,
    ) -> Result<(), SysError> {
        let d = self.device(pid, slot)?;
        let n = self.cap_as(pid, ntfn, ObjKind::Notification, Rights::WRITE)?;
        let Obj::Notification(ni) = n.obj else {
            unreachable!("checked kind")
        };
        self.devices[d as usize].completion = Some((ni, n.badge));
        Ok(())
    }

    /// Whether `paddr..paddr+len` lies in one live frame.
    fn frame_live(&self, paddr: u64, len: u64) -> bool {
        self.live_frames
            .range(..=paddr)
            .next_back()
            .is_some_and(|(&start, &f)| {
                paddr + len <= start + self.frames[f as usize].pages * FRAME
            })
    }

    /// Runs one page of the first job of device `d`.
    fn device_step(&mut self, d: u32) {
        self.tick();
        let dev = &self.devices[d as usize];
        let a = dev.jobs.front().expect("device with work");
        let at = a.job.iova + a.done;
        let n = (FRAME - at % FRAME).min(a.job.len - a.done);
        let write = a.job.direction == DmaDirection::ToMemory;
        let req = DmaRequest {
            stream: dev.stream,
            pasid: a.job.pasid,
            iova: at,
            access: if write { Access::Write } else { Access::Read },
        };
        let boff = (a.job.buffer_offset + a.done) as usize;
        let u = dev.iommu;
        let unit = self.iommus[u as usize].unit.clone();
        let (pa, irq) = {
            let mut unit = unit
                .try_lock()
                .expect("an IOMMU model is only used by the running process");
            let pa = unit.translate(req);
            (pa, unit.take_interrupt())
        };
        let pa = pa.filter(|&pa| self.mem.contains(pa, n));
        self.record(Event::Dma {
            step: self.step,
            device: d,
            iova: at,
            ok: pa.is_some(),
        });
        let result = match pa {
            Some(pa) => {
                if !self.frame_live(pa, n) {
                    self.notes.push(Note::DmaToFreeMemory {
                        step: self.step,
                        device: d,
                        paddr: pa,
                        len: n,
                    });
                }
                let dev = &mut self.devices[d as usize];
                let range = boff..boff + n as usize;
                if write {
                    self.mem
                        .write(pa, &dev.buffer[range])
                        .expect("checked inside RAM");
                } else {
                    self.mem
                        .read(pa, &mut dev.buffer[range])
                        .expect("checked inside RAM");
                }
                self.notes.push(Note::Dma {
                    step: self.step,
                    device: d,
                    iova: at,
                    paddr: pa,
                    len: n,
                    write,
                });
                let a = dev.jobs.front_mut().expect("device with work");
                a.done += n;
                (a.done == a.job.len).then_some(Ok(()))
            }
            None => {
                self.notes.push(Note::DmaBlocked {
                    step: self.step,
                    device: d,
                    iova: at,
                });
                Some(Err(DmaFault { iova: at }))
            }
        };
        if let Some(result) = result {
            let dev = &mut self.devices[d as usize];
            let a = dev.jobs.front_mut().expect("device with work");
            if a.job.repeat > 0 {
                a.job.repeat -= 1;
                a.done = 0;
            } else {
                let id = a.id;
                dev.jobs.pop_front();
                if dev.jobs.is_empty() {
                    self.busy_devices -= 1;
                }
                dev.finished.push(JobStatus { id, result });
                if let Some((n, badge)) = dev.completion {
                    self.notify(n, badge);
                }
            }
        }
        if irq {
            self.raise(u);
        }
    }

    // ----- scheduling -----

    /// Chooses who runs next: a process whose coroutine must unwind, else a random choice
    /// among the ready processes and the devices with work (a device's choice runs one
    /// page of its DMA here and chooses again). Time jumps forward to the next delayed
    /// delivery when nothing else can happen.
    #[inline]
    pub fn schedule(&mut self) -> Next {
        // The common case, decided as the general loop below would decide it: one
        // process ready, no device with work, nobody dying, no delayed deliveries.
        // One test of all four (no early exits: each is a load).
        if self.busy_devices
            | self.dying
            | self.inject.delay_per_mille
            | u32::from(self.shutting_down)
            == 0
        {
            if let Some(p) = self.ready.single() {
                return Next::Run(p);
            }
        }
        self.schedule_general()
    }

    fn schedule_general(&mut self) -> Next {
        loop {
            // A dying process runs first (to unwind its coroutine), else one of the ready
            // ones (kept in pid order by `set_state`).
            if self.dying > 0 {
                if let Some(p) = self
                    .procs
                    .iter()
                    .position(|p| matches!(p.state, PState::Dying) && p.has_coroutine)
                {
                    return Next::Run(p as Pid);
                }
            }
            if self.shutting_down {
                return Next::Idle;
            }
            // Without delays every message is delivered when sent or received.
            if self.inject.delay_per_mille > 0 && self.deliver_due() {
                continue;
            }
            let count = u64::from(self.ready.len());
            let busy = u64::from(self.busy_devices);
            if count + busy == 0 {
                match self.next_due() {
                    Some(t) => {
                        while self.step < t {
                            self.tick();
                        }
                        continue;
                    }
                    None => return Next::Idle,
                }
            }
            let k = if count + busy == 1 {
                0
            } else {
                self.rng.below(count + busy)
            };
            if k < count {
                return Next::Run(self.ready.nth(k as u32));
            }
            let d = self
                .devices
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.jobs.is_empty())
                .nth((k - count) as usize)
                .expect("counted")
                .0;
            self.device_step(d as u32);
        }
    }

    // ----- process management (the root task's) -----

    fn untyped(&self, pid: Pid, slot: CPtr) -> Result<(), SysError> {
        self.cap_as(pid, slot, ObjKind::Untyped, Rights::NONE)
            .map(|_| ())
    }

    pub fn create(
        &mut self,
        pid: Pid,
        untyped: CPtr,
        what: Create,
        name: &str,
    ) -> Result<CPtr, SysError> {
        self.untyped(pid, untyped)?;
        let obj = match what {
            Create::Endpoint => self.new_endpoint(name),
            Create::Notification => self.new_notification(name),
            Create::Frame { pages } => self.new_frame(pages)?,
            Create::Process { daemon, entry } => {
                Obj::Process(self.new_process(name, daemon, entry))
            }
        };
        Ok(self.install_new(pid, obj, None))
    }

    fn child(&self, pid: Pid, slot: CPtr) -> Result<Pid, SysError> {
        let cap = self.cap_as(pid, slot, ObjKind::Process, Rights::NONE)?;
        let Obj::Process(c) = cap.obj else {
            unreachable!("checked kind")
        };
        Ok(c)
    }

    /// Copies (or, with a badge, mints) a capability into a process's space under a name.
    pub fn give(
        &mut self,
        pid: Pid,
        process: CPtr,
        src: CPtr,
        name: &str,
        badge: Option<u64>,
        rights: Rights,
    ) -> Result<CPtr, SysError> {
        let c = self.child(pid, process)?;
        if matches!(self.procs[c as usize].state, PState::Dying | PState::Dead) {
            return Err(SysError::IllegalOperation);
        }
        let cap = match badge {
            Some(b) => self.minted(pid, src, b, rights)?,
            None => {
                let mut cap = self.cap(pid, src)?;
                cap.rights = cap.rights.intersect(rights);
                cap
            }
        };
        self.retain(&cap);
        Ok(self.install(c, cap, Some(name)))
    }

    pub fn set_fault_handler(&mut self, pid: Pid, process: CPtr, ep: CPtr) -> Result<(), SysError> {
        let c = self.child(pid, process)?;
        let cap = self.cap_as(pid, ep, ObjKind::Endpoint, Rights::WRITE)?;
        let Obj::Endpoint(e) = cap.obj else {
            unreachable!("checked kind")
        };
        self.procs[c as usize].fault = Some((e, cap.badge));
        Ok(())
    }

    /// Marks a created process ready; returns its pid so the caller can give it its
    /// coroutine.
    pub fn start(&mut self, pid: Pid, process: CPtr) -> Result<Pid, SysError> {
        let c = self.child(pid, process)?;
        if self.procs[c as usize].state != PState::Created {
            return Err(SysError::IllegalOperation);
        }
        self.set_state(c, PState::Ready);
        Ok(c)
    }

    pub fn kill_child(&mut self, pid: Pid, process: CPtr) -> Result<(), SysError> {
        let c = self.child(pid, process)?;
        self.kill(c, Exit::Killed { step: self.step });
        Ok(())
    }

    // ----- reports -----

    fn describe(&self, w: Wait) -> String {
        match w {
            Wait::Receive(e) => format!("receive on endpoint `{}`", self.eps[e as usize].name),
            Wait::Send(e) => format!("send on endpoint `{}`", self.eps[e as usize].name),
            Wait::Call(e) => format!("call on endpoint `{}`", self.eps[e as usize].name),
            Wait::Reply(p) => format!("reply from `{}`", self.procs[p as usize].name),
            Wait::Notification(n) => {
                format!("notification `{}`", self.ntfns[n as usize].name)
            }
        }
    }

    /// Every process that has not ended, with what it waits for.
    pub fn blocked(&self, daemons: bool) -> Vec<(String, String)> {
        self.procs
            .iter()
            .filter(|p| daemons || !p.daemon)
            .filter_map(|p| match &p.state {
                PState::Blocked(w) => Some((p.name.clone(), self.describe(*w))),
                PState::Ready => Some((p.name.clone(), "ready".into())),
                PState::Created => Some((p.name.clone(), "never started".into())),
                _ => None,
            })
            .collect()
    }

    /// The capabilities process `name` holds: (name it was given under, what it is).
    pub fn caps_of(&self, name: &str) -> Option<Vec<(Option<String>, CapInfo)>> {
        let p = self.procs.iter().rev().find(|p| p.name == name)?;
        Some(
            p.cspace
                .iter()
                .enumerate()
                .filter_map(|(slot, c)| {
                    let c = c.as_ref()?;
                    let given = p
                        .names
                        .iter()
                        .find(|(_, &s)| s as usize == slot)
                        .map(|(n, _)| n.clone());
                    Some((
                        given,
                        CapInfo {
                            kind: c.obj.kind(),
                            badge: c.badge,
                            rights: c.rights,
                        },
                    ))
                })
                .collect(),
        )
    }

    /// Kernel entries each process made.
    pub fn entries(&self) -> Vec<(String, u64)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.entries))
            .collect()
    }

    pub fn exits(&self) -> Vec<(String, Exit)> {
        self.procs
            .iter()
            .filter_map(|p| match &p.state {
                PState::Dead | PState::Dying => p.exit.clone().map(|e| (p.name.clone(), e)),
                _ => None,
            })
            .collect()
    }

    pub fn live_frame_bytes(&self) -> u64 {
        self.pool.live_bytes()
    }

    pub fn iommu_name(&self, u: u32) -> &str {
        &self.iommus[u as usize].name
    }

    pub fn device_name(&self, d: u32) -> &str {
        &self.devices[d as usize].name
    }
}

/// What the root task creates from untyped memory.
pub enum Create {
    Endpoint,
    Notification,
    /// A frame of `pages` physically contiguous 4 KiB pages.
    Frame {
        pages: u64,
    },
    /// A process (not started) running `entry`; a daemon is a server that is expected
    /// to be still waiting for requests when the run ends.
    Process {
        daemon: bool,
        entry: Entry,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process as IPC leaves it: state, inbox, message buffer, whom it owes a reply.
    /// State, inbox, message buffer, owed reply, whether a buffer is registered.
    type ProcIpc = (PState, Option<Inbox>, Vec<u8>, Option<Pid>, bool);

    /// What IPC leaves behind in the kernel, compared between the fastpaths and the
    /// general path.
    #[derive(Debug, PartialEq)]
    struct IpcState {
        step: u64,
        procs: Vec<ProcIpc>,
        ready: Vec<Pid>,
        receivers: Vec<Vec<Pid>>,
        queued: Vec<usize>,
        trace_hash: u64,
    }

    fn ipc_state(k: &Kernel) -> IpcState {
        IpcState {
            step: k.step,
            procs: k
                .procs
                .iter()
                .map(|p| {
                    (
                        p.state,
                        p.inbox,
                        p.msg.as_slice().to_vec(),
                        p.reply_to,
                        p.landing.is_some(),
                    )
                })
                .collect(),
            ready: (0..k.ready.len()).map(|i| k.ready.nth(i)).collect(),
            receivers: k
                .eps
                .iter()
                .map(|e| e.receivers.iter().copied().collect())
                .collect(),
            queued: k.eps.iter().map(|e| e.queue.len()).collect(),
            trace_hash: k.trace_hash,
        }
    }

    /// A client (pid 0) with a badged capability (slot 1) to an endpoint a server
    /// (pid 1, slot 1) waits on; both started.
    fn client_and_waiting_server(inject: Injection) -> Kernel {
        let mem = PhysMem::new(0x1000_0000, 1 << 20);
        let mut k = Kernel::new(1, mem, inject, false);
        let client = k.new_process("client", false, Box::new(|_| {}));
        let server = k.new_process("server", true, Box::new(|_| {}));
        let ep = k.new_endpoint("ep");
        let s = k.install_new(server, ep, Some("ep"));
        assert_eq!(s, 1);
        k.install_outside(client, ep, 0x1A, Rights::WRITE, "ep");
        k.set_state(client, PState::Ready);
        k.set_state(server, PState::Ready);
        assert_eq!(k.recv(server, s), Ok(false));
        k
    }

    #[test]
    fn call_fastpath_does_what_send_does() {
        let mut fast = client_and_waiting_server(Injection::default());
        let mut general = client_and_waiting_server(Injection::default());
        assert!(fast.call_fast(0, 1, b"request", None));
        assert_eq!(general.send(0, 1, b"request", &[], true, true), Ok(true));
        assert_eq!(ipc_state(&fast), ipc_state(&general));
        let after_call = ipc_state(&fast);
        assert_eq!(after_call.procs[0].0, PState::Blocked(Wait::Reply(1)));
        assert_eq!(
            after_call.procs[1].1,
            Some(Inbox::Message {
                badge: 0x1A,
                kind: RecvKind::Call,
            })
        );
        assert_eq!(after_call.procs[1].2, b"request");

        assert!(fast.reply_recv_fast(1, 1, b"reply", None));
        general.reply(1, b"reply", &[]).unwrap();
        assert_eq!(general.recv(1, 1), Ok(false));
        assert_eq!(ipc_state(&fast), ipc_state(&general));
        let after_reply = ipc_state(&fast);
        assert_eq!(after_reply.procs[0].0, PState::Ready);
        assert_eq!(after_reply.procs[0].1, Some(Inbox::Reply));
        assert_eq!(after_reply.procs[0].2, b"reply");
        assert_eq!(after_reply.procs[1].0, PState::Blocked(Wait::Receive(0)));
        assert_eq!(after_reply.receivers, vec![vec![1]]);
    }

    #[test]
    fn registered_buffers_get_the_same_bytes_on_the_fastpaths_and_the_general_path() {
        let mut fast = client_and_waiting_server(Injection::default());
        let mut general = client_and_waiting_server(Injection::default());
        let (mut fast_req, mut general_req) = ([0u8; 4], [0u8; 4]);
        let (mut fast_reply, mut general_reply) = ([0u8; 16], [0u8; 16]);
        fast.set_landing(1, Landing::of(&mut fast_req));
        general.set_landing(1, Landing::of(&mut general_req));
        general.set_landing(0, Landing::of(&mut general_reply));

        assert!(fast.call_fast(0, 1, b"request", Some(Landing::of(&mut fast_reply))));
        assert_eq!(general.send(0, 1, b"request", &[], true, true), Ok(true));
        assert_eq!(ipc_state(&fast), ipc_state(&general));
        // The request went to the server's buffer (as much as fits), not to its message
        // buffer; the length is the whole request's.
        assert!(ipc_state(&fast).procs[1].2.is_empty());
        assert_eq!(fast.take_woken(1).1, Some(7));
        assert_eq!(general.take_woken(1).1, Some(7));
        assert_eq!((&fast_req, &general_req), (b"requ", b"requ"));

        let (mut fast_next, mut general_next) = ([0u8; 8], [0u8; 8]);
        assert!(fast.reply_recv_fast(1, 1, b"reply", Some(Landing::of(&mut fast_next))));
        general.reply(1, b"reply", &[]).unwrap();
        general.set_landing(1, Landing::of(&mut general_next));
        assert_eq!(general.recv(1, 1), Ok(false));
        assert_eq!(ipc_state(&fast), ipc_state(&general));
        assert_eq!(fast.take_woken(0), (Some(Inbox::Reply), Some(5), vec![]));
        assert_eq!(general.take_woken(0), (Some(Inbox::Reply), Some(5), vec![]));
        assert_eq!(&fast_reply[..5], b"reply");
        assert_eq!(fast_reply, general_reply);

        // The receive registered the server's buffer for the next request.
        assert!(fast.call_fast(0, 1, b"again", None));
        assert_eq!(general.send(0, 1, b"again", &[], true, true), Ok(true));
        assert_eq!(fast.take_woken(1).1, Some(5));
        assert_eq!(general.take_woken(1).1, Some(5));
        assert_eq!(
            (&fast_next[..5], &general_next[..5]),
            (&b"again"[..], &b"again"[..])
        );
        // Taken back: the next message goes to the message buffer.
        assert_eq!(fast.take_woken(0).1, None);
        assert!(fast.reply_recv_fast(1, 1, b"reply", None));
        assert!(fast.call_fast(0, 1, b"third", None));
        assert_eq!(ipc_state(&fast).procs[1].2, b"third");
        assert_eq!(fast.take_woken(1).1, None);
    }

    #[test]
    fn a_kill_drops_a_registered_buffer() {
        let mut k = client_and_waiting_server(Injection::default());
        let mut buf = [0u8; 8];
        k.set_landing(1, Landing::of(&mut buf));
        k.kill(1, Exit::Killed { step: k.step });
        assert!(k.procs[1].landing.is_none());
        assert_eq!(k.take_woken(1).1, None);
    }

    #[test]
    fn fastpaths_decline_what_they_do_not_cover_and_change_nothing() {
        // Each declined fastpath is given a buffer to register, and leaves it unregistered.
        let mut buf = [0u8; 8];
        let mut buf = || Some(Landing::of(&mut buf));
        // Delivery delays are drawn by the general path.
        let delays = Injection {
            delay_per_mille: 500,
            max_delay: 3,
            ..Injection::default()
        };
        let mut k = client_and_waiting_server(delays);
        let before = ipc_state(&k);
        assert!(!k.call_fast(0, 1, b"x", buf()));
        assert_eq!(ipc_state(&k), before);
        // A slot that is empty, or a capability without the right needed.
        let mut k = client_and_waiting_server(Injection::default());
        k.install_outside(0, Obj::Endpoint(0), 0x1A, Rights::READ, "read-only");
        let before = ipc_state(&k);
        assert!(!k.call_fast(0, 7, b"x", buf()));
        assert!(!k.call_fast(0, 2, b"x", buf()));
        assert_eq!(k.send(0, 2, b"x", &[], true, true), Err(SysError::NoRights));
        assert_eq!(ipc_state(&k), before);
        // No receiver waits: the call queues (general path).
        let mut k = client_and_waiting_server(Injection::default());
        assert!(k.call_fast(0, 1, b"x", None));
        k.set_state(0, PState::Ready);
        let before = ipc_state(&k);
        assert!(!k.call_fast(0, 1, b"y", buf()));
        assert_eq!(ipc_state(&k), before);
        // Nothing to reply to, or the caller no longer waits for the reply.
        let mut k = client_and_waiting_server(Injection::default());
        k.set_state(1, PState::Ready);
        let before = ipc_state(&k);
        assert!(!k.reply_recv_fast(1, 1, b"r", buf()));
        assert_eq!(ipc_state(&k), before);
        let mut k = client_and_waiting_server(Injection::default());
        assert!(k.call_fast(0, 1, b"x", None));
        k.kill(0, Exit::Killed { step: 0 });
        let before = ipc_state(&k);
        assert!(!k.reply_recv_fast(1, 1, b"r", buf()));
        assert_eq!(ipc_state(&k), before);
        // A message is already queued: the receive takes it (general path).
        let mut k = client_and_waiting_server(Injection::default());
        let third = k.new_process("third", false, Box::new(|_| {}));
        k.install_outside(third, Obj::Endpoint(0), 0x3C, Rights::WRITE, "ep");
        k.set_state(third, PState::Ready);
        assert!(k.call_fast(0, 1, b"x", None));
        assert_eq!(k.send(third, 1, b"queued", &[], true, true), Ok(true));
        let before = ipc_state(&k);
        assert!(!k.reply_recv_fast(1, 1, b"r", buf()));
        assert_eq!(ipc_state(&k), before);
    }

    #[test]
    fn pid_set_counts_and_picks_in_pid_order() {
        let mut s = PidSet::default();
        for p in [130, 3, 64, 0, 63] {
            s.set(p, true);
        }
        s.set(3, true); // already a member: no change
        assert_eq!(s.len(), 5);
        let members: Vec<Pid> = (0..s.len()).map(|k| s.nth(k)).collect();
        assert_eq!(members, vec![0, 3, 63, 64, 130]);
        s.set(63, false);
        s.set(63, false); // not a member any more: no change
        s.set(7, false); // never a member
        assert_eq!(s.len(), 4);
        let members: Vec<Pid> = (0..s.len()).map(|k| s.nth(k)).collect();
        assert_eq!(members, vec![0, 3, 64, 130]);
    }
}
