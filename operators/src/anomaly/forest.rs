//! The multivariate detector: streaming Half-Space Trees (Tan, Ting and Liu, "Fast anomaly
//! detection for streaming data", IJCAI 2011), an isolation-forest relative built for streams.
//! Each field is first standardised against its own running baseline and squashed into
//! (0, 1); random trees halve that unit cube; a point that lands where the previous window
//! of points was sparse is anomalous. The trees are shared by every key (drawn once from a
//! seed); a key holds only its node masses, so its state is small and fixed in size. With a
//! `shingle` above 1 the point is the last `shingle` observations of every field, so the
//! forest also learns the series' recent shape (as random cut forests do).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::detector::Verdict;
use super::gaussian::{one_sided_score, RunningStats};

/// The shared forest and its settings.
#[derive(Debug, Clone)]
pub struct ForestParams {
    pub trees: usize,
    pub depth: usize,
    /// Points per reference window; masses learned in one window score the next.
    pub window: u32,
    /// Traversal stops at the first node with fewer reference points than this.
    pub size_limit: u32,
    pub alpha: f64,
    pub clip: f64,
    pub relative_floor: f64,
    pub min_std: f64,
    /// Per tree, per internal node in heap order: the dimension and the split value.
    splits: Vec<(u8, f32)>,
    /// Fields per observation, and observations per point.
    fields: usize,
    shingle: usize,
    dimensions: usize,
}

/// One key's masses and baselines.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ForestState {
    /// Per field: its running baseline, used to standardise it.
    pub fields: Vec<RunningStats>,
    /// Reference masses (the last complete window) and the masses of the window filling now.
    pub reference: Vec<u16>,
    pub latest: Vec<u16>,
    pub filled: u32,
    pub windows: u32,
    /// Baseline of the raw mass score, to turn it into a probability-like score.
    pub raw: RunningStats,
    /// The standardised fields of the last `shingle - 1` observations, oldest first.
    #[serde(default)]
    pub previous: Vec<f32>,
}

impl ForestParams {
    /// Draws `trees` trees of `depth` over `fields` fields × `shingle` observations from
    /// `seed`.
    pub fn new(
        fields: usize,
        shingle: usize,
        trees: usize,
        depth: usize,
        window: u32,
        seed: u64,
    ) -> Self {
        let fields = fields.max(1);
        let shingle = shingle.max(1);
        let dimensions = (fields * shingle).clamp(1, u8::MAX as usize + 1);
        let internal = (1usize << depth) - 1;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut splits = Vec::with_capacity(trees * internal);
        for _ in 0..trees {
            // A random workspace per dimension that contains [0, 1] (the paper's perturbation).
            let mut low = Vec::with_capacity(dimensions);
            let mut high = Vec::with_capacity(dimensions);
            for _ in 0..dimensions {
                let s: f64 = rng.random();
                let reach = 2.0 * s.max(1.0 - s);
                low.push(s - reach);
                high.push(s + reach);
            }
            let mut tree = vec![(0u8, 0f32); internal];
            grow(&mut tree, 0, &mut low, &mut high, &mut rng);
            splits.extend(tree);
        }
        Self {
            trees,
            depth,
            window: window.max(2),
            size_limit: (window / 10).max(1),
            alpha: 2.0 / 201.0,
            clip: 3.0,
            relative_floor: 0.01,
            min_std: 1e-9,
            splits,
            fields,
            shingle,
            dimensions,
        }
    }

    /// Fields per observation.
    pub fn fields(&self) -> usize {
        self.fields
    }

    fn nodes_per_tree(&self) -> usize {
        (1usize << (self.depth + 1)) - 1
    }

    /// Scores the point `values` (one per field), then learns it. `None` when a value is
    /// missing; the score is 0 until one full window has been seen.
    pub fn observe(&self, state: &mut ForestState, values: &[f64]) -> Option<Verdict> {
        if values.len() != self.fields || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let nodes = self.nodes_per_tree() * self.trees;
        let history = self.fields * (self.shingle - 1);
        if state.reference.len() != nodes || state.previous.len() > history {
            state.reference = vec![0; nodes];
            state.latest = vec![0; nodes];
            state.fields = vec![RunningStats::default(); self.fields];
            state.previous.clear();
            state.filled = 0;
            state.windows = 0;
        }
        let mut unit = Vec::with_capacity(self.dimensions);
        unit.extend_from_slice(&state.previous);
        for (value, stats) in values.iter().zip(&state.fields) {
            let floor = self.min_std + self.relative_floor * stats.mean.abs();
            let z = if stats.count > 1 {
                stats.z(*value, floor)
            } else {
                0.0
            };
            unit.push((1.0 / (1.0 + (-z / 2.0).exp())) as f32);
        }
        for (value, stats) in values.iter().zip(state.fields.iter_mut()) {
            let floor = self.min_std + self.relative_floor * stats.mean.abs();
            stats.update(*value, self.alpha, self.clip, floor);
        }
        if unit.len() < self.dimensions {
            // The first `shingle - 1` observations only fill the shingle.
            state.previous = unit;
            return Some(Verdict::unscored());
        }
        state.previous.clear();
        state.previous.extend_from_slice(&unit[self.fields..]);

        let internal = (1usize << self.depth) - 1;
        let per_tree = self.nodes_per_tree();
        let mut mass_score = 0.0f64;
        for tree in 0..self.trees {
            let splits = &self.splits[tree * internal..(tree + 1) * internal];
            let masses = &mut state.latest[tree * per_tree..(tree + 1) * per_tree];
            let reference = &state.reference[tree * per_tree..(tree + 1) * per_tree];
            let mut node = 0usize;
            let mut scored = false;
            for depth in 0..=self.depth {
                masses[node] = masses[node].saturating_add(1);
                if !scored && (u32::from(reference[node]) < self.size_limit || depth == self.depth)
                {
                    mass_score += f64::from(reference[node]) * (1u64 << depth) as f64;
                    scored = true;
                }
                if depth == self.depth {
                    break;
                }
                let (dimension, split) = splits[node];
                node = 2 * node
                    + if unit[dimension as usize] < split {
                        1
                    } else {
                        2
                    };
            }
        }

        let verdict = if state.windows == 0 {
            Verdict::unscored()
        } else {
            // Low mass is anomalous: score the negated log mass against its own baseline.
            let raw = -(1.0 + mass_score / self.trees as f64).ln();
            let floor = self.min_std + 0.05;
            let score = if state.raw.count > 1 {
                one_sided_score(state.raw.z(raw, floor))
            } else {
                0.0
            };
            state.raw.update(raw, self.alpha, self.clip, floor);
            Verdict {
                score,
                expected: None,
                lower: None,
                upper: None,
                alert_score: 0.0,
                flag: false,
            }
        };

        state.filled += 1;
        if state.filled >= self.window {
            std::mem::swap(&mut state.reference, &mut state.latest);
            state.latest.iter_mut().for_each(|m| *m = 0);
            state.filled = 0;
            state.windows = state.windows.saturating_add(1);
        }
        Some(verdict)
    }
}

fn grow(tree: &mut [(u8, f32)], node: usize, low: &mut [f64], high: &mut [f64], rng: &mut StdRng) {
    if node >= tree.len() {
        return;
    }
    let dimension = rng.random_range(0..low.len());
    let split = 0.5 * (low[dimension] + high[dimension]);
    tree[node] = (dimension as u8, split as f32);
    let saved_high = high[dimension];
    high[dimension] = split;
    grow(tree, 2 * node + 1, low, high, rng);
    high[dimension] = saved_high;
    let saved_low = low[dimension];
    low[dimension] = split;
    grow(tree, 2 * node + 2, low, high, rng);
    low[dimension] = saved_low;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_unlike_the_recent_ones_scores_high_in_any_one_field() {
        let params = ForestParams::new(3, 1, 25, 8, 128, 7);
        let mut state = ForestState::default();
        let mut highest: f64 = 0.0;
        for i in 0..2000u32 {
            let wobble = f64::from(i % 7) - 3.0;
            let verdict = params
                .observe(&mut state, &[200.0 + wobble, 0.01, 50.0 - wobble])
                .expect("finite");
            if i > 600 {
                highest = highest.max(verdict.score);
            }
        }
        let verdict = params
            .observe(&mut state, &[200.0, 0.01, 500.0])
            .expect("finite");
        assert!(verdict.score > highest, "{verdict:?} vs {highest}");
        assert!(verdict.score > 0.6, "{verdict:?}");
        assert!(params.observe(&mut state, &[f64::NAN, 0.0, 0.0]).is_none());
    }

    #[test]
    fn state_is_fixed_in_size() {
        let params = ForestParams::new(2, 1, 10, 6, 64, 1);
        let mut state = ForestState::default();
        for i in 0..10_000 {
            params.observe(&mut state, &[f64::from(i), 1.0]);
        }
        assert_eq!(state.reference.len(), 10 * 127);
        assert_eq!(state.latest.len(), 10 * 127);
    }
}
