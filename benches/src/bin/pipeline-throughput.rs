//! End-to-end throughput of a whole in-process pipeline: generator → windows with percentiles →
//! null sink, against generator → null sink in the same run (the cost of producing events),
//! on a runtime with a chosen number of worker threads.
//!
//! cargo run --release -p benches --bin pipeline-throughput -- --events 20000000 --threads 1

use std::time::Instant;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Options {
    /// Events to push through each pipeline.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Worker threads of the async runtime (cores used).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
}

fn config(events: u64, batch_size: usize, with_windows: bool) -> String {
    let mut text = format!(
        r#"
[runtime]
checkpoint_interval = "0s"

[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-01-01T00:00:00Z"
rate = 100000.0
count = {events}
batch_size = {batch_size}
seed = 1
"#
    );
    if with_windows {
        text.push_str(
            r#"
[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"

[operators.per_minute]
type = "window"
inputs = ["calls"]
size = "1m"

[sinks.out]
type = "null"
inputs = ["per_10s", "per_minute"]
"#,
        );
    } else {
        text.push_str("\n[sinks.out]\ntype = \"null\"\ninputs = [\"calls\"]\n");
    }
    text
}

async fn measure(text: &str) -> anyhow::Result<(f64, u64)> {
    let pipeline = benches::build_pipeline("bench.toml", text)?;
    let started = Instant::now();
    let report = pipeline.run(CancellationToken::new()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let events = report
        .component("calls")
        .map_or(0, |c| c.metrics.events_out);
    Ok((seconds, events))
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (base_s, base_n) = measure(&config(options.events, options.batch_size, false)).await?;
        let (full_s, full_n) = measure(&config(options.events, options.batch_size, true)).await?;
        println!("threads: {}", options.threads);
        println!(
            "generator -> null:                                 {base_n} events in {base_s:.2} s = {:.0} events/s",
            base_n as f64 / base_s
        );
        println!(
            "generator -> windows 10s + 1m (p50/90/95/99) -> null: {full_n} events in {full_s:.2} s = {:.0} events/s",
            full_n as f64 / full_s
        );
        anyhow::Ok(())
    })
}
