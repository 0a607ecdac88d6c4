//! SMMUv3 model (being built).
