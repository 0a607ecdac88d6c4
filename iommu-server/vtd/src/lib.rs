//! Intel VT-d (DMA remapping) driver library (`no_std` + `alloc`).
//!
//! The Intel Virtualization Technology for Directed I/O architecture specification is
//! cited as "VT-d spec §x.y" (chapter 3 translation, 6 caching and invalidation, 7
//! faults and page requests, 8 the ACPI DMAR table, 9 translation structures, 11
//! registers). Revisions renumber some subsections, so the structure or register name
//! given with each number is the reference.
//!
//! # Modules
//! - [`dmar`]: the ACPI DMAR table parsed from untrusted bytes (checksum, every length
//!   checked, typed [`dmar::DmarError`]s): DRHD, RMRR, ATSR, RHSA, ANDD, SATC, unknown
//!   types skipped; device-scope path resolution through bridges ([`dmar::PciConfig`]).
//! - [`regs`]: register offsets and fields (§11.4), the [`RegisterIo`] seam (volatile
//!   [`Mmio`] on hardware, a model in tests) and poll timeouts ([`PollTimeout`],
//!   [`PollBudget`], [`Deadline`] over a [`Clock`] such as the x86 TSC); the seam, the
//!   timeouts and the memory seam below are shared with the SMMUv3 driver through the
//!   `iommu-hwio` crate and re-exported here.
//! - [`caps`]: CAP/ECAP decoded into [`caps::Cap`], [`caps::Ecap`] and [`Features`],
//!   with checks that refuse what the hardware lacks ([`Unsupported`]).
//! - [`mem`]: the [`DmaMemory`] seam for tables and queues; [`IdentityHeap`] for the host
//!   and identity-mapped bare metal.
//! - [`context`]: root, context (legacy and scalable), PASID directory and PASID table
//!   entries with field helpers.
//! - [`pagetable`]: second-level tables (3 or 4 levels, 4KB/2MB/1GB leaves, map/unmap,
//!   large-page splitting, emptied-table reclamation) and first-level entry encodings.
//! - [`inv`]: invalidation descriptors, register-based invalidation (CCMD, IOTLB
//!   registers), the page-selective invalidation planner and the teardown order.
//! - [`qi`]: the invalidation queue (IQA/IQH/IQT, free space from IQH, wait descriptors
//!   with status write, IQE/ITE/ICE handling).
//! - [`fault`]: fault recording registers, fault reasons, page request and page group
//!   response descriptors; [`prq`]: the page request queue.
//! - [`vtd`]: [`Vtd`], tying it together.
//!
//! # Use
//! A bare-metal image finds the register base in the DMAR table's DRHD, wraps it in
//! [`Mmio`] (`unsafe { Mmio::new(base, drhd.register_bytes() as usize) }`), supplies
//! memory through [`DmaMemory`] and a timeout. The same calls against a minimal register
//! model in which every command completes at once (register-based invalidation here; the
//! crate's own tests also drive the invalidation queue):
//! ```
//! use std::collections::HashMap;
//! use vtd::caps::{QEMU_7_2_CAP, QEMU_7_2_ECAP_LEGACY};
//! use vtd::{regs, IdentityHeap, InvalidationChoice, PollBudget, Prot, RegisterIo, Vtd, VtdConfig};
//!
//! #[derive(Default)]
//! struct Model(HashMap<usize, u64>);
//! impl RegisterIo for Model {
//!     fn read32(&mut self, o: usize) -> u32 {
//!         let gcmd = *self.0.get(&regs::GCMD).unwrap_or(&0) as u32;
//!         match o {
//!             regs::GSTS => gcmd & !regs::GCMD_WBF, // commands take effect at once
//!             _ => *self.0.get(&o).unwrap_or(&0) as u32,
//!         }
//!     }
//!     fn write32(&mut self, o: usize, v: u32) { self.0.insert(o, v.into()); }
//!     fn read64(&mut self, o: usize) -> u64 {
//!         let v = *self.0.get(&o).unwrap_or(&0);
//!         match o {
//!             regs::CAP => QEMU_7_2_CAP,
//!             regs::ECAP => QEMU_7_2_ECAP_LEGACY,
//!             regs::CCMD => v & !regs::CCMD_ICC | 1 << 59, // done, CAIG = global
//!             0xf8 => v & !regs::IOTLB_IVT | 1 << 57,      // IOTLB_REG at IRO: done
//!             _ => v,
//!         }
//!     }
//!     fn write64(&mut self, o: usize, v: u64) { self.0.insert(o, v); }
//! }
//!
//! let config = VtdConfig { invalidation: InvalidationChoice::Register, ..VtdConfig::default() };
//! let mut iommu = Vtd::new(Model::default(), IdentityHeap::new(), PollBudget::new(1000), config)?;
//! let dom = iommu.create_domain()?;          // DID 1 with a 3-level second-level table
//! iommu.attach(dom, 0, 0x18)?;               // requester 00:03.0 (legacy context entry)
//! iommu.map(dom, 0x10_0000, 0x4000_0000, 0x2000, Prot::READ_WRITE)?;
//! assert_eq!(iommu.translate(dom, 0x10_1004)?.map(|t| t.pa), Some(0x4000_1004));
//! let removed = iommu.unmap(dom, 0x10_0000, 0x2000)?; // returns after the IOTLB flush
//! assert_eq!(removed.bytes, 0x2000);
//! iommu.detach(0, 0x18)?;
//! let report = iommu.drain_faults(|f| println!("{f:?}"));
//! assert!(!report.overflowed);
//! # Ok::<(), vtd::Error>(())
//! ```
//!
//! # What is supported
//! - Legacy and scalable mode. [`Vtd`] picks scalable mode when ECAP.SMTS, ECAP.SLTS and
//!   ECAP.QI are all set, else legacy; in scalable mode each attached requester gets a
//!   PASID directory covering every PASID ECAP.PSS allows (one page, or up to 128KB for
//!   20-bit PASIDs) and the RID_PASID (0) entry with PGTT = second-level.
//! - PASIDs (scalable mode with ECAP.PASID): [`Vtd::attach_pasid`] routes a requester's
//!   requests with a PASID through a domain (a PASID entry with PGTT = second-level in
//!   the PASID table of the PASID's directory index, allocated on first use);
//!   [`Vtd::detach_pasid`] tears it down in the order of [`inv::teardown_steps`]. The
//!   requester must be attached itself while its PASIDs are ([`Error::PasidsAttached`]
//!   refuses the detach otherwise, as it does destroying a domain PASIDs use);
//!   [`Vtd::reattach`] moves its requests without PASID to another domain meanwhile.
//! - Page requests (scalable mode with ECAP.PRS): the page request queue is set up by
//!   [`Vtd::new`] (its interrupt masked), context entries get PRE,
//!   [`Vtd::drain_page_requests`] decodes the requests and reports overflow (PRS.PRO),
//!   and [`Vtd::page_group_response`] answers a group through the invalidation queue and
//!   waits for it. Page-request drain on PASID teardown (invalidation wait with PD) is not
//!   done.
//! - Pass-through domains (legacy TT = 10b, scalable PGTT = 100b) when ECAP.PT.
//! - Second-level translation with 3- or 4-level tables from SAGAW/MGAW, 4KB pages and
//!   2MB/1GB pages when CAP.SLLPS allows; unmap splits partly covered large pages and
//!   unlinks tables it empties (found through entry counts kept in ignored bits), which
//!   are released once the unmap's invalidation completed.
//! - Queued invalidation (128-bit descriptors in legacy mode, 256-bit in scalable mode)
//!   or register-based invalidation (legacy mode only); unmap returns after its
//!   invalidation completed. CAP.CM (caching mode) and CAP.RWBF are honoured.
//! - Polling only: fault events, invalidation-completion and page-request interrupts are
//!   not configured; [`Vtd::drain_faults`] and [`Vtd::drain_page_requests`] are called
//!   by the owner. Interrupt remapping is not implemented.
//! - Device-TLBs: the driver never sets DTE (nor TT = 01b), so no device caches
//!   translations through it and teardown needs no device-TLB invalidation.
//! - Encodings without a driver path of their own yet: first-level entries, nested and
//!   first-level PASID entries, device-TLB and PASID-based device-TLB descriptors. They
//!   are unit-tested against the spec's bit positions; callers on hardware with those
//!   features build on them.
//! - An [`Vtd::new`] that fails part-way leaves what it already gave the hardware
//!   (root table, queue) allocated on purpose: the hardware may still reference it.
//!
//! # What the QEMU 7.2 model lacks
//! QEMU's `intel-iommu` reports CAP 0x00d2008c22260206 and ECAP 0xf00f4a (legacy),
//! 0x480080f00f4a with `x-scalable-mode=on` and 0x490080f00f4a with `x-pasid-mode=on`
//! (constants in [`caps`]). It has no first-level translation (FLTS = 0; a PASID entry
//! with PGTT = first-level is walked as second-level), no nested translation, no page
//! requests (PRS = 0, so no page request queue), no ERS/SLADS, PSS = 0 (no PASID-tagged
//! DMA from any emulated device), a single fault recording register (NFR = 1, so a
//! second fault before draining sets PFO), and device-TLBs only with `device-iotlb=on`.
//! It accepts PASID-cache and PASID-based IOTLB descriptors without acting on them; the
//! driver therefore invalidates second-level mappings with DID-tagged IOTLB descriptors,
//! which is also what the spec prescribes for second-level translation in scalable mode.
//! QEMU reports ECAP.C = 0 but reads guest memory directly, so [`IdentityHeap`]'s no-op
//! [`DmaMemory::flush`] is enough there.
//!
//! # Testing
//! Every field encoding has unit tests against the spec's bit positions; CAP/ECAP are
//! decoded from QEMU's measured values; the DMAR parser is fed hand-built tables
//! (including QEMU's shape), truncations and bit flips; page tables are checked against a
//! reference model under pseudo-random map/unmap sequences. The driver is tested against
//! a register model (`model.rs`, test-only) that acknowledges GCMD, CCMD and IOTLB
//! commands, consumes the invalidation queue from memory, raises IQE for bad
//! descriptors, records faults, takes page requests into the page request queue, and can
//! be told never to acknowledge, to test every timeout. PASID-tagged DMA, page requests
//! and page responses are checked end to end against the simulation's VT-d model
//! (`sim/models`), which QEMU cannot replace there (PSS = 0, PRS = 0). `benches/pagetable.rs` measures map/unmap against a store loop and counts
//! page-selective invalidations.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod caps;
pub mod context;
pub mod dmar;
pub mod error;
pub mod fault;
pub mod inv;
pub mod mem;
pub mod pagetable;
pub mod prq;
pub mod qi;
pub mod regs;
pub mod vtd;

#[cfg(test)]
mod model;

pub use caps::{Features, Mode};
pub use error::{Error, Result, Unsupported};
pub use mem::{DmaMemory, IdentityHeap, PhysAddr};
pub use pagetable::{Prot, Unmapped};
#[cfg(target_arch = "x86_64")]
pub use regs::Tsc;
pub use regs::{Clock, Deadline, Mmio, PollBudget, PollTimeout, RegisterIo};
pub use vtd::{DomainId, InvalidationChoice, ModeChoice, Vtd, VtdConfig, MAX_PASID, RID_PASID};
