//! `anomaly`: scores each key's series of window results with configurable detectors (a robust
//! EWMA baseline, a seasonal baseline, sequence novelty, and multivariate Half-Space Trees) and appends, per
//! detector, `anomaly_<name>_score` in [0, 1], the expected value and band, and a flag; plus
//! `anomaly_score` (the highest) and `anomaly` (any flag). State per key is bounded and
//! serialisable; the least recently seen keys are evicted beyond `max_keys`.

pub mod detector;
pub mod forest;
pub mod gaussian;
pub mod robust;
pub mod seasonal;
pub mod sequence;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt32Type};
use engine::component::{Collector, ComponentError, ComponentResult, Operator};
use engine::config::ConfigError;
use engine::registry::{BuildContext, BuiltOperator, OutputPort};
use hashbrown::HashMap;
use serde::Deserialize;

use crate::series_key::{field_index, key_columns, path, BuildError, RowKeys};
pub use detector::{Detector, DetectorConfig, DetectorState, Direction, MethodName, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnomalyConfig {
    /// Fields identifying a series; default: every text field (`window`, `model`, `endpoint`).
    key: Option<Vec<String>>,
    /// The event time of each row.
    #[serde(default = "default_time_field")]
    time_field: String,
    /// Keys remembered at once; the least recently seen is forgotten beyond this.
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    /// Windows with fewer calls than this (the input's `count`) are neither scored nor
    /// learned by detectors of per-call figures (latency, TTFT, error rate, tokens): a p99
    /// over three calls is noise. Detectors of `count` and `rate_per_sec` see every window,
    /// so traffic that nearly stops is still scored. Default 5 when the input has `count`.
    min_count: Option<u64>,
    detectors: Vec<DetectorConfig>,
}

/// The default `min_count`.
pub const DEFAULT_MIN_COUNT: u64 = 5;

/// Fields that measure traffic itself: their detectors score windows of any size.
const VOLUME_FIELDS: [&str; 2] = [
    engine::schema::window_metrics::COUNT,
    engine::schema::window_metrics::RATE_PER_SEC,
];

fn default_time_field() -> String {
    "window_start".to_string()
}

fn default_max_keys() -> usize {
    10_000
}

/// The column names one detector adds.
pub fn score_column(name: &str) -> String {
    format!("anomaly_{name}_score")
}
pub fn flag_column(name: &str) -> String {
    format!("anomaly_{name}_flag")
}
fn detector_columns(name: &str) -> [(String, DataType); 5] {
    [
        (score_column(name), DataType::Float64),
        (format!("anomaly_{name}_expected"), DataType::Float64),
        (format!("anomaly_{name}_lower"), DataType::Float64),
        (format!("anomaly_{name}_upper"), DataType::Float64),
        (flag_column(name), DataType::Boolean),
    ]
}
pub const ANOMALY_SCORE: &str = "anomaly_score";
pub const ANOMALY: &str = "anomaly";

struct KeyEntry {
    states: Vec<DetectorState>,
    last_seen: u64,
}

pub struct AnomalyOperator {
    detectors: Vec<Detector>,
    key_columns: Vec<usize>,
    time_column: usize,
    /// Per detector, the input column of each of its fields.
    value_columns: Vec<Vec<usize>>,
    revision_column: Option<usize>,
    /// The input's call count, and the fewest calls a window needs to be scored.
    count_column: Option<usize>,
    min_count: u64,
    /// Per detector: whether `min_count` applies (it scores per-call figures).
    needs_calls: Vec<bool>,
    max_keys: usize,
    keys: HashMap<String, KeyEntry>,
    sequence: u64,
    schema: SchemaRef,
    /// Keys forgotten to stay within `max_keys`.
    evicted: Arc<std::sync::atomic::AtomicU64>,
    warned_at: Option<std::time::Instant>,
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltOperator, ConfigError> {
    let config: AnomalyConfig = ctx.spec.settings()?;
    let input = ctx.input_schema()?;
    let mut operator = AnomalyOperator::new(&config, &input).map_err(|(path, message)| {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        ctx.spec.error_at_path(&parts, message)
    })?;
    operator.evicted = ctx.metrics.named("keys_evicted");
    let schema = operator.schema.clone();
    Ok(BuiltOperator {
        operator: Box::new(operator),
        outputs: vec![OutputPort::default_port(schema)],
    })
}

impl AnomalyOperator {
    fn new(config: &AnomalyConfig, input: &SchemaRef) -> Result<Self, BuildError> {
        let at = path;
        if config.detectors.is_empty() {
            return Err((at(&["detectors"]), "configure at least one detector".into()));
        }
        if config.max_keys == 0 {
            return Err((at(&["max_keys"]), "must be at least 1".into()));
        }
        let key_columns = key_columns(config.key.as_deref(), input)?;
        let time_column = field_index(input, &config.time_field, at(&["time_field"]))?;
        if !matches!(
            input.field(time_column).data_type(),
            DataType::Timestamp(_, _)
        ) {
            return Err((
                at(&["time_field"]),
                format!("`{}` is not a timestamp", config.time_field),
            ));
        }
        let mut detectors = Vec::new();
        let mut value_columns = Vec::new();
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, entry) in config.detectors.iter().enumerate() {
            let index = i.to_string();
            let detector = Detector::new(entry)
                .map_err(|(key, message)| (at(&["detectors", &index, key]), message))?;
            let mut columns = Vec::new();
            for name in &detector.fields {
                let key = if entry.fields.is_some() {
                    "fields"
                } else {
                    "field"
                };
                let column = field_index(input, name, at(&["detectors", &index, key]))?;
                let data_type = input.field(column).data_type();
                if !data_type.is_numeric() {
                    return Err((
                        at(&["detectors", &index, key]),
                        format!("`{name}` is {data_type}, not a number"),
                    ));
                }
                columns.push(column);
            }
            for (column, data_type) in detector_columns(&detector.name) {
                if fields.iter().any(|f| f.name() == &column) {
                    return Err((at(&["detectors", &index]), format!("the output would have two `{column}` columns; give this detector a different `name`")));
                }
                fields.push(Field::new(column, data_type, true));
            }
            detectors.push(detector);
            value_columns.push(columns);
        }
        for name in [ANOMALY_SCORE, ANOMALY] {
            if fields.iter().any(|f| f.name() == name) {
                return Err((
                    at(&["detectors"]),
                    format!("the input already has a `{name}` field"),
                ));
            }
        }
        fields.push(Field::new(ANOMALY_SCORE, DataType::Float64, true));
        fields.push(Field::new(ANOMALY, DataType::Boolean, false));
        let revision_column = input
            .index_of(engine::schema::window_metrics::REVISION)
            .ok()
            .filter(|&i| input.field(i).data_type() == &DataType::UInt32);
        let count_column = input
            .index_of(engine::schema::window_metrics::COUNT)
            .ok()
            .filter(|&i| input.field(i).data_type().is_integer());
        let min_count =
            match (config.min_count, count_column) {
                (Some(0), _) => 0,
                (Some(_), None) => return Err((
                    at(&["min_count"]),
                    "the input has no integer `count` field to compare with; remove `min_count`"
                        .into(),
                )),
                (Some(min), Some(_)) => min,
                (None, Some(_)) => DEFAULT_MIN_COUNT,
                (None, None) => 0,
            };
        let needs_calls = detectors
            .iter()
            .map(|d| !d.fields.iter().all(|f| VOLUME_FIELDS.contains(&f.as_str())))
            .collect();
        Ok(Self {
            detectors,
            key_columns,
            time_column,
            value_columns,
            revision_column,
            count_column,
            min_count,
            needs_calls,
            max_keys: config.max_keys,
            keys: HashMap::new(),
            sequence: 0,
            schema: Arc::new(Schema::new(fields)),
            evicted: Arc::default(),
            warned_at: None,
        })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Forgets the least recently seen tenth of the keys (at least one): a stream of ever new
    /// keys costs one pass over the keys per tenth of `max_keys` new ones, not one per key.
    fn evict_oldest(&mut self) {
        let count = (self.max_keys / 10).max(1).min(self.keys.len());
        let mut seen: Vec<u64> = self.keys.values().map(|entry| entry.last_seen).collect();
        if count == 0 {
            return;
        }
        let (_, &mut cutoff, _) = seen.select_nth_unstable(count - 1);
        let before = self.keys.len();
        self.keys.retain(|_, entry| entry.last_seen > cutoff);
        let evicted = (before - self.keys.len()) as u64;
        self.evicted
            .fetch_add(evicted, std::sync::atomic::Ordering::Relaxed);
        if self
            .warned_at
            .is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(60))
        {
            self.warned_at = Some(std::time::Instant::now());
            tracing::warn!(max_keys = self.max_keys, evicted, key_fields = self.key_columns.len(), "anomaly: more distinct keys than max_keys; the least recently seen are forgotten (their detectors start over if they come back)");
        }
    }

    fn score(&mut self, batch: &RecordBatch) -> ComponentResult<RecordBatch> {
        let rows = batch.num_rows();
        let keys = RowKeys::new(batch, &self.key_columns)?;
        let times = cast(batch.column(self.time_column), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let values: Vec<Vec<ArrayRef>> = self
            .value_columns
            .iter()
            .map(|columns| {
                columns
                    .iter()
                    .map(|&i| cast(batch.column(i), &DataType::Float64))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let revisions = self
            .revision_column
            .map(|i| batch.column(i).as_primitive::<UInt32Type>().clone());
        let counts = match self.count_column {
            Some(i) if self.min_count > 0 => Some(cast(batch.column(i), &DataType::UInt64)?),
            _ => None,
        };
        let counts = counts
            .as_ref()
            .map(|c| c.as_primitive::<arrow::datatypes::UInt64Type>());

        let mut builders: Vec<[Float64Builder; 4]> = self
            .detectors
            .iter()
            .map(|_| std::array::from_fn(|_| Float64Builder::with_capacity(rows)))
            .collect();
        let mut flags: Vec<BooleanBuilder> = self
            .detectors
            .iter()
            .map(|_| BooleanBuilder::with_capacity(rows))
            .collect();
        let mut overall_score = Float64Builder::with_capacity(rows);
        let mut overall_flag = BooleanBuilder::with_capacity(rows);
        let mut key = String::new();
        let mut point = Vec::new();
        for row in 0..rows {
            keys.write(row, &mut key);
            self.sequence += 1;
            if !self.keys.contains_key(key.as_str()) {
                if self.keys.len() >= self.max_keys {
                    self.evict_oldest();
                }
                let states = self.detectors.iter().map(Detector::new_state).collect();
                self.keys.insert(
                    key.clone(),
                    KeyEntry {
                        states,
                        last_seen: 0,
                    },
                );
            }
            let Some(entry) = self.keys.get_mut(key.as_str()) else {
                return Err(ComponentError::other("anomaly state for a key vanished"));
            };
            entry.last_seen = self.sequence;
            // A late revision of a window already scored is scored but not learned again.
            let correction = revisions
                .as_ref()
                .is_some_and(|r| r.is_valid(row) && r.value(row) > 0);
            let time = if times.is_valid(row) {
                times.value(row)
            } else {
                0
            };
            let too_few_calls =
                counts.is_some_and(|c| c.is_null(row) || c.value(row) < self.min_count);
            let mut highest: Option<f64> = None;
            let mut any_flag = false;
            for (d, detector) in self.detectors.iter().enumerate() {
                point.clear();

                for column in &values[d] {
                    let column = column.as_primitive::<Float64Type>();
                    point.push(if column.is_valid(row) {
                        column.value(row)
                    } else {
                        f64::NAN
                    });
                }
                let verdict = if too_few_calls && self.needs_calls[d] {
                    // Like a missing value: neither scored nor learned.
                    None
                } else if correction {
                    let mut scratch = entry.states[d].clone();
                    detector.observe(&mut scratch, time, &point)
                } else {
                    detector.observe(&mut entry.states[d], time, &point)
                };
                let [score, expected, lower, upper] = &mut builders[d];
                match verdict {
                    Some(v) => {
                        score.append_value(v.score);
                        expected.append_option(v.expected);
                        lower.append_option(v.lower);
                        upper.append_option(v.upper);
                        flags[d].append_value(v.flag);
                        highest = Some(highest.map_or(v.score, |h: f64| h.max(v.score)));
                        any_flag |= v.flag;
                    }
                    None => {
                        score.append_null();
                        expected.append_null();
                        lower.append_null();
                        upper.append_null();
                        flags[d].append_null();
                    }
                }
            }
            overall_score.append_option(highest);
            overall_flag.append_value(any_flag);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (mut numbers, mut flag) in builders.into_iter().zip(flags) {
            for builder in numbers.iter_mut() {
                columns.push(Arc::new(builder.finish()));
            }
            columns.push(Arc::new(flag.finish()));
        }
        columns.push(Arc::new(overall_score.finish()));
        columns.push(Arc::new(overall_flag.finish()));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// What a checkpoint keeps: each key's detector states, in detector order.
#[derive(serde::Serialize, serde::Deserialize)]
struct AnomalyState {
    sequence: u64,
    /// (key, last seen sequence, one state per detector).
    keys: Vec<(String, u64, Vec<DetectorState>)>,
}

impl Operator for AnomalyOperator {
    fn snapshot(&mut self) -> ComponentResult<Option<Vec<u8>>> {
        let mut keys: Vec<(String, u64, Vec<DetectorState>)> = self
            .keys
            .iter()
            .map(|(key, entry)| (key.clone(), entry.last_seen, entry.states.clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let state = AnomalyState {
            sequence: self.sequence,
            keys,
        };
        engine::state::snapshot(&state)
    }

    fn restore(&mut self, state: &[u8]) -> ComponentResult {
        let state: AnomalyState = engine::state::restore(state)?;
        if let Some((key, _, states)) = state
            .keys
            .iter()
            .find(|(_, _, states)| states.len() != self.detectors.len())
        {
            return Err(ComponentError::other(format!(
                "key {key:?} has {} saved detector states; the operator has {} detectors",
                states.len(),
                self.detectors.len()
            )));
        }
        self.sequence = state.sequence;
        self.keys = state
            .keys
            .into_iter()
            .map(|(key, last_seen, states)| (key, KeyEntry { states, last_seen }))
            .collect();
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> ComponentResult {
        let scored = self.score(batch)?;
        out.emit(scored);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
