//! The demo's traffic: real HTTP calls to the simulated model API at a steady rate, each
//! measured as a client sees it (latency, time to first byte, time to first content token for
//! streams, tokens from the `usage` object) and handed to the pipeline as an api_call event.
//! Handing over never blocks: when the pipeline's queue is full the event is dropped and
//! counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::schema::api_call::{ApiCall, Outcome};
use engine::time::now_micros;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::incidents::DemoIncident;
use super::model_api::{CHAT_MODELS, VISION_MODEL};
use sources::generator::IncidentKind;

pub struct TrafficConfig {
    /// Calls per second.
    pub rate: f64,
    /// `http://127.0.0.1:8002`
    pub base_url: String,
    pub incidents: Vec<DemoIncident>,
    pub started: Instant,
}

#[derive(Default)]
pub struct TrafficStats {
    pub sent: AtomicU64,
    pub dropped_events: AtomicU64,
    pub skipped_calls: AtomicU64,
}

enum Call {
    Chat { model: &'static str, stream: bool },
    Infer,
}

/// Reads an SSE stream, noting the first content token and the final usage.
#[derive(Default)]
struct StreamWatch {
    buffer: String,
    first_token: Option<Duration>,
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    content_chunks: u32,
}

impl StreamWatch {
    fn feed(&mut self, bytes: &[u8], elapsed: Duration) {
        self.buffer.push_str(&String::from_utf8_lossy(bytes));
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            let content = value
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty());
            if content {
                self.content_chunks += 1;
                self.first_token.get_or_insert(elapsed);
            }
            if let Some(usage) = value.get("usage") {
                read_usage(usage, &mut self.input_tokens, &mut self.output_tokens);
            }
        }
    }
}

fn failure_outcome(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else {
        Outcome::UpstreamUnreachable
    }
}

fn read_usage(usage: &Value, input: &mut Option<u32>, output: &mut Option<u32>) {
    let number = |keys: [&str; 2]| {
        keys.iter()
            .find_map(|k| usage.get(*k).and_then(Value::as_u64))
            .map(|v| v as u32)
    };
    *input = number(["prompt_tokens", "input_tokens"]).or(*input);
    *output = number(["completion_tokens", "output_tokens"]).or(*output);
}

async fn one_call(client: &reqwest::Client, base_url: &str, call: Call) -> ApiCall {
    let (model, endpoint, url, body) = match &call {
        Call::Chat { model, stream } => (
            model.to_string(),
            "/v1/chat/completions".to_string(),
            format!("{base_url}/v1/chat/completions"),
            json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Summarise the monitoring pipeline in one line."}]}),
        ),
        Call::Infer => (
            VISION_MODEL.to_string(),
            "/v2/models/{model}/infer".to_string(),
            format!("{base_url}/v2/models/{VISION_MODEL}/infer"),
            json!({"inputs": [{"name": "input0", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}),
        ),
    };
    let body = body.to_string();
    let mut event = ApiCall {
        event_time: now_micros(),
        request_id: uuid::Uuid::new_v4().to_string(),
        model: Some(model),
        endpoint: Some(endpoint),
        method: Some("POST".to_string()),
        request_bytes: Some(body.len() as u64),
        upstream: Some(base_url.trim_start_matches("http://").to_string()),
        labels: [("client".to_string(), "demo".to_string())].into(),
        ..Default::default()
    };
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let mut response = match response {
        Ok(response) => response,
        Err(e) => {
            event.outcome = failure_outcome(&e);
            event.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            return event;
        }
    };
    event.ttfb_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let status = response.status().as_u16();
    event.status_code = Some(status);
    event.outcome = Outcome::from_status(status);
    let streaming = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut watch = StreamWatch::default();
    let mut body = Vec::new();
    let mut size = 0u64;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                size += chunk.len() as u64;
                if streaming {
                    watch.feed(&chunk, started.elapsed());
                } else {
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(e) => {
                event.outcome = failure_outcome(&e);
                break;
            }
        }
    }
    event.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    event.response_bytes = Some(size);
    if streaming {
        event.ttft_ms = watch.first_token.map(|d| d.as_secs_f64() * 1000.0);
        event.input_tokens = watch.input_tokens;
        event.output_tokens = watch.output_tokens;
        if event.output_tokens.is_none() && watch.content_chunks > 0 {
            event.output_tokens = Some(watch.content_chunks);
            event.output_tokens_estimated = Some(true);
        }
    } else if let Some(usage) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("usage").cloned())
    {
        read_usage(&usage, &mut event.input_tokens, &mut event.output_tokens);
    }
    event
}

/// Sends calls until `stop` is cancelled.
pub async fn drive(
    config: TrafficConfig,
    events: mpsc::Sender<ApiCall>,
    stats: Arc<TrafficStats>,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; the demo sends no traffic");
            return;
        }
    };
    let in_flight = Arc::new(Semaphore::new(512));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let base_url: Arc<str> = Arc::from(config.base_url.as_str());
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = config.started.elapsed();
        let (call, model) = {
            let mut rng = rand::rng();
            let draw: f64 = rng.random();
            if draw < 0.8 {
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
        };
        let dropped_traffic = config
            .incidents
            .iter()
            .any(|i| i.kind == IncidentKind::TrafficDrop && i.is_active(elapsed, model));
        if dropped_traffic && rand::rng().random::<f64>() > 0.1 {
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            stats.skipped_calls.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let client = client.clone();
        let events = events.clone();
        let stats = stats.clone();
        let base_url = base_url.clone();
        stats.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let event = one_call(&client, &base_url, call).await;
            drop(permit);
            if events.try_send(event).is_err() {
                stats.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Let calls in flight finish (bounded) so their events are counted.
    let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.acquire_many(512)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_watch_finds_the_first_content_token_and_usage_across_chunks() {
        let mut watch = StreamWatch::default();
        watch.feed(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            Duration::from_millis(5),
        );
        assert_eq!(
            watch.first_token, None,
            "a role frame is not a content token"
        );
        watch.feed(
            b"data: {\"choices\":[{\"delta\":{\"con",
            Duration::from_millis(10),
        );
        watch.feed(b"tent\":\"Hi\"}}]}\n\n", Duration::from_millis(12));
        watch.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n", Duration::from_millis(20));
        assert_eq!(watch.first_token, Some(Duration::from_millis(12)));
        assert_eq!(
            (watch.input_tokens, watch.output_tokens),
            (Some(7), Some(3))
        );
    }
}
