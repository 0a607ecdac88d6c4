//! iommu-server: the authority over the IOMMU hardware.
//!
//! It will own the SMMUv3 and VT-d registers, tables and queues, keep the objects clients
//! use (devices, I/O address spaces, attachments, SVA binds, fault queues; see
//! `ipc_protocol::iommu` for the vocabulary) and route faults and page requests to the
//! client that owns the device. The hardware drivers are libraries beside this crate
//! (`iommu-server/smmuv3`). The server logic itself is not written yet.
#![no_std]
