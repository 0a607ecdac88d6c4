//! Memory a client granted, kept as runs of physically contiguous frames: mapping a
//! piece of a region costs one step per run, not per page.

use alloc::vec::Vec;

use crate::ioas::PAGE;

/// A run: pages `[at, next run's at)` of the region start at physical address `pa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    at: u64,
    pa: u64,
}

/// The frames of a region, in the order the client granted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    runs: Vec<Run>,
    pages: u64,
}

impl Frames {
    /// The region made of 4 KiB frames at these physical addresses (each page-aligned).
    pub fn new(frames: &[u64]) -> Frames {
        let mut runs: Vec<Run> = Vec::new();
        for (i, &pa) in frames.iter().enumerate() {
            let at = i as u64;
            match runs.last() {
                Some(r) if r.pa.checked_add((at - r.at) * PAGE) == Some(pa) => {}
                _ => runs.push(Run { at, pa }),
            }
        }
        Frames {
            runs,
            pages: frames.len() as u64,
        }
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE
    }

    /// Number of physically contiguous runs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The physical address of every page, in order.
    pub fn to_vec(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.pages as usize);
        for (_, pa, n) in self.runs(0, self.pages) {
            out.extend((0..n).map(|i| pa + i * PAGE));
        }
        out
    }

    /// The contiguous pieces of pages `[first, first + pages)`: `(page index relative to
    /// first, physical address, pages)`. The range must lie inside the region.
    pub fn runs(&self, first: u64, pages: u64) -> Runs<'_> {
        debug_assert!(first + pages <= self.pages, "range inside the region");
        // The run holding `first`: the last one starting at or before it.
        let idx = self
            .runs
            .partition_point(|r| r.at <= first)
            .saturating_sub(1);
        Runs {
            frames: self,
            idx,
            page: first,
            first,
            end: first + pages,
        }
    }
}

/// Iterator of [`Frames::runs`].
pub struct Runs<'a> {
    frames: &'a Frames,
    idx: usize,
    page: u64,
    first: u64,
    end: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64, u64);

    fn next(&mut self) -> Option<(u64, u64, u64)> {
        if self.page >= self.end {
            return None;
        }
        let runs = &self.frames.runs;
        let r = runs[self.idx];
        let run_end = runs.get(self.idx + 1).map_or(self.frames.pages, |n| n.at);
        let n = run_end.min(self.end) - self.page;
        let item = (self.page - self.first, r.pa + (self.page - r.at) * PAGE, n);
        self.page += n;
        self.idx += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn contiguous_frames_are_one_run() {
        let f = Frames::new(&[0x1000, 0x2000, 0x3000]);
        assert_eq!(f.run_count(), 1);
        assert_eq!(f.pages(), 3);
        assert_eq!(f.runs(0, 3).collect::<Vec<_>>(), vec![(0, 0x1000, 3)]);
        assert_eq!(f.runs(1, 2).collect::<Vec<_>>(), vec![(0, 0x2000, 2)]);
        assert_eq!(f.runs(1, 1).collect::<Vec<_>>(), vec![(0, 0x2000, 1)]);
    }

    #[test]
    fn scattered_frames_split_where_contiguity_breaks() {
        let frames = [0x5000, 0x6000, 0x1000, 0x9000, 0xa000, 0xb000, 0x2000];
        let f = Frames::new(&frames);
        assert_eq!(f.run_count(), 4);
        assert_eq!(f.to_vec(), frames.to_vec());
        assert_eq!(
            f.runs(1, 5).collect::<Vec<_>>(),
            vec![(0, 0x6000, 1), (1, 0x1000, 1), (2, 0x9000, 3)]
        );
        assert_eq!(
            f.runs(4, 3).collect::<Vec<_>>(),
            vec![(0, 0xa000, 2), (2, 0x2000, 1)]
        );
        assert_eq!(f.runs(6, 0).count(), 0);
    }

    #[test]
    fn descending_and_repeated_frames_are_separate_runs() {
        let f = Frames::new(&[0x3000, 0x2000, 0x1000, 0x1000]);
        assert_eq!(f.run_count(), 4);
        assert_eq!(f.to_vec(), vec![0x3000, 0x2000, 0x1000, 0x1000]);
        // A frame at the top of the address space does not wrap into a run.
        let top = u64::MAX - 0xfff;
        let g = Frames::new(&[top, 0]);
        assert_eq!(g.run_count(), 2);
    }

    #[test]
    fn every_piece_of_every_range_matches_the_frames() {
        let frames: Vec<u64> = [7u64, 8, 9, 2, 3, 11, 12, 13, 14, 1]
            .iter()
            .map(|p| p * PAGE)
            .collect();
        let f = Frames::new(&frames);
        for first in 0..frames.len() as u64 {
            for pages in 0..=frames.len() as u64 - first {
                let mut expanded = Vec::new();
                let mut next_rel = 0;
                for (rel, pa, n) in f.runs(first, pages) {
                    assert_eq!(rel, next_rel, "pieces are consecutive");
                    assert!(n > 0);
                    next_rel += n;
                    expanded.extend((0..n).map(|i| pa + i * PAGE));
                }
                assert_eq!(
                    expanded,
                    frames[first as usize..(first + pages) as usize].to_vec()
                );
            }
        }
    }
}
