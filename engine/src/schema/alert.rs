//! The `alert` schema: one row per alert state change (pending, firing, resolved), as the
//! `alert` operator emits them and the alert sinks (webhook, Slack, email, PostgreSQL, Redis)
//! read them. Labels and annotations travel as JSON objects in text columns so every sink can
//! pass them on unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use arrow::error::ArrowError;

use super::api_call::timestamp_type;

pub const NOTIFICATION_ID: &str = "notification_id";
pub const ALERT_ID: &str = "alert_id";
pub const RULE: &str = "rule";
pub const STATE: &str = "state";
pub const SEVERITY: &str = "severity";
pub const LABELS: &str = "labels";
pub const ANNOTATIONS: &str = "annotations";
pub const VALUE: &str = "value";
pub const ACTIVE_AT: &str = "active_at";
pub const FIRED_AT: &str = "fired_at";
pub const RESOLVED_AT: &str = "resolved_at";
pub const EVENT_TIME: &str = "event_time";

/// Where an alert stands (Prometheus's states; `inactive` alerts produce no rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<AlertState> {
        match text {
            "pending" => Some(AlertState::Pending),
            "firing" => Some(AlertState::Firing),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// One alert state change.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertNotification {
    /// Unique per state change and stable across replays of the same input: the receiver's
    /// idempotency key.
    pub notification_id: String,
    /// Stable per alert (rule and labels): Alertmanager's fingerprint.
    pub alert_id: String,
    pub rule: String,
    pub state: AlertState,
    pub severity: String,
    /// `alertname`, `severity`, the key fields and the rule's labels.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The rule's value at this change (e.g. the p99 latency that crossed the threshold).
    pub value: Option<f64>,
    /// µs since the epoch: when the condition first held, when the alert fired, when it
    /// resolved, and the event time of this change.
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub event_time: i64,
}

impl AlertNotification {
    /// Whether a receiver wants this change by default: firing, and the resolution of an
    /// alert that fired. A pending change, or the clearing of an alert that never fired, is
    /// not news to a pager.
    pub fn is_news(&self) -> bool {
        match self.state {
            AlertState::Pending => false,
            AlertState::Firing => true,
            AlertState::Resolved => self.fired_at.is_some(),
        }
    }
}

/// The `alert` Arrow schema.
pub fn alert_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(NOTIFICATION_ID, DataType::Utf8, false),
        Field::new(ALERT_ID, DataType::Utf8, false),
        Field::new(RULE, DataType::Utf8, false),
        Field::new(STATE, DataType::Utf8, false),
        Field::new(SEVERITY, DataType::Utf8, false),
        Field::new(LABELS, DataType::Utf8, false),
        Field::new(ANNOTATIONS, DataType::Utf8, false),
        Field::new(VALUE, DataType::Float64, true),
        Field::new(ACTIVE_AT, timestamp_type(), false),
        Field::new(FIRED_AT, timestamp_type(), true),
        Field::new(RESOLVED_AT, timestamp_type(), true),
        Field::new(EVENT_TIME, timestamp_type(), false),
    ]))
}

fn json_object(map: &BTreeMap<String, String>) -> String {
    // A map of strings always serialises.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

/// Builds an `alert` batch.
pub fn notifications_to_batch(notifications: &[AlertNotification]) -> RecordBatch {
    let rows = notifications.len();
    let mut text: Vec<StringBuilder> = (0..7)
        .map(|_| StringBuilder::with_capacity(rows, rows * 32))
        .collect();
    let mut value = Float64Builder::with_capacity(rows);
    let mut times: Vec<TimestampMicrosecondBuilder> = (0..4)
        .map(|_| TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"))
        .collect();
    for n in notifications {
        text[0].append_value(&n.notification_id);
        text[1].append_value(&n.alert_id);
        text[2].append_value(&n.rule);
        text[3].append_value(n.state.as_str());
        text[4].append_value(&n.severity);
        text[5].append_value(json_object(&n.labels));
        text[6].append_value(json_object(&n.annotations));
        value.append_option(n.value);
        times[0].append_value(n.active_at);
        times[1].append_option(n.fired_at);
        times[2].append_option(n.resolved_at);
        times[3].append_value(n.event_time);
    }
    let mut columns: Vec<ArrayRef> = text
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    columns.push(Arc::new(value.finish()));
    columns.extend(
        times
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef),
    );
    // The columns match the schema by construction.
    RecordBatch::try_new(alert_schema(), columns).unwrap_or_else(|e| panic!("alert batch: {e}"))
}

/// Reads an `alert` batch back (sinks). Fails on a batch of another shape.
pub fn batch_to_notifications(batch: &RecordBatch) -> Result<Vec<AlertNotification>, ArrowError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("an alert batch needs `{name}`")))
    };
    let text = |name: &str| -> Result<_, ArrowError> {
        column(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| ArrowError::SchemaError(format!("`{name}` must be text")))
    };
    let time = |name: &str| -> Result<_, ArrowError> {
        column(name)?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| ArrowError::SchemaError(format!("`{name}` must be a µs timestamp")))
    };
    let parse_map =
        |name: &str, row: usize, text: &str| -> Result<BTreeMap<String, String>, ArrowError> {
            serde_json::from_str(text).map_err(|e| {
                ArrowError::ParseError(format!(
                    "row {row}: `{name}` is not a JSON object of strings: {e}"
                ))
            })
        };
    let (ids, alert_ids, rules, states, severities, labels, annotations) = (
        text(NOTIFICATION_ID)?,
        text(ALERT_ID)?,
        text(RULE)?,
        text(STATE)?,
        text(SEVERITY)?,
        text(LABELS)?,
        text(ANNOTATIONS)?,
    );
    let values = column(VALUE)?
        .as_primitive_opt::<arrow::datatypes::Float64Type>()
        .ok_or_else(|| ArrowError::SchemaError("`value` must be float64".into()))?;
    let (active, fired, resolved, event) = (
        time(ACTIVE_AT)?,
        time(FIRED_AT)?,
        time(RESOLVED_AT)?,
        time(EVENT_TIME)?,
    );
    let optional_time = |array: &arrow::array::TimestampMicrosecondArray, row: usize| {
        array.is_valid(row).then(|| array.value(row))
    };
    (0..batch.num_rows())
        .map(|row| {
            let state = AlertState::parse(states.value(row)).ok_or_else(|| {
                ArrowError::ParseError(format!(
                    "row {row}: unknown alert state `{}`",
                    states.value(row)
                ))
            })?;
            Ok(AlertNotification {
                notification_id: ids.value(row).to_string(),
                alert_id: alert_ids.value(row).to_string(),
                rule: rules.value(row).to_string(),
                state,
                severity: severities.value(row).to_string(),
                labels: parse_map(LABELS, row, labels.value(row))?,
                annotations: parse_map(ANNOTATIONS, row, annotations.value(row))?,
                value: values.is_valid(row).then(|| values.value(row)),
                active_at: active.value(row),
                fired_at: optional_time(fired, row),
                resolved_at: optional_time(resolved, row),
                event_time: event.value(row),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_round_trip_through_a_batch() {
        let notification = AlertNotification {
            notification_id: "n1".into(),
            alert_id: "a1".into(),
            rule: "HighLatency".into(),
            state: AlertState::Firing,
            severity: "critical".into(),
            labels: BTreeMap::from([("model".into(), "gpt-4o".into())]),
            annotations: BTreeMap::from([("summary".into(), "p99 is 1.2 s".into())]),
            value: Some(1200.0),
            active_at: 1,
            fired_at: Some(2),
            resolved_at: None,
            event_time: 2,
        };
        let batch = notifications_to_batch(std::slice::from_ref(&notification));
        assert_eq!(batch.schema(), alert_schema());
        assert_eq!(
            batch_to_notifications(&batch).expect("decodes"),
            vec![notification]
        );
    }
}
