//! Credentials a client sends through the proxy (`Authorization`, `x-api-key`, `api-key`,
//! `x-goog-api-key`, a `?key=` query) reach the upstream and nothing else: not an event, not a
//! log line (at debug level), not the console, Parquet, PostgreSQL, Redis or a RabbitMQ
//! message. The `pipeline` binary runs a proxy feeding every store; afterwards each store is
//! read back whole and searched for the secrets, and for the events themselves, so the test
//! fails if nothing was written. Under CI=true a missing service fails the test.

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use tokio_postgres::NoTls;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SECRETS: [&str; 5] = [
    "sk-proj-SECRET0000openai",
    "sk-ant-SECRET1111anthropic",
    "SECRET2222azure",
    "AIzaSECRET3333gemini",
    "SECRET4444query",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A model API that records the credentials it was sent.
async fn upstream(received: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let mut seen = received.lock().unwrap();
                        for name in ["authorization", "x-api-key", "api-key", "x-goog-api-key"] {
                            if let Some(value) = request.headers().get(name) {
                                seen.push(value.to_str().unwrap_or_default().to_string());
                            }
                        }
                        if let Some(query) = request.uri().query() {
                            seen.push(query.to_string());
                        }
                        let status = if request.uri().path() == "/fail" {
                            500
                        } else {
                            200
                        };
                        let mut response = Response::new(Full::new(Bytes::from_static(
                            br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
                        )));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        response
                            .headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

fn redis_dump(prefix: &str) -> Option<String> {
    let keys = Command::new("redis-cli")
        .args(["--raw", "--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mut dump = String::new();
    for key in String::from_utf8_lossy(&keys.stdout).lines() {
        let kind = Command::new("redis-cli")
            .args(["--raw", "TYPE", key])
            .output()
            .unwrap();
        let kind = String::from_utf8_lossy(&kind.stdout).trim().to_string();
        let args: Vec<&str> = match kind.as_str() {
            "string" => vec!["GET", key],
            "hash" => vec!["HGETALL", key],
            "list" => vec!["LRANGE", key, "0", "-1"],
            "zset" => vec!["ZRANGE", key, "0", "-1", "WITHSCORES"],
            "set" => vec!["SMEMBERS", key],
            _ => continue,
        };
        let value = Command::new("redis-cli")
            .arg("--raw")
            .args(&args)
            .output()
            .unwrap();
        dump.push_str(key);
        dump.push('\n');
        dump.push_str(&String::from_utf8_lossy(&value.stdout));
    }
    Some(dump)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_an_event_a_log_or_a_store() {
    let Ok((pg, connection)) = tokio_postgres::connect(PG, NoTls).await else {
        engine::testing::missing(
            "PostgreSQL at 127.0.0.1:5432",
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        );
        return;
    };
    tokio::spawn(connection);
    let Ok(broker) = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await
    else {
        engine::testing::missing("RabbitMQ at 127.0.0.1:5672", "rabbitmq-server -detached");
        return;
    };
    if redis_dump("probe").is_none() {
        engine::testing::missing(
            "Redis at 127.0.0.1:6379 (and redis-cli)",
            "redis-server --daemonize yes",
        );
        return;
    }
    let received = Arc::new(Mutex::new(Vec::new()));
    let upstream_port = upstream(received.clone()).await;
    let (proxy_port, admin_port) = (free_port(), free_port());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (schema, queue, prefix) = (
        format!("secrets_{id}"),
        format!("secrets-{id}"),
        format!("secrets-{id}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    let config = format!(
        r#"
[runtime]
checkpoint_interval = "0s"

[sources.calls]
type = "proxy"
listen = "127.0.0.1:{proxy_port}"
admin_listen = "127.0.0.1:{admin_port}"
upstream = "http://127.0.0.1:{upstream_port}"
client_id_header = "authorization"
linger = "20ms"

[operators.per_second]
type = "window"
inputs = ["calls"]
size = "1s"
key = ["model", "endpoint", "client_id"]
out_of_orderness = "0s"

[sinks.console]
type = "console"
inputs = ["calls"]
format = "json"

[sinks.parquet]
type = "parquet"
inputs = ["calls"]
path = "{data}"

[sinks.db]
type = "timescaledb"
inputs = ["calls"]
url = "{PG}"
schema = "{schema}"

[sinks.db_windows]
type = "timescaledb"
inputs = ["per_second"]
url = "{PG}"
schema = "{schema}"

[sinks.live]
type = "redis"
inputs = ["per_second"]
key_prefix = "{prefix}"

[sinks.broker]
type = "rabbitmq"
inputs = ["calls"]
url = "{AMQP}"
exchange = ""
routing_key = "{queue}"
queue = "{queue}"
encoding = "json"
"#,
        data = data.display()
    );
    let config_path = dir.path().join("pipelines.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([
            "--log-dir",
            logs.to_str().unwrap(),
            "run",
            "-c",
            config_path.to_str().unwrap(),
        ])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("http://127.0.0.1:{admin_port}/health"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the proxy never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for round in 0..5 {
        let path = if round == 4 {
            "/fail"
        } else {
            "/v1/chat/completions"
        };
        let response = client
            .post(format!("{proxy}{path}?key={}", SECRETS[4]))
            .header("authorization", format!("Bearer {}", SECRETS[0]))
            .header("x-api-key", SECRETS[1])
            .header("api-key", SECRETS[2])
            .header("x-goog-api-key", SECRETS[3])
            .body(r#"{"model": "gpt-4o", "messages": []}"#)
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap();
    }
    // The five events are in the pipeline once the proxy's admin endpoint counts them; on
    // SIGINT it flushes them through every sink.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health: serde_json::Value = client
            .get(format!("http://127.0.0.1:{admin_port}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = health["events"].as_u64().unwrap_or(0);
        if events >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{events} of 5 events reached the pipeline: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGINT: the pipeline flushes every window and sink, then exits.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "the pipeline failed: {stderr}");

    // The upstream got every credential.
    let received = received.lock().unwrap().join("\n");
    for secret in SECRETS {
        assert!(
            received.contains(secret),
            "the upstream did not get {secret}"
        );
    }

    let mut stores: Vec<(&str, String)> =
        vec![("stdout (console sink)", stdout), ("stderr (logs)", stderr)];
    let mut log_files = String::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        log_files.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    stores.push(("log files", log_files));
    let parquet = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([
            "query",
            "--data",
            data.to_str().unwrap(),
            "--format",
            "json",
            "SELECT * FROM api_calls",
        ])
        .output()
        .unwrap();
    assert!(
        parquet.status.success(),
        "{}",
        String::from_utf8_lossy(&parquet.stderr)
    );
    stores.push((
        "Parquet",
        String::from_utf8_lossy(&parquet.stdout).to_string(),
    ));
    let mut database = String::new();
    for table in ["api_calls", "window_metrics"] {
        for row in pg
            .query(
                &format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"),
                &[],
            )
            .await
            .unwrap()
        {
            database.push_str(row.get::<_, &str>(0));
            database.push('\n');
        }
    }
    stores.push(("PostgreSQL", database));
    stores.push(("Redis", redis_dump(&prefix).unwrap()));
    let channel = broker.create_channel().await.unwrap();
    let mut messages = String::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        messages.push_str(&String::from_utf8_lossy(&message.delivery.data));
        messages.push('\n');
    }
    stores.push(("RabbitMQ", messages));

    for (store, text) in &stores {
        // Every store holds the calls (five of them, one failed) and their hashed client id;
        // the logs hold what the pipeline said.
        if store.contains("log") {
            assert!(text.contains("proxy listening"), "{store} is empty");
        } else {
            assert!(
                text.contains("gpt-4o") && text.contains("sha256:"),
                "{store} holds no event: {}",
                &text[..text.len().min(2000)]
            );
        }
        for secret in SECRETS {
            assert!(!text.contains(secret), "{store} leaks {secret}");
        }
        // Not even a piece of one.
        assert!(
            !text.contains("SECRET"),
            "{store} leaks part of a credential"
        );
    }
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = pg
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await;
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("redis-cli --scan --pattern '{prefix}:*' | xargs -r redis-cli DEL"),
        ])
        .output();
}
