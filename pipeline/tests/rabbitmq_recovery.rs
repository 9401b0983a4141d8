//! Failures against the real broker: the server closing every connection (both the sink and
//! the source reconnect and carry on), and the consuming `pipeline` process killed with
//! SIGKILL mid-stream and started again (nothing is lost; duplicates stay within the
//! documented bound of prefetch x events per message). These tests disturb the broker, so they
//! live in their own test binary (cargo runs test binaries one after another).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::*;
use engine::runtime::build_from_text;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The tests here close every broker connection: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_reconnect_after_the_server_closes_every_connection() {
    let _serial = SERIAL.lock().await;
    let Some((_connection, channel)) = broker_or_skip().await else {
        return;
    };
    let exchange = unique("closed");
    let queue = unique("closed");
    let collected = Collected::default();
    let consumer_text = format!(
        "[runtime]\ncheckpoint_interval = \"200ms\"\n[sources.calls]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\nqueue = \"{queue}\"\nexchange = \"{exchange}\"\nreconnect_initial = \"50ms\"\n[sinks.out]\ntype = \"collect\"\ninputs = [\"calls\"]\n"
    );
    let consumer = build_from_text(
        "central.toml",
        &consumer_text,
        |_| None,
        &registry_collecting(&collected),
    )
    .unwrap();
    let consumer_stop = CancellationToken::new();
    let (_, consumer_run) = consumer.start(consumer_stop.clone());
    let consumer_task = tokio::spawn(consumer_run);

    let (sender, receiver) = mpsc::channel(100_000);
    let mut registry = pipeline::components::registry();
    sources::channel::register(&mut registry, "events", receiver);
    let publisher_text = format!(
        "[runtime]\ncheckpoint_interval = \"0s\"\n[sources.events]\ntype = \"events\"\nlinger = \"10ms\"\n[sinks.out]\ntype = \"rabbitmq\"\ninputs = [\"events\"]\nurl = \"{AMQP}\"\nexchange = \"{exchange}\"\nqueue = \"{queue}\"\nmax_events_per_message = 20\nreconnect_initial = \"50ms\"\n"
    );
    let publisher = build_from_text("edge.toml", &publisher_text, |_| None, &registry).unwrap();
    let publisher_task = tokio::spawn(publisher.run(CancellationToken::new()));

    for i in 0..2_000 {
        sender.send(call(i, "m", "/e")).await.unwrap();
    }
    wait_until("the first half arrived", Duration::from_secs(30), || {
        collected.distinct() >= 2_000
    })
    .await;
    rabbitmqctl(&["close_all_connections", "closed by the reconnection test"]);
    for i in 2_000..4_000 {
        sender.send(call(i, "m", "/e")).await.unwrap();
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(sender);
    wait_until(
        "the second half arrived after reconnecting",
        Duration::from_secs(60),
        || collected.distinct() >= 4_000,
    )
    .await;
    let published = publisher_task.await.unwrap().unwrap();
    consumer_stop.cancel();
    let consumed = consumer_task.await.unwrap().unwrap();
    let reconnects = |report: &engine::runtime::RunReport, id: &str| {
        report.component(id).unwrap().counters["reconnects"]
    };
    assert!(reconnects(&published, "out") >= 1);
    assert!(reconnects(&consumed, "calls") >= 1);
    assert_eq!(collected.distinct(), 4_000);
    assert_eq!(published.component("out").unwrap().metrics.dropped, 0);
    let duplicates = collected.len() - 4_000;
    eprintln!("duplicates after the reconnect: {duplicates}");
    assert!(duplicates <= 512 * 20, "{duplicates} duplicates");
    delete_queues(&channel, &[&queue, &format!("{queue}.dead")]).await;
    delete_exchanges(&channel, &[&exchange, &format!("{queue}.dead")]).await;
}

fn start_pipeline(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn parquet_files(dir: &Path) -> usize {
    fn walk(dir: &Path, count: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, count);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                *count += 1;
            }
        }
    }
    let mut count = 0;
    walk(dir, &mut count);
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_and_restarted_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some((_connection, channel)) = broker_or_skip().await else {
        return;
    };
    let queue = unique("killed");
    declare_queue(&channel, &queue).await;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (messages, per_message) = (1_000, 100);
    for m in 0..messages {
        let calls: Vec<_> = (0..per_message)
            .map(|i| call(m * per_message + i, "m", "/e"))
            .collect();
        let body = engine::codec::encode_api_calls_json(calls.iter()).unwrap();
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    channel.wait_for_confirms().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("central.toml");
    let prefetch = 20;
    std::fs::write(
        &config,
        format!(
            "[runtime]\ncheckpoint_interval = \"200ms\"\n[sources.calls]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\nqueue = \"{queue}\"\nprefetch = {prefetch}\nbatch_size = 1000\n[sinks.raw]\ntype = \"parquet\"\ninputs = [\"calls\"]\npath = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();

    let mut first = start_pipeline(&config);
    wait_until(
        "the first files are written",
        Duration::from_secs(30),
        || parquet_files(&data) >= 1,
    )
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let left = ready_messages(&channel, &queue).await;
    assert!(left > 0, "the kill came mid-stream");

    let second = start_pipeline(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ready_messages(&channel, &queue).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted consumer drained the queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything delivered is processed and acknowledged after a checkpoint.
    while unsettled_messages(&queue) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted consumer acknowledged what it processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = second.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        ready_messages(&channel, &queue).await,
        0,
        "a clean stop acknowledged everything it processed"
    );

    let (context, _) = pipeline::query::session(&data.display().to_string())
        .await
        .unwrap();
    let batches = pipeline::query::query(
        &context,
        "SELECT count(*), count(DISTINCT request_id) FROM api_calls",
    )
    .await
    .unwrap();
    let total = batches[0].column(0).as_primitive::<Int64Type>().value(0) as usize;
    let distinct = batches[0].column(1).as_primitive::<Int64Type>().value(0) as usize;
    let expected = messages * per_message;
    assert_eq!(distinct, expected, "nothing lost");
    let duplicates = total - distinct;
    eprintln!(
        "duplicates after SIGKILL: {duplicates} (bound {})",
        prefetch * per_message
    );
    assert!(
        duplicates <= prefetch * per_message,
        "{duplicates} duplicates"
    );
    delete_queues(&channel, &[&queue, &format!("{queue}.dead")]).await;
    delete_exchanges(&channel, &[&format!("{queue}.dead")]).await;
}
