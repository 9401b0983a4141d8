//! The REST handlers: health and readiness, live metrics (realtime, summary), alerts, the
//! pipelines' topology and per-component stats.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::state::{AppState, RunState};

/// Rejects parameters a handler does not know, naming the first one.
pub fn check_params(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    for name in names {
        if name != "api_key" && !known.contains(&name.as_str()) {
            return Err(ApiError::bad_field(
                name,
                format!("unknown parameter; expected one of: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// `GET /health`: the process answers.
pub async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}

fn pipeline_states(state: &AppState) -> (bool, Vec<Value>) {
    let mut all_running = true;
    let list = state
        .pipelines
        .iter()
        .map(|p| {
            let run = p.run_state();
            all_running &= run == RunState::Running;
            let mut entry = json!({ "name": p.name });
            if let (Value::Object(entry), Ok(Value::Object(run))) =
                (&mut entry, serde_json::to_value(&run))
            {
                entry.extend(run);
            }
            entry
        })
        .collect();
    (all_running, list)
}

/// Components whose outside connection is down, as `pipeline/component`.
fn disconnected(state: &AppState) -> Vec<String> {
    state
        .pipelines
        .iter()
        .flat_map(|p| {
            p.metrics
                .report()
                .into_iter()
                .filter(|c| c.metrics.connected == Some(false))
                .map(move |c| format!("{}/{}", p.name, c.id))
        })
        .collect()
}

/// `GET /ready`: 200 while every pipeline runs and no source's or sink's connection is down,
/// 503 otherwise; the body gives each pipeline's state and each connection's.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let (all_running, pipelines) = pipeline_states(&state);
    let down = disconnected(&state);
    let ready = all_running && down.is_empty();
    let connections: Vec<Value> = state
        .pipelines
        .iter()
        .flat_map(|p| {
            p.metrics.report().into_iter().filter_map(move |c| {
                c.metrics.connected.map(|up| {
                    json!({ "pipeline": p.name, "component": c.id, "type": c.component_type, "connected": up })
                })
            })
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "pipelines": pipelines,
        "connections": connections,
        "disconnected": down,
    });
    (status, Json(body)).into_response()
}

/// `GET /api/v1/health`: the predecessor's system health check, with more to it.
pub async fn system_health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let (all_running, pipelines) = pipeline_states(&state);
    let mut errors = 0u64;
    let mut dropped = 0u64;
    for pipeline in &state.pipelines {
        for component in pipeline.metrics.report() {
            errors += component.metrics.errors;
            dropped += component.metrics.dropped;
        }
    }
    let down = disconnected(&state);
    let status = if !all_running {
        "unhealthy"
    } else if !down.is_empty() {
        "degraded"
    } else {
        "healthy"
    };
    Json(json!({
        "status": status,
        "disconnected": down,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "pipelines": pipelines,
        "component_errors": errors,
        "component_dropped": dropped,
        "active_alerts": state.live.active_alerts().len(),
    }))
}

fn matches(row: &Map<String, Value>, field: &str, wanted: Option<&String>) -> bool {
    match wanted {
        None => true,
        Some(wanted) => row.get(field).and_then(Value::as_str) == Some(wanted.as_str()),
    }
}

/// `GET /api/v1/metrics/realtime?model=&endpoint=&window=`: the latest window result per key.
pub async fn realtime(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_params(&params, &["model", "endpoint", "window"])?;
    let results = state.live.latest(|row| {
        matches(row, "model", params.get("model"))
            && matches(row, "endpoint", params.get("endpoint"))
            && matches(row, "window", params.get("window"))
    });
    Ok(Json(json!({ "count": results.len(), "results": results })))
}

fn number(row: &Value, field: &str) -> Option<f64> {
    row.get(field).and_then(Value::as_f64)
}

/// `GET /api/v1/metrics/summary` (and the predecessor's `/v1/metrics/summary`): per window,
/// the latest results of every key added up.
pub async fn summary(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_params(&params, &["model", "endpoint", "window"])?;
    let rows = state.live.latest(|row| {
        matches(row, "model", params.get("model"))
            && matches(row, "endpoint", params.get("endpoint"))
            && matches(row, "window", params.get("window"))
    });
    #[derive(Default)]
    struct Totals {
        keys: u64,
        requests: f64,
        errors: f64,
        rate: f64,
        latency_weighted: f64,
        latency_count: f64,
        max_p99: Option<f64>,
        newest_end: String,
        models: std::collections::BTreeSet<String>,
    }
    let mut windows: BTreeMap<String, Totals> = BTreeMap::new();
    for row in &rows {
        let window = row["window"].as_str().unwrap_or_default().to_string();
        let totals = windows.entry(window).or_default();
        totals.keys += 1;
        let count = number(row, "count").unwrap_or(0.0);
        totals.requests += count;
        totals.errors += number(row, "errors").unwrap_or(0.0);
        totals.rate += number(row, "rate_per_sec").unwrap_or(0.0);
        if let Some(mean) = number(row, "mean_latency_ms") {
            totals.latency_weighted += mean * count;
            totals.latency_count += count;
        }
        if let Some(p99) = number(row, "p99_latency_ms") {
            totals.max_p99 = Some(totals.max_p99.map_or(p99, |m: f64| m.max(p99)));
        }
        if let Some(end) = row["window_end"].as_str() {
            if end > totals.newest_end.as_str() {
                totals.newest_end = end.to_string();
            }
        }
        if let Some(model) = row["model"].as_str() {
            totals.models.insert(model.to_string());
        }
    }
    let windows: Map<String, Value> = windows
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                json!({
                    "keys": t.keys,
                    "requests": t.requests,
                    "errors": t.errors,
                    "error_rate": if t.requests > 0.0 { t.errors / t.requests } else { 0.0 },
                    "rate_per_sec": t.rate,
                    "mean_latency_ms": (t.latency_count > 0.0).then(|| t.latency_weighted / t.latency_count),
                    "max_p99_latency_ms": t.max_p99,
                    "latest_window_end": t.newest_end,
                    "models": t.models,
                }),
            )
        })
        .collect();
    Ok(Json(json!({
        "windows": windows,
        "active_alerts": state.live.active_alerts().len(),
    })))
}

/// `GET /api/v1/alerts`: the active alerts and the recent changes, newest first.
pub async fn alerts(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_params(&params, &[])?;
    Ok(Json(json!({
        "active": state.live.active_alerts(),
        "recent": state.live.recent_alerts(),
    })))
}

/// `GET /api/v1/pipelines`: every pipeline's graph, run state and per-component stats.
pub async fn pipelines(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .pipelines
        .iter()
        .map(|p| {
            let reports = p.metrics.report();
            let components: Vec<Value> = p
                .topology
                .iter()
                .map(|node| {
                    let mut entry = serde_json::to_value(node).unwrap_or(Value::Null);
                    if let (Value::Object(entry), Some(report)) =
                        (&mut entry, reports.iter().find(|r| r.id == node.id))
                    {
                        entry.insert("type".into(), json!(report.component_type));
                        if let Ok(Value::Object(stats)) = serde_json::to_value(report.metrics) {
                            entry.insert("stats".into(), Value::Object(stats));
                        }
                        entry.insert("counters".into(), json!(report.counters));
                    }
                    entry
                })
                .collect();
            json!({ "name": p.name, "run": p.run_state(), "components": components })
        })
        .collect();
    Json(json!({ "pipelines": list }))
}
