//! The query worker: the child process `POST /api/v1/query` runs each SQL query in
//! (`pipeline sql-worker`, reading one [`WorkerRequest`] as JSON on stdin). Before it parses
//! the SQL it caps its own writable memory (`RLIMIT_DATA`) at the query's memory pool plus a
//! fixed allowance, its CPU time a little past the deadline, and lowers its priority, so no
//! query — a scalar function that allocates gigabytes, a join, a runaway recursion — can grow
//! or slow the process that serves the API and, in the embedded setup, the proxy. The answer
//! goes to stdout: the JSON body on exit 0, an [`WorkerError`] on exit [`REFUSED_EXIT`].

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::query::{read_only, register_history};

/// The exit code of a worker that answered with an error of its own (the query was refused,
/// invalid, or over a limit it could see coming).
pub const REFUSED_EXIT: i32 = 3;

/// Writable memory the worker may use besides the query's pool: the runtime, the session,
/// the history's file listings and Parquet metadata, the answer being serialized.
pub const WORKER_ALLOWANCE_MIB: usize = 256;

/// The largest SQL text a worker reads (the API's body limit is smaller still).
const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

/// What the API asks a worker to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRequest {
    pub sql: String,
    /// The history root: a directory or `s3://bucket/prefix`.
    pub history: String,
    pub memory_mib: usize,
    pub max_rows: usize,
    pub max_result_bytes: usize,
    /// The query's deadline; the worker's CPU time is capped a little past it.
    pub timeout_ms: u64,
}

/// A worker's own error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl WorkerError {
    fn new(status: u16, error: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error: error.to_string(),
            message: message.into(),
        }
    }
}

/// `pipeline sql-worker`: one query from stdin, its answer on stdout.
pub fn main() -> ExitCode {
    let request = match read_request() {
        Ok(request) => request,
        Err(message) => return answer_error(&WorkerError::new(500, "query_failed", message)),
    };
    if let Err(message) = limit_self(&request) {
        return answer_error(&WorkerError::new(500, "query_failed", message));
    }
    // One thread: the worker's CPU is one core at most, leaving the others to the API and
    // the proxy.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return answer_error(&WorkerError::new(
                500,
                "query_failed",
                format!("the query worker cannot start its runtime: {error}"),
            ))
        }
    };
    match runtime.block_on(execute(&request)) {
        Ok(body) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(&body)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => answer_error(&error),
    }
}

fn read_request() -> Result<WorkerRequest, String> {
    let mut text = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| format!("the query worker cannot read its request: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("the query worker's request is invalid: {e}"))
}

fn answer_error(error: &WorkerError) -> ExitCode {
    let text = serde_json::to_vec(error).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&text).and_then(|()| stdout.flush());
    ExitCode::from(REFUSED_EXIT as u8)
}

/// Caps this process's writable memory and CPU time and lowers its priority.
fn limit_self(request: &WorkerRequest) -> Result<(), String> {
    let data_bytes = ((request.memory_mib + WORKER_ALLOWANCE_MIB) as u64) * 1024 * 1024;
    set_limit(
        libc::RLIMIT_DATA,
        data_bytes,
        "writable memory (RLIMIT_DATA)",
    )?;
    // The API kills the worker at the deadline; the CPU limit stops it should the API be gone.
    let cpu_seconds = Duration::from_millis(request.timeout_ms).as_secs() + 2;
    set_limit(libc::RLIMIT_CPU, cpu_seconds, "CPU time (RLIMIT_CPU)")?;
    set_limit(libc::RLIMIT_CORE, 0, "core files (RLIMIT_CORE)")?;
    // SAFETY: setpriority only reads its integer arguments.
    let reniced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if reniced != 0 {
        tracing::debug!("the query worker could not lower its priority");
    }
    Ok(())
}

/// The type `setrlimit` takes its resource as: glibc's enum, an int elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

fn set_limit(resource: Resource, value: u64, what: &str) -> Result<(), String> {
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(format!(
            "the query worker cannot limit its {what}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn refused_or_invalid(error: DataFusionError) -> WorkerError {
    let text = error.to_string();
    if text.contains("not supported") || text.contains("Only") {
        WorkerError::new(
            400,
            "refused",
            format!("only read-only queries are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW TABLES, SHOW COLUMNS FROM t): {text}"),
        )
    } else {
        WorkerError::new(400, "invalid_query", text)
    }
}

/// An error while the query ran: over the memory pool is 413; reading the history is the
/// server's fault (500); anything else (an overflow, a bad cast, a function's argument) is
/// the query's (400).
fn execution_error(error: DataFusionError, memory_mib: usize) -> WorkerError {
    match error.find_root() {
        DataFusionError::ResourcesExhausted(text) => WorkerError::new(
            413,
            "query_too_large",
            format!("the query needs more than its memory limit of {memory_mib} MiB (api.query_memory_mib): {text}"),
        ),
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ParquetError(_) => {
            WorkerError::new(500, "query_failed", error.to_string())
        }
        _ => WorkerError::new(400, "query_failed", error.to_string()),
    }
}

/// Runs the query and returns the answer's JSON body.
async fn execute(request: &WorkerRequest) -> Result<Vec<u8>, WorkerError> {
    let started = Instant::now();
    // No spilling to disk: a query over its memory limit fails instead of filling /tmp.
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(request.memory_mib * 1024 * 1024, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .map_err(|e| execution_error(e, request.memory_mib))?;
    let context = SessionContext::new_with_config_rt(
        SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(1),
        runtime,
    );
    let tables = register_history(&context, &request.history)
        .await
        .map_err(|e| WorkerError::new(503, "history_unavailable", format!("{e:#}")))?;
    let frame = context
        .sql_with_options(&request.sql, read_only())
        .await
        .map_err(refused_or_invalid)?;
    let schema = frame.schema().as_arrow().clone();
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| execution_error(e, request.memory_mib))?;
    let mut rows_json = RowsWriter::new(request.max_result_bytes);
    let mut rows = 0usize;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| execution_error(e, request.memory_mib))?;
        let room = request.max_rows - rows;
        let taken = batch.num_rows().min(room);
        rows_json.write(&batch.slice(0, taken))?;
        rows += taken;
        if taken < batch.num_rows() {
            truncated = true;
            break;
        }
    }
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let head = json!({
        "columns": columns,
        "row_count": rows,
        "truncated": truncated,
        "tables": tables,
        "query_ms": started.elapsed().as_secs_f64() * 1000.0,
    });
    rows_json.finish(head)
}

/// The answer's `rows` array, written batch by batch and refused past the result size limit.
struct RowsWriter {
    rows: Vec<u8>,
    limit: usize,
}

impl RowsWriter {
    fn new(limit: usize) -> Self {
        Self {
            rows: b"[".to_vec(),
            limit,
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), WorkerError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer
            .write(batch)
            .and_then(|()| writer.finish())
            .map_err(|e| WorkerError::new(500, "query_failed", e.to_string()))?;
        let array = writer.into_inner();
        // `array` is `[{...},{...}]`: append its items.
        let items = &array[1..array.len().saturating_sub(1)];
        if self.rows.len() + items.len() + 1 > self.limit {
            return Err(too_large(self.limit));
        }
        if self.rows.len() > 1 {
            self.rows.push(b',');
        }
        self.rows.extend_from_slice(items);
        Ok(())
    }

    /// The whole body: `head`'s fields and `rows`.
    fn finish(mut self, head: serde_json::Value) -> Result<Vec<u8>, WorkerError> {
        self.rows.push(b']');
        let mut body = serde_json::to_vec(&head)
            .map_err(|e| WorkerError::new(500, "query_failed", e.to_string()))?;
        if body.len() + self.rows.len() + 10 > self.limit {
            return Err(too_large(self.limit));
        }
        // `head` is an object with fields: replace its closing brace with the rows.
        body.pop();
        body.extend_from_slice(b",\"rows\":");
        body.extend_from_slice(&self.rows);
        body.push(b'}');
        Ok(body)
    }
}

pub(super) fn too_large(limit: usize) -> WorkerError {
    WorkerError::new(
        413,
        "result_too_large",
        format!(
            "the answer is larger than the limit of {} MiB (api.query_max_result_mib): select fewer rows or columns, or aggregate",
            limit / (1024 * 1024)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let text: Vec<String> = values.iter().map(|v| format!("v{v}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(values.to_vec())),
                Arc::new(StringArray::from(text)),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn rows_from_several_batches_make_one_array() {
        let mut writer = RowsWriter::new(1 << 20);
        writer.write(&batch(&[1, 2])).expect("fits");
        writer.write(&batch(&[])).expect("fits");
        writer.write(&batch(&[3])).expect("fits");
        let body = writer.finish(json!({ "row_count": 3 })).expect("fits");
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(parsed["row_count"], 3);
        assert_eq!(
            parsed["rows"],
            json!([{"n": 1, "s": "v1"}, {"n": 2, "s": "v2"}, {"n": 3, "s": "v3"}])
        );
    }

    #[test]
    fn no_rows_is_an_empty_array() {
        let body = RowsWriter::new(1024)
            .finish(json!({ "row_count": 0 }))
            .expect("fits");
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(parsed["rows"], json!([]));
    }

    #[test]
    fn an_answer_over_the_limit_is_refused() {
        let mut writer = RowsWriter::new(64);
        let values: Vec<i64> = (0..100).collect();
        let error = writer.write(&batch(&values)).expect_err("too large");
        assert_eq!(error.status, 413);
        assert_eq!(error.error, "result_too_large");
    }
}
