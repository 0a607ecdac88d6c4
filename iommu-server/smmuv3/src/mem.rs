//! Memory seam: where tables and queues come from.
//!
//! The SMMU reads stream tables, context descriptors, page tables and the command queue
//! from memory and writes the event queue. [`DmaMemory`] hands out zeroed, aligned,
//! physically contiguous regions and tells the driver how the CPU reaches them, so the
//! same code runs on the host (heap memory, [`IdentityHeap`]) and on bare metal
//! (identity-mapped RAM, where [`IdentityHeap`] also works if the global allocator's
//! memory is visible to the SMMU). A [`PhysAddr`] is an address as the SMMU sees it (a
//! physical address, or an IPA under stage 2).
//!
//! The types are [`iommu_hwio::dma`]'s, re-exported. This driver needs a coherent SMMU
//! (IDR0.COHACC): it orders its writes with barriers but performs no cache maintenance
//! and never calls [`DmaMemory::flush`].

pub(crate) use iommu_hwio::dma::Words;
pub use iommu_hwio::dma::{DmaMemory, IdentityHeap, PhysAddr};
