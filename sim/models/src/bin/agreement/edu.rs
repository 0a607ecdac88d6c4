//! QEMU's `edu` device as the QEMU images use it, and the way QEMU's memory core carries
//! a device's DMA through an IOMMU, so that a scenario gives the model the same accesses
//! QEMU gives its IOMMU.
//!
//! QEMU (7.2, `address_space_rw` over an IOMMU memory region) asks the IOMMU to
//! translate the first address of what is left of a transfer and copies up to the end
//! of the page or block that translated it. When the translation fails it falls back to
//! one access of at most 4 bytes (no larger than the address's alignment) to an
//! unassigned region, and asks the IOMMU again for the next address: a failing 64-byte
//! transfer is 16 accesses, each of which the IOMMU reports. A failed read delivers
//! zeros to the device.

use iommu_models::Access;
use sim_physmem::PhysMem;

/// Device address of the edu's internal buffer.
pub const BUFFER_ADDR: u64 = 0x40000;
/// Size of the buffer.
pub const BUFFER_SIZE: u64 = 0x1000;
/// Longest transfer the images use (QEMU before 8.0 refuses one ending at the buffer's
/// last byte).
pub const MAX_TRANSFER: u64 = BUFFER_SIZE - 1;

/// One translation: the physical address and the bytes to the end of its page or block.
pub type Translated = Option<(u64, u64)>;

/// An edu device: its 4 KiB buffer.
pub struct Edu {
    buf: Vec<u8>,
}

impl Default for Edu {
    fn default() -> Self {
        Edu {
            buf: vec![0; BUFFER_SIZE as usize],
        }
    }
}

fn edu_range(edu_addr: u64, len: u64) -> Result<std::ops::Range<usize>, String> {
    if len == 0 || edu_addr < BUFFER_ADDR || edu_addr + len > BUFFER_ADDR + MAX_TRANSFER {
        return Err(format!(
            "edu range {edu_addr:#x}+{len:#x} outside its buffer"
        ));
    }
    let start = (edu_addr - BUFFER_ADDR) as usize;
    Ok(start..start + len as usize)
}

/// The size of the access QEMU falls back to at `addr` when a translation fails.
fn fallback_len(addr: u64, left: u64) -> u64 {
    let align = if addr == 0 {
        4
    } else {
        addr & addr.wrapping_neg()
    };
    let l = left.min(4).min(align);
    1 << (63 - l.leading_zeros())
}

impl Edu {
    /// DMA RAM -> edu: `len` bytes from bus address `bus` into the buffer at `edu_addr`.
    pub fn read_ram(
        &mut self,
        mem: &PhysMem,
        mut translate: impl FnMut(u64, Access) -> Translated,
        bus: u64,
        edu_addr: u64,
        len: u64,
    ) -> Result<(), String> {
        let range = edu_range(edu_addr, len)?;
        let buf = &mut self.buf[range];
        let mut done = 0u64;
        while done < len {
            let addr = bus.wrapping_add(done);
            let left = len - done;
            let at = done as usize;
            let n = match translate(addr, Access::Read) {
                Some((pa, span)) if mem.contains(pa, left.min(span)) => {
                    let n = left.min(span);
                    mem.read(pa, &mut buf[at..at + n as usize])
                        .map_err(|e| e.to_string())?;
                    n
                }
                _ => {
                    let n = fallback_len(addr, left);
                    buf[at..at + n as usize].fill(0);
                    n
                }
            };
            done += n;
        }
        Ok(())
    }

    /// DMA edu -> RAM: `len` bytes of the buffer at `edu_addr` to bus address `bus`.
    pub fn write_ram(
        &mut self,
        mem: &PhysMem,
        mut translate: impl FnMut(u64, Access) -> Translated,
        edu_addr: u64,
        bus: u64,
        len: u64,
    ) -> Result<(), String> {
        let range = edu_range(edu_addr, len)?;
        let buf = &self.buf[range];
        let mut done = 0u64;
        while done < len {
            let addr = bus.wrapping_add(done);
            let left = len - done;
            let at = done as usize;
            let n = match translate(addr, Access::Write) {
                Some((pa, span)) if mem.contains(pa, left.min(span)) => {
                    let n = left.min(span);
                    mem.write(pa, &buf[at..at + n as usize])
                        .map_err(|e| e.to_string())?;
                    n
                }
                _ => fallback_len(addr, left),
            };
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accesses_are_split_like_qemus() {
        assert_eq!(fallback_len(0x1000_0040, 64), 4);
        assert_eq!(fallback_len(0x1000_0042, 64), 2);
        assert_eq!(fallback_len(0x1000_0041, 64), 1);
        assert_eq!(fallback_len(0x1000_0040, 3), 2);
        let mem = PhysMem::new(0x4000_0000, 0x10000);
        let mut edu = Edu::default();
        let mut asked = Vec::new();
        edu.write_ram(
            &mem,
            |a, acc| {
                asked.push((a, acc));
                None
            },
            BUFFER_ADDR,
            0x5000_0040,
            64,
        )
        .unwrap();
        let want: Vec<_> = (0..16)
            .map(|k| (0x5000_0040 + 4 * k, Access::Write))
            .collect();
        assert_eq!(asked, want);
        // A mapped first page and an unmapped second: one copy, then 4-byte steps.
        let mut asked = Vec::new();
        edu.read_ram(
            &mem,
            |a, acc| {
                asked.push(a);
                assert_eq!(acc, Access::Read);
                (a < 0x1000).then(|| (0x4000_0000 + a, 0x1000 - a))
            },
            0xff0,
            BUFFER_ADDR,
            0x18,
        )
        .unwrap();
        assert_eq!(asked, [0xff0, 0x1000, 0x1004]);
    }
}
