//! The HTTP API against a real run: a generated stream through 10 s windows and an alert rule
//! into `api` and Parquet sinks, served by the `[api]` server. Checks every endpoint with and
//! without keys, with the wrong scope, with bad parameters; refused SQL; the WebSocket feed and
//! its filter; CORS; and that `promtool check metrics` accepts `/metrics`.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::config::SourceText;
use futures::StreamExt;
use pipeline::api::live::LiveState;
use pipeline::api::{PipelineInfo, RunState};
use pipeline::commands::{check_file, run_pipelines, Checked};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const READ_KEY: &str = "read-key-0123456789abcdef";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

struct Running {
    base: String,
    address: std::net::SocketAddr,
    client: reqwest::Client,
    run: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<RunState>>,
    history: tempfile::TempDir,
}

fn config(history: &str) -> String {
    format!(
        r#"
[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-05-01T10:00:00Z"
rate = 200.0
count = 12000
models = ["gpt-4o", "llama-3-70b"]
seed = 11

[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"
key = ["model", "endpoint"]

[operators.alerts]
type = "alert"
inputs = ["per_10s"]
key = ["model", "endpoint"]

[[operators.alerts.rules]]
name = "Traffic"
condition = "count >= 1"
annotations = {{ summary = "{{{{model}}}} has traffic" }}

[sinks.live]
type = "api"
inputs = ["per_10s"]

[sinks.live_alerts]
type = "api"
inputs = ["alerts"]

[sinks.live_calls]
type = "api"
inputs = ["calls"]

[sinks.history]
type = "parquet"
inputs = ["per_10s"]
path = "{history}"
table = "window_metrics"

[api]
listen = "127.0.0.1:0"
history = "{history}"
rules_file = "{history}/rules.json"
cors_origins = ["https://grafana.example"]
query_max_rows = 5
heartbeat = "200ms"
keys = [
  {{ name = "grafana", key = "{READ_KEY}" }},
  {{ name = "ops", key = "{ADMIN_KEY}", scopes = ["read", "admin"] }},
]
"#
    )
}

/// Builds and serves the pipeline; `before_run` gets the base URL before any event flows.
async fn start<F, Fut>(before_run: F) -> (Running, Fut::Output)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future,
{
    start_in(tempfile::tempdir().expect("tempdir"), before_run).await
}

/// `start` with the history (and saved rules) in `history`.
async fn start_in<F, Fut>(history: tempfile::TempDir, before_run: F) -> (Running, Fut::Output)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future,
{
    let text = config(&history.path().display().to_string());
    start_with(text, 1024, history, before_run).await
}

/// Serves the pipeline of `text`, with WebSocket clients allowed `client_buffer` updates behind.
async fn start_with<F, Fut>(
    text: String,
    client_buffer: usize,
    history: tempfile::TempDir,
    before_run: F,
) -> (Running, Fut::Output)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future,
{
    let source = SourceText::new("api.toml", text, |_| None).expect("interpolates");
    let live = LiveState::new(client_buffer);
    let Checked { pipelines, api } = match check_file(&source, live.clone()) {
        Ok(checked) => checked,
        Err(errors) => panic!("config: {errors}"),
    };
    let mut settings = api.expect("[api] table");
    // This test binary has no `sql-worker` command: queries run in the real binary's.
    settings.query_worker = env!("CARGO_BIN_EXE_pipeline").into();
    let state = Arc::new(Mutex::new(RunState::Running));
    let infos = pipelines
        .iter()
        .map(|p| PipelineInfo {
            name: p.name.clone(),
            topology: p.topology(),
            metrics: p.metrics(),
            state: state.clone(),
        })
        .collect();
    let app = pipeline::api::state(settings, live, infos).expect("state");
    let (address, _server) = pipeline::api::start(app, CancellationToken::new())
        .await
        .expect("serves");
    let base = format!("http://{address}");
    let early = before_run(base.clone()).await;
    let states = HashMap::from([("main".to_string(), state.clone())]);
    let run = tokio::spawn(async move {
        run_pipelines(pipelines, &states, CancellationToken::new())
            .await
            .expect("runs");
    });
    let running = Running {
        base,
        address,
        client: reqwest::Client::new(),
        run,
        state,
        history,
    };
    (running, early)
}

impl Running {
    async fn finished(&mut self) {
        (&mut self.run).await.expect("the run task");
        assert_eq!(*self.state.lock().unwrap(), RunState::Finished);
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn sql(&self, sql: &str, key: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/v1/query", self.base))
            .header("x-api-key", key)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_with_keys_scopes_and_named_errors() {
    let (mut api, ()) = start(|_| async {}).await;
    let (status, body) = api.get("/health", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    api.finished().await;

    // Keys and scopes.
    let (status, body) = api.get("/api/v1/metrics/realtime", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("missing API key"), "{body}");
    let (status, _) = api.get("/api/v1/metrics/realtime", Some("wrong-key")).await;
    assert_eq!(status, 401);
    let (status, body) = api.sql("SELECT 1", READ_KEY).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("`grafana` lacks the `admin` scope"));

    // Live metrics, filtered.
    let (status, body) = api.get("/api/v1/metrics/realtime", Some(READ_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert!(results.len() >= 2, "{body}");
    let (_, only) = api
        .get("/api/v1/metrics/realtime?model=gpt-4o", Some(READ_KEY))
        .await;
    let only = only["results"].as_array().expect("results");
    assert!(!only.is_empty() && only.iter().all(|r| r["model"] == "gpt-4o"));
    assert!(only.len() < results.len());
    let (status, body) = api
        .get("/api/v1/metrics/realtime?modle=gpt-4o", Some(READ_KEY))
        .await;
    assert_eq!(status, 400);
    assert!(
        message(&body).starts_with("`modle`: unknown parameter"),
        "{body}"
    );

    // The summary adds up the latest results; the predecessor's path answers the same.
    let (status, summary) = api.get("/api/v1/metrics/summary", Some(READ_KEY)).await;
    assert_eq!(status, 200);
    let requests: f64 = results.iter().map(|r| r["count"].as_f64().unwrap()).sum();
    assert_eq!(
        summary["windows"]["per_10s"]["requests"].as_f64(),
        Some(requests),
        "{summary}"
    );
    let (_, alias) = api.get("/v1/metrics/summary", Some(READ_KEY)).await;
    assert_eq!(alias["windows"], summary["windows"]);

    // Alerts: the traffic rule fires for every key.
    let (status, alerts) = api.get("/api/v1/alerts", Some(READ_KEY)).await;
    assert_eq!(status, 200);
    let active = alerts["active"].as_array().expect("active");
    assert_eq!(active.len(), results.len(), "{alerts}");
    assert!(active.iter().all(|a| a["state"] == "firing"));
    assert!(!alerts["recent"].as_array().expect("recent").is_empty());

    // Topology, stats, health, readiness.
    let (_, pipelines) = api.get("/api/v1/pipelines", Some(READ_KEY)).await;
    let components = pipelines["pipelines"][0]["components"]
        .as_array()
        .expect("components");
    let window = components
        .iter()
        .find(|c| c["id"] == "per_10s")
        .expect("per_10s");
    assert_eq!(window["inputs"], serde_json::json!(["calls"]));
    assert_eq!(window["stats"]["events_in"], 12000);
    let calls_sink = components
        .iter()
        .find(|c| c["id"] == "live_calls")
        .expect("live_calls");
    assert_eq!(calls_sink["stats"]["events_in"], 12000, "counted once");
    assert_eq!(calls_sink["stats"]["events_out"], 12000);
    let (_, health) = api.get("/api/v1/health", Some(READ_KEY)).await;
    assert_eq!(health["status"], "unhealthy", "every pipeline has ended");
    let (status, ready) = api.get("/ready", None).await;
    assert_eq!(status, 503);
    assert_eq!(ready["pipelines"][0]["state"], "finished");
    let (status, body) = api.get("/api/v1/nothing", Some(READ_KEY)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reads_the_history_and_refuses_everything_else() {
    let (mut api, ()) = start(|_| async {}).await;
    api.finished().await;
    let (status, body) = api
        .sql("SELECT sum(count) AS calls FROM window_metrics", ADMIN_KEY)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["calls"], 12000);
    assert_eq!(body["columns"][0]["name"], "calls");

    let (status, body) = api.sql("SELECT * FROM window_metrics", ADMIN_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(body["row_count"], 5, "query_max_rows");
    assert_eq!(body["truncated"], true);

    for refused in [
        "DROP TABLE window_metrics",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/pipeline-api-test.csv'",
        "INSERT INTO window_metrics SELECT * FROM window_metrics",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let (status, body) = api.sql(refused, ADMIN_KEY).await;
        assert_eq!(status, 400, "{refused}: {body}");
        assert_eq!(body["error"], "refused", "{refused}: {body}");
    }
    for unreadable in [
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_csv('/etc/passwd')",
    ] {
        let (status, body) = api.sql(unreadable, ADMIN_KEY).await;
        assert_eq!(status, 400, "{unreadable}: {body}");
    }
    let response = api
        .client
        .post(format!("{}/api/v1/query", api.base))
        .header("x-api-key", ADMIN_KEY)
        .json(&serde_json::json!({ "query": "SELECT 1" }))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert!(message(&body).starts_with("`body`:"), "{body}");
    assert!(message(&body).contains("query"), "{body}");

    // The statements the refusal offers work.
    for offered in [
        "SHOW TABLES",
        "SHOW COLUMNS FROM window_metrics",
        "DESCRIBE window_metrics",
    ] {
        let (status, body) = api.sql(offered, ADMIN_KEY).await;
        assert_eq!(status, 200, "{offered}: {body}");
        assert!(
            body["row_count"].as_u64().unwrap_or(0) > 0,
            "{offered}: {body}"
        );
    }
    // A body over the limit is 413, with the JSON error shape.
    let address = api.base.trim_start_matches("http://").to_string();
    let (status, body) = common::post_head_only(
        &address,
        "/api/v1/query",
        50 * 1024 * 1024,
        &[("x-api-key", ADMIN_KEY)],
    )
    .await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_feed_sends_a_snapshot_then_filtered_updates() {
    let (mut api, (mut socket, mut unauthorised)) = start(|base| async move {
        let ws = base.replacen("http", "ws", 1);
        let (socket, _) = tokio_tungstenite::connect_async(format!(
            "{ws}/ws/metrics?model=gpt-4o&api_key={READ_KEY}"
        ))
        .await
        .expect("connects");
        let refused = tokio_tungstenite::connect_async(format!("{ws}/ws/metrics")).await;
        (socket, Some(refused))
    })
    .await;
    match unauthorised.take() {
        Some(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("a feed without a key was not refused: {other:?}"),
    }
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut models = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kinds.get("heartbeat").copied().unwrap_or(0) < 2
        || kinds.get("alert").copied().unwrap_or(0) == 0
    {
        let next = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("messages keep coming");
        let Some(Ok(Message::Text(text))) = next else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).expect("JSON");
        let kind = value["type"].as_str().unwrap_or_default().to_string();
        if kind == "window_result" {
            models.insert(
                value["data"]["model"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        if kind == "alert" {
            assert_eq!(value["data"]["labels"]["model"], "gpt-4o");
        }
        if kinds.is_empty() {
            assert_eq!(kind, "snapshot", "the first message is the snapshot");
        }
        *kinds.entry(kind).or_default() += 1;
    }
    assert!(kinds["window_result"] > 0, "{kinds:?}");
    assert_eq!(models.into_iter().collect::<Vec<_>>(), vec!["gpt-4o"]);
    api.finished().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_and_prometheus_metrics() {
    let (mut api, ()) = start(|_| async {}).await;
    api.finished().await;
    let preflight = api
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/alerts", api.base),
        )
        .header("origin", "https://grafana.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .expect("answers");
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://grafana.example")
    );
    let other = api
        .client
        .get(format!("{}/health", api.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("answers");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let response = api
        .client
        .get(format!("http://{}/metrics", api.address))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("text");
    assert!(
        text.contains(
            "pipeline_component_received_events_total{pipeline=\"main\",component=\"per_10s\",kind=\"operator\",type=\"window\"} 12000"
        ),
        "{text}"
    );
    assert!(text.contains("pipeline_running{pipeline=\"main\"} 0"));
    assert!(text.contains("# TYPE pipeline_checkpoint_duration_seconds gauge"));
    assert!(text.contains("pipeline_checkpoints_completed_total{pipeline=\"main\"}"));
    // The monitored APIs: one histogram count per call, TTFT for streamed calls, tokens.
    let calls: f64 = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(calls, 12000.0, "{text}");
    assert!(text.contains("# TYPE gen_ai_server_time_to_first_token_seconds histogram"));
    assert!(text.contains("le=\"0.005\"") && text.contains("le=\"+Inf\""));
    assert!(text.contains("gen_ai_server_token_usage_bucket{model=\"gpt-4o\""));
    assert!(text.contains("gen_ai_server_token_usage_sum{model=\"gpt-4o\""));
    assert!(
        !text.contains("counter_total"),
        "no metric name holds its type"
    );
    check_with_promtool(&text);
}

/// `promtool check metrics` (Debian's `prometheus` package; `.ci/run` installs it).
fn check_with_promtool(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            engine::testing::missing("promtool", format!("{error}; apt-get install prometheus"));
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool ends");
    // Exit 0 and nothing said: no lint finding either.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool: {said}");
    assert!(said.trim().is_empty(), "promtool: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_metrics_regroup_the_parquet_history() {
    let (mut api, ()) = start(|_| async {}).await;
    api.finished().await;
    let range = "from=2026-05-01T10:00:00Z&to=2026-05-01T10:05:00Z";
    let (status, body) = api
        .get(
            &format!("/api/v1/metrics/historical?{range}&step=1m"),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["window"], "per_10s", "the only window is chosen");
    let points = body["points"].as_array().expect("points");
    let total: f64 = points.iter().map(|p| p["requests"].as_f64().unwrap()).sum();
    assert_eq!(total, 12000.0, "{body}");
    // Tokens, spend and time to first token are in the buckets too, adding up to the windows'.
    let (status, sums) = api
        .sql(
            "SELECT sum(output_tokens) AS output_tokens, sum(input_tokens) AS input_tokens FROM window_metrics",
            ADMIN_KEY,
        )
        .await;
    assert_eq!(status, 200, "{sums}");
    for column in ["output_tokens", "input_tokens"] {
        let bucketed: f64 = points.iter().map(|p| p[column].as_f64().unwrap()).sum();
        assert!(bucketed > 0.0, "{column}: {body}");
        assert_eq!(
            bucketed,
            sums["rows"][0][column].as_f64().unwrap(),
            "{column}"
        );
    }
    assert!(
        points
            .iter()
            .all(|p| p["p95_ttft_ms"].as_f64().is_some_and(|v| v > 0.0)
                && p["p50_ttft_ms"].is_number()
                && p["ttft_count"].as_f64().is_some_and(|v| v > 0.0)),
        "{body}"
    );
    // One minute of events: every window falls in the 10:00 bucket, once per key.
    let times: std::collections::BTreeSet<&str> =
        points.iter().map(|p| p["time"].as_str().unwrap()).collect();
    assert_eq!(times.len(), 1, "{body}");
    assert!(
        times.first().unwrap().starts_with("2026-05-01T10:00:00"),
        "{body}"
    );

    let (_, gpt) = api
        .get(
            &format!("/api/v1/metrics/historical?{range}&step=10s&model=gpt-4o&window=per_10s"),
            Some(READ_KEY),
        )
        .await;
    let gpt = gpt["points"].as_array().expect("points");
    assert!(!gpt.is_empty() && gpt.iter().all(|p| p["model"] == "gpt-4o"));
    let gpt_total: f64 = gpt.iter().map(|p| p["requests"].as_f64().unwrap()).sum();
    assert!(gpt_total > 0.0 && gpt_total < 12000.0);

    for (query, field) in [
        (format!("{range}&step=soon"), "step"),
        (format!("{range}&step=500ms"), "step"),
        (
            "from=2026-05-01T11:00:00Z&to=2026-05-01T10:00:00Z".to_string(),
            "from",
        ),
        ("from=yesterday".to_string(), "from"),
        (
            "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&step=1s".to_string(),
            "step",
        ),
    ] {
        let (status, body) = api
            .get(
                &format!("/api/v1/metrics/historical?{query}"),
                Some(READ_KEY),
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            message(&body).starts_with(&format!("`{field}`")),
            "{query}: {body}"
        );
    }
}

fn pipeline_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args)
        .env_remove("PIPELINE_API_KEY")
        .env_remove("PIPELINE_API_URL")
        .output()
        .expect("the pipeline binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_top_show_a_running_instance() {
    let (mut api, ()) = start(|_| async {}).await;
    api.finished().await;
    let base = api.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        let status = pipeline_cli(&[
            "status",
            "--url",
            &base,
            "--api-key",
            READ_KEY,
            "--interval",
            "100ms",
        ]);
        let top = pipeline_cli(&[
            "top",
            "--url",
            &base,
            "--api-key",
            READ_KEY,
            "--interval",
            "100ms",
            "--iterations",
            "2",
        ]);
        let no_key = pipeline_cli(&["status", "--url", &base, "--interval", "10ms"]);
        (status, top, no_key)
    })
    .await
    .expect("joins");
    let (status, top, no_key) = output;
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(1),
        "not ready once the pipeline ended: {text}"
    );
    assert!(text.contains("pipeline main: finished"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("per_10s") && l.contains("window") && l.contains("12000")),
        "{text}"
    );
    let text = String::from_utf8_lossy(&top.stdout);
    assert_eq!(top.status.code(), Some(0));
    assert_eq!(
        text.matches("COMPONENT").count(),
        2,
        "two refreshes: {text}"
    );
    let text = String::from_utf8_lossy(&no_key.stderr);
    assert_ne!(no_key.status.code(), Some(0));
    assert!(text.contains("--api-key"), "{text}");

    let dead = pipeline_cli(&["status", "--url", "http://127.0.0.1:1"]);
    assert_eq!(dead.status.code(), Some(2));
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_change_through_the_api_apply_to_the_run_and_persist() {
    use reqwest::Method;
    let (mut api, ()) = start(|base| async move {
        let client = reqwest::Client::new();
        let rules = format!("{base}/api/v1/alerts/rules");
        // Reading needs read; changing needs admin.
        let (status, listed) = send(&client, Method::GET, rules.clone(), READ_KEY, None).await;
        assert_eq!(status, 200);
        assert_eq!(listed["operators"][0]["operator"], "operators.alerts");
        assert_eq!(listed["operators"][0]["rules"][0]["name"], "Traffic");
        let busy = serde_json::json!({
            "name": "Busy", "condition": "count >= 1", "severity": "critical",
            "labels": { "team": "inference" }
        });
        let (status, _) = send(
            &client,
            Method::POST,
            rules.clone(),
            READ_KEY,
            Some(busy.clone()),
        )
        .await;
        assert_eq!(status, 403);
        // A rule that does not compile is refused with the reason.
        let typo = serde_json::json!({ "name": "Typo", "condition": "p99_latency > 1" });
        let (status, body) =
            send(&client, Method::POST, rules.clone(), ADMIN_KEY, Some(typo)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_rule")),
            "{body}"
        );
        assert!(
            message(&body).starts_with("rule `Typo`: `condition`:"),
            "{body}"
        );
        // Names and texts have length limits, named in the answer.
        let long_name =
            serde_json::json!({ "name": "n".repeat(100_000), "condition": "count >= 1" });
        let (status, body) = send(
            &client,
            Method::POST,
            rules.clone(),
            ADMIN_KEY,
            Some(long_name),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            message(&body).starts_with("`name`: 100000 characters"),
            "{body}"
        );
        let long_summary = serde_json::json!({
            "name": "Long", "condition": "count >= 1",
            "annotations": { "summary": "s".repeat(5000) }
        });
        let (status, body) = send(
            &client,
            Method::POST,
            rules.clone(),
            ADMIN_KEY,
            Some(long_summary),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            message(&body).starts_with("`annotations.summary`:"),
            "{body}"
        );
        let unknown = serde_json::json!({ "name": "X", "condition": "count > 1", "sevrity": "x" });
        let (status, body) = send(
            &client,
            Method::POST,
            rules.clone(),
            ADMIN_KEY,
            Some(unknown),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            message(&body).starts_with("`body`:") && message(&body).contains("sevrity"),
            "{body}"
        );
        // Replace the traffic rule with Busy; the predecessor's configure adds two thresholds.
        let (status, _) = send(
            &client,
            Method::POST,
            rules.clone(),
            ADMIN_KEY,
            Some(busy.clone()),
        )
        .await;
        assert_eq!(status, 201);
        let (status, _) = send(&client, Method::POST, rules.clone(), ADMIN_KEY, Some(busy)).await;
        assert_eq!(status, 409);
        let (status, _) = send(
            &client,
            Method::DELETE,
            format!("{rules}/Traffic"),
            ADMIN_KEY,
            None,
        )
        .await;
        assert_eq!(status, 204);
        let (status, _) = send(
            &client,
            Method::DELETE,
            format!("{rules}/Traffic"),
            ADMIN_KEY,
            None,
        )
        .await;
        assert_eq!(status, 404);
        let configure = serde_json::json!({
            "metrics": ["response_time", "error_rate"],
            "thresholds": { "response_time_ms": 1, "error_rate_percent": 50.0 },
            "alert_channels": ["webhook"]
        });
        let (status, body) = send(
            &client,
            Method::POST,
            format!("{base}/api/v1/alerts/configure"),
            ADMIN_KEY,
            Some(configure),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let renamed = serde_json::json!({ "name": "Other", "condition": "count > 1" });
        let (status, body) = send(
            &client,
            Method::PUT,
            format!("{rules}/Busy"),
            ADMIN_KEY,
            Some(renamed),
        )
        .await;
        assert_eq!(status, 400);
        assert!(message(&body).starts_with("`name`"), "{body}");
    })
    .await;
    api.finished().await;
    let (_, alerts) = api.get("/api/v1/alerts", Some(READ_KEY)).await;
    let mut rules: Vec<&str> = alerts["active"]
        .as_array()
        .expect("active")
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    rules.sort();
    rules.dedup();
    assert_eq!(rules, vec!["Busy", "ResponseTimeThreshold"], "{alerts}");
    assert!(alerts["recent"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["rule"] != "Traffic"));

    // A restart with the same rules file runs the changed rules, not the file's.
    let history = std::mem::replace(&mut api.history, tempfile::tempdir().expect("tempdir"));
    let (mut again, ()) = start_in(history, |_| async {}).await;
    let (_, listed) = again.get("/api/v1/alerts/rules", Some(READ_KEY)).await;
    let names: Vec<&str> = listed["operators"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["Busy", "ResponseTimeThreshold", "ErrorRateThreshold"]
    );
    again.finished().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_docs_are_served() {
    let (mut api, ()) = start(|_| async {}).await;
    api.finished().await;
    let (status, document) = api.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut documented: Vec<String> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .expect("methods")
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    documented.sort();
    // Every documented operation is routed: the answer is never the router's own 404 or 405.
    for operation in &documented {
        let (method, path) = operation.split_once(' ').unwrap();
        let url = format!("{}{}", api.base, path.replace("{name}", "Nothing"));
        let response = api
            .client
            .request(method.parse().unwrap(), url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{operation}");
        assert!(
            status != 404 || body["error"] == "not_found" && message(&body).contains("Nothing"),
            "{operation}: {status} {body}"
        );
    }
    // And every route is documented.
    let routed = [
        "DELETE /api/v1/alerts/rules/{name}",
        "GET /",
        "GET /api/v1/alerts",
        "GET /api/v1/alerts/rules",
        "GET /api/v1/health",
        "GET /api/v1/metrics/historical",
        "GET /api/v1/metrics/realtime",
        "GET /api/v1/metrics/summary",
        "GET /api/v1/pipelines",
        "GET /docs",
        "GET /health",
        "GET /metrics",
        "GET /openapi.json",
        "GET /ready",
        "GET /v1/metrics/summary",
        "GET /ws/metrics",
        "POST /api/v1/alerts/configure",
        "POST /api/v1/alerts/rules",
        "POST /api/v1/query",
        "PUT /api/v1/alerts/rules/{name}",
    ];
    assert_eq!(documented, routed);
    let docs = api
        .client
        .get(format!("{}/docs", api.base))
        .send()
        .await
        .expect("answers");
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().contains("openapi.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_skipped_ahead_and_stalls_nobody() {
    // 100 keys x 1 s windows over 5 minutes of event time: about 30,000 updates, far more than
    // a client that never reads can hold in its socket buffers.
    let models: Vec<String> = (0..50).map(|i| format!("\"model-{i}\"")).collect();
    let text = format!(
        r#"
[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-05-01T10:00:00Z"
rate = 1000.0
count = 300000
models = [{}]
seed = 3

[operators.per_second]
type = "window"
inputs = ["calls"]
size = "1s"
key = ["model", "endpoint"]

[sinks.live]
type = "api"
inputs = ["per_second"]

[api]
listen = "127.0.0.1:0"
"#,
        models.join(", ")
    );
    let history = tempfile::tempdir().expect("tempdir");
    let (mut api, (stalled, reader)) = start_with(text, 64, history, |base| async move {
        let ws = base.replacen("http", "ws", 1);
        let (stalled, _) = tokio_tungstenite::connect_async(format!("{ws}/ws/metrics"))
            .await
            .expect("connects");
        let (mut reader, _) = tokio_tungstenite::connect_async(format!("{ws}/ws/metrics"))
            .await
            .expect("connects");
        // The reader counts every update while the run goes on.
        let counted = tokio::spawn(async move {
            let mut updates = 0u64;
            let mut lagged = 0u64;
            while let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(Duration::from_secs(5), reader.next()).await
            {
                let value: Value = serde_json::from_str(&text).expect("JSON");
                match value["type"].as_str() {
                    Some("window_result") => updates += 1,
                    Some("lagged") => lagged += value["skipped"].as_u64().unwrap_or(0),
                    _ => {}
                }
            }
            (updates, lagged)
        });
        (stalled, counted)
    })
    .await;
    // The pipeline finishes although one client reads nothing.
    tokio::time::timeout(Duration::from_secs(60), api.finished())
        .await
        .expect("the run is not held up by a stalled client");
    let (updates, lagged) = reader.await.expect("reader");
    let (_, pipelines) = api.get("/api/v1/pipelines", None).await;
    let results = pipelines["pipelines"][0]["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["id"] == "live")
        .and_then(|c| c["stats"]["events_in"].as_u64())
        .expect("the api sink's count");
    assert!(results > 25_000, "{results}");
    // Every update was either delivered or counted as skipped: nothing vanished silently.
    assert_eq!(
        updates + lagged,
        results,
        "{updates} updates, {lagged} skipped"
    );
    // The stalled client was skipped ahead (told so when it reads again) or, stuck for more
    // than 10 s, disconnected: either way it did not get everything.
    let mut stalled = stalled;
    let (mut received, mut skipped, mut closed) = (0u64, 0u64, false);
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stalled.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(&text).expect("JSON");
                match value["type"].as_str() {
                    Some("window_result") => received += 1,
                    Some("lagged") => skipped += value["skipped"].as_u64().unwrap_or(0),
                    _ => {}
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                closed = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
            Err(_) => break,
        }
    }
    assert!(received < results, "{received} of {results}");
    assert!(
        skipped > 0 || closed,
        "the stalled client was neither skipped ahead nor dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_sink_whose_receiver_is_down() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let history = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"
[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-05-01T10:00:00Z"
rate = 100.0
count = 3000

[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"
key = ["model"]

[operators.alerts]
type = "alert"
inputs = ["per_10s"]
key = ["model"]

[[operators.alerts.rules]]
name = "Traffic"
condition = "count >= 1"

[sinks.pager]
type = "webhook"
inputs = ["alerts"]
url = "http://127.0.0.1:{closed}/hook"
queue_dir = "{}"
retry_initial = "50ms"
drain_timeout = "1s"

[api]
listen = "127.0.0.1:0"
"#,
        history.path().join("queue").display()
    );
    let (api, ()) = start_with(text, 64, history, |_| async {}).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let (status, ready) = api.get("/ready", None).await;
        if ready["disconnected"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "main/pager"))
        {
            assert_eq!(status, 503);
            break ready;
        }
        assert!(Instant::now() < deadline, "never reported down: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pager = ready["connections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["component"] == "pager"))
        .expect("the webhook's connection");
    assert_eq!(pager["connected"], false);
    assert_eq!(pager["type"], "webhook");
    let (_, health) = api.get("/api/v1/health", None).await;
    assert_ne!(health["status"], "healthy", "{health}");
}

/// A database that is down: `pipeline status` names the sink as degraded with what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_sink_whose_database_is_down_as_degraded_with_its_backlog() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let history = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"
[sources.calls]
type = "generator"
rate = 500.0

[sinks.store]
type = "postgres"
inputs = ["calls"]
url = "postgres://postgres@127.0.0.1:{closed}/test"
batch_size = 10
flush_interval = "50ms"
retry_initial = "50ms"
retry_max = "200ms"

[api]
listen = "127.0.0.1:0"
"#
    );
    let (api, ()) = start_with(text, 4, history, |_| async {}).await;
    let base = api.base.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let base = base.clone();
        let status = tokio::task::spawn_blocking(move || {
            pipeline_cli(&[
                "status",
                "--url",
                &base,
                "--api-key",
                READ_KEY,
                "--interval",
                "10ms",
            ])
        })
        .await
        .expect("joins");
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        let line = text
            .lines()
            .find(|l| l.starts_with("degraded: sink `store` cannot write to its store"));
        let backlog = line.map(|line| {
            line.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>()
        });
        if backlog.is_some_and(|n| n > 0) {
            assert_eq!(status.status.code(), Some(1), "not ready: {text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink was never shown degraded with a backlog: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_metrics_from_postgresql_when_it_is_the_history() {
    const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    if let Err(error) = tokio_postgres::connect(URL, tokio_postgres::NoTls).await {
        engine::testing::missing(&format!("PostgreSQL at {URL}"), error);
        return;
    }
    let schema = format!("api_history_{}", std::process::id());
    let text = format!(
        r#"
[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-05-01T10:00:00Z"
rate = 200.0
count = 12000
models = ["gpt-4o", "llama-3-70b"]
seed = 11

[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"
key = ["model", "endpoint"]

[sinks.db]
type = "timescaledb"
inputs = ["per_10s"]
url = "{URL}"
schema = "{schema}"

[api]
listen = "127.0.0.1:0"
history_db = "{URL}"
history_db_schema = "{schema}"
"#
    );
    let history = tempfile::tempdir().expect("tempdir");
    let (mut api, ()) = start_with(text, 64, history, |_| async {}).await;
    api.finished().await;
    let range = "from=2026-05-01T10:00:00Z&to=2026-05-01T10:05:00Z";
    let (status, body) = api
        .get(&format!("/api/v1/metrics/historical?{range}&step=1m"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["window"], "per_10s");
    let points = body["points"].as_array().expect("points");
    let total: f64 = points.iter().map(|p| p["requests"].as_f64().unwrap()).sum();
    assert_eq!(total, 12000.0, "{body}");
    assert!(points.iter().all(|p| p["time"]
        .as_str()
        .unwrap()
        .starts_with("2026-05-01T10:00:00")));
    assert!(
        points
            .iter()
            .all(|p| p["p95_ttft_ms"].as_f64().is_some_and(|v| v > 0.0)
                && p["output_tokens"].as_f64().is_some_and(|v| v > 0.0)),
        "{body}"
    );
    let (_, gpt) = api
        .get(
            &format!("/api/v1/metrics/historical?{range}&step=10s&model=gpt-4o"),
            None,
        )
        .await;
    let gpt = gpt["points"].as_array().expect("points");
    assert!(!gpt.is_empty() && gpt.iter().all(|p| p["model"] == "gpt-4o"));
    let (client, connection) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_queries_are_held_to_their_memory_and_time_limits() {
    let text = r#"
[sources.calls]
type = "generator"
clock = "simulated"
count = 100

[sinks.out]
type = "null"
inputs = ["calls"]

[api]
listen = "127.0.0.1:0"
query_memory_mib = 1
# Long enough that the sort below runs out of memory first even on a loaded machine.
query_timeout = "3s"
"#
    .to_string();
    let history = tempfile::tempdir().expect("tempdir");
    let (mut api, ()) = start_with(text, 64, history, |_| async {}).await;
    api.finished().await;
    let (status, body) = api
        .sql(
            "SELECT value FROM generate_series(1, 5000000) ORDER BY value DESC LIMIT 10000000",
            "anything",
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("query_too_large")),
        "{body}"
    );
    assert!(message(&body).contains("query_memory_mib"), "{body}");
    let (status, body) = api
        .sql(
            "SELECT count(*) FROM generate_series(1, 100000000000) a",
            "anything",
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (408, Some("query_timeout")),
        "{body}"
    );
    assert!(message(&body).contains("3s"), "{body}");
}
