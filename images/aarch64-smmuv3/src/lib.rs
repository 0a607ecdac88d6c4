//! Building blocks of the aarch64 SMMUv3 test image: boot code, console,
//! device tree reader, identity map, PCIe enumeration, the `edu` driver,
//! the scenario harness and the scenarios, including the SMMUv3 ones that
//! drive the `smmuv3` crate.  The image itself is `src/main.rs`.

#![no_std]

extern crate alloc;

pub mod boot;
pub mod cache;
pub mod console;
pub mod edu;
pub mod fdt;
pub mod frames;
pub mod harness;
pub mod heap;
pub mod mmio;
pub mod mmu;
pub mod pci;
pub mod platform;
pub mod scenarios;
pub mod semihosting;
pub mod smmu_rig;
pub mod smmu_scenarios;
pub mod time;
