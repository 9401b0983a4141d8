//! An open-loop load generator: sends POST requests at a fixed rate (not "as fast as the
//! server answers", which hides queueing) and measures each request's latency from the moment
//! it was scheduled, so a stall counts against every request it delays (no coordinated
//! omission). Sends are paced one per interval by a microsecond-precise tick (tokio's timer
//! ticks in milliseconds and would send bursts). Prints p50 / p90 / p99 / p99.9 / max for
//! each target URL in `--rounds` rounds (the summary is the median of the rounds, with a 95 %
//! confidence interval for the added latency's median); the first URL is the baseline the
//! others' added latency is computed against, round by round.
//!
//! Within a round the targets take turns in short slices (`--slice`, 1 s: the first target for
//! a slice, then the second, ..., then the first again) until each has had `--duration`, and a
//! target's figures pool its slices. A shared machine has slow spells of a few seconds; measured
//! one whole target after another, a spell lands on one target and decides its p99, while in
//! slices it weighs on every target alike.
//!
//! `https://` targets are called over TLS (HTTP/1.1, sessions resumed), verified against
//! `--ca-file`.
//!
//! cargo run --release -p benches --bin fixed-rate -- --rate 5000 --duration 10s URL...

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

use benches::median_interval::median_with_interval;
use benches::ticker::{monotonic_now, Ticker};

#[derive(Parser)]
struct Options {
    /// Requests per second.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// How long to send to each target in a round (in slices taken in turn).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each turn of a target lasts; `--duration` to measure one whole target after
    /// another.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    slice: Duration,
    /// Warm-up of each target at the start of a round (connections, caches), not measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Rounds of measuring every target; the summary gives the median of the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// PEM file of the CA that `https://` targets' certificates chain to.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Target URLs; the first is the baseline.
    #[arg(required = true)]
    urls: Vec<String>,
}

/// The TLS client settings for `https://` targets.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for certificate in rustls::pki_types::CertificateDer::pem_file_iter(path)? {
            roots.add(certificate?)?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

const BODY: &str = r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#;

/// One target and the client (with its pooled connections) it is measured through for a round.
struct Target {
    uri: hyper::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Target {
    fn new(url: &str, tls: &rustls::ClientConfig) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            uri: url.parse()?,
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(connector),
        })
    }
}

/// What a target's slices of a round measured.
#[derive(Default)]
struct Measured {
    latencies_ms: Vec<f64>,
    sent: usize,
    failed: usize,
}

struct Summary {
    sent: usize,
    failed: usize,
    quantiles: Vec<(f64, f64)>,
    max_ms: f64,
}

impl Measured {
    fn summary(mut self) -> Summary {
        self.latencies_ms.sort_by(f64::total_cmp);
        let latencies = &self.latencies_ms;
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        Summary {
            sent: self.sent,
            failed: self.failed,
            quantiles: [0.5, 0.9, 0.99, 0.999]
                .iter()
                .map(|&q| (q, at(q)))
                .collect(),
            max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Sends to `target` at `rate` for `duration` and adds what it measured to `into`.
async fn send_at_rate(
    target: &Target,
    rate: f64,
    duration: Duration,
    into: &mut Measured,
) -> anyhow::Result<()> {
    let total = (rate * duration.as_secs_f64()) as usize;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failures = Arc::new(AtomicUsize::new(0));
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
            let client = target.client.clone();
            let uri = target.uri.clone();
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
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for task in tasks {
        task.await?;
    }
    into.sent += total;
    into.failed += failures.load(Ordering::Relaxed);
    into.latencies_ms
        .append(&mut std::mem::take(&mut *latencies.lock().await));
    Ok(())
}

/// One round: every target warmed up, then measured in turns of `slice` until each has had
/// `duration`.
async fn measure_round(options: &Options) -> anyhow::Result<Vec<Summary>> {
    let tls = tls_config(options.ca_file.as_deref())?;
    let targets = options
        .urls
        .iter()
        .map(|url| Target::new(url, &tls))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for target in &targets {
        send_at_rate(
            target,
            options.rate,
            options.warmup,
            &mut Measured::default(),
        )
        .await?;
    }
    let mut measured: Vec<Measured> = targets.iter().map(|_| Measured::default()).collect();
    let slice = options
        .slice
        .min(options.duration)
        .max(Duration::from_millis(1));
    let mut elapsed = Duration::ZERO;
    while elapsed < options.duration {
        let turn = slice.min(options.duration - elapsed);
        for (target, into) in targets.iter().zip(&mut measured) {
            send_at_rate(target, options.rate, turn, into).await?;
        }
        elapsed += turn;
    }
    Ok(measured.into_iter().map(Measured::summary).collect())
}

/// One column's median over the rounds, and the 95 % interval for that median (from six
/// rounds on).
fn median_column(values: &[f64]) -> (String, String) {
    match median_with_interval(values) {
        None => ("-".to_string(), "-".to_string()),
        Some(summary) => (
            format!("{:.3}", summary.median),
            summary.interval.map_or_else(
                || "(6+ rounds)".to_string(),
                |(low, high)| format!("{low:.3} – {high:.3}"),
            ),
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "open loop, {} requests/s for {:?} per target in turns of {:?} (after {:?} warm-up), latency from the scheduled send time, {} round(s)",
            options.rate, options.duration, options.slice, options.warmup, options.rounds
        );
        println!(
            "| {:>5} | {:<50} | {:>11} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>14} | {:>14} |",
            "round", "target", "failed", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "added p50 ms", "added p99 ms"
        );
        // Per target: (p50, p99, added p50, added p99) of each round.
        let mut rounds: Vec<Vec<[f64; 4]>> = vec![Vec::new(); options.urls.len()];
        for round in 1..=options.rounds {
            let summaries = measure_round(&options).await?;
            let mut baseline = (f64::NAN, f64::NAN);
            for (index, (url, summary)) in options.urls.iter().zip(summaries).enumerate() {
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
        println!(
            "median over the rounds, with the 95 % confidence interval for the added latency's median (sign test, from 6 rounds):"
        );
        println!(
            "| {:<50} | {:>9} | {:>9} | {:>14} | {:>17} | {:>14} | {:>17} |",
            "target",
            "p50 ms",
            "p99 ms",
            "added p50 ms",
            "95 % interval",
            "added p99 ms",
            "95 % interval"
        );
        for (url, measured) in options.urls.iter().zip(&rounds) {
            let column = |i: usize| median_column(&measured.iter().map(|m| m[i]).collect::<Vec<_>>());
            let (added50, added99) = (column(2), column(3));
            println!(
                "| {:<50} | {:>9} | {:>9} | {:>14} | {:>17} | {:>14} | {:>17} |",
                url,
                column(0).0,
                column(1).0,
                added50.0,
                added50.1,
                added99.0,
                added99.1
            );
        }
        anyhow::Ok(())
    })
}
