//! The seasonal detector: a baseline per slot of a repeating season (e.g. each 5 minutes of
//! the day, or of the week), so that the nightly dip and the morning peak are expected, plus
//! one spread of the residuals pooled across slots. Until a slot has been seen in
//! `min_seasons` seasons, and whenever the seasonal residuals spread wider than the series
//! itself (a series with no season), the overall baseline stands in for it.

use serde::{Deserialize, Serialize};

use super::detector::{Direction, Verdict};
use super::gaussian::RunningStats;
use super::robust::score;

/// Settings shared by every key.
#[derive(Debug, Clone, Copy)]
pub struct SeasonalParams {
    /// Season length in microseconds (e.g. one day).
    pub season_micros: i64,
    /// Slot length in microseconds; the season is `season / slot` slots.
    pub slot_micros: i64,
    /// Weight of a new value in its slot's mean (per season, so it adapts in a few seasons).
    pub slot_alpha: f64,
    /// Weight of a new residual in the pooled spread.
    pub alpha: f64,
    pub clip: f64,
    pub min_seasons: u32,
    pub relative_floor: f64,
    pub min_std: f64,
    pub direction: Direction,
}

impl SeasonalParams {
    pub fn slots(&self) -> usize {
        (self.season_micros / self.slot_micros.max(1)).max(1) as usize
    }

    fn slot_of(&self, time_micros: i64) -> usize {
        let offset = time_micros.rem_euclid(self.season_micros.max(1));
        ((offset / self.slot_micros.max(1)) as usize).min(self.slots() - 1)
    }
}

/// One key's seasonal profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SeasonalState {
    /// Mean per slot, and how many seasons contributed.
    pub slot_means: Vec<f64>,
    pub slot_seen: Vec<u32>,
    /// The overall baseline (stand-in for slots not yet learned).
    pub overall: RunningStats,
    /// Residuals against the expected value, pooled across slots.
    pub residuals: RunningStats,
}

impl SeasonalParams {
    pub fn observe(
        &self,
        state: &mut SeasonalState,
        time_micros: i64,
        value: f64,
        z_band: f64,
    ) -> Verdict {
        if state.slot_means.len() != self.slots() {
            state.slot_means = vec![0.0; self.slots()];
            state.slot_seen = vec![0; self.slots()];
        }
        let slot = self.slot_of(time_micros);
        let learned = state.slot_seen[slot] >= self.min_seasons;
        // The seasonal profile is used only where it explains the series better than the flat
        // baseline does: on a series with no season it would only add noise.
        let seasonal = learned
            && state.residuals.count > 1
            && state.residuals.variance < state.overall.variance;
        let expected = if learned {
            state.slot_means[slot]
        } else {
            state.overall.mean
        };
        let verdict = if state.overall.count == 0 {
            Verdict::unscored()
        } else {
            let (centre, spread) = if seasonal {
                (expected + state.residuals.mean, &state.residuals)
            } else {
                (state.overall.mean, &state.overall)
            };
            let floor = self.min_std + self.relative_floor * centre.abs();
            let std = spread.std(floor);
            let z = (value - centre) / std;
            Verdict {
                score: score(self.direction, z),
                expected: Some(centre),
                lower: Some(centre - z_band * std),
                upper: Some(centre + z_band * std),
                alert_score: 0.0,
                flag: false,
            }
        };
        let floor = self.min_std + self.relative_floor * expected.abs();
        if value.is_finite() {
            if learned {
                state
                    .residuals
                    .update(value - expected, self.alpha, self.clip, floor);
            }
            let seen = state.slot_seen[slot];
            let mean = &mut state.slot_means[slot];
            if seen == 0 {
                *mean = value;
            } else {
                // Clip the slot update too, so one bad day does not teach an outlier.
                let limit = self.clip * state.residuals.std(floor).max(floor);
                let weight = self.slot_alpha.max(1.0 / (seen as f64 + 1.0));
                let residual = if state.residuals.count > 2 {
                    (value - *mean).clamp(-limit, limit)
                } else {
                    value - *mean
                };
                *mean += weight * residual;
            }
            state.slot_seen[slot] = seen.saturating_add(1);
            state.overall.update(value, self.alpha, self.clip, floor);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    fn params() -> SeasonalParams {
        SeasonalParams {
            season_micros: 24 * 60 * MINUTE,
            slot_micros: 60 * MINUTE,
            slot_alpha: 0.3,
            alpha: 0.02,
            clip: 3.0,
            min_seasons: 2,
            relative_floor: 0.01,
            min_std: 1e-9,
            direction: Direction::Both,
        }
    }

    fn daily(hour: i64) -> f64 {
        // A day/night pattern between 100 and 1,000.
        550.0 + 450.0 * ((hour as f64) / 24.0 * std::f64::consts::TAU).sin()
    }

    #[test]
    fn the_daily_pattern_is_expected_and_a_spike_at_night_is_not() {
        let params = params();
        let mut state = SeasonalState::default();
        let mut highest: f64 = 0.0;
        for hour in 0..24 * 7 {
            let noise = ((hour * 7919) % 11) as f64 - 5.0;
            let verdict = params.observe(&mut state, hour * 60 * MINUTE, daily(hour) + noise, 4.0);
            if hour >= 24 * 3 {
                highest = highest.max(verdict.score);
            }
        }
        assert!(highest < 0.5, "the pattern itself scored {highest}");
        // At 18:00 the pattern is at its low (100): 550 is normal at 06:00 but not now.
        let hour = 24 * 7 + 18;
        let verdict = params.observe(&mut state, hour * 60 * MINUTE, 550.0, 4.0);
        assert!(verdict.score > 0.9, "{verdict:?}");
        let expected = verdict.expected.unwrap_or_default();
        assert!((expected - daily(18)).abs() < 20.0, "{verdict:?}");
    }
}
