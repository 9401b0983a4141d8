//! The dashboard in a real headless Chromium (Debian's `chromium`; `.ci/run` installs it),
//! driven over the DevTools protocol against a running `pipeline demo` with an injected error
//! burst: the page connects with the demo's key, its charts receive data, the incident's alert
//! appears in its active alerts, and a screenshot is saved as a test artifact
//! (`target/test-artifacts/dashboard.png`, or `$PIPELINE_TEST_ARTIFACTS`).
//! Under CI=true a missing Chromium fails the test; elsewhere it is skipped with a message.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("Chromium is required under CI: apt-get install chromium");
        }
        eprintln!("skipped: no Chromium (apt-get install chromium)");
    }
    found
}

/// Kills the process when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(url: &str, limit: Duration) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(response) = client.get(url).send().await {
            if let Ok(body) = response.json::<Value>().await {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "{url} did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one DevTools command and returns its result.
async fn command(socket: &mut Socket, id: u64, method: &str, params: Value) -> Value {
    let request = json!({ "id": id, "method": method, "params": params }).to_string();
    socket
        .send(Message::Text(request.into()))
        .await
        .expect("send");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("DevTools answers")
            .expect("open")
            .expect("message");
        let Message::Text(text) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).expect("JSON");
        if value["id"] == id {
            assert!(value.get("error").is_none(), "{method}: {value}");
            return value["result"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_charts_and_the_incidents_alert() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let monitor = free_port();
    let ports: Vec<String> = (0..4).map(|_| free_port().to_string()).collect();
    let _demo = Process(
        Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["demo", "--duration", "150s", "--rate", "40"])
            .args(["--monitor-port", &monitor.to_string()])
            .args(["--api-port", &ports[0], "--proxy-port", &ports[1]])
            .args(["--proxy-admin-port", &ports[2], "--webhook-port", &ports[3]])
            .args(["--incident", "error_burst@1s+140s:llama-3-70b"])
            .arg("--data")
            .arg(dir.path().join("data"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts"),
    );
    wait_for(
        &format!("http://127.0.0.1:{monitor}/health"),
        Duration::from_secs(20),
    )
    .await;

    let devtools = free_port();
    let _chromium = Process(
        Command::new(browser)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1400,1100",
            ])
            .arg(format!("--remote-debugging-port={devtools}"))
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("chromium").display()
            ))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts"),
    );
    let targets = wait_for(
        &format!("http://127.0.0.1:{devtools}/json/list"),
        Duration::from_secs(20),
    )
    .await;
    let page = targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page target")
        .to_string();
    let (mut socket, _) = tokio_tungstenite::connect_async(page)
        .await
        .expect("DevTools connects");
    let url = format!("http://127.0.0.1:{monitor}/#key=test-api-key-12345");
    command(&mut socket, 1, "Page.enable", json!({})).await;
    command(&mut socket, 2, "Page.navigate", json!({ "url": url })).await;

    // Generous: on a loaded CI machine the charts have been seen one point short at 45 s. The
    // demo and its incident outlast the deadline, so the alert is still firing at the end.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut id = 10;
    let state = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        id += 1;
        let result = command(
            &mut socket,
            id,
            "Runtime.evaluate",
            json!({
                "expression": "window.dashboardState ? JSON.stringify(window.dashboardState()) : null",
                "returnByValue": true
            }),
        )
        .await;
        let state: Value = result["result"]["value"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null);
        let charted = state["points"].as_u64().unwrap_or(0) >= 12;
        let alerted = state["activeAlerts"].as_array().is_some_and(|alerts| {
            alerts
                .iter()
                .any(|a| a == "firing HighErrorRate llama-3-70b")
        });
        if charted && alerted {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed data and the alert: {state}"
        );
    };
    assert_eq!(state["status"], "live", "{state}");

    id += 1;
    let shot = command(
        &mut socket,
        id,
        "Page.captureScreenshot",
        json!({ "format": "png" }),
    )
    .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("image data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let artifacts = std::env::var_os("PIPELINE_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
        });
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    let path = artifacts.join("dashboard.png");
    std::fs::write(&path, png).expect("screenshot written");
    eprintln!("dashboard screenshot: {}", path.display());
}
