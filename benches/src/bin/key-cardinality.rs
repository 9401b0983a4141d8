//! What hostile key cardinality costs a window: `--keys` distinct model names (a scanner, a
//! client putting request ids in the model field) sent through a 1-minute window keyed by model
//! and endpoint, once with the default `max_keys` and once without a cap, each in a process of
//! its own so the resident memory of one does not hide in the other's. Reports the peak
//! resident memory, the keys held and the rows counted under `other`.
//!
//! cargo run --release -p benches --bin key-cardinality -- --keys 100000

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Parser;
use engine::component::{Collector, Operator};
use engine::metrics::ComponentMetrics;
use engine::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall};
use engine::schema::Outcome;
use operators::window::{Window, WindowConfig};

#[derive(Parser)]
struct Options {
    /// Distinct model names sent.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Calls per distinct name.
    #[arg(long, default_value_t = 3)]
    calls_per_key: usize,
    /// Run one measurement in this process: `capped` or `uncapped` (the parent runs both).
    #[arg(long)]
    run: Option<String>,
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn measure(options: &Options, capped: bool) {
    let settings = if capped {
        "size = \"1m\"\nkey = [\"model\", \"endpoint\"]".to_string()
    } else {
        format!(
            "size = \"1m\"\nkey = [\"model\", \"endpoint\"]\nmax_keys = {}",
            options.keys * 2
        )
    };
    let config: WindowConfig = toml::from_str(&settings).expect("window settings");
    let metrics = ComponentMetrics::new();
    let mut window = Window::new("w", &config, &api_call_schema(), metrics.clone())
        .expect("a window over api_call rows");
    let before = peak_rss_mib();
    // A whole minute in the past, so every call falls in one window.
    let start = (engine::time::now_micros() / 60_000_000 - 2) * 60_000_000;
    let mut out = Collector::default();
    let began = Instant::now();
    let total = options.keys * options.calls_per_key;
    let mut sent = 0;
    let mut batch = Vec::with_capacity(4096);
    for i in 0..total {
        batch.push(ApiCall {
            // Spread over 50 s inside one window, so every key is held at once.
            event_time: start + (i as i64 * 50_000_000 / total as i64),
            request_id: format!("r{i}"),
            model: Some(format!(
                "model-{:08x}",
                (i % options.keys) * 2_654_435_761 % (1 << 32)
            )),
            endpoint: Some("/v1/chat/completions".into()),
            outcome: Outcome::Ok,
            latency_ms: 10.0 + (i % 100) as f64,
            ..Default::default()
        });
        if batch.len() == 4096 || i + 1 == total {
            window
                .process(0, &api_calls_to_batch(&batch), &mut out)
                .expect("windowed");
            sent += batch.len();
            batch.clear();
        }
    }
    window.on_end(&mut out).expect("flushed");
    let (batches, _) = out.take();
    let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
    let named = metrics.named_values();
    println!(
        "| {:<10} | {:>8} | {:>10} | {:>10} | {:>14.1} | {:>8.2} s |",
        if capped {
            "max_keys = 10000 (default)"
        } else {
            "no cap"
        },
        sent,
        rows,
        named.get("keys_capped").copied().unwrap_or(0),
        peak_rss_mib() - before,
        began.elapsed().as_secs_f64()
    );
    let _ = metrics.watermark.load(Ordering::Relaxed);
}

fn main() {
    let options = Options::parse();
    match options.run.as_deref() {
        Some("capped") => return measure(&options, true),
        Some("uncapped") => return measure(&options, false),
        Some(other) => panic!("--run takes capped or uncapped, not {other}"),
        None => {}
    }
    println!(
        "{} distinct model names x {} calls through one 1-minute window keyed by model and endpoint",
        options.keys, options.calls_per_key
    );
    println!("| window | calls | rows out | rows under `other` | peak RSS added, MiB | time |");
    println!("|---|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("this program");
    for run in ["capped", "uncapped"] {
        let status = Command::new(&exe)
            .args([
                "--keys",
                &options.keys.to_string(),
                "--calls-per-key",
                &options.calls_per_key.to_string(),
                "--run",
                run,
            ])
            .status()
            .expect("a measuring process");
        assert!(status.success());
    }
}
