//! `/api/v1/metrics/historical` from PostgreSQL / TimescaleDB (`api.history_db`): the same
//! buckets as the Parquet path, computed by the database over the `window_metrics` table a
//! `timescaledb` sink writes (which keeps only each window's newest revision).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::error::ApiError;
use axum::http::StatusCode;

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "history_unavailable",
        format!("the history database: {error}"),
    )
}

fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// What a request asks for.
pub struct Request<'a> {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step_seconds: u64,
    pub window: Option<&'a str>,
    pub model: Option<&'a str>,
    pub endpoint: Option<&'a str>,
}

/// The parameters as the driver takes them.
fn borrowed(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// The window used and the points, or `None` when the range holds no window results.
pub async fn points(
    url: &str,
    schema: &str,
    request: &Request<'_>,
) -> Result<Option<(String, Vec<Value>)>, ApiError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(unavailable)?;
    tokio::spawn(connection);
    let table = format!("{}.\"window_metrics\"", quoted(schema));
    let mut filters = vec![
        "window_start >= $1".to_string(),
        "window_start < $2".to_string(),
    ];
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
        vec![Box::new(request.from), Box::new(request.to)];
    for (column, value) in [("model", request.model), ("endpoint", request.endpoint)] {
        if let Some(value) = value {
            params.push(Box::new(value.to_string()));
            filters.push(format!("{column} = ${}", params.len()));
        }
    }
    let window = match request.window {
        Some(window) => window.to_string(),
        None => {
            let sql = format!(
                "SELECT DISTINCT \"window\" FROM {table} WHERE {} ORDER BY 1",
                filters.join(" AND ")
            );
            let rows = client
                .query(&sql, &borrowed(&params))
                .await
                .map_err(unavailable)?;
            let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            match names.as_slice() {
                [] => return Ok(None),
                [only] => only.clone(),
                several => return Err(super::historical::several_windows(several)),
            }
        }
    };
    params.push(Box::new(window.clone()));
    filters.push(format!("\"window\" = ${}", params.len()));
    params.push(Box::new(request.step_seconds as f64));
    let step = format!("${}::float8", params.len());
    let sql = format!(
        "SELECT to_timestamp(floor(extract(epoch FROM window_start)::float8 / {step}) * {step}) AS time,
                model, endpoint,
                sum(count)::float8 AS requests,
                sum(errors)::float8 AS errors,
                sum(errors)::float8 / NULLIF(sum(count), 0) AS error_rate,
                sum(count)::float8 / {step} AS rate_per_sec,
                sum(mean_latency_ms * count) / NULLIF(sum(count), 0) AS mean_latency_ms,
                max(p50_latency_ms) AS p50_latency_ms,
                max(p95_latency_ms) AS p95_latency_ms,
                max(p99_latency_ms) AS p99_latency_ms
         FROM {table} WHERE {}
         GROUP BY 1, model, endpoint ORDER BY 1, model, endpoint",
        filters.join(" AND ")
    );
    let rows = client
        .query(&sql, &borrowed(&params))
        .await
        .map_err(unavailable)?;
    let points = rows
        .iter()
        .map(|row| {
            let time: DateTime<Utc> = row.get("time");
            let number = |name: &str| row.get::<_, Option<f64>>(name);
            json!({
                "time": engine::time::format_micros(time.timestamp_micros()),
                "model": row.get::<_, Option<String>>("model"),
                "endpoint": row.get::<_, Option<String>>("endpoint"),
                "requests": number("requests"),
                "errors": number("errors"),
                "error_rate": number("error_rate"),
                "rate_per_sec": number("rate_per_sec"),
                "mean_latency_ms": number("mean_latency_ms"),
                "p50_latency_ms": number("p50_latency_ms"),
                "p95_latency_ms": number("p95_latency_ms"),
                "p99_latency_ms": number("p99_latency_ms"),
            })
        })
        .collect();
    Ok(Some((window, points)))
}
