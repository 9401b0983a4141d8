//! The rabbitmq sink and source against the real broker on 127.0.0.1:5672: every event
//! published is counted exactly once out of the consuming pipeline (JSON and Arrow, batched and
//! not), undecodable messages are dead-lettered with their reasons while the good ones around
//! them flow, two consumers of one queue share it, and a consistent-hash exchange keeps each
//! (model, endpoint) key on one instance. Under CI=true a missing broker fails the tests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use engine::codec::{encode, Encoding, ARROW_CONTENT_TYPE};
use engine::runtime::{build_from_text, CheckpointHandle, RunReport, RuntimeError};
use engine::schema::api_call::{api_calls_to_batch, ApiCall};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs `events` (a channel source) → rabbitmq sink with `settings` until every event is
/// confirmed by the broker.
async fn publish_through_pipeline(settings: &str, calls: Vec<ApiCall>) -> RunReport {
    let (sender, receiver) = mpsc::channel(calls.len().max(1));
    let mut registry = pipeline::components::registry();
    sources::channel::register(&mut registry, "events", receiver);
    for call in calls {
        sender.send(call).await.unwrap();
    }
    drop(sender);
    let text = format!(
        "[sources.events]\ntype = \"events\"\n[sinks.out]\ntype = \"rabbitmq\"\ninputs = [\"events\"]\nurl = \"{AMQP}\"\n{settings}\n"
    );
    build_from_text("publisher.toml", &text, |_| None, &registry)
        .unwrap()
        .run(CancellationToken::new())
        .await
        .unwrap()
}

struct Consumer {
    stop: CancellationToken,
    checkpoints: CheckpointHandle,
    task: JoinHandle<Result<RunReport, RuntimeError>>,
}

impl Consumer {
    /// Starts rabbitmq source (`settings`) → `collect` sink.
    fn start(settings: &str, collected: &Collected) -> Consumer {
        let text = format!(
            "[runtime]\ncheckpoint_interval = \"500ms\"\n[sources.calls]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\n{settings}\n[sinks.out]\ntype = \"collect\"\ninputs = [\"calls\"]\n"
        );
        let registry = registry_collecting(collected);
        let pipeline = build_from_text("central.toml", &text, |_| None, &registry).unwrap();
        let stop = CancellationToken::new();
        let (checkpoints, run) = pipeline.start(stop.clone());
        Consumer {
            stop,
            checkpoints,
            task: tokio::spawn(run),
        }
    }

    async fn stop(self) -> RunReport {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the consumer stops")
            .unwrap()
            .unwrap()
    }
}

fn counter(report: &RunReport, id: &str, name: &str) -> u64 {
    report
        .component(id)
        .and_then(|c| c.counters.get(name).copied())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_event_is_counted_once_out_of_the_pipeline() {
    let Some((_connection, channel)) = broker_or_skip().await else {
        return;
    };
    for (encoding, per_message, count) in [
        ("json", 100, 20_000),
        ("arrow", 500, 20_000),
        ("json", 1, 2_000),
    ] {
        let exchange = unique("calls");
        let queue = unique("calls");
        let calls: Vec<ApiCall> = (0..count)
            .map(|i| {
                call(
                    i,
                    ["gpt-4o", "llama-3"][i % 2],
                    ["/v1/chat/completions", "/v1/embeddings"][i % 3 % 2],
                )
            })
            .collect();
        let published = publish_through_pipeline(
            &format!("exchange = \"{exchange}\"\nqueue = \"{queue}\"\nencoding = \"{encoding}\"\nmax_events_per_message = {per_message}"),
            calls,
        )
        .await;
        let sink = published.component("out").unwrap();
        assert_eq!(sink.metrics.events_in, count as u64);
        assert_eq!(sink.metrics.dropped, 0);
        assert_eq!(counter(&published, "out", "confirmed_events"), count as u64);
        // Rows of each batch are grouped by routing key ({model}.{endpoint}: 4 keys), then
        // split by size: at most one partly filled message per key and batch.
        let messages = counter(&published, "out", "published_messages");
        let batches = sink.metrics.batches_in;
        assert!(
            messages >= (count / per_message) as u64
                && messages <= (count / per_message) as u64 + 4 * batches,
            "{messages} messages for {encoding}/{per_message}"
        );
        assert_eq!(ready_messages(&channel, &queue).await as u64, messages);

        let collected = Collected::default();
        let consumer = Consumer::start(
            &format!("queue = \"{queue}\"\nexchange = \"{exchange}\""),
            &collected,
        );
        wait_until("every event arrived", Duration::from_secs(60), || {
            collected.len() >= count
        })
        .await;
        let report = consumer.stop().await;
        assert_eq!(
            collected.len(),
            count,
            "{encoding}/{per_message}: no duplicates"
        );
        assert_eq!(collected.distinct(), count);
        assert_eq!(counter(&report, "calls", "deliveries"), messages);
        assert_eq!(
            counter(&report, "calls", "acked"),
            messages,
            "the final checkpoint acknowledged everything"
        );
        assert_eq!(counter(&report, "calls", "unacked"), 0);
        assert_eq!(counter(&report, "calls", "dead_lettered"), 0);
        assert_eq!(ready_messages(&channel, &queue).await, 0);
        delete_queues(&channel, &[&queue, &format!("{queue}.dead")]).await;
        delete_exchanges(&channel, &[&exchange, &format!("{queue}.dead")]).await;
    }
}

async fn publish_raw(
    channel: &Channel,
    queue: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
    id: &str,
) {
    let mut properties = BasicProperties::default().with_message_id(id.into());
    if let Some(content_type) = content_type {
        properties = properties.with_content_type(content_type.into());
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

fn header(properties: &BasicProperties, name: &str) -> String {
    match properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("header {name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_reasons_while_good_ones_flow() {
    let Some((_connection, channel)) = broker_or_skip().await else {
        return;
    };
    let queue = unique("poison");
    let dead = format!("{queue}.dead");
    declare_queue(&channel, &queue).await;
    let json = |calls: &[ApiCall]| engine::codec::encode_api_calls_json(calls.iter()).unwrap();
    let good = serde_json::to_string(&call(99, "m", "/e")).unwrap();
    let arrow = encode(
        &api_calls_to_batch(&[call(5, "m", "/e"), call(6, "m", "/e")]),
        Encoding::Arrow,
    )
    .unwrap();
    let mut invalid_utf8 = good.clone().into_bytes();
    let at = good.find("\"m\"").unwrap() + 1;
    invalid_utf8[at] = 0xFF;
    let mut huge = Vec::with_capacity(10 << 20);
    while huge.len() < 10 << 20 {
        huge.extend_from_slice(good.as_bytes());
        huge.push(b'\n');
    }
    // (message id, body, content type, expected dead-letter reason)
    type Case = (
        &'static str,
        Vec<u8>,
        Option<&'static str>,
        Option<&'static str>,
    );
    let messages: Vec<Case> = vec![
        ("good-1", json(&[call(1, "m", "/e")]), None, None),
        (
            "bad-json",
            b"{\"timestamp\": oops".to_vec(),
            None,
            Some("decode_error"),
        ),
        (
            "good-2",
            json(&[call(2, "m", "/e"), call(3, "m", "/e"), call(4, "m", "/e")]),
            Some("application/x-ndjson"),
            None,
        ),
        (
            "bad-types",
            good.replace(
                "\"http.response.status_code\":200",
                "\"http.response.status_code\":\"ok\"",
            )
            .into_bytes(),
            None,
            Some("decode_error"),
        ),
        (
            "bad-arrow",
            arrow[..arrow.len() - 40].to_vec(),
            Some(ARROW_CONTENT_TYPE),
            Some("decode_error"),
        ),
        ("good-3", arrow.clone(), Some(ARROW_CONTENT_TYPE), None),
        ("bad-utf8", invalid_utf8, None, Some("decode_error")),
        ("huge", huge, None, Some("too_large")),
        ("empty", Vec::new(), None, Some("decode_error")),
        (
            "good-4",
            serde_json::to_vec(&vec![call(7, "m", "/e"), call(8, "m", "/e")]).unwrap(),
            Some("application/json"),
            None,
        ),
    ];
    for (id, body, content_type, _) in &messages {
        publish_raw(&channel, &queue, body.clone(), *content_type, id).await;
    }

    let collected = Collected::default();
    let consumer = Consumer::start(&format!("queue = \"{queue}\""), &collected);
    wait_until("the 8 good events arrived", Duration::from_secs(30), || {
        collected.len() >= 8
    })
    .await;
    let report = consumer.stop().await;
    let ids: BTreeSet<String> = collected.ids().into_iter().collect();
    assert_eq!(
        ids,
        (1..=8).map(|i| format!("req-{i}")).collect::<BTreeSet<_>>()
    );
    assert_eq!(collected.len(), 8);
    assert_eq!(counter(&report, "calls", "dead_lettered"), 6);
    assert_eq!(
        counter(&report, "calls", "acked"),
        10,
        "dead letters are acknowledged with the rest"
    );
    assert_eq!(ready_messages(&channel, &queue).await, 0);

    let mut reasons = BTreeMap::new();
    for _ in 0..6 {
        let message = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a dead letter");
        let properties = &message.delivery.properties;
        let id = properties.message_id().as_ref().unwrap().to_string();
        assert_eq!(header(properties, "x-original-routing-key"), queue);
        assert_eq!(header(properties, "x-original-queue"), queue);
        assert_eq!(header(properties, "x-pipeline-source"), "calls");
        let original = messages.iter().find(|m| m.0 == id).unwrap();
        assert_eq!(
            message.delivery.data, original.1,
            "{id}: the body is kept as it was"
        );
        reasons.insert(
            id,
            (
                header(properties, "x-pipeline-reason"),
                header(properties, "x-pipeline-error"),
            ),
        );
    }
    for (id, _, _, reason) in &messages {
        if let Some(reason) = reason {
            assert_eq!(reasons[*id].0, *reason, "{id}: {:?}", reasons[*id]);
        }
    }
    assert!(
        reasons["bad-types"]
            .1
            .contains("field `http.response.status_code`"),
        "{:?}",
        reasons["bad-types"]
    );
    assert!(
        reasons["bad-arrow"].1.contains("Arrow IPC"),
        "{:?}",
        reasons["bad-arrow"]
    );
    assert_eq!(reasons["empty"].1, "empty message body");
    assert!(reasons["huge"].1.contains("max_message_bytes"));
    assert_eq!(ready_messages(&channel, &dead).await, 0);
    delete_queues(&channel, &[&queue, &dead]).await;
    delete_exchanges(&channel, &[&dead]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_one_queue_share_the_load() {
    let Some((_connection, channel)) = broker_or_skip().await else {
        return;
    };
    let exchange = unique("shared");
    let queue = unique("shared");
    let count = 20_000;
    let calls: Vec<ApiCall> = (0..count).map(|i| call(i, "m", "/e")).collect();
    publish_through_pipeline(
        &format!("exchange = \"{exchange}\"\nqueue = \"{queue}\"\nmax_events_per_message = 50"),
        calls,
    )
    .await;
    let (a, b) = (Collected::default(), Collected::default());
    let settings =
        format!("queue = \"{queue}\"\nexchange = \"{exchange}\"\nprefetch = 8\nbatch_size = 100");
    let first = Consumer::start(&settings, &a);
    let second = Consumer::start(&settings, &b);
    wait_until("every event arrived", Duration::from_secs(60), || {
        a.len() + b.len() >= count
    })
    .await;
    first.stop().await;
    second.stop().await;
    assert_eq!(a.len() + b.len(), count);
    let union: BTreeSet<String> = a.ids().into_iter().chain(b.ids()).collect();
    assert_eq!(union.len(), count);
    assert!(
        a.len() >= count / 10 && b.len() >= count / 10,
        "shares {} and {}",
        a.len(),
        b.len()
    );
    delete_queues(&channel, &[&queue, &format!("{queue}.dead")]).await;
    delete_exchanges(&channel, &[&exchange, &format!("{queue}.dead")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_hash_exchange_keeps_each_key_on_one_instance() {
    let Some((connection, channel)) = broker_or_skip().await else {
        return;
    };
    let exchange = unique("hash");
    let queues = [unique("hash-a"), unique("hash-b")];
    let models = [
        "gpt-4o",
        "gpt-4o-mini",
        "llama-3-70b",
        "mistral-large",
        "claude",
        "qwen",
    ];
    let endpoints = [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v2/models/x/infer",
    ];
    let count = 12_000;
    let calls: Vec<ApiCall> = (0..count)
        .map(|i| call(i, models[i % 6], endpoints[i % 7 % 3]))
        .collect();
    let keys: BTreeMap<String, String> = calls
        .iter()
        .map(|c| {
            (
                c.request_id.clone(),
                format!(
                    "{}|{}",
                    c.model.as_deref().unwrap(),
                    c.endpoint.as_deref().unwrap()
                ),
            )
        })
        .collect();
    // Each instance binds its own queue (weight 1) before anything is published.
    let collected = [Collected::default(), Collected::default()];
    let consumers: Vec<Consumer> = queues
        .iter()
        .zip(&collected)
        .map(|(queue, collected)| {
            Consumer::start(
                &format!("queue = \"{queue}\"\nexchange = \"{exchange}\"\nexchange_type = \"x-consistent-hash\"\nbinding_key = \"1\""),
                collected,
            )
        })
        .collect();
    for queue in &queues {
        let mut tries = 0;
        // The consumer declares and binds its queue before it consumes from it: wait for
        // the consumer. A failed passive declare closes its channel: a fresh one per try.
        while connection
            .create_channel()
            .await
            .unwrap()
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_or(true, |declared| declared.consumer_count() == 0)
        {
            tries += 1;
            assert!(
                tries < 200,
                "the consumer bound its queue and consumes from it"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    publish_through_pipeline(
        &format!("exchange = \"{exchange}\"\nexchange_type = \"x-consistent-hash\"\nrouting_key = \"{{model}}|{{endpoint}}\"\ndeclare = \"check\""),
        calls,
    )
    .await;
    wait_until("every event arrived", Duration::from_secs(60), || {
        collected.iter().map(Collected::len).sum::<usize>() >= count
    })
    .await;
    for consumer in consumers {
        consumer.stop().await;
    }
    let key_sets: Vec<BTreeSet<String>> = collected
        .iter()
        .map(|c| c.ids().iter().map(|id| keys[id].clone()).collect())
        .collect();
    assert_eq!(collected.iter().map(Collected::len).sum::<usize>(), count);
    assert!(
        key_sets[0].is_disjoint(&key_sets[1]),
        "a key went to both instances: {key_sets:?}"
    );
    assert_eq!(key_sets[0].len() + key_sets[1].len(), 18);
    assert!(
        !key_sets[0].is_empty() && !key_sets[1].is_empty(),
        "both instances got keys: {key_sets:?}"
    );
    let dead: Vec<String> = queues.iter().map(|q| format!("{q}.dead")).collect();
    delete_queues(&channel, &[&queues[0], &queues[1], &dead[0], &dead[1]]).await;
    delete_exchanges(&channel, &[&exchange, &dead[0], &dead[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_buffers_while_the_broker_is_unreachable_then_drops_and_counts() {
    // Nothing listens on this port: the sink must keep accepting writes, buffer up to its
    // bound, drop the rest, and report what it could not deliver at shutdown.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (sender, receiver) = mpsc::channel(10_000);
    let mut registry = pipeline::components::registry();
    sources::channel::register(&mut registry, "events", receiver);
    for i in 0..5_000 {
        sender.send(call(i, "m", "/e")).await.unwrap();
    }
    drop(sender);
    let text = format!(
        "[runtime]\ncheckpoint_interval = \"0s\"\n[sources.events]\ntype = \"events\"\n[sinks.out]\ntype = \"rabbitmq\"\ninputs = [\"events\"]\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\nexchange = \"x\"\nbuffer_max_events = 1000\nmax_events_per_message = 10\nclose_timeout = \"1s\"\n"
    );
    let started = std::time::Instant::now();
    let error = build_from_text("edge.toml", &text, |_| None, &registry)
        .unwrap()
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "writes never waited on the broker"
    );
    let message = error.to_string();
    assert!(
        message.contains("1000 events were still unconfirmed"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_arrives_in_order_per_key_and_nothing_is_left_in_the_queue() {
    let Some((_connection, channel)) = broker_or_skip().await else {
        return;
    };
    // One event per message, one key: the consumer sees the publisher's order.
    let exchange = unique("order");
    let queue = unique("order");
    let count = 3_000;
    let calls: Vec<ApiCall> = (0..count).map(|i| call(i, "m", "/e")).collect();
    publish_through_pipeline(&format!("exchange = \"{exchange}\"\nqueue = \"{queue}\"\nmax_events_per_message = 1\nencoding = \"arrow\""), calls).await;
    let collected = Collected::default();
    let consumer = Consumer::start(
        &format!("queue = \"{queue}\"\nexchange = \"{exchange}\"\nprefetch = 16"),
        &collected,
    );
    wait_until("every event arrived", Duration::from_secs(60), || {
        collected.len() >= count
    })
    .await;
    let mut checkpoints = consumer.checkpoints.clone();
    checkpoints.checkpoint().await.unwrap();
    consumer.stop().await;
    let expected: Vec<String> = (0..count).map(|i| format!("req-{i}")).collect();
    assert_eq!(collected.ids(), expected);
    assert_eq!(ready_messages(&channel, &queue).await, 0);
    delete_queues(&channel, &[&queue, &format!("{queue}.dead")]).await;
    delete_exchanges(&channel, &[&exchange, &format!("{queue}.dead")]).await;
}
