//! Shared helpers for the benchmarks: deterministic api_call batches.

use arrow::record_batch::RecordBatch;
use engine::schema::api_call::ApiCallBatchBuilder;
use sources::generator::{Generator, GeneratorConfig};

/// `batches` batches of `batch_size` synthetic calls, `rate` events per second of event time,
/// over `models` x 2 endpoints.
pub fn synthetic_batches(
    batches: usize,
    batch_size: usize,
    rate: f64,
    models: usize,
) -> Vec<RecordBatch> {
    let model_list: Vec<String> = (0..models).map(|i| format!("\"model-{i}\"")).collect();
    let config: GeneratorConfig = toml::from_str(&format!(
        "rate = {rate}\nclock = \"simulated\"\nstart_time = \"2026-01-01T00:00:00Z\"\nseed = 1\nbatch_size = {batch_size}\nmodels = [{}]\nendpoints = [\"/v1/chat/completions\", \"/v1/embeddings\"]",
        model_list.join(", ")
    ))
    .expect("benchmark generator config is valid");
    let mut generator = Generator::new(config);
    let mut builder = ApiCallBatchBuilder::with_capacity(batch_size);
    (0..batches)
        .map(|_| {
            generator
                .next_batch(i64::MAX, &mut builder)
                .expect("the generator is unbounded")
        })
        .collect()
}

pub mod nab;
