//! The deviation score every detector reports, and the running (exponentially weighted, outlier-clipped)
//! mean and spread that every detector builds its baseline from.

use serde::{Deserialize, Serialize};

/// The deviation, in standard deviations, that scores one half.
pub const HALF_SCORE_DEVIATION: f64 = 4.0;

/// The anomaly score of a deviation of `z` standard deviations, either side:
/// `q / (1 + q)` with `q = (z / 4)²`, in [0, 1). 2σ → 0.2, 4σ → 0.5, 6σ → 0.69, 8σ → 0.8,
/// 12σ → 0.9. Unlike a Gaussian p-value it never rounds to 1, so a 10σ deviation still
/// outranks a 6σ one and one threshold ranks keys of any spread alike.
pub fn two_sided_score(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    let q = (z / HALF_SCORE_DEVIATION).powi(2);
    if q.is_infinite() {
        return 1.0;
    }
    q / (1.0 + q)
}

/// The score of a deviation of `z` standard deviations in one direction only (negative `z`
/// scores 0).
pub fn one_sided_score(z: f64) -> f64 {
    if z > 0.0 {
        two_sided_score(z)
    } else {
        0.0
    }
}

/// The deviation in standard deviations that scores `score` (the band's half-width).
pub fn two_sided_z(score: f64) -> f64 {
    let score = score.clamp(0.0, 1.0 - 1e-12);
    HALF_SCORE_DEVIATION * (score / (1.0 - score)).sqrt()
}

/// An exponentially weighted mean and variance. Early on (fewer than `1 / alpha`
/// observations) it is the plain running mean and variance; updates are clipped to
/// `clip` standard deviations, so one outlier moves the baseline by a bounded amount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunningStats {
    pub count: u64,
    pub mean: f64,
    pub variance: f64,
}

impl RunningStats {
    /// The spread, never below `floor`.
    pub fn std(&self, floor: f64) -> f64 {
        self.variance.max(0.0).sqrt().max(floor)
    }

    /// How many standard deviations `value` lies from the mean.
    pub fn z(&self, value: f64, floor: f64) -> f64 {
        (value - self.mean) / self.std(floor)
    }

    /// Adds `value` with weight `alpha` (after the warm-up average), clipping the residual.
    pub fn update(&mut self, value: f64, alpha: f64, clip: f64, floor: f64) {
        if !value.is_finite() {
            return;
        }
        self.count += 1;
        if self.count == 1 {
            self.mean = value;
            self.variance = 0.0;
            return;
        }
        let weight = alpha.max(1.0 / self.count as f64);
        let mut residual = value - self.mean;
        if self.count > 2 && clip > 0.0 {
            let limit = clip * self.std(floor);
            residual = residual.clamp(-limit, limit);
        }
        self.mean += weight * residual;
        self.variance = (1.0 - weight) * (self.variance + weight * residual * residual);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_rise_with_the_deviation_and_never_saturate() {
        assert!((two_sided_score(4.0) - 0.5).abs() < 1e-12);
        assert!((two_sided_score(-8.0) - 0.8).abs() < 1e-12);
        assert!(two_sided_score(100.0) < two_sided_score(200.0));
        assert!(two_sided_score(200.0) < 1.0);
        assert_eq!(two_sided_score(f64::NAN), 0.0);
        assert_eq!(two_sided_score(f64::INFINITY), 1.0);
        assert_eq!(one_sided_score(-5.0), 0.0);
        assert!((two_sided_z(0.8) - 8.0).abs() < 1e-9);
        assert!((two_sided_z(two_sided_score(5.3)) - 5.3).abs() < 1e-9);
    }

    #[test]
    fn running_stats_learn_mean_and_spread_and_resist_outliers() {
        let mut stats = RunningStats::default();
        for i in 0..1000 {
            stats.update(10.0 + if i % 2 == 0 { 1.0 } else { -1.0 }, 0.01, 3.0, 1e-9);
        }
        assert!((stats.mean - 10.0).abs() < 0.1, "{stats:?}");
        assert!((stats.std(0.0) - 1.0).abs() < 0.1, "{stats:?}");
        let before = stats.mean;
        stats.update(1e9, 0.01, 3.0, 1e-9);
        assert!((stats.mean - before).abs() < 0.1, "{stats:?}");
    }
}
