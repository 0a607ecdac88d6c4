//! The system description and the processes init builds from it.
//!
//! A description lists programs and, for each, what it is given. init gives exactly
//! that: a process starts with its own CSpace (a CNode of [`CSPACE_BITS`] slots holding
//! only the capabilities below), its own VSpace (fresh frames for its image, stack, IPC
//! buffer and start-up record; device frames and DMA memory only if granted) and its
//! own TCB.
//!
//! CSpace slots of every process:
//! - [`slot::REPORT`]: an endpoint to init, badged with the process's number;
//! - [`slot::FAULT`]: the same endpoint with the fault badge (the kernel sends the
//!   process's faults through it);
//! - [`slot::IRQ_NOTIFICATION`], [`slot::IRQ_HANDLER`]: with [`Grant::Msi`].

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use sel4_rt::start::{
    self, device_kind, Bridge, DeviceGrant, StartInfo, DEVICE_VADDR, DMA_VADDR, IPC_BUFFER_VADDR,
    STACK_PAGES, STACK_TOP, START_INFO_VADDR,
};
use sel4_rt::sys::{
    cap_data, cap_type, init, vm_attributes, Cap, CapRights, ObjectType, UserContext, Word,
};

use crate::objects::{AllocError, Objects, DEPTH};
use crate::pci;
use crate::vspace::{AddressSpace, Window};
use sel4_rt::elf::Elf;
use sel4_rt::Bdf;

/// What a process is given besides its image, stack, IPC buffer and report endpoint.
#[derive(Debug, Clone, Copy)]
pub enum Grant {
    /// The register frames of every VT-d remapping unit in the DMAR table, and the table.
    VtdUnits,
    /// BAR0's first page of every PCI function with this vendor and device ID (init turns
    /// on their memory decoding and bus mastering), and the bridges above them.
    PciFunctions {
        /// Vendor ID.
        vendor: u16,
        /// Device ID.
        device: u16,
    },
    /// Physically contiguous RAM for DMA.
    DmaPool {
        /// 4 KiB pages (a power of two).
        pages: u64,
    },
    /// An MSI (user IRQ `irq`) delivered to a notification the process holds, with the
    /// handler capability to acknowledge it.
    Msi {
        /// The kernel's user IRQ number.
        irq: Word,
    },
}

/// One process of the system.
#[derive(Debug)]
pub struct ProcessSpec {
    /// Name (also in the start-up record).
    pub name: &'static str,
    /// The program (a static x86_64 ELF executable).
    pub elf: &'static [u8],
    /// Scheduling priority (below init's).
    pub priority: u8,
    /// What it is given.
    pub grants: &'static [Grant],
}

/// The image's system: the VT-d scenario process, given the VT-d units, the edu devices,
/// 4 MiB of DMA memory and the VT-d fault interrupt.
pub static SYSTEM: &[ProcessSpec] = &[ProcessSpec {
    name: "vtd-scenarios",
    elf: include_bytes!(env!("SEL4_PROGRAM_VTD_SCENARIOS")),
    priority: 100,
    grants: &[
        Grant::VtdUnits,
        Grant::PciFunctions {
            vendor: 0x1234,
            device: 0x11e8,
        },
        Grant::DmaPool { pages: 1024 },
        Grant::Msi { irq: 0 },
    ],
}];

/// Slots of a process's CNode (2^8 slots; slot 0 stays empty, as seL4's null cap).
pub const CSPACE_BITS: Word = 8;

/// Fixed slots of every process's CSpace.
pub mod slot {
    use super::Word;
    /// Badged endpoint to init.
    pub const REPORT: Word = 1;
    /// Fault endpoint (init's endpoint with the fault badge).
    pub const FAULT: Word = 2;
    /// Notification the process's interrupt is delivered to.
    pub const IRQ_NOTIFICATION: Word = 3;
    /// The interrupt's handler capability.
    pub const IRQ_HANDLER: Word = 4;
}

/// Badge the kernel signals a process's interrupt notification with.
pub const IRQ_BADGE: Word = 1;

/// Badge bit of fault messages (the low bits carry the process number).
pub const FAULT_BADGE: Word = 1 << 32;

/// Everything init found about the machine that grants refer to.
pub struct Machine {
    /// PCI functions.
    pub pci: Vec<pci::Function>,
    /// PCI configuration access.
    pub config: pci::Config,
    /// The DMAR table (empty if none).
    pub dmar: Vec<u8>,
    /// TSC ticks per microsecond.
    pub tsc_per_us: u64,
}

/// A process init built.
#[derive(Debug)]
pub struct Process {
    /// Its name.
    pub name: &'static str,
    /// Its TCB.
    pub tcb: Cap<cap_type::Tcb>,
    /// Its VSpace.
    pub space: AddressSpace,
    /// Frames of its image.
    pub image_frames: usize,
    /// Capabilities placed in its CSpace.
    pub caps: usize,
}

/// Why a process could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// Allocation or a kernel invocation failed.
    Alloc(AllocError),
    /// The program is not a loadable ELF.
    Elf(sel4_rt::elf::ElfError),
    /// A grant could not be satisfied.
    Grant(&'static str),
}

impl From<AllocError> for BuildError {
    fn from(e: AllocError) -> Self {
        BuildError::Alloc(e)
    }
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Alloc(e) => write!(f, "{e}"),
            BuildError::Elf(e) => write!(f, "{e}"),
            BuildError::Grant(why) => write!(f, "{why}"),
        }
    }
}

fn kernel(what: &'static str) -> impl Fn(sel4_rt::sys::Error) -> BuildError {
    move |e| BuildError::Alloc(AllocError::Kernel(what, e))
}

/// Writes `info` into `frame` through init's window.
fn write_start_info(
    objects: &mut Objects,
    window: &mut Window,
    frame: Cap<cap_type::Page>,
    info: &StartInfo,
) -> Result<(), AllocError> {
    window.with_frame(objects, frame, |page| {
        // SAFETY: StartInfo is plain old data (repr(C) integers and arrays) no larger
        // than a page (checked at compile time in sel4-rt), so its bytes can be read.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (info as *const StartInfo).cast::<u8>(),
                core::mem::size_of::<StartInfo>(),
            )
        };
        page[..bytes.len()].copy_from_slice(bytes);
    })
}

/// Builds and starts process number `id` (from 1) of `spec`, whose report and fault
/// endpoint is `endpoint`.
pub fn build(
    objects: &mut Objects,
    window: &mut Window,
    machine: &Machine,
    endpoint: Cap<cap_type::Endpoint>,
    id: Word,
    spec: &ProcessSpec,
) -> Result<Process, BuildError> {
    let elf = Elf::parse(spec.elf).map_err(BuildError::Elf)?;
    let cnode = objects.cnode(CSPACE_BITS)?;
    let pml4: Cap<cap_type::Pml4> = objects.create(ObjectType::X64_PML4)?;
    init::ASID_POOL
        .assign(pml4)
        .map_err(kernel("ASIDPool Assign"))?;
    let tcb: Cap<cap_type::Tcb> = objects.create(ObjectType::TCB)?;
    let mut space = AddressSpace::new(pml4);
    let mut info = StartInfo::empty();
    let n = spec.name.len().min(info.name.len());
    info.name[..n].copy_from_slice(&spec.name.as_bytes()[..n]);
    info.tsc_per_us = machine.tsc_per_us;
    info.report_endpoint = slot::REPORT;
    let mut caps = 0;

    // The image: every page any segment touches gets a fresh frame, filled with the
    // file's bytes (the rest stays zero), writable if a writable segment covers it.
    let mut pages: BTreeMap<u64, bool> = BTreeMap::new();
    for s in &elf.segments {
        let mut page = s.vaddr & !0xfff;
        while page < s.vaddr + s.mem_size {
            *pages.entry(page).or_default() |= s.writable;
            page += 4096;
        }
    }
    for (&page, &writable) in &pages {
        let frame: Cap<cap_type::Page> = objects.create(ObjectType::X86_4K)?;
        window.with_frame(objects, frame, |bytes| {
            for (offset, data) in elf.page_contents(page) {
                bytes[offset..offset + data.len()].copy_from_slice(data);
            }
        })?;
        let rights = if writable {
            CapRights::READ_WRITE
        } else {
            CapRights::READ
        };
        space.map(objects, frame, page, rights, vm_attributes::WRITE_BACK)?;
    }
    let image_frames = pages.len();

    // Stack (with an unmapped guard page below) and IPC buffer.
    for i in 1..=STACK_PAGES {
        let frame = objects.create(ObjectType::X86_4K)?;
        space.map(
            objects,
            frame,
            STACK_TOP - i * 4096,
            CapRights::READ_WRITE,
            vm_attributes::WRITE_BACK,
        )?;
    }
    let ipc_frame: Cap<cap_type::Page> = objects.create(ObjectType::X86_4K)?;
    space.map(
        objects,
        ipc_frame,
        IPC_BUFFER_VADDR,
        CapRights::READ_WRITE,
        vm_attributes::WRITE_BACK,
    )?;

    // Endpoints.
    cnode
        .mint(
            slot::REPORT,
            CSPACE_BITS,
            init::CNODE,
            endpoint.cptr(),
            DEPTH,
            CapRights::new(true, false, true),
            cap_data::badge(id),
        )
        .map_err(kernel("CNode Mint (report endpoint)"))?;
    cnode
        .mint(
            slot::FAULT,
            CSPACE_BITS,
            init::CNODE,
            endpoint.cptr(),
            DEPTH,
            CapRights::new(true, false, true),
            cap_data::badge(FAULT_BADGE | id),
        )
        .map_err(kernel("CNode Mint (fault endpoint)"))?;
    caps += 2;

    let mut device_vaddr = DEVICE_VADDR;
    let mut map_device = |objects: &mut Objects,
                          space: &mut AddressSpace,
                          info: &mut StartInfo,
                          grant: DeviceGrant,
                          pages: u64|
     -> Result<(), BuildError> {
        if info.device_count as usize >= start::MAX_DEVICES {
            return Err(BuildError::Grant("too many device grants for one process"));
        }
        for i in 0..pages {
            let frame = objects.device_frame(grant.paddr + i * 4096)?;
            space.map(
                objects,
                frame,
                device_vaddr + i * 4096,
                CapRights::READ_WRITE,
                vm_attributes::CACHE_DISABLED,
            )?;
        }
        info.devices[info.device_count as usize] = DeviceGrant {
            vaddr: device_vaddr,
            size: pages * 4096,
            ..grant
        };
        info.device_count += 1;
        device_vaddr += pages * 4096;
        Ok(())
    };

    for grant in spec.grants {
        match *grant {
            Grant::VtdUnits => {
                if machine.dmar.is_empty() {
                    return Err(BuildError::Grant("no DMAR table: no VT-d units to grant"));
                }
                if machine.dmar.len() > start::MAX_DMAR {
                    return Err(BuildError::Grant("DMAR table larger than the start record"));
                }
                let dmar = vtd::dmar::Dmar::parse(&machine.dmar)
                    .map_err(|_| BuildError::Grant("DMAR table does not parse"))?;
                info.dmar[..machine.dmar.len()].copy_from_slice(&machine.dmar);
                info.dmar_len = machine.dmar.len() as u64;
                for unit in &dmar.drhds {
                    let grant = DeviceGrant {
                        kind: device_kind::VTD_REGISTERS,
                        paddr: unit.register_base,
                        ..DeviceGrant::default()
                    };
                    map_device(
                        objects,
                        &mut space,
                        &mut info,
                        grant,
                        unit.register_bytes() / 4096,
                    )?;
                }
            }
            Grant::PciFunctions { vendor, device } => {
                for f in machine
                    .pci
                    .iter()
                    .filter(|f| f.vendor == vendor && f.device == device)
                {
                    if f.bar0 == 0 {
                        sel4_rt::say!(
                            "init: {} {vendor:04x}:{device:04x} has no memory BAR0, skipped",
                            Bdf(f.bdf)
                        );
                        continue;
                    }
                    machine
                        .config
                        .enable_dma(f.bdf)
                        .map_err(kernel("PCI command register"))?;
                    let grant = DeviceGrant {
                        kind: device_kind::PCI_BAR0,
                        bdf: u64::from(f.bdf),
                        id: (u64::from(vendor) << 16) | u64::from(device),
                        paddr: f.bar0,
                        ..DeviceGrant::default()
                    };
                    map_device(objects, &mut space, &mut info, grant, 1)?;
                }
                for b in machine.pci.iter().filter(|f| f.bridge.is_some()) {
                    let (secondary, subordinate) = b.bridge.expect("filtered");
                    if info.bridge_count as usize >= start::MAX_BRIDGES {
                        break;
                    }
                    info.bridges[info.bridge_count as usize] = Bridge {
                        bdf: b.bdf,
                        secondary,
                        subordinate,
                        reserved: 0,
                    };
                    info.bridge_count += 1;
                }
            }
            Grant::DmaPool { pages } => {
                let (first, paddr) = objects.contiguous_frames(pages)?;
                for i in 0..pages {
                    space.map(
                        objects,
                        Cap::from_cptr(first + i),
                        DMA_VADDR + i * 4096,
                        CapRights::READ_WRITE,
                        vm_attributes::WRITE_BACK,
                    )?;
                }
                info.dma = start::DmaGrant {
                    vaddr: DMA_VADDR,
                    paddr,
                    size: pages * 4096,
                };
            }
            Grant::Msi { irq } => {
                let handler_slot = objects.slots.take()?;
                init::IRQ_CONTROL
                    .get_msi(init::CNODE, handler_slot, DEPTH, 0, 0, 0, 0, irq)
                    .map_err(kernel("IRQControl GetMSI"))?;
                let handler: Cap<cap_type::IrqHandler> = Cap::from_cptr(handler_slot);
                let ntfn: Cap<cap_type::Notification> = objects.create(ObjectType::Notification)?;
                // The kernel signals with the badge of the capability the handler holds:
                // a non-zero one, so the process can tell a signal from none.
                let badged = objects.slots.take()?;
                init::CNODE
                    .mint(
                        badged,
                        DEPTH,
                        init::CNODE,
                        ntfn.cptr(),
                        DEPTH,
                        CapRights::ALL,
                        cap_data::badge(IRQ_BADGE),
                    )
                    .map_err(kernel("CNode Mint (interrupt notification)"))?;
                handler
                    .set_notification(Cap::from_cptr(badged))
                    .map_err(kernel("IRQHandler SetNotification"))?;
                for (dest, src) in [
                    (slot::IRQ_NOTIFICATION, ntfn.cptr()),
                    (slot::IRQ_HANDLER, handler.cptr()),
                ] {
                    cnode
                        .copy(dest, CSPACE_BITS, init::CNODE, src, DEPTH, CapRights::ALL)
                        .map_err(kernel("CNode Copy (interrupt)"))?;
                }
                info.irq_notification = slot::IRQ_NOTIFICATION;
                info.irq_handler = slot::IRQ_HANDLER;
                info.irq_vector = sel4_rt::sys::USER_VECTOR_BASE + irq;
                caps += 2;
            }
        }
    }

    // The start-up record, read-only.
    let info_frame: Cap<cap_type::Page> = objects.create(ObjectType::X86_4K)?;
    write_start_info(objects, window, info_frame, &info)?;
    space.map(
        objects,
        info_frame,
        START_INFO_VADDR,
        CapRights::READ,
        vm_attributes::WRITE_BACK,
    )?;

    // The thread: its CSpace root is the CNode with a guard that fills the rest of the
    // word, so the process names slot n by the plain number n.
    let guard = cap_data::guard(0, Word::from(Word::BITS) - CSPACE_BITS);
    tcb.configure(
        slot::FAULT,
        spec.priority,
        spec.priority,
        cnode,
        guard,
        pml4,
        IPC_BUFFER_VADDR,
        ipc_frame,
    )
    .map_err(kernel("TCB Configure"))?;
    let regs = UserContext {
        rip: elf.entry,
        rsp: STACK_TOP,
        rdi: START_INFO_VADDR,
        ..UserContext::default()
    };
    tcb.write_registers(true, &regs)
        .map_err(kernel("TCB WriteRegisters"))?;
    Ok(Process {
        name: spec.name,
        tcb,
        space,
        image_frames,
        caps,
    })
}
