//! Settings of the `timescaledb` (alias `postgres`) sink.

use engine::time::ConfigDuration;
use serde::Deserialize;

/// What the sink does about its table at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// Create the table, indexes and (with TimescaleDB) policies when missing; check an
    /// existing table's columns.
    #[default]
    Create,
    /// Only check that the table exists with the expected columns.
    Check,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db` or `host=... user=... dbname=...`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The PostgreSQL schema (namespace) of the table.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Default: `api_calls` for api_call rows, `window_metrics` for window results.
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub schema_mode: SchemaMode,
    /// Rows buffered before a write.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A partial batch is written after this long.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: ConfigDuration,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_retry_initial")]
    pub retry_initial: ConfigDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: ConfigDuration,
    /// Rows older than this are removed (TimescaleDB: a retention policy; plain PostgreSQL: an
    /// hourly DELETE by the sink). Unset keeps everything.
    #[serde(default)]
    pub retention: Option<ConfigDuration>,
    /// TimescaleDB only: compress chunks older than this.
    #[serde(default = "default_compress_after")]
    pub compress_after: ConfigDuration,
    /// TimescaleDB only: an hourly continuous aggregate over window results.
    #[serde(default = "default_true")]
    pub hourly_aggregate: bool,
}

fn default_url() -> String {
    "postgres://postgres@127.0.0.1:5432/postgres".to_string()
}
fn default_schema() -> String {
    "public".to_string()
}
fn default_batch_size() -> usize {
    50_000
}
fn default_flush_interval() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_pool_size() -> usize {
    4
}
fn default_retry_initial() -> ConfigDuration {
    ConfigDuration::from_millis(200)
}
fn default_retry_max() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_compress_after() -> ConfigDuration {
    ConfigDuration::from_secs(7 * 24 * 3600)
}
fn default_true() -> bool {
    true
}
