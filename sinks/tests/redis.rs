//! The redis sink against the real Redis on 127.0.0.1:6379: latest hashes with TTLs, series
//! bounded to their length, later revisions replacing earlier ones, and every row published.
//! Under CI=true a missing Redis fails the test; elsewhere the test is skipped with a message.

use std::time::Duration;

use engine::component::{Collector, Operator, Sink};
use engine::config::SourceText;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall};
use futures::StreamExt;
use operators::window::{Window, WindowConfig};
use redis::AsyncCommands;

const URL: &str = "redis://127.0.0.1:6379";
const SEC: i64 = 1_000_000;

async fn redis_or_skip() -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(URL).unwrap();
    match client.get_multiplexed_async_connection().await {
        Ok(connection) => Some(connection),
        Err(error) => {
            engine::testing::missing(
                &format!("Redis at {URL}"),
                format!(
                    "{error}; start it with `redis-server --daemonize yes --port 6379 --save \"\"`"
                ),
            );
            None
        }
    }
}

fn sink(prefix: &str, window_schema: arrow::datatypes::SchemaRef) -> Box<dyn Sink> {
    let text = format!(
        "[sinks.live]\ntype = \"redis\"\ninputs = [\"w\"]\nurl = \"{URL}\"\nkey_prefix = \"{prefix}\"\nttl = \"60s\"\nseries_length = 3\n"
    );
    let source = SourceText::new("t.toml", text, |_| None).unwrap();
    let file = source.parse().unwrap();
    let context = BuildContext {
        spec: &file.pipelines[0].components[0],
        input_schemas: vec![window_schema],
        metrics: ComponentMetrics::new(),
    };
    sinks::redis::build(&context).unwrap()
}

fn window(settings: &str) -> Window {
    let config: WindowConfig = toml::from_str(settings).unwrap();
    Window::new(
        "per_10s",
        &config,
        &api_call_schema(),
        ComponentMetrics::new(),
    )
    .unwrap()
}

fn call(second: i64, model: &str, latency: f64) -> ApiCall {
    ApiCall {
        event_time: 1_759_999_980 * SEC + second * SEC,
        request_id: format!("{model}-{second}"),
        model: Some(model.into()),
        endpoint: Some("/v1/chat/completions".into()),
        latency_ms: latency,
        ..Default::default()
    }
}

#[tokio::test]
async fn latest_hashes_bounded_series_and_publications() {
    let Some(mut redis) = redis_or_skip().await else {
        return;
    };
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let mut w = window("size = \"10s\"\nout_of_orderness = \"0s\"\nallowed_lateness = \"1m\"");
    let mut sink = sink(&prefix, w.output_schema());

    let client = redis::Client::open(URL).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(format!("{prefix}:windows")).await.unwrap();

    // Five 10 s windows for model a, one for model b.
    let mut calls: Vec<ApiCall> = (0..50).map(|s| call(s, "a", 10.0 + s as f64)).collect();
    calls.push(call(3, "b", 99.0));
    let mut out = Collector::default();
    w.process(0, &api_calls_to_batch(&calls), &mut out).unwrap();
    w.on_end(&mut out).unwrap();
    let mut rows = 0;
    for (_, batch) in out.take().0 {
        rows += batch.num_rows();
        sink.write(batch).await.unwrap();
    }
    assert_eq!(rows, 6);

    let latest_a = format!("{prefix}:latest:per_10s:a|/v1/chat/completions");
    let count: String = redis.hget(&latest_a, "count").await.unwrap();
    assert_eq!(count, "10");
    let start: String = redis.hget(&latest_a, "window_start").await.unwrap();
    assert!(start.ends_with(":40.000000Z"), "{start}");
    let ttl: i64 = redis.ttl(&latest_a).await.unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");

    let series_a = format!("{prefix}:series:per_10s:a|/v1/chat/completions");
    let length: usize = redis.zcard(&series_a).await.unwrap();
    assert_eq!(length, 3, "series trimmed to series_length");
    let series_ttl: i64 = redis.ttl(&series_a).await.unwrap();
    assert!((1..=60).contains(&series_ttl));
    let keys: Vec<String> = redis
        .smembers(format!("{prefix}:keys:per_10s"))
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);

    let mut messages = pubsub.on_message();
    for _ in 0..6 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        let row: serde_json::Value =
            serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(row["window"], "per_10s");
    }
}

#[tokio::test]
async fn a_later_revision_replaces_the_window_in_the_series() {
    let Some(mut redis) = redis_or_skip().await else {
        return;
    };
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let mut w = window(
        "size = \"10s\"\nout_of_orderness = \"0s\"\nallowed_lateness = \"1m\"\nkey = [\"model\"]",
    );
    let mut sink = sink(&prefix, w.output_schema());
    let mut out = Collector::default();
    w.process(
        0,
        &api_calls_to_batch(&[call(1, "a", 1.0), call(12, "a", 1.0)]),
        &mut out,
    )
    .unwrap();
    w.process(0, &api_calls_to_batch(&[call(2, "a", 1.0)]), &mut out)
        .unwrap(); // late: revision 1, emitted when the watermark reaches the next boundary
    w.process(0, &api_calls_to_batch(&[call(21, "a", 1.0)]), &mut out)
        .unwrap();
    for (_, batch) in out.take().0 {
        sink.write(batch).await.unwrap();
    }
    let series = format!("{prefix}:series:per_10s:a");
    let members: Vec<String> = redis.zrange(&series, 0, -1).await.unwrap();
    // [0, 10) once (its revision 1 replaced revision 0), then [10, 20).
    assert_eq!(members.len(), 2, "{members:?}");
    let row: serde_json::Value = serde_json::from_str(&members[0]).unwrap();
    assert_eq!(
        (row["count"].as_u64(), row["revision"].as_u64()),
        (Some(2), Some(1))
    );
}

fn alert(
    model: &str,
    state: engine::schema::alert::AlertState,
    minute: i64,
) -> engine::schema::alert::AlertNotification {
    use engine::schema::alert::AlertState;
    engine::schema::alert::AlertNotification {
        notification_id: format!("{model}-{}-{minute}", state.as_str()),
        alert_id: format!("alert-{model}"),
        rule: "HighErrorRate".into(),
        state,
        severity: "critical".into(),
        labels: [("model".to_string(), model.to_string())]
            .into_iter()
            .collect(),
        annotations: Default::default(),
        value: Some(0.2),
        active_at: 0,
        fired_at: (state != AlertState::Pending).then_some(60 * SEC),
        resolved_at: (state == AlertState::Resolved).then_some(minute * 60 * SEC),
        event_time: minute * 60 * SEC,
    }
}

#[tokio::test]
async fn active_alerts_recent_changes_and_publications() {
    use engine::schema::alert::{alert_schema, notifications_to_batch, AlertState};
    let Some(mut redis) = redis_or_skip().await else {
        return;
    };
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let mut sink = sink(&prefix, alert_schema());
    let client = redis::Client::open(URL).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(format!("{prefix}:alerts")).await.unwrap();

    let changes = [
        alert("a", AlertState::Firing, 1),
        alert("b", AlertState::Pending, 1),
        alert("b", AlertState::Firing, 2),
        alert("a", AlertState::Resolved, 3),
        alert("c", AlertState::Firing, 3),
    ];
    sink.write(notifications_to_batch(&changes)).await.unwrap();

    let active: std::collections::HashMap<String, String> = redis
        .hgetall(format!("{prefix}:alerts:active"))
        .await
        .unwrap();
    let mut ids: Vec<&String> = active.keys().collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["alert-b", "alert-c"],
        "a resolved; b and c firing"
    );
    let b: serde_json::Value = serde_json::from_str(&active["alert-b"]).unwrap();
    assert_eq!(b["state"], "firing");
    // The recent list keeps the newest `series_length` (3) changes, newest first.
    let recent: Vec<String> = redis
        .lrange(format!("{prefix}:alerts:recent"), 0, -1)
        .await
        .unwrap();
    let states: Vec<(String, String)> = recent
        .iter()
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            (
                v["alert_id"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("alert-c".to_string(), "firing".to_string()),
            ("alert-a".to_string(), "resolved".to_string()),
            ("alert-b".to_string(), "firing".to_string())
        ]
    );
    let mut messages = pubsub.on_message();
    let mut published = Vec::new();
    for _ in 0..changes.len() {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a publication")
            .expect("a message");
        let payload: String = message.get_payload().unwrap();
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        published.push(v["notification_id"].as_str().unwrap().to_string());
    }
    let expected: Vec<String> = changes.iter().map(|c| c.notification_id.clone()).collect();
    assert_eq!(published, expected, "every change published, in order");
    let _: () = redis
        .del(&[
            format!("{prefix}:alerts:active"),
            format!("{prefix}:alerts:recent"),
        ])
        .await
        .unwrap();
}
