//! Typed calls: encode a request, call through a badged endpoint, decode the reply.

use crate::wire::{decode_reply, encode_request, Reply, Request, MAX_MESSAGE_BYTES};
use crate::Error;
use platform::ClientEndpoint;

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError<E> {
    /// The server answered with an error.
    Server(Error),
    /// The endpoint failed (the server is gone).
    Endpoint(E),
}

impl<E> From<Error> for CallError<E> {
    fn from(e: Error) -> Self {
        CallError::Server(e)
    }
}

/// Sends `request` through `endpoint` and decodes the reply as `T`.
// Inlined into the caller: returns executed right after the reply arrives are predicted
// poorly (the return-address stack holds the server's frames), so fewer frames help.
#[inline(always)]
pub fn call<C: ClientEndpoint, R: Request, T: Reply>(
    endpoint: &mut C,
    request: &R,
) -> Result<T, CallError<C::Error>> {
    call_with(endpoint, request, &mut CallBuffers::new())
}

/// The request and reply buffers of a call. A client that calls often keeps one and
/// passes it to [`call_with`], so its calls do not clear two message-sized buffers each.
pub struct CallBuffers {
    msg: [u8; MAX_MESSAGE_BYTES],
    reply: [u8; MAX_MESSAGE_BYTES],
}

impl CallBuffers {
    pub const fn new() -> CallBuffers {
        CallBuffers {
            msg: [0; MAX_MESSAGE_BYTES],
            reply: [0; MAX_MESSAGE_BYTES],
        }
    }
}

impl Default for CallBuffers {
    fn default() -> Self {
        CallBuffers::new()
    }
}

/// [`call`] with the caller's buffers. Only the bytes this call encodes and receives are
/// read, so what earlier calls left in them does not matter.
#[inline(always)]
pub fn call_with<C: ClientEndpoint, R: Request, T: Reply>(
    endpoint: &mut C,
    request: &R,
    buffers: &mut CallBuffers,
) -> Result<T, CallError<C::Error>> {
    let n = encode_request(request, &mut buffers.msg)?;
    let m = endpoint
        .call(&buffers.msg[..n], &mut buffers.reply)
        .map_err(CallError::Endpoint)?;
    Ok(decode_reply(request.label(), &buffers.reply[..m])?)
}
