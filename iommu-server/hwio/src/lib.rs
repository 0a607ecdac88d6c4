//! Hardware plumbing shared by the IOMMU driver libraries (`no_std` + `alloc`).
//!
//! The Arm SMMUv3 driver (`smmuv3`) and the Intel VT-d driver (`vtd`) program their
//! hardware through the same seams; this crate holds them once so that both drivers
//! (and their host tests and bare-metal images) agree on them:
//!
//! - [`bits`]: [`genmask`](bits::genmask), [`field_prep`](bits::field_prep) and
//!   [`field_get`](bits::field_get), the `const` helpers every register and table field
//!   definition is written with.
//! - [`mmio`]: the [`RegisterIo`](mmio::RegisterIo) seam through which a driver reads and
//!   writes its registers, with publish / consume barriers that order memory the device
//!   reads or writes (tables, queues) against register accesses; volatile
//!   [`Mmio`](mmio::Mmio) over a register frame of a given length on hardware, fakes or
//!   register models on the host.
//! - [`poll`]: how long a wait on the hardware may go on: the
//!   [`PollTimeout`](poll::PollTimeout) trait, a poll-count
//!   [`PollBudget`](poll::PollBudget), a [`Deadline`](poll::Deadline) over a
//!   [`Clock`](poll::Clock) (the Arm generic timer on aarch64, the TSC on x86_64) and
//!   [`poll_until`](poll::poll_until).
//! - [`dma`]: where tables and queues come from: [`PhysAddr`](dma::PhysAddr), the
//!   [`DmaMemory`](dma::DmaMemory) provider (with a cache-flush hook for non-coherent
//!   hardware), [`IdentityHeap`](dma::IdentityHeap) for the host and identity-mapped bare
//!   metal, and [`Words`](dma::Words), single-copy-atomic access to 64-bit words shared
//!   with the device.
//!
//! The drivers re-export these items from their own `regs` and `mem` modules, so
//! `smmuv3::regs::Mmio` and `vtd::mem::DmaMemory` name the types defined here.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bits;
pub mod dma;
pub mod mmio;
pub mod poll;
