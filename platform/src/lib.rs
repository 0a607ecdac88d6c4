//! The seam between portable server logic and a kernel.
//!
//! A server receives requests from an endpoint together with the badge of the capability
//! the caller used, and replies to the caller; a client calls an endpoint through a badged
//! capability it was given. The badge is fixed when the capability is minted, so a caller
//! cannot choose or forge it: servers identify callers by badge only.
//!
//! Implementations: [`host`] (feature `std`: threads of one process, for demonstrations and
//! tests); the deterministic simulation, seL4 and bare metal implement the same traits.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
pub mod host;

/// The identity a kernel stamps on every message sent through a minted capability.
pub type Badge = u64;

/// The receiving side of an endpoint, as a server sees it.
pub trait ServerEndpoint {
    /// Why the endpoint cannot deliver requests any more.
    type Error: core::fmt::Debug;

    /// Waits for the next request and copies it into `buf`. Returns the caller's badge and
    /// the request's full length, which exceeds `buf.len()` when the request was too long
    /// to fit (only the first `buf.len()` bytes are in `buf` then).
    fn recv(&mut self, buf: &mut [u8]) -> Result<(Badge, usize), Self::Error>;

    /// Replies to the request last received. A caller that has gone away is not an error
    /// of the server: implementations drop such replies.
    fn reply(&mut self, msg: &[u8]);

    /// Replies to the request last received with `msg`, then waits for the next request
    /// as [`ServerEndpoint::recv`] does: seL4's ReplyRecv, one kernel entry where the
    /// kernel has it. The default is [`ServerEndpoint::reply`] then
    /// [`ServerEndpoint::recv`].
    fn reply_recv(&mut self, msg: &[u8], buf: &mut [u8]) -> Result<(Badge, usize), Self::Error> {
        self.reply(msg);
        self.recv(buf)
    }
}

/// The calling side of a badged endpoint capability, as a client sees it.
pub trait ClientEndpoint {
    /// Why a call could not complete (for example, the server is gone).
    type Error: core::fmt::Debug;

    /// Sends `msg`, waits for the reply and copies it into `reply`; returns its length.
    fn call(&mut self, msg: &[u8], reply: &mut [u8]) -> Result<usize, Self::Error>;
}
