//! Finding the ACPI DMAR table (ACPI 6.x §5.2.5 RSDP, §5.2.7 RSDT, §5.2.8 XSDT; VT-d
//! spec §8.1 DMAR) in firmware memory, read through device frames init maps.

use alloc::vec::Vec;

use sel4_rt::sys::vm_attributes;

use crate::objects::{AllocError, Objects};
use crate::vspace::Window;

/// Physical memory read through device frames mapped into init's window on demand.
pub struct PhysReader<'a> {
    objects: &'a mut Objects,
    window: &'a mut Window,
    mapped: Vec<(u64, *const u8)>,
}

impl<'a> PhysReader<'a> {
    /// A reader mapping frames into `window`.
    pub fn new(objects: &'a mut Objects, window: &'a mut Window) -> Self {
        PhysReader {
            objects,
            window,
            mapped: Vec::new(),
        }
    }

    fn page(&mut self, page: u64) -> Result<*const u8, AllocError> {
        if let Some(&(_, p)) = self.mapped.iter().find(|(pa, _)| *pa == page) {
            return Ok(p);
        }
        let frame = self.objects.device_frame(page)?;
        let p = self
            .window
            .map_forever(self.objects, frame, vm_attributes::WRITE_BACK)?
            .cast_const();
        self.mapped.push((page, p));
        Ok(p)
    }

    /// Copies `buf.len()` bytes from physical address `pa`.
    pub fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AllocError> {
        let mut done = 0;
        while done < buf.len() {
            let at = pa + done as u64;
            let page = self.page(at & !0xfff)?;
            let off = (at & 0xfff) as usize;
            let n = (4096 - off).min(buf.len() - done);
            for (i, b) in buf[done..done + n].iter_mut().enumerate() {
                // SAFETY: `page` is a 4 KiB firmware frame mapped read-write into init's
                // window for the rest of its life; `off + i` is inside it.
                *b = unsafe { page.add(off + i).read_volatile() };
            }
            done += n;
        }
        Ok(())
    }

    fn u32_at(&mut self, pa: u64) -> Result<u32, AllocError> {
        let mut b = [0; 4];
        self.read(pa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64_at(&mut self, pa: u64) -> Result<u64, AllocError> {
        let mut b = [0; 8];
        self.read(pa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Why no DMAR table came out.
#[derive(Debug)]
pub enum AcpiError {
    /// No RSDP with a valid checksum in the EBDA or the BIOS area.
    NoRsdp,
    /// The RSDT/XSDT lists no DMAR.
    NoDmar,
    /// A table's checksum or length is wrong.
    BadTable(&'static str),
    /// Mapping firmware memory failed.
    Map(AllocError),
}

impl From<AllocError> for AcpiError {
    fn from(e: AllocError) -> Self {
        AcpiError::Map(e)
    }
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::NoRsdp => write!(f, "no ACPI RSDP in the EBDA or at 0xe0000..0x100000"),
            AcpiError::NoDmar => write!(f, "the ACPI tables list no DMAR"),
            AcpiError::BadTable(t) => write!(f, "ACPI {t} has a bad checksum or length"),
            AcpiError::Map(e) => write!(f, "mapping firmware memory: {e}"),
        }
    }
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

/// The RSDP: searched on 16-byte boundaries in the first KiB of the EBDA (segment at
/// 0x40e) and in 0xe0000..0x100000 (ACPI §5.2.5.1).
fn find_rsdp(mem: &mut PhysReader<'_>) -> Result<u64, AcpiError> {
    let mut seg = [0u8; 2];
    mem.read(0x40e, &mut seg)?;
    let ebda = u64::from(u16::from_le_bytes(seg)) << 4;
    let mut areas = Vec::new();
    if (0x400..0xa0000).contains(&ebda) {
        areas.push((ebda, ebda + 1024));
    }
    areas.push((0xe0000, 0x100000));
    for (start, end) in areas {
        let mut at = start;
        while at < end {
            let mut head = [0u8; 20];
            mem.read(at, &mut head)?;
            if &head[..8] == b"RSD PTR " && checksum_ok(&head) {
                return Ok(at);
            }
            at += 16;
        }
    }
    Err(AcpiError::NoRsdp)
}

/// Reads a whole table (header length) at `pa`, checking its checksum.
fn table(mem: &mut PhysReader<'_>, pa: u64, what: &'static str) -> Result<Vec<u8>, AcpiError> {
    let len = mem.u32_at(pa + 4)? as usize;
    if !(36..=1 << 20).contains(&len) {
        return Err(AcpiError::BadTable(what));
    }
    let mut bytes = alloc::vec![0u8; len];
    mem.read(pa, &mut bytes)?;
    if !checksum_ok(&bytes) {
        return Err(AcpiError::BadTable(what));
    }
    Ok(bytes)
}

/// The DMAR table's bytes and the physical address it was found at.
pub fn find_dmar(mem: &mut PhysReader<'_>) -> Result<(u64, Vec<u8>), AcpiError> {
    let rsdp = find_rsdp(mem)?;
    let mut head = [0u8; 36];
    mem.read(rsdp, &mut head)?;
    let revision = head[15];
    // ACPI 2.0+: the XSDT (64-bit entries) at offset 24; else the RSDT (32-bit entries).
    let (root, entry) = if revision >= 2 && mem.u64_at(rsdp + 24)? != 0 {
        (mem.u64_at(rsdp + 24)?, 8)
    } else {
        (u64::from(mem.u32_at(rsdp + 16)?), 4)
    };
    let root_table = table(mem, root, "RSDT/XSDT")?;
    for e in root_table[36..].chunks_exact(entry) {
        let pa = if entry == 8 {
            u64::from_le_bytes(e.try_into().expect("8 bytes"))
        } else {
            u64::from(u32::from_le_bytes(e.try_into().expect("4 bytes")))
        };
        let mut sig = [0u8; 4];
        mem.read(pa, &mut sig)?;
        if &sig == b"DMAR" {
            return Ok((pa, table(mem, pa, "DMAR")?));
        }
    }
    Err(AcpiError::NoDmar)
}
