//! The sequence detector: how new is the series' recent course? Each value is placed on a
//! coarse level of the range learned at the start (six levels across it by default, with
//! levels continuing beyond it), and the sequences of the last 1, 2, … `context` levels are
//! looked up in a bounded memory of sequences seen before. The share of them never seen is the
//! novelty: a spike, a level shift, a changed rhythm or a pattern broken at an unusual moment
//! are all sequences the series has not taken before, while a regular pattern, however wild,
//! repeats its sequences. The score blends that novelty with the robust baseline's deviation
//! score, so that how far a value lies also ranks it.
//!
//! The memory is a two-way set-associative table of sequence fingerprints: fixed in size,
//! forgetting the sequence seen longest ago when a set is full.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::detector::{Direction, Verdict};
use super::robust::{RobustParams, RobustState};

/// The learned range is widened by this fraction of itself on each side.
const RANGE_MARGIN: f64 = 0.1;

/// Levels never go further than this from the range, so that one absurd value cannot overflow.
const MAX_LEVEL: f64 = 1_000_000.0;

/// Settings shared by every key.
#[derive(Debug, Clone, Copy)]
pub struct SequenceParams {
    /// Levels across the learned range.
    pub levels: u32,
    /// The longest sequence of levels remembered.
    pub context: usize,
    /// Observations the range is learned from; after them it stays fixed.
    pub range_observations: u64,
    /// Sequences remembered (a power of two; two per set).
    pub memory: usize,
    /// The deviation score's share of the score; the novelty has the rest.
    pub deviation_weight: f64,
    pub baseline: RobustParams,
}

/// One key's memory of its sequences.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SequenceState {
    /// The range the levels divide: the lowest and highest of the first observations.
    pub low: f64,
    pub high: f64,
    /// The last `context` levels, newest last.
    pub recent_levels: VecDeque<i32>,
    /// Sequence fingerprints (0 = empty) and when each was last seen; ways `2s` and `2s + 1`
    /// form set `s`.
    pub fingerprints: Vec<u32>,
    pub last_seen: Vec<u32>,
    /// The robust baseline: the expected value, the band and the deviation score.
    pub baseline: RobustState,
}

/// A 64-bit mix (the finaliser of SplitMix64): every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl SequenceParams {
    /// The level of `value`: the learned range, widened by a tenth on each side so that a
    /// value just past the first observations' extremes is not a new level, cut in `levels`.
    fn level(&self, state: &SequenceState, value: f64) -> i32 {
        let range = (state.high - state.low).max(0.01 * state.low.abs().max(state.high.abs()));
        let range = if range > 0.0 { range } else { 1.0 };
        let low = state.low - RANGE_MARGIN * range;
        let width = range * (1.0 + 2.0 * RANGE_MARGIN);
        let level = ((value - low) / width * f64::from(self.levels)).floor();
        level.clamp(-MAX_LEVEL, MAX_LEVEL) as i32
    }

    /// Looks the sequence up, remembers it as seen now, and says whether it was new.
    fn remember(&self, state: &mut SequenceState, hash: u64, now: u32) -> bool {
        let sets = state.fingerprints.len() / 2;
        let set = ((hash >> 32) as usize) & (sets - 1);
        let fingerprint = (hash as u32) | 1;
        let (first, second) = (2 * set, 2 * set + 1);
        for way in [first, second] {
            if state.fingerprints[way] == fingerprint {
                state.last_seen[way] = now;
                return false;
            }
        }
        // Replace an empty way, else the one seen longest ago.
        let age = |way: usize| {
            if state.fingerprints[way] == 0 {
                u32::MAX
            } else {
                now.wrapping_sub(state.last_seen[way])
            }
        };
        let victim = if age(first) >= age(second) {
            first
        } else {
            second
        };
        state.fingerprints[victim] = fingerprint;
        state.last_seen[victim] = now;
        true
    }

    /// Scores `value` and learns it. `z_band` is the half-width of the reported band in the
    /// baseline's standard deviations.
    pub fn observe(&self, state: &mut SequenceState, value: f64, z_band: f64) -> Verdict {
        if state.fingerprints.len() != self.memory {
            state.fingerprints = vec![0; self.memory];
            state.last_seen = vec![0; self.memory];
        }
        // The baseline has learned every earlier observation: its count is this one's number.
        let observed = state.baseline.stats.count;
        if observed == 0 {
            state.low = value;
            state.high = value;
        } else if observed < self.range_observations {
            state.low = state.low.min(value);
            state.high = state.high.max(value);
        }
        let now = observed as u32;
        let mean = state.baseline.stats.mean;
        let mut verdict = self.baseline.observe(&mut state.baseline, value, z_band);

        let level = self.level(state, value);
        // `while`: a restored state may hold more than this detector's context.
        while state.recent_levels.len() >= self.context {
            state.recent_levels.pop_front();
        }
        state.recent_levels.push_back(level);
        // The fingerprint of the last k levels extends that of the last k - 1.
        let mut hash = 0x9E37_79B9_7F4A_7C15_u64;
        let mut new_sequences = 0;
        let sequences = state.recent_levels.len();
        for index in (0..sequences).rev() {
            let level = state.recent_levels[index];
            hash = mix(hash ^ u64::from(level as u32));
            if self.remember(state, hash, now) {
                new_sequences += 1;
            }
        }
        let on_watched_side = match self.baseline.direction {
            Direction::Both => true,
            Direction::Up => value >= mean,
            Direction::Down => value <= mean,
        };
        let novelty = if on_watched_side && verdict.expected.is_some() {
            f64::from(new_sequences) / sequences as f64
        } else {
            0.0
        };
        let deviation = verdict.score;
        verdict.score = (1.0 - self.deviation_weight) * novelty + self.deviation_weight * deviation;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SequenceParams {
        SequenceParams {
            levels: 6,
            context: 7,
            range_observations: 200,
            memory: 1024,
            deviation_weight: 0.4,
            baseline: RobustParams {
                alpha: 2.0 / 301.0,
                ..RobustParams::default()
            },
        }
    }

    /// A square wave of period 8 with a little noise: regular, but far from flat.
    fn wave(i: u64) -> f64 {
        let noise = ((i * 7919) % 7) as f64 * 0.5;
        if (i / 4).is_multiple_of(2) {
            100.0 + noise
        } else {
            20.0 + noise
        }
    }

    #[test]
    fn a_repeating_pattern_stops_being_new_and_a_broken_one_is() {
        let params = params();
        let mut state = SequenceState::default();
        let mut late_highest: f64 = 0.0;
        for i in 0..2000 {
            let verdict = params.observe(&mut state, wave(i), 4.0);
            if i > 1000 {
                late_highest = late_highest.max(verdict.score);
            }
        }
        assert!(late_highest < 0.3, "the learned wave scored {late_highest}");
        // The wave is high for 4 observations; staying high for a 5th never happened.
        let mut i = 2000;
        while i % 8 != 4 {
            params.observe(&mut state, wave(i), 4.0);
            i += 1;
        }
        let broken = params.observe(&mut state, 100.0, 4.0);
        // Five highs in a row: the sequences of 5, 6 and 7 levels are new (3 of 7).
        assert!(broken.score > 0.25, "{broken:?}");
        assert!(
            broken.score > 2.0 * late_highest,
            "{broken:?} vs {late_highest}"
        );
    }

    #[test]
    fn a_spike_beyond_the_range_scores_higher_than_anything_before_it() {
        let params = params();
        let mut state = SequenceState::default();
        let mut highest: f64 = 0.0;
        for i in 0..1500 {
            let verdict = params.observe(&mut state, wave(i), 4.0);
            if i > 500 {
                highest = highest.max(verdict.score);
            }
        }
        let spike = params.observe(&mut state, 400.0, 4.0);
        assert!(spike.score > 0.8, "{spike:?}");
        assert!(spike.score > highest, "{spike:?} vs {highest}");
        assert!(spike.expected.is_some() && spike.lower < spike.upper);
    }

    #[test]
    fn the_memory_stays_bounded_and_forgets_the_oldest() {
        let params = SequenceParams {
            memory: 64,
            ..params()
        };
        let mut state = SequenceState::default();
        // A random walk visits ever new sequences.
        let mut value = 0.0;
        for i in 0..10_000u64 {
            value += if mix(i).is_multiple_of(2) { 1.0 } else { -1.0 };
            params.observe(&mut state, value, 4.0);
        }
        assert_eq!(state.fingerprints.len(), 64);
        assert_eq!(state.last_seen.len(), 64);
        assert!(state.recent_levels.len() <= params.context);
        assert!(state.fingerprints.iter().all(|&f| f != 0));
    }

    #[test]
    fn one_sided_novelty_ignores_the_other_side() {
        let params = SequenceParams {
            baseline: RobustParams {
                direction: Direction::Up,
                ..params().baseline
            },
            ..params()
        };
        let mut state = SequenceState::default();
        for i in 0..1500 {
            params.observe(&mut state, wave(i), 4.0);
        }
        let drop = params.observe(&mut state, -300.0, 4.0);
        assert_eq!(drop.score, 0.0, "{drop:?}");
    }
}
