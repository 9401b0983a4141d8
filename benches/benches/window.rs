//! Criterion benchmarks of the window + aggregate + percentile path, per core, with the cost of
//! the bare DDSketch inserts measured in the same run as the floor to compare against.

use std::hint::black_box;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::component::{Collector, Operator};
use engine::metrics::ComponentMetrics;
use engine::schema::api_call::api_call_schema;
use operators::window::{Window, WindowConfig};
use sketches_ddsketch::{Config, DDSketch};

const BATCHES: usize = 200;
const BATCH_SIZE: usize = 4096;

fn window(settings: &str) -> Window {
    let config: WindowConfig = toml::from_str(settings).expect("valid window settings");
    config.check().expect("valid window settings");
    Window::new(
        "bench",
        &config,
        &api_call_schema(),
        ComponentMetrics::new(),
    )
    .expect("api_call input")
}

fn run_window(settings: &str, batches: &[RecordBatch]) -> usize {
    let mut w = window(settings);
    let mut out = Collector::default();
    let mut rows = 0;
    for batch in batches {
        w.process(0, batch, &mut out).expect("window processes");
        rows += out.take().0.len();
    }
    w.on_end(&mut out).expect("window flushes");
    rows + out.take().0.len()
}

fn benches(c: &mut Criterion) {
    // 100k events/s of event time: a 10 s window closes every 1M events.
    let batches = benches::synthetic_batches(BATCHES, BATCH_SIZE, 100_000.0, 3);
    let events = (BATCHES * BATCH_SIZE) as u64;
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);

    group.bench_function("ddsketch_insert_only_baseline", |b| {
        b.iter(|| {
            let mut sketch = DDSketch::new(Config::new(0.01, 2048, 1e-9));
            for batch in &batches {
                let latency = batch
                    .column_by_name("latency_ms")
                    .expect("latency")
                    .as_primitive::<Float64Type>();
                for value in latency.values() {
                    sketch.add(*value);
                }
            }
            black_box(sketch.count())
        })
    });
    group.bench_function("tumbling_10s_model_endpoint_p50_p90_p95_p99", |b| {
        b.iter(|| black_box(run_window("size = \"10s\"", &batches)))
    });
    group.bench_function("tumbling_1m_model_endpoint", |b| {
        b.iter(|| black_box(run_window("size = \"1m\"", &batches)))
    });
    group.bench_function("hopping_1m_slide_10s", |b| {
        b.iter(|| {
            black_box(run_window(
                "kind = \"hopping\"\nsize = \"1m\"\nslide = \"10s\"",
                &batches,
            ))
        })
    });
    group.finish();

    let many_keys = benches::synthetic_batches(BATCHES, BATCH_SIZE, 100_000.0, 500);
    let mut group = c.benchmark_group("window_1000_keys");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("tumbling_10s", |b| {
        b.iter(|| black_box(run_window("size = \"10s\"", &many_keys)))
    });
    group.finish();

    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    let filter =
        operators::filter::compile("status_code >= 500 OR latency_ms > 400", &api_call_schema())
            .expect("valid condition");
    group.bench_function("status_or_latency", |b| {
        b.iter(|| {
            let mut kept = 0;
            for batch in &batches {
                kept += filter.apply(batch).expect("filter applies").num_rows();
            }
            black_box(kept)
        })
    });
    group.finish();
}

criterion_group!(window_benches, benches);
criterion_main!(window_benches);
