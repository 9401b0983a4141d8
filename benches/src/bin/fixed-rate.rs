//! An open-loop load generator: sends POST requests at a fixed rate (not "as fast as the
//! server answers", which hides queueing) and measures each request's latency from the moment
//! it was scheduled, so a stall counts against every request it delays (no coordinated
//! omission). Sends are paced one per interval by a microsecond-precise tick (tokio's timer
//! ticks in milliseconds and would send bursts). Prints p50 / p90 / p99 / p99.9 / max for
//! each target URL, measured one after the other in the same run, in `--rounds` rounds (the
//! summary is the median of the rounds: a shared machine has slow spells); the first URL is
//! the baseline the others' added latency is computed against, round by round.
//!
//! cargo run --release -p benches --bin fixed-rate -- --rate 5000 --duration 10s URL...

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

use benches::ticker::{monotonic_now, Ticker};

#[derive(Parser)]
struct Options {
    /// Requests per second.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// How long to send to each target.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before measuring each target (connections, caches).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Rounds of measuring every target in turn; the summary gives the median of the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Target URLs; the first is the baseline.
    #[arg(required = true)]
    urls: Vec<String>,
}

const BODY: &str = r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#;

struct Summary {
    sent: usize,
    failed: usize,
    quantiles: Vec<(f64, f64)>,
    max_ms: f64,
}

async fn measure(url: &str, rate: f64, duration: Duration) -> anyhow::Result<Summary> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http();
    let uri: hyper::Uri = url.parse()?;
    let total = (rate * duration.as_secs_f64()) as usize;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Sends are paced by a microsecond-precise tick, one request per interval.
    let ticker = Ticker::new(interval)?;
    let mut tasks = Vec::with_capacity(total);
    while tasks.len() < total {
        let due = ticker.tick().await?;
        for _ in 0..due {
            if tasks.len() == total {
                break;
            }
            let scheduled = ticker.deadline(tasks.len() as u64);
            let client = client.clone();
            let uri = uri.clone();
            let latencies = latencies.clone();
            let failures = failures.clone();
            tasks.push(tokio::spawn(async move {
                let request = Request::post(uri)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                    .expect("a valid request");
                let ok = match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    // From the scheduled time: a late send is the server's (or the machine's) delay.
                    let latency = monotonic_now().saturating_sub(scheduled).as_secs_f64() * 1000.0;
                    latencies.lock().await.push(latency);
                } else {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
    }
    for task in tasks {
        task.await?;
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Summary {
        sent: total,
        failed: failures.load(std::sync::atomic::Ordering::Relaxed),
        quantiles: [0.5, 0.9, 0.99, 0.999]
            .iter()
            .map(|&q| (q, at(q)))
            .collect(),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "open loop, {} requests/s for {:?} per target (after {:?} warm-up), latency from the scheduled send time, {} round(s) of every target in turn",
            options.rate, options.duration, options.warmup, options.rounds
        );
        println!(
            "| {:>5} | {:<50} | {:>11} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>14} | {:>14} |",
            "round", "target", "failed", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "added p50 ms", "added p99 ms"
        );
        // Per target: (p50, p99, added p50, added p99) of each round.
        let mut rounds: Vec<Vec<[f64; 4]>> = vec![Vec::new(); options.urls.len()];
        for round in 1..=options.rounds {
            let mut baseline = (f64::NAN, f64::NAN);
            for (index, url) in options.urls.iter().enumerate() {
                measure(url, options.rate, options.warmup).await?;
                let summary = measure(url, options.rate, options.duration).await?;
                let p = |q: f64| {
                    summary
                        .quantiles
                        .iter()
                        .find(|(x, _)| *x == q)
                        .map_or(f64::NAN, |(_, v)| *v)
                };
                let (p50, p99) = (p(0.5), p(0.99));
                if index == 0 {
                    baseline = (p50, p99);
                }
                // Added latency is paired with the baseline of the same round, so that a
                // machine that is slower for a while weighs on both alike.
                let (added50, added99) = (p50 - baseline.0, p99 - baseline.1);
                rounds[index].push([p50, p99, added50, added99]);
                println!(
                    "| {:>5} | {:<50} | {:>11} | {:>9.3} | {:>9.3} | {:>9.3} | {:>9.3} | {:>9.3} | {:>14.3} | {:>14.3} |",
                    round,
                    url,
                    format!("{}/{}", summary.failed, summary.sent),
                    p50,
                    p(0.9),
                    p99,
                    p(0.999),
                    summary.max_ms,
                    added50,
                    added99
                );
            }
        }
        println!();
        println!("median over the rounds:");
        println!(
            "| {:<50} | {:>9} | {:>9} | {:>14} | {:>14} |",
            "target", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"
        );
        for (url, measured) in options.urls.iter().zip(&rounds) {
            let column = |i: usize| median(measured.iter().map(|m| m[i]).collect());
            println!(
                "| {:<50} | {:>9.3} | {:>9.3} | {:>14.3} | {:>14.3} |",
                url,
                column(0),
                column(1),
                column(2),
                column(3)
            );
        }
        anyhow::Ok(())
    })
}
