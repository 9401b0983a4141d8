//! `alert`: evaluates rules over each key's window results (thresholds, anomaly flags,
//! absence of traffic) with Prometheus's alerting semantics (`for`, `keep_firing_for`,
//! pending → firing → resolved) in event time, and emits one `alert` row (see
//! `engine::schema::alert`) per state change. Alerts per operator are bounded by `max_keys`.

pub mod control;
pub mod rule;
pub mod state;
pub mod template;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use arrow::util::display::array_value_to_string;
use engine::component::{Collector, ComponentError, ComponentResult, Operator};
use engine::config::ConfigError;
use engine::message::Watermark;
use engine::registry::{BuildContext, BuiltOperator, OutputPort};
use engine::schema::alert::{alert_schema, notifications_to_batch, AlertNotification, AlertState};
use hashbrown::HashMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::series_key::{field_index, key_columns, path, BuildError, RowKeys};
use rule::{Check, Rule, RuleConfig};
use state::{Change, Tracker};
use template::format_number;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertConfig {
    /// Fields identifying a series (and labelling its alerts); default: every text field.
    key: Option<Vec<String>>,
    /// The event time at which a row is evaluated.
    #[serde(default = "default_time_field")]
    time_field: String,
    /// Keys tracked at once; beyond it the least recently seen key without an active alert
    /// is forgotten.
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    rules: Vec<RuleConfig>,
}

fn default_time_field() -> String {
    engine::schema::window_metrics::WINDOW_END.to_string()
}

fn default_max_keys() -> usize {
    10_000
}

/// One key's alerts, one tracker per rule.
struct KeyAlerts {
    labels: Vec<(String, String)>,
    last_seen: i64,
    touched: u64,
    trackers: Vec<Tracker>,
}

impl KeyAlerts {
    fn any_active(&self) -> bool {
        self.trackers.iter().any(Tracker::is_active)
    }
}

pub struct AlertOperator {
    rules: Vec<Rule>,
    /// The rules as written, in the order of `rules`.
    configs: Vec<RuleConfig>,
    input: SchemaRef,
    /// Where changed rules come from, and the version applied.
    control: Option<(Arc<control::RuleHandle>, u64)>,
    key_columns: Vec<usize>,
    key_names: Vec<String>,
    time_column: usize,
    max_keys: usize,
    keys: HashMap<String, KeyAlerts>,
    /// Keys forgotten to stay within `max_keys`.
    evicted: Arc<std::sync::atomic::AtomicU64>,
    sequence: u64,
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltOperator, ConfigError> {
    let (operator, outputs) = build_operator(ctx)?;
    Ok(BuiltOperator {
        operator: Box::new(operator),
        outputs,
    })
}

fn build_operator(
    ctx: &BuildContext<'_, '_>,
) -> Result<(AlertOperator, Vec<OutputPort>), ConfigError> {
    let config: AlertConfig = ctx.spec.settings()?;
    let input = ctx.input_schema()?;
    let mut operator = AlertOperator::new(&config, &input).map_err(|(path, message)| {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        ctx.spec.error_at_path(&parts, message)
    })?;
    operator.evicted = ctx.metrics.named("keys_evicted");
    Ok((operator, vec![OutputPort::default_port(alert_schema())]))
}

/// The first 16 bytes of SHA-256 over `parts`, as hex.
fn fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..16])
}

impl AlertOperator {
    fn new(config: &AlertConfig, input: &SchemaRef) -> Result<Self, BuildError> {
        if config.rules.is_empty() {
            return Err((path(&["rules"]), "configure at least one rule".into()));
        }
        if config.max_keys == 0 {
            return Err((path(&["max_keys"]), "must be at least 1".into()));
        }
        let key_columns = key_columns(config.key.as_deref(), input)?;
        let key_names: Vec<String> = key_columns
            .iter()
            .map(|&i| input.field(i).name().clone())
            .collect();
        let time_column = field_index(input, &config.time_field, path(&["time_field"]))?;
        if !matches!(
            input.field(time_column).data_type(),
            DataType::Timestamp(_, _)
        ) {
            return Err((
                path(&["time_field"]),
                format!("`{}` is not a timestamp", config.time_field),
            ));
        }
        let mut rules = Vec::new();
        for (i, entry) in config.rules.iter().enumerate() {
            let index = i.to_string();
            if config.rules[..i].iter().any(|r| r.name == entry.name) {
                return Err((
                    path(&["rules", &index, "name"]),
                    format!("two rules are named `{}`", entry.name),
                ));
            }
            let rule = Rule::compile(entry, input, &key_names)
                .map_err(|(setting, message)| (path(&["rules", &index, setting]), message))?;
            rules.push(rule);
        }
        Ok(Self {
            rules,
            configs: config.rules.clone(),
            input: input.clone(),
            control: None,
            key_columns,
            key_names,
            time_column,
            max_keys: config.max_keys,
            evicted: Arc::default(),
            keys: HashMap::new(),
            sequence: 0,
        })
    }

    /// Alerts currently pending or firing.
    pub fn active_count(&self) -> usize {
        self.keys
            .values()
            .map(|k| k.trackers.iter().filter(|t| t.is_active()).count())
            .sum()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Forgets the least recently touched tenth of the keys (at least one), those without an
    /// active alert first: a stream of ever new keys costs one pass over the keys per tenth
    /// of `max_keys` new ones.
    fn make_room(&mut self) {
        let count = (self.max_keys / 10).max(1).min(self.keys.len());
        if count == 0 {
            return;
        }
        // Inactive keys sort before active ones, each by when they were last touched.
        let mut order: Vec<(bool, u64)> = self
            .keys
            .values()
            .map(|k| (k.any_active(), k.touched))
            .collect();
        let (_, &mut cutoff, _) = order.select_nth_unstable(count - 1);
        let before = self.keys.len();
        let mut active_forgotten = 0;
        self.keys.retain(|_, k| {
            let keep = (k.any_active(), k.touched) > cutoff;
            if !keep && k.any_active() {
                active_forgotten += 1;
            }
            keep
        });
        self.evicted.fetch_add(
            (before - self.keys.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if active_forgotten > 0 {
            tracing::warn!(forgotten = active_forgotten, max_keys = self.max_keys, key = ?self.key_names, "alert key limit reached: forgetting keys with an active alert (raise max_keys)");
        }
    }

    /// Evaluates every rule for every row of `batch`.
    pub fn evaluate(&mut self, batch: &RecordBatch) -> ComponentResult<Vec<AlertNotification>> {
        let masks: Vec<Option<BooleanArray>> = self
            .rules
            .iter()
            .map(|rule| match &rule.check {
                Check::Condition(filter) => filter.mask(batch).map(Some),
                Check::Absent { .. } => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        let values: Vec<Option<ArrayRef>> = self
            .rules
            .iter()
            .map(|rule| {
                rule.value_column
                    .map(|i| cast(batch.column(i), &DataType::Float64))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let keys = RowKeys::new(batch, &self.key_columns)?;
        let times = cast(batch.column(self.time_column), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let mut notifications = Vec::new();
        let mut key = String::new();
        for row in 0..batch.num_rows() {
            if !times.is_valid(row) {
                continue;
            }
            let at = times.value(row);
            keys.write(row, &mut key);
            self.sequence += 1;
            if !self.keys.contains_key(key.as_str()) {
                if self.keys.len() >= self.max_keys {
                    self.make_room();
                }
                let labels = self
                    .key_names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.clone(), keys.value(i, row)))
                    .collect();
                let trackers = self.rules.iter().map(|_| Tracker::default()).collect();
                self.keys.insert(
                    key.clone(),
                    KeyAlerts {
                        labels,
                        last_seen: at,
                        touched: 0,
                        trackers,
                    },
                );
            }
            let Some(entry) = self.keys.get_mut(key.as_str()) else {
                return Err(ComponentError::other("alert state for a key vanished"));
            };
            entry.touched = self.sequence;
            // An absence ends with this row: its value is how long the silence lasted.
            let silence = Some(at.saturating_sub(entry.last_seen).max(0) as f64 / 1e6);
            entry.last_seen = entry.last_seen.max(at);
            for (r, rule) in self.rules.iter().enumerate() {
                let holds = masks[r]
                    .as_ref()
                    .is_some_and(|m| m.is_valid(row) && m.value(row));
                let value = match rule.check {
                    Check::Absent { .. } => silence,
                    Check::Condition(_) => values[r].as_ref().and_then(|v| {
                        let v = v.as_primitive::<Float64Type>();
                        v.is_valid(row).then(|| v.value(row))
                    }),
                };
                if let Some(change) = entry.trackers[r].evaluate(rule.timing, holds, at, value) {
                    notifications.push(notification(
                        rule,
                        &entry.labels,
                        change,
                        at,
                        Some((batch, row)),
                    ));
                }
            }
        }
        Ok(notifications)
    }

    /// Applies a rule set changed through the control handle since the last call.
    fn sync_rules(&mut self) -> ComponentResult<Vec<AlertNotification>> {
        let Some((handle, applied)) = &self.control else {
            return Ok(Vec::new());
        };
        let version = handle.version();
        if version == *applied {
            return Ok(Vec::new());
        }
        let configs = handle.rules();
        self.control = Some((handle.clone(), version));
        self.reconfigure(configs)
    }

    /// Switches to `configs`: trackers of unchanged rules carry over; active alerts of
    /// removed or changed rules are resolved (at the key's latest event time).
    pub fn reconfigure(
        &mut self,
        configs: Vec<RuleConfig>,
    ) -> ComponentResult<Vec<AlertNotification>> {
        let rules = configs
            .iter()
            .map(|config| {
                Rule::compile(config, &self.input, &self.key_names).map_err(|(setting, message)| {
                    ComponentError::other(format!("rule `{}`: `{setting}`: {message}", config.name))
                })
            })
            .collect::<ComponentResult<Vec<Rule>>>()?;
        let carried: Vec<Option<usize>> = configs
            .iter()
            .map(|new| self.configs.iter().position(|old| old == new))
            .collect();
        let mut notifications = Vec::new();
        for entry in self.keys.values_mut() {
            let mut old = std::mem::take(&mut entry.trackers);
            for (i, tracker) in old.iter().enumerate() {
                if tracker.is_active() && !carried.contains(&Some(i)) {
                    let change = Change {
                        state: AlertState::Resolved,
                        active_at: tracker.active_at,
                        fired_at: tracker.fired_at,
                        resolved_at: Some(entry.last_seen),
                        value: tracker.value,
                    };
                    notifications.push(notification(
                        &self.rules[i],
                        &entry.labels,
                        change,
                        entry.last_seen,
                        None,
                    ));
                }
            }
            entry.trackers = carried
                .iter()
                .map(|from| {
                    from.map(|i| std::mem::take(&mut old[i]))
                        .unwrap_or_default()
                })
                .collect();
        }
        self.rules = rules;
        self.configs = configs;
        Ok(notifications)
    }

    /// Evaluates absence rules as event time reaches `watermark`.
    pub fn evaluate_absence(&mut self, watermark: i64) -> Vec<AlertNotification> {
        let mut notifications = Vec::new();
        if !self
            .rules
            .iter()
            .any(|r| matches!(r.check, Check::Absent { .. }))
        {
            return notifications;
        }
        for entry in self.keys.values_mut() {
            for (r, rule) in self.rules.iter().enumerate() {
                let Check::Absent { after_micros } = rule.check else {
                    continue;
                };
                let silent = watermark.saturating_sub(entry.last_seen);
                let holds = silent >= after_micros;
                let value = Some(silent as f64 / 1e6);
                if let Some(change) =
                    entry.trackers[r].evaluate(rule.timing, holds, watermark, value)
                {
                    notifications.push(notification(rule, &entry.labels, change, watermark, None));
                }
            }
        }
        notifications
    }
}

/// The row of one state change.
fn notification(
    rule: &Rule,
    key_labels: &[(String, String)],
    change: Change,
    at: i64,
    row: Option<(&RecordBatch, usize)>,
) -> AlertNotification {
    let mut labels: BTreeMap<String, String> = key_labels.iter().cloned().collect();
    // The rule's labels win over the key's, as in Prometheus.
    labels.extend(rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let identity: Vec<&str> = std::iter::once(rule.name.as_str())
        .chain(labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
        .collect();
    let alert_id = fingerprint(&identity);
    let active_at = change.active_at.to_string();
    let notification_id = fingerprint(&[&alert_id, change.state.as_str(), &active_at]);
    let lookup = |name: &str| -> Option<String> {
        match name {
            "value" => change.value.map(format_number),
            "alertname" | "rule" => Some(rule.name.clone()),
            _ => labels.get(name).cloned().or_else(|| {
                let (batch, row) = row?;
                let column = batch.column_by_name(name)?;
                if column.is_null(row) {
                    return None;
                }
                if column.data_type().is_floating() {
                    let number = cast(&column.slice(row, 1), &DataType::Float64).ok()?;
                    return Some(format_number(number.as_primitive::<Float64Type>().value(0)));
                }
                array_value_to_string(column, row).ok()
            }),
        }
    };
    let annotations = rule
        .annotations
        .iter()
        .map(|(name, template)| (name.clone(), template.render(&lookup)))
        .collect();
    AlertNotification {
        notification_id,
        alert_id,
        rule: rule.name.clone(),
        state: change.state,
        severity: rule.severity.clone(),
        labels,
        annotations,
        value: change.value,
        active_at: change.active_at,
        fired_at: change.fired_at,
        resolved_at: change.resolved_at,
        event_time: at,
    }
}

/// What a checkpoint keeps: the rules in force and every key's trackers, one per rule.
#[derive(serde::Serialize, serde::Deserialize)]
struct AlertSnapshot {
    rules: Vec<RuleConfig>,
    sequence: u64,
    keys: Vec<SavedKey>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedKey {
    key: String,
    labels: Vec<(String, String)>,
    last_seen: i64,
    touched: u64,
    trackers: Vec<Tracker>,
}

impl Operator for AlertOperator {
    fn snapshot(&mut self) -> ComponentResult<Option<Vec<u8>>> {
        let mut keys: Vec<SavedKey> = self
            .keys
            .iter()
            .map(|(key, entry)| SavedKey {
                key: key.clone(),
                labels: entry.labels.clone(),
                last_seen: entry.last_seen,
                touched: entry.touched,
                trackers: entry.trackers.clone(),
            })
            .collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let state = AlertSnapshot {
            rules: self.configs.clone(),
            sequence: self.sequence,
            keys,
        };
        engine::state::snapshot(&state)
    }

    /// Trackers follow their rule: a rule that is still configured identically gets its
    /// trackers back, a new or changed rule starts inactive.
    fn restore(&mut self, state: &[u8]) -> ComponentResult {
        let state: AlertSnapshot = engine::state::restore(state)?;
        let from: Vec<Option<usize>> = self
            .configs
            .iter()
            .map(|rule| state.rules.iter().position(|saved| saved == rule))
            .collect();
        self.sequence = state.sequence;
        self.keys = state
            .keys
            .into_iter()
            .map(|saved| {
                let trackers = from
                    .iter()
                    .map(|i| {
                        i.and_then(|i| saved.trackers.get(i).cloned())
                            .unwrap_or_default()
                    })
                    .collect();
                (
                    saved.key,
                    KeyAlerts {
                        labels: saved.labels,
                        last_seen: saved.last_seen,
                        touched: saved.touched,
                        trackers,
                    },
                )
            })
            .collect();
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> ComponentResult {
        let mut notifications = self.sync_rules()?;
        notifications.extend(self.evaluate(batch)?);
        if !notifications.is_empty() {
            out.emit(notifications_to_batch(&notifications));
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: Watermark, out: &mut Collector) -> ComponentResult {
        // The end of the input is not a silence: absence is not judged at shutdown.
        let changed = self.sync_rules()?;
        if !changed.is_empty() {
            out.emit(notifications_to_batch(&changed));
        }
        if watermark != Watermark::END {
            let notifications = self.evaluate_absence(watermark.0);
            if !notifications.is_empty() {
                out.emit(notifications_to_batch(&notifications));
            }
        }
        out.watermark(watermark);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
