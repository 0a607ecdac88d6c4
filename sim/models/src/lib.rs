//! IOMMU hardware models (being built).
