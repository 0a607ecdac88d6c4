//! The IPC vocabulary of the IOMMU service, defined once and shared by clients and servers.
//!
//! - [`wire`]: framing (version, label, status) and the encode/decode entry points.
//! - [`pasid`]: requests and replies of pasid-server.
//! - [`iommu`]: requests and replies of iommu-server.
//! - [`records`]: fixed-layout records shared through memory (faults, ring headers).
//! - [`client`]: a typed call over any [`platform::ClientEndpoint`].
//! - [`server`]: the request loop of every server ([`server::Service`]).
//! - [`Error`]: the one error enum of every server.
//!
//! Messages are serde + postcard, except the fixed-layout bodies of the data path's map
//! and unmap (see [`wire`]); records are zerocopy structs. Decoding arbitrary bytes
//! returns a value or an error and never panics; no message holds a variable-length field,
//! so decoding never allocates.
#![no_std]

pub mod client;
pub mod error;
pub mod iommu;
pub mod pasid;
pub mod records;
pub mod server;
pub mod wire;

pub use error::Error;
pub use wire::{
    decode_reply, decode_request, encode_reply, encode_request, Decoded, Reply, Request,
    MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};

/// Runs every decoder of the protocol over `bytes`. Used by the fuzz target and by the
/// property tests: it must return for any input, without panicking.
pub fn decode_everything(bytes: &[u8]) {
    use iommu::{IommuReply, IommuRequest};
    use pasid::{PasidReply, PasidRequest};

    let p = decode_request::<PasidRequest>(bytes);
    if let Ok(req) = p.request {
        // A request that decodes must encode back to the same bytes' meaning.
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let n = encode_request(&req, &mut buf).expect("a decoded request fits");
        assert_eq!(decode_request::<PasidRequest>(&buf[..n]).request, Ok(req));
    }
    let i = decode_request::<IommuRequest>(bytes);
    if let Ok(req) = i.request {
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let n = encode_request(&req, &mut buf).expect("a decoded request fits");
        assert_eq!(decode_request::<IommuRequest>(&buf[..n]).request, Ok(req));
    }
    for label in [p.label, i.label] {
        let _ = decode_reply::<PasidReply>(label, bytes);
        let _ = decode_reply::<IommuReply>(label, bytes);
    }
    for chunk in bytes.chunks(records::FAULT_RECORD_BYTES) {
        let _ = records::FaultRecord::decode(chunk);
    }
    if let Ok((h, _)) = <records::RingHeader as zerocopy::FromBytes>::read_from_prefix(bytes) {
        let _ = h.validate(h.capacity.get());
    }
}
