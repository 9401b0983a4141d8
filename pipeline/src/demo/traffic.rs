//! The demo's traffic: real HTTP calls at a steady rate through the intercepting proxy to the
//! simulated model API — streaming and non-streaming chat completions and KServe v2
//! inference. The proxy measures them; this side only sends, reads each response to its end,
//! and counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::incidents::DemoIncident;
use super::model_api::{CHAT_MODELS, VISION_MODEL};
use sources::generator::IncidentKind;

/// Calls in flight at most; beyond it a tick's call is skipped and counted.
const MAX_IN_FLIGHT: u32 = 512;

pub struct TrafficConfig {
    /// Calls per second.
    pub rate: f64,
    /// Where calls go: the proxy, e.g. `http://127.0.0.1:9090`.
    pub base_url: String,
    pub incidents: Vec<DemoIncident>,
    pub started: Instant,
}

#[derive(Default)]
pub struct TrafficStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
}

enum Call {
    Chat { model: &'static str, stream: bool },
    Infer,
}

impl Call {
    fn pick(rng: &mut impl Rng) -> (Call, &'static str) {
        if rng.random::<f64>() < 0.8 {
            let model = CHAT_MODELS[rng.random_range(0..CHAT_MODELS.len())];
            (
                Call::Chat {
                    model,
                    stream: rng.random_bool(0.6),
                },
                model,
            )
        } else {
            (Call::Infer, VISION_MODEL)
        }
    }
}

async fn one_call(
    client: &reqwest::Client,
    base_url: &str,
    call: Call,
) -> Result<(), reqwest::Error> {
    let (url, body) = match call {
        Call::Chat { model, stream } => (
            format!("{base_url}/v1/chat/completions"),
            json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Summarise the monitoring pipeline in one line."}]}),
        ),
        Call::Infer => (
            format!("{base_url}/v2/models/{VISION_MODEL}/infer"),
            json!({"inputs": [{"name": "input0", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}),
        ),
    };
    let mut response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    while response.chunk().await?.is_some() {}
    Ok(())
}

/// Sends calls until `stop` is cancelled, then waits (bounded) for calls in flight.
pub async fn drive(config: TrafficConfig, stats: Arc<TrafficStats>, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; the demo sends no traffic");
            return;
        }
    };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let base_url: Arc<str> = Arc::from(config.base_url.as_str());
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let (call, model) = Call::pick(&mut rand::rng());
        let elapsed = config.started.elapsed();
        let quiet = config
            .incidents
            .iter()
            .any(|i| i.kind == IncidentKind::TrafficDrop && i.is_active(elapsed, model));
        if quiet && rand::rng().random::<f64>() > 0.1 {
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let client = client.clone();
        let stats = stats.clone();
        let base_url = base_url.clone();
        stats.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if one_call(&client, &base_url, call).await.is_err() {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        in_flight.acquire_many(MAX_IN_FLIGHT),
    )
    .await;
}
