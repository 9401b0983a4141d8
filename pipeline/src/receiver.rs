//! `pipeline receive-webhook`, and the receiver `pipeline demo` starts: an HTTP endpoint that
//! takes the webhook sink's notifications (any format), checks their HMAC-SHA256 signature,
//! notices a repeated idempotency key, and prints one line per notification.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct ReceiverOptions {
    /// Address to listen on; every path accepts POST.
    #[arg(long, default_value = "127.0.0.1:9095")]
    pub listen: SocketAddr,
    /// The sink's `secret`: requests without a valid signature are answered 401.
    #[arg(long, env = "ALERT_WEBHOOK_SECRET")]
    pub secret: Option<String>,
    /// The header carrying the signature.
    #[arg(long, default_value = "x-pipeline-signature")]
    pub signature_header: String,
}

/// What the receiver has seen.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub accepted: AtomicU64,
    pub bad_signature: AtomicU64,
    pub duplicates: AtomicU64,
    seen: Mutex<HashSet<String>>,
}

struct Receiver {
    secret: Option<Vec<u8>>,
    signature_header: String,
    stats: Arc<ReceiverStats>,
}

/// One line for a notification in this project's JSON, Alertmanager or Slack format.
fn describe(body: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if let Some(alert) = body["alerts"].get(0) {
        let labels = label_text(&alert["labels"]);
        return format!("{} {labels}", text(&body["status"]));
    }
    if body.get("state").is_some() {
        let value = body["value"]
            .as_f64()
            .map(|v| format!(" value={v}"))
            .unwrap_or_default();
        let summary = body["annotations"]["summary"]
            .as_str()
            .map(|s| format!(" — {s}"))
            .unwrap_or_default();
        return format!(
            "{} {} ({}) {}{value}{summary}",
            text(&body["state"]),
            text(&body["rule"]),
            text(&body["severity"]),
            label_text(&body["labels"])
        );
    }
    text(&body["text"])
}

fn label_text(labels: &Value) -> String {
    labels
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let stats = &receiver.stats;
    let verdict = match &receiver.secret {
        None => "unsigned",
        Some(secret)
            if sinks::webhook::verify(secret, &body, &header(&receiver.signature_header)) =>
        {
            "signature ok"
        }
        Some(_) => {
            stats.bad_signature.fetch_add(1, Ordering::Relaxed);
            eprintln!("[webhook] refused a request with a missing or invalid signature");
            return StatusCode::UNAUTHORIZED;
        }
    };
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        eprintln!("[webhook] refused a body that is not JSON");
        return StatusCode::BAD_REQUEST;
    };
    let key = header("idempotency-key");
    let repeated = !key.is_empty()
        && !stats
            .seen
            .lock()
            .map(|mut seen| seen.insert(key.clone()))
            .unwrap_or(true);
    if repeated {
        stats.duplicates.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
    }
    println!(
        "[webhook] {} ({verdict}{})",
        describe(&json),
        if repeated {
            ", a repeat of an earlier delivery"
        } else {
            ""
        }
    );
    StatusCode::OK
}

/// Serves on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    secret: Option<Vec<u8>>,
    signature_header: String,
    stats: Arc<ReceiverStats>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let receiver = Arc::new(Receiver {
        secret,
        signature_header,
        stats,
    });
    let app = Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(receiver);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("webhook receiver")
}

/// `pipeline receive-webhook`: prints what arrives until SIGINT/SIGTERM.
pub async fn run(options: ReceiverOptions) -> anyhow::Result<std::process::ExitCode> {
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    eprintln!(
        "receiving webhooks on http://{}/ ({})",
        options.listen,
        if options.secret.is_some() {
            "signatures checked"
        } else {
            "no secret: signatures not checked"
        }
    );
    let stats = Arc::new(ReceiverStats::default());
    serve(
        listener,
        options.secret.map(String::into_bytes),
        options.signature_header,
        stats.clone(),
        crate::shutdown::on_signal(),
    )
    .await?;
    eprintln!(
        "received {} notifications, {} repeats, {} refused for their signature",
        stats.accepted.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
        stats.bad_signature.load(Ordering::Relaxed)
    );
    Ok(std::process::ExitCode::SUCCESS)
}
