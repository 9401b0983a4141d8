//! Whole pipelines from a pipelines.toml over known event files: exact counts and error rates,
//! percentiles within the sketch's accuracy of exact values, late and too-late rows where the
//! rules put them, and the history readable with SQL afterwards.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, UInt32Type, UInt64Type};
use engine::runtime::build_from_text;
use engine::schema::api_call::ApiCall;
use engine::schema::Outcome;
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_777_629_600_000_000; // 2026-05-01T10:00:00Z

async fn run_config(text: &str, data: &Path) -> engine::runtime::RunReport {
    let data_dir = data.display().to_string();
    let lookup = |name: &str| (name == "DATA").then(|| data_dir.clone());
    build_from_text("test.toml", text, lookup, &pipeline::components::registry())
        .unwrap()
        .run(CancellationToken::new())
        .await
        .unwrap()
}

async fn sql(data: &Path, query: &str) -> Vec<RecordBatch> {
    let (context, _) = pipeline::query::session(&data.display().to_string())
        .await
        .unwrap();
    pipeline::query::query(&context, query).await.unwrap()
}

/// A deterministic, skewed workload: 3 models x 2 endpoints over five minutes, slightly out of
/// order, with errors on a pattern.
fn workload() -> Vec<ApiCall> {
    let models = ["gpt-4o", "llama-3-70b", "resnet-50"];
    let endpoints = ["/v1/chat/completions", "/v1/embeddings"];
    (0..12_000u64)
        .map(|i| {
            let jitter = ((i * 7_919) % 5) as i64 * 100_000; // up to 0.4 s out of order
            let outcome = match i % 97 {
                0..=2 => Outcome::ServerError,
                3 => Outcome::Timeout,
                4..=6 => Outcome::ClientError,
                _ => Outcome::Ok,
            };
            ApiCall {
                event_time: T0 + (i as i64) * 25_000 - jitter,
                request_id: format!("req-{i}"),
                model: Some(models[(i % 3) as usize].to_string()),
                endpoint: Some(endpoints[((i / 3) % 2) as usize].to_string()),
                method: Some("POST".to_string()),
                status_code: Some(match outcome {
                    Outcome::ServerError => 503,
                    Outcome::ClientError => 429,
                    Outcome::Timeout => 504,
                    _ => 200,
                }),
                outcome,
                latency_ms: 5.0 + ((i * 104_729) % 1000) as f64 * (1.0 + (i % 7) as f64),
                ttft_ms: (i % 2 == 0).then_some(1.0 + (i % 300) as f64),
                input_tokens: Some((i % 50) as u32),
                output_tokens: Some((i % 80) as u32),
                ..Default::default()
            }
        })
        .collect()
}

fn write_jsonl(path: &Path, calls: &[ApiCall]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for call in calls {
        serde_json::to_writer(&mut file, call).unwrap();
        file.write_all(b"\n").unwrap();
    }
    file.flush().unwrap();
}

/// Text of a string column (DataFusion reads Parquet strings as Utf8View).
fn text(batch: &RecordBatch, column: usize, row: usize) -> String {
    let array =
        arrow::compute::cast(batch.column(column), &arrow::datatypes::DataType::Utf8).unwrap();
    array.as_string::<i32>().value(row).to_string()
}

/// The exact value at the rank DDSketch estimates: floor(q * (n - 1)).
fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

#[tokio::test]
async fn window_results_match_exact_values_computed_from_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("calls.jsonl");
    let calls = workload();
    write_jsonl(&events, &calls);
    let data = dir.path().join("data");
    let config = format!(
        r#"
[sources.calls]
type = "file"
path = "{}"
batch_size = 700

[operators.per_minute]
type = "window"
inputs = ["calls"]
size = "1m"
out_of_orderness = "1s"

[operators.server_errors]
type = "filter"
inputs = ["calls"]
condition = "status_code >= 500 AND outcome IN ('server_error', 'timeout')"

[sinks.windows]
type = "parquet"
inputs = ["per_minute"]
path = "${{DATA}}"

[sinks.errors]
type = "parquet"
inputs = ["server_errors"]
path = "${{DATA}}"
table = "server_errors"
"#,
        events.display()
    );
    let report = run_config(&config, &data).await;
    assert_eq!(
        report.component("calls").unwrap().metrics.events_out,
        12_000
    );
    assert_eq!(report.component("per_minute").unwrap().metrics.late, 0);

    // Exact expectations per (minute, model, endpoint).
    #[derive(Default)]
    struct Expected {
        count: u64,
        errors: u64,
        latencies: Vec<f64>,
        ttfts: Vec<f64>,
        output_tokens: u64,
    }
    let mut expected: BTreeMap<(i64, String, String), Expected> = BTreeMap::new();
    for call in &calls {
        let minute = call.event_time.div_euclid(60_000_000) * 60;
        let entry = expected
            .entry((
                minute,
                call.model.clone().unwrap(),
                call.endpoint.clone().unwrap(),
            ))
            .or_default();
        entry.count += 1;
        entry.errors += u64::from(matches!(
            call.outcome,
            Outcome::ServerError | Outcome::Timeout
        ));
        entry.latencies.push(call.latency_ms);
        entry.ttfts.extend(call.ttft_ms);
        entry.output_tokens += u64::from(call.output_tokens.unwrap_or(0));
    }

    let batches = sql(
        &data,
        "SELECT CAST(to_unixtime(window_start) AS BIGINT) AS start, model, endpoint, count, errors, error_rate,
                p50_latency_ms, p95_latency_ms, p99_latency_ms, p95_ttft_ms, output_tokens, revision
         FROM window_metrics ORDER BY start, model, endpoint",
    )
    .await;
    let mut seen = 0;
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let start = batch.column(0).as_primitive::<Int64Type>().value(row);
            let model = text(batch, 1, row);
            let endpoint = text(batch, 2, row);
            let want = expected
                .get_mut(&(start, model.clone(), endpoint.clone()))
                .unwrap();
            let count = batch.column(3).as_primitive::<UInt64Type>().value(row);
            let errors = batch.column(4).as_primitive::<UInt64Type>().value(row);
            let error_rate = batch.column(5).as_primitive::<Float64Type>().value(row);
            assert_eq!(
                (count, errors),
                (want.count, want.errors),
                "{start} {model} {endpoint}"
            );
            assert!((error_rate - want.errors as f64 / want.count as f64).abs() < 1e-12);
            assert_eq!(
                batch.column(10).as_primitive::<UInt64Type>().value(row),
                want.output_tokens
            );
            assert_eq!(
                batch.column(11).as_primitive::<UInt32Type>().value(row),
                0,
                "no late updates"
            );
            want.latencies.sort_by(f64::total_cmp);
            want.ttfts.sort_by(f64::total_cmp);
            for (column, q) in [(6, 0.5), (7, 0.95), (8, 0.99)] {
                let estimate = batch
                    .column(column)
                    .as_primitive::<Float64Type>()
                    .value(row);
                let exact = exact_quantile(&want.latencies, q);
                assert!(
                    (estimate - exact).abs() / exact <= 0.01 + 1e-9,
                    "p{q} of {model} {endpoint} at {start}: {estimate} vs exact {exact}"
                );
            }
            let ttft = batch.column(9).as_primitive::<Float64Type>();
            if want.ttfts.is_empty() {
                assert!(
                    ttft.is_null(row),
                    "no streaming calls, so no TTFT for {model} {endpoint}"
                );
            } else {
                let exact = exact_quantile(&want.ttfts, 0.95);
                let estimate = ttft.value(row);
                assert!(
                    (estimate - exact).abs() / exact <= 0.01 + 1e-9,
                    "ttft p95 {estimate} vs {exact}"
                );
            }
            seen += 1;
        }
    }
    assert_eq!(seen, expected.len(), "one row per minute and key");

    let errors = sql(&data, "SELECT count(*) AS n FROM server_errors").await;
    let expected_errors = calls
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::ServerError | Outcome::Timeout))
        .count();
    assert_eq!(
        errors[0].column(0).as_primitive::<Int64Type>().value(0) as usize,
        expected_errors
    );
}

#[tokio::test]
async fn out_of_order_late_and_too_late_events_land_where_the_rules_say() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/late.jsonl");
    let config = format!(
        r#"
[sources.calls]
type = "file"
path = "{}"
batch_size = 1

[operators.windows]
type = "window"
inputs = ["calls"]
size = "10s"
out_of_orderness = "2s"
allowed_lateness = "5s"

[sinks.results]
type = "parquet"
inputs = ["windows"]
path = "${{DATA}}"

[sinks.too_late]
type = "parquet"
inputs = ["windows.late"]
path = "${{DATA}}"
table = "late_calls"
"#,
        fixture.display()
    );
    let report = run_config(&config, &data).await;
    assert_eq!(report.component("windows").unwrap().metrics.late, 1);
    // [10:00:00, 10:00:10): a1, a2 and a3 (out of order within 2 s) fire when b1 (13 s) moves
    // the watermark to 11 s; a4 (late, within 5 s of lateness) re-emits it as revision 1; a5
    // comes after b2 moved the watermark to 15 s = end + lateness, so it is too late.
    let rows = sql(
        &data,
        "SELECT CAST(to_unixtime(window_start) AS BIGINT) % 60 AS s, count, errors, revision FROM window_metrics ORDER BY s, revision",
    )
    .await;
    let got: Vec<(i64, u64, u64, u32)> = rows
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| {
                (
                    b.column(0).as_primitive::<Int64Type>().value(r),
                    b.column(1).as_primitive::<UInt64Type>().value(r),
                    b.column(2).as_primitive::<UInt64Type>().value(r),
                    b.column(3).as_primitive::<UInt32Type>().value(r),
                )
            })
        })
        .collect();
    assert_eq!(got, vec![(0, 3, 1, 0), (0, 4, 2, 1), (10, 3, 0, 0)]);
    let late = sql(&data, "SELECT request_id FROM late_calls").await;
    assert_eq!(text(&late[0], 0, 0), "a5-too-late");
    assert_eq!(late.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}
