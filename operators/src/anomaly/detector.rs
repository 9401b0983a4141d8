//! One configured detector: its method (robust, seasonal, sequence or forest), its threshold, warm-up
//! and cool-down, and the per-key state it keeps. The `anomaly` operator holds one of these
//! per configured entry; the NAB evaluation drives the same type directly.

use engine::time::ConfigDuration;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::forest::{ForestParams, ForestState};
use super::gaussian::two_sided_z;
use super::robust::{RobustParams, RobustState};
use super::seasonal::{SeasonalParams, SeasonalState};
use super::sequence::{SequenceParams, SequenceState};

/// Which deviations count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Both,
    /// Only values above the expected band (latency, error rate).
    Up,
    /// Only values below it (traffic that stops).
    Down,
}

/// The methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    Robust,
    Seasonal,
    Sequence,
    Forest,
}

/// What a detector says about one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// In [0, 1]; how far the observation lies from the learned baseline.
    pub score: f64,
    /// The score as the flag sees it: 0 during warm-up and when the key scored as high within
    /// the cool-down; otherwise `score`. The flag is `alert_score >= threshold`.
    pub alert_score: f64,
    /// The expected value and band (univariate methods only).
    pub expected: Option<f64>,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub flag: bool,
}

impl Verdict {
    pub fn unscored() -> Self {
        Self {
            score: 0.0,
            alert_score: 0.0,
            expected: None,
            lower: None,
            upper: None,
            flag: false,
        }
    }
}

/// One `[[operators.<id>.detectors]]` entry as written in pipelines.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// The field scored (robust, seasonal); or use `fields` (forest).
    pub field: Option<String>,
    /// The fields scored together (forest).
    pub fields: Option<Vec<String>>,
    /// The name in output columns (`anomaly_<name>_score`); defaults to `field`, or
    /// `multivariate` for a forest.
    pub name: Option<String>,
    #[serde(default = "default_method")]
    pub method: MethodName,
    #[serde(default)]
    pub direction: Direction,
    /// Flag when the score reaches this.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Observations per key before any flag.
    #[serde(default = "default_warmup")]
    pub warmup: u64,
    /// A flag needs a score above every score of the same key in this many preceding
    /// observations: a sustained anomaly flags once at its onset, and again only if it
    /// worsens. 0 flags every observation at or above the threshold.
    #[serde(default = "default_cooldown")]
    pub cooldown: u32,
    /// Baseline memory in observations: each new one weighs 2 / (span + 1).
    #[serde(default = "default_span")]
    pub span: f64,
    /// Seasonal: the season and the slot within it.
    pub season: Option<ConfigDuration>,
    pub slot: Option<ConfigDuration>,
    #[serde(default = "default_min_seasons")]
    pub min_seasons: u32,
    /// Forest: trees, depth, points per window and the seed the trees are drawn from.
    #[serde(default = "default_trees")]
    pub trees: usize,
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_window")]
    pub window: u32,
    /// Forest: observations per point; above 1 the forest also scores the recent shape.
    #[serde(default = "default_shingle")]
    pub shingle: u32,
    #[serde(default)]
    pub seed: u64,
    /// The spread never counts as less than this fraction of the expected value.
    #[serde(default = "default_relative_floor")]
    pub relative_floor: f64,
    /// Sequence: levels across the learned range, the longest sequence remembered, the
    /// observations the range is learned from, the sequences remembered, and the deviation
    /// score's share of the score.
    #[serde(default = "default_levels")]
    pub levels: u32,
    #[serde(default = "default_context")]
    pub context: u32,
    #[serde(default = "default_range_observations")]
    pub range_observations: u64,
    #[serde(default = "default_memory")]
    pub memory: u32,
    #[serde(default = "default_deviation_weight")]
    pub deviation_weight: f64,
}

fn default_method() -> MethodName {
    MethodName::Robust
}
fn default_threshold() -> f64 {
    // About 4.9 standard deviations (see `gaussian::two_sided_score`).
    0.6
}
fn default_cooldown() -> u32 {
    12
}
fn default_warmup() -> u64 {
    30
}
fn default_span() -> f64 {
    60.0
}
fn default_min_seasons() -> u32 {
    2
}
fn default_trees() -> usize {
    16
}
fn default_depth() -> usize {
    6
}
fn default_window() -> u32 {
    64
}
fn default_shingle() -> u32 {
    1
}
fn default_relative_floor() -> f64 {
    0.01
}
fn default_levels() -> u32 {
    6
}
fn default_context() -> u32 {
    7
}
fn default_range_observations() -> u64 {
    600
}
fn default_memory() -> u32 {
    4096
}
fn default_deviation_weight() -> f64 {
    0.4
}

#[derive(Debug, Clone)]
enum Method {
    Robust(RobustParams),
    Seasonal(SeasonalParams),
    Sequence(SequenceParams),
    Forest(Box<ForestParams>),
}

/// A configured detector, shared by every key.
#[derive(Debug, Clone)]
pub struct Detector {
    pub name: String,
    pub fields: Vec<String>,
    method: Method,
    threshold: f64,
    warmup: u64,
    cooldown: u32,
    /// The band's half-width in standard deviations: the deviation that scores `threshold`.
    z_band: f64,
}

/// One key's state for one detector. Serialisable, fixed in size per detector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum MethodState {
    Robust(RobustState),
    Seasonal(SeasonalState),
    Sequence(SequenceState),
    Forest(ForestState),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DetectorState {
    pub method: MethodState,
    pub observed: u64,
    /// The decreasing run of recent scores (observation number, score): its front is the
    /// highest score of the last `cooldown` observations. At most `cooldown` entries.
    pub recent_peaks: VecDeque<(u64, f32)>,
}

impl Detector {
    /// Checks the settings; the error names the setting.
    pub fn new(config: &DetectorConfig) -> Result<Self, (&'static str, String)> {
        let fields = match (config.method, &config.field, &config.fields) {
            (_, Some(_), Some(_)) => {
                return Err(("fields", "set either `field` or `fields`, not both".into()))
            }
            (MethodName::Forest, None, Some(fields)) if !fields.is_empty() => fields.clone(),
            (MethodName::Forest, Some(field), None) => vec![field.clone()],
            (MethodName::Forest, _, _) => {
                return Err(("fields", "a forest needs `fields`, e.g. [\"p95_latency_ms\", \"error_rate\", \"rate_per_sec\"]".into()))
            }
            (_, Some(field), None) => vec![field.clone()],
            (_, None, Some(_)) => {
                return Err(("fields", "`fields` is for the forest method; robust, seasonal and sequence score one `field`".into()))
            }
            (_, None, None) => return Err(("field", "name the `field` to score, e.g. \"p95_latency_ms\"".into())),
        };
        if fields.len() > 64 {
            return Err(("fields", "at most 64 fields".into()));
        }
        if !(config.threshold > 0.0 && config.threshold < 1.0) {
            return Err((
                "threshold",
                "must be between 0 and 1 (exclusive), e.g. 0.6 (about 5 standard deviations)"
                    .into(),
            ));
        }
        if config.span.is_nan() || config.span < 1.0 {
            return Err(("span", "must be at least 1 observation".into()));
        }
        if config.relative_floor.is_nan() || config.relative_floor < 0.0 {
            return Err(("relative_floor", "must not be negative".into()));
        }
        let alpha = 2.0 / (config.span + 1.0);
        let method = match config.method {
            MethodName::Robust => Method::Robust(RobustParams {
                alpha,
                direction: config.direction,
                relative_floor: config.relative_floor,
                ..RobustParams::default()
            }),
            MethodName::Seasonal => {
                let season = config
                    .season
                    .ok_or((
                        "season",
                        "a seasonal detector needs `season`, e.g. \"1d\" or \"7d\"".to_string(),
                    ))?
                    .as_micros();
                let slot = config
                    .slot
                    .map(|s| s.as_micros())
                    .unwrap_or(5 * 60 * 1_000_000);
                if slot <= 0 || season <= 0 || season % slot != 0 {
                    return Err((
                        "slot",
                        "`season` must be a positive multiple of `slot`".into(),
                    ));
                }
                if season / slot > 100_000 {
                    return Err(("slot", "at most 100,000 slots per season".into()));
                }
                Method::Seasonal(SeasonalParams {
                    season_micros: season,
                    slot_micros: slot,
                    slot_alpha: 0.3,
                    alpha,
                    clip: 3.0,
                    min_seasons: config.min_seasons.max(1),
                    relative_floor: config.relative_floor,
                    min_std: 1e-9,
                    direction: config.direction,
                })
            }
            MethodName::Sequence => {
                if !(2..=64).contains(&config.levels) {
                    return Err(("levels", "must be 2 to 64".into()));
                }
                if !(1..=16).contains(&config.context) {
                    return Err(("context", "must be 1 to 16 observations".into()));
                }
                if config.range_observations == 0 {
                    return Err(("range_observations", "must be at least 1".into()));
                }
                if !(16..=1 << 20).contains(&config.memory) || !config.memory.is_power_of_two() {
                    return Err((
                        "memory",
                        "must be a power of two from 16 to 1048576 sequences, e.g. 4096".into(),
                    ));
                }
                if !(0.0..=1.0).contains(&config.deviation_weight) {
                    return Err(("deviation_weight", "must be between 0 and 1".into()));
                }
                Method::Sequence(SequenceParams {
                    levels: config.levels,
                    context: config.context as usize,
                    range_observations: config.range_observations,
                    memory: config.memory as usize,
                    deviation_weight: config.deviation_weight,
                    baseline: RobustParams {
                        alpha,
                        direction: config.direction,
                        relative_floor: config.relative_floor,
                        ..RobustParams::default()
                    },
                })
            }
            MethodName::Forest => {
                if config.direction != Direction::Both {
                    return Err(("direction", "the forest scores any unusual combination; `direction` applies to robust and seasonal".into()));
                }
                if !(1..=64).contains(&config.trees) {
                    return Err(("trees", "must be 1 to 64".into()));
                }
                if !(1..=12).contains(&config.depth) {
                    return Err(("depth", "must be 1 to 12".into()));
                }
                if !(8..=u16::MAX as u32).contains(&config.window) {
                    return Err(("window", "must be 8 to 65535 observations".into()));
                }
                if !(1..=16).contains(&config.shingle) {
                    return Err(("shingle", "must be 1 to 16".into()));
                }
                if fields.len() * config.shingle as usize > 256 {
                    return Err(("shingle", "fields × shingle must be at most 256".into()));
                }
                let mut params = ForestParams::new(
                    fields.len(),
                    config.shingle as usize,
                    config.trees,
                    config.depth,
                    config.window,
                    config.seed,
                );
                params.alpha = alpha;
                params.relative_floor = config.relative_floor;
                Method::Forest(Box::new(params))
            }
        };
        let name = match (&config.name, config.method) {
            (Some(name), _) => name.clone(),
            (None, MethodName::Forest) if fields.len() > 1 => "multivariate".to_string(),
            (None, _) => fields[0].clone(),
        };
        Ok(Self {
            name,
            fields,
            method,
            threshold: config.threshold,
            warmup: config.warmup,
            cooldown: config.cooldown,
            z_band: two_sided_z(config.threshold),
        })
    }

    /// A detector with default settings for `method` over `fields` (tests, evaluation).
    pub fn with_defaults(method: MethodName, fields: &[&str]) -> Self {
        let config = DetectorConfig {
            field: (fields.len() == 1 && method != MethodName::Forest)
                .then(|| fields[0].to_string()),
            fields: (method == MethodName::Forest)
                .then(|| fields.iter().map(|f| f.to_string()).collect()),
            name: None,
            method,
            direction: Direction::Both,
            threshold: default_threshold(),
            warmup: default_warmup(),
            cooldown: default_cooldown(),
            span: default_span(),
            season: (method == MethodName::Seasonal).then(|| ConfigDuration::from_secs(86_400)),
            slot: None,
            min_seasons: default_min_seasons(),
            trees: default_trees(),
            depth: default_depth(),
            window: default_window(),
            shingle: default_shingle(),
            seed: 0,
            relative_floor: default_relative_floor(),
            levels: default_levels(),
            context: default_context(),
            range_observations: default_range_observations(),
            memory: default_memory(),
            deviation_weight: default_deviation_weight(),
        };
        // The defaults are valid by construction.
        Self::new(&config).unwrap_or_else(|(key, message)| panic!("default {key}: {message}"))
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    pub fn new_state(&self) -> DetectorState {
        DetectorState {
            method: match &self.method {
                Method::Robust(_) => MethodState::Robust(RobustState::default()),
                Method::Seasonal(_) => MethodState::Seasonal(SeasonalState::default()),
                Method::Sequence(_) => MethodState::Sequence(SequenceState::default()),
                Method::Forest(_) => MethodState::Forest(ForestState::default()),
            },
            observed: 0,
            recent_peaks: VecDeque::new(),
        }
    }

    /// Scores one observation (`values` in the order of `fields`) and learns it. `None` when
    /// a value is missing (null or not finite): nothing is learned from it.
    pub fn observe(
        &self,
        state: &mut DetectorState,
        time_micros: i64,
        values: &[f64],
    ) -> Option<Verdict> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut verdict = match (&self.method, &mut state.method) {
            (Method::Robust(params), MethodState::Robust(s)) => {
                params.observe(s, values[0], self.z_band)
            }
            (Method::Seasonal(params), MethodState::Seasonal(s)) => {
                params.observe(s, time_micros, values[0], self.z_band)
            }
            (Method::Sequence(params), MethodState::Sequence(s)) => {
                params.observe(s, values[0], self.z_band)
            }
            (Method::Forest(params), MethodState::Forest(s)) => params.observe(s, values)?,
            // State restored for a different method: start this key afresh.
            (_, method) => {
                *method = self.new_state().method;
                return self.observe(state, time_micros, values);
            }
        };
        let warm = state.observed >= self.warmup;
        let number = state.observed;
        state.observed += 1;
        // Scores are kept as f32: ample for ranking, and half the state.
        let score = verdict.score as f32;
        let peaks = &mut state.recent_peaks;
        while peaks
            .front()
            .is_some_and(|&(at, _)| at + u64::from(self.cooldown) < number)
        {
            peaks.pop_front();
        }
        let recent_peak = peaks.front().map_or(f32::NEG_INFINITY, |&(_, peak)| peak);
        if self.cooldown > 0 {
            while peaks.back().is_some_and(|&(_, peak)| peak <= score) {
                peaks.pop_back();
            }
            peaks.push_back((number, score));
        }
        verdict.alert_score = if warm && score > recent_peak {
            verdict.score
        } else {
            0.0
        };
        verdict.flag = verdict.alert_score >= self.threshold;
        Some(verdict)
    }
}
