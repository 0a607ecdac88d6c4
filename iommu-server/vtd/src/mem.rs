//! Memory seam: where root, context and PASID tables, page tables and queues come from.
//!
//! The remapping hardware reads its tables and the invalidation queue from memory and
//! writes the page request queue and invalidation-wait status words. [`DmaMemory`] hands
//! out zeroed, aligned, physically contiguous regions and tells the driver how the CPU
//! reaches them, so the same code runs on the host (heap memory, [`IdentityHeap`]) and on
//! bare metal (identity-mapped RAM). A [`PhysAddr`] is an address as the remapping
//! hardware sees it (host physical address).
//!
//! The types are [`iommu_hwio::dma`]'s, re-exported. For a remapping unit whose table
//! walks do not snoop CPU caches (ECAP.C = 0) the driver calls [`DmaMemory::flush`] after
//! table and queue updates; [`IdentityHeap`] keeps the default no-op, which QEMU's
//! intel-iommu (reading guest memory directly) needs no more than.

pub(crate) use iommu_hwio::dma::Words;
pub use iommu_hwio::dma::{DmaMemory, IdentityHeap, PhysAddr};
