//! The timescaledb sink against the real PostgreSQL on 127.0.0.1:5432 (plain PostgreSQL: the
//! TimescaleDB extension is not installable there): the table and its BRIN index created with
//! natural column types, exact values through binary COPY, window results upserted so a replay
//! changes nothing and an older revision never overwrites a newer one, rows committed before a
//! checkpoint is acknowledged, and a table that does not match reported column by column.
//! Under CI=true a missing server fails the tests; elsewhere they are skipped with a message.

use engine::component::{Collector, Operator, Sink};
use engine::config::SourceText;
use engine::message::Barrier;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall, Outcome};
use operators::window::{Window, WindowConfig};
use tokio_postgres::NoTls;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const SEC: i64 = 1_000_000;
const T0: i64 = 1_759_999_980 * SEC;

async fn postgres_or_skip() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(URL, NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(error) => {
            engine::testing::missing(&format!("PostgreSQL at {URL}"), format!("{error}; start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"));
            None
        }
    }
}

fn unique(name: &str) -> String {
    format!("test_{name}_{}", uuid::Uuid::new_v4().simple())
}

fn sink(settings: &str, input: arrow::datatypes::SchemaRef) -> Result<Box<dyn Sink>, String> {
    let url = if settings.contains("url =") {
        String::new()
    } else {
        format!("url = \"{URL}\"\n")
    };
    let text =
        format!("[sinks.history]\ntype = \"timescaledb\"\ninputs = [\"x\"]\n{url}{settings}\n");
    let source = SourceText::new("t.toml", text, |_| None).unwrap();
    let file = source.parse().unwrap();
    let context = BuildContext {
        spec: &file.pipelines[0].components[0],
        input_schemas: vec![input],
        metrics: ComponentMetrics::new(),
    };
    sinks::postgres::build(&context).map_err(|e| e.to_string())
}

fn call(i: i64, model: &str) -> ApiCall {
    let status = if i % 10 == 0 { 503 } else { 200 };
    let mut call = ApiCall {
        event_time: T0 + i * 1_000,
        request_id: format!("req-{i}"),
        model: Some(model.into()),
        endpoint: Some("/v1/chat/completions".into()),
        method: Some("POST".into()),
        status_code: Some(status),
        outcome: Outcome::from_status(status),
        latency_ms: 10.0 + (i % 97) as f64 * 0.5,
        ttft_ms: (i % 2 == 0).then_some(5.0),
        output_tokens: Some((i % 300) as u32),
        ..Default::default()
    };
    if i % 3 == 0 {
        call.labels.insert("team".into(), "search".into());
    }
    call
}

async fn checkpoint(sink: &mut Box<dyn Sink>, id: u64) {
    sink.checkpoint(Barrier {
        checkpoint_id: id,
        started_at_micros: 0,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn raw_events_arrive_exactly_and_are_committed_before_the_barrier_is_acknowledged() {
    let Some(client) = postgres_or_skip().await else {
        return;
    };
    let table = unique("api_calls");
    let mut sink = sink(
        &format!("table = \"{table}\"\nbatch_size = 100000\nflush_interval = \"1h\""),
        api_call_schema(),
    )
    .unwrap();
    let calls: Vec<ApiCall> = (0..20_000)
        .map(|i| call(i, ["gpt-4o", "llama-3"][i as usize % 2]))
        .collect();
    for chunk in calls.chunks(3_000) {
        sink.write(api_calls_to_batch(chunk)).await.unwrap();
    }
    // Buffered, not yet committed: nothing visible before the checkpoint.
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    checkpoint(&mut sink, 1).await;
    let row = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT request_id), sum(latency_ms), sum(output_tokens)::bigint, count(*) FILTER (WHERE status_code = 503), count(ttft_ms), count(labels) FROM \"{table}\""),
            &[],
        )
        .await
        .unwrap();
    let expected_latency: f64 = calls.iter().map(|c| c.latency_ms).sum();
    let expected_tokens: i64 = calls
        .iter()
        .map(|c| i64::from(c.output_tokens.unwrap()))
        .sum();
    assert_eq!(row.get::<_, i64>(0), 20_000);
    assert_eq!(row.get::<_, i64>(1), 20_000);
    assert!((row.get::<_, f64>(2) - expected_latency).abs() < 1e-6);
    assert_eq!(row.get::<_, i64>(3), expected_tokens);
    assert_eq!(row.get::<_, i64>(4), 2_000);
    assert_eq!(row.get::<_, i64>(5), 10_000);
    assert_eq!(row.get::<_, i64>(6), 6_667);
    let one = client
        .query_one(
            &format!("SELECT event_time = to_timestamp({}), model, status_code, labels->>'team', outcome FROM \"{table}\" WHERE request_id = 'req-30'", (T0 + 30_000) as f64 / 1e6),
            &[],
        )
        .await
        .unwrap();
    assert!(one.get::<_, bool>(0));
    assert_eq!(one.get::<_, String>(1), "gpt-4o");
    assert_eq!(one.get::<_, i32>(2), 503);
    assert_eq!(one.get::<_, String>(3), "search");
    assert_eq!(one.get::<_, String>(4), "server_error");
    let types: Vec<(String, String)> = client
        .query("SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = $1", &[&table])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (column, data_type) in [
        ("event_time", "timestamp with time zone"),
        ("request_id", "text"),
        ("latency_ms", "double precision"),
        ("response_bytes", "bigint"),
        ("status_code", "integer"),
        ("labels", "jsonb"),
        ("output_tokens_estimated", "boolean"),
    ] {
        assert!(
            types.contains(&(column.to_string(), data_type.to_string())),
            "{column}: {types:?}"
        );
    }
    let brin: i64 = client
        .query_one("SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%USING brin (event_time)%'", &[&table])
        .await
        .unwrap()
        .get(0);
    assert_eq!(brin, 1);
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
}

fn window() -> Window {
    let config: WindowConfig =
        toml::from_str("size = \"10s\"\nout_of_orderness = \"0s\"\nallowed_lateness = \"1m\"")
            .unwrap();
    Window::new(
        "per_10s",
        &config,
        &api_call_schema(),
        ComponentMetrics::new(),
    )
    .unwrap()
}

fn window_rows(
    w: &mut Window,
    calls: &[ApiCall],
    end: bool,
) -> Vec<arrow::record_batch::RecordBatch> {
    let mut out = Collector::default();
    w.process(0, &api_calls_to_batch(calls), &mut out).unwrap();
    if end {
        w.on_end(&mut out).unwrap();
    }
    out.take().0.into_iter().map(|(_, b)| b).collect()
}

#[tokio::test]
async fn window_results_upsert_so_a_replay_changes_nothing() {
    let Some(client) = postgres_or_skip().await else {
        return;
    };
    let table = unique("window_metrics");
    let calls: Vec<ApiCall> = (0..60_000)
        .map(|i| call(i, ["a", "b", "c"][i as usize % 3]))
        .collect();
    let schema = window().output_schema();
    let query = format!("SELECT \"window\", window_start, model, count, errors, revision FROM \"{table}\" ORDER BY 1, 2, 3");
    let mut first = None;
    for replay in 0..2 {
        let mut sink = sink(&format!("table = \"{table}\""), schema.clone()).unwrap();
        let mut w = window();
        for batch in window_rows(&mut w, &calls, true) {
            sink.write(batch).await.unwrap();
        }
        sink.close().await.unwrap();
        let rows: Vec<(String, i64, i64, i32)> = client
            .query(&query, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(2),
                    r.get::<_, i64>(3),
                    r.get::<_, i64>(4),
                    r.get::<_, i64>(5) as i32,
                )
            })
            .collect();
        // 60 s of events, 10 s windows, 3 models.
        assert_eq!(rows.len(), 18, "replay {replay}");
        assert_eq!(rows.iter().map(|r| r.1).sum::<i64>(), 60_000);
        assert_eq!(rows.iter().map(|r| r.2).sum::<i64>(), 6_000);
        match &first {
            None => first = Some(rows),
            Some(first) => assert_eq!(first, &rows, "the replay left the same rows"),
        }
    }

    // A late event re-emits its window with revision 1; replaying revision 0 afterwards must
    // not bring the old count back.
    let mut sink = sink(&format!("table = \"{table}\""), schema.clone()).unwrap();
    let mut w = window();
    let old = window_rows(&mut w, &[call(0, "a"), call(20_000, "a")], false);
    let late = window_rows(&mut w, &[call(3, "a")], true);
    assert!(!late.is_empty());
    for batch in late.iter().chain(&old) {
        sink.write(batch.clone()).await.unwrap();
    }
    sink.close().await.unwrap();
    let row = client
        .query_one(&format!("SELECT count, revision FROM \"{table}\" WHERE model = 'a' AND window_start = to_timestamp({})", T0 as f64 / 1e6), &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 1));
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_that_does_not_match_is_reported_column_by_column() {
    let Some(client) = postgres_or_skip().await else {
        return;
    };
    let table = unique("mismatch");
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (event_time timestamptz, request_id integer)"
        ))
        .await
        .unwrap();
    let mut checked = sink(
        &format!("table = \"{table}\"\nschema_mode = \"check\""),
        api_call_schema(),
    )
    .unwrap();
    let error = checked
        .write(api_calls_to_batch(&[call(1, "a")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("column `request_id` is integer, expected text"),
        "{error}"
    );
    assert!(
        error.contains("no column `latency_ms` (double precision)"),
        "{error}"
    );
    let missing = unique("missing");
    let mut absent = sink(
        &format!("table = \"{missing}\"\nschema_mode = \"check\""),
        api_call_schema(),
    )
    .unwrap();
    let error = absent
        .write(api_calls_to_batch(&[call(1, "a")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not exist"), "{error}");
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
}

#[test]
fn settings_are_checked_where_they_are_written() {
    let error = sink("url = \"mysql://x\"", api_call_schema())
        .err()
        .unwrap();
    assert!(
        error.contains("t.toml:4:7") && error.contains("not a PostgreSQL connection string"),
        "{error}"
    );
    let error = sink("batch_size = 0", api_call_schema()).err().unwrap();
    assert!(error.contains("must be at least 1"), "{error}");
}

#[tokio::test]
async fn alert_changes_land_once_with_jsonb_labels() {
    use engine::schema::alert::{
        alert_schema, notifications_to_batch, AlertNotification, AlertState,
    };
    let Some(client) = postgres_or_skip().await else {
        return;
    };
    let table = unique("alerts");
    let mut sink = sink(&format!("table = \"{table}\""), alert_schema()).unwrap();
    let change = |model: &str, state: AlertState, minute: i64| AlertNotification {
        notification_id: format!("{model}-{}", state.as_str()),
        alert_id: format!("alert-{model}"),
        rule: "HighP99Latency".into(),
        state,
        severity: "critical".into(),
        labels: [("model".to_string(), model.to_string())]
            .into_iter()
            .collect(),
        annotations: [("summary".to_string(), format!("p99 of {model} is high"))]
            .into_iter()
            .collect(),
        value: Some(1500.0),
        active_at: T0,
        fired_at: Some(T0 + 60 * SEC),
        resolved_at: (state == AlertState::Resolved).then_some(T0 + minute * 60 * SEC),
        event_time: T0 + minute * 60 * SEC,
    };
    let batch = notifications_to_batch(&[
        change("gpt-4o", AlertState::Firing, 1),
        change("llama", AlertState::Firing, 1),
        change("gpt-4o", AlertState::Resolved, 4),
    ]);
    // Written twice, as a replay after a crash would: the rows stay the same.
    sink.write(batch.clone()).await.unwrap();
    checkpoint(&mut sink, 1).await;
    sink.write(batch).await.unwrap();
    checkpoint(&mut sink, 2).await;
    sink.close().await.unwrap();

    let rows = client
        .query(
            &format!("SELECT state, labels->>'model', annotations->>'summary', value, resolved_at IS NOT NULL FROM \"{table}\" ORDER BY event_time, labels->>'model'"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, f64, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "firing".into(),
                "gpt-4o".into(),
                "p99 of gpt-4o is high".into(),
                1500.0,
                false
            ),
            (
                "firing".into(),
                "llama".into(),
                "p99 of llama is high".into(),
                1500.0,
                false
            ),
            (
                "resolved".into(),
                "gpt-4o".into(),
                "p99 of gpt-4o is high".into(),
                1500.0,
                true
            ),
        ]
    );
    let labels_type: String = client
        .query_one(
            "SELECT data_type FROM information_schema.columns WHERE table_name = $1 AND column_name = 'labels'",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(labels_type, "jsonb");
    client
        .execute(&format!("DROP TABLE \"{table}\""), &[])
        .await
        .unwrap();
}

/// A table an earlier version created, before `cost_usd` and `error` existed: the sink adds
/// the columns it lacks (nullable: the old rows have no value) and writes on.
#[tokio::test]
async fn an_older_table_gains_the_new_columns_and_keeps_its_rows() {
    let Some(client) = postgres_or_skip().await else {
        return;
    };
    let table = unique("old_calls");
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (event_time timestamptz NOT NULL, request_id text NOT NULL, model text, endpoint text, method text, status_code integer, outcome text NOT NULL, latency_ms double precision NOT NULL, ttfb_ms double precision, ttft_ms double precision, request_bytes bigint, response_bytes bigint, input_tokens bigint, output_tokens bigint, output_tokens_estimated boolean, output_tokens_per_second double precision, client_id text, upstream text, labels jsonb);
             INSERT INTO \"{table}\" (event_time, request_id, outcome, latency_ms) VALUES (now(), 'old-1', 'ok', 1.5);"
        ))
        .await
        .unwrap();
    let mut sink = sink(&format!("table = \"{table}\""), api_call_schema()).unwrap();
    let mut priced = call(1, "gpt-4o");
    priced.cost_usd = Some(0.25);
    priced.error = Some("none".into());
    sink.write(api_calls_to_batch(&[priced])).await.unwrap();
    checkpoint(&mut sink, 1).await;
    let rows = client
        .query(
            &format!("SELECT request_id, cost_usd, error FROM \"{table}\" ORDER BY request_id"),
            &[],
        )
        .await
        .unwrap();
    let read: Vec<(String, Option<f64>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        read,
        vec![
            ("old-1".to_string(), None, None),
            ("req-1".to_string(), Some(0.25), Some("none".to_string()))
        ]
    );
}
