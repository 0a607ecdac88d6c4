//! `iommu_server::Hardware` over the real IOMMU drivers (no_std + alloc).
#![no_std]

extern crate alloc;

pub mod groups;
pub mod smmuv3;
pub mod vtd;
