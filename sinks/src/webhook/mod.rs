//! `webhook` and `slack`: deliver alert state changes (rows of the `alert` schema, from an
//! `alert` operator) to an HTTP receiver. Each notification is one POST with an
//! `Idempotency-Key` (the notification id, stable across retries and replays) and, when a
//! `secret` is set, an HMAC-SHA256 signature of the body. Notifications go through the
//! durable queue of [`crate::notify`] and are delivered in order; 5xx answers, 408/429,
//! timeouts and connection errors are retried with exponential backoff and jitter, other 4xx
//! answers are given up on (logged and counted). A receiver that is down for
//! minutes, or a pipeline restart, loses nothing.

pub mod payload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use engine::component::Sink;
use engine::config::ConfigError;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::alert::{alert_schema, AlertNotification};
use engine::time::ConfigDuration;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;

use crate::notify::queue::Entry;
use crate::notify::{NotifySink, Outcome, QueueSettings, Transport};
pub use payload::{signature, verify, Format};

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
    #[serde(default = "crate::notify::default_queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "crate::notify::default_retry_initial")]
    pub retry_initial: ConfigDuration,
    #[serde(default = "crate::notify::default_retry_max")]
    pub retry_max: ConfigDuration,
    /// Also send `pending` changes and the `resolved` of alerts that never fired.
    #[serde(default)]
    pub send_pending: bool,
    /// Alertmanager's `externalURL` / `generatorURL` (e.g. the dashboard's address).
    #[serde(default)]
    pub external_url: String,
    /// On shutdown, how long to keep delivering before leaving the rest queued on disk.
    #[serde(default = "crate::notify::default_drain_timeout")]
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

/// Delivers notifications as HTTP POSTs.
pub struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    secret: Option<Vec<u8>>,
    signature_header: HeaderName,
    idempotency_header: HeaderName,
    format: Format,
    receiver: String,
    external_url: String,
}

#[async_trait]
impl Transport for HttpTransport {
    fn render(&self, notification: &AlertNotification) -> String {
        payload::body(
            self.format,
            notification,
            &self.receiver,
            &self.external_url,
        )
    }

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

/// The `webhook` / `slack` sink.
pub type WebhookSink = NotifySink<HttpTransport>;

impl NotifySink<HttpTransport> {
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
        let transport = HttpTransport {
            client,
            url,
            headers,
            secret: config.secret.clone().map(String::into_bytes),
            signature_header,
            idempotency_header,
            format: config.format.unwrap_or(default_format),
            receiver: id.to_string(),
            external_url: config.external_url.clone(),
        };
        let settings = QueueSettings {
            dir: queue_dir,
            capacity: config.queue_capacity,
            retry_initial: config.retry_initial.0,
            retry_max: config.retry_max.0,
            send_pending: config.send_pending,
            drain_timeout: config.drain_timeout.0,
        };
        Ok(Self::with_transport(transport, settings, id, metrics))
    }
}
