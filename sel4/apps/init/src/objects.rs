//! init's allocators: free slots of its CNode, kernel objects from RAM untyped memory,
//! and frames of device memory cut out of device untypeds.

use alloc::vec::Vec;

use sel4_rt::sys::{cap_type, init, BootInfo, Cap, CapType, Error, ObjectType, Word};

/// Depth at which init names slots of its own CNode (the guard fills the word).
pub const DEPTH: Word = Word::BITS as Word;

/// Why init could not get what it needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No free slot left in init's CNode.
    NoSlots,
    /// No RAM untyped could hold the object.
    NoMemory(ObjectType),
    /// No device untyped covers the physical address.
    NoDeviceMemory(u64),
    /// The kernel refused an invocation.
    Kernel(&'static str, Error),
}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AllocError::NoSlots => write!(f, "init's CNode is full"),
            AllocError::NoMemory(t) => write!(f, "no untyped memory left for a {t:?}"),
            AllocError::NoDeviceMemory(pa) => {
                write!(f, "no device untyped covers physical address {pa:#x}")
            }
            AllocError::Kernel(what, e) => write!(f, "{what}: kernel error {e:?}"),
        }
    }
}

/// Free slots of init's CNode (bootinfo's `empty` region), handed out in order.
#[derive(Debug)]
pub struct Slots {
    next: Word,
    end: Word,
}

impl Slots {
    /// The empty region bootinfo lists.
    pub fn new(bi: &BootInfo) -> Self {
        Slots {
            next: bi.empty.start,
            end: bi.empty.end,
        }
    }

    /// One free slot.
    pub fn take(&mut self) -> Result<Word, AllocError> {
        self.take_many(1)
    }

    /// `n` consecutive free slots; returns the first.
    pub fn take_many(&mut self, n: Word) -> Result<Word, AllocError> {
        if self.end - self.next < n {
            return Err(AllocError::NoSlots);
        }
        let first = self.next;
        self.next += n;
        Ok(first)
    }

    /// Slots still free.
    pub fn left(&self) -> Word {
        self.end - self.next
    }
}

/// A region of untyped memory init holds a capability to.
#[derive(Debug, Clone, Copy)]
struct Region {
    cap: Cap<cap_type::Untyped>,
    paddr: u64,
    size_bits: u8,
    /// Bytes from the start already retyped (the kernel's free index: it places each
    /// object at the next multiple of the object's size).
    used: u64,
}

impl Region {
    /// Where `count` objects of `2^bits` bytes would go, if they fit.
    fn fit(&self, bits: u64, count: u64) -> Option<u64> {
        let size = 1u64 << bits;
        let at = self.used.checked_add(size - 1)? & !(size - 1);
        let end = at.checked_add(size.checked_mul(count)?)?;
        (end <= 1u64 << self.size_bits).then_some(end)
    }
}

/// Bytes (log2) one object of `kind` takes, `size_bits` being the caller's size for
/// untypeds and CNodes (slots, log2).
fn object_bits(kind: ObjectType, size_bits: Word) -> Word {
    use sel4_rt::sys::object_bits as b;
    match kind {
        ObjectType::Untyped => size_bits,
        ObjectType::TCB => b::TCB,
        ObjectType::Endpoint => b::ENDPOINT,
        ObjectType::Notification => b::NOTIFICATION,
        ObjectType::CapTable => b::SLOT + size_bits,
        ObjectType::X86_PDPT => b::PDPT,
        ObjectType::X64_PML4 => b::PML4,
        ObjectType::X86_4K => b::PAGE,
        ObjectType::X86_LargePage => b::LARGE_PAGE,
        ObjectType::X86_PageTable => b::PAGE_TABLE,
        ObjectType::X86_PageDirectory => b::PAGE_DIR,
    }
}

/// Kernel objects from RAM untypeds, and device frames from device untypeds.
#[derive(Debug)]
pub struct Objects {
    /// Free slots of init's CNode.
    pub slots: Slots,
    ram: Vec<Region>,
    device: Vec<Region>,
    /// Device frames already cut out, by physical address.
    device_frames: Vec<(u64, Cap<cap_type::Page>)>,
}

impl Objects {
    /// Every untyped bootinfo lists: RAM ones for objects (smallest first, so that large
    /// regions stay whole for contiguous DMA pools), device ones for device frames.
    pub fn new(bi: &BootInfo) -> Self {
        let mut ram = Vec::new();
        let mut device = Vec::new();
        for (i, d) in bi.untypeds().iter().enumerate() {
            let region = Region {
                cap: Cap::from_cptr(bi.untyped.start + i as Word),
                paddr: d.paddr(),
                size_bits: d.size_bits,
                used: 0,
            };
            if d.is_device() {
                device.push(region);
            } else {
                ram.push(region);
            }
        }
        ram.sort_by_key(|r| r.size_bits);
        Objects {
            slots: Slots::new(bi),
            ram,
            device,
            device_frames: Vec::new(),
        }
    }

    /// Bytes of RAM untyped memory (as bootinfo listed it).
    pub fn ram_bytes(&self) -> u64 {
        self.ram.iter().map(|r| 1u64 << r.size_bits).sum()
    }

    /// Retypes `count` objects of `kind` (`size_bits` for CNodes and untypeds) into
    /// consecutive fresh slots from the first RAM untyped with room (init keeps each
    /// region's free index as the kernel does, so it only asks where the objects fit);
    /// returns the first slot.
    pub fn retype(
        &mut self,
        kind: ObjectType,
        size_bits: Word,
        count: Word,
    ) -> Result<Word, AllocError> {
        let bits = object_bits(kind, size_bits);
        let region = self
            .ram
            .iter_mut()
            .find(|r| r.fit(bits, count).is_some())
            .ok_or(AllocError::NoMemory(kind))?;
        let slot = self.slots.take_many(count)?;
        region
            .cap
            .retype(kind, size_bits, init::CNODE, 0, 0, slot, count)
            .map_err(|e| AllocError::Kernel("Untyped Retype", e))?;
        region.used = region.fit(bits, count).expect("checked");
        Ok(slot)
    }

    /// One object of `kind`.
    pub fn create<T: CapType>(&mut self, kind: ObjectType) -> Result<Cap<T>, AllocError> {
        self.retype(kind, 0, 1).map(Cap::from_cptr)
    }

    /// A CNode of `2^bits` slots.
    pub fn cnode(&mut self, bits: Word) -> Result<Cap<cap_type::CNode>, AllocError> {
        self.retype(ObjectType::CapTable, bits, 1)
            .map(Cap::from_cptr)
    }

    /// `pages` physically contiguous 4 KiB frames (`pages` a power of two, at most
    /// 2^20): an untyped of exactly that size is split off a RAM region and retyped into
    /// frames in order, which the kernel places one after another. Returns the first
    /// frame's slot (the others follow) and the physical address.
    pub fn contiguous_frames(&mut self, pages: Word) -> Result<(Word, u64), AllocError> {
        assert!(pages.is_power_of_two());
        let bits = 12 + pages.trailing_zeros() as Word;
        let untyped: Cap<cap_type::Untyped> = self
            .retype(ObjectType::Untyped, bits, 1)
            .map(Cap::from_cptr)?;
        let first = self.slots.take_many(pages)?;
        let fan_out = sel4_rt::sys::config::RETYPE_FAN_OUT_LIMIT as Word;
        let mut done = 0;
        while done < pages {
            let n = fan_out.min(pages - done);
            untyped
                .retype(ObjectType::X86_4K, 0, init::CNODE, 0, 0, first + done, n)
                .map_err(|e| AllocError::Kernel("Untyped Retype (frames)", e))?;
            done += n;
        }
        let frame = |i: Word| Cap::<cap_type::Page>::from_cptr(first + i);
        let paddr = frame(0)
            .address()
            .map_err(|e| AllocError::Kernel("Page GetAddress", e))?;
        let last = frame(pages - 1)
            .address()
            .map_err(|e| AllocError::Kernel("Page GetAddress", e))?;
        assert_eq!(
            last,
            paddr + (pages - 1) * 4096,
            "frames of one untyped are not contiguous"
        );
        Ok((first, paddr))
    }

    /// The device frame at physical address `paddr` (4 KiB aligned). The device untyped
    /// covering it is halved until a 4 KiB untyped at `paddr` remains, which becomes the
    /// frame; the other halves stay available. Asking again for the same frame returns a
    /// fresh copy of the capability (a frame capability maps once).
    pub fn device_frame(&mut self, paddr: u64) -> Result<Cap<cap_type::Page>, AllocError> {
        let paddr = paddr & !0xfff;
        if let Some(&(_, cap)) = self.device_frames.iter().find(|(p, _)| *p == paddr) {
            let slot = self.slots.take()?;
            init::CNODE
                .copy(
                    slot,
                    DEPTH,
                    init::CNODE,
                    cap.cptr(),
                    DEPTH,
                    sel4_rt::sys::CapRights::ALL,
                )
                .map_err(|e| AllocError::Kernel("CNode Copy (device frame)", e))?;
            return Ok(Cap::from_cptr(slot));
        }
        let index = self
            .device
            .iter()
            .position(|r| {
                r.size_bits >= 12 && paddr >= r.paddr && paddr - r.paddr < (1u64 << r.size_bits)
            })
            .ok_or(AllocError::NoDeviceMemory(paddr))?;
        let mut region = self.device.swap_remove(index);
        while region.size_bits > 12 {
            let half = region.size_bits - 1;
            let slot = self.slots.take_many(2)?;
            region
                .cap
                .retype(
                    ObjectType::Untyped,
                    Word::from(half),
                    init::CNODE,
                    0,
                    0,
                    slot,
                    2,
                )
                .map_err(|e| AllocError::Kernel("Untyped Retype (device halves)", e))?;
            let low = Region {
                cap: Cap::from_cptr(slot),
                paddr: region.paddr,
                size_bits: half,
                used: 0,
            };
            let high = Region {
                cap: Cap::from_cptr(slot + 1),
                paddr: region.paddr + (1u64 << half),
                size_bits: half,
                used: 0,
            };
            let (keep, spare) = if paddr >= high.paddr {
                (high, low)
            } else {
                (low, high)
            };
            self.device.push(spare);
            region = keep;
        }
        let slot = self.slots.take()?;
        region
            .cap
            .retype(ObjectType::X86_4K, 0, init::CNODE, 0, 0, slot, 1)
            .map_err(|e| AllocError::Kernel("Untyped Retype (device frame)", e))?;
        let cap = Cap::from_cptr(slot);
        self.device_frames.push((paddr, cap));
        Ok(cap)
    }
}
