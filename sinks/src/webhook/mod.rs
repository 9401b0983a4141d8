//! `webhook` and `slack`: deliver alert state changes (rows of the `alert` schema, from an
//! `alert` operator) to an HTTP receiver. Each notification is one POST with an
//! `Idempotency-Key` (the notification id, stable across retries and replays) and, when a
//! `secret` is set, an HMAC-SHA256 signature of the body. Notifications go through a durable
//! queue on disk first (see [`queue`]) and are delivered in order by a background task that
//! retries 5xx answers, 408/429, timeouts and connection errors with exponential backoff and
//! jitter, and gives up on other 4xx answers (logged and counted). A receiver that is down for
//! minutes, or a pipeline restart, loses nothing.

pub mod payload;
pub mod queue;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::backoff::Backoff;
use engine::component::{ComponentError, ComponentResult, Sink};
use engine::config::ConfigError;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::alert::{alert_schema, batch_to_notifications, AlertNotification};
use engine::time::ConfigDuration;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use payload::{signature, verify, Format};
use queue::{DurableQueue, Entry};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The receiver's URL.
    pub url: String,
    /// `json` (default for `webhook`), `alertmanager` (webhook payload version 4) or `slack`
    /// (default for `slack`).
    pub format: Option<Format>,
    /// Shared secret for the HMAC-SHA256 signature header; no header when unset.
    pub secret: Option<String>,
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
    /// Extra request headers (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per request, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Where the durable queue lives; default `data/webhook/<sink id>`.
    pub queue_dir: Option<PathBuf>,
    /// Undelivered notifications kept; beyond it the oldest is dropped and counted.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "default_retry_initial")]
    pub retry_initial: ConfigDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: ConfigDuration,
    /// Also send `pending` changes and the `resolved` of alerts that never fired.
    #[serde(default)]
    pub send_pending: bool,
    /// Alertmanager's `externalURL` / `generatorURL` (e.g. the dashboard's address).
    #[serde(default)]
    pub external_url: String,
    /// On shutdown, how long to keep delivering before leaving the rest queued on disk.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
}

fn default_signature_header() -> String {
    "X-Pipeline-Signature".to_string()
}
fn default_idempotency_header() -> String {
    "Idempotency-Key".to_string()
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_queue_capacity() -> usize {
    10_000
}
fn default_retry_initial() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_retry_max() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    build_with_format(ctx, Format::Json)
}

pub fn build_slack(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    build_with_format(ctx, Format::Slack)
}

fn build_with_format(
    ctx: &BuildContext<'_, '_>,
    default_format: Format,
) -> Result<Box<dyn Sink>, ConfigError> {
    let config: WebhookConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    if schema.fields() != alert_schema().fields() {
        return Err(ctx.spec.error_at_input(
            0,
            "this sink delivers alerts: connect it to an `alert` operator",
        ));
    }
    let sink = WebhookSink::new(config, default_format, &ctx.spec.id, ctx.metrics.clone())
        .map_err(|(key, message)| ctx.spec.error_at_key(key, message))?;
    Ok(Box::new(sink))
}

/// What a delivery attempt came to.
enum Outcome {
    Delivered,
    /// The receiver refused it for good (4xx other than 408/429).
    Rejected(String),
    /// Worth trying again.
    Retry(String),
}

struct Delivery {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    secret: Option<Vec<u8>>,
    signature_header: HeaderName,
    idempotency_header: HeaderName,
}

impl Delivery {
    async fn attempt(&self, entry: &Entry) -> Outcome {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(&self.idempotency_header, entry.notification_id.as_str());
        if let Some(secret) = &self.secret {
            request = request.header(
                &self.signature_header,
                signature(secret, entry.body.as_bytes()),
            );
        }
        match request.body(entry.body.clone()).send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Outcome::Delivered
                } else if status.is_client_error()
                    && status.as_u16() != 408
                    && status.as_u16() != 429
                {
                    let text = response.text().await.unwrap_or_default();
                    Outcome::Rejected(format!(
                        "{status}: {}",
                        text.chars().take(200).collect::<String>()
                    ))
                } else {
                    Outcome::Retry(format!("the receiver answered {status}"))
                }
            }
            Err(e) if e.is_timeout() => Outcome::Retry("timed out".into()),
            Err(e) => Outcome::Retry(format!("{e}")),
        }
    }
}

struct Shared {
    queue: Mutex<Option<DurableQueue>>,
    wake: Notify,
    metrics: Arc<ComponentMetrics>,
}

pub struct WebhookSink {
    config: WebhookConfig,
    format: Format,
    receiver: String,
    queue_dir: PathBuf,
    delivery: Arc<Delivery>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    worker: Option<JoinHandle<()>>,
}

impl WebhookSink {
    /// Checks the settings; the error names the setting.
    pub fn new(
        config: WebhookConfig,
        default_format: Format,
        id: &str,
        metrics: Arc<ComponentMetrics>,
    ) -> Result<Self, (&'static str, String)> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| ("url", format!("invalid URL {:?}: {e}", config.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(("url", "the URL must be http:// or https://".into()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ("headers", format!("`{name}` is not a valid header name")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                (
                    "headers",
                    format!("the value of `{name}` is not a valid header value"),
                )
            })?;
            headers.insert(name, value);
        }
        let signature_header = HeaderName::from_bytes(config.signature_header.as_bytes())
            .map_err(|_| ("signature_header", "not a valid header name".to_string()))?;
        let idempotency_header = HeaderName::from_bytes(config.idempotency_header.as_bytes())
            .map_err(|_| ("idempotency_header", "not a valid header name".to_string()))?;
        if config.secret.as_deref() == Some("") {
            return Err((
                "secret",
                "an empty secret signs nothing; remove it or set one".into(),
            ));
        }
        if config.queue_capacity == 0 {
            return Err(("queue_capacity", "must be at least 1".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .connect_timeout(config.timeout.0)
            .user_agent(concat!("model-api-pipeline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ("url", format!("HTTP client: {e}")))?;
        let queue_dir = config
            .queue_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data").join("webhook").join(id));
        Ok(Self {
            format: config.format.unwrap_or(default_format),
            receiver: id.to_string(),
            queue_dir,
            delivery: Arc::new(Delivery {
                client,
                url,
                headers,
                secret: config.secret.clone().map(String::into_bytes),
                signature_header,
                idempotency_header,
            }),
            shared: Arc::new(Shared {
                queue: Mutex::new(None),
                wake: Notify::new(),
                metrics,
            }),
            stop: CancellationToken::new(),
            worker: None,
            config,
        })
    }

    /// Opens the queue and starts delivering (once, on first use, inside the runtime).
    fn start(&mut self) -> ComponentResult {
        if self.worker.is_some() {
            return Ok(());
        }
        let queue = DurableQueue::open(&self.queue_dir, self.config.queue_capacity)
            .map_err(ComponentError::other)?;
        if !queue.is_empty() {
            tracing::info!(receiver = %self.receiver, queued = queue.len(), "delivering notifications queued before a restart");
        }
        self.shared
            .metrics
            .queue_depth
            .store(queue.len() as i64, Ordering::Relaxed);
        *self.lock_queue()? = Some(queue);
        let backoff = Backoff::new(self.config.retry_initial.0, self.config.retry_max.0);
        self.worker = Some(tokio::spawn(deliver_forever(
            self.delivery.clone(),
            self.shared.clone(),
            self.stop.clone(),
            backoff,
            self.receiver.clone(),
        )));
        Ok(())
    }

    fn lock_queue(&self) -> ComponentResult<std::sync::MutexGuard<'_, Option<DurableQueue>>> {
        self.shared
            .queue
            .lock()
            .map_err(|_| ComponentError::other("the webhook queue lock was poisoned"))
    }

    fn wanted(&self, notification: &AlertNotification) -> bool {
        self.config.send_pending || notification.is_news()
    }

    /// Undelivered notifications.
    pub fn queued(&self) -> usize {
        self.lock_queue()
            .ok()
            .and_then(|q| q.as_ref().map(DurableQueue::len))
            .unwrap_or(0)
    }
}

async fn deliver_forever(
    delivery: Arc<Delivery>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut backoff: Backoff,
    receiver: String,
) {
    let retries = shared.metrics.named("retries");
    let rejected = shared.metrics.named("rejected");
    loop {
        let front = match shared.queue.lock() {
            Ok(queue) => queue.as_ref().and_then(|q| q.front().cloned()),
            Err(_) => return,
        };
        let Some(entry) = front else {
            tokio::select! {
                _ = shared.wake.notified() => continue,
                _ = stop.cancelled() => return,
            }
        };
        let outcome = tokio::select! {
            outcome = delivery.attempt(&entry) => outcome,
            _ = stop.cancelled() => return,
        };
        match outcome {
            Outcome::Delivered | Outcome::Rejected(_) => {
                if let Outcome::Rejected(reason) = &outcome {
                    tracing::error!(%receiver, notification_id = %entry.notification_id, %reason, "the receiver rejected a notification; not retrying");
                    rejected.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.add_errors(1);
                } else {
                    shared.metrics.record_out(1);
                }
                backoff.reset();
                let Ok(mut queue) = shared.queue.lock() else {
                    return;
                };
                if let Some(queue) = queue.as_mut() {
                    if let Err(e) = queue.pop() {
                        tracing::error!(%receiver, error = %e, "could not mark a notification delivered; it may be sent again after a restart");
                    }
                    shared
                        .metrics
                        .queue_depth
                        .store(queue.len() as i64, Ordering::Relaxed);
                }
            }
            Outcome::Retry(reason) => {
                retries.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.next_delay();
                tracing::warn!(%receiver, notification_id = %entry.notification_id, %reason, retry_in = ?wait, "webhook delivery failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        self.start()?;
        let notifications = batch_to_notifications(&batch)?;
        self.shared.metrics.record_in(notifications.len());
        let items: Vec<(String, String, String)> = notifications
            .iter()
            .filter(|n| self.wanted(n))
            .map(|n| {
                (
                    n.notification_id.clone(),
                    n.alert_id.clone(),
                    payload::body(self.format, n, &self.receiver, &self.config.external_url),
                )
            })
            .collect();
        if items.is_empty() {
            return Ok(());
        }
        let dropped = {
            let mut guard = self.lock_queue()?;
            let queue = guard
                .as_mut()
                .ok_or_else(|| ComponentError::other("the webhook queue is not open"))?;
            let dropped = queue.push(items).map_err(ComponentError::other)?;
            self.shared
                .metrics
                .queue_depth
                .store(queue.len() as i64, Ordering::Relaxed);
            dropped
        };
        for entry in &dropped {
            tracing::error!(receiver = %self.receiver, notification_id = %entry.notification_id, "webhook queue full: dropped the oldest undelivered notification");
        }
        self.shared.metrics.add_dropped(dropped.len() as u64);
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn on_tick(&mut self) -> ComponentResult {
        // Deliver what an earlier run left queued even before any new alert arrives.
        self.start()
    }

    /// Notifications are durable once `write` returns (fsynced to the queue).
    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }

    async fn close(&mut self) -> ComponentResult {
        if self.worker.is_none() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout.0;
        while self.queued() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.queued();
        if left > 0 {
            tracing::warn!(receiver = %self.receiver, queued = left, dir = %self.queue_dir.display(), "shutting down with undelivered notifications; they are kept on disk and sent after the next start");
        }
        self.stop.cancel();
        if let Some(worker) = self.worker.take() {
            let _ = worker.await;
        }
        Ok(())
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
