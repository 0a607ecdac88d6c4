//! VT-d model (being built).
