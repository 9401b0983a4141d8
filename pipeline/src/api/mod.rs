//! The HTTP server inside the `pipeline` binary, configured by the `[api]` table of
//! pipelines.toml: health and readiness, live metrics and alerts fed by `api` sinks, the
//! pipelines' topology and stats, Prometheus `/metrics`, a WebSocket feed, and read-only SQL
//! over the history; API keys with scopes and configurable CORS. One axum router.

pub mod auth;
mod body_limit;
pub mod call_metrics;
pub mod dashboard;
pub mod error;
pub mod historical;
pub mod historical_pg;
mod history_columns;
pub mod live;
pub mod openapi;
pub mod prometheus;
pub mod routes;
pub mod rules;
pub mod settings;
pub mod sink;
pub mod sql;
pub mod sql_worker;
pub mod state;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::routing::{get, post, put};
use axum::{middleware, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use auth::{Guard, KeyStore};
use error::ApiError;
use settings::{ApiSettings, Scope};
pub use state::{AppState, PipelineInfo, RunState};

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/http-api.md",
    )
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| format!("api.cors_origins: {o:?} is not a valid origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(parsed)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
            ]),
    ))
}

/// Checks what the settings can be checked for before anything starts; the message names the
/// setting.
pub fn check(settings: &ApiSettings) -> Result<(), String> {
    KeyStore::new(&settings.keys)?;
    cors(&settings.cors_origins)?;
    settings.listen.parse::<SocketAddr>().map_err(|_| {
        format!(
            "api.listen: {:?} is not an address like 0.0.0.0:8001",
            settings.listen
        )
    })?;
    if settings.query_max_rows == 0 {
        return Err("api.query_max_rows must be at least 1".into());
    }
    for (name, value) in [
        ("query_memory_mib", settings.query_memory_mib),
        ("query_max_result_mib", settings.query_max_result_mib),
        ("query_concurrency", settings.query_concurrency),
    ] {
        if value == 0 {
            return Err(format!("api.{name} must be at least 1"));
        }
    }
    Ok(())
}

/// The largest request body the API reads (a query, a rule); larger ones answer 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every route, with the scope each needs.
pub fn router(state: Arc<AppState>) -> Result<Router, String> {
    let guard = |scope| Guard {
        keys: state.keys.clone(),
        scope,
    };
    let read = Router::new()
        .route("/api/v1/health", get(routes::system_health))
        .route("/api/v1/metrics/realtime", get(routes::realtime))
        .route("/api/v1/metrics/summary", get(routes::summary))
        .route("/api/v1/metrics/historical", get(historical::historical))
        .route("/v1/metrics/summary", get(routes::summary))
        .route("/api/v1/alerts", get(routes::alerts))
        .route("/api/v1/alerts/rules", get(rules::list))
        .route("/api/v1/pipelines", get(routes::pipelines))
        .route("/metrics", get(prometheus::metrics))
        .route("/ws/metrics", get(ws::upgrade))
        .route_layer(middleware::from_fn_with_state(
            guard(Scope::Read),
            auth::require,
        ));
    let admin = Router::new()
        .route("/api/v1/query", post(sql::query))
        .route("/api/v1/alerts/rules", post(rules::create))
        .route(
            "/api/v1/alerts/rules/{name}",
            put(rules::replace).delete(rules::delete),
        )
        .route("/api/v1/alerts/configure", post(rules::configure))
        .route_layer(middleware::from_fn_with_state(
            guard(Scope::Admin),
            auth::require,
        ));
    let mut app = Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::docs))
        .route("/", get(dashboard::page))
        .route("/assets/uplot.min.js", get(dashboard::uplot_js))
        .route("/assets/uplot.min.css", get(dashboard::uplot_css))
        .merge(read)
        .merge(admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(body_limit::refuse_announced_oversize))
        .with_state(state.clone());
    if let Some(cors) = cors(&state.settings.cors_origins)? {
        app = app.layer(cors);
    }
    Ok(app)
}

/// Binds `api.listen` and serves until `shutdown`; returns the bound address.
pub async fn start(
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = router(state.clone()).map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(&state.settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (api.listen)", state.settings.listen))?;
    let address = listener.local_addr()?;
    if state.keys.is_open() && !address.ip().is_loopback() {
        tracing::warn!(%address, "the API has no keys and listens beyond loopback: anyone who can reach it can run SQL; add [[api.keys]]");
    }
    tracing::info!(%address, "API listening");
    let handle = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(%error, "the API server stopped");
        }
    });
    Ok((address, handle))
}

/// The shared state for `settings`, `live` and the pipelines about to run.
pub fn state(
    settings: ApiSettings,
    live: Arc<live::LiveState>,
    pipelines: Vec<PipelineInfo>,
) -> anyhow::Result<Arc<AppState>> {
    let keys = KeyStore::new(&settings.keys).map_err(anyhow::Error::msg)?;
    let state = Arc::new(AppState {
        live,
        keys: Arc::new(keys),
        query_slots: tokio::sync::Semaphore::new(settings.query_concurrency),
        settings,
        pipelines,
        started: std::time::Instant::now(),
    });
    rules::restore(&state);
    Ok(state)
}
