//! `pipeline status` and `pipeline top`: a running instance seen through its HTTP API. Both
//! sample `/api/v1/pipelines` twice to turn counters into rates; `status` prints once (health,
//! each pipeline's state, per-component rates, errors, drops, queue depth and watermark lag,
//! and a `degraded:` line with the backlog of each component whose outside system is down)
//! and exits 0 when ready, 1 when not, 2 when the API cannot be reached; `top` redraws the
//! same table every interval, like `vector top`.

use std::collections::HashMap;
use std::fmt::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientOptions {
    /// The instance's API address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8001",
        env = "PIPELINE_API_URL"
    )]
    pub url: String,
    /// An API key with the read scope.
    #[arg(long, env = "PIPELINE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Time between the two samples rates are computed from (and between `top` refreshes).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TopOptions {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Stop after this many refreshes (runs until Ctrl-C when omitted).
    #[arg(long)]
    pub iterations: Option<u64>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    fn new(options: &ClientOptions) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            base: options.url.trim_end_matches('/').to_string(),
            key: options.api_key.clone(),
        })
    }

    /// The JSON body and status of `GET path`.
    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {}{path}", self.base))?;
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{}{path} did not answer JSON", self.base))?;
        if status == 401 || status == 403 {
            anyhow::bail!(
                "{}{path}: {} (give a read key with --api-key or PIPELINE_API_KEY)",
                self.base,
                body["message"].as_str().unwrap_or("refused")
            );
        }
        Ok((status, body))
    }
}

/// One sample of every component's counters, keyed by (pipeline, component).
struct Sample {
    at: Instant,
    body: Value,
}

fn counters(sample: &Sample) -> HashMap<(String, String), (f64, f64, f64, f64)> {
    let mut map = HashMap::new();
    for pipeline in sample.body["pipelines"].as_array().into_iter().flatten() {
        let name = pipeline["name"].as_str().unwrap_or_default().to_string();
        for component in pipeline["components"].as_array().into_iter().flatten() {
            let stats = &component["stats"];
            let number = |field: &str| stats[field].as_f64().unwrap_or(0.0);
            map.insert(
                (
                    name.clone(),
                    component["id"].as_str().unwrap_or_default().to_string(),
                ),
                (
                    number("events_in"),
                    number("events_out"),
                    number("errors"),
                    number("dropped"),
                ),
            );
        }
    }
    map
}

fn human_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.1}/s")
    }
}

/// The table of both samples: rates from their difference, totals from the second.
fn render(health: &Value, before: &Sample, after: &Sample) -> String {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let earlier = counters(before);
    let now_micros = chrono::Utc::now().timestamp_micros();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} — version {}, up {}s, {} active alert(s)",
        health["status"].as_str().unwrap_or("unknown"),
        health["version"].as_str().unwrap_or("?"),
        health["uptime_seconds"],
        health["active_alerts"]
    );
    for pipeline in after.body["pipelines"].as_array().into_iter().flatten() {
        let name = pipeline["name"].as_str().unwrap_or_default();
        let run = &pipeline["run"];
        let state = run["state"].as_str().unwrap_or("unknown");
        let _ = write!(out, "\npipeline {name}: {state}");
        if let Some(error) = run["error"].as_str() {
            let _ = write!(out, " ({error})");
        }
        let _ = writeln!(
            out,
            "\n{:<22} {:<9} {:<12} {:>10} {:>10} {:>12} {:>8} {:>8} {:>6} {:>8} {:>7} {:>7} {:>7}",
            "COMPONENT",
            "KIND",
            "TYPE",
            "IN",
            "OUT",
            "EVENTS IN",
            "ERRORS",
            "DROPPED",
            "QUEUE",
            "LAG",
            "LATE",
            "FUTURE",
            "CAPPED"
        );
        for component in pipeline["components"].as_array().into_iter().flatten() {
            let id = component["id"].as_str().unwrap_or_default();
            let stats = &component["stats"];
            let number = |field: &str| stats[field].as_f64().unwrap_or(0.0);
            let (in_before, out_before, _, _) = earlier
                .get(&(name.to_string(), id.to_string()))
                .copied()
                .unwrap_or_default();
            let lag = stats["watermark_micros"]
                .as_i64()
                .map(|w| format!("{:.1}s", (now_micros - w) as f64 / 1e6))
                .unwrap_or_else(|| "-".into());
            let counter = |name: &str| component["counters"][name].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<22} {:<9} {:<12} {:>10} {:>10} {:>12} {:>8} {:>8} {:>6} {:>8} {:>7} {:>7} {:>7}",
                id,
                component["kind"].as_str().unwrap_or_default(),
                component["type"].as_str().unwrap_or_default(),
                human_rate((number("events_in") - in_before).max(0.0) / seconds),
                human_rate((number("events_out") - out_before).max(0.0) / seconds),
                number("events_in") as u64,
                number("errors") as u64,
                number("dropped") as u64,
                number("queue_depth") as u64,
                lag,
                number("late") as u64,
                counter("future_events"),
                counter("keys_capped") + counter("keys_dropped")
            );
        }
        for component in pipeline["components"].as_array().into_iter().flatten() {
            if let Some(line) = degraded(component) {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

/// `degraded: …` for a component whose outside system (a database, a broker, a receiver) is
/// down, with what it holds meanwhile: rows it has taken in and not written, and batches
/// waiting in its input queue.
fn degraded(component: &Value) -> Option<String> {
    let stats = &component["stats"];
    if stats["connected"].as_bool() != Some(false) {
        return None;
    }
    let buffered: u64 = ["buffered_rows", "buffered_events"]
        .iter()
        .filter_map(|name| component["counters"][name].as_u64())
        .sum();
    let queued = stats["queue_depth"].as_u64().unwrap_or(0);
    let what = match component["kind"].as_str() {
        Some("sink") => "cannot write to its store",
        Some("source") => "cannot reach its broker",
        _ => "lost its connection",
    };
    Some(format!(
        "degraded: {} `{}` {what}; backlog {buffered} rows held, {queued} batches queued",
        component["kind"].as_str().unwrap_or("component"),
        component["id"].as_str().unwrap_or_default(),
    ))
}

async fn sample(client: &Client) -> anyhow::Result<Sample> {
    let (_, body) = client.get("/api/v1/pipelines").await?;
    Ok(Sample {
        at: Instant::now(),
        body,
    })
}

/// `pipeline status`.
pub async fn status(options: ClientOptions) -> anyhow::Result<ExitCode> {
    let client = Client::new(&options)?;
    let ready = match client.get("/ready").await {
        Ok((status, _)) => status == 200,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let before = sample(&client).await?;
    tokio::time::sleep(options.interval).await;
    let after = sample(&client).await?;
    let (_, health) = client.get("/api/v1/health").await?;
    print!("{}", render(&health, &before, &after));
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `pipeline top`.
pub async fn top(options: TopOptions) -> anyhow::Result<ExitCode> {
    let client = Client::new(&options.client)?;
    let mut before = sample(&client).await?;
    let mut refreshes = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(options.client.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
        let after = sample(&client).await?;
        let (_, health) = client.get("/api/v1/health").await?;
        // Clear the screen and draw from the top left.
        print!("\x1b[2J\x1b[H{}", render(&health, &before, &after));
        before = after;
        refreshes += 1;
        if options.iterations.is_some_and(|limit| refreshes >= limit) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnected_sink_is_degraded_with_its_backlog() {
        let sink = serde_json::json!({
            "id": "store", "kind": "sink", "type": "postgres",
            "stats": {"connected": false, "queue_depth": 7},
            "counters": {"retries": 3, "buffered_rows": 1200},
        });
        assert_eq!(
            degraded(&sink).as_deref(),
            Some("degraded: sink `store` cannot write to its store; backlog 1200 rows held, 7 batches queued")
        );
        let up = serde_json::json!({"id": "store", "kind": "sink", "stats": {"connected": true}});
        assert_eq!(degraded(&up), None);
        let unknown =
            serde_json::json!({"id": "file", "kind": "sink", "stats": {"connected": null}});
        assert_eq!(degraded(&unknown), None);
    }
}
