//! Arm SMMUv3 driver library (`no_std` + `alloc`).
//!
//! The SMMUv3 architecture specification (Arm IHI 0070) is cited as "spec §x.y"; the
//! AArch64 translation table format comes from the Arm ARM (DDI 0487) chapter D8.
//! Section numbers follow the spec's layout (registers in §6.3 in offset order, STE in
//! §5.2, CD in §5.4, commands in chapter 4, events in §7.3); issues of the spec renumber
//! some subsections, so the register, structure or command name given with each number
//! is the reference.
//!
//! # Modules
//! - [`regs`]: register offsets and fields (page 0 and page 1), the [`RegisterIo`] seam
//!   (volatile [`Mmio`] on hardware, fakes on the host) and poll timeouts
//!   ([`PollTimeout`], [`PollBudget`], [`Deadline`]); the seam, the timeouts and the
//!   memory seam below are shared with the VT-d driver through the `iommu-hwio` crate
//!   and re-exported here.
//! - [`features`]: SMMU_IDR0..5/AIDR decoded into [`Features`]; helpers that refuse what
//!   the hardware lacks.
//! - [`mem`]: the [`DmaMemory`] seam for tables and queues; [`IdentityHeap`] for the host
//!   and identity-mapped bare metal.
//! - [`ste`], [`strtab`]: stream table entries (abort, bypass, stage 1, stage 2, nested)
//!   and linear / two-level stream tables.
//! - [`cd`]: context descriptors and CD tables (single, linear, two-level).
//! - [`pagetable`]: AArch64 stage-1 tables, 4KB granule, 2MB/1GB blocks, map/unmap with
//!   block splitting, deferred freeing of emptied tables.
//! - [`cmd`], [`queue`], [`cmdq`]: command encodings, queue index arithmetic, the command
//!   queue driver with CMD_SYNC polling and command-error recovery.
//! - [`tlbi`]: the invalidation planner (range TLBI with RIL, per page or per ASID without).
//! - [`event`], [`priq`], [`evtq`]: event and PRI queue record decoding, and the output
//!   queue readers (event queue, PRI queue) with overflow detection.
//! - [`update`]: hitless STE/CD updates with documented sync counts.
//! - [`smmu`]: [`Smmu`], tying it all together.
//!
//! # Use on bare metal
//! A QEMU image reads the SMMU's base from the device tree, wraps it in [`Mmio`]
//! (`unsafe { Mmio::new(base, regs::FRAME_SIZE) }`), supplies memory through [`DmaMemory`] (for example
//! [`IdentityHeap`] over identity-mapped RAM) and a timeout ([`PollBudget`], or
//! [`Deadline`] over `regs::GenericTimer` on aarch64). The same calls, here against a
//! minimal register model whose command queue completes instantly:
//! ```
//! use smmuv3::{regs, IdentityHeap, PollBudget, Prot, RegisterIo, Smmu, SmmuConfig};
//! use std::collections::HashMap;
//!
//! #[derive(Default)]
//! struct Model(HashMap<usize, u64>);
//! impl RegisterIo for Model {
//!     fn read32(&mut self, o: usize) -> u32 {
//!         let id = smmuv3::features::QEMU_7_2_IDREGS;
//!         match o {
//!             regs::IDR0..=regs::IDR5 => id.idr[o / 4],
//!             regs::AIDR => id.aidr,
//!             regs::CR0ACK => self.read32(regs::CR0),
//!             regs::IRQ_CTRLACK => self.read32(regs::IRQ_CTRL),
//!             regs::CMDQ_CONS => self.read32(regs::CMDQ_PROD),
//!             _ => *self.0.get(&o).unwrap_or(&0) as u32,
//!         }
//!     }
//!     fn write32(&mut self, o: usize, v: u32) { self.0.insert(o, v.into()); }
//!     fn read64(&mut self, o: usize) -> u64 { *self.0.get(&o).unwrap_or(&0) }
//!     fn write64(&mut self, o: usize, v: u64) { self.0.insert(o, v); }
//! }
//!
//! let config = SmmuConfig { sid_bits: 8, va_bits: 39, ..SmmuConfig::default() };
//! let mut smmu = Smmu::new(Model::default(), IdentityHeap::new(), PollBudget::new(1000), config)?;
//! smmu.set_bypass(0x08)?;                    // a device that may DMA untranslated
//! let dom = smmu.create_domain(1)?;          // ASID 1: CD + stage-1 page table
//! smmu.attach(0x10, dom)?;                   // StreamID 0x10 (PCI 00:02.0) translates
//! smmu.map(dom, 0x10_0000, 0x4800_0000, 0x2000, Prot::READ_WRITE)?;
//! assert_eq!(smmu.translate(dom, 0x10_1004)?, Some(0x4800_1004));
//! let removed = smmu.unmap(dom, 0x10_0000, 0x2000)?; // returns after TLBI + CMD_SYNC
//! assert_eq!(removed.bytes, 0x2000);
//! smmu.set_abort(0x10)?;
//! let report = smmu.drain_events(|event| println!("{event:?}"));
//! assert!(!report.overflowed);
//! # Ok::<(), smmuv3::Error>(())
//! ```
//!
//! # Design notes
//! - STEs and CDs are only ever changed through [`update::update_entry`], whose rules
//!   (stage unused bits, flip one critical word, or break through abort) and sync counts
//!   are documented and tested in [`update`].
//! - Page tables keep the valid-entry count of each next-level table in the table
//!   descriptor's IGNORED bits `[11:2]`, so emptied tables are found without scans. Emptied
//!   tables are retired until the caller's invalidation completed.
//! - Unmap reports what it removed ([`Unmapped`]); [`tlbi::TlbiPlan`] turns that into the
//!   fewest TLBI commands (see `benches/pagetable.rs` for measured costs and counts).
//!
//! # Testing
//! Every hardware layout (IDR fields, registers, STE, CD, L1 descriptors, page-table
//! entries, each command, each event record) has unit tests against the spec's bit
//! positions. Driver behaviour (init order, CMD_SYNC completion, queue wrap, command
//! error recovery, timeouts, invalidation commands, event overflow) is tested against a
//! register model (`fake.rs`, test-only) that consumes the real command queue from
//! memory. Page tables are checked against a reference model under random map/unmap
//! sequences, including block splits. `benches/pagetable.rs` measures map/unmap cost
//! against a plain store loop and counts invalidation commands.
//!
//! # What is supported
//! Stage-1 translation with AArch64 little-endian 4KB tables (VA 25..48 bits): without
//! substreams one CD per domain, with substreams a CD table per stream (linear, or
//! two-level with CD2L) whose slots take domains by SubstreamID, so PASIDs attach through
//! [`Smmu::attach_pasid`] (see [`smmu`]); stage-2 and nested STE encodings (checked
//! against IDR0.S2P). Polling only: no interrupts or MSIs are configured. On an SMMU
//! with IDR0.PRI a PRI queue is set up ([`SmmuConfig::priq_log2`]) and read with
//! [`Smmu::drain_page_requests`]; CMD_PRI_RESP, CMD_RESUME and CMD_STALL_TERM are encoded
//! for callers that answer page requests and stalls. The driver needs IDR0.COHACC (no cache maintenance is done) and refuses
//! non-coherent SMMUs.
//!
//! # What the QEMU 7.2 model lacks
//! QEMU's `virt,iommu=smmuv3` reports IDR0=0x0d40101a IDR1=0x02730010 IDR3=0x1404
//! IDR5=0x74 (see [`features::QEMU_7_2_IDREGS`]): no stage 2 (so stage-2 and nested STEs
//! are refused), no substreams (SSIDSIZE = 0: CD tables are refused, only a single CD),
//! no CD2L, no ATS/PRI (PRIQS = 0), no stall (S1STALLD must stay 0), no HTTU (HA/HD
//! refused), no MSI, no VMID16. It supports RIL, so unmaps use range invalidation.
//! QEMU masks a linear stream table's base with the table size, so tables are aligned
//! to their size. QEMU 7.2 never toggles EVENTQ_PROD.OVFLG: a record that does not fit
//! in the event queue is dropped and GERROR.EVENTQ_ABT_ERR raised instead, which
//! [`Smmu::drain_events`] reports (`write_aborted`) and acknowledges.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod cd;
pub mod cmd;
pub mod cmdq;
pub mod error;
pub mod event;
pub mod evtq;
pub mod features;
pub mod mem;
pub mod pagetable;
pub mod priq;
pub mod queue;
pub mod regs;
pub mod smmu;
pub mod ste;
pub mod strtab;
pub mod tlbi;
pub mod update;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod smmu_tests;

pub use error::{Error, Result, Unsupported};
pub use features::Features;
pub use mem::{DmaMemory, IdentityHeap, PhysAddr};
pub use pagetable::{MemAttr, PageTable, Prot, Unmapped};
pub use regs::{Clock, Deadline, Mmio, PollBudget, PollTimeout, RegisterIo};
pub use smmu::{DomainId, Smmu, SmmuConfig, StreamTableChoice};
pub use ste::StreamConfig;
