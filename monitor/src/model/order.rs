//! Stable sorting of large records (listeners, pools: hundreds of bytes each, histograms
//! inline) by sorting their indices and moving each record at most once into place: a stable
//! sort of the records themselves moves them many times, and allocates a scratch buffer of them.
use std::cmp::Ordering;

/// Sorts `v` as `v.sort_by(cmp)` does (stable: equal records keep their order).
pub fn sort_by_index<T>(v: &mut [T], mut cmp: impl FnMut(&T, &T) -> Ordering) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| cmp(&v[a], &v[b]));
    // Position k takes the record at idx[k]: follow each cycle of the permutation with swaps,
    // marking each position done (idx[k] = k) as it is filled.
    for start in 0..v.len() {
        let mut cur = start;
        loop {
            let next = idx[cur];
            idx[cur] = cur;
            if next == start || next == cur {
                break;
            }
            v.swap(cur, next);
            cur = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_as_the_standard_stable_sort_does() {
        // Pseudo-random records with many ties (key, original position).
        let mut seed = 12345u64;
        for len in [0, 1, 2, 3, 7, 64, 1000] {
            let records: Vec<(u64, usize)> = (0..len)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 60) % 5, i)
                })
                .collect();
            let mut want = records.clone();
            want.sort_by_key(|r| std::cmp::Reverse(r.0));
            let mut got = records;
            sort_by_index(&mut got, |a, b| b.0.cmp(&a.0));
            assert_eq!(got, want, "len {len}");
        }
    }
}
