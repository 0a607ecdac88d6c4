//! Copying message bytes. IPC messages are short (a header and a few fixed-size fields),
//! and for them a call into the C library's `memcpy` costs more than the copy: up to 64
//! bytes are copied inline as two overlapping fixed-size loads and stores.

use std::ptr::NonNull;

/// Copies `src` into `dst`, which must have the same length (panics otherwise, as
/// `copy_from_slice` does).
#[inline(always)]
pub fn copy(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if dst.len() != n {
        dst.copy_from_slice(src);
        return;
    }
    match n {
        0 => {}
        1..=3 => {
            // First, middle and last byte cover every length from 1 to 3.
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => two::<4>(dst, src),
        8..=15 => two::<8>(dst, src),
        16..=31 => two::<16>(dst, src),
        32..=64 => two::<32>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Copies the first and the last `W` bytes (overlapping in the middle); for lengths from
/// `W` to `2 * W`.
#[inline(always)]
fn two<const W: usize>(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    let head: [u8; W] = src[..W].try_into().expect("at least W bytes");
    let tail: [u8; W] = src[n - W..].try_into().expect("at least W bytes");
    dst[..W].copy_from_slice(&head);
    dst[n - W..].copy_from_slice(&tail);
}

/// A receiver's own buffer, registered with the kernel for the one system call in which
/// the receiver waits for a message (or a call's reply): the kernel copies the bytes
/// straight into it, one copy from sender to receiver as between seL4 IPC buffers,
/// instead of into the receiver's [`MsgBuf`] and out again.
#[derive(Debug, Clone, Copy)]
pub struct Landing {
    ptr: NonNull<u8>,
    cap: usize,
}

impl Landing {
    /// The buffer `buf`. Its owner must not touch `buf` until the kernel has given the
    /// registration up (see [`Landing::fill`]).
    pub fn of(buf: &mut [u8]) -> Landing {
        Landing {
            cap: buf.len(),
            ptr: NonNull::from(buf).cast(),
        }
    }

    /// Copies as much of `bytes` as fits into the buffer.
    ///
    /// # Safety
    /// The buffer this landing was made from is alive, and nothing else reads or writes
    /// it during the call.
    #[inline(always)]
    pub unsafe fn fill(self, bytes: &[u8]) {
        let n = bytes.len().min(self.cap);
        // SAFETY: `ptr` and `cap` describe a live `&mut [u8]` no one else uses now (the
        // caller's contract), and `n <= cap`.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), n) };
        copy(dst, &bytes[..n]);
    }
}

/// A process's message buffer: the bytes of the last message or reply delivered to it.
/// Its memory grows to the longest message it held and is then reused, so delivering a
/// message is one copy.
#[derive(Clone, Default)]
pub struct MsgBuf {
    /// `len` bytes of message, then what longer messages left.
    bytes: Vec<u8>,
    len: usize,
}

impl MsgBuf {
    /// Replaces the message with `bytes`.
    #[inline(always)]
    pub fn set(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if self.bytes.len() < n {
            self.grow(n);
        }
        copy(&mut self.bytes[..n], bytes);
        self.len = n;
    }

    #[cold]
    fn grow(&mut self, n: usize) {
        self.bytes.resize(n, 0);
    }

    #[inline(always)]
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }
}

impl PartialEq for MsgBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for MsgBuf {}

impl std::fmt::Debug for MsgBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_up_to_past_the_inline_cases_is_copied_exactly() {
        let src: Vec<u8> = (1..=200u8).collect();
        for n in 0..=src.len() {
            let mut dst = vec![0u8; n + 2];
            copy(&mut dst[1..=n], &src[..n]);
            assert_eq!(&dst[1..=n], &src[..n], "length {n}");
            assert_eq!((dst[0], dst[n + 1]), (0, 0), "length {n}: outside written");
        }
    }

    #[test]
    fn a_message_replaces_longer_and_shorter_ones() {
        let mut buf = MsgBuf::default();
        for n in [40usize, 3, 0, 100, 17] {
            let bytes: Vec<u8> = (0..n as u8).map(|b| b ^ 0x5A).collect();
            buf.set(&bytes);
            assert_eq!(buf.as_slice(), bytes);
            assert_eq!(buf.len(), n);
        }
        let mut other = MsgBuf::default();
        other.set(buf.as_slice());
        assert_eq!(other, buf, "equal by the message alone");
    }

    #[test]
    fn a_landing_takes_as_much_as_fits() {
        let mut buf = [0u8; 8];
        let l = Landing::of(&mut buf);
        // SAFETY: `buf` is alive and not used until the fills are done.
        unsafe { l.fill(b"abc") };
        assert_eq!(&buf, b"abc\0\0\0\0\0");
        let l = Landing::of(&mut buf);
        // SAFETY: as above.
        unsafe { l.fill(b"0123456789") };
        assert_eq!(&buf, b"01234567");
        let l = Landing::of(&mut buf[..0]);
        // SAFETY: as above (an empty buffer takes nothing).
        unsafe { l.fill(b"x") };
        assert_eq!(&buf, b"01234567");
    }

    #[test]
    #[should_panic]
    fn lengths_that_differ_panic() {
        copy(&mut [0u8; 4], &[1, 2, 3]);
    }
}
