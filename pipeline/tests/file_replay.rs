//! The file source as users run it: a malformed line stops the replay naming file and line (or
//! is skipped and counted), Parquet history replays into the same results as its JSON source,
//! and `speed = 1.0` paces events by their recorded times.

use std::path::Path;
use std::time::{Duration, Instant};

use engine::runtime::{build_from_text, RunReport, RuntimeError};
use tokio_util::sync::CancellationToken;

async fn run(text: &str) -> Result<RunReport, RuntimeError> {
    build_from_text(
        "replay.toml",
        text,
        |_| None,
        &pipeline::components::registry(),
    )
    .unwrap()
    .run(CancellationToken::new())
    .await
}

fn line(second: u32, id: &str) -> String {
    format!(
        "{{\"timestamp\": \"2026-05-01T10:00:{second:02}Z\", \"request_id\": \"{id}\", \"gen_ai.request.model\": \"m\", \"http.route\": \"/e\", \"latency_ms\": 5.5}}"
    )
}

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn a_malformed_line_fails_with_its_line_number_or_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("calls.jsonl");
    write(
        &events,
        &[
            line(1, "a"),
            line(2, "b"),
            "{\"timestamp\": \"2026-05-01T10:00:03Z\", \"request_id\": 7}".to_string(),
            line(4, "d"),
        ],
    );
    let config = |on_error: &str| {
        format!(
            "[sources.calls]\ntype = \"file\"\npath = \"{}\"\non_error = \"{on_error}\"\n[sinks.out]\ntype = \"null\"\ninputs = [\"calls\"]\n",
            events.display()
        )
    };
    let error = run(&config("fail")).await.unwrap_err();
    assert_eq!(error.component, "calls");
    let message = error.to_string();
    assert!(
        message.contains("calls.jsonl:3: not an api_call event: invalid type: integer `7`"),
        "{message}"
    );

    let report = run(&config("skip")).await.unwrap();
    let calls = report.component("calls").unwrap();
    assert_eq!((calls.metrics.events_out, calls.metrics.errors), (3, 1));
    assert_eq!(report.component("out").unwrap().metrics.events_in, 3);
}

#[tokio::test]
async fn parquet_history_replays_into_the_same_windows_as_its_json_source() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("calls.jsonl");
    let lines: Vec<String> = (0..50).map(|i| line(i % 60, &format!("r{i}"))).collect();
    write(&events, &lines);
    let first = dir.path().join("first");
    let first_config = format!(
        "[sources.calls]\ntype = \"file\"\npath = \"{}\"\n[sinks.raw]\ntype = \"parquet\"\ninputs = [\"calls\"]\npath = \"{}\"\n",
        events.display(),
        first.display()
    );
    run(&first_config).await.unwrap();
    let parquet_file = std::fs::read_dir(first.join("api_calls/date=2026-05-01/hour=10"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let replay_config = format!(
        "[sources.history]\ntype = \"file\"\npath = \"{}\"\n[operators.w]\ntype = \"window\"\ninputs = [\"history\"]\nsize = \"1m\"\n[sinks.out]\ntype = \"null\"\ninputs = [\"w\"]\n",
        parquet_file.display()
    );
    let report = run(&replay_config).await.unwrap();
    assert_eq!(report.component("history").unwrap().metrics.events_out, 50);
    assert_eq!(
        report.component("w").unwrap().metrics.events_out,
        1,
        "one minute, one key"
    );
    assert_eq!(report.component("w").unwrap().metrics.late, 0);
}

#[tokio::test]
async fn recorded_speed_paces_events_by_their_times() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("calls.jsonl");
    // Two seconds of recorded time, replayed at 2x: about one second.
    write(&events, &[line(0, "a"), line(1, "b"), line(2, "c")]);
    let config = format!(
        "[sources.calls]\ntype = \"file\"\npath = \"{}\"\nspeed = 2.0\nbatch_size = 1\n[sinks.out]\ntype = \"null\"\ninputs = [\"calls\"]\n",
        events.display()
    );
    let started = Instant::now();
    let report = run(&config).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.component("out").unwrap().metrics.events_in, 3);
    assert!(
        elapsed >= Duration::from_millis(950),
        "replayed in {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "replayed in {elapsed:?}");
}
