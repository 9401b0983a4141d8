//! The `api_call` event: one row per intercepted model-API call. The Arrow schema is the
//! in-pipeline form; the JSON form uses OpenTelemetry attribute names where they exist
//! (`gen_ai.request.model`, `http.response.status_code`, ...) and accepts the short column
//! names as aliases.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, MapArray,
    MapBuilder, StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
    UInt16Array, UInt16Builder, UInt32Array, UInt32Builder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{format_micros, parse_rfc3339_micros};

pub const EVENT_TIME: &str = "event_time";
pub const REQUEST_ID: &str = "request_id";
pub const MODEL: &str = "model";
pub const ENDPOINT: &str = "endpoint";
pub const METHOD: &str = "method";
pub const STATUS_CODE: &str = "status_code";
pub const OUTCOME: &str = "outcome";
pub const LATENCY_MS: &str = "latency_ms";
pub const TTFB_MS: &str = "ttfb_ms";
pub const TTFT_MS: &str = "ttft_ms";
pub const REQUEST_BYTES: &str = "request_bytes";
pub const RESPONSE_BYTES: &str = "response_bytes";
pub const INPUT_TOKENS: &str = "input_tokens";
pub const OUTPUT_TOKENS: &str = "output_tokens";
pub const OUTPUT_TOKENS_ESTIMATED: &str = "output_tokens_estimated";
pub const OUTPUT_TOKENS_PER_SECOND: &str = "output_tokens_per_second";
pub const CLIENT_ID: &str = "client_id";
pub const UPSTREAM: &str = "upstream";
pub const LABELS: &str = "labels";
pub const CACHED_INPUT_TOKENS: &str = "cached_input_tokens";
pub const REASONING_TOKENS: &str = "reasoning_tokens";
pub const COST_USD: &str = "cost_usd";
pub const ERROR: &str = "error";

/// The Arrow type of every event-time column: µs since the epoch, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn labels_type() -> DataType {
    labels_builder().finish().data_type().clone()
}

fn labels_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

/// The `api_call` Arrow schema.
pub fn api_call_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(EVENT_TIME, timestamp_type(), false),
                Field::new(REQUEST_ID, DataType::Utf8, false),
                Field::new(MODEL, DataType::Utf8, true),
                Field::new(ENDPOINT, DataType::Utf8, true),
                Field::new(METHOD, DataType::Utf8, true),
                Field::new(STATUS_CODE, DataType::UInt16, true),
                Field::new(OUTCOME, DataType::Utf8, false),
                Field::new(LATENCY_MS, DataType::Float64, false),
                Field::new(TTFB_MS, DataType::Float64, true),
                Field::new(TTFT_MS, DataType::Float64, true),
                Field::new(REQUEST_BYTES, DataType::UInt64, true),
                Field::new(RESPONSE_BYTES, DataType::UInt64, true),
                Field::new(INPUT_TOKENS, DataType::UInt32, true),
                Field::new(OUTPUT_TOKENS, DataType::UInt32, true),
                Field::new(OUTPUT_TOKENS_ESTIMATED, DataType::Boolean, true),
                Field::new(OUTPUT_TOKENS_PER_SECOND, DataType::Float64, true),
                Field::new(CLIENT_ID, DataType::Utf8, true),
                Field::new(UPSTREAM, DataType::Utf8, true),
                Field::new(LABELS, labels_type(), true),
                Field::new(CACHED_INPUT_TOKENS, DataType::UInt32, true),
                Field::new(REASONING_TOKENS, DataType::UInt32, true),
                Field::new(COST_USD, DataType::Float64, true),
                Field::new(ERROR, DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 1xx-3xx response.
    #[default]
    Ok,
    /// A 4xx response.
    ClientError,
    /// A 5xx response.
    ServerError,
    /// The upstream did not answer within the configured time.
    Timeout,
    /// The upstream could not be reached (connection refused, DNS, TLS).
    UpstreamUnreachable,
    /// The client went away before the response completed.
    ClientAbort,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::UpstreamUnreachable,
        Outcome::ClientAbort,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::ClientAbort => "client_abort",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// The outcome an HTTP status code implies.
    pub fn from_status(status: u16) -> Outcome {
        match status {
            400..=499 => Outcome::ClientError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Ok,
        }
    }
}

/// One intercepted call, in row form. Serialises to the JSON form of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiCall {
    /// Event time, µs since the epoch (UTC). JSON: RFC 3339 string, or an integer of µs.
    #[serde(
        rename = "timestamp",
        alias = "event_time",
        serialize_with = "serialize_micros",
        deserialize_with = "deserialize_micros"
    )]
    pub event_time: i64,
    #[serde(rename = "request_id", alias = "http.request.id")]
    pub request_id: String,
    #[serde(rename = "gen_ai.request.model", alias = "model", default)]
    pub model: Option<String>,
    #[serde(rename = "http.route", alias = "endpoint", alias = "route", default)]
    pub endpoint: Option<String>,
    #[serde(rename = "http.request.method", alias = "method", default)]
    pub method: Option<String>,
    #[serde(rename = "http.response.status_code", alias = "status_code", default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub outcome: Outcome,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(
        rename = "http.request.body.size",
        alias = "request_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub request_bytes: Option<u64>,
    #[serde(
        rename = "http.response.body.size",
        alias = "response_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub response_bytes: Option<u64>,
    #[serde(
        rename = "gen_ai.usage.input_tokens",
        alias = "input_tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub input_tokens: Option<u32>,
    #[serde(
        rename = "gen_ai.usage.output_tokens",
        alias = "output_tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub output_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_estimated: Option<bool>,
    /// Output tokens per second of generation (after the first token when streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(
        rename = "server.address",
        alias = "upstream",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Input tokens served from the provider's prompt cache; included in `input_tokens`.
    #[serde(
        rename = "gen_ai.usage.cache_read.input_tokens",
        alias = "cached_input_tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cached_input_tokens: Option<u32>,
    /// Output tokens spent on reasoning; included in `output_tokens`.
    #[serde(
        rename = "gen_ai.usage.reasoning.output_tokens",
        alias = "reasoning_tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reasoning_tokens: Option<u32>,
    /// What the call cost, from the price table; `None` when its model has no price or it
    /// reported no usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Why the call failed, when the proxy saw why (an unreachable upstream, a TLS error, a
    /// malformed request).
    #[serde(
        rename = "error.message",
        alias = "error",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error: Option<String>,
}

fn serialize_micros<S: Serializer>(micros: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_micros(*micros))
}

fn deserialize_micros<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Micros(i64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Micros(micros) => Ok(micros),
        Raw::Text(text) => parse_rfc3339_micros(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "timestamp {text:?} is not RFC 3339 (e.g. 2026-01-02T03:04:05.123Z)"
            ))
        }),
    }
}

/// Builds `api_call` record batches row by row.
pub struct ApiCallBatchBuilder {
    event_time: TimestampMicrosecondBuilder,
    request_id: StringBuilder,
    model: StringBuilder,
    endpoint: StringBuilder,
    method: StringBuilder,
    status_code: UInt16Builder,
    outcome: StringBuilder,
    latency_ms: Float64Builder,
    ttfb_ms: Float64Builder,
    ttft_ms: Float64Builder,
    request_bytes: UInt64Builder,
    response_bytes: UInt64Builder,
    input_tokens: UInt32Builder,
    output_tokens: UInt32Builder,
    output_tokens_estimated: BooleanBuilder,
    output_tokens_per_second: Float64Builder,
    client_id: StringBuilder,
    upstream: StringBuilder,
    labels: MapBuilder<StringBuilder, StringBuilder>,
    cached_input_tokens: UInt32Builder,
    reasoning_tokens: UInt32Builder,
    cost_usd: Float64Builder,
    error: StringBuilder,
    rows: usize,
}

impl Default for ApiCallBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl ApiCallBatchBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            event_time: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            request_id: StringBuilder::with_capacity(rows, rows * 16),
            model: StringBuilder::with_capacity(rows, rows * 8),
            endpoint: StringBuilder::with_capacity(rows, rows * 16),
            method: StringBuilder::with_capacity(rows, rows * 4),
            status_code: UInt16Builder::with_capacity(rows),
            outcome: StringBuilder::with_capacity(rows, rows * 4),
            latency_ms: Float64Builder::with_capacity(rows),
            ttfb_ms: Float64Builder::with_capacity(rows),
            ttft_ms: Float64Builder::with_capacity(rows),
            request_bytes: UInt64Builder::with_capacity(rows),
            response_bytes: UInt64Builder::with_capacity(rows),
            input_tokens: UInt32Builder::with_capacity(rows),
            output_tokens: UInt32Builder::with_capacity(rows),
            output_tokens_estimated: BooleanBuilder::with_capacity(rows),
            output_tokens_per_second: Float64Builder::with_capacity(rows),
            client_id: StringBuilder::new(),
            upstream: StringBuilder::new(),
            labels: labels_builder(),
            cached_input_tokens: UInt32Builder::with_capacity(rows),
            reasoning_tokens: UInt32Builder::with_capacity(rows),
            cost_usd: Float64Builder::with_capacity(rows),
            error: StringBuilder::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn push(&mut self, call: &ApiCall) {
        self.event_time.append_value(call.event_time);
        self.request_id.append_value(&call.request_id);
        self.model.append_option(call.model.as_deref());
        self.endpoint.append_option(call.endpoint.as_deref());
        self.method.append_option(call.method.as_deref());
        self.status_code.append_option(call.status_code);
        self.outcome.append_value(call.outcome.as_str());
        self.latency_ms.append_value(call.latency_ms);
        self.ttfb_ms.append_option(call.ttfb_ms);
        self.ttft_ms.append_option(call.ttft_ms);
        self.request_bytes.append_option(call.request_bytes);
        self.response_bytes.append_option(call.response_bytes);
        self.input_tokens.append_option(call.input_tokens);
        self.output_tokens.append_option(call.output_tokens);
        self.output_tokens_estimated
            .append_option(call.output_tokens_estimated);
        self.output_tokens_per_second
            .append_option(call.output_tokens_per_second);
        self.client_id.append_option(call.client_id.as_deref());
        self.upstream.append_option(call.upstream.as_deref());
        if call.labels.is_empty() {
            self.labels
                .append(false)
                .expect("map builder: keys and values stay in step");
        } else {
            for (key, value) in &call.labels {
                self.labels.keys().append_value(key);
                self.labels.values().append_value(value);
            }
            self.labels
                .append(true)
                .expect("map builder: keys and values stay in step");
        }
        self.cached_input_tokens
            .append_option(call.cached_input_tokens);
        self.reasoning_tokens.append_option(call.reasoning_tokens);
        self.cost_usd.append_option(call.cost_usd);
        self.error.append_option(call.error.as_deref());
        self.rows += 1;
    }

    /// Finishes the batch and resets the builder.
    pub fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_time.finish()),
            Arc::new(self.request_id.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.endpoint.finish()),
            Arc::new(self.method.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.outcome.finish()),
            Arc::new(self.latency_ms.finish()),
            Arc::new(self.ttfb_ms.finish()),
            Arc::new(self.ttft_ms.finish()),
            Arc::new(self.request_bytes.finish()),
            Arc::new(self.response_bytes.finish()),
            Arc::new(self.input_tokens.finish()),
            Arc::new(self.output_tokens.finish()),
            Arc::new(self.output_tokens_estimated.finish()),
            Arc::new(self.output_tokens_per_second.finish()),
            Arc::new(self.client_id.finish()),
            Arc::new(self.upstream.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.cached_input_tokens.finish()),
            Arc::new(self.reasoning_tokens.finish()),
            Arc::new(self.cost_usd.finish()),
            Arc::new(self.error.finish()),
        ];
        RecordBatch::try_new(api_call_schema(), columns)
            .expect("api_call builder columns match the api_call schema")
    }
}

/// Builds one batch from rows.
pub fn api_calls_to_batch(calls: &[ApiCall]) -> RecordBatch {
    let mut builder = ApiCallBatchBuilder::with_capacity(calls.len());
    for call in calls {
        builder.push(call);
    }
    builder.finish()
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArrowError::SchemaError(format!("api_call batch lacks column {name}")))
}

fn opt_str(array: &StringArray, row: usize) -> Option<String> {
    array.is_valid(row).then(|| array.value(row).to_string())
}

/// Reads rows back out of an `api_call` batch (the inverse of [`api_calls_to_batch`]).
pub fn batch_to_api_calls(batch: &RecordBatch) -> Result<Vec<ApiCall>, ArrowError> {
    let event_time = column::<TimestampMicrosecondArray>(batch, EVENT_TIME)?;
    let request_id = column::<StringArray>(batch, REQUEST_ID)?;
    let model = column::<StringArray>(batch, MODEL)?;
    let endpoint = column::<StringArray>(batch, ENDPOINT)?;
    let method = column::<StringArray>(batch, METHOD)?;
    let status = column::<UInt16Array>(batch, STATUS_CODE)?;
    let outcome = column::<StringArray>(batch, OUTCOME)?;
    let latency = column::<Float64Array>(batch, LATENCY_MS)?;
    let ttfb = column::<Float64Array>(batch, TTFB_MS)?;
    let ttft = column::<Float64Array>(batch, TTFT_MS)?;
    let req_bytes = column::<UInt64Array>(batch, REQUEST_BYTES)?;
    let resp_bytes = column::<UInt64Array>(batch, RESPONSE_BYTES)?;
    let input_tokens = column::<UInt32Array>(batch, INPUT_TOKENS)?;
    let output_tokens = column::<UInt32Array>(batch, OUTPUT_TOKENS)?;
    let estimated = column::<BooleanArray>(batch, OUTPUT_TOKENS_ESTIMATED)?;
    let tokens_per_second = column::<Float64Array>(batch, OUTPUT_TOKENS_PER_SECOND)?;
    let client_id = column::<StringArray>(batch, CLIENT_ID)?;
    let upstream = column::<StringArray>(batch, UPSTREAM)?;
    let labels = column::<MapArray>(batch, LABELS)?;
    let cached = column::<UInt32Array>(batch, CACHED_INPUT_TOKENS)?;
    let reasoning = column::<UInt32Array>(batch, REASONING_TOKENS)?;
    let cost = column::<Float64Array>(batch, COST_USD)?;
    let error = column::<StringArray>(batch, ERROR)?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut label_map = BTreeMap::new();
        if labels.is_valid(row) {
            let entries = labels.value(row);
            let keys = entries.column(0).as_any().downcast_ref::<StringArray>();
            let values = entries.column(1).as_any().downcast_ref::<StringArray>();
            if let (Some(keys), Some(values)) = (keys, values) {
                for i in 0..keys.len() {
                    label_map.insert(keys.value(i).to_string(), values.value(i).to_string());
                }
            }
        }
        rows.push(ApiCall {
            event_time: event_time.value(row),
            request_id: request_id.value(row).to_string(),
            model: opt_str(model, row),
            endpoint: opt_str(endpoint, row),
            method: opt_str(method, row),
            status_code: status.is_valid(row).then(|| status.value(row)),
            outcome: Outcome::parse(outcome.value(row)).unwrap_or_default(),
            latency_ms: latency.value(row),
            ttfb_ms: ttfb.is_valid(row).then(|| ttfb.value(row)),
            ttft_ms: ttft.is_valid(row).then(|| ttft.value(row)),
            request_bytes: req_bytes.is_valid(row).then(|| req_bytes.value(row)),
            response_bytes: resp_bytes.is_valid(row).then(|| resp_bytes.value(row)),
            input_tokens: input_tokens.is_valid(row).then(|| input_tokens.value(row)),
            output_tokens: output_tokens
                .is_valid(row)
                .then(|| output_tokens.value(row)),
            output_tokens_estimated: estimated.is_valid(row).then(|| estimated.value(row)),
            output_tokens_per_second: tokens_per_second
                .is_valid(row)
                .then(|| tokens_per_second.value(row)),
            client_id: opt_str(client_id, row),
            upstream: opt_str(upstream, row),
            labels: label_map,
            cached_input_tokens: cached.is_valid(row).then(|| cached.value(row)),
            reasoning_tokens: reasoning.is_valid(row).then(|| reasoning.value(row)),
            cost_usd: cost.is_valid(row).then(|| cost.value(row)),
            error: opt_str(error, row),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ApiCall {
        ApiCall {
            event_time: 1_700_000_000_000_001,
            request_id: "req-1".into(),
            model: Some("gpt-4o".into()),
            endpoint: Some("/v1/chat/completions".into()),
            method: Some("POST".into()),
            status_code: Some(200),
            outcome: Outcome::Ok,
            latency_ms: 123.5,
            ttfb_ms: Some(20.0),
            ttft_ms: Some(40.0),
            request_bytes: Some(300),
            response_bytes: Some(2048),
            input_tokens: Some(12),
            output_tokens: Some(99),
            output_tokens_estimated: Some(false),
            output_tokens_per_second: Some(41.5),
            client_id: None,
            upstream: Some("127.0.0.1:8002".into()),
            labels: BTreeMap::from([("region".to_string(), "eu".to_string())]),
            cached_input_tokens: Some(4),
            reasoning_tokens: Some(30),
            cost_usd: Some(0.00125),
            error: None,
        }
    }

    #[test]
    fn json_uses_opentelemetry_names_and_round_trips() {
        let call = sample();
        let json = serde_json::to_string(&call).unwrap();
        assert!(
            json.contains("\"gen_ai.request.model\":\"gpt-4o\""),
            "{json}"
        );
        assert!(json.contains("\"http.response.status_code\":200"), "{json}");
        assert!(
            json.contains("\"gen_ai.usage.cache_read.input_tokens\":4"),
            "{json}"
        );
        assert!(
            json.contains("\"gen_ai.usage.reasoning.output_tokens\":30"),
            "{json}"
        );
        assert!(
            json.contains("\"timestamp\":\"2023-11-14T22:13:20.000001Z\""),
            "{json}"
        );
        let back: ApiCall = serde_json::from_str(&json).unwrap();
        assert_eq!(back, call);
    }

    #[test]
    fn json_accepts_short_names_and_integer_micros() {
        let json = r#"{"event_time": 5, "request_id": "r", "model": "m", "endpoint": "/e",
                       "status_code": 503, "outcome": "server_error", "latency_ms": 1.0}"#;
        let call: ApiCall = serde_json::from_str(json).unwrap();
        assert_eq!(call.event_time, 5);
        assert_eq!(call.outcome, Outcome::ServerError);
        assert_eq!(call.status_code, Some(503));
    }

    #[test]
    fn json_rejects_unknown_fields_and_bad_timestamps() {
        let unknown = r#"{"timestamp": 5, "request_id": "r", "latency_ms": 1, "modle": "x"}"#;
        assert!(serde_json::from_str::<ApiCall>(unknown)
            .unwrap_err()
            .to_string()
            .contains("modle"));
        let bad_time = r#"{"timestamp": "yesterday", "request_id": "r", "latency_ms": 1}"#;
        assert!(serde_json::from_str::<ApiCall>(bad_time)
            .unwrap_err()
            .to_string()
            .contains("RFC 3339"));
    }

    #[test]
    fn batch_round_trips_rows() {
        let mut other = sample();
        other.labels.clear();
        other.model = None;
        other.status_code = None;
        other.outcome = Outcome::UpstreamUnreachable;
        other.cached_input_tokens = None;
        other.cost_usd = None;
        other.error = Some("TLS handshake with x failed".into());
        let rows = vec![sample(), other];
        let batch = api_calls_to_batch(&rows);
        assert_eq!(batch.schema(), api_call_schema());
        assert_eq!(batch_to_api_calls(&batch).unwrap(), rows);
    }

    #[test]
    fn outcome_follows_status() {
        assert_eq!(Outcome::from_status(200), Outcome::Ok);
        assert_eq!(Outcome::from_status(429), Outcome::ClientError);
        assert_eq!(Outcome::from_status(503), Outcome::ServerError);
    }
}
