//! Exactly-once across crashes, against the real RabbitMQ, PostgreSQL and a local webhook
//! receiver: the same input is consumed by an uninterrupted `pipeline` process and by one that
//! is killed with SIGKILL at random points and started again each time. Window results in
//! PostgreSQL and in Parquet must be identical row for row (counts, error rates, quantiles,
//! revisions), the raw calls in PostgreSQL and Parquet must each be there once (distinct request
//! ids = rows = calls sent), and every alert notification must reach the receiver exactly once.
//! The kill points are drawn from a seeded generator: the seed is printed, and `TEST_SEED=N`
//! draws the same ones again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::util::display::array_value_to_string;
use axum::http::HeaderMap;
use common::*;
use engine::schema::api_call::ApiCall;
use engine::schema::Outcome;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use rand::{Rng, SeedableRng};

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const MESSAGES: usize = 600;
const PER_MESSAGE: usize = 20;
const MS: i64 = 1_000;

/// The calls of message `m`: three models, 50 ms apart with up to 3 s of disorder (so some
/// windows are revised by late rows), and an error burst on model `b` that raises an alert.
fn message_calls(m: usize) -> Vec<ApiCall> {
    (0..PER_MESSAGE)
        .map(|i| {
            let j = m * PER_MESSAGE + i;
            let model = ["a", "b", "c"][j % 3];
            let disorder = ((j as i64 * 2_654_435_761) % 61) * 50 * MS;
            let burst = (4_000..6_500).contains(&j) && model == "b" && j.is_multiple_of(2);
            ApiCall {
                event_time: T0 + j as i64 * 50 * MS - disorder,
                request_id: format!("req-{j}"),
                model: Some(model.into()),
                endpoint: Some("/v1/chat/completions".into()),
                method: Some("POST".into()),
                status_code: Some(if burst { 503 } else { 200 }),
                outcome: if burst {
                    Outcome::ServerError
                } else {
                    Outcome::Ok
                },
                latency_ms: 20.0 + ((j * 31) % 400) as f64 + if burst { 900.0 } else { 0.0 },
                ..Default::default()
            }
        })
        .collect()
}

async fn publish_input(channel: &lapin::Channel, queue: &str) {
    declare_queue(channel, queue).await;
    for m in 0..=MESSAGES {
        let calls = if m < MESSAGES {
            message_calls(m)
        } else {
            // Far ahead: moves the watermark past every window above.
            let mut last = message_calls(0);
            last.truncate(1);
            last[0].event_time = T0 + 3_600_000 * MS;
            last[0].request_id = "sentinel".into();
            last
        };
        let body = engine::codec::encode_api_calls_json(calls.iter()).unwrap();
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(format!("msg-{m}").into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A webhook receiver recording each delivery's idempotency key.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let store = store.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                store.lock().unwrap().push(key);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

struct Run {
    dir: PathBuf,
    config: PathBuf,
    queue: String,
    schema: String,
    received: Arc<Mutex<Vec<String>>>,
}

async fn prepare(channel: &lapin::Channel, name: &str) -> Run {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let queue = unique(name);
    let schema = unique(name).replace('-', "_");
    publish_input(channel, &queue).await;
    let (url, received) = receiver().await;
    let config = dir.join("pipelines.toml");
    let text = format!(
        r#"
[runtime]
checkpoint_interval = "300ms"
checkpoint_dir = "{dir}/checkpoints"

[sources.calls]
type = "rabbitmq"
url = "{AMQP}"
queue = "{queue}"
prefetch = 4
batch_size = 100
linger = "20ms"

[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"
key = ["model"]
out_of_orderness = "500ms"
allowed_lateness = "5s"
idle_timeout = "1h"
quantiles = [0.5, 0.95, 0.99]

[operators.alerts]
type = "alert"
inputs = ["per_10s"]
key = ["model"]
[[operators.alerts.rules]]
name = "HighErrorRate"
condition = "error_rate > 0.3"
for = "20s"

[sinks.db]
type = "postgres"
inputs = ["per_10s"]
url = "{POSTGRES}"
schema = "{schema}"
flush_interval = "100ms"

[sinks.files]
type = "parquet"
inputs = ["per_10s"]
path = "{dir}/data"

[sinks.db_calls]
type = "postgres"
inputs = ["calls"]
url = "{POSTGRES}"
schema = "{schema}"
flush_interval = "100ms"

[sinks.files_calls]
type = "parquet"
inputs = ["calls"]
path = "{dir}/data"

[sinks.hook]
type = "webhook"
inputs = ["alerts"]
url = "{url}"
queue_dir = "{dir}/webhook"
retry_initial = "50ms"
"#,
        dir = dir.display()
    );
    std::fs::write(&config, text).unwrap();
    Run {
        dir,
        config,
        queue,
        schema,
        received,
    }
}

fn start(run: &Run, attempt: usize) -> Child {
    let log = std::fs::File::create(run.dir.join(format!("run-{attempt}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["run", "--config", run.config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn log_of(run: &Run, attempt: usize) -> String {
    std::fs::read_to_string(run.dir.join(format!("run-{attempt}.log"))).unwrap_or_default()
}

/// Window rows in PostgreSQL, one line each, sorted (the sentinel's window aside).
async fn database_rows(schema: &str) -> Vec<String> {
    let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let query = format!(
        "SELECT model, extract(epoch FROM window_start)::bigint, count::bigint, errors::bigint, \
         error_rate::float8, p50_latency_ms::float8, p95_latency_ms::float8, \
         p99_latency_ms::float8, min_latency_ms::float8, max_latency_ms::float8, \
         mean_latency_ms::float8, revision::bigint FROM \"{schema}\".window_metrics \
         WHERE window_start < to_timestamp({}) ORDER BY 1, 2",
        (T0 / 1_000_000) + 3_000
    );
    match client.query(&query, &[]).await {
        Ok(rows) => rows
            .iter()
            .map(|row| {
                format!(
                    "{} {} {} {} {} {:?} {:?} {:?} {} {} {} {}",
                    row.get::<_, String>(0),
                    row.get::<_, i64>(1),
                    row.get::<_, i64>(2),
                    row.get::<_, i64>(3),
                    row.get::<_, f64>(4),
                    row.get::<_, Option<f64>>(5),
                    row.get::<_, Option<f64>>(6),
                    row.get::<_, Option<f64>>(7),
                    row.get::<_, f64>(8),
                    row.get::<_, f64>(9),
                    row.get::<_, f64>(10),
                    row.get::<_, i64>(11),
                )
            })
            .collect(),
        Err(_) => Vec::new(), // the table does not exist yet
    }
}

/// Every window row written to Parquet (every revision), one line each, sorted.
async fn parquet_rows(dir: &Path) -> Vec<String> {
    let data = dir.join("data");
    if !data.join("window_metrics").exists() {
        return Vec::new();
    }
    let (context, _) = pipeline::query::session(&data.display().to_string())
        .await
        .unwrap();
    let batches = pipeline::query::query(
        &context,
        &format!(
            "SELECT model, window_start, count, errors, error_rate, p50_latency_ms, \
             p95_latency_ms, p99_latency_ms, mean_latency_ms, revision FROM window_metrics \
             WHERE window_start < to_timestamp({}) ORDER BY 1, 2, 10",
            (T0 / 1_000_000) + 3_000
        ),
    )
    .await
    .unwrap();
    let mut rows = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = (0..batch.num_columns())
                .map(|c| array_value_to_string(batch.column(c), row).unwrap())
                .collect();
            rows.push(cells.join(" "));
        }
    }
    rows
}

/// (rows, distinct request ids) of the raw calls in PostgreSQL and in Parquet.
async fn raw_counts(run: &Run) -> ((i64, i64), (i64, i64)) {
    let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT request_id) FROM \"{}\".api_calls",
                run.schema
            ),
            &[],
        )
        .await
        .unwrap();
    let database = (row.get::<_, i64>(0), row.get::<_, i64>(1));
    let (context, _) = pipeline::query::session(&run.dir.join("data").display().to_string())
        .await
        .unwrap();
    let batches = pipeline::query::query(
        &context,
        "SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM api_calls",
    )
    .await
    .unwrap();
    let value = |c: usize| {
        array_value_to_string(batches[0].column(c), 0)
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    (database, (value(0), value(1)))
}

/// Waits until the run's outputs stop changing and its queue is drained.
async fn settle(channel: &lapin::Channel, run: &Run, timeout: Duration) {
    let start = Instant::now();
    let mut last = (usize::MAX, usize::MAX, usize::MAX);
    let mut stable_since = Instant::now();
    loop {
        assert!(
            start.elapsed() < timeout,
            "the run did not settle within {timeout:?}"
        );
        let ready = ready_messages(channel, &run.queue).await;
        let now = (
            database_rows(&run.schema).await.len(),
            parquet_rows(&run.dir).await.len(),
            run.received.lock().unwrap().len(),
        );
        if now != last || ready > 0 || now.0 == 0 {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(3) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops a run with SIGTERM and checks it exited cleanly.
fn terminate(child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the pipeline stopped cleanly");
}

fn counts(keys: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for key in keys {
        *counts.entry(key.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_after_repeated_kill_9_equal_an_uninterrupted_run() {
    let Some((_connection, channel)) = broker_or_skip().await else {
        return;
    };
    if let Err(error) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls).await {
        engine::testing::missing(&format!("PostgreSQL at {POSTGRES}"), error);
        return;
    }
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();

    // The reference: one uninterrupted run.
    let reference = prepare(&channel, "exact-ref").await;
    let child = start(&reference, 0);
    settle(&channel, &reference, Duration::from_secs(240)).await;
    terminate(child);
    let expected_db = database_rows(&reference.schema).await;
    let expected_files = parquet_rows(&reference.dir).await;
    let expected_alerts = counts(&reference.received.lock().unwrap());
    eprintln!(
        "reference: {} rows in PostgreSQL, {} in Parquet, alerts {expected_alerts:?}",
        expected_db.len(),
        expected_files.len()
    );
    assert!(
        expected_db.len() >= 150,
        "{} window rows",
        expected_db.len()
    );
    assert!(
        expected_files.len() > expected_db.len(),
        "some windows were revised by late rows"
    );
    assert!(
        expected_alerts.len() >= 2,
        "the error burst fired and resolved an alert: {expected_alerts:?}"
    );
    assert!(expected_alerts.values().all(|&n| n == 1));

    // The same input, killed with SIGKILL at random points.
    let crashed = prepare(&channel, "exact-kill").await;
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("kill points from TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let total = (MESSAGES + 1) as u32;
    let mut kills = 0;
    for attempt in 0..3 {
        let mut child = start(&crashed, attempt);
        // Kill somewhere in the middle of what is left.
        let left = ready_messages(&channel, &crashed.queue).await;
        let target = left.saturating_sub(rng.random_range(20..(left / 3).max(21)));
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready_messages(&channel, &crashed.queue).await > target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..50))).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let remaining = ready_messages(&channel, &crashed.queue).await;
        eprintln!("kill {attempt}: {remaining} of {total} messages not yet acknowledged");
        if remaining > 0 {
            kills += 1;
        }
        if attempt > 0 {
            assert!(
                log_of(&crashed, attempt).contains("restoring from checkpoint"),
                "run {attempt} restored a checkpoint:\n{}",
                log_of(&crashed, attempt)
            );
        }
    }
    assert!(kills >= 2, "the kills came mid-stream");
    let last = 3;
    let child = start(&crashed, last);
    settle(&channel, &crashed, Duration::from_secs(240)).await;
    terminate(child);
    assert!(log_of(&crashed, last).contains("restoring from checkpoint"));

    let got_db = database_rows(&crashed.schema).await;
    let got_files = parquet_rows(&crashed.dir).await;
    let got_alerts = counts(&crashed.received.lock().unwrap());
    assert_eq!(got_db.len(), expected_db.len(), "PostgreSQL rows");
    for (got, expected) in got_db.iter().zip(&expected_db) {
        assert_eq!(got, expected, "PostgreSQL row");
    }
    assert_eq!(got_files.len(), expected_files.len(), "Parquet rows");
    for (got, expected) in got_files.iter().zip(&expected_files) {
        assert_eq!(got, expected, "Parquet row");
    }
    // Every notification reached the receiver, none was produced twice by the replays. The
    // only repeat an HTTP receiver can see is a delivery whose 2xx arrived just before the
    // kill and before the queue recorded it: then the same Idempotency-Key comes again (at
    // most once per kill).
    let got_keys: Vec<&String> = got_alerts.keys().collect();
    let expected_keys: Vec<&String> = expected_alerts.keys().collect();
    assert_eq!(got_keys, expected_keys, "the same notifications");
    let repeats: usize = got_alerts.values().map(|n| n - 1).sum();
    eprintln!("notifications: {got_alerts:?} ({repeats} repeated after a kill)");
    assert!(repeats <= 1, "{got_alerts:?}");

    // Raw calls: each once in every store, after the kills as without them.
    let sent = (MESSAGES * PER_MESSAGE + 1) as i64;
    for (name, run) in [("uninterrupted", &reference), ("killed", &crashed)] {
        let (database, files) = raw_counts(run).await;
        assert_eq!(
            database,
            (sent, sent),
            "{name}: PostgreSQL api_calls (rows, distinct ids)"
        );
        assert_eq!(
            files,
            (sent, sent),
            "{name}: Parquet api_calls (rows, distinct ids)"
        );
    }

    // Old checkpoints were cleaned up: at most the retained three (and one in progress).
    let checkpoints = std::fs::read_dir(crashed.dir.join("checkpoints").join("main"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        (1..=4).contains(&checkpoints),
        "{checkpoints} checkpoints kept"
    );

    for run in [&reference, &crashed] {
        delete_queues(&channel, &[&run.queue, &format!("{}.dead", run.queue)]).await;
        delete_exchanges(&channel, &[&format!("{}.dead", run.queue)]).await;
        let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", run.schema))
            .await;
        let _ = std::fs::remove_dir_all(&run.dir);
    }
}
