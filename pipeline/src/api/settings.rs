//! The `[api]` table of pipelines.toml: where the HTTP server listens, who may call it, and
//! the limits of its SQL endpoint.

use std::time::Duration;

use engine::time::ConfigDuration;
use serde::Deserialize;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every `GET`, the WebSocket feed and `/metrics`.
    Read,
    /// Also SQL and changing alert rules.
    Admin,
}

/// One API key. Give the key itself (usually `${ENV_VAR}`) or only its SHA-256 in hex, so the
/// file need not hold the secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Shown in logs and error messages, never the key.
    pub name: String,
    pub key: Option<String>,
    pub sha256: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Read]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// With no keys every endpoint is open (fine on loopback; a warning otherwise).
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Origins allowed to call from a browser; `["*"]` for any. Empty: no CORS headers.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// The Parquet history root (a directory or `s3://bucket/prefix`) SQL reads.
    #[serde(default = "default_history")]
    pub history: String,
    #[serde(default = "default_query_timeout")]
    pub query_timeout: ConfigDuration,
    /// Memory a query may use, in MiB, before it fails.
    #[serde(default = "default_query_memory_mib")]
    pub query_memory_mib: usize,
    /// Rows a query may return.
    #[serde(default = "default_query_max_rows")]
    pub query_max_rows: usize,
    /// The largest answer a query may give, in MiB of JSON; a larger one is 413
    /// `result_too_large`.
    #[serde(default = "default_query_max_result_mib")]
    pub query_max_result_mib: usize,
    /// Queries run at once, each in its own worker process; more wait for a slot within
    /// their `query_timeout`.
    #[serde(default = "default_query_concurrency")]
    pub query_concurrency: usize,
    /// The executable a query's worker process runs (`<it> sql-worker`): this binary.
    #[serde(skip, default = "default_query_worker")]
    pub query_worker: std::path::PathBuf,
    /// A PostgreSQL / TimescaleDB URL whose `window_metrics` table (written by a `timescaledb`
    /// sink) `/api/v1/metrics/historical` reads instead of the Parquet history.
    #[serde(default)]
    pub history_db: Option<String>,
    /// The schema of that table.
    #[serde(default = "default_history_db_schema")]
    pub history_db_schema: String,
    /// Where alert rule changes made through the API are saved (and restored from at start).
    #[serde(default = "default_rules_file")]
    pub rules_file: std::path::PathBuf,
    /// How often the WebSocket feed sends a heartbeat.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: ConfigDuration,
    /// Updates buffered per WebSocket client; a client further behind skips ahead.
    #[serde(default = "default_client_buffer")]
    pub client_buffer: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8001".to_string()
}
fn default_history() -> String {
    "./data".to_string()
}
fn default_history_db_schema() -> String {
    "public".to_string()
}
fn default_rules_file() -> std::path::PathBuf {
    std::path::PathBuf::from("./data/alert-rules.json")
}
fn default_query_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_query_memory_mib() -> usize {
    512
}
fn default_query_max_rows() -> usize {
    100_000
}
fn default_query_max_result_mib() -> usize {
    64
}
fn default_query_concurrency() -> usize {
    2
}
/// This process's own executable, which has the `sql-worker` command: on Linux through
/// `/proc/self/exe`, which still starts it after an upgrade replaced the file on disk.
fn default_query_worker() -> std::path::PathBuf {
    let own = std::path::Path::new("/proc/self/exe");
    if own.exists() {
        return own.to_path_buf();
    }
    std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("pipeline"))
}
fn default_heartbeat() -> ConfigDuration {
    ConfigDuration::from_secs(15)
}
fn default_client_buffer() -> usize {
    1024
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            keys: Vec::new(),
            cors_origins: Vec::new(),
            history: default_history(),
            history_db: None,
            history_db_schema: default_history_db_schema(),
            rules_file: default_rules_file(),
            query_timeout: default_query_timeout(),
            query_memory_mib: default_query_memory_mib(),
            query_max_rows: default_query_max_rows(),
            query_max_result_mib: default_query_max_result_mib(),
            query_concurrency: default_query_concurrency(),
            query_worker: default_query_worker(),
            heartbeat: default_heartbeat(),
            client_buffer: default_client_buffer(),
        }
    }
}

impl ApiSettings {
    pub fn query_timeout(&self) -> Duration {
        self.query_timeout.0
    }
}
