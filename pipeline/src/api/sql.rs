//! `POST /api/v1/query`: ad hoc SQL over the Parquet history, read-only. Each query runs in
//! its own worker process (`pipeline sql-worker`, see [`super::sql_worker`]) whose memory is
//! capped at `query_memory_mib` plus a fixed allowance; the worker is killed at
//! `query_timeout`, its answer cut off past `query_max_result_mib`, and at most
//! `query_concurrency` run at once. Whatever a query does, the API process — and the proxy
//! beside it in the embedded setup — keeps its memory and keeps serving. DDL, DML, COPY and
//! statements are refused, and the session has no table functions or URL tables that read
//! files.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::error::ApiError;
use super::sql_worker::{self, WorkerError, WorkerRequest, REFUSED_EXIT};
use super::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
}

/// What of a worker's stderr is kept to explain a crash.
const STDERR_KEPT_BYTES: usize = 16 * 1024;

/// The error codes a worker answers with, as the API's own.
fn known_code(code: &str) -> &'static str {
    match code {
        "refused" => "refused",
        "invalid_query" => "invalid_query",
        "query_too_large" => "query_too_large",
        "result_too_large" => "result_too_large",
        "history_unavailable" => "history_unavailable",
        "query_too_complex" => "query_too_complex",
        _ => "query_failed",
    }
}

fn timed_out(limit: Duration, waiting: bool) -> ApiError {
    let what = if waiting {
        "waited longer than the limit for a free query slot"
    } else {
        "ran longer than the limit"
    };
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "query_timeout",
        format!(
            "the query {what} of {} (api.query_timeout)",
            humantime::format_duration(limit)
        ),
    )
}

fn too_much_memory(memory_mib: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "query_too_large",
        format!(
            "the query needs more than its memory limit of {memory_mib} MiB (api.query_memory_mib)"
        ),
    )
}

fn worker_failed(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "query_failed",
        message.into(),
    )
}

/// The answer for a worker that ended without answering, from how it ended and what it said.
fn crashed(status: std::process::ExitStatus, stderr: &str, memory_mib: usize) -> ApiError {
    use std::os::unix::process::ExitStatusExt;
    // Rust's "memory allocation of N bytes failed", or a thread stack that cannot be mapped.
    if stderr.contains("memory allocation of")
        || stderr.contains("out of memory")
        || stderr.contains("Cannot allocate memory")
    {
        return too_much_memory(memory_mib);
    }
    if stderr.contains("has overflowed its stack") {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "query_too_complex",
            "the query is nested too deeply to plan: simplify its expressions",
        );
    }
    if status.signal() == Some(libc::SIGXCPU) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "query_timeout",
            "the query used more CPU time than its limit (api.query_timeout)",
        );
    }
    if let Some(panic) = stderr
        .lines()
        .skip_while(|line| !line.contains("panicked at"))
        .nth(1)
    {
        // A panic inside the query engine, caused by this query: its message is the reason.
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "query_failed",
            format!("the query engine could not run this query: {panic}"),
        );
    }
    let last = stderr.lines().last().unwrap_or("no output");
    worker_failed(format!("the query worker ended with {status}: {last}"))
}

/// Reads `from` to the end, keeping at most `limit` bytes; `true` when there was more.
async fn read_capped(mut from: impl AsyncRead + Unpin, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut over = false;
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return (kept, over),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
                if n > room {
                    over = true;
                }
            }
        }
    }
}

/// Runs `request` in a worker and returns the answer's body, within `deadline`.
async fn run_in_worker(
    state: &AppState,
    request: &WorkerRequest,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, ApiError> {
    let settings = &state.settings;
    let input = serde_json::to_vec(request).map_err(|e| worker_failed(e.to_string()))?;
    let mut child = Command::new(&settings.query_worker)
        .arg("sql-worker")
        // mimalloc's default 1 GiB arena reservation would not fit under the worker's
        // RLIMIT_DATA; a backtrace is of no use to the API's client.
        .env("MIMALLOC_ARENA_RESERVE", "64MiB")
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            worker_failed(format!(
                "cannot start the query worker {}: {e}",
                settings.query_worker.display()
            ))
        })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(worker_failed("the query worker has no pipes"));
    };
    let work = async {
        // Written and closed before reading: the request is small and the worker reads it
        // whole before answering.
        stdin
            .write_all(&input)
            .await
            .map_err(|e| worker_failed(format!("cannot send the query to its worker: {e}")))?;
        drop(stdin);
        let limit = request.max_result_bytes;
        let ((body, over), (errors, _), status) = tokio::join!(
            read_capped(stdout, limit),
            read_capped(stderr, STDERR_KEPT_BYTES),
            child.wait()
        );
        Ok::<_, ApiError>((body, over, errors, status))
    };
    // Past the deadline `work` is dropped, and the worker with it (kill_on_drop).
    let (body, over, errors, status) = tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| timed_out(settings.query_timeout(), false))??;
    if over {
        return Err(ApiError::from(sql_worker::too_large(
            request.max_result_bytes,
        )));
    }
    let status = status.map_err(|e| worker_failed(format!("the query worker was lost: {e}")))?;
    match status.code() {
        Some(0) => Ok(body),
        Some(REFUSED_EXIT) => match serde_json::from_slice::<WorkerError>(&body) {
            Ok(error) => Err(ApiError::from(error)),
            Err(_) => Err(worker_failed("the query worker's answer is unreadable")),
        },
        _ => {
            let stderr = String::from_utf8_lossy(&errors);
            let error = crashed(status, &stderr, request.memory_mib);
            tracing::warn!(%status, error = %error.message, "the query worker ended without an answer");
            Err(error)
        }
    }
}

impl From<WorkerError> for ApiError {
    fn from(error: WorkerError) -> Self {
        let status =
            StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, known_code(&error.error), error.message)
    }
}

pub async fn query(
    State(state): State<Arc<AppState>>,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    if request.sql.trim().is_empty() {
        return Err(ApiError::bad_field("sql", "empty"));
    }
    let settings = &state.settings;
    let started = Instant::now();
    let limit = settings.query_timeout();
    let deadline = tokio::time::Instant::now() + limit;
    let _slot = tokio::time::timeout_at(deadline, state.query_slots.acquire())
        .await
        .map_err(|_| timed_out(limit, true))?
        .map_err(|_| worker_failed("the API is shutting down"))?;
    let worker_request = WorkerRequest {
        sql: request.sql,
        history: settings.history.clone(),
        memory_mib: settings.query_memory_mib,
        max_rows: settings.query_max_rows,
        max_result_bytes: settings.query_max_result_mib * 1024 * 1024,
        timeout_ms: limit.as_millis() as u64,
    };
    let body = run_in_worker(&state, &worker_request, deadline).await?;
    // The worker's body is a JSON object with fields: add the elapsed time as its first.
    let Some(fields) = body.strip_prefix(b"{") else {
        return Err(worker_failed(
            "the query worker's answer is not a JSON object",
        ));
    };
    let mut answer = format!(
        "{{\"elapsed_ms\":{},",
        started.elapsed().as_secs_f64() * 1000.0
    )
    .into_bytes();
    answer.extend_from_slice(fields);
    Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_failed_allocation_is_the_memory_limit() {
        let status = std::process::ExitStatus::from_raw(libc::SIGABRT);
        let error = crashed(status, "memory allocation of 2000000000 bytes failed\n", 64);
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error.message.contains("64 MiB"), "{}", error.message);
    }

    #[test]
    fn a_stack_overflow_is_a_query_too_complex() {
        let status = std::process::ExitStatus::from_raw(libc::SIGABRT);
        let stderr =
            "\nthread 'main' has overflowed its stack\nfatal runtime error: stack overflow\n";
        let error = crashed(status, stderr, 64);
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code, "query_too_complex");
    }

    #[test]
    fn a_panic_gives_its_message() {
        let status = std::process::ExitStatus::from_raw(101 << 8);
        let stderr = "\nthread 'main' panicked at arrow/src/x.rs:1:2:\noffset overflow\nnote: run with `RUST_BACKTRACE=1`\n";
        let error = crashed(status, stderr, 64);
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.ends_with("offset overflow"),
            "{}",
            error.message
        );
    }

    #[test]
    fn the_cpu_limit_is_a_timeout() {
        let status = std::process::ExitStatus::from_raw(libc::SIGXCPU);
        assert_eq!(crashed(status, "", 64).status, StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn an_unknown_end_is_a_server_error_that_says_how_it_ended() {
        let status = std::process::ExitStatus::from_raw(libc::SIGSEGV);
        let error = crashed(status, "something\nlast words\n", 64);
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(error.message.contains("last words"), "{}", error.message);
    }

    #[tokio::test]
    async fn reading_stops_keeping_at_the_cap_but_drains_the_rest() {
        let data = vec![7u8; 300_000];
        let (kept, over) = read_capped(&data[..], 1000).await;
        assert_eq!(kept.len(), 1000);
        assert!(over);
        let (kept, over) = read_capped(&data[..10], 1000).await;
        assert_eq!(kept.len(), 10);
        assert!(!over);
    }
}
