//! `Hardware` over the SMMUv3 driver (being built).
