//! The simulated model API: OpenAI-style `POST /v1/chat/completions` (JSON, or a
//! `text/event-stream` of chunks when `"stream": true`), KServe-v2-style
//! `POST /v2/models/{name}/infer`, `GET /v1/models` and `GET /health`. Latency follows a
//! configurable distribution per call; errors follow the error rate; incidents raise latency
//! or errors for a while.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};
use sources::generator::{IncidentKind, LatencyDistribution};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::incidents::DemoIncident;

pub const CHAT_MODELS: [&str; 2] = ["gpt-4o", "llama-3-70b"];
pub const VISION_MODEL: &str = "resnet-50";

pub struct ModelApiConfig {
    pub latency: LatencyDistribution,
    pub error_rate: f64,
    pub incidents: Vec<DemoIncident>,
    pub started: Instant,
}

struct Behaviour {
    latency: Duration,
    fail: Option<StatusCode>,
}

impl ModelApiConfig {
    fn behaviour(&self, model: &str) -> Behaviour {
        let elapsed = self.started.elapsed();
        let mut rng = rand::rng();
        let mut factor = 1.0;
        let mut error_rate = self.error_rate;
        for incident in self
            .incidents
            .iter()
            .filter(|i| i.is_active(elapsed, model))
        {
            match incident.kind {
                IncidentKind::LatencySpike => factor *= 6.0,
                IncidentKind::ErrorBurst => error_rate = error_rate.max(0.4),
                IncidentKind::TrafficDrop => {}
            }
        }
        // Larger models are slower.
        let scale = match model {
            "gpt-4o" => 1.5,
            "llama-3-70b" => 1.0,
            _ => 0.3,
        };
        let millis = self.latency.sample(&mut rng) * factor * scale;
        let fail = (rng.random::<f64>() < error_rate).then(|| {
            if rng.random_bool(0.5) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        });
        Behaviour {
            latency: Duration::from_secs_f64(millis / 1000.0),
            fail,
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "demo_error", "code": status.as_u16()}})),
    )
        .into_response()
}

async fn chat(State(config): State<Arc<ModelApiConfig>>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
    };
    let Some(model) = request
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return error(StatusCode::BAD_REQUEST, "field `model` is required");
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let behaviour = config.behaviour(&model);
    let prompt_tokens = (body.len() / 4).max(1) as u64;
    let completion_tokens = rand::rng().random_range(16..160u64);
    if let Some(status) = behaviour.fail {
        tokio::time::sleep(behaviour.latency / 4).await;
        return error(status, "the model backend is overloaded");
    }
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    if !stream {
        tokio::time::sleep(behaviour.latency).await;
        return Json(json!({
            "id": id, "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "word ".repeat(completion_tokens as usize)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        }))
        .into_response();
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let chunks = completion_tokens.div_ceil(8);
    tokio::spawn(async move {
        let frame = |value: Value| Ok(Bytes::from(format!("data: {value}\n\n")));
        let ttft = behaviour.latency.mul_f64(0.3);
        let per_chunk = behaviour.latency.mul_f64(0.7) / chunks as u32;
        let role = json!({"id": id, "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"role": "assistant"}}]});
        if sender.send(frame(role)).await.is_err() {
            return;
        }
        tokio::time::sleep(ttft).await;
        for _ in 0..chunks {
            let chunk = json!({"id": id, "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": "word ".repeat(8)}}]});
            if sender.send(frame(chunk)).await.is_err() {
                return;
            }
            tokio::time::sleep(per_chunk).await;
        }
        let usage = json!({"id": id, "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}});
        let _ = sender.send(frame(usage)).await;
        let _ = sender
            .send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        ))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "cannot build the stream"))
}

async fn infer(
    State(config): State<Arc<ModelApiConfig>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Response {
    if serde_json::from_slice::<Value>(&body).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "body is not a KServe v2 JSON inference request",
        );
    }
    let behaviour = config.behaviour(&model);
    tokio::time::sleep(behaviour.latency).await;
    if let Some(status) = behaviour.fail {
        return error(status, "inference failed");
    }
    let scores: Vec<f32> = (0..10).map(|_| rand::rng().random::<f32>()).collect();
    Json(json!({
        "model_name": model, "model_version": "1", "id": uuid::Uuid::new_v4().to_string(),
        "outputs": [{"name": "output0", "shape": [1, 10], "datatype": "FP32", "data": scores}]
    }))
    .into_response()
}

async fn models() -> Json<Value> {
    let data: Vec<Value> = CHAT_MODELS
        .iter()
        .chain([VISION_MODEL].iter())
        .map(|m| json!({"id": m, "object": "model", "owned_by": "demo"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub fn router(config: Arc<ModelApiConfig>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v1/models", get(models))
        .route(
            "/health",
            get(|| async { Json(json!({"status": "healthy", "service": "simulated-model-api"})) }),
        )
        .with_state(config)
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ModelApiConfig>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
