//! The [`platform`] seam over simulated capabilities: a client calls through an endpoint
//! capability it holds, a server receives from one (with its bound notification's
//! signals handed to a callback), so the servers' request loops run unchanged as
//! simulated processes.

use std::cell::RefCell;
use std::rc::Rc;

use platform::{Badge, ClientEndpoint, ServerEndpoint};

use crate::{CPtr, Ctx, RecvKind, SysError};

/// A badged endpoint capability, as a client calls through it.
pub struct SimClient {
    ctx: Ctx,
    ep: CPtr,
    caps: Vec<CPtr>,
    reply_caps: Vec<CPtr>,
}

impl SimClient {
    pub fn new(ctx: Ctx, ep: CPtr) -> SimClient {
        SimClient {
            ctx,
            ep,
            caps: Vec::new(),
            reply_caps: Vec::new(),
        }
    }

    /// Capabilities to transfer with the next call.
    pub fn attach_caps(&mut self, caps: &[CPtr]) {
        self.caps = caps.to_vec();
    }

    /// Capabilities that came with the last reply.
    pub fn take_reply_caps(&mut self) -> Vec<CPtr> {
        std::mem::take(&mut self.reply_caps)
    }

    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }
}

impl ClientEndpoint for SimClient {
    type Error = SysError;

    // Inlined down to the switch: see the crate's notes on returns after a switch.
    #[inline(always)]
    fn call(&mut self, msg: &[u8], reply: &mut [u8]) -> Result<usize, SysError> {
        let r = self.ctx.call_into(self.ep, msg, &self.caps, reply);
        // Attached capabilities go with this call only, whatever its outcome.
        self.caps.clear();
        let (len, reply_caps) = r?;
        if !(reply_caps.is_empty() && self.reply_caps.is_empty()) {
            self.reply_caps = reply_caps;
        }
        Ok(len.min(reply.len()))
    }
}

/// Capabilities that came with the request a server is handling, shared between the
/// endpoint and the server's request handler.
#[derive(Clone, Default)]
pub struct ReceivedCaps(Rc<RefCell<Vec<CPtr>>>);

impl ReceivedCaps {
    /// Takes the capabilities of the current request (the handler then owns them).
    pub fn take(&self) -> Vec<CPtr> {
        let mut caps = self.0.borrow_mut();
        if caps.is_empty() {
            // The usual request brings none: nothing to move.
            return Vec::new();
        }
        std::mem::take(&mut caps)
    }

    fn set(&self, caps: Vec<CPtr>) {
        let mut held = self.0.borrow_mut();
        if !(caps.is_empty() && held.is_empty()) {
            *held = caps;
        }
    }
}

/// The receiving side of an endpoint, as a server's request loop sees it. A reply is
/// sent together with the next receive (`reply_recv`, one kernel entry). Signals of the
/// process's bound notification go to `on_signal` and do not end the receive.
pub struct SimServer<'a> {
    ctx: Ctx,
    ep: CPtr,
    /// The reply to send with the next receive (reused: replying allocates nothing).
    reply: Vec<u8>,
    reply_pending: bool,
    caps: ReceivedCaps,
    on_signal: Box<dyn FnMut(u64) + 'a>,
}

impl<'a> SimServer<'a> {
    pub fn new(ctx: Ctx, ep: CPtr) -> Self {
        SimServer {
            ctx,
            ep,
            reply: Vec::new(),
            reply_pending: false,
            caps: ReceivedCaps::default(),
            on_signal: Box::new(|_| {}),
        }
    }

    /// Calls `f` with the notification word whenever the bound notification is
    /// signalled.
    pub fn on_signal(mut self, f: impl FnMut(u64) + 'a) -> Self {
        self.on_signal = Box::new(f);
        self
    }

    /// The capabilities of the request being handled.
    pub fn received_caps(&self) -> ReceivedCaps {
        self.caps.clone()
    }
}

impl ServerEndpoint for SimServer<'_> {
    type Error = SysError;

    fn recv(&mut self, buf: &mut [u8]) -> Result<(Badge, usize), SysError> {
        if std::mem::take(&mut self.reply_pending) {
            let reply = std::mem::take(&mut self.reply);
            let r = self.next(Some(&reply), buf);
            self.reply = reply;
            r
        } else {
            self.next(None, buf)
        }
    }

    fn reply(&mut self, msg: &[u8]) {
        self.reply.clear();
        self.reply.extend_from_slice(msg);
        self.reply_pending = true;
    }

    // Inlined down to the switch, as `next`.
    #[inline(always)]
    fn reply_recv(&mut self, msg: &[u8], buf: &mut [u8]) -> Result<(Badge, usize), SysError> {
        // A reply buffered by `reply` is superseded.
        self.reply_pending = false;
        self.next(Some(msg), buf)
    }
}

impl SimServer<'_> {
    /// Sends `reply` (if any) and receives the next request, handing signals of the bound
    /// notification to `on_signal` meanwhile.
    #[inline(always)]
    fn next(
        &mut self,
        mut reply: Option<&[u8]>,
        buf: &mut [u8],
    ) -> Result<(Badge, usize), SysError> {
        // Capabilities the handler did not take are not kept.
        for c in self.caps.take() {
            self.ctx.delete(c)?;
        }
        loop {
            let r = match reply.take() {
                Some(msg) => self.ctx.reply_recv_into(self.ep, msg, &[], buf)?,
                None => self.ctx.recv_into(self.ep, buf)?,
            };
            if r.kind == RecvKind::Notification {
                (self.on_signal)(r.badge);
                continue;
            }
            self.caps.set(r.caps);
            return Ok((r.badge, r.len));
        }
    }
}
