//! Bit-field helpers for register and table-entry fields.
//!
//! A field is described by its mask, built with [`genmask`] from the bit positions the
//! specifications give (`[hi:lo]`); [`field_prep`] and [`field_get`] move a value into
//! and out of it. All three are `const`, so field masks and fixed encodings can be
//! constants.

/// Mask of bits `hi..=lo` of a 64-bit value.
pub const fn genmask(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Place `value` into the field described by `mask` (value is truncated to the field).
#[inline(always)]
pub const fn field_prep(mask: u64, value: u64) -> u64 {
    (value << mask.trailing_zeros()) & mask
}

/// Extract the field described by `mask`.
#[inline(always)]
pub const fn field_get(mask: u64, value: u64) -> u64 {
    (value & mask) >> mask.trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genmask_and_fields() {
        assert_eq!(genmask(3, 1), 0b1110);
        assert_eq!(genmask(63, 0), u64::MAX);
        assert_eq!(genmask(63, 59), 0xf800_0000_0000_0000);
        assert_eq!(field_prep(genmask(3, 1), 5), 0b1010);
        assert_eq!(field_prep(genmask(3, 1), 0xff), 0b1110, "value truncated");
        assert_eq!(field_get(genmask(17, 16), 0x1_0000), 1);
    }
}
