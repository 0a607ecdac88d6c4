//! Circular queue index arithmetic (SMMUv3 spec §3.5 "Command and Event queues").
//!
//! A queue of `2^log2` entries is indexed by a producer and a consumer value each holding
//! an index in bits `[log2-1:0]` and a wrap bit at `log2`. Equal index and wrap: empty;
//! equal index, different wrap: full. Bit 31 of event/PRI queue PROD is the overflow
//! flag (CONS bit 31 its acknowledgement); it is carried through unchanged.

use crate::regs::Q_OVERFLOW_FLAG;

/// Geometry of a queue with `2^log2` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    log2: u8,
}

impl QueueIndex {
    /// A queue of `2^log2` entries (log2 <= 19, the architectural maximum).
    pub const fn new(log2: u8) -> Self {
        assert!(log2 <= 19);
        Self { log2 }
    }

    /// log2 of the entry count.
    pub const fn log2(&self) -> u8 {
        self.log2
    }

    /// Entry count.
    pub const fn entries(&self) -> u32 {
        1 << self.log2
    }

    /// Index bits.
    pub const fn idx(&self, p: u32) -> u32 {
        p & (self.entries() - 1)
    }

    /// Wrap bit (as a value: 0 or `entries()`).
    pub const fn wrap(&self, p: u32) -> u32 {
        p & self.entries()
    }

    /// Index and wrap bits.
    pub const fn idx_wrap(&self, p: u32) -> u32 {
        p & ((self.entries() << 1) - 1)
    }

    /// Overflow flag (bit 31).
    pub const fn ovf(&self, p: u32) -> bool {
        p & Q_OVERFLOW_FLAG != 0
    }

    /// `p` advanced by `n` entries, toggling the wrap bit on wrap, keeping the overflow
    /// flag.
    pub const fn inc(&self, p: u32, n: u32) -> u32 {
        let iw = self.idx_wrap(self.idx_wrap(p).wrapping_add(n));
        (p & Q_OVERFLOW_FLAG) | iw
    }

    /// Entries between consumer and producer.
    pub const fn used(&self, prod: u32, cons: u32) -> u32 {
        self.idx_wrap(self.idx_wrap(prod).wrapping_sub(self.idx_wrap(cons)))
    }

    /// Empty: same index, same wrap.
    pub const fn empty(&self, prod: u32, cons: u32) -> bool {
        self.idx_wrap(prod) == self.idx_wrap(cons)
    }

    /// Full: same index, different wrap.
    pub const fn full(&self, prod: u32, cons: u32) -> bool {
        self.idx(prod) == self.idx(cons) && self.wrap(prod) != self.wrap(cons)
    }

    /// Whether `n` more entries fit.
    pub const fn has_space(&self, prod: u32, cons: u32, n: u32) -> bool {
        self.entries() - self.used(prod, cons) >= n
    }

    /// Whether the entry at position `target` (index + wrap) has been consumed when the
    /// consumer is at `cons`.
    pub const fn consumed(&self, cons: u32, target: u32) -> bool {
        let d = self.idx_wrap(self.idx_wrap(cons).wrapping_sub(self.idx_wrap(target)));
        d >= 1 && d <= self.entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_full_and_wrap() {
        let q = QueueIndex::new(2); // 4 entries, wrap bit = 4
        assert!(q.empty(0, 0));
        assert!(!q.full(0, 0));
        let mut p = 0;
        for _ in 0..4 {
            assert!(q.has_space(p, 0, 1));
            p = q.inc(p, 1);
        }
        assert_eq!(p, 0b100, "index 0 with wrap set");
        assert!(q.full(p, 0));
        assert!(!q.has_space(p, 0, 1));
        assert!(!q.empty(p, 0));
        assert_eq!(q.used(p, 0), 4);
        assert!(q.empty(p, p));
        // Second lap clears the wrap bit.
        assert_eq!(q.inc(p, 4), 0);
        assert_eq!(q.inc(0b111, 1), 0);
        assert_eq!(q.used(1, 0b111), 2);
        assert!(q.has_space(1, 0b111, 2));
        assert!(!q.has_space(1, 0b111, 3));
    }

    #[test]
    fn overflow_flag_is_kept() {
        let q = QueueIndex::new(3);
        let p = Q_OVERFLOW_FLAG | 7;
        assert!(q.ovf(p));
        assert_eq!(q.inc(p, 1), Q_OVERFLOW_FLAG | 8);
        assert_eq!(q.idx(p), 7);
        assert!(
            q.empty(Q_OVERFLOW_FLAG | 3, 3),
            "overflow flag ignored for emptiness"
        );
        assert_eq!(q.idx_wrap(0xffff_ffff), 0xf);
    }

    #[test]
    fn consumed_across_wrap() {
        let q = QueueIndex::new(2);
        // Command at index 3 (wrap 0); consumer moved to 0 with wrap 1.
        assert!(q.consumed(0b100, 3));
        assert!(!q.consumed(3, 3));
        assert!(q.consumed(4, 0));
        assert!(!q.consumed(0, 0));
        // Consumer exactly one lap ahead of the target's position is still "consumed".
        assert!(q.consumed(0b101, 1));
        // One behind the target (the wrap-around distance) is not consumed.
        assert!(!q.consumed(0b110, 0b111));
    }
}
