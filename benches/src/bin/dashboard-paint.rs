//! The dashboard's first meaningful paint with real history: starts `pipeline run` (the
//! release binary beside this one) over `--minutes` of simulated traffic for `--keys` models
//! (10-second windows into the live state and Parquet history), then loads the dashboard in
//! headless Chromium (`chromium`, driven over the DevTools protocol) `--runs` times with the
//! browser cache off, and reports for each load the page's own first-paint time (from the
//! start of the navigation to the first drawing with data) and how many points each chart
//! series had in it. Also prints the page's JavaScript size, raw and gzipped.
//!
//!   cargo build --release -p pipeline -p benches
//!   target/release/dashboard-paint --keys 50 --minutes 15 --runs 5

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use benches::http_get;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Options {
    /// Distinct models (one endpoint each): the dashboard's keys.
    #[arg(long, default_value_t = 50)]
    keys: usize,
    /// Minutes of history before now.
    #[arg(long, default_value_t = 15)]
    minutes: u64,
    /// Events per second of simulated time, over all keys.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Page loads measured.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Port for the pipeline's API.
    #[arg(long, default_value_t = 18411)]
    port: u16,
    /// Port for Chromium's DevTools.
    #[arg(long, default_value_t = 18412)]
    devtools_port: u16,
}

fn config(options: &Options, data: &std::path::Path) -> String {
    let start = chrono::Utc::now() - chrono::Duration::minutes(options.minutes as i64);
    let models: Vec<String> = (0..options.keys)
        .map(|i| format!("\"model-{i:02}\""))
        .collect();
    let count = (options.rate * options.minutes as f64 * 60.0) as u64;
    format!(
        r#"
[sources.calls]
type = "generator"
clock = "simulated"
start_time = "{start}"
rate = {rate}
count = {count}
models = [{models}]
endpoints = ["/v1/chat/completions"]
streaming_ratio = 0.6
seed = 7

[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"
key = ["model", "endpoint"]

[sinks.live]
type = "api"
inputs = ["per_10s"]

[sinks.history]
type = "parquet"
inputs = ["per_10s"]
path = "{data}"

[api]
listen = "127.0.0.1:{port}"
history = "{data}"
"#,
        start = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        rate = options.rate,
        models = models.join(", "),
        data = data.display(),
        port = options.port,
    )
}

/// A DevTools page session.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn command(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await?;
        while let Some(message) = self.socket.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let value: Value = serde_json::from_str(&text)?;
            if value["id"] == id {
                if let Some(error) = value.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(value["result"].clone());
            }
        }
        bail!("DevTools closed the connection")
    }

    /// The page's `dashboardState()`, or null before the page defines it.
    async fn state(&mut self) -> anyhow::Result<Value> {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({ "expression": "window.dashboardState ? window.dashboardState() : null",
                        "returnByValue": true }),
            )
            .await?;
        Ok(result["result"]["value"].clone())
    }
}

/// Waits until the pipeline has run through its history (every pipeline finished).
async fn wait_finished(base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Some((200, body)) = http_get(base, "/api/v1/pipelines").await {
            let value: Value = serde_json::from_str(&body).unwrap_or_default();
            let states: Vec<&str> = value["pipelines"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p["run"]["state"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if !states.is_empty() && states.iter().all(|s| *s == "finished") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the pipeline did not finish its history within 300 s")
}

fn gzipped_len(bytes: &[u8]) -> anyhow::Result<usize> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?.len())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let binary = benches::pipeline_binary()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let file = dir.path().join("paint.toml");
    std::fs::write(&file, config(&options, &data))?;
    let _server = tokio::process::Command::new(&binary)
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
    wait_finished(&base).await?;

    // The page's JavaScript: its inline script and uPlot.
    let (_, html) = http_get(&base, "/").await.context("GET /")?;
    let (_, uplot) = http_get(&base, "/assets/uplot.min.js")
        .await
        .context("GET /assets/uplot.min.js")?;
    let script = html
        .split("<script>")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap_or_default();
    let javascript = format!("{script}{uplot}");
    println!(
        "page JavaScript: {:.1} KB raw, {:.1} KB gzipped (inline script and uPlot)",
        javascript.len() as f64 / 1000.0,
        gzipped_len(javascript.as_bytes())? as f64 / 1000.0
    );

    let profile = dir.path().join("chromium");
    let _chromium = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1400,1100",
        ])
        .arg(format!("--remote-debugging-port={}", options.devtools_port))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting chromium (apt-get install chromium)")?;
    let devtools = format!("127.0.0.1:{}", options.devtools_port);
    let mut targets = Value::Null;
    for _ in 0..200 {
        if let Some((200, body)) = http_get(&devtools, "/json/list").await {
            targets = serde_json::from_str(&body).unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page_url = targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .context("Chromium has no page target")?
        .to_string();
    let (socket, _) = tokio_tungstenite::connect_async(page_url).await?;
    let mut page = Page { socket, next_id: 0 };
    page.command("Page.enable", json!({})).await?;
    page.command("Network.enable", json!({})).await?;
    page.command("Network.setCacheDisabled", json!({ "cacheDisabled": true }))
        .await?;

    println!(
        "{} keys, {} minutes of 10 s windows; {} cold page loads:",
        options.keys, options.minutes, options.runs
    );
    let mut paints = Vec::new();
    for run in 0..options.runs {
        page.command("Page.navigate", json!({ "url": "about:blank" }))
            .await?;
        let url = format!("http://{base}/?run={run}");
        page.command("Page.navigate", json!({ "url": url })).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let state = loop {
            let state = page.state().await?;
            if state["firstPaintMs"].is_number() {
                break state;
            }
            if Instant::now() > deadline {
                bail!("no first paint within 30 s: {state}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let paint = state["firstPaintMs"].as_f64().unwrap_or(f64::NAN);
        let series: Vec<u64> = state["firstPaintSeries"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let fewest = series.iter().min().copied().unwrap_or(0);
        println!(
            "  load {}: first meaningful paint {paint:.0} ms; {} series, the thinnest with {fewest} points",
            run + 1,
            series.len()
        );
        if fewest < 2 {
            bail!("the first drawing was not meaningful: a series with {fewest} points");
        }
        paints.push(paint);
    }
    paints.sort_by(f64::total_cmp);
    println!(
        "first meaningful paint: median {:.0} ms, worst {:.0} ms",
        paints[paints.len() / 2],
        paints[paints.len() - 1]
    );
    Ok(())
}
