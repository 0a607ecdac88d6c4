//! The stream table (SMMUv3 spec §3.3.2 "Stream table"; §6.3 SMMU_STRTAB_BASE and
//! SMMU_STRTAB_BASE_CFG): linear, or two-level with level-2 tables of `2^SPLIT` STEs
//! allocated when a StreamID in their span is first configured.
//!
//! QEMU's model masks a linear table's base with the table size, so tables are always
//! aligned to their own size (which the architecture also allows).

use alloc::vec::Vec;

use crate::error::{Error, Result, Unsupported};
use crate::features::Features;
use crate::mem::{DmaMemory, PhysAddr, Words};
use crate::regs::{self, field_prep};
use crate::ste::{l1_desc, Ste, STE_BYTES, STE_WORDS};

/// StreamID bits resolved by a level-2 table (256 STEs, 16KB).
pub const STRTAB_SPLIT: u8 = 8;

/// Stream table layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTableFormat {
    /// One contiguous array of STEs.
    Linear,
    /// Level-1 descriptors pointing at level-2 STE arrays.
    TwoLevel,
}

/// The stream table.
#[derive(Debug)]
pub struct StreamTable {
    fmt: StreamTableFormat,
    base: PhysAddr,
    sid_bits: u8,
    l2: Vec<Option<PhysAddr>>,
    fill: Ste,
}

/// Where an STE lives, and the StreamID span whose L1 descriptor was just written (the
/// caller must invalidate it with CFGI_STE_RANGE before use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteSlot {
    /// Address of the STE.
    pub addr: PhysAddr,
    /// `Some((first_sid, log2_span))` when a level-2 table was installed.
    pub new_l2: Option<(u32, u8)>,
}

impl StreamTable {
    fn linear_bytes(sid_bits: u8) -> usize {
        STE_BYTES << sid_bits
    }

    fn l1_bytes(sid_bits: u8) -> usize {
        ((1usize << (sid_bits - STRTAB_SPLIT)) * 8).max(64)
    }

    fn l2_bytes() -> usize {
        STE_BYTES << STRTAB_SPLIT
    }

    /// Allocate a table for `sid_bits`-bit StreamIDs. Every STE starts as `fill` (use
    /// [`Ste::abort`] to silently drop unconfigured streams or [`Ste::invalid`] to have
    /// them reported as C_BAD_STE). Refused if the SMMU lacks the format or StreamID width.
    pub fn new<M: DmaMemory>(
        mem: &mut M,
        f: &Features,
        fmt: StreamTableFormat,
        sid_bits: u8,
        fill: Ste,
    ) -> Result<Self> {
        if sid_bits > f.sid_bits {
            return Err(Unsupported::StreamIdSize.into());
        }
        let (bytes, l2) = match fmt {
            StreamTableFormat::Linear => {
                if sid_bits > 20 {
                    return Err(Error::InvalidField("linear stream table too large"));
                }
                (Self::linear_bytes(sid_bits), Vec::new())
            }
            StreamTableFormat::TwoLevel => {
                if !f.two_level_strtab {
                    return Err(Unsupported::TwoLevelStreamTable.into());
                }
                if sid_bits <= STRTAB_SPLIT {
                    return Err(Error::InvalidField(
                        "two-level stream table needs more than SPLIT bits",
                    ));
                }
                let mut v = Vec::new();
                v.resize(1usize << (sid_bits - STRTAB_SPLIT), None);
                (Self::l1_bytes(sid_bits), v)
            }
        };
        let base = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
        let t = Self {
            fmt,
            base,
            sid_bits,
            l2,
            fill,
        };
        if fmt == StreamTableFormat::Linear && fill != Ste::invalid() {
            // SAFETY: the region is live and `bytes` long.
            let w = unsafe { Words::new(mem, base, bytes / 8) };
            fill_stes(&w, &fill);
        }
        Ok(t)
    }

    /// Format.
    pub fn format(&self) -> StreamTableFormat {
        self.fmt
    }

    /// StreamID bits covered.
    pub fn sid_bits(&self) -> u8 {
        self.sid_bits
    }

    /// Value for SMMU_STRTAB_BASE.
    pub fn base_register(&self) -> u64 {
        regs::STRTAB_BASE_RA | (self.base.0 & regs::STRTAB_BASE_ADDR)
    }

    /// Value for SMMU_STRTAB_BASE_CFG.
    pub fn base_cfg_register(&self) -> u32 {
        let (fmt, split) = match self.fmt {
            StreamTableFormat::Linear => (regs::STRTAB_BASE_CFG_FMT_LINEAR, 0),
            StreamTableFormat::TwoLevel => (regs::STRTAB_BASE_CFG_FMT_2LVL, STRTAB_SPLIT),
        };
        (field_prep(regs::STRTAB_BASE_CFG_FMT, fmt)
            | field_prep(regs::STRTAB_BASE_CFG_SPLIT, u64::from(split))
            | field_prep(regs::STRTAB_BASE_CFG_LOG2SIZE, u64::from(self.sid_bits))) as u32
    }

    /// Whether the table covers `sid`.
    pub fn check_sid(&self, sid: u32) -> Result<()> {
        if u64::from(sid) >> self.sid_bits != 0 {
            return Err(Error::InvalidStreamId(sid));
        }
        Ok(())
    }

    /// Address of the STE for `sid`, installing its level-2 table if needed.
    pub fn slot<M: DmaMemory>(&mut self, mem: &mut M, sid: u32) -> Result<SteSlot> {
        self.check_sid(sid)?;
        match self.fmt {
            StreamTableFormat::Linear => Ok(SteSlot {
                addr: PhysAddr(self.base.0 + u64::from(sid) * STE_BYTES as u64),
                new_l2: None,
            }),
            StreamTableFormat::TwoLevel => {
                let l1 = (sid >> STRTAB_SPLIT) as usize;
                let off = (sid & ((1 << STRTAB_SPLIT) - 1)) as u64 * STE_BYTES as u64;
                if let Some(p) = self.l2[l1] {
                    return Ok(SteSlot {
                        addr: PhysAddr(p.0 + off),
                        new_l2: None,
                    });
                }
                let bytes = Self::l2_bytes();
                let p = mem.alloc_zeroed(bytes, bytes).ok_or(Error::OutOfMemory)?;
                if self.fill != Ste::invalid() {
                    // SAFETY: `p` is a live region of `bytes` bytes.
                    let w = unsafe { Words::new(mem, p, bytes / 8) };
                    fill_stes(&w, &self.fill);
                }
                // SAFETY: the L1 table is live and holds `l2.len()` descriptors.
                let l1w = unsafe { Words::new(mem, self.base, self.l2.len()) };
                // The level-2 table's contents are written before the descriptor that
                // makes it reachable (the caller's CFGI/SYNC publishes both).
                core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
                l1w.store(l1, l1_desc(p, STRTAB_SPLIT));
                self.l2[l1] = Some(p);
                Ok(SteSlot {
                    addr: PhysAddr(p.0 + off),
                    new_l2: Some((sid & !((1 << STRTAB_SPLIT) - 1), STRTAB_SPLIT)),
                })
            }
        }
    }

    /// Free the table.
    ///
    /// # Safety
    /// The SMMU must no longer use it (SMMUEN = 0 acknowledged).
    pub unsafe fn free<M: DmaMemory>(self, mem: &mut M) {
        match self.fmt {
            StreamTableFormat::Linear => {
                let b = Self::linear_bytes(self.sid_bits);
                // SAFETY: allocated in `new` with this layout; unused per the caller.
                unsafe { mem.free(self.base, b, b) }
            }
            StreamTableFormat::TwoLevel => {
                let b2 = Self::l2_bytes();
                for p in self.l2.iter().flatten() {
                    // SAFETY: allocated in `slot` with this layout; unused per the caller.
                    unsafe { mem.free(*p, b2, b2) }
                }
                let b = Self::l1_bytes(self.sid_bits);
                // SAFETY: allocated in `new` with this layout; unused per the caller.
                unsafe { mem.free(self.base, b, b) }
            }
        }
    }
}

fn fill_stes(w: &Words, ste: &Ste) {
    for i in 0..w.len() {
        w.store(i, ste.0[i % STE_WORDS]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{IdRegs, QEMU_7_2_IDREGS};
    use crate::mem::IdentityHeap;

    #[test]
    fn linear_table_registers_and_alignment() {
        let f = Features::decode(&QEMU_7_2_IDREGS);
        let mut m = IdentityHeap::new();
        let mut t =
            StreamTable::new(&mut m, &f, StreamTableFormat::Linear, 8, Ste::abort()).unwrap();
        let base = t.base_register() & regs::STRTAB_BASE_ADDR;
        assert_eq!(
            base % (64 << 8),
            0,
            "aligned to its own size (QEMU masks the base)"
        );
        assert_eq!(t.base_register() >> 62, 1, "RA");
        assert_eq!(t.base_cfg_register(), 8, "FMT linear, LOG2SIZE 8");
        let s = t.slot(&mut m, 0x12).unwrap();
        assert_eq!(s.addr.0, base + 0x12 * 64);
        assert_eq!(s.new_l2, None);
        // SAFETY: the STE is inside the live table.
        let w = unsafe { Words::new(&m, s.addr, 8) };
        assert_eq!(w.load(0), Ste::abort().0[0], "filled with abort");
        assert_eq!(t.slot(&mut m, 0x100), Err(Error::InvalidStreamId(0x100)));
        assert_eq!(
            StreamTable::new(&mut m, &f, StreamTableFormat::Linear, 17, Ste::abort()).err(),
            Some(Error::Unsupported(Unsupported::StreamIdSize))
        );
        // SAFETY: never used by hardware.
        unsafe { t.free(&mut m) };
        assert_eq!(m.live_regions, 0);
    }

    #[test]
    fn two_level_table() {
        let f = Features::decode(&QEMU_7_2_IDREGS);
        let mut m = IdentityHeap::new();
        let mut t =
            StreamTable::new(&mut m, &f, StreamTableFormat::TwoLevel, 16, Ste::invalid()).unwrap();
        let cfg = t.base_cfg_register();
        assert_eq!((cfg >> 16) & 3, 1, "FMT 2-level");
        assert_eq!((cfg >> 6) & 0x1f, 8, "SPLIT");
        assert_eq!(cfg & 0x3f, 16, "LOG2SIZE");
        let a = t.slot(&mut m, 0x0123).unwrap();
        assert_eq!(a.new_l2, Some((0x0100, 8)));
        let b = t.slot(&mut m, 0x0124).unwrap();
        assert_eq!(b.new_l2, None);
        assert_eq!(b.addr.0 - a.addr.0, 64);
        // SAFETY: the L1 table is live with 256 descriptors.
        let l1 = unsafe {
            Words::new(
                &m,
                PhysAddr(t.base_register() & regs::STRTAB_BASE_ADDR),
                256,
            )
        };
        let d = l1.load(1);
        assert_eq!(d & 0x1f, 9, "span = SPLIT + 1");
        assert_eq!(d & crate::ste::STRTAB_L1_DESC_L2PTR, a.addr.0 - 0x23 * 64);
        assert_eq!(l1.load(0), 0);
        // SAFETY: never used by hardware.
        unsafe { t.free(&mut m) };
        assert_eq!(m.live_regions, 0);
        // Hardware without two-level support refuses.
        let lin_only = Features::decode(&IdRegs {
            idr: [0x2 | (2 << 2), 16, 0, 0, 0, 0x14],
            aidr: 0,
        });
        assert_eq!(
            StreamTable::new(
                &mut m,
                &lin_only,
                StreamTableFormat::TwoLevel,
                16,
                Ste::invalid()
            )
            .err(),
            Some(Error::Unsupported(Unsupported::TwoLevelStreamTable))
        );
    }
}
