//! The median of a benchmark's repeated measurements with a distribution-free 95 % confidence
//! interval for it: the order statistics the binomial sign test gives, which assume nothing
//! about the shape of the spread. On a shared machine a run's rounds are heavy-tailed (a slow
//! spell of the machine makes one round's p99 ten times the others'), so a mean and a standard
//! error would say little; the median and this interval stay honest.

/// The median of some measurements, and the 95 % interval for it when there are enough.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianInterval {
    pub median: f64,
    /// `None` under six measurements: no pair of order statistics covers the median with 95 %
    /// confidence then.
    pub interval: Option<(f64, f64)>,
}

/// The median (the mean of the middle two for an even count) of `values`, with the interval
/// `[x(k), x(n-k+1)]` of the sorted values for the largest `k` with
/// P(Binomial(n, ½) ≤ k − 1) ≤ 0.025. `None` for no values; NaN values are left out.
pub fn median_with_interval(values: &[f64]) -> Option<MedianInterval> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let k = lower_rank(n);
    let interval = (k >= 1).then(|| (sorted[k - 1], sorted[n - k]));
    Some(MedianInterval { median, interval })
}

/// The largest k (1-based) with P(Binomial(n, ½) ≤ k − 1) ≤ 0.025, or 0 when even k = 1 fails.
/// The probabilities are summed from their logarithms, since ½ⁿ underflows from n = 1,075 on.
fn lower_rank(n: usize) -> usize {
    let mut log_probability = -(n as f64) * std::f64::consts::LN_2;
    let mut cumulative = log_probability.exp();
    let mut k = 0;
    while k < n / 2 && cumulative <= 0.025 {
        log_probability += ((n - k) as f64 / (k + 1) as f64).ln();
        cumulative += log_probability.exp();
        k += 1;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_match_the_sign_test_tables() {
        // Published ranks for a 95 % interval for the median (e.g. Conover's table A3).
        assert_eq!(lower_rank(5), 0);
        assert_eq!(lower_rank(6), 1);
        assert_eq!(lower_rank(12), 3);
        assert_eq!(lower_rank(20), 6);
        assert_eq!(lower_rank(30), 10);
        assert_eq!(lower_rank(40), 14);
        // Beyond where ½ⁿ underflows: the normal approximation gives n/2 − 1.96·√n/2 ≈ 956.
        let large = lower_rank(2_000);
        assert!((950..=960).contains(&large), "{large}");
    }

    #[test]
    fn median_and_interval_of_a_sample() {
        let values: Vec<f64> = (1..=12).rev().map(f64::from).collect();
        let summary = median_with_interval(&values).unwrap();
        assert_eq!(summary.median, 6.5);
        assert_eq!(summary.interval, Some((3.0, 10.0)));
    }

    #[test]
    fn too_few_values_give_no_interval() {
        let summary = median_with_interval(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(summary.median, 2.0);
        assert_eq!(summary.interval, None);
        assert_eq!(median_with_interval(&[]), None);
        assert_eq!(median_with_interval(&[f64::NAN]), None);
    }

    #[test]
    fn one_wild_round_moves_neither_end_much() {
        let mut values = vec![0.1; 29];
        values.push(120.0);
        let summary = median_with_interval(&values).unwrap();
        assert_eq!(summary.median, 0.1);
        assert_eq!(summary.interval, Some((0.1, 0.1)));
    }
}
