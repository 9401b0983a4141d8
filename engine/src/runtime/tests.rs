//! Runtime tests with small test components: fan-out, fan-in, barriers through operators to
//! every sink, backpressure, and flushing on shutdown.

use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use super::*;
use crate::component::{Collector, ComponentResult, SourceContext};
use crate::config::SourceText;
use crate::message::{Barrier, Watermark};
use crate::registry::{BuiltOperator, BuiltSource};
use crate::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall};

fn batch(rows: usize) -> RecordBatch {
    let calls: Vec<ApiCall> = (0..rows)
        .map(|i| ApiCall {
            event_time: i as i64,
            request_id: format!("r{i}"),
            latency_ms: 1.0,
            ..Default::default()
        })
        .collect();
    api_calls_to_batch(&calls)
}

/// Sends `batches` batches of `rows` rows, then forwards barriers until shutdown (or returns at
/// once when `linger` is false).
struct TestSource {
    batches: usize,
    rows: usize,
    linger: bool,
}

#[async_trait]
impl Source for TestSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> ComponentResult {
        for _ in 0..self.batches {
            ctx.output.send_batch(0, batch(self.rows)).await?;
        }
        ctx.output
            .send_control(Message::Watermark(Watermark(1_000)))
            .await?;
        if !self.linger {
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                Some(barrier) = ctx.barriers.recv() => {
                    ctx.output.send_control(Message::Barrier(barrier)).await?;
                }
            }
        }
        Ok(())
    }
}

/// Passes batches through and counts barriers; holds one batch back until the end, like a
/// window would.
struct HoldLast {
    held: Option<RecordBatch>,
    barriers: Arc<Mutex<Vec<u64>>>,
}

impl Operator for HoldLast {
    fn process(
        &mut self,
        _input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> ComponentResult {
        if let Some(previous) = self.held.replace(batch.clone()) {
            out.emit(previous);
        }
        Ok(())
    }
    fn on_barrier(&mut self, barrier: Barrier) -> ComponentResult {
        self.barriers.lock().unwrap().push(barrier.checkpoint_id);
        Ok(())
    }
    fn on_end(&mut self, out: &mut Collector) -> ComponentResult {
        if let Some(batch) = self.held.take() {
            out.emit(batch);
        }
        Ok(())
    }
}

#[derive(Default)]
struct Seen {
    rows: usize,
    checkpoints: Vec<u64>,
    closed: bool,
    watermark: Option<i64>,
}

struct CollectSink {
    seen: Arc<Mutex<Seen>>,
    delay: Duration,
}

#[async_trait]
impl Sink for CollectSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.seen.lock().unwrap().rows += batch.num_rows();
        Ok(())
    }
    async fn on_watermark(&mut self, watermark: Watermark) -> ComponentResult {
        self.seen.lock().unwrap().watermark = Some(watermark.0);
        Ok(())
    }
    async fn checkpoint(&mut self, barrier: Barrier) -> ComponentResult {
        self.seen
            .lock()
            .unwrap()
            .checkpoints
            .push(barrier.checkpoint_id);
        Ok(())
    }
    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }
    async fn close(&mut self) -> ComponentResult {
        self.seen.lock().unwrap().closed = true;
        Ok(())
    }
}

/// What each collecting sink saw, by sink id.
type SeenBySink = Arc<Mutex<Vec<(String, Arc<Mutex<Seen>>)>>>;

struct Harness {
    registry: Registry,
    sinks: SeenBySink,
    barriers: Arc<Mutex<Vec<u64>>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSettings {
    batches: usize,
    rows: usize,
    #[serde(default)]
    linger: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSettings {
    #[serde(default)]
    delay_ms: u64,
}

fn harness() -> Harness {
    let mut registry = Registry::new();
    let sinks: SeenBySink = Arc::default();
    let barriers: Arc<Mutex<Vec<u64>>> = Arc::default();
    registry.add_source("test", |ctx| {
        let s: SourceSettings = ctx.spec.settings()?;
        Ok(BuiltSource {
            source: Box::new(TestSource {
                batches: s.batches,
                rows: s.rows,
                linger: s.linger,
            }),
            schema: api_call_schema(),
        })
    });
    let op_barriers = barriers.clone();
    registry.add_operator("hold", move |ctx| {
        let schema = ctx.input_schema()?;
        Ok(BuiltOperator {
            operator: Box::new(HoldLast {
                held: None,
                barriers: op_barriers.clone(),
            }),
            outputs: vec![OutputPort::default_port(schema)],
        })
    });
    let sink_list = sinks.clone();
    registry.add_sink("collect", move |ctx| {
        let s: SinkSettings = ctx.spec.settings()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        sink_list
            .lock()
            .unwrap()
            .push((ctx.spec.id.clone(), seen.clone()));
        Ok(Box::new(CollectSink {
            seen,
            delay: Duration::from_millis(s.delay_ms),
        }) as Box<dyn Sink>)
    });
    Harness {
        registry,
        sinks,
        barriers,
    }
}

fn seen(h: &Harness, id: &str) -> Arc<Mutex<Seen>> {
    h.sinks
        .lock()
        .unwrap()
        .iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s.clone())
        .unwrap()
}

fn built(h: &Harness, text: &str) -> BuiltPipeline {
    let source = SourceText::new("t.toml", text, |_| None).unwrap();
    let file = source.parse().unwrap();
    build(&file.pipelines[0], &h.registry).unwrap()
}

#[tokio::test]
async fn fan_out_and_fan_in_deliver_every_row_and_flush_on_end() {
    let h = harness();
    let pipeline = built(
        &h,
        r#"
[sources.a]
type = "test"
batches = 10
rows = 7
[sources.b]
type = "test"
batches = 5
rows = 3
[operators.merge]
type = "hold"
inputs = ["a", "b"]
[sinks.one]
type = "collect"
inputs = ["merge"]
[sinks.two]
type = "collect"
inputs = ["merge", "a"]
"#,
    );
    let report = pipeline.run(CancellationToken::new()).await.unwrap();
    assert_eq!(seen(&h, "one").lock().unwrap().rows, 85);
    assert_eq!(seen(&h, "two").lock().unwrap().rows, 85 + 70);
    assert!(seen(&h, "one").lock().unwrap().closed);
    // The end of every input closes all windows downstream.
    assert_eq!(seen(&h, "one").lock().unwrap().watermark, Some(i64::MAX));
    let merge = report.component("merge").unwrap();
    assert_eq!(merge.metrics.events_in, 85);
    assert_eq!(merge.metrics.events_out, 85);
    assert_eq!(merge.metrics.batches_in, 15);
    assert_eq!(report.component("a").unwrap().metrics.events_out, 70);
    assert_eq!(report.component("two").unwrap().metrics.queue_depth, 0);
}

#[tokio::test]
async fn barriers_flow_through_operators_and_every_sink_acknowledges() {
    let h = harness();
    let pipeline = built(
        &h,
        r#"
[runtime]
checkpoint_interval = "0s"
[sources.a]
type = "test"
batches = 3
rows = 2
linger = true
[sources.b]
type = "test"
batches = 1
rows = 1
linger = true
[operators.merge]
type = "hold"
inputs = ["a", "b"]
[sinks.one]
type = "collect"
inputs = ["merge"]
[sinks.two]
type = "collect"
inputs = ["merge", "b"]
"#,
    );
    let shutdown = CancellationToken::new();
    let (mut handle, run) = pipeline.start(shutdown.clone());
    let run = tokio::spawn(run);
    assert_eq!(handle.checkpoint().await, Some(1));
    assert_eq!(handle.checkpoint().await, Some(2));
    assert_eq!(handle.completed(), 2);
    shutdown.cancel();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.checkpoints.completed, 2);
    assert_eq!(*h.barriers.lock().unwrap(), vec![1, 2]);
    for sink in ["one", "two"] {
        assert_eq!(seen(&h, sink).lock().unwrap().checkpoints, vec![1, 2]);
    }
    // The barrier came after all data that preceded it; the held batch arrives at shutdown.
    assert_eq!(seen(&h, "one").lock().unwrap().rows, 7);
    assert_eq!(
        report.component("one").unwrap().metrics.checkpoints_acked,
        2
    );
}

#[tokio::test]
async fn a_slow_sink_holds_the_source_back_through_bounded_channels() {
    let h = harness();
    let pipeline = built(
        &h,
        r#"
[runtime]
channel_capacity = 2
[sources.a]
type = "test"
batches = 40
rows = 1
[operators.pass]
type = "hold"
inputs = ["a"]
[sinks.slow]
type = "collect"
inputs = ["pass"]
delay_ms = 5
"#,
    );
    let metrics = pipeline.metrics();
    let run = tokio::spawn(pipeline.run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(60)).await;
    let source_out = metrics.get("a").unwrap().snapshot().events_out;
    let sink_in = metrics.get("slow").unwrap().snapshot().events_in;
    // At most: two queues of two, one held batch, one batch in each task's hands.
    assert!(
        source_out - sink_in <= 8,
        "source ran ahead: sent {source_out}, sink got {sink_in}"
    );
    assert!(source_out < 40, "the source was not held back");
    run.await.unwrap().unwrap();
    assert_eq!(seen(&h, "slow").lock().unwrap().rows, 40);
}

#[test]
fn unknown_types_and_ports_are_located_errors() {
    let h = harness();
    let source = SourceText::new(
        "t.toml",
        "[sources.a]\ntype = \"tset\"\nbatches = 1\nrows = 1\n",
        |_| None,
    )
    .unwrap();
    let file = source.parse().unwrap();
    let errors = build(&file.pipelines[0], &h.registry).err().unwrap();
    assert_eq!((errors.0[0].line, errors.0[0].column), (2, 8));
    assert!(errors.0[0]
        .message
        .contains("unknown source type `tset`; expected one of: test"));

    let source = SourceText::new(
        "t.toml",
        "[sources.a]\ntype = \"test\"\nbatches = 1\nrows = 1\n[sinks.s]\ntype = \"collect\"\ninputs = [\"a.late\"]\n",
        |_| None,
    )
    .unwrap();
    let file = source.parse().unwrap();
    let errors = build(&file.pipelines[0], &h.registry).err().unwrap();
    assert_eq!((errors.0[0].line, errors.0[0].column), (7, 11));
    assert!(
        errors.0[0].message.contains("`a` has no output `late`"),
        "{}",
        errors.0[0]
    );
}

/// Counts rows; its count is its checkpointed state. `restored` records what it got back.
struct Counter {
    rows: u64,
    restored: Arc<Mutex<Vec<(String, u64)>>>,
    id: String,
}

impl Operator for Counter {
    fn process(&mut self, _: usize, batch: &RecordBatch, out: &mut Collector) -> ComponentResult {
        self.rows += batch.num_rows() as u64;
        out.emit(batch.clone());
        Ok(())
    }
    fn snapshot(&mut self) -> ComponentResult<Option<Vec<u8>>> {
        crate::state::snapshot(&self.rows)
    }
    fn restore(&mut self, state: &[u8]) -> ComponentResult {
        self.rows = crate::state::restore(state)?;
        self.restored
            .lock()
            .unwrap()
            .push((self.id.clone(), self.rows));
        Ok(())
    }
}

fn counting_registry(restored: &Arc<Mutex<Vec<(String, u64)>>>) -> Harness {
    let mut h = harness();
    let restored = restored.clone();
    h.registry.add_operator("count", move |ctx| {
        #[derive(serde::Deserialize)]
        struct Settings {
            #[serde(default)]
            #[allow(dead_code)]
            label: String,
        }
        let _: Settings = ctx.spec.settings()?;
        Ok(BuiltOperator {
            operator: Box::new(Counter {
                rows: 0,
                restored: restored.clone(),
                id: ctx.spec.id.clone(),
            }),
            outputs: vec![OutputPort::default_port(ctx.input_schema()?)],
        })
    });
    h
}

async fn run_with_checkpoint(h: &Harness, text: &str) -> RunReport {
    let pipeline = built(h, text);
    let stop = CancellationToken::new();
    let (mut handle, run) = pipeline.start(stop.clone());
    let task = tokio::spawn(run);
    let completed = handle.checkpoint().await.expect("a checkpoint completes");
    assert!(completed > 0);
    stop.cancel();
    task.await.unwrap().unwrap()
}

#[tokio::test]
async fn state_is_restored_into_unchanged_operators_and_dropped_for_changed_ones() {
    let dir = std::env::temp_dir().join(format!(
        "runtime-restore-{}-{}",
        std::process::id(),
        crate::time::now_micros()
    ));
    let config = |label: &str| {
        format!(
            r#"
[runtime]
checkpoint_interval = "1h"
checkpoint_dir = "{}"
[sources.in]
type = "test"
batches = 3
rows = 5
linger = true
[operators.kept]
type = "count"
inputs = ["in"]
[operators.changed]
type = "count"
inputs = ["kept"]
label = "{label}"
[sinks.out]
type = "collect"
inputs = ["changed"]
"#,
            dir.display()
        )
    };
    let restored: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let h = counting_registry(&restored);
    let first = run_with_checkpoint(&h, &config("one")).await;
    assert_eq!(first.checkpoints.restored, 0);
    assert!(
        restored.lock().unwrap().is_empty(),
        "nothing to restore at first"
    );

    // Same config: both counters continue from 15 rows.
    let second = run_with_checkpoint(&h, &config("one")).await;
    assert!(second.checkpoints.restored > 0);
    let mut got = restored.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec![("changed".into(), 15), ("kept".into(), 15)]);

    // `changed` has new settings: its state is dropped, `kept` continues from 30.
    restored.lock().unwrap().clear();
    let third = run_with_checkpoint(&h, &config("two")).await;
    assert!(third.checkpoints.restored > second.checkpoints.restored);
    assert_eq!(*restored.lock().unwrap(), vec![("kept".to_string(), 30)]);

    // The newest checkpoint is damaged (a flipped byte): the one before it is restored.
    let newest = dir
        .join("main")
        .join(format!("chk-{:020}", newest_checkpoint(&dir)))
        .join("kept.state");
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&newest, bytes).unwrap();
    restored.lock().unwrap().clear();
    let fourth = run_with_checkpoint(&h, &config("two")).await;
    assert_eq!(fourth.checkpoints.restored, third.checkpoints.restored);
    assert_eq!(*restored.lock().unwrap(), vec![("kept".to_string(), 30)]);
    let _ = std::fs::remove_dir_all(dir);
}

/// The id of the newest checkpoint directory.
fn newest_checkpoint(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("main"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("chk-")?
                .parse()
                .ok()
        })
        .max()
        .unwrap()
}
