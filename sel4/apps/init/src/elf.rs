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
