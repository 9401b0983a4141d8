//! `POST /api/v1/query`: ad hoc SQL over the Parquet history, read-only. Each query runs in
//! its own DataFusion session with a memory pool of `query_memory_mib` and a deadline of
//! `query_timeout` (without spilling to disk), and returns at most `query_max_rows` rows. DDL, DML, COPY and statements
//! are refused, and the session has no table functions or URL tables that read files.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::query::{read_only, register_history};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
}

fn refused_or_invalid(error: DataFusionError) -> ApiError {
    let text = error.to_string();
    let (code, message) = if text.contains("not supported") || text.contains("Only") {
        (
            "refused",
            format!("only read-only queries are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW TABLES, SHOW COLUMNS FROM t): {text}"),
        )
    } else {
        ("invalid_query", text)
    };
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn execution_error(error: DataFusionError) -> ApiError {
    match error.find_root() {
        DataFusionError::ResourcesExhausted(text) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "query_too_large",
            format!("the query needs more than the memory limit (api.query_memory_mib): {text}"),
        ),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "query_failed",
            error.to_string(),
        ),
    }
}

async fn run(state: &AppState, sql: &str) -> Result<Value, ApiError> {
    let settings = &state.settings;
    // No spilling to disk: a query over its memory limit fails instead of filling /tmp.
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(settings.query_memory_mib * 1024 * 1024, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .map_err(execution_error)?;
    let context = SessionContext::new_with_config_rt(
        SessionConfig::new().with_information_schema(true),
        runtime,
    );
    let tables = register_history(&context, &settings.history)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "history_unavailable",
                format!("{e:#}"),
            )
        })?;
    let frame = context
        .sql_with_options(sql, read_only())
        .await
        .map_err(refused_or_invalid)?;
    let schema = frame.schema().as_arrow().clone();
    let mut stream = frame.execute_stream().await.map_err(execution_error)?;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(execution_error)?;
        let room = settings.query_max_rows - rows;
        if batch.num_rows() > room {
            batches.push(batch.slice(0, room));
            rows += room;
            truncated = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&arrow::record_batch::RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .and_then(|()| writer.finish())
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "query_failed",
                e.to_string(),
            )
        })?;
    let bytes = writer.into_inner();
    let data: Value = if bytes.is_empty() {
        json!([])
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "query_failed",
                e.to_string(),
            )
        })?
    };
    let columns: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    Ok(json!({
        "columns": columns,
        "rows": data,
        "row_count": rows,
        "truncated": truncated,
        "tables": tables,
    }))
}

pub async fn query(
    State(state): State<Arc<AppState>>,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body?;
    if request.sql.trim().is_empty() {
        return Err(ApiError::bad_field("sql", "empty"));
    }
    let started = Instant::now();
    let limit = state.settings.query_timeout();
    let mut answer = tokio::time::timeout(limit, run(&state, &request.sql))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "query_timeout",
                format!(
                    "the query ran longer than the limit of {} (api.query_timeout)",
                    humantime::format_duration(limit)
                ),
            )
        })??;
    if let Value::Object(answer) = &mut answer {
        answer.insert(
            "elapsed_ms".into(),
            json!(started.elapsed().as_secs_f64() * 1000.0),
        );
    }
    Ok(Json(answer))
}
