//! The start-up record and VSpace layout of a process built by init.
//!
//! init maps a read-only frame holding a [`StartInfo`] at [`START_INFO_VADDR`] in every
//! process it starts and passes that address in `rdi`. The record says where the
//! process's other memory is (its DMA pool and device register frames, with physical
//! addresses, since those are what a device or an IOMMU is programmed with) and in which
//! slots of its CSpace its capabilities are. A process holds nothing else.

/// The record's address in every process.
pub const START_INFO_VADDR: u64 = 0x1000_0000;
/// The IPC buffer's address.
pub const IPC_BUFFER_VADDR: u64 = 0x1001_0000;
/// Top of the stack (it grows down from here; a guard page lies below it).
pub const STACK_TOP: u64 = 0x1110_0000;
/// Stack pages.
pub const STACK_PAGES: u64 = 16;
/// Where device register frames are mapped (uncached), one after another.
pub const DEVICE_VADDR: u64 = 0x2000_0000;
/// Where the DMA pool is mapped.
pub const DMA_VADDR: u64 = 0x4000_0000;

/// `magic` of a valid record.
pub const START_MAGIC: u64 = u64::from_le_bytes(*b"sel4strt");

/// Most device grants a record carries.
pub const MAX_DEVICES: usize = 8;
/// Most bridges a record describes.
pub const MAX_BRIDGES: usize = 16;
/// Largest ACPI DMAR table a record carries.
pub const MAX_DMAR: usize = 2048;

/// What a device grant is.
pub mod device_kind {
    /// The register frame of a VT-d remapping unit (`paddr` = DRHD register base).
    pub const VTD_REGISTERS: u64 = 1;
    /// The first page of BAR0 of a PCI function (`bdf`, `id` = vendor << 16 | device).
    pub const PCI_BAR0: u64 = 2;
}

/// A device frame mapped into the process.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceGrant {
    /// [`device_kind`].
    pub kind: u64,
    /// PCI bus << 8 | device << 3 | function (PCI functions only).
    pub bdf: u64,
    /// PCI vendor << 16 | device (PCI functions only).
    pub id: u64,
    /// Where it is mapped in the process.
    pub vaddr: u64,
    /// Physical address.
    pub paddr: u64,
    /// Bytes mapped.
    pub size: u64,
}

/// A PCI-to-PCI bridge as firmware configured it (what DMAR device-scope paths need).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Bridge {
    /// The bridge's own bus << 8 | devfn.
    pub bdf: u16,
    /// Secondary bus number.
    pub secondary: u8,
    /// Subordinate bus number.
    pub subordinate: u8,
    /// Zero.
    pub reserved: u32,
}

/// Physically contiguous RAM for the process's DMA (device buffers, IOMMU tables).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaGrant {
    /// Where it is mapped in the process.
    pub vaddr: u64,
    /// Physical address of the first byte.
    pub paddr: u64,
    /// Bytes.
    pub size: u64,
}

/// The start-up record.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StartInfo {
    /// [`START_MAGIC`].
    pub magic: u64,
    /// The process's name (UTF-8, zero padded).
    pub name: [u8; 32],
    /// TSC ticks per microsecond, as init measured them against the PIT.
    pub tsc_per_us: u64,
    /// Slot of a badged endpoint capability to init (for the final report).
    pub report_endpoint: u64,
    /// Slot of a notification bound to the process's interrupt (0: none).
    pub irq_notification: u64,
    /// Slot of the interrupt's handler capability, to acknowledge it (0: none).
    pub irq_handler: u64,
    /// CPU vector the interrupt's MSI must carry (its data register).
    pub irq_vector: u64,
    /// The DMA pool.
    pub dma: DmaGrant,
    /// Valid entries of `devices`.
    pub device_count: u64,
    /// Device frames.
    pub devices: [DeviceGrant; MAX_DEVICES],
    /// Valid entries of `bridges`.
    pub bridge_count: u64,
    /// PCI bridges.
    pub bridges: [Bridge; MAX_BRIDGES],
    /// Bytes of `dmar` in use (0: no DMAR table found).
    pub dmar_len: u64,
    /// The ACPI DMAR table as firmware provided it.
    pub dmar: [u8; MAX_DMAR],
}

const _: () = assert!(core::mem::size_of::<StartInfo>() <= 4096);

impl StartInfo {
    /// An empty record.
    pub const fn empty() -> Self {
        StartInfo {
            magic: START_MAGIC,
            name: [0; 32],
            tsc_per_us: 0,
            report_endpoint: 0,
            irq_notification: 0,
            irq_handler: 0,
            irq_vector: 0,
            dma: DmaGrant {
                vaddr: 0,
                paddr: 0,
                size: 0,
            },
            device_count: 0,
            devices: [DeviceGrant {
                kind: 0,
                bdf: 0,
                id: 0,
                vaddr: 0,
                paddr: 0,
                size: 0,
            }; MAX_DEVICES],
            bridge_count: 0,
            bridges: [Bridge {
                bdf: 0,
                secondary: 0,
                subordinate: 0,
                reserved: 0,
            }; MAX_BRIDGES],
            dmar_len: 0,
            dmar: [0; MAX_DMAR],
        }
    }

    /// The name as a string.
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(32);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// The valid device grants (a count beyond the array is clamped).
    pub fn devices(&self) -> &[DeviceGrant] {
        &self.devices[..(self.device_count as usize).min(MAX_DEVICES)]
    }

    /// The valid bridges.
    pub fn bridges(&self) -> &[Bridge] {
        &self.bridges[..(self.bridge_count as usize).min(MAX_BRIDGES)]
    }

    /// The DMAR table bytes.
    pub fn dmar(&self) -> &[u8] {
        &self.dmar[..(self.dmar_len as usize).min(MAX_DMAR)]
    }
}

/// Message labels a process sends to init on its report endpoint.
pub mod report {
    /// "I am running": no payload; init answers (ReplyRecv) and logs it.
    pub const HELLO: u64 = 2;
    /// A one-way note (NBSend, no reply): MR0 = a value init logs. init counts notes and
    /// fails a process that says `DONE` with MR2 notes sent that did not all arrive.
    pub const NOTE: u64 = 3;
    /// "I am done": MR0 = checks passed, MR1 = checks failed, MR2 = notes sent.
    pub const DONE: u64 = 1;
}
