//! The robust baseline detector: an exponentially weighted mean and spread with outlier
//! clipping (a Huber-style EWMA), scoring each value by how many standard deviations it lies
//! from the baseline.

use serde::{Deserialize, Serialize};

use super::detector::{Direction, Verdict};
use super::gaussian::{one_sided_score, two_sided_score, RunningStats};

/// Settings shared by every key.
#[derive(Debug, Clone, Copy)]
pub struct RobustParams {
    /// Weight of each new observation once warm (2 / (span + 1)).
    pub alpha: f64,
    /// Residuals beyond this many standard deviations move the baseline as if they were at it.
    pub clip: f64,
    /// The spread never counts as less than this fraction of |mean| (plus `min_std`), so a
    /// series that has been constant does not flag its first small wiggle.
    pub relative_floor: f64,
    pub min_std: f64,
    pub direction: Direction,
}

impl Default for RobustParams {
    fn default() -> Self {
        Self {
            alpha: 2.0 / 61.0,
            clip: 3.0,
            relative_floor: 0.01,
            min_std: 1e-9,
            direction: Direction::Both,
        }
    }
}

/// One key's baseline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RobustState {
    pub stats: RunningStats,
}

impl RobustParams {
    fn floor(&self, mean: f64) -> f64 {
        self.min_std + self.relative_floor * mean.abs()
    }

    /// Scores `value` against the baseline, then learns it. `z_band` is the half-width of the
    /// reported band in standard deviations.
    pub fn observe(&self, state: &mut RobustState, value: f64, z_band: f64) -> Verdict {
        let stats = &state.stats;
        let floor = self.floor(stats.mean);
        let verdict = if stats.count == 0 {
            Verdict::unscored()
        } else {
            let z = stats.z(value, floor);
            let std = stats.std(floor);
            Verdict {
                score: score(self.direction, z),
                expected: Some(stats.mean),
                lower: Some(stats.mean - z_band * std),
                upper: Some(stats.mean + z_band * std),
                alert_score: 0.0,
                flag: false,
            }
        };
        state.stats.update(value, self.alpha, self.clip, floor);
        verdict
    }
}

/// The score of a deviation of `z` standard deviations in the direction(s) that matter.
pub fn score(direction: Direction, z: f64) -> f64 {
    match direction {
        Direction::Both => two_sided_score(z),
        Direction::Up => one_sided_score(z),
        Direction::Down => one_sided_score(-z),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_scores_high_and_noise_does_not() {
        let params = RobustParams::default();
        let mut state = RobustState::default();
        let mut highest_noise: f64 = 0.0;
        for i in 0..500 {
            let noise = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
            let verdict = params.observe(&mut state, 100.0 + noise * 4.0, 4.0);
            if i > 50 {
                highest_noise = highest_noise.max(verdict.score);
            }
        }
        let spike = params.observe(&mut state, 160.0, 4.0);
        assert!(spike.score > 0.99, "{spike:?}");
        assert!(highest_noise < 0.5, "{highest_noise}");
        let expected = spike.expected.unwrap_or_default();
        assert!((expected - 100.0).abs() < 1.0, "{spike:?}");
        assert!(spike.lower < spike.expected && spike.expected < spike.upper);
    }

    #[test]
    fn one_sided_ignores_the_other_direction() {
        let params = RobustParams {
            direction: Direction::Up,
            ..RobustParams::default()
        };
        let mut state = RobustState::default();
        for i in 0..200 {
            params.observe(&mut state, 50.0 + (i % 5) as f64, 4.0);
        }
        assert!(params.observe(&mut state, 0.0, 4.0).score < 0.5);
        assert!(params.observe(&mut state, 100.0, 4.0).score > 0.9);
    }
}
