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
    let mut msg = [0u8; MAX_MESSAGE_BYTES];
    let n = encode_request(request, &mut msg)?;
    let mut reply = [0u8; MAX_MESSAGE_BYTES];
    let m = endpoint
        .call(&msg[..n], &mut reply)
        .map_err(CallError::Endpoint)?;
    Ok(decode_reply(request.label(), &reply[..m])?)
}
