//! Address spaces init builds and maps into: the paging structures a mapping needs are
//! created on first use (x86_64 4-level paging: PML4 → PDPT (512 GiB each) → page
//! directory (1 GiB) → page table (2 MiB) → 4 KiB frame).

use alloc::collections::BTreeSet;

use sel4_rt::sys::{cap_type, Cap, CapRights, ObjectType, Word};

use crate::objects::{AllocError, Objects};

/// Paging levels below the PML4, by the address bits one entry of the level above covers.
const LEVELS: [(u32, ObjectType); 3] = [
    (39, ObjectType::X86_PDPT),
    (30, ObjectType::X86_PageDirectory),
    (21, ObjectType::X86_PageTable),
];

/// A VSpace and the paging structures init created in it.
#[derive(Debug)]
pub struct AddressSpace {
    /// The VSpace root.
    pub pml4: Cap<cap_type::Pml4>,
    /// (level shift, address >> shift) of every structure installed.
    installed: BTreeSet<(u32, u64)>,
    /// Paging structures created (for the report).
    pub tables: usize,
    /// Frames mapped.
    pub frames: usize,
}

impl AddressSpace {
    /// An address space whose paging structures below `pml4` are all created by init
    /// (a fresh VSpace, or init's own above the range the kernel set up for its image).
    pub fn new(pml4: Cap<cap_type::Pml4>) -> Self {
        AddressSpace {
            pml4,
            installed: BTreeSet::new(),
            tables: 0,
            frames: 0,
        }
    }

    /// Creates whatever paging structures a mapping at `vaddr` still lacks.
    fn ensure_tables(&mut self, objects: &mut Objects, vaddr: u64) -> Result<(), AllocError> {
        for (shift, kind) in LEVELS {
            if !self.installed.insert((shift, vaddr >> shift)) {
                continue;
            }
            let slot = objects.retype(kind, 0, 1)?;
            let base = vaddr & !((1u64 << shift) - 1);
            let attr = sel4_rt::sys::vm_attributes::DEFAULT_VM_ATTRIBUTES;
            let result = match kind {
                ObjectType::X86_PDPT => {
                    Cap::<cap_type::Pdpt>::from_cptr(slot).map(self.pml4, base, attr)
                }
                ObjectType::X86_PageDirectory => {
                    Cap::<cap_type::PageDirectory>::from_cptr(slot).map(self.pml4, base, attr)
                }
                _ => Cap::<cap_type::PageTable>::from_cptr(slot).map(self.pml4, base, attr),
            };
            result.map_err(|e| AllocError::Kernel("paging structure Map", e))?;
            self.tables += 1;
        }
        Ok(())
    }

    /// Maps `frame` at `vaddr` with `rights` and cache attribute `attr`.
    pub fn map(
        &mut self,
        objects: &mut Objects,
        frame: Cap<cap_type::Page>,
        vaddr: u64,
        rights: CapRights,
        attr: Word,
    ) -> Result<(), AllocError> {
        self.ensure_tables(objects, vaddr)?;
        frame
            .map(self.pml4, vaddr, rights, attr)
            .map_err(|e| AllocError::Kernel("Page Map", e))?;
        self.frames += 1;
        Ok(())
    }
}

/// A window of init's own VSpace where it maps frames to fill or read them.
#[derive(Debug)]
pub struct Window {
    space: AddressSpace,
    base: u64,
    pages: u64,
    next: u64,
}

impl Window {
    /// `pages` pages of init's VSpace from `base` (in a 512 GiB slot of the PML4 the
    /// kernel left empty).
    pub fn new(pml4: Cap<cap_type::Pml4>, base: u64, pages: u64) -> Self {
        Window {
            space: AddressSpace::new(pml4),
            base,
            pages,
            next: 0,
        }
    }

    /// Maps `frame` at the next free page of the window (never reused: for frames init
    /// keeps looking at, such as ACPI tables).
    pub fn map_forever(
        &mut self,
        objects: &mut Objects,
        frame: Cap<cap_type::Page>,
        attr: Word,
    ) -> Result<*mut u8, AllocError> {
        assert!(self.next < self.pages, "init's window is full");
        let vaddr = self.base + self.next * 4096;
        self.next += 1;
        self.space
            .map(objects, frame, vaddr, CapRights::READ_WRITE, attr)?;
        Ok(vaddr as *mut u8)
    }

    /// Runs `f` on the frame's bytes, mapped at the window's last page, then unmaps it
    /// again (for frames that belong to another process afterwards).
    pub fn with_frame<R>(
        &mut self,
        objects: &mut Objects,
        frame: Cap<cap_type::Page>,
        f: impl FnOnce(&mut [u8; 4096]) -> R,
    ) -> Result<R, AllocError> {
        let vaddr = self.base + (self.pages - 1) * 4096;
        self.space.map(
            objects,
            frame,
            vaddr,
            CapRights::READ_WRITE,
            sel4_rt::sys::vm_attributes::WRITE_BACK,
        )?;
        // SAFETY: the frame was just mapped read-write at `vaddr` (page aligned, 4 KiB),
        // nothing else in init refers to that page, and it stays mapped until after `f`.
        let r = f(unsafe { &mut *(vaddr as *mut [u8; 4096]) });
        frame
            .unmap()
            .map_err(|e| AllocError::Kernel("Page Unmap", e))?;
        Ok(r)
    }
}
