//! Robust statistics shared by the alert rules and the retry-storm detector: the median and the
//! Theil–Sen slope (median of pairwise slopes), which one outlier sample cannot tilt.

/// Median of `v` (sorted in place); `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}

/// Theil–Sen slope of (x, y) points; at most `max_points` evenly spaced points are used so the
/// quadratic cost stays bounded for long windows. `None` without two points at distinct x.
pub fn theil_sen(points: &[(f64, f64)], max_points: usize) -> Option<f64> {
    let step = points.len().div_ceil(max_points.max(1)).max(1);
    let pts: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    let mut slopes = Vec::with_capacity(pts.len() * pts.len() / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let dx = pts[j].0 - pts[i].0;
            if dx > 0.0 {
                slopes.push((pts[j].1 - pts[i].1) / dx);
            }
        }
    }
    median(&mut slopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn theil_sen_is_exact_on_a_line_and_ignores_an_outlier() {
        let line: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        assert_eq!(theil_sen(&line, 60), Some(3.0));
        let mut spiky = line.clone();
        spiky[10].1 = 10_000.0;
        assert_eq!(theil_sen(&spiky, 60), Some(3.0));
        assert_eq!(theil_sen(&[(1.0, 1.0)], 60), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
