//! `Hardware` over the VT-d driver (being built).
