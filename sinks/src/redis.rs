//! `redis`: live state for API servers that run apart from the pipeline. For every window
//! result row it keeps, in one pipelined round trip per batch:
//!
//! - `{prefix}:latest:{window}:{key}` — a hash with the row's fields (the latest window of that
//!   key), expiring after `ttl`;
//! - `{prefix}:series:{window}:{key}` — a sorted set of the recent rows as JSON, scored by
//!   `window_start` in milliseconds, trimmed to the newest `series_length`, expiring after `ttl`;
//! - `{prefix}:keys:{window}` — a set of the keys seen, expiring after `ttl`;
//! - a PUBLISH of each row as JSON on `{prefix}:windows` for live consumers.
//!
//! Given alert rows (from an `alert` operator) instead, it keeps:
//!
//! - `{prefix}:alerts:active` — a hash from `alert_id` to the alert's latest change as JSON,
//!   holding exactly the alerts pending or firing (a `resolved` change removes its entry);
//! - `{prefix}:alerts:recent` — a list of the newest `series_length` changes, newest first;
//! - a PUBLISH of every change as JSON on `{prefix}:alerts`.
//!
//! `{key}` is the row's key columns joined with `|` (an absent value is empty). A later revision
//! of a window replaces the earlier one in the series (same score, removed before adding).
//! The connection manager reconnects by itself; a failed batch is retried with backoff.

use std::time::Duration;

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentError, ComponentResult, Sink};
use engine::config::ConfigError;
use engine::registry::BuildContext;
use engine::schema::alert::{alert_schema, batch_to_notifications, AlertState};
use engine::schema::row_json::{cell, key_text, row_object, window_key_columns};
use engine::schema::window_metrics::{WINDOW, WINDOW_END, WINDOW_START};
use engine::time::ConfigDuration;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::Value;

use crate::webhook::payload::Format;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default = "default_url")]
    pub url: String,
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_ttl")]
    pub ttl: ConfigDuration,
    #[serde(default = "default_series_length")]
    pub series_length: usize,
    /// Publish every row on `{prefix}:windows`.
    #[serde(default = "default_publish")]
    pub publish: bool,
}

fn default_url() -> String {
    "redis://127.0.0.1:6379".to_string()
}
fn default_prefix() -> String {
    "pipeline".to_string()
}
fn default_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}
fn default_series_length() -> usize {
    360
}
fn default_publish() -> bool {
    true
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    let config: RedisConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    let alerts = schema.fields() == alert_schema().fields();
    for field in [WINDOW, WINDOW_START, WINDOW_END] {
        if !alerts && schema.index_of(field).is_err() {
            return Err(ctx.spec.error_at_input(
                0,
                format!("the redis sink keeps window results or alerts; the input has no `{field}` (connect it to a window, anomaly or alert operator)"),
            ));
        }
    }
    if config.series_length == 0 {
        return Err(ctx
            .spec
            .error_at_key("series_length", "`series_length` must be at least 1"));
    }
    redis::Client::open(config.url.as_str()).map_err(|e| {
        ctx.spec
            .error_at_key("url", format!("invalid Redis URL: {e}"))
    })?;
    Ok(Box::new(RedisSink {
        metrics: ctx.metrics.clone(),
        keys: window_key_columns(&schema),
        alerts,
        config,
        connection: None,
        retries: ctx.metrics.named("retries"),
        buffered_rows: ctx.metrics.gauge("buffered_rows"),
    }))
}

pub struct RedisSink {
    config: RedisConfig,
    metrics: std::sync::Arc<engine::metrics::ComponentMetrics>,
    keys: Vec<usize>,
    /// The input is alert rows, not window results.
    alerts: bool,
    connection: Option<ConnectionManager>,
    retries: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Rows of the batch held while Redis is down (with the input queue, the backlog).
    buffered_rows: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RedisSink {
    async fn connection(&mut self) -> ComponentResult<ConnectionManager> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let client = redis::Client::open(self.config.url.as_str())
            .map_err(|e| ComponentError::other(format!("redis: {e}")))?;
        let connection = ConnectionManager::new(client).await.map_err(|e| {
            ComponentError::other(format!(
                "cannot connect to Redis at {}: {e}",
                self.config.url
            ))
        })?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// The pipelined commands for one batch of alert changes.
    fn alert_commands(&self, batch: &RecordBatch) -> ComponentResult<redis::Pipeline> {
        let prefix = &self.config.key_prefix;
        let active = format!("{prefix}:alerts:active");
        let recent = format!("{prefix}:alerts:recent");
        let mut pipe = redis::pipe();
        for notification in batch_to_notifications(batch)? {
            let json = crate::webhook::payload::body(Format::Json, &notification, "", "");
            if notification.state == AlertState::Resolved {
                pipe.hdel(&active, &notification.alert_id).ignore();
            } else {
                pipe.hset(&active, &notification.alert_id, &json).ignore();
            }
            pipe.lpush(&recent, &json).ignore();
            pipe.ltrim(&recent, 0, self.config.series_length as isize - 1)
                .ignore();
            if self.config.publish {
                pipe.publish(format!("{prefix}:alerts"), &json).ignore();
            }
        }
        Ok(pipe)
    }

    /// The pipelined commands for one batch.
    pub fn commands(&self, batch: &RecordBatch) -> ComponentResult<redis::Pipeline> {
        if self.alerts {
            return self.alert_commands(batch);
        }
        let window = batch
            .column_by_name(WINDOW)
            .ok_or_else(|| ComponentError::other("no window column"))?;
        let start = batch
            .column_by_name(WINDOW_START)
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>())
            .ok_or_else(|| ComponentError::other("no window_start column"))?;
        let prefix = &self.config.key_prefix;
        let ttl = self.config.ttl.0.as_secs().max(1) as i64;
        let keep = self.config.series_length as isize;
        let mut pipe = redis::pipe();
        for row in 0..batch.num_rows() {
            let object = row_object(batch, row);
            let key = key_text(batch, &self.keys, row);
            let window_name = match cell(window.as_ref(), row) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let latest = format!("{prefix}:latest:{window_name}:{key}");
            let series = format!("{prefix}:series:{window_name}:{key}");
            let index = format!("{prefix}:keys:{window_name}");
            let fields: Vec<(String, String)> = object
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    )
                })
                .collect();
            let json = Value::Object(object).to_string();
            let score = start.value(row) / 1000;
            pipe.del(&latest).ignore();
            pipe.hset_multiple(&latest, &fields).ignore();
            pipe.expire(&latest, ttl).ignore();
            pipe.zrembyscore(&series, score, score).ignore();
            pipe.zadd(&series, &json, score).ignore();
            pipe.zremrangebyrank(&series, 0, -(keep + 1)).ignore();
            pipe.expire(&series, ttl).ignore();
            pipe.sadd(&index, &key).ignore();
            pipe.expire(&index, ttl).ignore();
            if self.config.publish {
                pipe.publish(format!("{prefix}:windows"), &json).ignore();
            }
        }
        Ok(pipe)
    }
}

#[async_trait]
impl Sink for RedisSink {
    /// Writes the batch's commands, retrying with backoff (up to 10 s apart) for as long as
    /// Redis is down: the batch is held meanwhile, pushing back on the pipeline, and nothing
    /// is lost; `pipeline status` shows the sink disconnected.
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        let pipe = self.commands(&batch)?;
        let mut backoff =
            engine::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let result = match self.connection().await {
                Ok(mut connection) => pipe
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match result {
                Ok(()) => {
                    self.metrics.set_connected(true);
                    self.buffered_rows
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Err(error) => {
                    self.metrics.set_connected(false);
                    self.buffered_rows.store(
                        batch.num_rows() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    self.retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(url = %self.config.url, %error, retry_in = ?delay, "writing to Redis failed; the batch is held and retried");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }
}
