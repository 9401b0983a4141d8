//! The cost of checkpoints: the same in-process pipeline (generator → windows of 10 s and 1 m
//! per model and endpoint, plus anomaly scoring and alert rules over the 10 s results → null
//! sinks) run for a fixed time with checkpoints off and with checkpoints every `--interval`
//! saving every operator's state to a local directory, alternating, in the same process.
//! Reports events/s of each, the loss, checkpoint durations and state size.
//!
//! cargo run --release -p benches --bin checkpoint-cost -- --duration 60s --rounds 2

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Options {
    /// How long each measured run lasts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Runs of each kind, alternating (off, on, off, on, ...).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Checkpoint interval of the runs with checkpoints.
    #[arg(long, default_value = "10s")]
    interval: String,
    /// Worker threads of the async runtime (cores used).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn config(interval: &str, dir: Option<&str>) -> String {
    let state = dir
        .map(|d| format!("checkpoint_dir = \"{d}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[runtime]
checkpoint_interval = "{interval}"
{state}
[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-01-01T00:00:00Z"
rate = 20000.0
count = 100000000000
batch_size = 4096
seed = 1

[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"

[operators.per_minute]
type = "window"
inputs = ["calls"]
size = "1m"

[operators.scores]
type = "anomaly"
inputs = ["per_10s"]
detectors = [{{ field = "p95_latency_ms", method = "robust" }}, {{ field = "error_rate", method = "seasonal", season = "1h", slot = "1m" }}]

[operators.alerts]
type = "alert"
inputs = ["scores"]
[[operators.alerts.rules]]
name = "HighP99"
condition = "p99_latency_ms > 2000"
for = "1m"

[sinks.out]
type = "null"
inputs = ["per_minute", "alerts"]
"#
    )
}

struct Measured {
    events_per_sec: f64,
    checkpoints: u64,
    last_duration: Duration,
    state_bytes: u64,
}

async fn measure(text: &str, duration: Duration) -> anyhow::Result<Measured> {
    let pipeline = benches::build_pipeline("bench.toml", text)?;
    let metrics = pipeline.metrics();
    let stop = CancellationToken::new();
    let (_handle, run) = pipeline.start(stop.clone());
    let task = tokio::spawn(run);
    // Measure the steady state: skip the first second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = || metrics.get("calls").map_or(0, |c| c.snapshot().events_out);
    let (first, started) = (events(), Instant::now());
    tokio::time::sleep(duration).await;
    let (last, seconds) = (events(), started.elapsed().as_secs_f64());
    stop.cancel();
    let report = task.await??;
    Ok(Measured {
        events_per_sec: (last - first) as f64 / seconds,
        checkpoints: report.checkpoints.completed,
        last_duration: report.checkpoints.last_duration.unwrap_or_default(),
        state_bytes: metrics.checkpoints.last_state_bytes.load(Ordering::Relaxed),
    })
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut off = Vec::new();
        let mut on = Vec::new();
        for round in 0..options.rounds {
            let dir = tempfile::tempdir()?;
            let plain = measure(&config("0s", None), options.duration).await?;
            println!(
                "round {round}: checkpoints off: {:.0} events/s",
                plain.events_per_sec
            );
            off.push(plain.events_per_sec);
            let text = config(&options.interval, Some(&dir.path().display().to_string()));
            let saved = measure(&text, options.duration).await?;
            println!(
                "round {round}: checkpoints every {}: {:.0} events/s, {} checkpoints, last took {:.1} ms, {} bytes of state",
                options.interval,
                saved.events_per_sec,
                saved.checkpoints,
                saved.last_duration.as_secs_f64() * 1e3,
                saved.state_bytes
            );
            on.push(saved.events_per_sec);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (off, on) = (mean(&off), mean(&on));
        println!(
            "mean: off {off:.0} events/s, on {on:.0} events/s, throughput loss {:.2}%",
            (1.0 - on / off) * 100.0
        );
        anyhow::Ok(())
    })
}
