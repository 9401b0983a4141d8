//! The Parquet history on S3-compatible object storage, written by a pipeline and read back with
//! `pipeline query`, against a local S3-compatible server (moto's `moto_server`, from PyPI:
//! `pip install 'moto[server]'`). Under CI=true a missing moto_server fails the test; elsewhere
//! the test is skipped with a message.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto(port: u16) -> Option<Server> {
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(Server(child)),
        Err(error) => {
            engine::testing::missing(
                "moto_server",
                format!("{error}; install it with pip install 'moto[server]'"),
            );
            None
        }
    }
}

fn pipeline(args: &[&str], endpoint: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args)
        .env("AWS_ENDPOINT", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("RUST_LOG")
        .output()
        .expect("the pipeline binary runs")
}

#[test]
fn history_on_s3_compatible_storage_is_written_and_queried() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(_moto) = start_moto(port) else {
        return;
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let mut created = false;
    for _ in 0..100 {
        if client
            .put(format!("{endpoint}/history-bucket"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            created = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(created, "moto_server did not come up on {endpoint}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("s3.toml");
    std::fs::write(
        &config,
        r#"[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-01-01T00:00:00Z"
rate = 1000.0
count = 5000
seed = 3

[operators.per_minute]
type = "window"
inputs = ["calls"]
size = "1m"

[sinks.raw]
type = "parquet"
inputs = ["calls"]
path = "s3://history-bucket/prod"

[sinks.windows]
type = "parquet"
inputs = ["per_minute"]
path = "s3://history-bucket/prod"
"#,
    )
    .unwrap();
    let run = pipeline(&["run", "--config", config.to_str().unwrap()], &endpoint);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let query = pipeline(
        &[
            "query",
            "--data",
            "s3://history-bucket/prod",
            "--format",
            "csv",
            "SELECT count(*) AS calls, (SELECT sum(count) FROM window_metrics) AS windowed, count(DISTINCT date) AS days FROM api_calls",
        ],
        &endpoint,
    );
    assert!(
        query.status.success(),
        "{}",
        String::from_utf8_lossy(&query.stderr)
    );
    let csv = String::from_utf8_lossy(&query.stdout);
    assert_eq!(csv.lines().nth(1), Some("5000,5000,1"), "{csv}");
}
