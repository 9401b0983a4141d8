//! `pipeline demo`: the whole system in one process with no services — a simulated model API,
//! the intercepting proxy in front of it, real HTTP traffic through the proxy, 10 s and 1 min
//! windows with percentiles, alert rules whose changes print live and go to a webhook receiver
//! the demo starts, a live console view, Parquet history under `--data` for `pipeline query`
//! afterwards, and the monitoring HTTP API on `--monitor-port` (8001).

pub mod incidents;
pub mod model_api;
pub mod traffic;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::config::SourceText;
use sources::generator::LatencyDistribution;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::live::LiveState;
use crate::api::settings::ApiSettings;
use crate::api::{PipelineInfo, RunState};
use crate::commands::Checked;
use incidents::DemoIncident;
use model_api::ModelApiConfig;
use traffic::{TrafficConfig, TrafficStats};

/// The demo's pipeline definition.
pub const DEMO_PIPELINE: &str = include_str!("../../demo.toml");

#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Stop after this long (e.g. 90s, 5m); runs until Ctrl-C when omitted.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Where the Parquet history goes.
    #[arg(long, default_value = "./data")]
    pub data: String,
    /// Port of the simulated model API (on 127.0.0.1).
    #[arg(long, default_value_t = 8002)]
    pub api_port: u16,
    /// Port of the intercepting proxy the traffic goes through (on 127.0.0.1).
    #[arg(long, default_value_t = 9090)]
    pub proxy_port: u16,
    /// Port of the proxy's admin endpoint (`/health`, on 127.0.0.1).
    #[arg(long, default_value_t = 9091)]
    pub proxy_admin_port: u16,
    /// Calls per second sent to the simulated model API.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Median latency of the simulated model API, in milliseconds (log-normal).
    #[arg(long, default_value_t = 80.0)]
    pub latency_ms: f64,
    /// Spread of the log-normal latency (sigma of its logarithm): 0 is constant, 1 is wide.
    #[arg(long, default_value_t = 0.5)]
    pub latency_sigma: f64,
    /// Fraction of calls the simulated model API fails outside incidents.
    #[arg(long, default_value_t = 0.01)]
    pub error_rate: f64,
    /// An incident, KIND@START+DURATION[:MODEL], e.g. latency_spike@40s+30s:gpt-4o. Repeatable;
    /// replaces the default schedule.
    #[arg(long = "incident")]
    pub incidents: Vec<DemoIncident>,
    /// Inject no incidents.
    #[arg(long, conflicts_with = "incidents")]
    pub no_incidents: bool,
    /// Port of the webhook receiver the demo starts for its alerts (on 127.0.0.1).
    #[arg(long, default_value_t = 9095)]
    pub webhook_port: u16,
    /// Port of the monitoring HTTP API (on 127.0.0.1; key `test-api-key-12345`).
    #[arg(long, default_value_t = 8001)]
    pub monitor_port: u16,
}

/// Options of `pipeline model-api`: the demo's simulated model API alone, as a sample upstream
/// (docker-compose puts an edge proxy in front of it).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelApiOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Median latency, in milliseconds (log-normal).
    #[arg(long, default_value_t = 80.0)]
    pub latency_ms: f64,
    /// Spread of the log-normal latency.
    #[arg(long, default_value_t = 0.5)]
    pub latency_sigma: f64,
    /// Fraction of calls that fail.
    #[arg(long, default_value_t = 0.01)]
    pub error_rate: f64,
}

/// Serves the simulated model API until SIGINT/SIGTERM.
pub async fn serve_model_api(options: ModelApiOptions) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.error_rate),
        "--error-rate must be between 0 and 1"
    );
    anyhow::ensure!(options.latency_ms > 0.0, "--latency-ms must be positive");
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let config = Arc::new(ModelApiConfig {
        latency: LatencyDistribution::LogNormal {
            median_ms: options.latency_ms,
            sigma: options.latency_sigma.max(0.0),
        },
        error_rate: options.error_rate,
        incidents: Vec::new(),
        started: Instant::now(),
    });
    let stop = crate::shutdown::on_signal();
    tracing::info!(listen = %options.listen, "simulated model API listening: POST /v1/chat/completions, POST /v2/models/{{name}}/infer, GET /v1/models, GET /health");
    model_api::serve(listener, config, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Waits until the proxy answers its health check (or the pipeline has already stopped).
async fn wait_for_proxy<T>(health: &str, run: &tokio::task::JoinHandle<T>) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..200 {
        if run.is_finished() {
            anyhow::bail!("the pipeline stopped before the proxy came up (is port in use? see the error above)");
        }
        if client
            .get(health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("the proxy did not answer {health} within 5 s")
}

pub async fn run(options: DemoOptions) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        options.rate > 0.0 && options.rate.is_finite(),
        "--rate must be a positive number"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.error_rate),
        "--error-rate must be between 0 and 1"
    );
    anyhow::ensure!(options.latency_ms > 0.0, "--latency-ms must be positive");
    anyhow::ensure!(
        options.latency_sigma >= 0.0,
        "--latency-sigma must not be negative"
    );
    let incidents = if options.no_incidents {
        Vec::new()
    } else if options.incidents.is_empty() {
        DemoIncident::defaults()
    } else {
        options.incidents.clone()
    };
    let address = SocketAddr::from(([127, 0, 0, 1], options.api_port));
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for the simulated model API (is the port in use? pass --api-port)"))?;
    let started = Instant::now();
    let webhook_address = SocketAddr::from(([127, 0, 0, 1], options.webhook_port));
    let webhook_listener = TcpListener::bind(webhook_address)
        .await
        .with_context(|| format!("cannot listen on {webhook_address} for the webhook receiver (is the port in use? pass --webhook-port)"))?;
    let webhook_secret = uuid::Uuid::new_v4().simple().to_string();
    let webhook_stats = Arc::new(crate::receiver::ReceiverStats::default());
    let webhook_stop = CancellationToken::new();
    let webhook = tokio::spawn(crate::receiver::serve(
        webhook_listener,
        Some(webhook_secret.clone().into_bytes()),
        "x-pipeline-signature".to_string(),
        webhook_stats.clone(),
        webhook_stop.clone(),
    ));

    let data = options.data.clone();
    let ports = [
        ("DEMO_API_PORT", options.api_port.to_string()),
        ("DEMO_PROXY_PORT", options.proxy_port.to_string()),
        (
            "DEMO_PROXY_ADMIN_PORT",
            options.proxy_admin_port.to_string(),
        ),
        ("DEMO_WEBHOOK_PORT", options.webhook_port.to_string()),
        ("DEMO_WEBHOOK_SECRET", webhook_secret),
        ("DEMO_MONITOR_PORT", options.monitor_port.to_string()),
    ];
    let source = SourceText::new("demo.toml", DEMO_PIPELINE, |name| match name {
        "DEMO_DATA" => Some(data.clone()),
        _ => ports
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok()),
    })
    .map_err(|e| anyhow::anyhow!("the demo pipeline is invalid: {e}"))?;
    let live = LiveState::new(ApiSettings::default().client_buffer);
    let Checked { pipelines, api } = crate::commands::check_file(&source, live.clone())
        .map_err(|e| anyhow::anyhow!("the demo pipeline is invalid: {e}"))?;
    let pipeline = pipelines
        .into_iter()
        .next()
        .context("the demo file has no pipeline")?;
    let api_settings = api.context("the demo file has no [api] table")?;
    live.set_client_buffer(api_settings.client_buffer);
    let run_state = Arc::new(Mutex::new(RunState::Running));
    let monitor_state = crate::api::state(
        api_settings,
        live,
        vec![PipelineInfo {
            name: "demo".into(),
            topology: pipeline.topology(),
            metrics: pipeline.metrics(),
            state: run_state.clone(),
        }],
    )?;
    let monitor_stop = CancellationToken::new();
    let (monitor_address, monitor) = crate::api::start(monitor_state, monitor_stop.clone())
        .await
        .context("the monitoring API (is the port in use? pass --monitor-port)")?;
    tracing::info!(%monitor_address, "monitoring API: curl -H 'Authorization: Bearer test-api-key-12345' http://{monitor_address}/api/v1/metrics/realtime");

    let shutdown = crate::shutdown::on_signal();
    if let Some(duration) = options.duration {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            tracing::info!(?duration, "demo duration reached");
            stop.cancel();
        });
    }
    let api_stop = CancellationToken::new();
    let api_config = Arc::new(ModelApiConfig {
        latency: LatencyDistribution::LogNormal {
            median_ms: options.latency_ms,
            sigma: options.latency_sigma,
        },
        error_rate: options.error_rate,
        incidents: incidents.clone(),
        started,
    });
    let api = tokio::spawn(model_api::serve(listener, api_config, api_stop.clone()));
    tracing::info!(%address, "simulated model API listening: POST /v1/chat/completions, POST /v2/models/{{name}}/infer");
    for incident in &incidents {
        tracing::info!(
            kind = ?incident.kind,
            model = incident.model.as_deref().unwrap_or("all"),
            "incident scheduled at {} for {}",
            humantime::format_duration(incident.start),
            humantime::format_duration(incident.duration)
        );
    }
    let proxy_address = SocketAddr::from(([127, 0, 0, 1], options.proxy_port));
    let stats = Arc::new(TrafficStats::default());
    let traffic_config = TrafficConfig {
        rate: options.rate,
        base_url: format!("http://{proxy_address}"),
        incidents,
        started,
    };
    tracing::info!(rate = options.rate, data = %options.data, "demo running; 10-second windows print below (Ctrl-C to stop)");

    // Shutdown order: the signal stops the traffic and calls in flight finish; then the proxy
    // stops (after its last events), and the pipeline drains and flushes every window and sink.
    let pipeline_stop = CancellationToken::new();
    let metrics = pipeline.metrics();
    let run = tokio::spawn(pipeline.run(pipeline_stop.clone()));
    wait_for_proxy(
        &format!("http://127.0.0.1:{}/health", options.proxy_admin_port),
        &run,
    )
    .await?;
    tracing::info!(%proxy_address, "traffic goes through the proxy");
    let traffic = tokio::spawn(traffic::drive(
        traffic_config,
        stats.clone(),
        shutdown.clone(),
    ));
    let _ = traffic.await;
    pipeline_stop.cancel();
    let result = match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(joined) => joined.context("the pipeline task panicked")?,
        Err(_) => {
            pipeline_stop.cancel();
            anyhow::bail!("the pipeline did not drain within 30 s after the traffic stopped");
        }
    };
    *run_state.lock().unwrap_or_else(|e| e.into_inner()) = match &result {
        Ok(_) => RunState::Finished,
        Err(error) => RunState::Failed {
            error: error.to_string(),
        },
    };
    api_stop.cancel();
    let _ = api.await;
    monitor_stop.cancel();
    let _ = monitor.await;
    webhook_stop.cancel();
    let _ = webhook.await;
    let sent = stats.sent.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let dropped = metrics.get("traffic").map_or(0, |m| m.snapshot().dropped);
    match result {
        Ok(report) => {
            crate::commands::print_report("demo", &report);
            eprintln!("traffic: {sent} calls sent through the proxy ({failed} failed at the client), {dropped} events dropped by a full queue");
            eprintln!(
                "alerts: {} notifications delivered to the webhook receiver on {webhook_address} with valid signatures ({} repeats, {} refused)",
                webhook_stats.accepted.load(Ordering::Relaxed),
                webhook_stats.duplicates.load(Ordering::Relaxed),
                webhook_stats.bad_signature.load(Ordering::Relaxed)
            );
            eprintln!("history is in {}; try:", options.data);
            eprintln!(
                "  cargo run --release -p pipeline -- query --data {} \"SELECT model, endpoint, count(*) AS calls, avg(latency_ms) AS mean_ms FROM api_calls GROUP BY model, endpoint ORDER BY calls DESC\"",
                options.data
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
