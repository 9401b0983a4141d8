//! Shared helpers for the benchmarks: deterministic api_call batches, and pipelines built from
//! pipelines.toml text with every component type registered.

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

/// Builds a pipeline from pipelines.toml `text` (`name` appears in its errors), with every
/// source, operator and sink type registered and no environment variables.
pub fn build_pipeline(name: &str, text: &str) -> anyhow::Result<engine::runtime::BuiltPipeline> {
    let mut registry = engine::registry::Registry::new();
    sources::register(&mut registry);
    operators::register(&mut registry);
    sinks::register(&mut registry);
    engine::runtime::build_from_text(name, text, |_| None, &registry)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub mod fuzz;
pub mod median_interval;
pub mod nab;
pub mod ticker;

/// `GET path` from the HTTP/1.1 server at `address` (`host:port`) over a fresh connection:
/// the status and the body, or `None` when it does not answer. Answers with a
/// `content-length` body only (what the pipeline's API and Chromium's DevTools send).
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The `pipeline` binary built beside the running bench binary (same profile).
pub fn pipeline_binary() -> anyhow::Result<std::path::PathBuf> {
    let binary = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the bench binary has no directory"))?
        .join("pipeline");
    anyhow::ensure!(
        binary.exists(),
        "build the pipeline binary first: cargo build --release -p pipeline"
    );
    Ok(binary)
}
