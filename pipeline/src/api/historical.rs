//! `GET /api/v1/metrics/historical?model=&endpoint=&window=&from=&to=&step=`: the
//! `window_metrics` history (Parquet) regrouped into buckets of `step` per model and endpoint,
//! through DataFusion. Only the newest revision of each window counts; the date partitions
//! outside `[from, to]` are skipped. Requests, errors, tokens, spend and rates add up exactly;
//! latency means are request-weighted; a bucket's quantiles (latency and time to first token)
//! are the highest of its windows' (exact when `step` equals the window size). Which of those
//! columns there are follows the table (see [`super::history_columns`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use serde_json::{json, Value};

use super::error::ApiError;
use super::history_columns::{bucket_aggregates, select_list};
use super::routes::check_params;
use super::state::AppState;
use crate::query::{read_only, register_history};

/// Buckets one answer may have.
const MAX_BUCKETS: u64 = 10_000;
const TABLE: &str = "window_metrics";

/// RFC 3339, or seconds since the epoch.
fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(seconds) = text.parse::<i64>() {
        return DateTime::from_timestamp(seconds, 0)
            .ok_or_else(|| ApiError::bad_field(field, "out of range"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_field(
                field,
                format!("{text:?} is not RFC 3339 (2026-11-23T10:00:00Z) or epoch seconds: {e}"),
            )
        })
}

/// The request, checked.
struct Range {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: Duration,
}

fn range(params: &HashMap<String, String>) -> Result<Range, ApiError> {
    let to = match params.get("to") {
        Some(text) => parse_time("to", text)?,
        None => Utc::now(),
    };
    let from = match params.get("from") {
        Some(text) => parse_time("from", text)?,
        None => to - chrono::Duration::hours(1),
    };
    if from >= to {
        return Err(ApiError::bad_field("from", "must be before `to`"));
    }
    let step = match params.get("step") {
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_field("step", format!("{text:?}: {e} (e.g. 10s, 1m, 1h)"))
        })?,
        None => Duration::from_secs(60),
    };
    if step < Duration::from_secs(1) || step.subsec_nanos() != 0 {
        return Err(ApiError::bad_field(
            "step",
            "must be a whole number of seconds, at least 1s",
        ));
    }
    let span = (to - from).num_seconds().max(1) as u64;
    if span / step.as_secs() > MAX_BUCKETS {
        return Err(ApiError::bad_field(
            "step",
            format!(
                "{} buckets between `from` and `to`; at most {MAX_BUCKETS}: choose a larger step",
                span / step.as_secs()
            ),
        ));
    }
    Ok(Range { from, to, step })
}

/// The key columns every point names, `model` and `endpoint`.
pub(super) const KEY_COLUMNS: [&str; 2] = ["model", "endpoint"];

/// The SELECT of each key column: the column, or a null when the history's windows are not
/// keyed by it (`null` is the SQL of a null text); an error when the request filters on it.
pub(super) fn key_columns(
    columns: &[String],
    filtered: &[&str],
    null: &str,
) -> Result<Vec<String>, ApiError> {
    KEY_COLUMNS
        .iter()
        .map(|key| {
            if columns.iter().any(|c| c == key) {
                Ok(format!("\"{key}\""))
            } else if filtered.contains(key) {
                Err(ApiError::bad_field(
                    key,
                    format!("the history's windows are not keyed by `{key}`"),
                ))
            } else {
                Ok(format!("{null} AS \"{key}\""))
            }
        })
        .collect()
}

/// The answer when no `window` was given and the range holds several.
pub(super) fn several_windows(names: &[String]) -> ApiError {
    ApiError::bad_field(
        "window",
        format!(
            "the history has several windows in this range ({}); choose one",
            names.join(", ")
        ),
    )
}

fn timestamp(t: DateTime<Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "history_unavailable",
        message,
    )
}

fn failed(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "query_failed",
        error.to_string(),
    )
}

async fn rows(
    context: &SessionContext,
    sql: &str,
    params: Vec<(&str, ScalarValue)>,
) -> Result<Value, ApiError> {
    let frame = context
        .sql_with_options(sql, read_only())
        .await
        .and_then(|f| f.with_param_values(params))
        .map_err(failed)?;
    let batches = frame.collect().await.map_err(failed)?;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&arrow::record_batch::RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .and_then(|()| writer.finish())
        .map_err(failed)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(json!([]));
    }
    serde_json::from_slice(&bytes).map_err(failed)
}

pub async fn historical(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_params(
        &params,
        &["model", "endpoint", "window", "from", "to", "step"],
    )?;
    let Range { from, to, step } = range(&params)?;
    if let Some(url) = &state.settings.history_db {
        let request = super::historical_pg::Request {
            from,
            to,
            step_seconds: step.as_secs(),
            window: params.get("window").map(String::as_str),
            model: params.get("model").map(String::as_str),
            endpoint: params.get("endpoint").map(String::as_str),
        };
        let found =
            super::historical_pg::points(url, &state.settings.history_db_schema, &request).await?;
        let (window, points) = match found {
            Some((window, points)) => (Value::from(window), points),
            None => (Value::Null, Vec::new()),
        };
        return Ok(Json(json!({
            "window": window,
            "from": engine::time::format_micros(from.timestamp_micros()),
            "to": engine::time::format_micros(to.timestamp_micros()),
            "step_seconds": step.as_secs(),
            "points": points,
        })));
    }
    let context = SessionContext::new_with_config(SessionConfig::new());
    let tables = register_history(&context, &state.settings.history)
        .await
        .map_err(|e| unavailable(format!("{e:#}")))?;
    if !tables.iter().any(|t| t == TABLE) {
        return Ok(Json(
            json!({ "window": null, "step_seconds": step.as_secs(), "points": [] }),
        ));
    }
    let columns: Vec<String> = context
        .table(TABLE)
        .await
        .map_err(failed)?
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let filtered: Vec<&str> = KEY_COLUMNS
        .into_iter()
        .filter(|k| params.contains_key(*k))
        .collect();
    let keys = key_columns(&columns, &filtered, "CAST(NULL AS VARCHAR)")?;
    let mut filters = vec![
        "window_start >= $from".to_string(),
        "window_start < $to".to_string(),
        "date >= $from_date".to_string(),
        "date <= $to_date".to_string(),
    ];
    let mut values: Vec<(&str, ScalarValue)> = vec![
        ("from", timestamp(from)),
        ("to", timestamp(to)),
        (
            "from_date",
            ScalarValue::from(from.format("%Y-%m-%d").to_string()),
        ),
        (
            "to_date",
            ScalarValue::from(to.format("%Y-%m-%d").to_string()),
        ),
    ];
    for field in KEY_COLUMNS {
        if let Some(value) = params.get(field) {
            filters.push(format!("{field} = ${field}"));
            values.push((field, ScalarValue::from(value.as_str())));
        }
    }
    let window = match params.get("window") {
        Some(window) => window.clone(),
        None => {
            let sql = format!(
                "SELECT DISTINCT \"window\" AS name FROM {TABLE} WHERE {} ORDER BY name",
                filters.join(" AND ")
            );
            let names = rows(&context, &sql, values.clone()).await?;
            let names: Vec<String> = names
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .filter_map(|r| r["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            match names.as_slice() {
                [] => {
                    return Ok(Json(
                        json!({ "window": null, "step_seconds": step.as_secs(), "points": [] }),
                    ))
                }
                [only] => only.clone(),
                several => return Err(several_windows(several)),
            }
        }
    };
    filters.push("\"window\" = $window".to_string());
    values.push(("window", ScalarValue::from(window.as_str())));
    let step_seconds = step.as_secs();
    let sql = format!(
        "WITH newest AS (
            SELECT *, row_number() OVER (
                PARTITION BY \"window\", window_start, model, endpoint ORDER BY revision DESC
            ) AS rank
            FROM {TABLE} WHERE {filters}
        )
        SELECT date_bin(INTERVAL '{step_seconds} seconds', window_start, TIMESTAMP '1970-01-01T00:00:00Z') AS time,
               {keys},
               {aggregates}
        FROM newest WHERE rank = 1
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3",
        keys = keys.join(", "),
        aggregates = select_list(&bucket_aggregates(&columns, &step_seconds.to_string())),
        filters = filters.join(" AND ")
    );
    let points = rows(&context, &sql, values).await?;
    Ok(Json(json!({
        "window": window,
        "from": engine::time::format_micros(from.timestamp_micros()),
        "to": engine::time::format_micros(to.timestamp_micros()),
        "step_seconds": step_seconds,
        "points": points,
    })))
}
