//! WebSocket feed latency and fan-out: starts `pipeline run` (the release binary beside this
//! one) with a wall-clock generator, 1-second windows and an `api` sink, connects `--clients`
//! WebSocket clients to `/ws/metrics`, and for every window result each client receives
//! records how long after the window's end it arrived — the wait from the last event of a
//! window entering the pipeline to its result reaching the client. Prints the percentiles over
//! every (client, update) pair, and whether every client got every update.
//!
//!   ulimit -n 20000
//!   cargo run --release -p benches --bin ws-fanout -- --clients 10000 --duration 30s

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Options {
    /// WebSocket clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Events per second the generator produces.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// How long updates are measured, after every client is connected.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Port for the pipeline's API.
    #[arg(long, default_value_t = 18401)]
    port: u16,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    latencies_ms: Vec<f64>,
    updates: u64,
    lagged: u64,
}

fn config(rate: f64, port: u16) -> String {
    format!(
        r#"
[runtime]
tick_interval = "20ms"

[sources.calls]
type = "generator"
clock = "wall"
rate = {rate}
batch_size = 50
models = ["gpt-4o", "llama-3-70b", "claude-3", "mistral-large"]

[operators.per_second]
type = "window"
inputs = ["calls"]
size = "1s"
key = ["model", "endpoint"]
out_of_orderness = "0s"

[sinks.live]
type = "api"
inputs = ["per_second"]

[api]
listen = "127.0.0.1:{port}"
client_buffer = 4096
heartbeat = "60s"
"#
    )
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let binary = benches::pipeline_binary()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("fanout.toml");
    std::fs::write(&file, config(options.rate, options.port))?;
    let mut server = tokio::process::Command::new(&binary)
        .arg("run")
        .arg("-c")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting pipeline run")?;
    let base = format!("127.0.0.1:{}", options.port);
    wait_for_health(&base).await?;

    // Connect every client before measuring.
    let started = Instant::now();
    let url = format!("ws://{base}/ws/metrics");
    let mut sockets = Vec::with_capacity(options.clients);
    for chunk in 0..options.clients.div_ceil(250) {
        let batch = (chunk * 250..((chunk + 1) * 250).min(options.clients))
            .map(|_| tokio_tungstenite::connect_async(url.clone()));
        for result in futures::future::join_all(batch).await {
            sockets.push(result.context("a WebSocket client could not connect")?.0);
        }
    }
    let connect_time = started.elapsed();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..options.clients).map(|_| Arc::default()).collect();
    let measuring_from = chrono::Utc::now().timestamp_millis() + 1500;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500) + options.duration;
    let mut tasks = Vec::new();
    for (mut socket, seen) in sockets.into_iter().zip(seen.iter().cloned()) {
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await
            {
                let Message::Text(text) = message else {
                    continue;
                };
                let now = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
                // Only the two fields needed, without parsing the whole message.
                let kind = if text.contains("\"type\":\"window_result\"") {
                    Some("window_result")
                } else if text.contains("\"type\":\"lagged\"") {
                    Some("lagged")
                } else {
                    None
                };
                match kind {
                    Some("window_result") => {
                        let end = text
                            .split("\"window_end\":\"")
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.timestamp_micros() as f64 / 1000.0);
                        if let Some(end) = end.filter(|&e| e >= measuring_from as f64) {
                            let mut seen = seen.lock().await;
                            seen.latencies_ms.push(now - end);
                            seen.updates += 1;
                        }
                    }
                    Some("lagged") => seen.lock().await.lagged += 1,
                    _ => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let _ = server.start_kill();

    let mut all = Vec::new();
    let (mut fewest, mut most, mut lagged) = (u64::MAX, 0, 0);
    for seen in &seen {
        let seen = seen.lock().await;
        all.extend_from_slice(&seen.latencies_ms);
        fewest = fewest.min(seen.updates);
        most = most.max(seen.updates);
        lagged += seen.lagged;
    }
    all.sort_by(f64::total_cmp);
    println!(
        "clients {} (connected in {:.1} s), rate {} events/s, 1 s windows, measured {} ({:.1} updates/s per client)",
        options.clients,
        connect_time.as_secs_f64(),
        options.rate,
        humantime::format_duration(options.duration),
        most as f64 / options.duration.as_secs_f64()
    );
    println!(
        "updates per client: min {fewest}, max {most}; lagged notices {lagged}; deliveries {}",
        all.len()
    );
    println!(
        "window end -> client: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; within 1 s: {:.4}%",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all.last().copied().unwrap_or(f64::NAN),
        100.0 * all.iter().filter(|&&l| l <= 1000.0).count() as f64 / all.len().max(1) as f64
    );
    Ok(())
}

/// Waits until the pipeline's API answers `/health` (with a bare HTTP/1.1 request).
async fn wait_for_health(base: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Some((200, _)) = benches::http_get(base, "/health").await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the pipeline's API did not come up on {base}")
}
