//! Framing shared by every message: a fixed header, then the body.
//!
//! ```text
//! request: | version: u16 LE | label: u16 LE | body |
//! reply:   | version: u16 LE | label: u16 LE | status: u32 LE | body if status == 0 |
//! ```
//!
//! A body is postcard, except for the labels a vocabulary declares fixed-layout
//! ([`Request::encode_fixed`], [`Reply::encode_fixed`]): there it is one little-endian
//! zerocopy record of exactly its size. Those are the requests of the data path (map and
//! unmap, issued per DMA buffer), where a fixed layout is read and written with a few
//! loads and stores instead of a varint codec.
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
pub const PROTOCOL_VERSION: u16 = 2;

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
    /// For a request whose label has a fixed-layout body: writes it to `body` and returns
    /// its length (`Err(NoSpace)` if `body` is too short). `None`: the body is postcard.
    fn encode_fixed(&self, _body: &mut [u8]) -> Option<Result<usize, Error>> {
        None
    }
    /// For a `label` with a fixed-layout body: the request `body` (all of it) holds, or
    /// why it holds none. `None`: the body is postcard.
    fn decode_fixed(_label: u16, _body: &[u8]) -> Option<Result<Self, Error>> {
        None
    }
}

/// A reply vocabulary. As for requests, the replies to some labels may have a
/// fixed-layout body.
pub trait Reply: Serialize + DeserializeOwned {
    /// For a reply to `label` with a fixed-layout body: writes it and returns its length.
    /// `None`: the body is postcard.
    fn encode_fixed(&self, _label: u16, _body: &mut [u8]) -> Option<Result<usize, Error>> {
        None
    }
    /// For the reply to a `label` with a fixed-layout body: the value `body` holds, or
    /// why it holds none. `None`: the body is postcard.
    fn decode_fixed(_label: u16, _body: &[u8]) -> Option<Result<Self, Error>> {
        None
    }
}

/// A reply with no body (used for error replies).
impl Reply for () {}

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
    let h = header.as_bytes().len();
    let buf = header_into(header.as_bytes(), buf)?;
    let body = match request.encode_fixed(&mut buf[h..]) {
        Some(n) => n?,
        None => postcard_into(request, &mut buf[h..])?,
    };
    Ok(h + body)
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
    } else if let Some(r) = R::decode_fixed(label, body) {
        r
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
pub fn encode_reply<T: Reply>(
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
    let h = header.as_bytes().len();
    let buf = header_into(header.as_bytes(), buf)?;
    let body = match result {
        Err(_) => 0,
        Ok(value) => match value.encode_fixed(label, &mut buf[h..]) {
            Some(n) => n?,
            None => postcard_into(value, &mut buf[h..])?,
        },
    };
    Ok(h + body)
}

/// Decodes a reply to the request with `label`. A reply for another label, a bad version,
/// an unknown status or a malformed body is [`Error::BadMessage`].
pub fn decode_reply<T: Reply>(label: u16, bytes: &[u8]) -> Result<T, Error> {
    let (header, body) = ReplyHeader::read_from_prefix(bytes).map_err(|_| Error::BadMessage)?;
    if header.version.get() != PROTOCOL_VERSION
        || header.label.get() != label
        || bytes.len() > MAX_MESSAGE_BYTES
    {
        return Err(Error::BadMessage);
    }
    match header.status.get() {
        0 => match T::decode_fixed(label, body) {
            Some(r) => r,
            None => match postcard::take_from_bytes::<T>(body) {
                Ok((value, [])) => Ok(value),
                _ => Err(Error::BadMessage),
            },
        },
        code => Err(Error::from_code(code).unwrap_or(Error::BadMessage)),
    }
}

/// Writes `header` at the start of `buf` (cut to [`MAX_MESSAGE_BYTES`]); returns the cut
/// buffer.
fn header_into<'a>(header: &[u8], buf: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
    let buf_len = buf.len().min(MAX_MESSAGE_BYTES);
    let buf = &mut buf[..buf_len];
    if buf.len() < header.len() {
        return Err(Error::NoSpace);
    }
    buf[..header.len()].copy_from_slice(header);
    Ok(buf)
}

fn postcard_into<T: Serialize>(value: &T, body: &mut [u8]) -> Result<usize, Error> {
    postcard::to_slice(value, body)
        .map(|b| b.len())
        .map_err(|_| Error::NoSpace)
}
