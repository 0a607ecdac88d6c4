//! Simulated physical memory for the deterministic simulation.
//!
//! One [`PhysMem`] is the machine's RAM: the simulated kernel hands out frames of it,
//! drivers write IOMMU tables and queues into it (through [`SimDma`], the
//! [`DmaMemory`] of the simulation), the IOMMU hardware models walk those tables in it,
//! and simulated devices DMA into it. It is a flat array of 64-bit atomic words, so a
//! word is never torn whichever of them touches it, and the CPU view a driver gets from
//! [`DmaMemory::virt`] is a real pointer into the same words.
//!
//! Addresses are physical addresses from `base` to `base + size`; every access outside
//! that range is an [`OutOfRange`] error (a device reading unbacked memory is a bus
//! error the models report, not a panic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use iommu_hwio::dma::{DmaMemory, PhysAddr, RangeAllocator};

/// Size of a frame (a 4 KiB page).
pub const FRAME: u64 = 4096;

/// An access outside simulated RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    /// First byte of the access.
    pub pa: u64,
    /// Its length.
    pub len: u64,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "physical access {:#x}+{:#x} outside simulated RAM",
            self.pa, self.len
        )
    }
}

impl std::error::Error for OutOfRange {}

/// Simulated RAM.
pub struct PhysMem {
    base: u64,
    words: Box<[AtomicU64]>,
}

impl std::fmt::Debug for PhysMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PhysMem({:#x}..{:#x})", self.base, self.end())
    }
}

impl PhysMem {
    /// RAM from `base` (4 KiB aligned) of `size` bytes (a non-zero multiple of 4 KiB).
    /// Pages are zero and only take host memory once written.
    pub fn new(base: u64, size: usize) -> Arc<Self> {
        assert!(base.is_multiple_of(FRAME), "RAM base must be frame aligned");
        assert!(
            size > 0 && (size as u64).is_multiple_of(FRAME),
            "RAM size must be a non-zero multiple of a frame"
        );
        let n = size / 8;
        let layout = std::alloc::Layout::array::<AtomicU64>(n).expect("RAM size fits a layout");
        // SAFETY: the layout is non-zero sized; zeroed memory is a valid AtomicU64 (0),
        // and the pointer is turned into a boxed slice of exactly that layout, which
        // frees it with the same layout.
        let words = unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut AtomicU64;
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
        };
        Arc::new(PhysMem { base, words })
    }

    /// First physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// One past the last physical address.
    pub fn end(&self) -> u64 {
        self.base + self.words.len() as u64 * 8
    }

    /// Whether `pa..pa+len` is RAM.
    pub fn contains(&self, pa: u64, len: u64) -> bool {
        pa >= self.base && pa.checked_add(len).is_some_and(|e| e <= self.end())
    }

    fn check(&self, pa: u64, len: u64) -> Result<(), OutOfRange> {
        if self.contains(pa, len) {
            Ok(())
        } else {
            Err(OutOfRange { pa, len })
        }
    }

    fn word(&self, pa: u64) -> &AtomicU64 {
        &self.words[((pa - self.base) / 8) as usize]
    }

    /// Reads the naturally aligned 64-bit word at `pa` (one atomic load).
    pub fn read_u64(&self, pa: u64) -> Result<u64, OutOfRange> {
        self.check(pa, 8)?;
        assert!(pa.is_multiple_of(8), "unaligned 64-bit access at {pa:#x}");
        Ok(self.word(pa).load(Ordering::Acquire))
    }

    /// Writes the naturally aligned 64-bit word at `pa` (one atomic store).
    pub fn write_u64(&self, pa: u64, value: u64) -> Result<(), OutOfRange> {
        self.check(pa, 8)?;
        assert!(pa.is_multiple_of(8), "unaligned 64-bit access at {pa:#x}");
        self.word(pa).store(value, Ordering::Release);
        Ok(())
    }

    /// Reads the naturally aligned 32-bit word at `pa`.
    pub fn read_u32(&self, pa: u64) -> Result<u32, OutOfRange> {
        self.check(pa, 4)?;
        assert!(pa.is_multiple_of(4), "unaligned 32-bit access at {pa:#x}");
        let w = self.word(pa & !7).load(Ordering::Acquire);
        Ok((w >> ((pa & 4) * 8)) as u32)
    }

    /// Writes the naturally aligned 32-bit word at `pa` (the other half of its 64-bit
    /// word is untouched, atomically).
    pub fn write_u32(&self, pa: u64, value: u32) -> Result<(), OutOfRange> {
        self.check(pa, 4)?;
        assert!(pa.is_multiple_of(4), "unaligned 32-bit access at {pa:#x}");
        self.update(
            pa & !7,
            0xffff_ffff << ((pa & 4) * 8),
            u64::from(value) << ((pa & 4) * 8),
        );
        Ok(())
    }

    /// Replaces the bits of `mask` in the word at `pa` (aligned, in range) by `bits`.
    fn update(&self, pa: u64, mask: u64, bits: u64) {
        let _ = self
            .word(pa)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some((w & !mask) | (bits & mask))
            });
    }

    /// Copies `buf.len()` bytes from `pa`.
    pub fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.check(pa, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa + i as u64;
            *b = (self.word(a & !7).load(Ordering::Acquire) >> ((a & 7) * 8)) as u8;
        }
        Ok(())
    }

    /// Copies `data` to `pa`.
    pub fn write(&self, pa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.check(pa, data.len() as u64)?;
        for (i, &b) in data.iter().enumerate() {
            let a = pa + i as u64;
            let shift = (a & 7) * 8;
            self.update(a & !7, 0xff << shift, u64::from(b) << shift);
        }
        Ok(())
    }

    /// Sets `len` bytes from `pa` to zero.
    pub fn zero(&self, pa: u64, len: u64) -> Result<(), OutOfRange> {
        self.check(pa, len)?;
        let mut a = pa;
        while a < pa + len {
            if a.is_multiple_of(8) && a + 8 <= pa + len {
                // Only words that are not zero yet are written: RAM never touched reads
                // as zero without the host committing the page.
                let w = self.word(a);
                if w.load(Ordering::Relaxed) != 0 {
                    w.store(0, Ordering::Release);
                }
                a += 8;
            } else {
                let shift = (a & 7) * 8;
                self.update(a & !7, 0xff << shift, 0);
                a += 1;
            }
        }
        Ok(())
    }

    /// A CPU pointer to the byte at `pa` (for [`DmaMemory::virt`]). Accesses through it
    /// must be naturally aligned and at most 64 bits wide to stay atomic.
    pub fn ptr(&self, pa: u64) -> Result<*mut u8, OutOfRange> {
        self.check(pa, 1)?;
        let off = (pa - self.base) as usize;
        Ok(self
            .words
            .as_ptr()
            .cast::<u8>()
            .cast_mut()
            .wrapping_add(off))
    }
}

/// The simulation's [`DmaMemory`]: zeroed, aligned regions of [`PhysMem`] from a
/// window given to one driver. Cloning shares the RAM, not the window.
#[derive(Debug)]
pub struct SimDma {
    mem: Arc<PhysMem>,
    ranges: Mutex<RangeAllocator>,
    live_regions: usize,
}

impl SimDma {
    /// Regions come from `start..start+len` of `mem`.
    pub fn new(mem: Arc<PhysMem>, start: u64, len: u64) -> Self {
        assert!(mem.contains(start, len), "DMA window outside RAM");
        SimDma {
            mem,
            ranges: Mutex::new(RangeAllocator::new(start, len)),
            live_regions: 0,
        }
    }

    /// The RAM.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.mem
    }

    /// Bytes and regions currently allocated (for leak checks).
    pub fn live(&self) -> (u64, usize) {
        (
            self.ranges.lock().expect("not poisoned").live_bytes(),
            self.live_regions,
        )
    }
}

// SAFETY: regions come from a range allocator over a window of `PhysMem` that is only
// handed to this provider, so they are contiguous, aligned, exclusively owned until
// freed, and zeroed here before being returned; `virt` points into the RAM's words,
// which live as long as the `Arc` this provider holds; the simulation's models read the
// same words, so no flush is needed.
unsafe impl DmaMemory for SimDma {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        let pa = self
            .ranges
            .get_mut()
            .expect("not poisoned")
            .alloc(size as u64, align as u64)?;
        self.mem.zero(pa, size as u64).ok()?;
        self.live_regions += 1;
        Some(PhysAddr(pa))
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize, _align: usize) {
        self.ranges
            .get_mut()
            .expect("not poisoned")
            .free(pa.0, size as u64);
        self.live_regions -= 1;
    }

    fn virt(&self, pa: PhysAddr) -> *mut u8 {
        self.mem
            .ptr(pa.0)
            .unwrap_or_else(|e| panic!("driver address outside its memory: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_bytes_and_halves_agree() {
        let m = PhysMem::new(0x8000_0000, 1 << 20);
        m.write_u64(0x8000_0008, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u32(0x8000_0008).unwrap(), 0x5566_7788);
        assert_eq!(m.read_u32(0x8000_000c).unwrap(), 0x1122_3344);
        let mut b = [0u8; 3];
        m.read(0x8000_0009, &mut b).unwrap();
        assert_eq!(b, [0x77, 0x66, 0x55]);
        m.write(0x8000_000a, &[0xaa, 0xbb]).unwrap();
        assert_eq!(m.read_u64(0x8000_0008).unwrap(), 0x1122_3344_bbaa_7788);
        m.write_u32(0x8000_000c, 0xdead_beef).unwrap();
        assert_eq!(m.read_u64(0x8000_0008).unwrap(), 0xdead_beef_bbaa_7788);
        m.zero(0x8000_0009, 6).unwrap();
        assert_eq!(m.read_u64(0x8000_0008).unwrap(), 0xde00_0000_0000_0088);
    }

    #[test]
    fn outside_ram_is_an_error() {
        let m = PhysMem::new(0x1000, 0x2000);
        assert!(m.read_u64(0x0ff8).is_err());
        assert!(m.read_u64(0x2ff8).is_ok());
        assert_eq!(
            m.write(0x2ffc, &[0; 8]),
            Err(OutOfRange { pa: 0x2ffc, len: 8 })
        );
        assert!(m.read(u64::MAX - 2, &mut [0; 8]).is_err());
        assert!(m.ptr(0x3000).is_err());
    }

    #[test]
    fn pointer_view_is_the_same_memory() {
        let m = PhysMem::new(0x4000, 0x1000);
        let p = m.ptr(0x4010).unwrap() as *mut u64;
        // SAFETY: the pointer is 8-byte aligned inside the live RAM; no other thread
        // touches it.
        unsafe { p.write_volatile(42) };
        assert_eq!(m.read_u64(0x4010).unwrap(), 42);
    }

    #[test]
    fn sim_dma_hands_out_zeroed_regions() {
        let m = PhysMem::new(0, 0x10000);
        m.write_u64(0x2000, 7).unwrap();
        let mut d = SimDma::new(m.clone(), 0x2000, 0x4000);
        let pa = d.alloc_zeroed(0x1000, 0x1000).unwrap();
        assert_eq!(pa, PhysAddr(0x2000));
        assert_eq!(m.read_u64(0x2000).unwrap(), 0);
        assert_eq!(d.live(), (0x1000, 1));
        // SAFETY: the region came from alloc_zeroed with this size and alignment.
        unsafe { d.free(pa, 0x1000, 0x1000) };
        assert_eq!(d.live(), (0, 0));
        assert!(d.alloc_zeroed(0x8000, 0x1000).is_none());
    }
}
