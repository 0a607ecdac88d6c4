//! The SMMUv3 model driven by the real SMMUv3 driver (`smmuv3`), and iommu-server's
//! SMMUv3 [`Hardware`](iommu_server::Hardware) adapter tested against the model.

mod adapter;
mod model;
mod rig;
