//! The parquet sink against a real directory: Hive layout by date and hour, files appear only
//! when complete (at a barrier, on close, or when rolled), and read back row for row.

use std::path::Path;

use engine::component::Sink;
use engine::config::SourceText;
use engine::message::Barrier;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::api_call::{api_call_schema, api_calls_to_batch, batch_to_api_calls, ApiCall};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const HOUR: i64 = 3_600_000_000;
// 2026-03-04T05:00:00Z
const T0: i64 = 1_772_600_400_000_000;

fn calls(start: i64, n: usize, step: i64) -> Vec<ApiCall> {
    (0..n)
        .map(|i| ApiCall {
            event_time: start + i as i64 * step,
            request_id: format!("r{start}-{i}"),
            model: Some("m".into()),
            latency_ms: i as f64,
            ..Default::default()
        })
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A parquet sink writing under `dir`, with extra settings (TOML lines).
fn sink(dir: &Path, settings: &str) -> Box<dyn Sink> {
    let text = format!(
        "[sinks.history]\ntype = \"parquet\"\ninputs = [\"x\"]\npath = \"{}\"\n{settings}\n",
        dir.display()
    );
    let source = SourceText::new("t.toml", text, |_| None).unwrap();
    let file = source.parse().unwrap();
    let context = BuildContext {
        spec: &file.pipelines[0].components[0],
        input_schemas: vec![api_call_schema()],
        metrics: ComponentMetrics::new(),
    };
    sinks::parquet::build(&context).unwrap()
}

#[tokio::test]
async fn files_are_partitioned_by_hour_and_appear_only_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(dir.path(), "max_file_age = \"1h\"");
    // 30 rows every 4 minutes: spans 05:00 to 06:56, two hour partitions.
    let rows = calls(T0, 30, 4 * 60_000_000);
    sink.write(api_calls_to_batch(&rows)).await.unwrap();
    assert!(
        files(dir.path()).is_empty(),
        "nothing is visible before a barrier: {:?}",
        files(dir.path())
    );
    sink.checkpoint(Barrier {
        checkpoint_id: 1,
        started_at_micros: 0,
    })
    .await
    .unwrap();
    let written = files(dir.path());
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(
        written[0].starts_with("api_calls/date=2026-03-04/hour=05/part-"),
        "{written:?}"
    );
    assert!(
        written[1].starts_with("api_calls/date=2026-03-04/hour=06/part-"),
        "{written:?}"
    );
    assert!(
        written.iter().all(|f| f.ends_with(".parquet")),
        "no staging files remain: {written:?}"
    );

    sink.write(api_calls_to_batch(&calls(T0 + 2 * HOUR, 5, 1)))
        .await
        .unwrap();
    sink.close().await.unwrap();
    let written = files(dir.path());
    assert_eq!(written.len(), 3, "{written:?}");

    let mut read_back = Vec::new();
    for file in &written {
        let reader = ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(dir.path().join(file)).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            read_back.extend(batch_to_api_calls(&batch.unwrap()).unwrap());
        }
    }
    let mut expected = rows;
    expected.extend(calls(T0 + 2 * HOUR, 5, 1));
    read_back.sort_by_key(|c| (c.event_time, c.request_id.clone()));
    expected.sort_by_key(|c| (c.event_time, c.request_id.clone()));
    assert_eq!(read_back, expected);
}

#[tokio::test]
async fn files_roll_at_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(dir.path(), "max_file_bytes = 4096\ncompression = \"none\"");
    for part in 0..20 {
        sink.write(api_calls_to_batch(&calls(T0 + part * 1000, 100, 1)))
            .await
            .unwrap();
    }
    let before_close = files(dir.path()).len();
    assert!(
        before_close >= 3,
        "4 KiB files from 2000 rows: only {before_close} written"
    );
    sink.close().await.unwrap();
    let written = files(dir.path());
    assert!(written
        .iter()
        .all(|f| f.starts_with("api_calls/date=2026-03-04/hour=05/")));
    let mut rows = 0;
    for file in &written {
        let reader = ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(dir.path().join(file)).unwrap(),
        )
        .unwrap();
        rows += reader.metadata().file_metadata().num_rows();
    }
    assert_eq!(rows, 2000);
}
