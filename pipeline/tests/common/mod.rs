//! Helpers shared by the broker tests: the real RabbitMQ (skipped with a message outside CI
//! when it is absent), unique names, a sink that collects request ids, and polling.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentResult, Sink};
use engine::registry::Registry;
use engine::schema::api_call::{ApiCall, REQUEST_ID};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const T0: i64 = 1_777_629_600_000_000; // 2026-05-01T10:00:00Z

/// A channel on the real broker, or `None` (test skipped) outside CI when it is down.
pub async fn broker_or_skip() -> Option<(Connection, Channel)> {
    match Connection::connect(AMQP, ConnectionProperties::default()).await {
        Ok(connection) => {
            let channel = connection.create_channel().await.expect("channel");
            Some((connection, channel))
        }
        Err(error) => {
            engine::testing::missing(
                &format!("RabbitMQ at {AMQP}"),
                format!("{error}; start it with `rabbitmq-server -detached`"),
            );
            None
        }
    }
}

pub fn unique(name: &str) -> String {
    format!("test-{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Messages ready in `queue` (not counting unacknowledged ones).
pub async fn ready_messages(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists")
        .message_count()
}

/// Messages in `queue` not yet settled: ready plus delivered and unacknowledged (from
/// `rabbitmqctl`, since AMQP itself reports only the ready ones).
pub fn unsettled_messages(queue: &str) -> u64 {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(queue)).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("rabbitmqctl does not list {queue}"))
}

/// Declares a durable queue, as the source does.
pub async fn declare_queue(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue declared");
}

pub async fn delete_queues(channel: &Channel, queues: &[&str]) {
    for queue in queues {
        let _ = channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await;
    }
}

pub async fn delete_exchanges(channel: &Channel, exchanges: &[&str]) {
    for exchange in exchanges {
        let _ = channel
            .exchange_delete((*exchange).into(), ExchangeDeleteOptions::default())
            .await;
    }
}

pub fn call(i: usize, model: &str, endpoint: &str) -> ApiCall {
    ApiCall {
        event_time: T0 + i as i64 * 1_000,
        request_id: format!("req-{i}"),
        model: Some(model.into()),
        endpoint: Some(endpoint.into()),
        method: Some("POST".into()),
        status_code: Some(200),
        latency_ms: 10.0 + (i % 100) as f64,
        ..Default::default()
    }
}

/// Request ids (with their model and endpoint) seen by `collect` sinks.
#[derive(Clone, Default)]
pub struct Collected(pub Arc<Mutex<Vec<String>>>);

impl Collected {
    pub fn ids(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn distinct(&self) -> usize {
        let mut ids = self.ids();
        ids.sort();
        ids.dedup();
        ids.len()
    }
}

struct CollectSink(Collected);

#[async_trait]
impl Sink for CollectSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        let index = batch.schema().index_of(REQUEST_ID)?;
        let ids = batch.column(index).as_string::<i32>();
        let mut collected = self.0 .0.lock().unwrap();
        collected.extend(ids.iter().map(|id| id.unwrap_or_default().to_string()));
        Ok(())
    }

    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }
}

/// Every built-in component, plus a `collect` sink type writing into `collected`.
pub fn registry_collecting(collected: &Collected) -> Registry {
    let mut registry = pipeline::components::registry();
    let collected = collected.clone();
    registry.add_sink("collect", move |_ctx| {
        Ok(Box::new(CollectSink(collected.clone())))
    });
    registry
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs to `path` on `address` only the head of a request announcing a `length`-byte JSON
/// body, with `Expect: 100-continue`, and returns the status and body of the answer — the
/// server must answer before reading any of the body, as it should for one it refuses (an
/// interim `100 Continue` would leave this waiting, and fail).
pub async fn post_head_only(
    address: &str,
    path: &str,
    length: usize,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("head sent");
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut buffer))
            .await
            .expect("answered before the body was sent")
            .expect("reads");
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let expected = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= expected || read == 0 {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return (status, body.to_string());
            }
        }
        assert!(
            read > 0,
            "the connection closed without an answer: {text:?}"
        );
    }
}
