//! Throughput of the storage sinks against the real servers:
//! - raw api_call rows/s into PostgreSQL through the timescaledb sink (binary COPY in
//!   transactions of `--batch-size` rows), against `psql \copy` of the same rows from a file
//!   into an identical table, in the same run;
//! - window result rows/s into Redis through the redis sink (hash + series + key set + PUBLISH
//!   per row, pipelined per batch).
//!
//! cargo run --release -p benches --bin store-throughput -- --rows 2000000

use std::process::Command;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use clap::Parser;
use engine::component::{Collector, CommitPlan, Operator, Sink};
use engine::config::SourceText;
use engine::message::Barrier;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::api_call::api_call_schema;
use tokio_postgres::NoTls;

#[derive(Parser)]
struct Options {
    /// api_call rows written to PostgreSQL.
    #[arg(long, default_value_t = 2_000_000)]
    rows: usize,
    /// Rows per transaction of the sink.
    #[arg(long, default_value_t = 100_000)]
    batch_size: usize,
    /// Window result rows written to Redis.
    #[arg(long, default_value_t = 200_000)]
    window_rows: usize,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

fn build_sink(settings: &str, input: SchemaRef) -> anyhow::Result<Box<dyn Sink>> {
    let text = format!("[sinks.s]\ninputs = [\"x\"]\n{settings}\n");
    let source =
        SourceText::new("bench.toml", text, |_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let file = source.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let context = BuildContext {
        spec: &file.pipelines[0].components[0],
        input_schemas: vec![input],
        metrics: ComponentMetrics::new(),
    };
    let sink = if settings.contains("\"redis\"") {
        sinks::redis::build(&context)
    } else {
        sinks::postgres::build(&context)
    };
    sink.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn postgres(options: &Options) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(&options.postgres, NoTls).await?;
    tokio::spawn(connection);
    let batches = benches::synthetic_batches(options.rows.div_ceil(8192), 8192, 50_000.0, 8);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let table = format!("bench_calls_{}", uuid::Uuid::new_v4().simple());
    let twin = format!("{table}_psql");
    let mut sink = build_sink(
        &format!(
            "type = \"timescaledb\"\nurl = \"{}\"\ntable = \"{table}\"\nbatch_size = {}\nflush_interval = \"1h\"",
            options.postgres, options.batch_size
        ),
        api_call_schema(),
    )?;
    // As in a pipeline with checkpoints: every row tagged with its writer and checkpoint,
    // which is what keeps raw rows exactly once across a crash.
    sink.begin(Some(CommitPlan {
        restored: 0,
        next: 1,
        lineage: 1,
    }))
    .await?;
    let started = Instant::now();
    for batch in &batches {
        sink.write(batch.clone()).await?;
    }
    sink.checkpoint(Barrier {
        checkpoint_id: 1,
        started_at_micros: 0,
    })
    .await?;
    let sink_seconds = started.elapsed().as_secs_f64();

    let file = tempfile::NamedTempFile::new()?;
    let path = file.path().display().to_string();
    let psql = |command: String| -> anyhow::Result<f64> {
        let started = Instant::now();
        let output = Command::new("psql")
            .args([
                &options.postgres,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                &command,
            ])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(started.elapsed().as_secs_f64())
    };
    psql(format!("\\copy \"{table}\" TO '{path}'"))?;
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{twin}\" (LIKE \"{table}\" INCLUDING ALL)"
        ))
        .await?;
    let psql_seconds = psql(format!("\\copy \"{twin}\" FROM '{path}'"))?;
    let counted: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{twin}\""), &[])
        .await?
        .get(0);
    anyhow::ensure!(counted as usize == rows, "psql copied {counted} rows");
    client
        .batch_execute(&format!("DROP TABLE \"{table}\"; DROP TABLE \"{twin}\""))
        .await?;
    let sink_rate = rows as f64 / sink_seconds;
    let psql_rate = rows as f64 / psql_seconds;
    println!(
        "postgres sink (binary COPY, {} rows/transaction): {rows} rows in {sink_seconds:.2} s = {sink_rate:.0} rows/s",
        options.batch_size
    );
    println!("psql \\copy of the same rows from a file:           {rows} rows in {psql_seconds:.2} s = {psql_rate:.0} rows/s");
    println!("ratio sink / psql: {:.2}", sink_rate / psql_rate);
    Ok(())
}

async fn redis(options: &Options) -> anyhow::Result<()> {
    // Window results over many keys: 1,000 models x 2 endpoints, 10 s windows.
    let config: operators::window::WindowConfig =
        toml::from_str("size = \"10s\"\nout_of_orderness = \"0s\"")?;
    let mut window = operators::window::Window::new(
        "per_10s",
        &config,
        &api_call_schema(),
        ComponentMetrics::new(),
    )
    .map_err(|(key, message)| anyhow::anyhow!("window {key:?}: {message}"))?;
    let schema = window.output_schema();
    let events = options.window_rows * 20;
    let batches = benches::synthetic_batches(events.div_ceil(8192), 8192, 20_000.0, 1_000);
    let mut out = Collector::default();
    for batch in &batches {
        window.process(0, batch, &mut out)?;
    }
    window.on_end(&mut out)?;
    let results: Vec<RecordBatch> = out.take().0.into_iter().map(|(_, b)| b).collect();
    let rows: usize = results.iter().map(RecordBatch::num_rows).sum();
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut sink = build_sink(
        &format!(
            "type = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\nttl = \"5m\"",
            options.redis
        ),
        schema,
    )?;
    let started = Instant::now();
    for batch in results {
        sink.write(batch).await?;
    }
    sink.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "redis sink: {rows} window results in {seconds:.2} s = {:.0} results/s (hash + series + key set + PUBLISH each)",
        rows as f64 / seconds
    );
    let client = ::redis::Client::open(options.redis.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut connection)
        .await?;
    if !keys.is_empty() {
        let _: () = ::redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        postgres(&options).await?;
        redis(&options).await
    })
}
