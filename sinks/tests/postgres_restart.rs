//! Restarting PostgreSQL while the timescaledb sink is writing loses no row: the failed
//! transaction is retried with backoff on a fresh pooled connection until it commits, and the
//! sink holds its rows meanwhile (pushing back on the pipeline). Its own test binary: the
//! restart drops every connection to the server.

use std::process::Command;
use std::time::Duration;

use engine::config::SourceText;
use engine::message::Barrier;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall};
use tokio_postgres::NoTls;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn connect() -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(URL, NoTls).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

fn restart_postgres() {
    let versions = std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster");
    let version = versions
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .expect("a cluster version");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgresql_mid_stream_loses_no_row() {
    let Some(client) = connect().await else {
        engine::testing::missing(
            &format!("PostgreSQL at {URL}"),
            "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`",
        );
        return;
    };
    let table = format!("test_restart_{}", uuid::Uuid::new_v4().simple());
    let text = format!(
        "[sinks.history]\ntype = \"timescaledb\"\ninputs = [\"x\"]\nurl = \"{URL}\"\ntable = \"{table}\"\nbatch_size = 1000\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n"
    );
    let source = SourceText::new("t.toml", text, |_| None).unwrap();
    let file = source.parse().unwrap();
    let metrics = ComponentMetrics::new();
    let context = BuildContext {
        spec: &file.pipelines[0].components[0],
        input_schemas: vec![api_call_schema()],
        metrics: metrics.clone(),
    };
    let mut sink = sinks::postgres::build(&context).unwrap();
    let (batches, per_batch) = (60, 1_000);
    let writer = tokio::spawn(async move {
        for b in 0..batches {
            let calls: Vec<ApiCall> = (0..per_batch)
                .map(|i| ApiCall {
                    event_time: 1_800_000_000_000_000 + (b * per_batch + i) as i64,
                    request_id: format!("req-{b}-{i}"),
                    latency_ms: 1.0,
                    ..Default::default()
                })
                .collect();
            sink.write(api_calls_to_batch(&calls)).await.unwrap();
            if b % 5 == 4 {
                sink.checkpoint(Barrier {
                    checkpoint_id: b as u64,
                    started_at_micros: 0,
                })
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        sink.close().await.unwrap();
    });
    // Wait until some rows are in, then restart the server under the writer.
    let count = format!("SELECT count(*), count(DISTINCT request_id) FROM \"{table}\"");
    for _ in 0..200 {
        let rows = client
            .query_one(&count, &[])
            .await
            .map(|r| r.get::<_, i64>(0));
        if rows.is_ok_and(|n| n >= 5_000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart_postgres();
    tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the writer finishes after the restart")
        .unwrap();
    let client = connect().await.expect("PostgreSQL is back");
    let row = client.query_one(&count, &[]).await.unwrap();
    let expected = (batches * per_batch) as i64;
    assert_eq!(row.get::<_, i64>(1), expected, "no row lost");
    assert_eq!(row.get::<_, i64>(0), expected, "no row written twice");
    let retries = metrics
        .named("retries")
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(retries >= 1, "the restart was noticed and retried");
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
}
