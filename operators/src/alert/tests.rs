//! The alert operator over window rows: thresholds with `for`, anomaly flags, absence of
//! traffic, labels and annotations, one notification per change, and config errors that name
//! the setting.

use super::*;
use arrow::array::{
    BooleanArray, Float64Array, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{Field, Schema};
use engine::schema::alert::{batch_to_notifications, AlertState};
use std::sync::Arc;

const MINUTE: i64 = 60_000_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window", DataType::Utf8, false),
        Field::new(
            "window_end",
            engine::schema::api_call::timestamp_type(),
            false,
        ),
        Field::new("model", DataType::Utf8, true),
        Field::new("endpoint", DataType::Utf8, true),
        Field::new("count", DataType::UInt64, false),
        Field::new("error_rate", DataType::Float64, false),
        Field::new("p99_latency_ms", DataType::Float64, true),
        Field::new("p95_latency_ms", DataType::Float64, true),
        Field::new("anomaly_p95_latency_ms_flag", DataType::Boolean, true),
    ]))
}

/// One row per (minute, model): p99 latency, error rate and the anomaly flag.
struct Row {
    minute: i64,
    model: &'static str,
    p99: f64,
    error_rate: f64,
    anomaly: bool,
}

fn row(minute: i64, model: &'static str, p99: f64) -> Row {
    Row {
        minute,
        model,
        p99,
        error_rate: 0.0,
        anomaly: false,
    }
}

fn batch(rows: &[Row]) -> RecordBatch {
    let n = rows.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["per_minute"; n])),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| (r.minute + 1) * MINUTE),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model))),
        Arc::new(StringArray::from(vec!["/v1/chat/completions"; n])),
        Arc::new(UInt64Array::from(vec![100; n])),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.error_rate),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.p99))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.p99 * 0.8),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.anomaly)),
        )),
    ];
    RecordBatch::try_new(schema(), columns).expect("batch")
}

fn operator(settings: &str) -> AlertOperator {
    let config: AlertConfig = toml::from_str(settings).expect("settings parse");
    AlertOperator::new(&config, &schema())
        .unwrap_or_else(|(path, message)| panic!("{path:?}: {message}"))
}

fn build_error(settings: &str) -> (Vec<String>, String) {
    let config: AlertConfig = toml::from_str(settings).expect("settings parse");
    match AlertOperator::new(&config, &schema()) {
        Ok(_) => panic!("{settings} should not build"),
        Err(error) => error,
    }
}

fn states(notifications: &[AlertNotification]) -> Vec<(i64, &str, AlertState)> {
    notifications
        .iter()
        .map(|n| (n.event_time / MINUTE, n.labels["model"].as_str(), n.state))
        .collect()
}

const LATENCY_RULE: &str = r#"
key = ["model", "endpoint"]
[[rules]]
name = "HighP99Latency"
condition = "p99_latency_ms > 1000"
for = "2m"
severity = "critical"
labels = { team = "inference" }
annotations = { summary = "p99 latency of {{model}} {{ $labels.endpoint }} is {{value}} ms", runbook = "https://runbooks.example/latency" }
"#;

#[test]
fn a_threshold_goes_pending_then_fires_after_for_then_resolves() {
    let mut op = operator(LATENCY_RULE);
    let p99 = [200.0, 1500.0, 1600.0, 1700.5, 1800.0, 300.0, 250.0];
    let rows: Vec<Row> = p99
        .iter()
        .enumerate()
        .map(|(m, &v)| row(m as i64, "gpt-4o", v))
        .collect();
    let out = op.evaluate(&batch(&rows)).expect("evaluates");
    // window_end is minute + 1: pending at 2, firing 2 minutes later at 4, resolved at 6.
    assert_eq!(
        states(&out),
        vec![
            (2, "gpt-4o", AlertState::Pending),
            (4, "gpt-4o", AlertState::Firing),
            (6, "gpt-4o", AlertState::Resolved)
        ]
    );
    let firing = &out[1];
    assert_eq!(firing.severity, "critical");
    assert_eq!(firing.value, Some(1700.5));
    assert_eq!(firing.labels["alertname"], "HighP99Latency");
    assert_eq!(firing.labels["team"], "inference");
    assert_eq!(firing.labels["endpoint"], "/v1/chat/completions");
    assert_eq!(
        firing.annotations["summary"], "p99 latency of gpt-4o /v1/chat/completions is 1700 ms",
        "4 significant digits"
    );
    assert_eq!(
        firing.annotations["runbook"],
        "https://runbooks.example/latency"
    );
    assert_eq!(
        (firing.active_at, firing.fired_at),
        (2 * MINUTE, Some(4 * MINUTE))
    );
    // One alert, three distinct changes.
    assert!(out.iter().all(|n| n.alert_id == firing.alert_id));
    let ids: std::collections::HashSet<_> = out.iter().map(|n| &n.notification_id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(out[2].resolved_at, Some(6 * MINUTE));
    // The resolved notification quotes the value that resolved it, not the last one over.
    assert_eq!(out[2].value, Some(300.0));
    assert_eq!(
        out[2].annotations["summary"],
        "p99 latency of gpt-4o /v1/chat/completions is 300 ms"
    );
    assert!(out[1].is_news() && out[2].is_news() && !out[0].is_news());
    assert_eq!(op.active_count(), 0);
}

#[test]
fn replaying_the_same_input_gives_the_same_ids() {
    let rows: Vec<Row> = [1500.0, 1500.0, 1500.0, 10.0]
        .iter()
        .enumerate()
        .map(|(m, &v)| row(m as i64, "m", v))
        .collect();
    let first = operator(LATENCY_RULE)
        .evaluate(&batch(&rows))
        .expect("evaluates");
    let second = operator(LATENCY_RULE)
        .evaluate(&batch(&rows))
        .expect("evaluates");
    assert_eq!(first, second);
    assert_eq!(first.len(), 3);
}

#[test]
fn keys_alert_independently_and_each_change_is_reported_once() {
    let mut op = operator(
        r#"
[[rules]]
name = "Errors"
condition = "error_rate > 0.05 AND count >= 20"
"#,
    );
    let mut rows = Vec::new();
    for minute in 0..6 {
        let mut a = row(minute, "a", 100.0);
        a.error_rate = if (2..4).contains(&minute) { 0.2 } else { 0.0 };
        let mut b = row(minute, "b", 100.0);
        b.error_rate = 0.3;
        rows.extend([a, b]);
    }
    // Delivered in two batches: state carries across.
    let mut out = op.evaluate(&batch(&rows[..5])).expect("evaluates");
    out.extend(op.evaluate(&batch(&rows[5..])).expect("evaluates"));
    assert_eq!(
        states(&out),
        vec![
            (1, "b", AlertState::Firing),
            (3, "a", AlertState::Firing),
            (5, "a", AlertState::Resolved)
        ]
    );
    assert_eq!(
        out[0].value,
        Some(0.3),
        "the value defaults to the first numeric field named"
    );
    // The default key is every text field, window name included.
    assert_eq!(out[0].labels["window"], "per_minute");
    assert_eq!(op.active_count(), 1);
}

#[test]
fn anomaly_rules_fire_on_the_detector_flag_and_report_the_field() {
    let mut op = operator(
        r#"
[[rules]]
name = "LatencyAnomaly"
anomaly = "p95_latency_ms"
keep_firing_for = "2m"
annotations = { summary = "p95 of {{model}} is unusual: {{value}} ms" }

[[rules]]
name = "AnomalyOrSlow"
condition = "anomaly.p95_latency_ms OR p99_latency_ms > 5000"
"#,
    );
    let mut rows: Vec<Row> = (0..8).map(|m| row(m, "llama", 100.0)).collect();
    rows[3].anomaly = true;
    rows[3].p99 = 900.0;
    let out = op.evaluate(&batch(&rows)).expect("evaluates");
    let latency: Vec<_> = out.iter().filter(|n| n.rule == "LatencyAnomaly").collect();
    // Fires at minute 4 (window end), stays 2 minutes after the flag, resolves at 6.
    assert_eq!(
        latency
            .iter()
            .map(|n| (n.event_time / MINUTE, n.state))
            .collect::<Vec<_>>(),
        vec![(4, AlertState::Firing), (6, AlertState::Resolved)]
    );
    assert_eq!(latency[0].value, Some(720.0));
    assert_eq!(
        latency[0].annotations["summary"],
        "p95 of llama is unusual: 720 ms"
    );
    assert_eq!(
        latency[1].annotations["summary"], "p95 of llama is unusual: 80 ms",
        "resolved with the value back in its band"
    );
    let combined: Vec<_> = out
        .iter()
        .filter(|n| n.rule == "AnomalyOrSlow")
        .map(|n| n.state)
        .collect();
    assert_eq!(combined, vec![AlertState::Firing, AlertState::Resolved]);
}

#[test]
fn silence_fires_an_absence_alert_and_traffic_resolves_it() {
    let mut op = operator(
        r#"
key = ["model"]
[[rules]]
name = "NoTraffic"
absent_for = "5m"
severity = "critical"
annotations = { summary = "no calls to {{model}} for {{value}} s" }
"#,
    );
    // Both models are seen up to minute 2 (window end 3).
    let rows: Vec<Row> = (0..3)
        .flat_map(|m| [row(m, "a", 10.0), row(m, "b", 10.0)])
        .collect();
    assert!(op.evaluate(&batch(&rows)).expect("evaluates").is_empty());
    // Then only b: rows up to minute 9 (window end 10).
    let rows: Vec<Row> = (3..10).map(|m| row(m, "b", 10.0)).collect();
    assert!(op.evaluate(&batch(&rows)).expect("evaluates").is_empty());
    assert!(
        op.evaluate_absence(7 * MINUTE).is_empty(),
        "4 minutes of silence is not 5"
    );
    let fired = op.evaluate_absence(8 * MINUTE);
    assert_eq!(states(&fired), vec![(8, "a", AlertState::Firing)]);
    assert_eq!(fired[0].annotations["summary"], "no calls to a for 300 s");
    assert!(op.evaluate_absence(9 * MINUTE).is_empty(), "reported once");
    // a comes back.
    let back = op
        .evaluate(&batch(&[row(10, "a", 10.0)]))
        .expect("evaluates");
    assert_eq!(states(&back), vec![(11, "a", AlertState::Resolved)]);
    assert_eq!(
        back[0].annotations["summary"], "no calls to a for 480 s",
        "a resolved absence quotes the whole silence, from minute 3 to minute 11"
    );
    // Through the operator interface: the end of the input is not a silence.
    let mut out = Collector::default();
    op.on_watermark(Watermark::END, &mut out)
        .expect("watermark");
    let (batches, watermark) = out.take();
    assert!(batches.is_empty());
    assert_eq!(watermark, Some(Watermark::END));
    let mut out = Collector::default();
    op.on_watermark(Watermark(30 * MINUTE), &mut out)
        .expect("watermark");
    let (batches, _) = out.take();
    let emitted = batch_to_notifications(&batches[0].1).expect("alert rows");
    let mut models: Vec<_> = emitted
        .iter()
        .map(|n| (n.labels["model"].clone(), n.state))
        .collect();
    models.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        models,
        vec![
            ("a".to_string(), AlertState::Firing),
            ("b".to_string(), AlertState::Firing)
        ]
    );
}

#[test]
fn keys_are_bounded_and_active_alerts_are_kept_longest() {
    let mut op = operator(
        r#"
key = ["model"]
max_keys = 2
[[rules]]
name = "Slow"
condition = "p99_latency_ms > 1000"
"#,
    );
    op.evaluate(&batch(&[
        row(0, "slow", 5000.0),
        row(0, "a", 1.0),
        row(1, "b", 1.0),
        row(2, "c", 1.0),
    ]))
    .expect("evaluates");
    assert_eq!(op.key_count(), 2);
    assert_eq!(op.active_count(), 1, "the firing key survived eviction");
    let out = op
        .evaluate(&batch(&[row(3, "slow", 1.0)]))
        .expect("evaluates");
    assert_eq!(states(&out), vec![(4, "slow", AlertState::Resolved)]);
}

#[test]
fn config_errors_name_the_setting() {
    let cases = [
        ("[[rules]]\nname = \"x\"\ncondition = \"p99_latncy_ms > 1\"", vec!["rules", "0", "condition"], "p99_latncy_ms"),
        ("[[rules]]\nname = \"x\"\ncondition = \"p99_latency_ms\"", vec!["rules", "0", "condition"], "true or false"),
        ("[[rules]]\nname = \"x\"\nanomaly = \"ttft\"", vec!["rules", "0", "anomaly"], "anomaly_ttft_flag"),
        ("[[rules]]\nname = \"x\"\ncondition = \"count > 1\"\nabsent_for = \"1m\"", vec!["rules", "0", "condition"], "exactly one"),
        ("[[rules]]\nname = \"x\"\ncondition = \"count > 1\"\nannotations = { s = \"{{modle}}\" }", vec!["rules", "0", "annotations"], "modle"),
        ("[[rules]]\nname = \"x\"\ncondition = \"count > 1\"\nvalue = \"model\"", vec!["rules", "0", "value"], "not a number"),
        ("[[rules]]\nname = \"x\"\ncondition = \"count > 1\"\n[[rules]]\nname = \"x\"\nabsent_for = \"1m\"", vec!["rules", "1", "name"], "two rules"),
        ("key = [\"modl\"]\n[[rules]]\nname = \"x\"\nabsent_for = \"1m\"", vec!["key", "0"], "modl"),
        ("rules = []", vec!["rules"], "at least one"),
    ];
    for (settings, expected_path, needle) in cases {
        let (path, message) = build_error(settings);
        assert_eq!(path, expected_path, "{settings}: {message}");
        assert!(message.contains(needle), "{settings}: {message}");
    }
}

#[test]
fn changed_rules_keep_unchanged_alerts_and_resolve_removed_ones() {
    let mut op = operator(
        r#"
key = ["model", "endpoint"]
[[rules]]
name = "HighP99Latency"
condition = "p99_latency_ms > 1000"
[[rules]]
name = "SlowP95"
condition = "p95_latency_ms > 500"
"#,
    );
    let out = op
        .evaluate(&batch(&[row(0, "gpt-4o", 1500.0)]))
        .expect("evaluates");
    let fired: Vec<_> = out.iter().map(|n| (n.rule.as_str(), n.state)).collect();
    assert_eq!(
        fired,
        vec![
            ("HighP99Latency", AlertState::Firing),
            ("SlowP95", AlertState::Firing)
        ]
    );
    // Keep the first rule as it is, drop the second, add a third.
    let kept = op.configs[0].clone();
    let added: RuleConfig =
        toml::from_str("name = \"Errors\"\ncondition = \"error_rate > 0.5\"").expect("rule");
    let changed = op.reconfigure(vec![kept, added]).expect("valid");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(
        (changed[0].rule.as_str(), changed[0].state),
        ("SlowP95", AlertState::Resolved)
    );
    assert_eq!(changed[0].alert_id, out[1].alert_id);
    // The kept alert is still firing: no new notification while it holds, one when it ends.
    let next = op
        .evaluate(&batch(&[row(1, "gpt-4o", 1400.0), row(2, "gpt-4o", 100.0)]))
        .expect("evaluates");
    let states: Vec<_> = next.iter().map(|n| (n.rule.as_str(), n.state)).collect();
    assert_eq!(states, vec![("HighP99Latency", AlertState::Resolved)]);
}

#[test]
fn a_rule_handle_refuses_a_rule_that_does_not_compile() {
    let handle = control::RuleHandle::new(
        "operators.alerts".into(),
        schema(),
        vec!["model".into(), "endpoint".into()],
        Vec::new(),
    );
    let bad: RuleConfig =
        toml::from_str("name = \"Typo\"\ncondition = \"p99_latency > 1000\"").expect("rule");
    let error = handle.replace(vec![bad]).expect_err("refused");
    assert!(error.starts_with("rule `Typo`: `condition`:"), "{error}");
    assert_eq!(handle.version(), 0, "nothing applied");
    let good: RuleConfig =
        toml::from_str("name = \"Slow\"\ncondition = \"p99_latency_ms > 1000\"").expect("rule");
    handle.replace(vec![good.clone()]).expect("accepted");
    assert_eq!((handle.version(), handle.rules()), (1, vec![good]));
}

#[test]
fn a_restored_alert_operator_continues_its_alerts_without_repeating_them() {
    let p99 = [200.0, 1500.0, 1600.0, 1700.5, 1800.0, 300.0, 250.0];
    let rows: Vec<Row> = p99
        .iter()
        .enumerate()
        .map(|(m, &v)| row(m as i64, "gpt-4o", v))
        .collect();
    let mut whole = operator(LATENCY_RULE);
    let expected = whole.evaluate(&batch(&rows)).expect("evaluates");

    let mut before = operator(LATENCY_RULE);
    let mut got = before.evaluate(&batch(&rows[..3])).expect("evaluates");
    let state = before.snapshot().unwrap().expect("alert state");
    let mut after = operator(LATENCY_RULE);
    after.restore(&state).unwrap();
    got.extend(after.evaluate(&batch(&rows[3..])).expect("evaluates"));
    let ids = |n: &[AlertNotification]| {
        n.iter()
            .map(|n| n.notification_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&got), ids(&expected));
    assert_eq!(states(&got), states(&expected));

    // A changed rule starts inactive: the pending alert is not carried into it.
    let changed = LATENCY_RULE.replace("for = \"2m\"", "for = \"3m\"");
    let mut other = operator(&changed);
    other.restore(&state).unwrap();
    assert_eq!(other.active_count(), 0);
}
