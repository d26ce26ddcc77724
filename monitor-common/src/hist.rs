//! The power-of-4 histograms of [`crate::PoolStats`]: the kernel picks a bucket for each value,
//! the agent turns bucket indexes back into Prometheus bucket bounds. Bucket i holds
//! 4^i <= v < 4^(i+1) units (bucket 0 also holds 0); the last bucket holds everything larger.
use crate::HIST_BUCKETS;

/// Index of the bucket holding `v`. `v` has `bits` significant bits, so v < 4^(i+1) exactly when
/// bits <= 2i + 2: one count-leading-zeros, no loop (the verifier would unroll one).
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    let i = bits.saturating_sub(1) / 2;
    if i >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        i
    }
}

/// Exclusive upper bound of bucket `i` in units, or `None` for the last bucket (unbounded).
pub const fn upper_bound(i: usize) -> Option<u64> {
    if i + 1 >= HIST_BUCKETS {
        None
    } else {
        Some(1u64 << (2 * (i + 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_below_its_bucket_bound_and_at_or_above_the_previous_one() {
        let mut values = std::vec![0u64, 1, 2, 3, 4, 5, 15, 16, 17, 1000, 1 << 20, u64::MAX];
        for i in 0..64 {
            values.push(1u64 << i);
            values.push((1u64 << i).saturating_sub(1));
        }
        for v in values {
            let b = bucket(v);
            assert!(b < HIST_BUCKETS, "{v}");
            if let Some(upper) = upper_bound(b) {
                assert!(v < upper, "{v} in bucket {b} (< {upper})");
            }
            if b > 0 {
                assert!(v >= upper_bound(b - 1).unwrap(), "{v} in bucket {b}");
            }
        }
    }

    #[test]
    fn bounds_are_powers_of_four() {
        assert_eq!((bucket(0), bucket(3), bucket(4), bucket(15), bucket(16)), (0, 0, 1, 1, 2));
        assert_eq!(upper_bound(0), Some(4));
        assert_eq!(upper_bound(1), Some(16));
        assert_eq!(upper_bound(HIST_BUCKETS - 2), Some(4u64.pow(HIST_BUCKETS as u32 - 1)));
        assert_eq!(upper_bound(HIST_BUCKETS - 1), None);
        assert_eq!(bucket(u64::MAX), HIST_BUCKETS - 1);
    }
}
