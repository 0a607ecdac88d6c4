//! An I/O address space: the mappings of one page table, kept as disjoint IOVA intervals.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use ipc_protocol::iommu::Perm;
use ipc_protocol::Error;

use crate::hw::HwDomain;

/// Size of the smallest mapping unit.
pub const PAGE: u64 = 4096;

/// One mapping: `len` bytes of granted memory `region` from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub len: u64,
    pub region: u32,
    pub offset: u64,
    pub perm: Perm,
}

pub struct Ioas {
    pub owner: u32,
    pub domain: HwDomain,
    /// Mappings by start IOVA; intervals never overlap.
    pub maps: BTreeMap<u64, Mapping>,
    /// Attachments (device, PASID) routed through this IOAS.
    pub attached: u32,
    pub mapped_bytes: u64,
}

impl Ioas {
    pub fn new(owner: u32, domain: HwDomain) -> Ioas {
        Ioas {
            owner,
            domain,
            maps: BTreeMap::new(),
            attached: 0,
            mapped_bytes: 0,
        }
    }

    /// Whether `[iova, iova + len)` meets any mapping.
    pub fn overlaps(&self, iova: u64, len: u64) -> bool {
        let end = iova + len;
        if let Some((&start, m)) = self.maps.range(..end).next_back() {
            if start + m.len > iova {
                return true;
            }
        }
        false
    }

    /// The lowest `align`-aligned IOVA in `[lo, hi)` where `len` bytes fit.
    pub fn find_free(&self, len: u64, align: u64, lo: u64, hi: u64) -> Option<u64> {
        let mut cursor = lo.checked_next_multiple_of(align)?;
        for (&start, m) in self.maps.range(lo..) {
            if cursor.checked_add(len)? <= start {
                break;
            }
            cursor = cursor.max((start + m.len).checked_next_multiple_of(align)?);
        }
        // A mapping that starts below `lo` may still reach past it.
        if let Some((&start, m)) = self.maps.range(..lo).next_back() {
            if start + m.len > cursor {
                return self.find_free(len, align, start + m.len, hi);
            }
        }
        (cursor.checked_add(len)? <= hi).then_some(cursor)
    }

    /// Checks that the mappings inside `[iova, iova + len)` can be unmapped: a mapping
    /// that straddles either end is `Invalid` (mappings are unmapped whole, as created);
    /// no mapping at all is `NotFound`. Returns the end of the range.
    pub fn check_covered(&self, iova: u64, len: u64) -> Result<u64, Error> {
        let end = iova.checked_add(len).ok_or(Error::Invalid)?;
        if let Some((&start, m)) = self.maps.range(..iova).next_back() {
            if start + m.len > iova {
                return Err(Error::Invalid);
            }
        }
        let mut inside = self.maps.range(iova..end);
        if inside.next().is_none() {
            return Err(Error::NotFound);
        }
        if let Some((&s, m)) = self.maps.range(iova..end).next_back() {
            if s + m.len > end {
                return Err(Error::Invalid);
            }
        }
        Ok(end)
    }

    /// The mappings inside `[iova, iova + len)`, checked as by [`Ioas::check_covered`].
    pub fn covered(&self, iova: u64, len: u64) -> Result<Vec<(u64, Mapping)>, Error> {
        let end = self.check_covered(iova, len)?;
        Ok(self.maps.range(iova..end).map(|(&s, m)| (s, *m)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(maps: &[(u64, u64)]) -> Ioas {
        let mut a = Ioas::new(0, HwDomain(0));
        for &(s, l) in maps {
            a.maps.insert(
                s,
                Mapping {
                    len: l,
                    region: 0,
                    offset: 0,
                    perm: Perm::RW,
                },
            );
        }
        a
    }

    #[test]
    fn overlap_detection() {
        let a = with(&[(0x1000, 0x2000), (0x8000, 0x1000)]);
        assert!(a.overlaps(0x2000, 0x1000));
        assert!(a.overlaps(0x0, 0x2000));
        assert!(!a.overlaps(0x3000, 0x5000));
        assert!(a.overlaps(0x3000, 0x5001));
        assert!(!a.overlaps(0x9000, 0x1000));
    }

    #[test]
    fn first_fit_respects_alignment_gaps_and_bounds() {
        let a = with(&[(0x1000, 0x2000), (0x4000, 0x1000)]);
        assert_eq!(a.find_free(0x1000, 0x1000, 0x1000, 1 << 20), Some(0x3000));
        assert_eq!(a.find_free(0x2000, 0x1000, 0x1000, 1 << 20), Some(0x5000));
        assert_eq!(a.find_free(0x1000, 0x10000, 0x1000, 1 << 20), Some(0x10000));
        assert_eq!(a.find_free(0x1000, 0x1000, 0x2000, 1 << 20), Some(0x3000));
        assert_eq!(a.find_free(1 << 20, 0x1000, 0x1000, 1 << 20), None);
        assert_eq!(
            a.find_free(0x1000, 0x1000, u64::MAX - 0x800, u64::MAX),
            None
        );
    }

    #[test]
    fn unmap_ranges_must_cover_whole_mappings() {
        let a = with(&[(0x1000, 0x2000), (0x4000, 0x1000)]);
        assert_eq!(a.covered(0x1000, 0x4000).unwrap().len(), 2);
        assert_eq!(a.covered(0x2000, 0x1000), Err(Error::Invalid));
        assert_eq!(a.covered(0x1000, 0x1000), Err(Error::Invalid));
        assert_eq!(a.covered(0x6000, 0x1000), Err(Error::NotFound));
        assert_eq!(a.covered(0x1000, u64::MAX), Err(Error::Invalid));
    }
}
