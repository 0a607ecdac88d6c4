//! The PASID authority's state and its request handlers.

use alloc::boxed::Box;
use alloc::vec::Vec;

use hashbrown::HashMap;
use ipc_protocol::pasid::{
    Pasid, PasidInfo, PasidRange, PasidReply, PasidRequest, PasidState, SetId, SpaceInfo, PASID_MAX,
};
use ipc_protocol::Error;
use platform::Badge;

use crate::bitmap::{FreeMap, CHUNK};

/// What one caller (a badge) may do. Built from the system description by init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerPolicy {
    pub badge: Badge,
    /// Most PASIDs (active or draining) charged to this caller at once.
    pub max_live: u32,
    /// Most sets this caller may hold at once.
    pub max_sets: u32,
    /// May look up and destroy sets of other callers (init).
    pub admin: bool,
}

/// Configuration of a pasid-server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Highest PASID handed out: `PASID_MAX` for a full 20-bit space, lower for hardware
    /// with fewer bits (SMMUv3 IDR1.SSIDSIZE, VT-d ECAP.PSS + 1).
    pub max_pasid: Pasid,
    pub callers: Vec<CallerPolicy>,
}

impl Config {
    /// The highest PASID that hardware with `bits` PASID bits can carry.
    pub fn max_for_bits(bits: u8) -> Pasid {
        match bits {
            0 => 0,
            1..=19 => (1 << bits) - 1,
            _ => PASID_MAX,
        }
    }
}

/// No slot (PASID 0 is never allocated, so it serves as the list terminator).
const NIL: u32 = 0;
/// `Slot::state` flag: freed or revoked, waiting for its references to drop.
const DRAINING: u32 = 1 << 31;
/// `Slot::state` flag: the PASID of an address space.
const SHARED: u32 = 1 << 30;
const REFS: u32 = SHARED - 1;

/// Per-PASID state, 16 bytes. A slot is in use exactly when its PASID is not free.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Index of the set it is charged to.
    set: u32,
    /// Flags (`DRAINING`, `SHARED`) and the reference count.
    state: u32,
    /// Neighbours in the set's member list.
    next: u32,
    prev: u32,
}

struct Set {
    generation: u32,
    caller: u32,
    owner: u64,
    quota: u32,
    /// PASIDs charged (active or draining).
    live: u32,
    /// First member.
    head: u32,
    /// Not yet destroyed: accepts allocations and can be named by its handle.
    alive: bool,
    /// The slot holds a set (alive, or destroyed with members still draining).
    used: bool,
}

struct Caller {
    policy: CallerPolicy,
    live: u32,
    sets: u32,
}

/// The PASID authority.
pub struct PasidServer {
    max_pasid: Pasid,
    free: FreeMap,
    /// Slot storage in chunks of 64, allocated the first time a PASID in them is used.
    chunks: Vec<Option<Box<[Slot; CHUNK as usize]>>>,
    live: u32,
    sets: Vec<Set>,
    free_sets: Vec<u32>,
    callers: Vec<Caller>,
    caller_index: HashMap<Badge, u32>,
    /// Address space -> its PASID, per caller.
    shared: HashMap<(u32, u64), Pasid>,
    /// PASID -> its address space (only shared PASIDs).
    space_of: HashMap<Pasid, u64>,
}

impl PasidServer {
    pub fn new(config: Config) -> Result<PasidServer, Error> {
        if config.max_pasid == 0 || config.max_pasid > PASID_MAX {
            return Err(Error::Invalid);
        }
        let mut caller_index = HashMap::new();
        let mut callers = Vec::new();
        for policy in config.callers {
            if caller_index
                .insert(policy.badge, callers.len() as u32)
                .is_some()
            {
                return Err(Error::Exists);
            }
            callers.push(Caller {
                policy,
                live: 0,
                sets: 0,
            });
        }
        Ok(PasidServer {
            max_pasid: config.max_pasid,
            free: FreeMap::new(config.max_pasid),
            chunks: Vec::new(),
            live: 0,
            sets: Vec::new(),
            free_sets: Vec::new(),
            callers,
            caller_index,
            shared: HashMap::new(),
            space_of: HashMap::new(),
        })
    }

    /// PASIDs out of circulation (active or draining).
    pub fn live(&self) -> u32 {
        self.live
    }

    /// Highest PASID handed out.
    pub fn max_pasid(&self) -> Pasid {
        self.max_pasid
    }

    /// Heap bytes held by the server's tables (for the memory benchmark).
    pub fn heap_bytes(&self) -> usize {
        use core::mem::size_of;
        let chunk_bytes = size_of::<[Slot; CHUNK as usize]>();
        let chunks = self.chunks.iter().filter(|c| c.is_some()).count() * chunk_bytes;
        chunks
            + self.chunks.capacity() * size_of::<Option<Box<[Slot; CHUNK as usize]>>>()
            + self.free.heap_bytes()
            + self.sets.capacity() * size_of::<Set>()
            + self.free_sets.capacity() * 4
            + self.callers.capacity() * size_of::<Caller>()
            + self.caller_index.allocation_size()
            + self.shared.allocation_size()
            + self.space_of.allocation_size()
    }

    /// Handles one request from the caller with `badge`.
    pub fn handle(&mut self, badge: Badge, req: &PasidRequest) -> Result<PasidReply, Error> {
        let caller = *self.caller_index.get(&badge).ok_or(Error::Denied)?;
        match *req {
            PasidRequest::CreateSet { owner, quota } => self
                .create_set(caller, owner, quota)
                .map(|set| PasidReply::SetCreated { set }),
            PasidRequest::DestroySet { set } => self
                .destroy_set(caller, set)
                .map(|pasids| PasidReply::Revoked { pasids }),
            PasidRequest::Alloc { set, range } => self
                .alloc(caller, set, range)
                .map(|pasid| PasidReply::Allocated { pasid, new: true }),
            PasidRequest::AllocShared { set, space, range } => self
                .alloc_shared(caller, set, space, range)
                .map(|(pasid, new)| PasidReply::Allocated { pasid, new }),
            PasidRequest::Get { pasid } => self.get(caller, pasid).map(|_| PasidReply::Done),
            PasidRequest::Put { pasid } => self.put(caller, pasid).map(|_| PasidReply::Done),
            PasidRequest::Free { pasid } => self.free(caller, pasid).map(|_| PasidReply::Done),
            PasidRequest::Lookup { pasid } => self.lookup(caller, pasid).map(PasidReply::Info),
            PasidRequest::RevokeOwner { owner } => Ok(PasidReply::Revoked {
                pasids: self.revoke_owner(caller, owner),
            }),
            PasidRequest::QuerySpace => {
                let c = &self.callers[caller as usize];
                Ok(PasidReply::Space(SpaceInfo {
                    max_pasid: self.max_pasid,
                    live: self.live,
                    caller_live: c.live,
                    caller_limit: c.policy.max_live,
                }))
            }
        }
    }

    // ----- sets -----

    fn create_set(&mut self, caller: u32, owner: u64, quota: u32) -> Result<SetId, Error> {
        if quota == 0 {
            return Err(Error::Invalid);
        }
        let c = &mut self.callers[caller as usize];
        if c.sets >= c.policy.max_sets {
            return Err(Error::QuotaExceeded);
        }
        c.sets += 1;
        let set = Set {
            generation: 0,
            caller,
            owner,
            quota,
            live: 0,
            head: NIL,
            alive: true,
            used: true,
        };
        let index = match self.free_sets.pop() {
            Some(i) => {
                let generation = self.sets[i as usize].generation;
                self.sets[i as usize] = Set { generation, ..set };
                i
            }
            None => {
                self.sets.push(set);
                self.sets.len() as u32 - 1
            }
        };
        Ok(self.set_id(index))
    }

    fn set_id(&self, index: u32) -> SetId {
        SetId(u64::from(self.sets[index as usize].generation) << 32 | u64::from(index))
    }

    /// The index of a live set named by `id`, if `caller` may use it.
    fn resolve_set(&self, caller: u32, id: SetId, admin_ok: bool) -> Result<u32, Error> {
        let index = id.0 as u32;
        let generation = (id.0 >> 32) as u32;
        let set = self.sets.get(index as usize).ok_or(Error::NotFound)?;
        if !set.alive || set.generation != generation {
            return Err(Error::NotFound);
        }
        if set.caller != caller && !(admin_ok && self.callers[caller as usize].policy.admin) {
            return Err(Error::Denied);
        }
        Ok(index)
    }

    fn destroy_set(&mut self, caller: u32, id: SetId) -> Result<u32, Error> {
        let index = self.resolve_set(caller, id, true)?;
        Ok(self.revoke_set(index))
    }

    /// Revokes every member of set `index` and destroys the set. Members with references
    /// stay draining (charged to the set) until their last reference drops.
    fn revoke_set(&mut self, index: u32) -> u32 {
        let set = &mut self.sets[index as usize];
        set.alive = false;
        let owner_caller = set.caller;
        self.callers[owner_caller as usize].sets -= 1;
        let mut revoked = 0;
        let mut p = set.head;
        while p != NIL {
            let next = self.slot(p).next;
            if self.slot(p).state & DRAINING == 0 {
                revoked += 1;
                self.start_draining(p);
            }
            p = next;
        }
        self.maybe_recycle_set(index);
        revoked
    }

    fn revoke_owner(&mut self, caller: u32, owner: u64) -> u32 {
        let mut revoked = 0;
        for index in 0..self.sets.len() as u32 {
            let s = &self.sets[index as usize];
            if s.alive && s.caller == caller && s.owner == owner {
                revoked += self.revoke_set(index);
            }
        }
        revoked
    }

    fn maybe_recycle_set(&mut self, index: u32) {
        let set = &mut self.sets[index as usize];
        if set.used && !set.alive && set.live == 0 {
            set.used = false;
            set.generation = set.generation.wrapping_add(1);
            self.free_sets.push(index);
        }
    }

    // ----- PASIDs -----

    fn slot(&self, p: Pasid) -> &Slot {
        let chunk = self.chunks[(p / CHUNK) as usize]
            .as_ref()
            .expect("slot of a live PASID");
        &chunk[(p % CHUNK) as usize]
    }

    fn slot_mut(&mut self, p: Pasid) -> &mut Slot {
        let c = (p / CHUNK) as usize;
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, || None);
        }
        let chunk =
            self.chunks[c].get_or_insert_with(|| Box::new([Slot::default(); CHUNK as usize]));
        &mut chunk[(p % CHUNK) as usize]
    }

    /// A live PASID that `caller` owns (or may see, for admin lookups).
    fn resolve_pasid(&self, caller: u32, p: Pasid, admin_ok: bool) -> Result<&Slot, Error> {
        if p == 0 || p > self.max_pasid || self.free.find(p, p).is_some() {
            return Err(Error::Invalid);
        }
        let slot = self.slot(p);
        let owner = self.sets[slot.set as usize].caller;
        if owner != caller && !(admin_ok && self.callers[caller as usize].policy.admin) {
            return Err(Error::Denied);
        }
        Ok(slot)
    }

    fn bounds(&self, range: PasidRange) -> Result<(Pasid, Pasid), Error> {
        let min = range.min.unwrap_or(1);
        let max = range.max.unwrap_or(self.max_pasid).min(self.max_pasid);
        if min == 0 || min > max {
            return Err(Error::Invalid);
        }
        Ok((min, max))
    }

    /// Allocates a PASID charged to set `index` (quota checks included).
    fn alloc_in(
        &mut self,
        caller: u32,
        index: u32,
        min: Pasid,
        max: Pasid,
    ) -> Result<Pasid, Error> {
        let set = &self.sets[index as usize];
        let c = &self.callers[caller as usize];
        if set.live >= set.quota || c.live >= c.policy.max_live {
            return Err(Error::QuotaExceeded);
        }
        // Exhaustion of the whole space is known without searching.
        if self.live == self.max_pasid {
            return Err(Error::NoSpace);
        }
        let p = self.free.find(min, max).ok_or(Error::NoSpace)?;
        self.free.take(p);
        self.live += 1;
        self.callers[caller as usize].live += 1;
        let set = &mut self.sets[index as usize];
        set.live += 1;
        let head = set.head;
        set.head = p;
        if head != NIL {
            self.slot_mut(head).prev = p;
        }
        *self.slot_mut(p) = Slot {
            set: index,
            state: 0,
            next: head,
            prev: NIL,
        };
        Ok(p)
    }

    /// Allocates a private PASID from a set.
    pub fn alloc(&mut self, caller: u32, set: SetId, range: PasidRange) -> Result<Pasid, Error> {
        let index = self.resolve_set(caller, set, false)?;
        let (min, max) = self.bounds(range)?;
        self.alloc_in(caller, index, min, max)
    }

    fn alloc_shared(
        &mut self,
        caller: u32,
        set: SetId,
        space: u64,
        range: PasidRange,
    ) -> Result<(Pasid, bool), Error> {
        let index = self.resolve_set(caller, set, false)?;
        let (min, max) = self.bounds(range)?;
        if let Some(&p) = self.shared.get(&(caller, space)) {
            if self.slot(p).set != index {
                // The address space already has its PASID, charged to another set.
                return Err(Error::Exists);
            }
            if p < min || p > max {
                // The device cannot carry the PASID this address space already uses.
                return Err(Error::Unsupported);
            }
            self.take_ref(p)?;
            return Ok((p, false));
        }
        let p = self.alloc_in(caller, index, min, max)?;
        self.slot_mut(p).state = SHARED | 1;
        self.shared.insert((caller, space), p);
        self.space_of.insert(p, space);
        Ok((p, true))
    }

    fn take_ref(&mut self, p: Pasid) -> Result<(), Error> {
        let slot = self.slot_mut(p);
        if slot.state & DRAINING != 0 {
            // No new references once freed or revoked.
            return Err(Error::Invalid);
        }
        if slot.state & REFS == REFS {
            return Err(Error::NoSpace);
        }
        slot.state += 1;
        Ok(())
    }

    fn get(&mut self, caller: u32, p: Pasid) -> Result<(), Error> {
        self.resolve_pasid(caller, p, false)?;
        self.take_ref(p)
    }

    fn put(&mut self, caller: u32, p: Pasid) -> Result<(), Error> {
        let state = self.resolve_pasid(caller, p, false)?.state;
        if state & REFS == 0 {
            // Drop without take.
            return Err(Error::Invalid);
        }
        self.slot_mut(p).state -= 1;
        if state & DRAINING != 0 && state & REFS == 1 {
            self.release(p);
        }
        Ok(())
    }

    /// Releases the allocation of `p`.
    pub fn free(&mut self, caller: u32, p: Pasid) -> Result<(), Error> {
        let state = self.resolve_pasid(caller, p, false)?.state;
        if state & DRAINING != 0 {
            // Double free.
            return Err(Error::Invalid);
        }
        self.start_draining(p);
        Ok(())
    }

    /// Takes `p` out of use: no new references, no longer its address space's PASID; the
    /// value is released now if nothing refers to it, else when the last reference drops.
    fn start_draining(&mut self, p: Pasid) {
        let state = self.slot(p).state;
        if state & SHARED != 0 {
            if let Some(space) = self.space_of.remove(&p) {
                let caller = self.sets[self.slot(p).set as usize].caller;
                self.shared.remove(&(caller, space));
            }
        }
        if state & REFS == 0 {
            self.release(p);
        } else {
            self.slot_mut(p).state |= DRAINING;
        }
    }

    /// Returns the value of `p` to the free pool.
    fn release(&mut self, p: Pasid) {
        let Slot {
            set: index,
            next,
            prev,
            ..
        } = *self.slot(p);
        if prev != NIL {
            self.slot_mut(prev).next = next;
        } else {
            self.sets[index as usize].head = next;
        }
        if next != NIL {
            self.slot_mut(next).prev = prev;
        }
        *self.slot_mut(p) = Slot::default();
        let set = &mut self.sets[index as usize];
        set.live -= 1;
        let caller = set.caller;
        self.callers[caller as usize].live -= 1;
        self.maybe_recycle_set(index);
        self.free.give_back(p);
        self.live -= 1;
    }

    fn lookup(&self, caller: u32, p: Pasid) -> Result<PasidInfo, Error> {
        let slot = self.resolve_pasid(caller, p, true)?;
        let set = &self.sets[slot.set as usize];
        Ok(PasidInfo {
            pasid: p,
            set: set.alive.then(|| self.set_id(slot.set)),
            owner: set.owner,
            space: self.space_of.get(&p).copied(),
            refs: slot.state & REFS,
            state: if slot.state & DRAINING != 0 {
                PasidState::Draining
            } else {
                PasidState::Active
            },
        })
    }

    /// The internal index of a caller, for direct library use (benchmarks, in-process
    /// callers); requests arriving over IPC go through [`PasidServer::handle`].
    pub fn caller(&self, badge: Badge) -> Option<u32> {
        self.caller_index.get(&badge).copied()
    }
}
