//! The webhook sink against a real local HTTP receiver: retries until a failing receiver
//! recovers, with a valid signature and a stable idempotency key and exactly one delivery per
//! state change; no retry on 4xx; notifications queued while the receiver is down survive a
//! pipeline restart and arrive in order; the Alertmanager format.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{notification, wait_for};
use engine::component::Sink;
use engine::metrics::ComponentMetrics;
use engine::schema::alert::{notifications_to_batch, AlertState};
use sinks::webhook::{verify, Format, WebhookConfig, WebhookSink};

const SECRET: &str = "s3cret";

#[derive(Debug, Clone)]
struct Request {
    idempotency_key: String,
    signature: String,
    body: String,
    status: u16,
}

#[derive(Default)]
struct Receiver {
    requests: Mutex<Vec<Request>>,
    /// Answer 503 to this many requests first.
    failures_left: AtomicUsize,
    /// Answer 400 to bodies containing this.
    reject: Option<String>,
}

impl Receiver {
    fn delivered(&self) -> Vec<Request> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.status == 200)
            .cloned()
            .collect()
    }
    fn attempts(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let text = String::from_utf8_lossy(&body).to_string();
    let status = if receiver.reject.as_deref().is_some_and(|r| text.contains(r)) {
        StatusCode::BAD_REQUEST
    } else if receiver
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    receiver.requests.lock().expect("lock").push(Request {
        idempotency_key: header("idempotency-key"),
        signature: header("x-pipeline-signature"),
        body: text,
        status: status.as_u16(),
    });
    status
}

async fn serve(receiver: Arc<Receiver>, address: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    let local = listener.local_addr().expect("address");
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    local
}

fn sink(
    url: &str,
    queue_dir: &std::path::Path,
    extra: &str,
) -> (WebhookSink, Arc<ComponentMetrics>) {
    let settings = format!(
        "url = \"{url}\"\nsecret = \"{SECRET}\"\nqueue_dir = \"{}\"\nretry_initial = \"20ms\"\nretry_max = \"100ms\"\ntimeout = \"2s\"\n{extra}",
        queue_dir.display()
    );
    let config: WebhookConfig = toml::from_str(&settings).expect("settings");
    let metrics = ComponentMetrics::new();
    let sink =
        WebhookSink::new(config, Format::Json, "oncall", metrics.clone()).expect("valid settings");
    (sink, metrics)
}

fn body_field(request: &Request, field: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(&request.body).expect("JSON body");
    value[field].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_failing_receiver_gets_each_change_once_signed_and_in_order() {
    let receiver = Arc::new(Receiver {
        failures_left: AtomicUsize::new(3),
        ..Receiver::default()
    });
    let address = serve(receiver.clone(), "127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sink, metrics) = sink(&format!("http://{address}/hook"), dir.path(), "");
    let changes = vec![
        notification("a", AlertState::Pending, 0),
        notification("a", AlertState::Firing, 1),
        notification("b", AlertState::Firing, 1),
        notification("a", AlertState::Resolved, 5),
    ];
    sink.write(notifications_to_batch(&changes))
        .await
        .expect("queued");
    wait_for("three deliveries", || receiver.delivered().len() == 3).await;
    sink.close().await.expect("closes");

    let delivered = receiver.delivered();
    let order: Vec<(String, String)> = delivered
        .iter()
        .map(|r| (body_field(r, "alert_id"), body_field(r, "state")))
        .collect();
    assert_eq!(
        order,
        vec![
            ("alert-a".into(), "firing".into()),
            ("alert-b".into(), "firing".into()),
            ("alert-a".into(), "resolved".into())
        ],
        "pending is not sent; the rest in order"
    );
    let attempts = receiver.attempts();
    assert_eq!(
        attempts.len(),
        6,
        "three 503s, then one success per change: {attempts:?}"
    );
    // The first change was tried four times, always with the same key.
    assert!(
        attempts[..4]
            .iter()
            .all(|r| r.idempotency_key == "a-firing-1"),
        "{attempts:?}"
    );
    for request in &attempts {
        assert!(
            verify(
                SECRET.as_bytes(),
                request.body.as_bytes(),
                &request.signature
            ),
            "bad signature on {request:?}"
        );
        assert_eq!(
            request.idempotency_key,
            body_field(request, "notification_id")
        );
    }
    let ids: std::collections::HashSet<_> = delivered
        .iter()
        .map(|r| r.idempotency_key.clone())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(metrics.named("retries").load(Ordering::Relaxed), 3);
    assert_eq!(metrics.snapshot().events_out, 3);
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let receiver = Arc::new(Receiver {
        reject: Some("alert-bad".into()),
        ..Receiver::default()
    });
    let address = serve(receiver.clone(), "127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sink, metrics) = sink(&format!("http://{address}/hook"), dir.path(), "");
    let changes = vec![
        notification("bad", AlertState::Firing, 1),
        notification("good", AlertState::Firing, 1),
    ];
    sink.write(notifications_to_batch(&changes))
        .await
        .expect("queued");
    wait_for("the good delivery", || receiver.delivered().len() == 1).await;
    sink.close().await.expect("closes");
    let attempts = receiver.attempts();
    assert_eq!(
        attempts.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![400, 200]
    );
    assert_eq!(metrics.named("rejected").load(Ordering::Relaxed), 1);
    assert_eq!(metrics.named("retries").load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn notifications_wait_on_disk_for_a_receiver_that_is_down_across_a_restart() {
    // A port with nothing listening: connections are refused.
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address")
    };
    let url = format!("http://{address}/hook");
    let dir = tempfile::tempdir().expect("tempdir");
    let changes: Vec<_> = (0..5)
        .map(|i| notification(&format!("m{i}"), AlertState::Firing, i))
        .collect();
    {
        let (mut sink, metrics) = sink(&url, dir.path(), "drain_timeout = \"300ms\"");
        sink.write(notifications_to_batch(&changes))
            .await
            .expect("queued");
        wait_for("a retry", || {
            metrics.named("retries").load(Ordering::Relaxed) >= 2
        })
        .await;
        sink.close()
            .await
            .expect("closes with notifications left queued");
        assert_eq!(metrics.snapshot().events_out, 0);
    }
    // The receiver comes back; the pipeline restarts with the same queue.
    let receiver = Arc::new(Receiver::default());
    serve(receiver.clone(), &address.to_string()).await;
    let (mut sink, _) = sink(&url, dir.path(), "");
    sink.on_tick().await.expect("starts delivering");
    wait_for("five deliveries", || receiver.delivered().len() == 5).await;
    sink.close().await.expect("closes");
    let keys: Vec<String> = receiver
        .delivered()
        .iter()
        .map(|r| r.idempotency_key.clone())
        .collect();
    let expected: Vec<String> = changes.iter().map(|n| n.notification_id.clone()).collect();
    assert_eq!(keys, expected, "every notification once, in order");
    assert_eq!(receiver.attempts().len(), 5);
}

#[tokio::test]
async fn alertmanager_receivers_get_a_version_4_payload() {
    let receiver = Arc::new(Receiver::default());
    let address = serve(receiver.clone(), "127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sink, _) = sink(
        &format!("http://{address}/hook"),
        dir.path(),
        "format = \"alertmanager\"",
    );
    sink.write(notifications_to_batch(&[notification(
        "a",
        AlertState::Firing,
        1,
    )]))
    .await
    .expect("queued");
    wait_for("a delivery", || receiver.delivered().len() == 1).await;
    sink.close().await.expect("closes");
    let body: serde_json::Value =
        serde_json::from_str(&receiver.delivered()[0].body).expect("JSON");
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "oncall");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["labels"]["model"], "a");
    assert_eq!(body["alerts"][0]["fingerprint"], "alert-a");
}
