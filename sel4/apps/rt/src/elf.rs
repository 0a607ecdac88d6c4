//! Reading the program headers of a static x86_64 ELF executable (ELF-64 object file
//! format, System V ABI: the header at offset 0, `PT_LOAD` segments giving file offset,
//! virtual address, file and memory sizes and R/W/X flags).

use alloc::vec::Vec;

/// A loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of the first byte.
    pub vaddr: u64,
    /// Bytes in memory (the part past `file_size` is zero).
    pub mem_size: u64,
    /// Offset of the segment's bytes in the file.
    pub offset: u64,
    /// Bytes in the file.
    pub file_size: u64,
    /// Writable (`PF_W`).
    pub writable: bool,
}

/// A parsed executable.
#[derive(Debug, Clone)]
pub struct Elf<'a> {
    /// The file.
    pub bytes: &'a [u8],
    /// Entry point.
    pub entry: u64,
    /// `PT_LOAD` segments.
    pub segments: Vec<Segment>,
}

/// Why a file is not an executable init can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than its headers say.
    Truncated,
    /// Not `\x7fELF`, not 64-bit little-endian, not x86_64 or not an executable.
    NotX86_64Executable,
    /// A segment's file part exceeds its memory size or wraps the address space.
    BadSegment,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ElfError::Truncated => "ELF file truncated",
            ElfError::NotX86_64Executable => "not an x86_64 ELF executable",
            ElfError::BadSegment => "ELF segment with inconsistent sizes",
        })
    }
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    let s = b.get(at..at + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    let s = b.get(at..at + 4).ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    let s = b.get(at..at + 8).ok_or(ElfError::Truncated)?;
    let mut w = [0; 8];
    w.copy_from_slice(s);
    Ok(u64::from_le_bytes(w))
}

const PT_LOAD: u32 = 1;
const PF_W: u32 = 2;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

impl<'a> Elf<'a> {
    /// Parses the file header and program headers.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let ident = bytes.get(..16).ok_or(ElfError::Truncated)?;
        // EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian.
        if ident[..4] != *b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
            return Err(ElfError::NotX86_64Executable);
        }
        if u16_at(bytes, 16)? != ET_EXEC || u16_at(bytes, 18)? != EM_X86_64 {
            return Err(ElfError::NotX86_64Executable);
        }
        let entry = u64_at(bytes, 24)?;
        let phoff = u64_at(bytes, 32)? as usize;
        let phentsize = u16_at(bytes, 54)? as usize;
        let phnum = u16_at(bytes, 56)? as usize;
        if phentsize < 56 {
            return Err(ElfError::Truncated);
        }
        let mut segments = Vec::new();
        for i in 0..phnum {
            let at = phoff
                .checked_add(i * phentsize)
                .ok_or(ElfError::Truncated)?;
            if u32_at(bytes, at)? != PT_LOAD {
                continue;
            }
            let seg = Segment {
                writable: u32_at(bytes, at + 4)? & PF_W != 0,
                offset: u64_at(bytes, at + 8)?,
                vaddr: u64_at(bytes, at + 16)?,
                file_size: u64_at(bytes, at + 32)?,
                mem_size: u64_at(bytes, at + 40)?,
            };
            let file_end = seg.offset.checked_add(seg.file_size);
            if seg.file_size > seg.mem_size
                || seg.vaddr.checked_add(seg.mem_size).is_none()
                || file_end.is_none_or(|e| e > bytes.len() as u64)
            {
                return Err(ElfError::BadSegment);
            }
            segments.push(seg);
        }
        Ok(Elf {
            bytes,
            entry,
            segments,
        })
    }

    /// The file bytes that belong at virtual page `page` (page aligned), each with its
    /// offset in the page; zero-filled parts are left out.
    pub fn page_contents(&self, page: u64) -> impl Iterator<Item = (usize, &'a [u8])> + '_ {
        self.segments.iter().filter_map(move |s| {
            let start = s.vaddr.max(page);
            let end = (s.vaddr + s.file_size).min(page + 4096);
            if start >= end {
                return None;
            }
            let file = (s.offset + (start - s.vaddr)) as usize;
            Some((
                (start - page) as usize,
                &self.bytes[file..file + (end - start) as usize],
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A minimal executable: header, `phnum` program headers from `phoff`, file bytes.
    fn image(entry: u64, segments: &[(u32, u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let phoff = 64usize;
        let mut b = vec![0u8; phoff + 56 * segments.len()];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, &(kind, flags, offset, vaddr, file, mem)) in segments.iter().enumerate() {
            let at = phoff + 56 * i;
            b[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&file.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&mem.to_le_bytes());
        }
        b
    }

    #[test]
    fn loadable_segments_and_their_page_contents() {
        let mut b = image(
            0x40_1000,
            &[
                (PT_LOAD, 5, 0x200, 0x40_0ff0, 0x20, 0x20),
                (6, 4, 0, 0, 0, 0),
                (PT_LOAD, 6, 0x220, 0x40_2000, 0x8, 0x3000),
            ],
        );
        b.resize(0x228, 0);
        for (i, x) in b[0x200..0x228].iter_mut().enumerate() {
            *x = i as u8;
        }
        let elf = Elf::parse(&b).unwrap();
        assert_eq!(elf.entry, 0x40_1000);
        assert_eq!(elf.segments.len(), 2, "only PT_LOAD segments");
        assert!(!elf.segments[0].writable && elf.segments[1].writable);
        // The first segment straddles a page boundary: 0x10 bytes in each page.
        let first: Vec<_> = elf.page_contents(0x40_0000).collect();
        assert_eq!(first, vec![(0xff0, &b[0x200..0x210])]);
        let second: Vec<_> = elf.page_contents(0x40_1000).collect();
        assert_eq!(second, vec![(0, &b[0x210..0x220])]);
        // The bss part of the last segment has no file bytes.
        assert_eq!(elf.page_contents(0x40_3000).count(), 0);
        assert_eq!(
            elf.page_contents(0x40_2000).next(),
            Some((0, &b[0x220..0x228]))
        );
    }

    #[test]
    fn bad_files_are_errors() {
        assert_eq!(Elf::parse(&[0; 8]).unwrap_err(), ElfError::Truncated);
        let mut b = image(0, &[]);
        b[0] = 0;
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::NotX86_64Executable);
        let mut b = image(0, &[]);
        b[18] = 0xb7; // EM_AARCH64
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::NotX86_64Executable);
        // File part larger than the memory part.
        let b = image(0, &[(PT_LOAD, 4, 0, 0x1000, 0x20, 0x10)]);
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::BadSegment);
        // File part past the end of the file.
        let b = image(0, &[(PT_LOAD, 4, 0x1_0000, 0x1000, 0x20, 0x20)]);
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::BadSegment);
        // Program headers past the end of the file.
        let mut b = image(0, &[(PT_LOAD, 4, 0, 0x1000, 0, 0)]);
        b.truncate(100);
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::Truncated);
        // Memory range wrapping the address space.
        let b = image(0, &[(PT_LOAD, 4, 0, u64::MAX - 4, 0, 0x10)]);
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::BadSegment);
    }
}
