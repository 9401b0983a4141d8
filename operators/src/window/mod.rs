//! `window`: event-time windows (tumbling or hopping) per key, with everything a dashboard
//! needs computed in the same pass — count, errors, error rate, rate per second, latency
//! mean/min/max, latency and TTFT quantiles from DDSketch, token sums.
//!
//! Time: the watermark is the largest event time seen minus `out_of_orderness`, advanced per
//! row (so results do not depend on how rows were batched), by in-band watermarks from
//! upstream, and by the wall clock when no row has come for `idle_timeout` while every input's
//! source is idle (has nothing to deliver — never because the pipeline is holding it back). A
//! row stamped more than `max_future_skew` ahead of the wall clock never moves the watermark:
//! it goes to the `late` output and the `future_events` count. Keys are capped at `max_keys`
//! held at once: past it new keys count under `other` (or are dropped), and keys whose windows
//! have all closed are forgotten. A window
//! fires when the watermark passes its end — checked after every row that advances it, so
//! results do not depend on batching. A late row whose window is still within
//! `allowed_lateness` updates the window, which is emitted again with `revision` + 1 when the
//! watermark next reaches a pane boundary, or the window's end + lateness if that comes first
//! (late rows until then share one revision). A row
//! later than that is counted (`late` metric) and sent to the `late` output, never dropped
//! silently. Hopping windows are built from panes of `slide`, so each row updates one pane.

mod agg;
pub mod config;
mod keys;
mod output;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{
    Array, BooleanArray, Float64Array, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, FieldRef, SchemaRef};
use arrow::record_batch::RecordBatch;
use engine::component::{Collector, ComponentError, ComponentResult, Operator};
use engine::config::ConfigError;
use engine::message::Watermark;
use engine::metrics::ComponentMetrics;
use engine::registry::{BuildContext, BuiltOperator, OutputPort};
use engine::schema::api_call::{
    timestamp_type, CACHED_INPUT_TOKENS, COST_USD, EVENT_TIME, INPUT_TOKENS, LATENCY_MS, OUTCOME,
    OUTPUT_TOKENS, REASONING_TOKENS, TTFT_MS,
};
use engine::schema::window_metrics::window_metrics_schema;
use engine::schema::{require_field, typed_column};
use sketches_ddsketch::Config as SketchConfig;

pub use agg::Aggregate;
pub use config::{OnMaxKeys, WindowConfig, WindowKind};
use keys::{KeyId, KeyInterner, DROPPED};

/// The index of the side output that carries rows too late for any open window.
pub const LATE_PORT: usize = 1;

/// The value of every key field of the key that rows past `max_keys` are counted under.
pub const OTHER_KEY: &str = "other";

struct Columns {
    time: usize,
    latency: usize,
    outcome: usize,
    ttft: Option<usize>,
    input_tokens: Option<usize>,
    output_tokens: Option<usize>,
    cached_input_tokens: Option<usize>,
    reasoning_tokens: Option<usize>,
    cost_usd: Option<usize>,
    keys: Vec<usize>,
}

pub struct Window {
    name: String,
    size: i64,
    pane: i64,
    lateness: i64,
    out_of_orderness: i64,
    idle_timeout: i64,
    quantiles: Vec<f64>,
    sketch: SketchConfig,
    error_outcomes: Vec<String>,
    columns: Columns,
    output_schema: SchemaRef,
    metrics: Arc<ComponentMetrics>,
    keys: KeyInterner,
    /// Pane start → aggregate per key id.
    panes: BTreeMap<i64, Vec<Option<Aggregate>>>,
    /// How many times each (window start, key) has been emitted.
    revisions: HashMap<(i64, KeyId), u32>,
    /// Fired windows (start, key) updated by late rows, to be emitted again.
    dirty: BTreeSet<(i64, KeyId)>,
    watermark: i64,
    /// Every window ending at or before this has fired.
    fired_to: i64,
    emitted_watermark: i64,
    max_event_time: i64,
    /// The first event time this window ever took (kept across restarts): a window starting
    /// before it covers only the part after it.
    first_event_time: i64,
    last_arrival_wall: Option<i64>,
    key_ids: Vec<KeyId>,
    /// Every input's source is idle, so event time may follow the wall clock.
    inputs_idle: bool,
    max_keys: usize,
    on_max_keys: OnMaxKeys,
    /// The `other` key's id, once a row needed it.
    other_key: Option<KeyId>,
    max_future_skew: i64,
    /// Rows a batch stamped too far ahead; set per batch, counted once.
    future_limit: i64,
    counters: Counters,
    key_names: Vec<String>,
    warned_at: Option<i64>,
}

/// The window's own counters beside the component metrics.
struct Counters {
    keys_capped: Arc<std::sync::atomic::AtomicU64>,
    keys_dropped: Arc<std::sync::atomic::AtomicU64>,
    future_events: Arc<std::sync::atomic::AtomicU64>,
    keys_held: Arc<std::sync::atomic::AtomicU64>,
}

/// The first point of the form `k * pane + offset` after `after` (`i64::MIN` before any).
fn next_point(after: i64, pane: i64, offset: i64) -> i64 {
    if after == i64::MIN {
        return i64::MIN;
    }
    ((after.saturating_sub(offset)).div_euclid(pane) + 1)
        .saturating_mul(pane)
        .saturating_add(offset)
}

/// Builds a window operator from its config (used by the registry, tests and benches).
pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltOperator, ConfigError> {
    let config: WindowConfig = ctx.spec.settings()?;
    config
        .check()
        .map_err(|(key, message)| ctx.spec.error_at_key(key, message))?;
    let schema = ctx.input_schema()?;
    let window = Window::new(&ctx.spec.id, &config, &schema, ctx.metrics.clone()).map_err(
        |(key, message)| match key {
            Some(key) => ctx.spec.error_at_key(key, message),
            None => ctx.spec.error_at_input(0, message),
        },
    )?;
    let output_schema = window.output_schema.clone();
    Ok(BuiltOperator {
        operator: Box::new(window),
        outputs: vec![
            OutputPort::default_port(output_schema),
            OutputPort::named("late", schema),
        ],
    })
}

impl Window {
    /// Checks `input` against what the window needs. Errors name the setting at fault
    /// (`Some(key)`) or the input (`None`).
    pub fn new(
        name: &str,
        config: &WindowConfig,
        input: &SchemaRef,
        metrics: Arc<ComponentMetrics>,
    ) -> Result<Self, (Option<&'static str>, String)> {
        let input_error = |message: String| {
            (
                None,
                format!("the input cannot be windowed: {message} (a window needs api_call rows)"),
            )
        };
        require_field(input, EVENT_TIME, &timestamp_type()).map_err(input_error)?;
        require_field(input, LATENCY_MS, &DataType::Float64).map_err(input_error)?;
        require_field(input, OUTCOME, &DataType::Utf8).map_err(input_error)?;
        let optional = |name: &str,
                        data_type: DataType|
         -> Result<Option<usize>, (Option<&'static str>, String)> {
            match input.index_of(name) {
                Ok(index) => {
                    require_field(input, name, &data_type).map_err(input_error)?;
                    Ok(Some(index))
                }
                Err(_) => Ok(None),
            }
        };
        let ttft = optional(TTFT_MS, DataType::Float64)?;
        let input_tokens = optional(INPUT_TOKENS, DataType::UInt32)?;
        let output_tokens = optional(OUTPUT_TOKENS, DataType::UInt32)?;
        let cached_input_tokens = optional(CACHED_INPUT_TOKENS, DataType::UInt32)?;
        let reasoning_tokens = optional(REASONING_TOKENS, DataType::UInt32)?;
        let cost_usd = optional(COST_USD, DataType::Float64)?;
        let mut key_columns = Vec::new();
        let mut key_fields: Vec<FieldRef> = Vec::new();
        for key in &config.key {
            let index = input.index_of(key).map_err(|_| {
                (
                    Some("key"),
                    format!(
                        "key field `{key}` is not in the input; it has: {}",
                        engine::schema::field_names(input)
                    ),
                )
            })?;
            let field = input.field(index);
            if field.data_type() != &DataType::Utf8 {
                return Err((
                    Some("key"),
                    format!(
                        "key field `{key}` is {}; key fields must be text (e.g. model, endpoint, method, outcome, client_id, upstream)",
                        field.data_type()
                    ),
                ));
            }
            key_columns.push(index);
            key_fields.push(input.fields()[index].clone());
        }
        let output_schema = window_metrics_schema(&key_fields, &config.quantiles);
        Ok(Self {
            name: name.to_string(),
            size: config.size.as_micros(),
            pane: config.pane_micros(),
            lateness: config.allowed_lateness.as_micros(),
            out_of_orderness: config.out_of_orderness.as_micros(),
            idle_timeout: config.idle_timeout.as_micros(),
            quantiles: config.quantiles.clone(),
            sketch: SketchConfig::new(config.relative_accuracy, 2048, 1.0e-9),
            error_outcomes: config.error_outcomes.clone(),
            columns: Columns {
                time: input.index_of(EVENT_TIME).expect("checked above"),
                latency: input.index_of(LATENCY_MS).expect("checked above"),
                outcome: input.index_of(OUTCOME).expect("checked above"),
                ttft,
                input_tokens,
                output_tokens,
                cached_input_tokens,
                reasoning_tokens,
                cost_usd,
                keys: key_columns,
            },
            output_schema,
            keys: KeyInterner::default(),
            panes: BTreeMap::new(),
            revisions: HashMap::new(),
            dirty: BTreeSet::new(),
            watermark: i64::MIN,
            fired_to: i64::MIN,
            emitted_watermark: i64::MIN,
            max_event_time: i64::MIN,
            first_event_time: i64::MAX,
            last_arrival_wall: None,
            key_ids: Vec::new(),
            inputs_idle: true,
            max_keys: config.max_keys,
            on_max_keys: config.on_max_keys,
            other_key: None,
            max_future_skew: config.max_future_skew.as_micros(),
            future_limit: i64::MAX,
            counters: Counters {
                keys_capped: metrics.named("keys_capped"),
                keys_dropped: metrics.named("keys_dropped"),
                future_events: metrics.named("future_events"),
                keys_held: metrics.gauge("keys_held"),
            },
            key_names: config.key.clone(),
            warned_at: None,
            metrics,
        })
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// The current watermark (µs), `i64::MIN` before the first event.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Windows still held in memory (panes), for tests and metrics.
    pub fn open_panes(&self) -> usize {
        self.panes.len()
    }

    /// Adds rows `from..` of `batch` (whose key ids are in `self.key_ids`), marking rows too
    /// late in `too_late`. Stops after the row that moves the watermark past the end of the
    /// next window to fire and returns the index of the row after it, so that windows fire at
    /// the same row whatever the batching (and results, revisions included, are the same for
    /// the same row sequence); `None` when every row was added.
    fn add_rows(
        &mut self,
        batch: &RecordBatch,
        from: usize,
        too_late: &mut Option<Vec<bool>>,
    ) -> ComponentResult<Option<usize>> {
        let rows = batch.num_rows();
        let times: &TimestampMicrosecondArray = typed_column(batch, self.columns.time)?;
        let latency: &Float64Array = typed_column(batch, self.columns.latency)?;
        let outcome: &StringArray = typed_column(batch, self.columns.outcome)?;
        let ttft: Option<&Float64Array> = self
            .columns
            .ttft
            .map(|i| typed_column(batch, i))
            .transpose()?;
        let input_tokens: Option<&UInt32Array> = self
            .columns
            .input_tokens
            .map(|i| typed_column(batch, i))
            .transpose()?;
        let output_tokens: Option<&UInt32Array> = self
            .columns
            .output_tokens
            .map(|i| typed_column(batch, i))
            .transpose()?;
        let column_u32 = |index: Option<usize>| -> ComponentResult<Option<&UInt32Array>> {
            index.map(|i| typed_column(batch, i)).transpose()
        };
        let cached_tokens = column_u32(self.columns.cached_input_tokens)?;
        let reasoning_tokens = column_u32(self.columns.reasoning_tokens)?;
        let cost: Option<&Float64Array> = self
            .columns
            .cost_usd
            .map(|i| typed_column(batch, i))
            .transpose()?;
        let key_ids = std::mem::take(&mut self.key_ids);
        let key_count = self.keys.len();
        // Windows fire at pane boundaries and expire at pane boundaries + lateness: stop at
        // the first of either after `fired_to`.
        let fire_at = next_point(self.fired_to, self.pane, 0).min(next_point(
            self.fired_to,
            self.pane,
            self.lateness.rem_euclid(self.pane),
        ));
        let mut stopped_at = None;

        let (size, pane_len, lateness) = (self.size, self.pane, self.lateness);
        let mut watermark = self.watermark;
        let mut max_time = self.max_event_time;
        let mut first_time = i64::MAX;
        let fired_to = self.fired_to;
        let sketch = self.sketch;
        let errors = &self.error_outcomes;
        let mut late_count = 0u64;
        let mut current: Option<(i64, &mut Vec<Option<Aggregate>>)> = None;
        let future_limit = self.future_limit;
        let mut future_count = 0u64;
        for (row, &key) in key_ids.iter().enumerate().skip(from) {
            if key == DROPPED {
                continue;
            }
            if times.is_null(row) || latency.is_null(row) {
                too_late.get_or_insert_with(|| vec![false; rows])[row] = true;
                late_count += 1;
                continue;
            }
            let time = times.value(row);
            if time > future_limit {
                too_late.get_or_insert_with(|| vec![false; rows])[row] = true;
                future_count += 1;
                continue;
            }
            let pane = time.div_euclid(pane_len) * pane_len;
            if pane + size + lateness <= watermark {
                too_late.get_or_insert_with(|| vec![false; rows])[row] = true;
                late_count += 1;
                continue;
            }
            if pane + pane_len <= fired_to {
                // Windows of this pane that already fired and are still open at this row's
                // watermark are emitted again with the row.
                let first = pane - size + pane_len;
                for start in (0..size / pane_len).map(|i| first + i * pane_len) {
                    let end = start + size;
                    if end <= fired_to && end + lateness > watermark {
                        self.dirty.insert((start, key));
                    }
                }
            }
            if current.as_ref().map(|(start, _)| *start) != Some(pane) {
                current = Some((pane, self.panes.entry(pane).or_default()));
            }
            let slots = &mut current.as_mut().expect("set just above").1;
            if slots.len() < key_count {
                slots.resize_with(key_count, || None);
            }
            first_time = first_time.min(time);
            let aggregate = slots[key as usize].get_or_insert_with(|| Aggregate::new(sketch));
            let is_error = !outcome.is_null(row) && {
                let value = outcome.value(row);
                errors.iter().any(|e| e == value)
            };
            aggregate.add_latency(latency.value(row), is_error);
            if let Some(ttft) = ttft {
                if ttft.is_valid(row) {
                    aggregate.add_ttft(ttft.value(row));
                }
            }
            if let Some(tokens) = input_tokens {
                if tokens.is_valid(row) {
                    aggregate.input_tokens += u64::from(tokens.value(row));
                }
            }
            let mut reported_usage = false;
            if let Some(tokens) = output_tokens {
                if tokens.is_valid(row) {
                    aggregate.output_tokens += u64::from(tokens.value(row));
                    reported_usage = true;
                }
            }
            if let Some(tokens) = input_tokens {
                reported_usage |= tokens.is_valid(row);
            }
            for (tokens, sum) in [
                (cached_tokens, &mut aggregate.cached_input_tokens),
                (reasoning_tokens, &mut aggregate.reasoning_tokens),
            ] {
                if let Some(tokens) = tokens {
                    if tokens.is_valid(row) {
                        *sum += u64::from(tokens.value(row));
                    }
                }
            }
            match cost.filter(|cost| cost.is_valid(row)) {
                Some(cost) => {
                    aggregate.cost_usd += cost.value(row);
                    aggregate.priced_calls += 1;
                }
                None if reported_usage => aggregate.unpriced_calls += 1,
                None => {}
            }
            if time > max_time {
                max_time = time;
                watermark = watermark.max(time - self.out_of_orderness);
                if watermark >= fire_at && row + 1 < rows {
                    stopped_at = Some(row + 1);
                    break;
                }
            }
        }
        self.key_ids = key_ids;
        self.watermark = watermark;
        self.max_event_time = max_time;
        self.first_event_time = self.first_event_time.min(first_time);
        if late_count > 0 {
            self.metrics.add_late(late_count);
        }
        if future_count > 0 {
            self.counters
                .future_events
                .fetch_add(future_count, Ordering::Relaxed);
        }
        Ok(stopped_at)
    }

    /// Interns the key of every row of `batch` into `self.key_ids`.
    fn intern_keys(&mut self, batch: &RecordBatch) -> ComponentResult {
        let key_columns: Vec<&StringArray> = self
            .columns
            .keys
            .iter()
            .map(|&i| typed_column(batch, i))
            .collect::<ComponentResult<_>>()?;
        let mut key_ids = std::mem::take(&mut self.key_ids);
        let may_overflow = self.keys.len() + batch.num_rows() > self.max_keys;
        if self.on_max_keys == OnMaxKeys::Other && self.other_key.is_none() && may_overflow {
            let other: Vec<Option<&str>> = vec![Some(OTHER_KEY); key_columns.len()];
            self.other_key = Some(self.keys.intern_values(&other));
        }
        let over = self.keys.intern_rows_capped(
            &key_columns,
            batch.num_rows(),
            &mut key_ids,
            self.max_keys,
            self.other_key,
        );
        self.key_ids = key_ids;
        if over > 0 {
            let counter = match self.on_max_keys {
                OnMaxKeys::Other => &self.counters.keys_capped,
                OnMaxKeys::Drop => &self.counters.keys_dropped,
            };
            counter.fetch_add(over, Ordering::Relaxed);
            let now = engine::time::now_micros();
            if self.warned_at.is_none_or(|at| now - at > 60_000_000) {
                self.warned_at = Some(now);
                tracing::warn!(window = %self.name, key = ?self.key_names, max_keys = self.max_keys, rows = over, action = ?self.on_max_keys, "window: more distinct keys than max_keys; rows of new keys go to the `other` key (or are dropped): a key field with unbounded values?");
            }
        }
        Ok(())
    }

    /// Forgets keys no open window holds any more (their windows fired and expired), so the
    /// key cap counts the keys of the open windows, not every key ever seen. Between batches
    /// only: it renumbers keys, and a batch's rows carry the numbers of their keys.
    fn forget_closed_keys(&mut self) {
        self.compact_keys();
        self.counters
            .keys_held
            .store(self.keys.len() as u64, Ordering::Relaxed);
    }

    fn compact_keys(&mut self) {
        let held = self.keys.len();
        if held < 64 && held < self.max_keys {
            return;
        }
        let mut live = vec![false; held];
        for slots in self.panes.values() {
            for (key, slot) in slots.iter().enumerate() {
                if slot.is_some() {
                    live[key] = true;
                }
            }
        }
        for (_, key) in self.revisions.keys().chain(self.dirty.iter()) {
            live[*key as usize] = true;
        }
        let live_count = live.iter().filter(|l| **l).count();
        // Compacting costs a pass over the panes: only when it frees a good share, or room
        // under the cap.
        if live_count * 2 + 32 > held && (held < self.max_keys || live_count == held) {
            return;
        }
        let mapping = self.keys.compact(&live);
        let remap = |key: KeyId| mapping[key as usize].expect("a live key is kept");
        for slots in self.panes.values_mut() {
            let mut remapped: Vec<Option<Aggregate>> = Vec::with_capacity(live_count);
            for (key, slot) in std::mem::take(slots).into_iter().enumerate() {
                if let Some(new) = mapping.get(key).copied().flatten() {
                    if remapped.len() <= new as usize {
                        remapped.resize_with(new as usize + 1, || None);
                    }
                    remapped[new as usize] = slot;
                }
            }
            *slots = remapped;
        }
        self.revisions = std::mem::take(&mut self.revisions)
            .into_iter()
            .map(|((start, key), revision)| ((start, remap(key)), revision))
            .collect();
        self.dirty = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(start, key)| (start, remap(key)))
            .collect();
        self.other_key = self.other_key.and_then(|key| mapping[key as usize]);
    }

    /// The starts of every window containing `pane`.
    fn windows_of(&self, pane: i64) -> impl Iterator<Item = i64> + use<> {
        let pane_len = self.pane;
        let first = pane - self.size + pane_len;
        (0..self.size / pane_len).map(move |i| first + i * pane_len)
    }

    /// Merges the panes of window `start` for `key`.
    fn window_aggregate(&self, start: i64, key: KeyId) -> Option<Aggregate> {
        let mut merged: Option<Aggregate> = None;
        for (_, slots) in self.panes.range(start..start + self.size) {
            if let Some(Some(aggregate)) = slots.get(key as usize) {
                match &mut merged {
                    Some(m) => m.merge(aggregate),
                    None => merged = Some(aggregate.clone()),
                }
            }
        }
        merged
    }

    fn keys_of_window(&self, start: i64) -> BTreeSet<KeyId> {
        self.panes
            .range(start..start + self.size)
            .flat_map(|(_, slots)| {
                slots
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.is_some())
                    .map(|(k, _)| k as KeyId)
            })
            .collect()
    }

    /// Emits re-opened windows, fires windows the watermark has passed, frees expired state,
    /// and forwards the watermark.
    fn advance(&mut self, out: &mut Collector) -> ComponentResult {
        let mut rows: Vec<(i64, KeyId, Aggregate)> = Vec::new();
        // Windows already fired that late rows changed are emitted again when the watermark
        // reaches the next pane boundary (where windows fire), so that revisions, like
        // firings, happen at the same rows whatever the batching.
        // A window about to expire is emitted now, before its panes are freed.
        let boundary_reached =
            self.watermark == i64::MAX || next_point(self.fired_to, self.pane, 0) <= self.watermark;
        let (size, lateness, watermark) = (self.size, self.lateness, self.watermark);
        let due: Vec<(i64, KeyId)> = if boundary_reached {
            std::mem::take(&mut self.dirty).into_iter().collect()
        } else {
            let due: Vec<(i64, KeyId)> = self
                .dirty
                .iter()
                .filter(|(start, _)| start + size + lateness <= watermark)
                .copied()
                .collect();
            for window in &due {
                self.dirty.remove(window);
            }
            due
        };
        for (start, key) in due {
            if let Some(aggregate) = self.window_aggregate(start, key) {
                rows.push((start, key, aggregate));
            }
        }
        // Windows ending in (fired_to, watermark].
        if self.watermark > self.fired_to {
            let mut starts = BTreeSet::new();
            for &pane in self.panes.keys() {
                for start in self.windows_of(pane) {
                    let end = start + self.size;
                    if end > self.fired_to && end <= self.watermark {
                        starts.insert(start);
                    }
                }
            }
            for start in starts {
                for key in self.keys_of_window(start) {
                    if let Some(aggregate) = self.window_aggregate(start, key) {
                        rows.push((start, key, aggregate));
                    }
                }
            }
            self.fired_to = self.watermark;
        }
        if !rows.is_empty() {
            let mut revisions = Vec::with_capacity(rows.len());
            for (start, key, _) in &rows {
                let revision = self.revisions.entry((*start, *key)).or_insert(0);
                revisions.push(*revision);
                *revision += 1;
            }
            let batch = output::build_batch(self, &rows, &revisions)?;
            out.emit(batch);
        }
        // Free panes no window can change any more.
        let expired_before = self
            .watermark
            .saturating_sub(self.size)
            .saturating_sub(self.lateness);
        // Panes p with p + size + lateness <= watermark, i.e. p <= expired_before.
        if expired_before != i64::MIN {
            let keep = self.panes.split_off(&(expired_before.saturating_add(1)));
            self.panes = keep;
            let size = self.size;
            let lateness = self.lateness;
            let watermark = self.watermark;
            self.revisions
                .retain(|(start, _), _| start + size + lateness > watermark);
        }
        self.metrics
            .watermark
            .store(self.watermark, Ordering::Relaxed);
        let output_watermark = if self.watermark == i64::MAX {
            i64::MAX
        } else {
            self.watermark.saturating_sub(self.lateness)
        };
        if output_watermark > self.emitted_watermark {
            self.emitted_watermark = output_watermark;
            out.watermark(Watermark(output_watermark));
        }
        Ok(())
    }
}

/// What a checkpoint keeps of a window: every open pane with its aggregates, the keys they
/// refer to, emitted revisions, and the event-time position.
#[derive(serde::Serialize, serde::Deserialize)]
struct WindowState {
    keys: Vec<Vec<Option<String>>>,
    panes: Vec<(i64, Vec<(KeyId, Aggregate)>)>,
    revisions: Vec<(i64, KeyId, u32)>,
    dirty: Vec<(i64, KeyId)>,
    watermark: i64,
    fired_to: i64,
    emitted_watermark: i64,
    max_event_time: i64,
    #[serde(default = "first_event_time_unknown")]
    first_event_time: i64,
}

/// A checkpoint from before `first_event_time` was kept: no window is taken for partial.
fn first_event_time_unknown() -> i64 {
    i64::MIN
}

impl Operator for Window {
    fn snapshot(&mut self) -> ComponentResult<Option<Vec<u8>>> {
        let state = WindowState {
            keys: self
                .keys
                .all_values()
                .map(|key| key.iter().map(|v| v.as_deref().map(String::from)).collect())
                .collect(),
            panes: self
                .panes
                .iter()
                .map(|(&start, slots)| {
                    let aggregates = slots
                        .iter()
                        .enumerate()
                        .filter_map(|(key, a)| Some((key as KeyId, a.clone()?)))
                        .collect();
                    (start, aggregates)
                })
                .collect(),
            revisions: self
                .revisions
                .iter()
                .map(|(&(start, key), &revision)| (start, key, revision))
                .collect(),
            dirty: self.dirty.iter().copied().collect(),
            watermark: self.watermark,
            fired_to: self.fired_to,
            emitted_watermark: self.emitted_watermark,
            max_event_time: self.max_event_time,
            first_event_time: self.first_event_time,
        };
        engine::state::snapshot(&state)
    }

    fn restore(&mut self, state: &[u8]) -> ComponentResult {
        let state: WindowState = engine::state::restore(state)?;
        let key_count = state.keys.len();
        if let Some(key) = state
            .keys
            .iter()
            .find(|k| k.len() != self.columns.keys.len())
        {
            return Err(ComponentError::other(format!(
                "saved keys have {} fields; this window keys by {}",
                key.len(),
                self.columns.keys.len()
            )));
        }
        let mut panes = BTreeMap::new();
        for (start, aggregates) in state.panes {
            let mut slots: Vec<Option<Aggregate>> = vec![None; key_count];
            for (key, aggregate) in aggregates {
                let slot = slots.get_mut(key as usize).ok_or_else(|| {
                    ComponentError::other(format!("saved pane refers to unknown key {key}"))
                })?;
                *slot = Some(aggregate);
            }
            panes.insert(start, slots);
        }
        self.keys = KeyInterner::from_values(state.keys);
        self.panes = panes;
        self.revisions = state
            .revisions
            .into_iter()
            .map(|(start, key, revision)| ((start, key), revision))
            .collect();
        self.dirty = state.dirty.into_iter().collect();
        self.watermark = state.watermark;
        self.fired_to = state.fired_to;
        self.emitted_watermark = state.emitted_watermark;
        self.max_event_time = state.max_event_time;
        self.first_event_time = state.first_event_time;
        self.last_arrival_wall = None;
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> ComponentResult {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let now = engine::time::now_micros();
        self.last_arrival_wall = Some(now);
        self.future_limit = now.saturating_add(self.max_future_skew);
        self.intern_keys(batch)?;
        let mut too_late = None;
        let mut from = 0;
        while let Some(next) = self.add_rows(batch, from, &mut too_late)? {
            self.advance(out)?;
            from = next;
        }
        self.advance(out)?;
        self.forget_closed_keys();
        if let Some(mask) = too_late {
            out.emit_to(
                LATE_PORT,
                filter_record_batch(batch, &BooleanArray::from(mask))?,
            );
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: Watermark, out: &mut Collector) -> ComponentResult {
        if watermark.0 > self.watermark {
            self.watermark = watermark.0;
        }
        self.advance(out)?;
        self.forget_closed_keys();
        Ok(())
    }

    fn on_inputs_idle(&mut self, idle: bool) {
        self.inputs_idle = idle;
    }

    fn on_tick(&mut self, now_micros: i64, out: &mut Collector) -> ComponentResult {
        let Some(last) = self.last_arrival_wall else {
            return Ok(());
        };
        if !self.inputs_idle {
            // Quiet because held back (backpressure, a backlog, a lost connection): event
            // time waits for the rows that are coming.
            return Ok(());
        }
        let idle_for = now_micros - last;
        if idle_for < self.idle_timeout || self.max_event_time == i64::MIN {
            return Ok(());
        }
        let advanced = self
            .max_event_time
            .saturating_add(idle_for)
            .saturating_sub(self.out_of_orderness);
        if advanced > self.watermark {
            self.watermark = advanced;
            self.advance(out)?;
            self.forget_closed_keys();
        }
        Ok(())
    }

    fn on_end(&mut self, out: &mut Collector) -> ComponentResult {
        self.watermark = i64::MAX;
        self.advance(out)
    }
}

#[cfg(test)]
mod tests;
