//! `GET /ws/metrics`: a WebSocket feed of every window result and alert change as JSON
//! (`{"type": "window_result" | "alert", "data": {...}}`), filtered by `model` / `endpoint`
//! chosen at subscribe time. A client first gets a `snapshot` of the recent results (up to 120
//! windows per key) and active alerts, then updates, and a `heartbeat` every `api.heartbeat`.
//! A client that falls more than `api.client_buffer` updates behind is skipped ahead (told
//! with a `lagged` message saying how many it missed); one that does not take a message for
//! 10 s is dropped. Neither holds up the other clients or the pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::error::ApiError;
use super::routes::check_params;
use super::state::AppState;

/// A client that cannot take one message for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
struct Filter {
    model: Option<String>,
    endpoint: Option<String>,
}

impl Filter {
    fn keeps(&self, model: Option<&str>, endpoint: Option<&str>) -> bool {
        self.model.as_deref().is_none_or(|m| model == Some(m))
            && self.endpoint.as_deref().is_none_or(|e| endpoint == Some(e))
    }
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    socket: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    check_params(&params, &["model", "endpoint"])?;
    let filter = Filter {
        model: params.get("model").cloned(),
        endpoint: params.get("endpoint").cloned(),
    };
    Ok(socket.on_upgrade(move |socket| serve(socket, state, filter)))
}

async fn send(socket: &mut WebSocket, text: impl Into<Utf8Bytes>) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

/// Writes `messages` with one flush at the end.
async fn send_all(socket: &mut WebSocket, messages: Vec<Utf8Bytes>) -> bool {
    if messages.is_empty() {
        return true;
    }
    let write = async {
        for message in messages {
            socket.feed(Message::Text(message)).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(SEND_TIMEOUT, write).await, Ok(Ok(())))
}

fn snapshot(state: &AppState, filter: &Filter) -> String {
    let field = |row: &serde_json::Map<String, Value>, name: &str| {
        row.get(name).and_then(Value::as_str).map(str::to_string)
    };
    let windows = state.live.recent(|row| {
        filter.keeps(
            field(row, "model").as_deref(),
            field(row, "endpoint").as_deref(),
        )
    });
    let alerts: Vec<Value> = state
        .live
        .active_alerts()
        .into_iter()
        .filter(|alert| {
            let label = |name: &str| alert["labels"][name].as_str().map(str::to_string);
            filter.keeps(label("model").as_deref(), label("endpoint").as_deref())
        })
        .collect();
    json!({ "type": "snapshot", "data": { "windows": windows, "active_alerts": alerts } })
        .to_string()
}

async fn serve(mut socket: WebSocket, state: Arc<AppState>, filter: Filter) {
    let mut updates = state.live.subscribe();
    if !send(&mut socket, snapshot(&state, &filter)).await {
        return;
    }
    let mut heartbeat = tokio::time::interval(state.settings.heartbeat.0);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(update) => {
                    // Queue this update and every other already waiting, then write them with
                    // one flush: a burst of window results costs one write per client.
                    let mut batch = vec![update];
                    let mut lagged = None;
                    loop {
                        match updates.try_recv() {
                            Ok(update) => batch.push(update),
                            Err(TryRecvError::Lagged(skipped)) => {
                                lagged = Some(skipped);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let mut messages: Vec<Utf8Bytes> = batch
                        .into_iter()
                        .filter(|u| filter.keeps(u.model.as_deref(), u.endpoint.as_deref()))
                        .map(|u| u.json)
                        .collect();
                    if let Some(skipped) = lagged {
                        messages.push(json!({ "type": "lagged", "skipped": skipped }).to_string().into());
                    }
                    if !send_all(&mut socket, messages).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    let notice = json!({ "type": "lagged", "skipped": skipped }).to_string();
                    if !send(&mut socket, notice).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = heartbeat.tick() => {
                let beat = json!({
                    "type": "heartbeat",
                    "time": engine::time::format_micros(chrono::Utc::now().timestamp_micros()),
                })
                .to_string();
                if !send(&mut socket, beat).await {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
