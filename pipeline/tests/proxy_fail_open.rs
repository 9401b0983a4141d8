//! Fail-open: when everything downstream of the proxy is gone (here a sink fails on its first
//! write), the pipeline reports the failure but the proxy keeps forwarding calls to the model
//! API, dropping and counting their events, until it is asked to shut down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use engine::component::{ComponentError, ComponentResult, Sink};
use engine::runtime::build_from_text;
use pipeline::demo::model_api::{router, ModelApiConfig};
use sources::generator::LatencyDistribution;
use tokio_util::sync::CancellationToken;

struct Explode;

#[async_trait]
impl Sink for Explode {
    async fn write(&mut self, _batch: arrow::record_batch::RecordBatch) -> ComponentResult {
        Err(ComponentError::other("the disk caught fire"))
    }

    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_serving_when_everything_downstream_has_failed() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = upstream.local_addr().unwrap();
    let api = router(Arc::new(ModelApiConfig {
        latency: LatencyDistribution::Constant { ms: 1.0 },
        error_rate: 0.0,
        incidents: Vec::new(),
        started: Instant::now(),
    }));
    tokio::spawn(async move { axum::serve(upstream, api).await });

    let (port, admin) = (free_port(), free_port());
    let text = format!(
        "[sources.calls]\ntype = \"proxy\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nupstream = \"http://{upstream_address}\"\nlinger = \"10ms\"\n\n[sinks.store]\ntype = \"explode\"\ninputs = [\"calls\"]\n"
    );
    let mut registry = pipeline::components::registry();
    registry.add_sink("explode", |_ctx| Ok(Box::new(Explode)));
    let built = build_from_text("edge.toml", &text, |_| None, &registry).unwrap();
    let metrics = built.metrics();
    let shutdown = CancellationToken::new();
    let (_, run) = built.start(shutdown.clone());
    let run = tokio::spawn(run);

    let client = reqwest::Client::new();
    let call = |client: reqwest::Client| async move {
        client
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(r#"{"model": "gpt-4o"}"#)
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    let mut first = Err(None);
    for _ in 0..100 {
        match call(client.clone()).await {
            Ok(status) => {
                first = Ok(status);
                break;
            }
            Err(error) => first = Err(Some(error)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.ok(), Some(200));
    // The first event reaches the sink, which fails; the pipeline is now broken downstream.
    let store = metrics.get("store").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.errors.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the sink never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!run.is_finished(), "the proxy keeps the pipeline serving");
    for _ in 0..30 {
        assert_eq!(
            call(client.clone()).await.unwrap(),
            200,
            "calls still go through"
        );
    }
    let proxy = metrics.get("calls").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.dropped.load(Ordering::Relaxed) < 30 {
        assert!(
            Instant::now() < deadline,
            "dropped events are counted: {}",
            proxy.dropped.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let error = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(error.component, "store");
    assert!(
        error.to_string().contains("the disk caught fire"),
        "{error}"
    );
}
