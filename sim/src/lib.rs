//! Deterministic simulation platform (being built).
