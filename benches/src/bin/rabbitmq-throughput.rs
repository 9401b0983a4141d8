//! End-to-end throughput through the real RabbitMQ on 127.0.0.1:5672: an edge pipeline
//! (generator → rabbitmq sink, persistent messages with publisher confirms) and a central
//! pipeline (rabbitmq source → null sink, acknowledged through checkpoints) run at once; the
//! figure is events counted out of the central pipeline per second of wall time. Each
//! combination of encoding (JSON, Arrow) and batching (many events per message, or one) is
//! measured, and in the same run a plain consumer built the way the predecessor system did it:
//! one JSON event per message, each message decoded and acknowledged on its own (the
//! predecessor's per-event database insert is left out, which only flatters it).
//!
//! cargo run --release -p benches --bin rabbitmq-throughput -- --events 1000000

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Options {
    /// Events per batched measurement (a tenth of it when one event is sent per message).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per message when batching.
    #[arg(long, default_value_t = 200)]
    per_message: usize,
    /// Worker threads of the async runtime (the broker shares the machine).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
}

fn edge_config(url: &str, name: &str, events: u64, encoding: &str, per_message: usize) -> String {
    format!(
        r#"
[runtime]
checkpoint_interval = "0s"

[sources.calls]
type = "generator"
clock = "simulated"
start_time = "2026-01-01T00:00:00Z"
rate = 100000.0
count = {events}
batch_size = 4096
seed = 1

[sinks.broker]
type = "rabbitmq"
inputs = ["calls"]
url = "{url}"
exchange = "{name}"
queue = "{name}"
routing_key = "calls"
encoding = "{encoding}"
max_events_per_message = {per_message}
max_in_flight = 1024
"#
    )
}

fn central_config(url: &str, name: &str) -> String {
    format!(
        r#"
[runtime]
checkpoint_interval = "1s"

[sources.calls]
type = "rabbitmq"
url = "{url}"
queue = "{name}"
exchange = "{name}"
prefetch = 1024
batch_size = 8192
linger = "20ms"

[sinks.out]
type = "null"
inputs = ["calls"]
"#
    )
}

async fn cleanup(url: &str, name: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in [name.to_string(), format!("{name}.dead")] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [name.to_string(), format!("{name}.dead")] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// Runs the edge and the central pipeline together; returns (seconds until the central one
/// counted every event, seconds until every publish was confirmed).
async fn through_pipeline(
    url: &str,
    events: u64,
    encoding: &str,
    per_message: usize,
) -> anyhow::Result<(f64, f64)> {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let central = benches::build_pipeline("central.toml", &central_config(url, &name))?;
    let counted = central.metrics();
    let stop = CancellationToken::new();
    let (_, central_run) = central.start(stop.clone());
    let central_task = tokio::spawn(central_run);
    // Let the consumer declare and bind its queue first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let edge = benches::build_pipeline(
        "edge.toml",
        &edge_config(url, &name, events, encoding, per_message),
    )?;
    let started = Instant::now();
    let edge_task = tokio::spawn(edge.run(CancellationToken::new()));
    let sink = counted
        .get("out")
        .ok_or_else(|| anyhow::anyhow!("no sink metrics"))?;
    let mut published_at = None;
    let mut edge_task = Some(edge_task);
    while sink.events_in.load(Ordering::Relaxed) < events {
        if edge_task.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(task) = edge_task.take() {
                task.await??;
                published_at = Some(started.elapsed().as_secs_f64());
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "timed out: {} of {events} events arrived",
            sink.events_in.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(task) = edge_task.take() {
        task.await??;
    }
    let published = published_at.unwrap_or(elapsed);
    stop.cancel();
    central_task.await??;
    cleanup(url, &name).await?;
    Ok((elapsed, published))
}

/// The predecessor's way: one JSON event per message, decoded and acknowledged one at a time.
async fn plain_consumer(url: &str, events: u64) -> anyhow::Result<f64> {
    let name = format!("bench-plain-{}", uuid::Uuid::new_v4().simple());
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // The queue as the edge sink declares it (durable), so consuming can start first.
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            name.as_str().into(),
            "plain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // The same edge publisher fills the queue, one event per message, while we consume.
    let edge = benches::build_pipeline("edge.toml", &edge_config(url, &name, events, "json", 1))?;
    let started = Instant::now();
    let edge_task = tokio::spawn(edge.run(CancellationToken::new()));
    let mut seen = 0u64;
    while seen < events {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        let event: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        std::hint::black_box(&event);
        delivery.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    edge_task.await??;
    connection.close(200, "done".into()).await?;
    cleanup(url, &name).await?;
    Ok(elapsed)
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let url = options.url.as_str();
        let batched = options.events;
        let single = (options.events / 10).max(1);
        println!("threads: {}; events per batched message: {}", options.threads, options.per_message);
        let mut ours_batched = 0.0f64;
        for (encoding, per_message, events) in [
            ("json", options.per_message, batched),
            ("arrow", options.per_message, batched),
            ("json", 1, single),
            ("arrow", 1, single),
        ] {
            let (seconds, published) = through_pipeline(url, events, encoding, per_message).await?;
            let rate = events as f64 / seconds;
            if per_message > 1 {
                ours_batched = ours_batched.max(rate);
            }
            println!(
                "pipeline  {encoding:5} {per_message:4} ev/msg: {events} events in {seconds:.2} s = {rate:.0} events/s end to end (publisher confirmed all after {published:.2} s)"
            );
        }
        let seconds = plain_consumer(url, single).await?;
        let plain = single as f64 / seconds;
        println!(
            "plain consumer (predecessor style: 1 JSON event/msg, ack each): {single} events in {seconds:.2} s = {plain:.0} events/s"
        );
        println!("ratio, pipeline batched (best) / plain consumer: {:.1}x", ours_batched / plain);
        anyhow::Ok(())
    })
}
