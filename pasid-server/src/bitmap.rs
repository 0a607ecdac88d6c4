//! Free-PASID index: a three-level bitmap that finds the lowest free PASID at or above a
//! bound in constant time (at most a handful of word scans), and detects exhaustion in
//! O(1).
//!
//! - level 0: one word per chunk of 64 PASIDs, bit set = free. Grown lazily: chunks past
//!   the end of the vector have never been used and are entirely free.
//! - level 1: one bit per chunk, set = the chunk has a free PASID.
//! - level 2: one bit per level-1 word, set = that word is non-zero.
//!
//! With 2^20 PASIDs there are 16,384 chunks, 256 level-1 words and 4 level-2 words.

use alloc::vec;
use alloc::vec::Vec;

/// PASIDs per chunk (one level-0 word).
pub const CHUNK: u32 = 64;

pub struct FreeMap {
    /// Highest index managed (inclusive).
    max: u32,
    l0: Vec<u64>,
    l1: Vec<u64>,
    l2: Vec<u64>,
}

fn mask_from(bit: u32) -> u64 {
    !0u64 << bit
}

impl FreeMap {
    /// A map in which `1..=max` are free and 0 is reserved.
    pub fn new(max: u32) -> FreeMap {
        let chunks = max / CHUNK + 1;
        let l1_words = chunks.div_ceil(64);
        let l2_words = l1_words.div_ceil(64);
        let mut l1 = vec![0u64; l1_words as usize];
        for c in 0..chunks {
            l1[(c / 64) as usize] |= 1 << (c % 64);
        }
        let mut l2 = vec![0u64; l2_words as usize];
        for w in 0..l1_words {
            l2[(w / 64) as usize] |= 1 << (w % 64);
        }
        let mut map = FreeMap {
            max,
            l0: Vec::new(),
            l1,
            l2,
        };
        map.take(0);
        map
    }

    /// The level-0 word of chunk `c` as it would be if never touched.
    fn pristine(&self, c: u32) -> u64 {
        let last = self.max / CHUNK;
        if c < last {
            !0
        } else {
            // Only the bits up to `max` exist in the last chunk.
            let bits = self.max % CHUNK + 1;
            if bits == 64 {
                !0
            } else {
                (1u64 << bits) - 1
            }
        }
    }

    fn word(&self, c: u32) -> u64 {
        match self.l0.get(c as usize) {
            Some(w) => *w,
            None => self.pristine(c),
        }
    }

    fn word_mut(&mut self, c: u32) -> &mut u64 {
        while self.l0.len() <= c as usize {
            let next = self.l0.len() as u32;
            let w = self.pristine(next);
            self.l0.push(w);
        }
        &mut self.l0[c as usize]
    }

    fn set_chunk_has_free(&mut self, c: u32, has_free: bool) {
        let w = (c / 64) as usize;
        if has_free {
            self.l1[w] |= 1 << (c % 64);
        } else {
            self.l1[w] &= !(1 << (c % 64));
        }
        let t = w / 64;
        if self.l1[w] != 0 {
            self.l2[t] |= 1 << (w % 64);
        } else {
            self.l2[t] &= !(1 << (w % 64));
        }
    }

    /// Marks `p` as in use. `p` must be free.
    pub fn take(&mut self, p: u32) {
        let c = p / CHUNK;
        let w = self.word_mut(c);
        debug_assert!(
            *w & (1 << (p % CHUNK)) != 0,
            "taking a PASID that is not free"
        );
        *w &= !(1 << (p % CHUNK));
        if *w == 0 {
            self.set_chunk_has_free(c, false);
        }
    }

    /// Marks `p` as free again. `p` must be in use.
    pub fn give_back(&mut self, p: u32) {
        let c = p / CHUNK;
        let w = self.word_mut(c);
        debug_assert!(*w & (1 << (p % CHUNK)) == 0, "freeing a PASID that is free");
        let was_full = *w == 0;
        *w |= 1 << (p % CHUNK);
        if was_full {
            self.set_chunk_has_free(c, true);
        }
    }

    /// Whether `p` is free.
    #[cfg(test)]
    pub fn is_free(&self, p: u32) -> bool {
        p <= self.max && self.word(p / CHUNK) & (1 << (p % CHUNK)) != 0
    }

    /// The first chunk at or after `c` that has a free PASID.
    fn next_chunk_with_free(&self, c: u32) -> Option<u32> {
        let w = (c / 64) as usize;
        if w >= self.l1.len() {
            return None;
        }
        let bits = self.l1[w] & mask_from(c % 64);
        if bits != 0 {
            return Some(w as u32 * 64 + bits.trailing_zeros());
        }
        // Level 2: the first non-empty level-1 word after `w`.
        let next = w + 1;
        let mut t = next / 64;
        let mut bits = *self.l2.get(t)? & mask_from((next % 64) as u32);
        loop {
            if bits != 0 {
                let w = t * 64 + bits.trailing_zeros() as usize;
                return Some(w as u32 * 64 + self.l1[w].trailing_zeros());
            }
            t += 1;
            bits = *self.l2.get(t)?;
        }
    }

    /// The lowest free PASID in `min..=max`, if any.
    pub fn find(&self, min: u32, max: u32) -> Option<u32> {
        if min > max || min > self.max {
            return None;
        }
        let c = min / CHUNK;
        let bits = self.word(c) & mask_from(min % CHUNK);
        let p = if bits != 0 {
            c * CHUNK + bits.trailing_zeros()
        } else {
            let c = self.next_chunk_with_free(c + 1)?;
            c * CHUNK + self.word(c).trailing_zeros()
        };
        (p <= max).then_some(p)
    }

    /// Heap bytes held by the map.
    pub fn heap_bytes(&self) -> usize {
        (self.l0.capacity() + self.l1.capacity() + self.l2.capacity()) * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_reserved_and_allocation_is_lowest_first() {
        let mut m = FreeMap::new((1 << 20) - 1);
        assert!(!m.is_free(0));
        assert_eq!(m.find(0, 10), Some(1));
        m.take(1);
        assert_eq!(m.find(0, 10), Some(2));
        assert_eq!(m.find(1000, 2000), Some(1000));
        assert_eq!(m.find(1 << 20, u32::MAX), None);
        m.give_back(1);
        assert_eq!(m.find(0, 10), Some(1));
    }

    #[test]
    fn finds_across_full_chunks_and_level1_words() {
        let mut m = FreeMap::new((1 << 20) - 1);
        // Fill the first 64 * 64 * 2 PASIDs: two whole level-1 words' worth of chunks.
        for p in 1..(64 * 64 * 2) {
            m.take(p);
        }
        assert_eq!(m.find(1, u32::MAX), Some(64 * 64 * 2));
        assert_eq!(m.find(1, 64 * 64 * 2 - 1), None);
        m.give_back(5000);
        assert_eq!(m.find(1, u32::MAX), Some(5000));
        assert_eq!(m.find(5001, u32::MAX), Some(64 * 64 * 2));
    }

    #[test]
    fn small_spaces_end_where_they_should() {
        // A 5-bit space (e.g. hardware with 5 PASID bits): 1..=31.
        let mut m = FreeMap::new(31);
        for p in 1..=31 {
            assert_eq!(m.find(1, u32::MAX), Some(p));
            m.take(p);
        }
        assert_eq!(m.find(1, u32::MAX), None);
        // A space that ends inside a chunk but past the first.
        let mut m = FreeMap::new(100);
        for _ in 1..=100 {
            let p = m.find(1, u32::MAX).unwrap();
            m.take(p);
        }
        assert_eq!(m.find(0, u32::MAX), None);
    }

    #[test]
    fn whole_space_exhausts_and_recovers() {
        let max = (1 << 20) - 1;
        let mut m = FreeMap::new(max);
        for p in 1..=max {
            m.take(p);
        }
        assert_eq!(m.find(0, u32::MAX), None);
        m.give_back(max);
        assert_eq!(m.find(0, u32::MAX), Some(max));
        m.give_back(777_777);
        assert_eq!(m.find(0, u32::MAX), Some(777_777));
        assert_eq!(m.find(777_778, u32::MAX), Some(max));
    }
}
