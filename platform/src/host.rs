//! Host platform: an endpoint whose server and clients are threads of one process.
//!
//! [`endpoint`] creates an endpoint and returns its receiving side and a [`Minter`], the
//! only thing that can make client capabilities; each [`HostClient`] carries the badge it
//! was minted with, so a client holding one cannot speak with another badge.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::vec::Vec;

use crate::{Badge, ClientEndpoint, ServerEndpoint};

struct Message {
    badge: Badge,
    bytes: Vec<u8>,
    reply_to: Sender<Vec<u8>>,
}

/// The server's side of a host endpoint.
pub struct HostServer {
    rx: Receiver<Message>,
    pending: Option<Sender<Vec<u8>>>,
}

/// Mints badged client capabilities to one endpoint (held by whoever builds the system).
#[derive(Clone)]
pub struct Minter {
    tx: Sender<Message>,
}

/// A badged client capability to a host endpoint.
pub struct HostClient {
    badge: Badge,
    tx: Sender<Message>,
}

/// Why a host endpoint stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Every client capability (and the minter) is gone: no request can arrive any more.
    Closed,
    /// The server is gone: the call got no reply.
    ServerGone,
}

/// Creates an endpoint.
pub fn endpoint() -> (HostServer, Minter) {
    let (tx, rx) = channel();
    (HostServer { rx, pending: None }, Minter { tx })
}

impl Minter {
    /// A client capability that stamps `badge` on every message.
    pub fn mint(&self, badge: Badge) -> HostClient {
        HostClient {
            badge,
            tx: self.tx.clone(),
        }
    }
}

impl HostClient {
    /// The badge this capability was minted with.
    pub fn badge(&self) -> Badge {
        self.badge
    }
}

impl ServerEndpoint for HostServer {
    type Error = HostError;

    fn recv(&mut self, buf: &mut [u8]) -> Result<(Badge, usize), HostError> {
        let m = self.rx.recv().map_err(|_| HostError::Closed)?;
        let n = m.bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&m.bytes[..n]);
        self.pending = Some(m.reply_to);
        Ok((m.badge, m.bytes.len()))
    }

    fn reply(&mut self, msg: &[u8]) {
        if let Some(to) = self.pending.take() {
            // The caller may have died; its reply is dropped then.
            let _ = to.send(msg.to_vec());
        }
    }
}

impl ClientEndpoint for HostClient {
    type Error = HostError;

    fn call(&mut self, msg: &[u8], reply: &mut [u8]) -> Result<usize, HostError> {
        let (reply_to, rx) = channel();
        self.tx
            .send(Message {
                badge: self.badge,
                bytes: msg.to_vec(),
                reply_to,
            })
            .map_err(|_| HostError::ServerGone)?;
        let r = rx.recv().map_err(|_| HostError::ServerGone)?;
        let n = r.len().min(reply.len());
        reply[..n].copy_from_slice(&r[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn badges_are_stamped_by_the_capability_and_replies_reach_the_caller() {
        let (mut server, minter) = endpoint();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4];
            while let Ok((badge, len)) = server.recv(&mut buf) {
                seen.push((badge, len));
                let echo = [badge as u8, len as u8];
                server.reply(&echo);
            }
            seen
        });
        let mut a = minter.mint(7);
        let mut b = minter.mint(9);
        drop(minter);
        let mut r = [0u8; 8];
        assert_eq!(a.call(&[1, 2, 3], &mut r), Ok(2));
        assert_eq!(&r[..2], &[7, 3]);
        // An over-long request is reported with its full length.
        assert_eq!(b.call(&[0; 6], &mut r), Ok(2));
        assert_eq!(&r[..2], &[9, 6]);
        drop(a);
        drop(b);
        assert_eq!(t.join().unwrap(), vec![(7, 3), (9, 6)]);
    }

    #[test]
    fn a_call_to_a_dead_server_fails() {
        let (server, minter) = endpoint();
        drop(server);
        let mut c = minter.mint(1);
        assert_eq!(c.call(&[1], &mut [0; 4]), Err(HostError::ServerGone));
    }
}
