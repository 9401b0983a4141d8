//! Detectors on synthetic series with known spikes, level shifts, seasonality and broken
//! correlations: flags where expected and nowhere else.

use super::*;
use arrow::array::{StringArray, TimestampMicrosecondArray, UInt32Array};
use engine::schema::window_metrics::window_metrics_schema;

const MINUTE: i64 = 60_000_000;

fn operator(settings: &str) -> AnomalyOperator {
    let config: AnomalyConfig = toml::from_str(settings).expect("settings parse");
    let model = Arc::new(Field::new("model", DataType::Utf8, true));
    let endpoint = Arc::new(Field::new("endpoint", DataType::Utf8, true));
    let input = window_metrics_schema(&[model, endpoint], &[0.5, 0.95]);
    AnomalyOperator::new(&config, &input)
        .unwrap_or_else(|(path, message)| panic!("{path:?}: {message}"))
}

/// A batch of window rows for one key with the given p95 latency, error rate and rate, of
/// 100 calls each.
fn rows(
    model: &str,
    start_minute: i64,
    p95: &[f64],
    error_rate: &[f64],
    rate: &[f64],
) -> RecordBatch {
    rows_counted(
        model,
        start_minute,
        p95,
        error_rate,
        rate,
        &vec![100; p95.len()],
    )
}

/// Like [`rows`], with each window's call count.
fn rows_counted(
    model: &str,
    start_minute: i64,
    p95: &[f64],
    error_rate: &[f64],
    rate: &[f64],
    counts: &[u64],
) -> RecordBatch {
    let n = p95.len();
    let model_field = Arc::new(Field::new("model", DataType::Utf8, true));
    let endpoint_field = Arc::new(Field::new("endpoint", DataType::Utf8, true));
    let schema = window_metrics_schema(&[model_field, endpoint_field], &[0.5, 0.95]);
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| -> ArrayRef {
            let starts = (0..n as i64).map(|i| (start_minute + i) * MINUTE);
            match field.name().as_str() {
                "window" => Arc::new(StringArray::from(vec!["per_minute"; n])),
                "window_start" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(starts).with_timezone("UTC"),
                ),
                "window_end" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(starts.map(|s| s + MINUTE))
                        .with_timezone("UTC"),
                ),
                "model" => Arc::new(StringArray::from(vec![model; n])),
                "endpoint" => Arc::new(StringArray::from(vec!["/v1/chat/completions"; n])),
                "p95_latency_ms" => Arc::new(arrow::array::Float64Array::from(p95.to_vec())),
                "error_rate" => Arc::new(arrow::array::Float64Array::from(error_rate.to_vec())),
                "rate_per_sec" => Arc::new(arrow::array::Float64Array::from(rate.to_vec())),
                "revision" => Arc::new(UInt32Array::from(vec![0; n])),
                "count" => arrow::compute::cast(
                    &arrow::array::UInt64Array::from(counts.to_vec()),
                    field.data_type(),
                )
                .expect("cast counts"),
                _ => arrow::array::new_null_array(field.data_type(), n).slice(0, n),
            }
        })
        .collect();
    // Non-nullable count columns: fill with zeros.
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.null_count() == n && !field.is_nullable() {
                arrow::compute::cast(
                    &arrow::array::UInt64Array::from(vec![0u64; n]),
                    field.data_type(),
                )
                .expect("cast zeros")
            } else {
                column
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).expect("batch")
}

fn flags(batch: &RecordBatch, name: &str) -> Vec<usize> {
    let column = batch
        .column_by_name(&flag_column(name))
        .expect("flag column");
    let column = column.as_boolean();
    (0..column.len())
        .filter(|&i| column.is_valid(i) && column.value(i))
        .collect()
}

fn noise(i: usize, amplitude: f64) -> f64 {
    // Deterministic, roughly uniform in [-amplitude, amplitude].
    let x = ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
    (2.0 * x - 1.0) * amplitude
}

#[test]
fn robust_flags_a_spike_and_nothing_else() {
    let mut op = operator(
        r#"detectors = [{ field = "p95_latency_ms", method = "robust", direction = "up" }]"#,
    );
    let mut p95: Vec<f64> = (0..600).map(|i| 200.0 + noise(i, 10.0)).collect();
    p95[400] = 900.0;
    let out = op
        .score(&rows("m", 0, &p95, &[0.0; 600], &[10.0; 600]))
        .expect("scored");
    assert_eq!(flags(&out, "p95_latency_ms"), vec![400]);
    let expected = out
        .column_by_name("anomaly_p95_latency_ms_expected")
        .expect("expected")
        .as_primitive::<Float64Type>()
        .value(400);
    assert!((expected - 200.0).abs() < 5.0, "{expected}");
    let any = out.column_by_name(ANOMALY).expect("anomaly").as_boolean();
    assert!(any.value(400) && !any.value(399));
}

#[test]
fn robust_flags_a_level_shift_then_adapts_to_it() {
    let mut op = operator(r#"detectors = [{ field = "p95_latency_ms" }]"#);
    let p95: Vec<f64> = (0..800)
        .map(|i| if i < 400 { 200.0 } else { 320.0 } + noise(i, 8.0))
        .collect();
    let out = op
        .score(&rows("m", 0, &p95, &[0.0; 800], &[10.0; 800]))
        .expect("scored");
    let flagged = flags(&out, "p95_latency_ms");
    assert_eq!(flagged.first(), Some(&400), "{flagged:?}");
    assert!(
        flagged.iter().all(|&i| (400..500).contains(&i)),
        "still flagging long after: {flagged:?}"
    );
}

#[test]
fn no_flags_during_warm_up() {
    let mut op = operator(r#"detectors = [{ field = "p95_latency_ms", warmup = 50 }]"#);
    let p95: Vec<f64> = (0..60)
        .map(|i| {
            if i == 20 {
                5000.0
            } else {
                100.0 + noise(i, 5.0)
            }
        })
        .collect();
    let out = op
        .score(&rows("m", 0, &p95, &[0.0; 60], &[1.0; 60]))
        .expect("scored");
    assert!(flags(&out, "p95_latency_ms").is_empty());
}

#[test]
fn a_new_key_does_not_flag_during_its_warm_up_with_the_defaults() {
    for method in ["robust", "sequence"] {
        let mut op = operator(&format!(
            r#"detectors = [{{ field = "p95_latency_ms", method = "{method}" }}]"#
        ));
        // A warm key, then a new one whose first windows swing wildly.
        let steady: Vec<f64> = (0..200).map(|i| 200.0 + noise(i, 5.0)).collect();
        op.score(&rows("warm", 0, &steady, &[0.0; 200], &[10.0; 200]))
            .expect("scored");
        let wild: Vec<f64> = (0..30)
            .map(|i| {
                if i % 3 == 0 {
                    2000.0
                } else {
                    150.0 + noise(i, 50.0)
                }
            })
            .collect();
        let out = op
            .score(&rows("new", 200, &wild, &[0.0; 30], &[10.0; 30]))
            .expect("scored");
        assert!(flags(&out, "p95_latency_ms").is_empty(), "{method}");
        // Once warm, a spike beyond anything seen flags.
        let mut calm: Vec<f64> = (0..100).map(|i| 200.0 + noise(i, 5.0)).collect();
        calm[80] = 6000.0;
        let out = op
            .score(&rows("new", 230, &calm, &[0.0; 100], &[10.0; 100]))
            .expect("scored");
        assert!(flags(&out, "p95_latency_ms").contains(&80), "{method}");
    }
}

#[test]
fn a_deploy_that_makes_a_model_30_percent_slower_flags_once_and_is_then_learned() {
    for method in ["robust", "sequence"] {
        let mut op = operator(&format!(
            r#"detectors = [{{ field = "p95_latency_ms", method = "{method}", direction = "up" }}]"#
        ));
        // Ten hours of minute windows; the deploy at 6 h; ±3 % noise throughout.
        let p95: Vec<f64> = (0..600)
            .map(|i| {
                let level = if i < 360 { 200.0 } else { 260.0 };
                level * (1.0 + noise(i, 0.03))
            })
            .collect();
        let out = op
            .score(&rows("m", 0, &p95, &[0.0; 600], &[10.0; 600]))
            .expect("scored");
        let flagged = flags(&out, "p95_latency_ms");
        assert_eq!(flagged.len(), 1, "{method}: {flagged:?}");
        assert!((360..363).contains(&flagged[0]), "{method}: {flagged:?}");
    }
}

#[test]
fn windows_with_few_calls_are_not_scored_as_noise() {
    let mut op = operator(
        r#"detectors = [
            { field = "p95_latency_ms" },
            { field = "rate_per_sec", direction = "down" },
        ]"#,
    );
    // Busy windows at ~200 ms; every tenth window holds 2 calls with a p95 anywhere.
    let n = 400;
    let p95: Vec<f64> = (0..n)
        .map(|i| {
            if i % 10 == 5 {
                900.0 + noise(i, 800.0)
            } else {
                200.0 + noise(i, 5.0)
            }
        })
        .collect();
    let counts: Vec<u64> = (0..n).map(|i| if i % 10 == 5 { 2 } else { 120 }).collect();
    let mut rate: Vec<f64> = counts.iter().map(|&c| c as f64 / 60.0).collect();
    // Traffic nearly stops once: still scored, whatever its count.
    rate[300] = 0.01;
    let mut counts = counts;
    counts[300] = 1;
    let out = op
        .score(&rows_counted("m", 0, &p95, &[0.0; 400], &rate, &counts))
        .expect("scored");
    assert!(flags(&out, "p95_latency_ms").is_empty());
    let scores = out
        .column_by_name("anomaly_p95_latency_ms_score")
        .expect("score");
    assert!(scores.is_null(5) && scores.is_null(300) && scores.is_valid(6));
    assert!(flags(&out, "rate_per_sec").contains(&300));
}

#[test]
fn min_count_needs_a_count_to_compare_with() {
    let config: AnomalyConfig = toml::from_str(
        r#"min_count = 3
detectors = [{ field = "value" }]"#,
    )
    .expect("settings parse");
    let input = Arc::new(Schema::new(vec![
        Field::new(
            "window_start",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("value", DataType::Float64, true),
    ]));
    let Err((path, message)) = AnomalyOperator::new(&config, &input) else {
        panic!("min_count without a count field was accepted");
    };
    assert_eq!(path, vec!["min_count".to_string()]);
    assert!(message.contains("count"), "{message}");
}

#[test]
fn seasonal_expects_the_daily_pattern_and_flags_a_break_from_it() {
    let mut op = operator(
        r#"detectors = [{ field = "rate_per_sec", method = "seasonal", season = "1d", slot = "1h", span = 200 }]"#,
    );
    // Hourly windows over 10 days: a day/night cycle between 20 and 200 requests/s.
    let hours = 24 * 10;
    let mut rate: Vec<f64> = (0..hours)
        .map(|h| {
            110.0 + 90.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin() + noise(h, 4.0)
        })
        .collect();
    // Day 8, 18:00: the nightly low (20/s) has daytime traffic instead.
    let incident = 24 * 8 + 18;
    rate[incident] = 110.0;
    let batch = rows("m", 0, &vec![100.0; hours], &vec![0.0; hours], &rate);
    // Hourly windows: rewrite the starts to one hour apart.
    let starts =
        TimestampMicrosecondArray::from_iter_values((0..hours as i64).map(|h| h * 60 * MINUTE))
            .with_timezone("UTC");
    let mut columns = batch.columns().to_vec();
    columns[1] = Arc::new(starts);
    let batch = RecordBatch::try_new(batch.schema(), columns).expect("batch");
    let out = op.score(&batch).expect("scored");
    let flagged: Vec<usize> = flags(&out, "rate_per_sec")
        .into_iter()
        .filter(|&h| h >= 24 * 3)
        .collect();
    assert_eq!(flagged, vec![incident]);
}

#[test]
fn forest_flags_a_combination_never_seen_together() {
    let mut op = operator(
        r#"detectors = [{ method = "forest", fields = ["p95_latency_ms", "error_rate", "rate_per_sec"], window = 64, trees = 25, depth = 8 }]"#,
    );
    let n = 1500;
    // Load drives latency; errors stay near zero.
    let rate: Vec<f64> = (0..n)
        .map(|i| 100.0 + 50.0 * ((i as f64) / 40.0).sin())
        .collect();
    let mut p95: Vec<f64> = rate
        .iter()
        .enumerate()
        .map(|(i, r)| 2.0 * r + noise(i, 3.0))
        .collect();
    let mut error_rate: Vec<f64> = (0..n).map(|i| 0.01 + noise(i, 0.002)).collect();
    // At 1,200: low traffic, yet latency at its peak and errors up.
    p95[1200] = 2.0 * 150.0 + 60.0;
    error_rate[1200] = 0.05;
    let out = op
        .score(&rows("m", 0, &p95, &error_rate, &rate))
        .expect("scored");
    let flagged: Vec<usize> = flags(&out, "multivariate")
        .into_iter()
        .filter(|&i| i > 300)
        .collect();
    assert!(flagged.contains(&1200), "{flagged:?}");
    assert!(flagged.len() <= 3, "too many flags: {flagged:?}");
}

#[test]
fn sequence_flags_a_changed_rhythm_that_stays_within_the_usual_range() {
    // Traffic alternates four busy and four quiet windows; from 700 to 716 it flips every
    // window instead. Every value stays in the usual range: only the rhythm is new.
    let mut op = operator(
        r#"detectors = [{ field = "rate_per_sec", method = "sequence", threshold = 0.45, range_observations = 200 }]"#,
    );
    let rate: Vec<f64> = (0..900)
        .map(|i| {
            let busy = if (700..716).contains(&i) {
                i % 2 == 0
            } else {
                (i / 4) % 2 == 0
            };
            let level = if busy { 300.0 } else { 100.0 };
            level + noise(i, 5.0)
        })
        .collect();
    let out = op
        .score(&rows("m", 0, &[200.0; 900], &[0.0; 900], &rate))
        .expect("scored");
    let flagged = flags(&out, "rate_per_sec");
    assert!(
        flagged.iter().any(|&i| (700..716).contains(&i)),
        "the changed rhythm was not flagged: {flagged:?}"
    );
    assert!(
        flagged.iter().all(|&i| i < 200 || (700..730).contains(&i)),
        "flags outside the change once the rhythm was learned: {flagged:?}"
    );
    // The robust baseline alone sees nothing unusual in it.
    let mut robust = operator(r#"detectors = [{ field = "rate_per_sec" }]"#);
    let out = robust
        .score(&rows("m", 0, &[200.0; 900], &[0.0; 900], &rate))
        .expect("scored");
    assert!(!flags(&out, "rate_per_sec")
        .iter()
        .any(|&i| (700..716).contains(&i)));
}

#[test]
fn keys_are_independent_and_bounded() {
    let mut op = operator("max_keys = 2\ndetectors = [{ field = \"p95_latency_ms\" }]");
    for model in ["a", "b", "c"] {
        op.score(&rows(model, 0, &[100.0; 5], &[0.0; 5], &[1.0; 5]))
            .expect("scored");
    }
    assert_eq!(op.key_count(), 2);
    assert!(!op
        .keys
        .keys()
        .any(|k| k.contains('a') && k.starts_with("per_minute\u{1f}a\u{1f}")));
}

#[test]
fn detector_state_survives_serialisation() {
    for (method, fields) in [
        (MethodName::Forest, &["a", "b"][..]),
        (MethodName::Sequence, &["a"][..]),
    ] {
        let detector = Detector::with_defaults(method, fields);
        let mut state = detector.new_state();
        for i in 0..500 {
            let values = [i as f64 % 7.0, 3.0];
            detector.observe(&mut state, i, &values[..fields.len()]);
        }
        let text = serde_json::to_string(&state).expect("serialise");
        let mut restored: DetectorState = serde_json::from_str(&text).expect("deserialise");
        assert_eq!(restored, state);
        let values = [2.0, 3.0];
        let a = detector.observe(&mut state, 500, &values[..fields.len()]);
        let b = detector.observe(&mut restored, 500, &values[..fields.len()]);
        assert_eq!(a, b, "{method:?}");
    }
}

#[test]
fn settings_errors_name_the_setting() {
    let model = Arc::new(Field::new("model", DataType::Utf8, true));
    let input = window_metrics_schema(&[model], &[0.95]);
    let cases = [
        (
            r#"detectors = [{ field = "nope" }]"#,
            "field",
            "no field `nope`",
        ),
        (
            r#"detectors = [{ field = "p95_latency_ms", threshold = 1.5 }]"#,
            "threshold",
            "between 0 and 1",
        ),
        (
            r#"detectors = [{ field = "p95_latency_ms", method = "seasonal" }]"#,
            "season",
            "needs `season`",
        ),
        (
            r#"detectors = [{ method = "forest" }]"#,
            "fields",
            "needs `fields`",
        ),
        (
            r#"detectors = [{ field = "p95_latency_ms", method = "sequence", memory = 1000 }]"#,
            "memory",
            "power of two",
        ),
        (
            r#"detectors = [{ field = "model" }]"#,
            "field",
            "not a number",
        ),
        (
            r#"detectors = [{ field = "p95_latency_ms" }, { field = "p95_latency_ms" }]"#,
            "1",
            "two `anomaly_p95_latency_ms_score`",
        ),
    ];
    for (settings, key, message) in cases {
        let config: AnomalyConfig = toml::from_str(settings).expect("parse");
        let error = AnomalyOperator::new(&config, &input)
            .err()
            .unwrap_or_else(|| panic!("{settings} was accepted"));
        assert_eq!(
            error.0.last().map(String::as_str),
            Some(key),
            "{settings}: {error:?}"
        );
        assert!(error.1.contains(message), "{settings}: {}", error.1);
    }
}
