//! Framing shared by every message: a fixed header, then a postcard body.
//!
//! ```text
//! request: | version: u16 LE | label: u16 LE | postcard(body) |
//! reply:   | version: u16 LE | label: u16 LE | status: u32 LE | postcard(body) if status == 0 |
//! ```
//!
//! The label names the request (each server owns a range of labels, so a message sent to
//! the wrong server is answered with [`Error::UnknownLabel`]); a reply echoes it. The status
//! word is 0 for success or an [`Error`] code. Bodies hold only fixed-size fields, so
//! decoding never allocates, and any byte string decodes to a value or an error, never a
//! panic.

use serde::{de::DeserializeOwned, Serialize};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::Error;

/// Protocol version carried in every message. A server answers other versions with
/// [`Error::BadVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest encoded message (header included) any server accepts or produces. It fits in
/// seL4's IPC buffer (120 message registers of 8 bytes).
pub const MAX_MESSAGE_BYTES: usize = 256;

/// Header of a request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RequestHeader {
    pub version: U16,
    pub label: U16,
}

/// Header of a reply.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ReplyHeader {
    pub version: U16,
    pub label: U16,
    /// 0 for success, otherwise an [`Error`] code.
    pub status: U32,
}

/// A request vocabulary: a serde enum whose variants each have a fixed label.
pub trait Request: Serialize + DeserializeOwned {
    /// The label of this request.
    fn label(&self) -> u16;
    /// Whether `label` names a request of this vocabulary.
    fn is_known_label(label: u16) -> bool;
}

/// What a server learned from a request's header before (or instead of) decoding its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<R> {
    /// The label to echo in the reply.
    pub label: u16,
    /// The request, or why it could not be decoded.
    pub request: Result<R, Error>,
}

/// Encodes `request` into `buf`, returning the number of bytes written.
pub fn encode_request<R: Request>(request: &R, buf: &mut [u8]) -> Result<usize, Error> {
    let header = RequestHeader {
        version: U16::new(PROTOCOL_VERSION),
        label: U16::new(request.label()),
    };
    encode_with_header(header.as_bytes(), Some(request), buf)
}

/// Decodes a request. The label is returned even when the body is bad, so the server can
/// answer every message with a reply that names what it answers (0 if even the header was
/// truncated).
pub fn decode_request<R: Request>(bytes: &[u8]) -> Decoded<R> {
    let Ok((header, body)) = RequestHeader::read_from_prefix(bytes) else {
        return Decoded {
            label: 0,
            request: Err(Error::BadMessage),
        };
    };
    let label = header.label.get();
    let request = if bytes.len() > MAX_MESSAGE_BYTES {
        Err(Error::BadMessage)
    } else if header.version.get() != PROTOCOL_VERSION {
        Err(Error::BadVersion)
    } else if !R::is_known_label(label) {
        Err(Error::UnknownLabel)
    } else {
        match postcard::take_from_bytes::<R>(body) {
            // The body must be exactly one value whose label matches the header's.
            Ok((r, rest)) if r.label() == label && rest.is_empty() => Ok(r),
            _ => Err(Error::BadMessage),
        }
    };
    Decoded { label, request }
}

/// Encodes a reply to the request with `label`.
pub fn encode_reply<T: Serialize>(
    label: u16,
    result: Result<&T, Error>,
    buf: &mut [u8],
) -> Result<usize, Error> {
    let status = match result {
        Ok(_) => 0,
        Err(e) => e.code(),
    };
    let header = ReplyHeader {
        version: U16::new(PROTOCOL_VERSION),
        label: U16::new(label),
        status: U32::new(status),
    };
    encode_with_header(header.as_bytes(), result.ok(), buf)
}

/// Decodes a reply to the request with `label`. A reply for another label, a bad version,
/// an unknown status or a malformed body is [`Error::BadMessage`].
pub fn decode_reply<T: DeserializeOwned>(label: u16, bytes: &[u8]) -> Result<T, Error> {
    let (header, body) = ReplyHeader::read_from_prefix(bytes).map_err(|_| Error::BadMessage)?;
    if header.version.get() != PROTOCOL_VERSION
        || header.label.get() != label
        || bytes.len() > MAX_MESSAGE_BYTES
    {
        return Err(Error::BadMessage);
    }
    match header.status.get() {
        0 => match postcard::take_from_bytes::<T>(body) {
            Ok((value, [])) => Ok(value),
            _ => Err(Error::BadMessage),
        },
        code => Err(Error::from_code(code).unwrap_or(Error::BadMessage)),
    }
}

fn encode_with_header<T: Serialize>(
    header: &[u8],
    body: Option<&T>,
    buf: &mut [u8],
) -> Result<usize, Error> {
    let buf_len = buf.len().min(MAX_MESSAGE_BYTES);
    let buf = &mut buf[..buf_len];
    if buf.len() < header.len() {
        return Err(Error::NoSpace);
    }
    buf[..header.len()].copy_from_slice(header);
    let body_len = match body {
        Some(b) => postcard::to_slice(b, &mut buf[header.len()..])
            .map_err(|_| Error::NoSpace)?
            .len(),
        None => 0,
    };
    Ok(header.len() + body_len)
}
