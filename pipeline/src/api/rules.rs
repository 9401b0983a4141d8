//! Alert rules through the API: `GET/POST /api/v1/alerts/rules`, `PUT/DELETE
//! /api/v1/alerts/rules/{name}`, and the predecessor's `POST /api/v1/alerts/configure`. A
//! change is checked against the operator's input, saved to `api.rules_file` (atomically),
//! then applied to the running operator; at startup the saved rules replace the file's rules of
//! the operators they name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use operators::alert::control::RuleHandle;
use operators::alert::rule::RuleConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use super::routes::check_params;
use super::state::AppState;

/// What `rules_file` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedRules {
    /// Operator path → its rules.
    operators: BTreeMap<String, Vec<RuleConfig>>,
}

fn read_saved(path: &Path) -> Result<Option<SavedRules>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn write_saved(path: &Path, saved: &SavedRules) -> Result<(), String> {
    let text = serde_json::to_string_pretty(saved).map_err(|e| e.to_string())?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Applies the saved rules of every operator still in the pipelines (at startup).
pub fn restore(state: &AppState) {
    let path = &state.settings.rules_file;
    let saved = match read_saved(path) {
        Ok(Some(saved)) => saved,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "cannot read the saved alert rules; using pipelines.toml's");
            return;
        }
    };
    for (operator, rules) in saved.operators {
        let Some(handle) = state
            .live
            .alert_rules
            .handles()
            .into_iter()
            .find(|h| h.path == operator)
        else {
            tracing::warn!(%operator, file = %path.display(), "saved alert rules name an operator this configuration does not have; ignored");
            continue;
        };
        match handle.replace(rules) {
            Ok(()) => {
                tracing::info!(%operator, file = %path.display(), "alert rules restored from the API's last changes")
            }
            Err(error) => {
                tracing::warn!(%operator, %error, "saved alert rules no longer fit the pipeline; using pipelines.toml's")
            }
        }
    }
}

/// The operator a request means: `?operator=` (its path or id), or the only one.
fn pick(state: &AppState, params: &HashMap<String, String>) -> Result<Arc<RuleHandle>, ApiError> {
    let handles = state.live.alert_rules.handles();
    if handles.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this process runs no alert operator",
        ));
    }
    let paths = || {
        handles
            .iter()
            .map(|h| h.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match params.get("operator") {
        Some(wanted) => {
            let matching: Vec<_> = handles
                .iter()
                .filter(|h| h.path == *wanted || h.path.ends_with(&format!(".{wanted}")))
                .collect();
            match matching.as_slice() {
                [one] => Ok((*one).clone()),
                _ => Err(ApiError::bad_field(
                    "operator",
                    format!(
                        "{wanted:?} names no single alert operator; they are: {}",
                        paths()
                    ),
                )),
            }
        }
        None if handles.len() == 1 => Ok(handles[0].clone()),
        None => Err(ApiError::bad_field(
            "operator",
            format!("several alert operators run ({}); choose one", paths()),
        )),
    }
}

/// Saves the rules with `handle`'s replaced by `rules`, then applies them.
fn commit(state: &AppState, handle: &RuleHandle, rules: Vec<RuleConfig>) -> Result<(), ApiError> {
    handle
        .check(&rules)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "invalid_rule", message))?;
    let mut saved = SavedRules::default();
    for other in state.live.alert_rules.handles() {
        let current = if other.path == handle.path {
            rules.clone()
        } else {
            other.rules()
        };
        saved.operators.insert(other.path.clone(), current);
    }
    write_saved(&state.settings.rules_file, &saved).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not_saved",
            format!("the rules could not be saved, so nothing changed: {e}"),
        )
    })?;
    handle
        .replace(rules)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "invalid_rule", message))
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    Ok(body.map(|Json(value)| value)?)
}

/// The longest rule name, label or annotation name the API takes.
const MAX_NAME_CHARS: usize = 200;
/// The longest condition, label value or annotation text the API takes.
const MAX_TEXT_CHARS: usize = 4096;

/// Refuses a rule whose names or texts are longer than a notification can sensibly carry.
fn check_lengths(rule: &RuleConfig) -> Result<(), ApiError> {
    let too_long = |field: String, text: &str, limit: usize| {
        let chars = text.chars().count();
        if chars > limit {
            Err(ApiError::bad_field(
                &field,
                format!("{chars} characters; at most {limit}"),
            ))
        } else {
            Ok(())
        }
    };
    too_long("name".into(), &rule.name, MAX_NAME_CHARS)?;
    too_long("severity".into(), &rule.severity, MAX_NAME_CHARS)?;
    for (field, text) in [
        ("condition", &rule.condition),
        ("anomaly", &rule.anomaly),
        ("value", &rule.value),
    ] {
        if let Some(text) = text {
            too_long(field.into(), text, MAX_TEXT_CHARS)?;
        }
    }
    for (table, map) in [("labels", &rule.labels), ("annotations", &rule.annotations)] {
        for (name, text) in map {
            too_long(table.to_string(), name, MAX_NAME_CHARS)?;
            too_long(format!("{table}.{name}"), text, MAX_TEXT_CHARS)?;
        }
    }
    Ok(())
}

/// `GET /api/v1/alerts/rules`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_params(&params, &[])?;
    let operators: Vec<Value> = state
        .live
        .alert_rules
        .handles()
        .iter()
        .map(|h| json!({ "operator": h.path, "rules": h.rules() }))
        .collect();
    Ok(Json(json!({ "operators": operators })))
}

/// `POST /api/v1/alerts/rules?operator=`: adds a rule.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    rule: Result<Json<RuleConfig>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_params(&params, &["operator"])?;
    let rule = body(rule)?;
    check_lengths(&rule)?;
    let handle = pick(&state, &params)?;
    let mut rules = handle.rules();
    if rules.iter().any(|r| r.name == rule.name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "a rule named `{}` exists; PUT /api/v1/alerts/rules/{} replaces it",
                rule.name, rule.name
            ),
        ));
    }
    rules.push(rule.clone());
    commit(&state, &handle, rules)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "operator": handle.path, "rule": rule })),
    )
        .into_response())
}

/// `PUT /api/v1/alerts/rules/{name}?operator=`: replaces a rule.
pub async fn replace(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Query(params): Query<HashMap<String, String>>,
    rule: Result<Json<RuleConfig>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_params(&params, &["operator"])?;
    let rule = body(rule)?;
    check_lengths(&rule)?;
    if rule.name != name {
        return Err(ApiError::bad_field(
            "name",
            format!("the body names `{}` but the URL `{name}`", rule.name),
        ));
    }
    let handle = pick(&state, &params)?;
    let mut rules = handle.rules();
    let Some(slot) = rules.iter_mut().find(|r| r.name == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no rule named `{name}` in {}", handle.path),
        ));
    };
    *slot = rule.clone();
    commit(&state, &handle, rules)?;
    Ok(Json(json!({ "operator": handle.path, "rule": rule })))
}

/// `DELETE /api/v1/alerts/rules/{name}?operator=`: removes a rule; its active alerts resolve.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    check_params(&params, &["operator"])?;
    let handle = pick(&state, &params)?;
    let mut rules = handle.rules();
    let before = rules.len();
    rules.retain(|r| r.name != name);
    if rules.len() == before {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no rule named `{name}` in {}", handle.path),
        ));
    }
    commit(&state, &handle, rules)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The predecessor's `POST /api/v1/alerts/configure` body. `metrics` and `alert_channels`
/// are accepted and ignored: channels are sinks in pipelines.toml.
#[derive(Debug, Deserialize)]
pub struct ConfigureRequest {
    thresholds: Option<Thresholds>,
    #[serde(default, rename = "metrics")]
    _metrics: Option<Value>,
    #[serde(default, rename = "alert_channels")]
    _alert_channels: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Thresholds {
    response_time_ms: Option<f64>,
    error_rate_percent: Option<f64>,
}

fn threshold_rule(name: &str, condition: String, summary: &str) -> RuleConfig {
    let text = json!({
        "name": name,
        "condition": condition,
        "annotations": { "summary": summary },
    });
    serde_json::from_value(text).expect("a fixed, valid rule shape")
}

/// `POST /api/v1/alerts/configure`: sets the `ResponseTimeThreshold` (mean latency) and
/// `ErrorRateThreshold` rules, creating or replacing them.
pub async fn configure(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    request: Result<Json<ConfigureRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_params(&params, &["operator"])?;
    let request = body(request)?;
    let thresholds = request.thresholds.ok_or_else(|| {
        ApiError::bad_field(
            "thresholds",
            "missing: give response_time_ms and/or error_rate_percent",
        )
    })?;
    let mut wanted = Vec::new();
    if let Some(ms) = thresholds.response_time_ms {
        if !(ms.is_finite() && ms > 0.0) {
            return Err(ApiError::bad_field(
                "thresholds.response_time_ms",
                "must be a positive number",
            ));
        }
        wanted.push(threshold_rule(
            "ResponseTimeThreshold",
            format!("mean_latency_ms > {ms}"),
            "mean latency of {{model}} {{endpoint}} is {{value}} ms",
        ));
    }
    if let Some(percent) = thresholds.error_rate_percent {
        if !(0.0..=100.0).contains(&percent) {
            return Err(ApiError::bad_field(
                "thresholds.error_rate_percent",
                "must be between 0 and 100",
            ));
        }
        wanted.push(threshold_rule(
            "ErrorRateThreshold",
            format!("error_rate > {}", percent / 100.0),
            "error rate of {{model}} {{endpoint}} is {{value}}",
        ));
    }
    if wanted.is_empty() {
        return Err(ApiError::bad_field(
            "thresholds",
            "give response_time_ms and/or error_rate_percent",
        ));
    }
    let handle = pick(&state, &params)?;
    let mut rules = handle.rules();
    for rule in &wanted {
        match rules.iter_mut().find(|r| r.name == rule.name) {
            Some(slot) => *slot = rule.clone(),
            None => rules.push(rule.clone()),
        }
    }
    commit(&state, &handle, rules)?;
    Ok(Json(
        json!({ "status": "configured", "operator": handle.path, "rules": wanted }),
    ))
}
