//! Window semantics: exact aggregates, quantile accuracy, out-of-order, late and too-late rows,
//! hopping windows, idle advance, and independence from batching.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type, UInt64Type};
use engine::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall};
use engine::schema::Outcome;

use super::*;

const SEC: i64 = 1_000_000;

fn window(settings: &str) -> Window {
    let config: WindowConfig = toml::from_str(settings).unwrap();
    config.check().unwrap();
    Window::new("w", &config, &api_call_schema(), ComponentMetrics::new()).unwrap()
}

fn call(t_secs: f64, model: &str, latency: f64, outcome: Outcome) -> ApiCall {
    ApiCall {
        event_time: (t_secs * SEC as f64) as i64,
        request_id: format!("{model}-{t_secs}"),
        model: Some(model.to_string()),
        endpoint: Some("/v1/chat/completions".to_string()),
        outcome,
        latency_ms: latency,
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    start: i64,
    model: String,
    count: u64,
    errors: u64,
    revision: u32,
    p50: f64,
}

fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for batch in batches {
        let start = batch
            .column_by_name("window_start")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let model = batch.column_by_name("model").unwrap().as_string::<i32>();
        let count = batch
            .column_by_name("count")
            .unwrap()
            .as_primitive::<UInt64Type>();
        let errors = batch
            .column_by_name("errors")
            .unwrap()
            .as_primitive::<UInt64Type>();
        let revision = batch
            .column_by_name("revision")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let p50 = batch
            .column_by_name("p50_latency_ms")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            out.push(Row {
                start: start.value(i) / SEC,
                model: model.value(i).to_string(),
                count: count.value(i),
                errors: errors.value(i),
                revision: revision.value(i),
                p50: p50.value(i),
            });
        }
    }
    out
}

/// Feeds calls one batch each (or all in one) and returns (window batches, late batches).
fn run(
    w: &mut Window,
    batches: Vec<Vec<ApiCall>>,
    end: bool,
) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let mut out = Collector::default();
    let mut windows = Vec::new();
    let mut late = Vec::new();
    let mut drain = |out: &mut Collector| {
        let (batches, _) = out.take();
        for (port, batch) in batches {
            if port == 0 {
                windows.push(batch)
            } else {
                late.push(batch)
            }
        }
    };
    for calls in batches {
        w.process(0, &api_calls_to_batch(&calls), &mut out).unwrap();
        drain(&mut out);
    }
    if end {
        w.on_end(&mut out).unwrap();
        drain(&mut out);
    }
    (windows, late)
}

#[test]
fn tumbling_windows_count_errors_and_rates_per_key() {
    let mut w = window("size = \"10s\"\nout_of_orderness = \"0s\"\nkey = [\"model\"]");
    let calls = vec![
        call(1.0, "a", 100.0, Outcome::Ok),
        call(2.0, "a", 200.0, Outcome::ServerError),
        call(3.0, "b", 50.0, Outcome::ClientError), // 4xx is not an error by default
        call(9.9, "a", 300.0, Outcome::Timeout),
        call(10.0, "a", 10.0, Outcome::Ok),
    ];
    let (windows, late) = run(&mut w, vec![calls], true);
    assert!(late.is_empty());
    let got = rows(&windows);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        (
            got[0].start,
            got[0].model.as_str(),
            got[0].count,
            got[0].errors
        ),
        (0, "a", 3, 2)
    );
    assert_eq!(
        (
            got[1].start,
            got[1].model.as_str(),
            got[1].count,
            got[1].errors
        ),
        (0, "b", 1, 0)
    );
    assert_eq!((got[2].start, got[2].count), (10, 1));
    let batch = &windows[0];
    let rate = batch
        .column_by_name("rate_per_sec")
        .unwrap()
        .as_primitive::<Float64Type>();
    let error_rate = batch
        .column_by_name("error_rate")
        .unwrap()
        .as_primitive::<Float64Type>();
    let mean = batch
        .column_by_name("mean_latency_ms")
        .unwrap()
        .as_primitive::<Float64Type>();
    let max = batch
        .column_by_name("max_latency_ms")
        .unwrap()
        .as_primitive::<Float64Type>();
    // The stream began at 1 s: the first window covers 9 s of its 10, and its rate divides by
    // those (0.3/s over the whole window would understate it).
    let partial = batch.column_by_name("partial").unwrap().as_boolean();
    let covered = batch
        .column_by_name("covered_seconds")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert!(partial.value(0));
    assert!(
        (covered.value(0) - 9.0).abs() < 1e-9,
        "{}",
        covered.value(0)
    );
    assert!(
        (rate.value(0) - 3.0 / 9.0).abs() < 1e-9,
        "{}",
        rate.value(0)
    );
    assert!((error_rate.value(0) - 2.0 / 3.0).abs() < 1e-12);
    assert!((mean.value(0) - 200.0).abs() < 1e-12);
    assert_eq!(max.value(0), 300.0);
}

#[test]
fn a_window_fires_when_the_watermark_passes_its_end() {
    let mut w = window("size = \"10s\"\nout_of_orderness = \"2s\"\nkey = [\"model\"]");
    let (windows, _) = run(
        &mut w,
        vec![vec![
            call(1.0, "a", 1.0, Outcome::Ok),
            call(11.0, "a", 1.0, Outcome::Ok),
        ]],
        false,
    );
    assert!(windows.is_empty(), "watermark 9 s has not passed 10 s");
    let (windows, _) = run(&mut w, vec![vec![call(12.0, "a", 1.0, Outcome::Ok)]], false);
    assert_eq!(
        rows(&windows)
            .iter()
            .map(|r| (r.start, r.count))
            .collect::<Vec<_>>(),
        vec![(0, 1)]
    );
    assert_eq!(w.watermark(), 10 * SEC);
}

#[test]
fn out_of_order_late_and_too_late_rows_land_where_the_rules_say() {
    let mut w = window(
        "size = \"10s\"\nout_of_orderness = \"2s\"\nallowed_lateness = \"5s\"\nkey = [\"model\"]",
    );
    // Out of order within the bound: 8 s after 9 s, watermark 7 s: counted, no revision.
    let (windows, late) = run(
        &mut w,
        vec![vec![
            call(9.0, "a", 1.0, Outcome::Ok),
            call(8.0, "a", 1.0, Outcome::Ok),
        ]],
        false,
    );
    assert!(windows.is_empty() && late.is_empty());
    // 13 s moves the watermark to 11 s: window [0, 10) fires with 2 rows.
    let (windows, _) = run(&mut w, vec![vec![call(13.0, "a", 1.0, Outcome::Ok)]], false);
    assert_eq!(rows(&windows)[0].count, 2);
    assert_eq!(rows(&windows)[0].revision, 0);
    // Late but within lateness (watermark 11 s < 10 s + 5 s): updates the window, which is
    // emitted again when the watermark reaches a boundary: 15 s, its end + lateness.
    let (windows, late) = run(&mut w, vec![vec![call(5.0, "a", 1.0, Outcome::Ok)]], false);
    assert!(late.is_empty() && windows.is_empty());
    // 17 s: watermark 15 s = 10 s + 5 s: window [0, 10) is re-emitted and final; a row for it
    // is too late.
    let (windows, _) = run(&mut w, vec![vec![call(17.0, "a", 1.0, Outcome::Ok)]], false);
    let got = rows(&windows);
    assert_eq!((got[0].start, got[0].count, got[0].revision), (0, 3, 1));
    let (windows, late) = run(
        &mut w,
        vec![vec![
            call(4.0, "a", 1.0, Outcome::Ok),
            call(16.0, "a", 1.0, Outcome::Ok),
        ]],
        false,
    );
    assert!(windows.is_empty());
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].num_rows(), 1);
    assert_eq!(w.metrics.snapshot().late, 1);
    // At the end, [10, 20) holds 13, 17, 16.
    let (windows, _) = run(&mut w, vec![], true);
    assert_eq!(
        rows(&windows)
            .iter()
            .map(|r| (r.start, r.count))
            .collect::<Vec<_>>(),
        vec![(10, 3)]
    );
    assert_eq!(w.open_panes(), 0, "all state is freed at the end");
}

#[test]
fn hopping_windows_count_each_row_in_every_window_containing_it() {
    let mut w = window("kind = \"hopping\"\nsize = \"30s\"\nslide = \"10s\"\nout_of_orderness = \"0s\"\nkey = [\"model\"]");
    let calls = vec![
        call(5.0, "a", 10.0, Outcome::Ok),
        call(15.0, "a", 20.0, Outcome::Ok),
        call(25.0, "a", 30.0, Outcome::Ok),
    ];
    let (windows, _) = run(&mut w, vec![calls], true);
    let got: Vec<(i64, u64)> = rows(&windows).iter().map(|r| (r.start, r.count)).collect();
    assert_eq!(got, vec![(-20, 1), (-10, 2), (0, 3), (10, 2), (20, 1)]);
}

#[test]
fn quantiles_are_within_the_sketch_accuracy_of_exact_values() {
    let mut w = window("size = \"1m\"\nkey = [\"model\"]\nrelative_accuracy = 0.01\nquantiles = [0.5, 0.9, 0.95, 0.99]");
    // A skewed latency distribution: 1..=10000 with a long tail.
    let mut latencies: Vec<f64> = (1..=10_000)
        .map(|i| (i as f64).powf(1.3) / 10.0 + 1.0)
        .collect();
    let calls: Vec<ApiCall> = latencies
        .iter()
        .enumerate()
        .map(|(i, l)| call(i as f64 * 0.001, "a", *l, Outcome::Ok))
        .collect();
    let (windows, _) = run(&mut w, vec![calls], true);
    latencies.sort_by(f64::total_cmp);
    let batch = &windows[0];
    for (q, column) in [
        (0.5, "p50_latency_ms"),
        (0.9, "p90_latency_ms"),
        (0.95, "p95_latency_ms"),
        (0.99, "p99_latency_ms"),
    ] {
        let estimate = batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0);
        let rank = (q * (latencies.len() - 1) as f64).floor() as usize;
        let exact = latencies[rank];
        let error = (estimate - exact).abs() / exact;
        assert!(
            error <= 0.01 + 1e-9,
            "{column}: estimate {estimate}, exact {exact}, error {error}"
        );
    }
}

#[test]
fn results_do_not_depend_on_batching() {
    let settings =
        "size = \"10s\"\nout_of_orderness = \"3s\"\nallowed_lateness = \"4s\"\nkey = [\"model\"]";
    let mut calls = Vec::new();
    let mut t = 0.0f64;
    for i in 0..500 {
        t += 0.37;
        let jitter = ((i * 7919) % 13) as f64 * 0.9; // up to 10.8 s out of order
        calls.push(call(
            t - jitter,
            if i % 3 == 0 { "a" } else { "b" },
            (i % 50) as f64 + 1.0,
            Outcome::Ok,
        ));
    }
    let final_rows = |batch_size: usize| {
        let mut w = window(settings);
        let batches: Vec<Vec<ApiCall>> = calls.chunks(batch_size).map(|c| c.to_vec()).collect();
        let (windows, late) = run(&mut w, batches, true);
        let mut latest: BTreeMap<(i64, String), Row> = BTreeMap::new();
        for row in rows(&windows) {
            latest.insert((row.start, row.model.clone()), row);
        }
        let late_rows: usize = late.iter().map(|b| b.num_rows()).sum();
        (
            latest
                .into_values()
                .map(|r| (r.start, r.model, r.count, r.p50))
                .collect::<Vec<_>>(),
            late_rows,
        )
    };
    let one_by_one = final_rows(1);
    assert_eq!(final_rows(7), one_by_one);
    assert_eq!(final_rows(500), one_by_one);
    let counted: u64 = one_by_one.0.iter().map(|r| r.2).sum();
    assert_eq!(
        counted as usize + one_by_one.1,
        500,
        "every row is counted or sent to late"
    );
    assert!(one_by_one.1 > 0, "the test data has too-late rows");
}

#[test]
fn an_idle_stream_advances_with_the_wall_clock() {
    let mut w = window(
        "size = \"10s\"\nout_of_orderness = \"1s\"\nidle_timeout = \"2s\"\nkey = [\"model\"]",
    );
    let (windows, _) = run(&mut w, vec![vec![call(1.0, "a", 1.0, Outcome::Ok)]], false);
    assert!(windows.is_empty());
    let arrived = w.last_arrival_wall.unwrap();
    let mut out = Collector::default();
    w.on_tick(arrived + SEC, &mut out).unwrap();
    assert!(out.take().0.is_empty(), "1 s idle is under the timeout");
    w.on_tick(arrived + 10 * SEC, &mut out).unwrap();
    let (batches, watermark) = out.take();
    assert_eq!(
        rows(&batches.into_iter().map(|(_, b)| b).collect::<Vec<_>>())[0].count,
        1
    );
    assert_eq!(watermark, Some(Watermark(10 * SEC)));
}

#[test]
fn type_mismatches_name_the_problem() {
    let config: WindowConfig = toml::from_str("size = \"10s\"").unwrap();
    let schema = window("size = \"10s\"").output_schema();
    let error = Window::new("w2", &config, &schema, ComponentMetrics::new())
        .err()
        .unwrap();
    assert_eq!(error.0, None);
    assert!(error.1.contains("no field `event_time`"), "{}", error.1);
    let config: WindowConfig = toml::from_str("size = \"10s\"\nkey = [\"status_code\"]").unwrap();
    let error = Window::new("w", &config, &api_call_schema(), ComponentMetrics::new())
        .err()
        .unwrap();
    assert_eq!(error.0, Some("key"));
    assert!(error.1.contains("must be text"), "{}", error.1);
    let config: WindowConfig =
        toml::from_str("kind = \"hopping\"\nsize = \"1m\"\nslide = \"7s\"").unwrap();
    assert_eq!(config.check().unwrap_err().0, "slide");
}

#[test]
fn a_window_restored_from_a_snapshot_continues_exactly_as_an_uninterrupted_one() {
    let settings =
        "size = \"10s\"\nout_of_orderness = \"2s\"\nallowed_lateness = \"5s\"\nkey = [\"model\"]";
    let calls: Vec<ApiCall> = (0..300)
        .map(|i| {
            // Out of order by up to 3 s, some late rows, two keys.
            let t = i as f64 * 0.1 - (i % 7) as f64 * 0.5;
            let model = if i % 3 == 0 { "a" } else { "b" };
            let outcome = if i % 11 == 0 {
                Outcome::ServerError
            } else {
                Outcome::Ok
            };
            call(t.max(0.0), model, 10.0 + (i * 37 % 500) as f64, outcome)
        })
        .collect();
    let batches: Vec<Vec<ApiCall>> = calls.chunks(17).map(|c| c.to_vec()).collect();
    let mut whole = window(settings);
    let (expected, expected_late) = run(&mut whole, batches.clone(), true);

    let (first, second) = batches.split_at(9);
    let mut before = window(settings);
    let (mut got, mut got_late) = run(&mut before, first.to_vec(), false);
    let state = before.snapshot().unwrap().expect("a window has state");
    drop(before);
    let mut after = window(settings);
    after.restore(&state).unwrap();
    let (rest, rest_late) = run(&mut after, second.to_vec(), true);
    got.extend(rest);
    got_late.extend(rest_late);
    assert_eq!(rows(&got), rows(&expected));
    let late_rows = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
    assert_eq!(late_rows(&got_late), late_rows(&expected_late));
    assert!(!rows(&expected).is_empty());

    // State from a window keyed differently does not fit.
    let mut other = window("size = \"10s\"\nkey = [\"model\", \"endpoint\"]");
    assert!(other.restore(&state).is_err());
}

#[test]
fn revisions_do_not_depend_on_how_rows_were_batched() {
    let settings =
        "size = \"10s\"\nout_of_orderness = \"500ms\"\nallowed_lateness = \"5s\"\nkey = [\"model\"]";
    let calls: Vec<ApiCall> = (0..2_000)
        .map(|j: i64| {
            let disorder = (j * 2_654_435_761) % 61;
            let t = (j * 50 - disorder * 50) as f64 / 1000.0;
            call(
                t.max(0.0),
                ["a", "b"][(j % 2) as usize],
                10.0 + (j % 97) as f64,
                Outcome::Ok,
            )
        })
        .collect();
    let mut reference: Option<Vec<Row>> = None;
    for batch_size in [1, 7, 100, 2_000] {
        let mut w = window(settings);
        let batches = calls.chunks(batch_size).map(|c| c.to_vec()).collect();
        let (windows, _) = run(&mut w, batches, true);
        let got = rows(&windows);
        assert!(
            got.iter().any(|r| r.revision > 0),
            "late rows revise windows"
        );
        match &reference {
            None => reference = Some(got),
            Some(expected) => assert_eq!(&got, expected, "batches of {batch_size}"),
        }
    }
}

#[test]
fn partial_windows_at_the_start_and_end_of_a_stream_are_said_as_such() {
    let mut w = window("size = \"10s\"\nout_of_orderness = \"0s\"\nkey = [\"model\"]");
    // 25 calls a second from 5 s to 27.5 s, then the stream ends.
    let calls: Vec<ApiCall> = (0..563)
        .map(|i| call(5.0 + i as f64 * 0.04, "a", 1.0, Outcome::Ok))
        .collect();
    let (windows, _) = run(&mut w, vec![calls], true);
    let mut found = Vec::new();
    for batch in &windows {
        let start = batch
            .column_by_name("window_start")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let partial = batch.column_by_name("partial").unwrap().as_boolean();
        let covered = batch
            .column_by_name("covered_seconds")
            .unwrap()
            .as_primitive::<Float64Type>();
        let rate = batch
            .column_by_name("rate_per_sec")
            .unwrap()
            .as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            found.push((
                start.value(row) / SEC,
                partial.value(row),
                covered.value(row),
                rate.value(row),
            ));
        }
    }
    assert_eq!(found.len(), 3, "{found:?}");
    let (first, middle, last) = (found[0], found[1], found[2]);
    assert_eq!((first.0, first.1), (0, true));
    assert!(
        (first.2 - 5.0).abs() < 1e-6 && (first.3 - 25.0).abs() < 0.01,
        "{first:?}"
    );
    assert_eq!((middle.0, middle.1, middle.2), (10, false, 10.0));
    assert!((middle.3 - 25.0).abs() < 0.01, "{middle:?}");
    assert_eq!((last.0, last.1), (20, true));
    assert!(
        (last.2 - 7.48).abs() < 0.01 && (last.3 - 25.0).abs() < 0.2,
        "{last:?}"
    );
}

#[test]
fn a_held_back_stream_does_not_advance_with_the_wall_clock() {
    let mut w = window(
        "size = \"10s\"\nout_of_orderness = \"1s\"\nidle_timeout = \"2s\"\nkey = [\"model\"]",
    );
    // In a pipeline the runtime says whether the inputs' sources are idle; here they are
    // quiet because held back (a database down, say).
    w.on_inputs_idle(false);
    run(&mut w, vec![vec![call(1.0, "a", 1.0, Outcome::Ok)]], false);
    let arrived = w.last_arrival_wall.unwrap();
    let mut out = Collector::default();
    w.on_tick(arrived + 600 * SEC, &mut out).unwrap();
    let (batches, watermark) = out.take();
    assert!(
        batches.is_empty() && watermark.is_none(),
        "ten minutes held back move nothing"
    );
    // The rows held back arrive and land in their window, not in `late`.
    let (windows, late) = run(&mut w, vec![vec![call(5.0, "a", 1.0, Outcome::Ok)]], true);
    assert!(late.is_empty());
    assert_eq!(rows(&windows)[0].count, 2);
    // Idle again: the wall clock may move event time.
    w.on_inputs_idle(true);
}

fn future_events(w: &Window) -> u64 {
    w.counters.future_events.load(Ordering::Relaxed)
}

#[test]
fn events_from_2100_and_1970_never_move_anything() {
    let mut w = window("size = \"10s\"\nout_of_orderness = \"2s\"\nkey = [\"model\"]");
    let now = engine::time::now_micros() as f64 / SEC as f64;
    let start = (now / 10.0).floor() * 10.0 - 120.0;
    let year_2100 = 4_102_444_800.0;
    let mut batches = Vec::new();
    for i in 0..200 {
        let mut batch = vec![call(start + i as f64 * 0.5, "good", 1.0, Outcome::Ok)];
        if i % 50 == 7 {
            batch.push(call(year_2100, "bad", 1.0, Outcome::Ok));
            batch.push(call(1.0, "bad", 1.0, Outcome::Ok));
        }
        batches.push(batch);
    }
    let (windows, late) = run(&mut w, batches, true);
    let good: Vec<Row> = rows(&windows)
        .into_iter()
        .filter(|r| r.model == "good")
        .collect();
    assert_eq!(good.len(), 10, "every good window: {good:?}");
    assert!(
        good.iter().all(|r| r.count == 20 && r.revision == 0),
        "{good:?}"
    );
    assert!(rows(&windows).iter().all(|r| r.model == "good"));
    let late_rows: usize = late.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(late_rows, 8, "four from 2100 and four from 1970");
    assert_eq!(future_events(&w), 4);
}

#[test]
fn keys_past_max_keys_count_under_other_and_closed_keys_are_forgotten() {
    let settings = "size = \"10s\"\nout_of_orderness = \"0s\"\nkey = [\"model\"]\nmax_keys = 10";
    let mut w = window(settings);
    let calls: Vec<ApiCall> = (0..50)
        .map(|i| call(1.0 + i as f64 * 0.1, &format!("m{i}"), 1.0, Outcome::Ok))
        .collect();
    let (windows, _) = run(&mut w, vec![calls.clone()], false);
    assert!(windows.is_empty());
    // A call at 100 s closes the first window; then 50 new keys come.
    let later: Vec<ApiCall> = (0..50)
        .map(|i| call(100.0 + i as f64 * 0.1, &format!("n{i}"), 1.0, Outcome::Ok))
        .collect();
    let (windows, _) = run(
        &mut w,
        vec![vec![call(100.0, "m0", 1.0, Outcome::Ok)], later],
        true,
    );
    let rows = rows(&windows);
    let first: Vec<&Row> = rows.iter().filter(|r| r.start == 0).collect();
    assert_eq!(
        first.iter().map(|r| r.count).sum::<u64>(),
        50,
        "every call counted"
    );
    assert_eq!(first.len(), 10, "9 keys and `other`: {first:?}");
    assert_eq!(
        first.iter().find(|r| r.model == OTHER_KEY).unwrap().count,
        41
    );
    // The first window's keys were forgotten once it closed: the second has its own nine.
    let second: Vec<&Row> = rows.iter().filter(|r| r.start == 100).collect();
    assert_eq!(second.len(), 10, "{second:?}");
    assert!(second.iter().any(|r| r.model == "m0") && second.iter().any(|r| r.model == "n0"));
    assert_eq!(second.iter().map(|r| r.count).sum::<u64>(), 51);
    assert_eq!(w.counters.keys_capped.load(Ordering::Relaxed), 41 + 42);

    let mut dropping = window(&format!("{settings}\non_max_keys = \"drop\""));
    let (windows, _) = run(&mut dropping, vec![calls], true);
    let kept = self::rows(&windows);
    assert_eq!(kept.len(), 10);
    assert_eq!(kept.iter().map(|r| r.count).sum::<u64>(), 10);
    assert_eq!(dropping.counters.keys_dropped.load(Ordering::Relaxed), 40);
}
