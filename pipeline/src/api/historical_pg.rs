//! `/api/v1/metrics/historical` from PostgreSQL / TimescaleDB (`api.history_db`): the same
//! buckets as the Parquet path, computed by the database over the `window_metrics` table a
//! `timescaledb` sink writes (which keeps only each window's newest revision), with the
//! aggregates its columns allow.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::error::ApiError;
use super::historical::key_columns;
use super::history_columns::{answered_names, bucket_aggregates, select_list};
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
    let columns: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = 'window_metrics' ORDER BY ordinal_position",
            &[&schema],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if columns.is_empty() {
        return Ok(None);
    }
    let filtered: Vec<&str> = [("model", request.model), ("endpoint", request.endpoint)]
        .into_iter()
        .filter_map(|(key, value)| value.map(|_| key))
        .collect();
    let keys = key_columns(&columns, &filtered, "NULL::text")?;
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
    let aggregates = bucket_aggregates(&columns, &step);
    let sql = format!(
        "SELECT to_timestamp(floor(extract(epoch FROM window_start)::float8 / {step}) * {step}) AS time,
                {keys},
                {select}
         FROM {table} WHERE {filters}
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        keys = keys.join(", "),
        select = select_list(&aggregates),
        filters = filters.join(" AND ")
    );
    let rows = client
        .query(&sql, &borrowed(&params))
        .await
        .map_err(unavailable)?;
    let names = answered_names(&aggregates);
    let points = rows
        .iter()
        .map(|row| {
            let time: DateTime<Utc> = row.get("time");
            let mut point = serde_json::Map::new();
            point.insert(
                "time".into(),
                json!(engine::time::format_micros(time.timestamp_micros())),
            );
            for key in ["model", "endpoint"] {
                point.insert(key.into(), json!(row.get::<_, Option<String>>(key)));
            }
            for name in &names {
                point.insert((*name).into(), json!(row.get::<_, Option<f64>>(*name)));
            }
            Value::Object(point)
        })
        .collect();
    Ok(Some((window, points)))
}
