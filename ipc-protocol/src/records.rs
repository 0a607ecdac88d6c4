//! Fixed-layout records shared through memory rather than copied through IPC: fault and
//! page-request records, and the header of the single-producer/single-consumer ring that
//! carries them from iommu-server to a client.
//!
//! All fields are little-endian and unaligned-safe, so a record can be read from any byte
//! offset of shared memory. The ring's memory belongs to the client, so everything read
//! from it is untrusted: [`FaultRecord::decode`] and [`RingHeader::validate`] return
//! errors for bad contents.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::Error;

/// What a [`FaultRecord`] reports.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No translation for the address (SMMUv3 F_TRANSLATION, VT-d not-present reasons).
    Translation = 1,
    /// A translation exists but forbids the access (SMMUv3 F_PERMISSION, VT-d FR 5/6 with a
    /// present entry).
    Permission = 2,
    /// The device's configuration is invalid (SMMUv3 C_BAD_STE/C_BAD_CD, VT-d context
    /// faults).
    BadConfig = 3,
    /// A recoverable page request that must be answered with a page response carrying
    /// `cookie`.
    PageRequest = 4,
    /// Any other hardware event; `reason` holds the hardware's code.
    Other = 5,
}

impl FaultKind {
    fn from_u16(v: u16) -> Result<FaultKind, Error> {
        Ok(match v {
            1 => FaultKind::Translation,
            2 => FaultKind::Permission,
            3 => FaultKind::BadConfig,
            4 => FaultKind::PageRequest,
            5 => FaultKind::Other,
            _ => return Err(Error::BadMessage),
        })
    }
}

/// [`FaultRecord::flags`] bits.
pub mod fault_flags {
    /// The access was a read (else a write).
    pub const READ: u16 = 1 << 0;
    /// The access was privileged.
    pub const PRIVILEGED: u16 = 1 << 1;
    /// The access was an instruction fetch.
    pub const EXEC: u16 = 1 << 2;
    /// `pasid` is valid (the transaction carried a PASID).
    pub const PASID_VALID: u16 = 1 << 3;
    /// The last request of a page request group (PRI).
    pub const LAST_IN_GROUP: u16 = 1 << 4;
    /// Every defined flag.
    pub const ALL: u16 = 0x1f;
}

/// One fault or page request, as delivered to the client that owns the device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FaultRecord {
    /// A [`FaultKind`].
    pub kind: U16,
    /// [`fault_flags`].
    pub flags: U16,
    /// The PASID of the access, valid when `flags` has `PASID_VALID`.
    pub pasid: U32,
    /// The client's handle of the device (`DeviceId`).
    pub device: U32,
    /// The hardware's own code (SMMUv3 event type, VT-d fault reason).
    pub reason: U32,
    /// The faulting I/O virtual address.
    pub address: U64,
    /// Identifies a page request for its page response; 0 for other faults.
    pub cookie: U64,
}

/// Size of one [`FaultRecord`] in bytes.
pub const FAULT_RECORD_BYTES: usize = core::mem::size_of::<FaultRecord>();

/// A decoded, validated [`FaultRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub flags: u16,
    pub pasid: Option<u32>,
    pub device: u32,
    pub reason: u32,
    pub address: u64,
    pub cookie: u64,
}

impl FaultRecord {
    /// Builds the record of `fault`.
    pub fn encode(fault: &Fault) -> FaultRecord {
        let mut flags = fault.flags & !fault_flags::PASID_VALID;
        if fault.pasid.is_some() {
            flags |= fault_flags::PASID_VALID;
        }
        FaultRecord {
            kind: U16::new(fault.kind as u16),
            flags: U16::new(flags),
            pasid: U32::new(fault.pasid.unwrap_or(0)),
            device: U32::new(fault.device),
            reason: U32::new(fault.reason),
            address: U64::new(fault.address),
            cookie: U64::new(fault.cookie),
        }
    }

    /// Reads and validates a record from untrusted bytes (exactly one record).
    pub fn decode(bytes: &[u8]) -> Result<Fault, Error> {
        let rec = FaultRecord::read_from_bytes(bytes).map_err(|_| Error::BadMessage)?;
        let kind = FaultKind::from_u16(rec.kind.get())?;
        let flags = rec.flags.get();
        if flags & !fault_flags::ALL != 0 {
            return Err(Error::BadMessage);
        }
        let pasid = if flags & fault_flags::PASID_VALID != 0 {
            let p = rec.pasid.get();
            if p > crate::pasid::PASID_MAX {
                return Err(Error::BadMessage);
            }
            Some(p)
        } else {
            None
        };
        Ok(Fault {
            kind,
            flags: flags & !fault_flags::PASID_VALID,
            pasid,
            device: rec.device.get(),
            reason: rec.reason.get(),
            address: rec.address.get(),
            cookie: rec.cookie.get(),
        })
    }
}

/// Header at the start of a fault ring; `capacity` records follow it.
///
/// The producer (iommu-server) writes records, then `tail`; the consumer (the client)
/// reads records, then `head`. Indices count records modulo 2^32; the ring is full when
/// `tail - head == capacity`. A record that finds the ring full is dropped and counted in
/// `lost`, so overflow is visible, never silent.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RingHeader {
    pub head: U32,
    pub tail: U32,
    pub capacity: U32,
    pub lost: U32,
}

/// Size of a [`RingHeader`] in bytes.
pub const RING_HEADER_BYTES: usize = core::mem::size_of::<RingHeader>();

impl RingHeader {
    /// Bytes needed for a ring of `capacity` records, or `None` on overflow.
    pub fn ring_bytes(capacity: u32) -> Option<usize> {
        (capacity as usize)
            .checked_mul(FAULT_RECORD_BYTES)?
            .checked_add(RING_HEADER_BYTES)
    }

    /// Number of records waiting, after checking the header is consistent with the
    /// `capacity` the server set up (the client may have scribbled on it).
    pub fn validate(&self, capacity: u32) -> Result<u32, Error> {
        if self.capacity.get() != capacity || capacity == 0 {
            return Err(Error::Invalid);
        }
        let pending = self.tail.get().wrapping_sub(self.head.get());
        if pending > capacity {
            return Err(Error::Invalid);
        }
        Ok(pending)
    }

    /// Slot of record index `i` in a ring of `capacity` records.
    pub fn slot(i: u32, capacity: u32) -> usize {
        (i % capacity.max(1)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_is_fixed() {
        assert_eq!(FAULT_RECORD_BYTES, 32);
        assert_eq!(RING_HEADER_BYTES, 16);
        let f = Fault {
            kind: FaultKind::Permission,
            flags: fault_flags::READ,
            pasid: Some(0x12345),
            device: 7,
            reason: 0x13,
            address: 0x1122_3344_5566_7788,
            cookie: 0,
        };
        let rec = FaultRecord::encode(&f);
        let b = rec.as_bytes();
        assert_eq!(&b[0..2], &[2, 0]);
        assert_eq!(
            &b[2..4],
            &[(fault_flags::READ | fault_flags::PASID_VALID) as u8, 0]
        );
        assert_eq!(&b[4..8], &[0x45, 0x23, 0x01, 0]);
        assert_eq!(&b[16..24], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(FaultRecord::decode(b), Ok(f));
    }

    #[test]
    fn bad_records_are_errors() {
        let mut b = FaultRecord::encode(&Fault {
            kind: FaultKind::Translation,
            flags: 0,
            pasid: None,
            device: 1,
            reason: 0x10,
            address: 0x1000,
            cookie: 0,
        })
        .as_bytes()
        .to_vec();
        assert_eq!(FaultRecord::decode(&b[..31]), Err(Error::BadMessage));
        b[0] = 9;
        assert_eq!(FaultRecord::decode(&b), Err(Error::BadMessage));
        b[0] = 1;
        b[3] = 0x80;
        assert_eq!(FaultRecord::decode(&b), Err(Error::BadMessage));
        b[3] = 0;
        b[2] = fault_flags::PASID_VALID as u8;
        b[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
        assert_eq!(FaultRecord::decode(&b), Err(Error::BadMessage));
    }

    #[test]
    fn ring_accounting() {
        let h = |head: u32, tail: u32| RingHeader {
            head: U32::new(head),
            tail: U32::new(tail),
            capacity: U32::new(8),
            lost: U32::new(0),
        };
        assert_eq!(h(0, 0).validate(8), Ok(0));
        assert_eq!(h(0, 8).validate(8), Ok(8));
        assert_eq!(h(0, 9).validate(8), Err(Error::Invalid));
        // Indices wrap at 2^32.
        assert_eq!(h(u32::MAX - 1, 3).validate(8), Ok(5));
        assert_eq!(h(0, 0).validate(16), Err(Error::Invalid));
        assert_eq!(RingHeader::slot(u32::MAX, 8), 7);
        assert_eq!(RingHeader::ring_bytes(4), Some(16 + 128));
    }
}
