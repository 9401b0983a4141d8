//! The proxy source started in-process for a test (its events collected from its output),
//! and the clients the proxy tests call it with.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use engine::component::{Source, SourceContext};
use engine::message::Message;
use engine::metrics::ComponentMetrics;
use engine::runtime::output::Output;
use engine::schema::api_call::{batch_to_api_calls, ApiCall};
use sources::proxy::{ProxyConfig, ProxySource};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

tokio::task_local! {
    /// The HTTP/1.1 forwarding path (`"direct"` or `"hyper"`) the proxies a test starts use,
    /// unless the test's own settings name one: set by [`on_both_paths`].
    pub static FORWARDING: &'static str;
}

/// Runs each test once per HTTP/1.1 forwarding path, as `<name>::direct` and `<name>::hyper`.
#[macro_export]
macro_rules! on_both_paths {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn direct() {
                $crate::proxy_harness::FORWARDING.scope("direct", async $body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hyper() {
                $crate::proxy_harness::FORWARDING.scope("hyper", async $body).await
            }
        }
    )*};
}

pub struct Proxy {
    pub url: String,
    pub admin: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<engine::component::ComponentResult>,
    pub events: mpsc::Receiver<Message>,
    pub metrics: Arc<ComponentMetrics>,
    /// Calls already taken from `events` by [`Proxy::wait_for_calls`].
    pub recorded: Vec<ApiCall>,
}

impl Proxy {
    pub async fn start(upstream: &str, extra: &str, channel_capacity: usize) -> Proxy {
        let (port, admin_port) = (free_port(), free_port());
        let forwarding = match FORWARDING.try_with(|path| *path) {
            Ok(path) if !extra.contains("http1_forwarding") => {
                format!("http1_forwarding = \"{path}\"\n")
            }
            _ => String::new(),
        };
        let config: ProxyConfig = toml::from_str(&format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nupstream = \"{upstream}\"\nlinger = \"20ms\"\n{forwarding}{extra}"
        ))
        .unwrap();
        let metrics = ComponentMetrics::new();
        let mut output = Output::detached(1, metrics.clone());
        let events = output.connect(0, channel_capacity, ComponentMetrics::new());
        let shutdown = CancellationToken::new();
        let (_barrier_tx, barriers) = mpsc::channel(1);
        let context = SourceContext {
            id: "proxy".into(),
            output,
            barriers,
            completed_checkpoints: watch::channel(0).1,
            checkpoint_requests: engine::component::CheckpointRequester::detached(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            restored_state: None,
            state: engine::component::StateReporter::detached(),
        };
        let task = tokio::spawn(Box::new(ProxySource::new(config)).run(context));
        let admin = format!("http://127.0.0.1:{admin_port}");
        for _ in 0..100 {
            if reqwest::get(format!("{admin}/health"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            admin,
            shutdown,
            task,
            events,
            metrics,
            recorded: Vec::new(),
        }
    }

    /// Waits until the proxy has recorded at least `count` calls (at most 10 s, then panics
    /// naming how many arrived); [`Proxy::stop`] returns them with the rest.
    pub async fn wait_for_calls(&mut self, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.recorded.len() < count {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Message::Data(batch))) => {
                    self.recorded.extend(batch_to_api_calls(&batch).unwrap());
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => panic!(
                    "{} of {count} calls were recorded within 10 s: {:#?}",
                    self.recorded.len(),
                    self.recorded
                ),
            }
        }
    }

    pub async fn stop(mut self) -> Vec<ApiCall> {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        let mut calls = std::mem::take(&mut self.recorded);
        while let Ok(message) = self.events.try_recv() {
            if let Message::Data(batch) = message {
                calls.extend(batch_to_api_calls(&batch).unwrap());
            }
        }
        calls
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POSTs `body` to the proxy's `/v1/chat/completions`.
pub async fn post_chat(
    client: &reqwest::Client,
    proxy_url: &str,
    body: &'static str,
) -> reqwest::Response {
    client
        .post(format!("{proxy_url}/v1/chat/completions"))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A client that keeps a single connection to the proxy.
pub fn one_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

/// Sends `request` on a new connection and reads until the proxy closes it (at most 5 s).
pub async fn raw_exchange(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}
