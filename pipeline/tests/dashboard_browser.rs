//! The dashboard in a real headless Chromium (Debian's `chromium`; `.ci/run` installs it),
//! driven over the DevTools protocol against a running `pipeline demo` with an injected error
//! burst: the page connects with the demo's key, its charts receive data, the incident's alert
//! appears in its active alerts, its event-time table lists the components that keep a
//! watermark, and screenshots are saved as test artifacts (`target/test-artifacts/`, or
//! `$PIPELINE_TEST_ARTIFACTS`). Also at 768 and 390 px wide (no sideways scroll); across a
//! restart of the server (the page says "reconnecting…", comes back live and backfills its
//! history); and with a wrong key (the page says the key was refused).
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
        engine::testing::missing("Chromium", "apt-get install chromium");
    }
    found
}

/// `pipeline demo` on fixed ports, writing under `dir`, with an error burst on llama-3-70b.
fn start_demo(monitor: u16, ports: &[String], dir: &std::path::Path, duration: &str) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["demo", "--duration", duration, "--rate", "40"])
            .args(["--monitor-port", &monitor.to_string()])
            .args(["--api-port", &ports[0], "--proxy-port", &ports[1]])
            .args(["--proxy-admin-port", &ports[2], "--webhook-port", &ports[3]])
            .args(["--incident", "error_burst@1s+140s:llama-3-70b"])
            .arg("--data")
            .arg(dir.join("data"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts"),
    )
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

/// A DevTools session with one page, which keeps every JavaScript exception the page throws.
struct Page {
    socket: Socket,
    next_id: u64,
    exceptions: Vec<String>,
}

impl Page {
    /// Sends one DevTools command and returns its result.
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket
            .send(Message::Text(request.into()))
            .await
            .expect("send");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("open")
                .expect("message");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).expect("JSON");
            match value["method"].as_str() {
                Some("Runtime.exceptionThrown") => self
                    .exceptions
                    .push(value["params"]["exceptionDetails"].to_string()),
                Some("Runtime.consoleAPICalled") if value["params"]["type"] == "error" => {
                    self.exceptions.push(value["params"]["args"].to_string())
                }
                _ => {}
            }
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    /// `window.dashboardState()`, or null before the page's script has run.
    async fn dashboard_state(&mut self) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({
                    "expression": "window.dashboardState ? JSON.stringify(window.dashboardState()) : null",
                    "returnByValue": true
                }),
            )
            .await;
        result["result"]["value"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null)
    }

    /// Polls the page's state until `done` holds, failing with `what` at the deadline.
    async fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.dashboard_state().await;
            if done(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "{what}: {state}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .command("Page.captureScreenshot", json!({ "format": "png" }))
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
        let path = artifacts.join(name);
        std::fs::write(&path, png).expect("screenshot written");
        eprintln!("dashboard screenshot: {}", path.display());
    }
}

/// Every chart's series with fewer than two points, as "chart/series".
fn thin_series(state: &Value) -> Vec<String> {
    let mut thin = Vec::new();
    for chart in state["charts"].as_array().into_iter().flatten() {
        for series in chart["series"].as_array().into_iter().flatten() {
            if series["points"].as_u64().unwrap_or(0) < 2 {
                thin.push(format!("{}/{}", chart["id"], series["label"]));
            }
        }
    }
    thin
}

/// Whether every chart's legend names each of its series.
fn legends_name_every_series(state: &Value) -> bool {
    state["charts"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|chart| {
            let legend = chart["legend"].as_array().cloned().unwrap_or_default();
            chart["series"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|series| legend.contains(&series["label"]))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_charts_and_the_incidents_alert() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let monitor = free_port();
    let ports: Vec<String> = (0..4).map(|_| free_port().to_string()).collect();
    let mut demo = start_demo(monitor, &ports, dir.path(), "150s");
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
    let (socket, _) = tokio_tungstenite::connect_async(page)
        .await
        .expect("DevTools connects");
    let mut page = Page {
        socket,
        next_id: 0,
        exceptions: Vec::new(),
    };
    page.command("Page.enable", json!({})).await;
    page.command("Runtime.enable", json!({})).await;

    // Let the demo record a few 10 s windows first (three per key, seen through the API): the
    // page must show them on load.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    while seen.len() < 3 || seen.values().any(|starts| starts.len() < 3) {
        assert!(
            Instant::now() < deadline,
            "the demo recorded too few windows: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(response) = client
            .get(format!(
                "http://127.0.0.1:{monitor}/api/v1/metrics/realtime?window=per_10s"
            ))
            .bearer_auth("test-api-key-12345")
            .send()
            .await
        else {
            continue;
        };
        let Ok(body) = response.json::<Value>().await else {
            continue;
        };
        for row in body["results"].as_array().into_iter().flatten() {
            let key = format!("{}|{}", row["model"], row["endpoint"]);
            seen.entry(key)
                .or_default()
                .insert(row["window_start"].to_string());
        }
    }
    let url = format!("http://127.0.0.1:{monitor}/#key=test-api-key-12345");
    page.command("Page.navigate", json!({ "url": url })).await;

    // On load, in the first drawing: every series of every chart has more than one point, from
    // the snapshot of recent windows and the history, without waiting for new windows.
    let loaded = page
        .wait_until(
            "the charts were never drawn",
            Duration::from_secs(20),
            |state| state["charts"].as_array().is_some_and(|c| c.len() >= 4),
        )
        .await;
    eprintln!(
        "first paint after {} ms; history: {}",
        loaded["firstPaintMs"], loaded["history"]
    );
    let thin = thin_series(&loaded);
    assert!(
        thin.is_empty(),
        "on load these series had one point or none: {thin:?} in {loaded}"
    );
    assert!(legends_name_every_series(&loaded), "{loaded}");
    assert!(loaded["keyRows"].as_u64().unwrap_or(0) >= 2, "{loaded}");

    // Live: new windows arrive over the WebSocket, the incident's alert fires, and the
    // event-time table names the components that keep a watermark (the windows).
    let state = page
        .wait_until(
            "the dashboard never showed live updates, the alert and event time",
            Duration::from_secs(120),
            |state| {
                let alerted = state["activeAlerts"].as_array().is_some_and(|alerts| {
                    alerts
                        .iter()
                        .any(|a| a == "firing HighErrorRate llama-3-70b")
                });
                let timed = state["eventTime"]
                    .as_array()
                    .is_some_and(|components| !components.is_empty());
                state["updates"].as_u64().unwrap_or(0) > 0 && alerted && timed
            },
        )
        .await;
    assert_eq!(state["status"], "live", "{state}");
    assert!(legends_name_every_series(&state), "{state}");
    assert!(
        state["alertSpans"].as_u64().unwrap_or(0) >= 1,
        "the firing period is shaded: {state}"
    );
    assert_eq!(state["horizontalScroll"], false, "{state}");
    page.screenshot("dashboard.png").await;

    // A tablet, 768 px wide.
    page.command(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 768, "height": 1024, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    page.wait_until(
        "at 768 px the page scrolls sideways",
        Duration::from_secs(10),
        |state| state["horizontalScroll"] == false && thin_series(state).is_empty(),
    )
    .await;

    // A phone, 390 px wide: nothing scrolls sideways, the charts redraw at its width.
    page.command(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    )
    .await;
    let phone = page
        .wait_until(
            "at 390 px the page scrolls sideways",
            Duration::from_secs(10),
            |state| state["horizontalScroll"] == false && thin_series(state).is_empty(),
        )
        .await;
    assert!(legends_name_every_series(&phone), "{phone}");
    page.screenshot("dashboard-390.png").await;

    // The server restarts: the page says so, reconnects by itself, asks the history again for
    // what it missed, and carries on live with every series still drawn.
    let before = page.dashboard_state().await;
    drop(demo);
    page.wait_until(
        "the page never said it was reconnecting",
        Duration::from_secs(15),
        |state| {
            state["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("reconnecting"))
        },
    )
    .await;
    demo = start_demo(monitor, &ports, dir.path(), "90s");
    let updates_before = before["updates"].as_u64().unwrap_or(0);
    let loads_before = before["history"]["loads"].as_u64().unwrap_or(0);
    let back = page
        .wait_until(
            "the page did not come back live after the restart",
            Duration::from_secs(60),
            |state| {
                state["status"] == "live"
                    && state["snapshots"].as_u64().unwrap_or(0) >= 2
                    && state["history"]["loads"].as_u64().unwrap_or(0) > loads_before
                    && state["updates"].as_u64().unwrap_or(0) > updates_before
            },
        )
        .await;
    let thin = thin_series(&back);
    assert!(thin.is_empty(), "after the restart: {thin:?} in {back}");
    assert!(legends_name_every_series(&back), "{back}");

    // A wrong key: the page says the key was refused instead of spinning.
    let wrong = format!("http://127.0.0.1:{monitor}/?reload#key=not-the-key");
    page.command("Page.navigate", json!({ "url": wrong })).await;
    page.wait_until(
        "a wrong key was not reported",
        Duration::from_secs(15),
        |state| {
            state["status"]
                .as_str()
                .is_some_and(|s| s.contains("API key was refused"))
        },
    )
    .await;
    drop(demo);

    let errors = back["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.is_empty(), "the page's own errors: {errors:?}");
    assert!(
        page.exceptions.is_empty(),
        "JavaScript errors in the console: {:?}",
        page.exceptions
    );
}
