//! IOMMU hardware models for the simulation.
//!
//! Each model is the register file the real driver programs (it implements
//! [`iommu_hwio::mmio::RegisterIo`]) and the translation engine simulated devices' DMA
//! goes through: it walks the tables the driver wrote in [`sim_physmem::PhysMem`],
//! caches translations like an IOTLB, and reports faults in the hardware's own record
//! layout.

pub mod smmuv3;
pub mod vtd;

/// Direction of a DMA access, as the device issues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}
