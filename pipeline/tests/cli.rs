//! The `pipeline` binary as a user runs it: validate (exit codes and located errors for every
//! kind of mistake), graph, query, and a short demo followed by a query of its history.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

fn pipeline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the pipeline binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_repository_pipelines_toml_is_valid() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines.toml");
    let output = pipeline(&["validate", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(": ok (2 pipelines: edge, central)"),
        "{stdout}"
    );
}

#[test]
fn every_example_config_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = pipeline(&["validate", path.to_str().unwrap()]);
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                stderr(&output)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn every_component_error_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        r#"[sources.calls]
type = "generator"
rate = 10.0

[operators.per_minute]
type = "window"
inputs = ["calls"]
size = "1m"
sise = "2m"

[operators.again]
type = "window"
inputs = ["summary"]
size = "1m"

[operators.summary]
type = "window"
inputs = ["calls"]
size = "1m"

[sinks.out]
type = "consol"
inputs = ["per_minute"]
"#,
    );
    let output = pipeline(&["validate", &file]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    // Unknown key, located at the key.
    assert!(
        text.contains(&format!(
            "{file}:9:1: operators.per_minute: unknown field `sise`"
        )),
        "{text}"
    );
    // Type mismatch: a window fed window results, which have no event_time / latency_ms.
    assert!(
        text.contains(&format!(
            "{file}:13:11: operators.again: the input cannot be windowed: no field `event_time`"
        )),
        "{text}"
    );
    // Unknown type, with the known ones listed.
    assert!(text.contains(&format!("{file}:22:8: sinks.out: unknown sink type `consol`; expected one of: api, console, email, null, parquet")), "{text}");
    assert!(text.contains("3 errors found"), "{text}");
}

#[test]
fn unknown_inputs_cycles_and_unset_variables_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(
        dir.path(),
        "unknown.toml",
        "[sources.calls]\ntype = \"generator\"\n\n[sinks.out]\ntype = \"console\"\ninputs = [\"calls\", \"cals\"]\n",
    );
    let text = stderr(&pipeline(&["validate", &unknown]));
    assert!(
        text.contains(&format!(
            "{unknown}:6:20: sinks.out: unknown input `cals`; expected one of: calls"
        )),
        "{text}"
    );

    let cycle = write(
        dir.path(),
        "cycle.toml",
        "[sources.calls]\ntype = \"generator\"\n[operators.a]\ntype = \"filter\"\ninputs = [\"b\"]\ncondition = \"true\"\n[operators.b]\ntype = \"filter\"\ninputs = [\"a\"]\ncondition = \"true\"\n",
    );
    let output = pipeline(&["validate", &cycle]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cycle in the pipeline: "),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(&format!("{cycle}:5:11: operators.a:"))
            || stderr(&output).contains(&format!("{cycle}:9:11: operators.b:")),
        "{}",
        stderr(&output)
    );

    let variable = write(
        dir.path(),
        "variable.toml",
        "[sources.calls]\ntype = \"file\"\npath = \"${SURELY_UNSET_PIPELINE_VAR}\"\n",
    );
    let text = stderr(&pipeline(&["validate", &variable]));
    assert!(
        text.contains(&format!(
            "{variable}:3:9: environment variable `SURELY_UNSET_PIPELINE_VAR` is not set"
        )),
        "{text}"
    );

    let filter = write(
        dir.path(),
        "filter.toml",
        "[sources.calls]\ntype = \"generator\"\n[operators.slow]\ntype = \"filter\"\ninputs = [\"calls\"]\ncondition = \"latency > 100\"\n",
    );
    let text = stderr(&pipeline(&["validate", &filter]));
    assert!(
        text.contains(&format!(
            "{filter}:6:13: operators.slow: invalid condition:"
        )),
        "{text}"
    );
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/generator.toml");
    let mermaid = pipeline(&["graph", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&mermaid.stdout);
    assert!(text.starts_with("flowchart LR"), "{text}");
    assert!(text.contains("per_10s -- late --> late_events"), "{text}");
    let dot = pipeline(&["graph", "--format", "dot", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&dot.stdout).contains("\"calls\" -> \"per_10s\";"));
}

#[test]
fn a_bad_query_prints_datafusions_message_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let output = pipeline(&[
        "query",
        "--data",
        dir.path().to_str().unwrap(),
        "SELECT * FROM nowhere",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("table 'datafusion.public.nowhere' not found"),
        "{}",
        stderr(&output)
    );
}

fn free_port() -> String {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

#[test]
fn the_demo_runs_and_its_history_answers_sql() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, proxy, admin, webhook) = (free_port(), free_port(), free_port(), free_port());
    let monitor = free_port();
    let output = pipeline(&[
        "demo",
        "--monitor-port",
        &monitor,
        "--webhook-port",
        &webhook,
        "--duration",
        "12s",
        "--api-port",
        &api,
        "--proxy-port",
        &proxy,
        "--proxy-admin-port",
        &admin,
        "--rate",
        "40",
        "--no-incidents",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let live = String::from_utf8_lossy(&output.stdout);
    assert!(
        live.contains("p95_latency_ms") && live.contains("gpt-4o"),
        "live view: {live}"
    );
    assert!(
        stderr(&output).contains("0 events dropped"),
        "{}",
        stderr(&output)
    );

    let query = pipeline(&[
        "query", "--data", data.to_str().unwrap(), "--format", "csv",
        "SELECT count(*) AS calls, count(DISTINCT model) AS models, sum(CASE WHEN ttft_ms IS NOT NULL THEN 1 ELSE 0 END) > 0 AS streamed FROM api_calls",
    ]);
    assert!(query.status.success(), "{}", stderr(&query));
    let csv = String::from_utf8_lossy(&query.stdout);
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let calls: u64 = row[0].parse().unwrap();
    assert!(calls > 300, "40 calls/s for 12 s gave {calls} events");
    assert_eq!(row[1], "3");
    assert_eq!(row[2], "true");
    let windows = pipeline(&[
        "query",
        "--data",
        data.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT sum(count) FROM window_metrics WHERE window = 'per_10s'",
    ]);
    let total: u64 = String::from_utf8_lossy(&windows.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        total, calls,
        "every call is counted in exactly one 10 s window"
    );
}

#[test]
fn sigterm_flushes_open_windows_and_sinks_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let api_port = free_port();
    let config = write(
        dir.path(),
        "live.toml",
        &format!(
            r#"[api]
listen = "127.0.0.1:{api_port}"

[sources.calls]
type = "generator"
rate = 200.0

[operators.per_hour]
type = "window"
inputs = ["calls"]
size = "1h"

[sinks.history]
type = "parquet"
inputs = ["per_hour"]
path = "{}"
max_file_age = "1h"
"#,
            data.display()
        ),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["run", "--config", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the window has taken in 400 calls (2 s at 200/s), from its Prometheus
    // counter.
    let client = reqwest::blocking::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let received = client
            .get(format!("http://127.0.0.1:{api_port}/metrics"))
            .send()
            .and_then(|r| r.text())
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| {
                        line.starts_with("pipeline_component_received_events_total{")
                            && line.contains("component=\"per_hour\"")
                    })
                    .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        if received >= 400.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the window took in only {received} calls"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Nothing can have been written yet: the hour-long window is still open.
    assert!(!data.join("window_metrics").exists());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("shutting down: flushing windows and sinks"),
        "{}",
        stderr(&output)
    );
    let query = pipeline(&[
        "query",
        "--data",
        data.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT sum(count) FROM window_metrics",
    ]);
    let flushed: u64 = String::from_utf8_lossy(&query.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        flushed >= 400,
        "the open window flushed only {flushed} of at least 400 events"
    );
}

#[test]
fn model_api_serves_the_simulated_api_until_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([
            "model-api",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--latency-ms",
            "1",
            "--error-rate",
            "0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::new();
    let mut health = None;
    for _ in 0..100 {
        if let Ok(response) = client.get(format!("http://127.0.0.1:{port}/health")).send() {
            health = Some(response.status());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(health, Some(reqwest::StatusCode::OK));
    let body: serde_json::Value = client
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .body(r#"{"model": "gpt-4o"}"#)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["model"], "gpt-4o");
    assert!(
        body["usage"]["completion_tokens"].as_u64().is_some(),
        "{body}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_demo_raises_alerts_and_delivers_them_signed_to_its_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, proxy, admin, webhook) = (free_port(), free_port(), free_port(), free_port());
    let monitor = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([
            "demo",
            // A 10-second window closes 3 s (its out-of-orderness) after its end: 26 s holds
            // at least one whole window during the incident wherever in a window the demo starts.
            "--duration",
            "26s",
            "--api-port",
            &api,
            "--proxy-port",
            &proxy,
            "--proxy-admin-port",
            &admin,
            "--webhook-port",
            &webhook,
            "--monitor-port",
            &monitor,
            "--rate",
            "40",
            "--incident",
            "error_burst@1s+24s:llama-3-70b",
            "--data",
            data.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the demo starts");
    // While it runs, the monitoring API shows the alert firing, with the predecessor's test key.
    let client = reqwest::blocking::Client::new();
    let alerts_url = format!("http://127.0.0.1:{monitor}/api/v1/alerts");
    let mut seen_in_api = false;
    for _ in 0..260 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Ok(response) = client
            .get(&alerts_url)
            .bearer_auth("test-api-key-12345")
            .send()
        else {
            continue;
        };
        let body: serde_json::Value = response.json().unwrap_or_default();
        if body["active"].as_array().is_some_and(|active| {
            active.iter().any(|a| {
                a["rule"] == "HighErrorRate"
                    && a["state"] == "firing"
                    && a["labels"]["model"] == "llama-3-70b"
            })
        }) {
            seen_in_api = true;
            break;
        }
    }
    let output = child.wait_with_output().expect("the demo ends");
    assert!(
        seen_in_api,
        "the API never showed the alert firing: {}",
        stderr(&output)
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let live = String::from_utf8_lossy(&output.stdout);
    // The live view shows the change, and the receiver printed the signed delivery.
    assert!(
        live.lines().any(|l| l.contains("firing")
            && l.contains("HighErrorRate")
            && l.contains("llama-3-70b")
            && !l.starts_with("[webhook]")),
        "live view: {live}"
    );
    assert!(
        live.lines()
            .any(|l| l.starts_with("[webhook] firing HighErrorRate")
                && l.contains("llama-3-70b")
                && l.contains("signature ok")),
        "receiver: {live}"
    );
    let summary = stderr(&output);
    let delivered: u64 = summary
        .split("alerts: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no alert summary: {summary}"));
    assert!(delivered >= 1, "{summary}");
    assert!(summary.contains("0 repeats, 0 refused"), "{summary}");
    // No alert for a model without an incident.
    assert!(
        !live.lines().any(|l| l.starts_with("[webhook]")
            && l.contains("HighErrorRate")
            && l.contains("gpt-4o")),
        "{live}"
    );
}

#[test]
fn api_settings_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[sources.calls]\ntype = \"generator\"\n\n[sinks.out]\ntype = \"null\"\ninputs = [\"calls\"]\n\n";
    let unknown = write(
        dir.path(),
        "unknown.toml",
        &format!("{base}[api]\nlisten = \"127.0.0.1:8001\"\nlisen = \"x\"\n"),
    );
    let text = stderr(&pipeline(&["validate", &unknown]));
    assert!(
        text.contains(&format!("{unknown}:10:1: api: unknown field `lisen`")),
        "{text}"
    );
    let short_key = write(
        dir.path(),
        "short.toml",
        &format!("{base}[api]\nkeys = [{{ name = \"ops\", key = \"short\" }}]\n"),
    );
    let text = stderr(&pipeline(&["validate", &short_key]));
    assert!(
        text.contains(&format!(
            "{short_key}:8:1: api: api.keys[0] (ops): `key` is shorter than 16 characters"
        )),
        "{text}"
    );
}
