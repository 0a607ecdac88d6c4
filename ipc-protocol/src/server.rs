//! The request loop every server runs: receive, decode, handle, encode, reply.

use crate::wire::{decode_request, encode_reply, Reply, Request, MAX_MESSAGE_BYTES};
use crate::Error;
use platform::{Badge, ServerEndpoint};

/// A server's request handler. The caller is known by the badge of the capability it
/// called through, nothing else.
pub trait Service {
    type Request: Request;
    type Reply: Reply;

    fn handle(&mut self, badge: Badge, request: &Self::Request) -> Result<Self::Reply, Error>;
}

/// Decodes one request, handles it and encodes the reply into `reply`; returns the reply's
/// length. Every input, however malformed, gets a reply naming the request's label.
pub fn handle_message<S: Service>(
    service: &mut S,
    badge: Badge,
    request: &[u8],
    reply: &mut [u8; MAX_MESSAGE_BYTES],
) -> usize {
    let decoded = decode_request::<S::Request>(request);
    let result = decoded.request.and_then(|r| service.handle(badge, &r));
    match encode_reply(decoded.label, result.as_ref().map_err(|e| *e), reply) {
        Ok(n) => n,
        // Every reply fits MAX_MESSAGE_BYTES (the replies hold only fixed-size fields);
        // should one not, the caller still gets an answer.
        Err(e) => encode_reply::<()>(decoded.label, Err(e), reply).unwrap_or(0),
    }
}

/// Serves requests from `endpoint` until it stops delivering them; returns why. Bad
/// requests are answered with an error and do not stop the loop.
pub fn serve<S: Service, E: ServerEndpoint>(service: &mut S, endpoint: &mut E) -> E::Error {
    let mut request = [0u8; MAX_MESSAGE_BYTES];
    let mut reply = [0u8; MAX_MESSAGE_BYTES];
    // The length of the reply owed to the last request, sent with the next receive.
    let mut owed: Option<usize> = None;
    loop {
        let received = match owed {
            Some(n) => endpoint.reply_recv(&reply[..n], &mut request),
            None => endpoint.recv(&mut request),
        };
        let (badge, len) = match received {
            Ok(r) => r,
            Err(e) => return e,
        };
        let n = if len > request.len() {
            // Too long to be any request: answered as malformed.
            let label = u16::from_le_bytes([request[2], request[3]]);
            encode_reply::<()>(label, Err(Error::BadMessage), &mut reply).unwrap_or(0)
        } else {
            handle_message(service, badge, &request[..len], &mut reply)
        };
        owed = Some(n);
    }
}
