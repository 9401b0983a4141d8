//! The rabbitmq sink's background publisher. It owns the connection: it connects (with
//! exponential backoff and jitter), declares or checks the topology, publishes queued messages
//! persistently with publisher confirms (up to `max_in_flight` unconfirmed), and reports the
//! sequence number of the newest message whose confirm — and every earlier one's — arrived.
//! When the connection fails, unconfirmed messages go back to the front of the queue and are
//! published again after reconnecting (at-least-once: a message whose confirm was lost is
//! published twice). The sink only enqueues, so the data path never waits on the broker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::backoff::Backoff;
use engine::metrics::ComponentMetrics;
use futures::stream::{FuturesOrdered, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::config::{Declare, RabbitMqSinkConfig};

/// One encoded message waiting to be published.
#[derive(Debug)]
pub struct Outgoing {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub events: usize,
    /// The AMQP `message_id`, fixed when the message is made so that a republish after a lost
    /// confirm carries the same id and a consumer can recognise the duplicate.
    pub message_id: String,
}

#[derive(Default)]
struct Queue {
    /// (sequence number, message), oldest first.
    pending: VecDeque<(u64, Outgoing)>,
    /// Events queued or awaiting a confirm.
    buffered_events: usize,
    last_seq: u64,
}

/// State shared by the sink (producer) and the publisher task (consumer).
pub struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    confirmed: watch::Sender<u64>,
    buffer_max_events: usize,
    buffered_gauge: Arc<AtomicU64>,
}

impl Shared {
    pub fn new(buffer_max_events: usize, metrics: &ComponentMetrics) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            confirmed: watch::channel(0).0,
            buffer_max_events,
            buffered_gauge: metrics.gauge("buffered_events"),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message; `false` (and nothing queued) when the buffer bound would be exceeded.
    pub fn enqueue(&self, message: Outgoing) -> bool {
        let mut queue = self.lock();
        if queue.buffered_events + message.events > self.buffer_max_events {
            return false;
        }
        queue.buffered_events += message.events;
        queue.last_seq += 1;
        let seq = queue.last_seq;
        queue.pending.push_back((seq, message));
        self.buffered_gauge
            .store(queue.buffered_events as u64, Ordering::Relaxed);
        drop(queue);
        self.wake.notify_one();
        true
    }

    /// The sequence number of the newest queued message.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    pub fn subscribe_confirmed(&self) -> watch::Receiver<u64> {
        self.confirmed.subscribe()
    }

    /// Events still held (queued or unconfirmed).
    pub fn buffered_events(&self) -> usize {
        self.lock().buffered_events
    }

    fn pop(&self) -> Option<(u64, Outgoing)> {
        self.lock().pending.pop_front()
    }

    fn requeue_front(&self, messages: impl DoubleEndedIterator<Item = (u64, Outgoing)>) {
        let mut queue = self.lock();
        for message in messages.rev() {
            queue.pending.push_front(message);
        }
    }

    fn confirm(&self, seq: u64, events: usize) {
        let mut queue = self.lock();
        queue.buffered_events = queue.buffered_events.saturating_sub(events);
        self.buffered_gauge
            .store(queue.buffered_events as u64, Ordering::Relaxed);
        drop(queue);
        self.confirmed.send_replace(seq);
    }

    /// Wakes the publisher (on shutdown).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Counters of the publisher, registered as the sink's named metrics.
struct Counters {
    published: Arc<AtomicU64>,
    confirmed_events: Arc<AtomicU64>,
    republished: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
}

/// Runs until `stop` is cancelled and the queue is empty (or `stop_now` is cancelled).
pub async fn run(
    component: String,
    config: RabbitMqSinkConfig,
    shared: Arc<Shared>,
    metrics: Arc<ComponentMetrics>,
    stop: CancellationToken,
    stop_now: CancellationToken,
) {
    let counters = Counters {
        published: metrics.named("published_messages"),
        confirmed_events: metrics.named("confirmed_events"),
        republished: metrics.named("republished_messages"),
        reconnects: metrics.named("reconnects"),
    };
    let mut backoff = Backoff::new(config.reconnect_initial.0, config.reconnect_max.0);
    let mut connected_once = false;
    loop {
        if stop_now.is_cancelled() || (stop.is_cancelled() && shared.buffered_events() == 0) {
            return;
        }
        let session = match open(&component, &config).await {
            Ok(session) => {
                metrics.set_connected(true);
                session
            }
            Err(error) => {
                metrics.set_connected(false);
                let delay = backoff.next_delay();
                tracing::warn!(sink = %component, %error, retry_in = ?delay, buffered_events = shared.buffered_events(), "rabbitmq: cannot publish; retrying");
                tokio::select! {
                    _ = stop_now.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if connected_once {
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(sink = %component, "rabbitmq: reconnected");
        }
        connected_once = true;
        backoff.reset();
        let result = publish_loop(&session.1, &config, &shared, &counters, &stop, &stop_now).await;
        let _ = session.0.close(200, "closing".into()).await;
        match result {
            Ok(()) => return,
            Err(error) => {
                metrics.set_connected(false);
                tracing::warn!(sink = %component, %error, "rabbitmq: connection lost; unconfirmed messages will be published again");
            }
        }
    }
}

async fn open(
    component: &str,
    config: &RabbitMqSinkConfig,
) -> Result<(Connection, Channel), String> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("pipeline sink {component}").into());
    let connection = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Connection::connect(&config.url, properties),
    )
    .await
    .map_err(|_| "connecting took longer than 10 s".to_string())?
    .map_err(|e| format!("connecting: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    declare_topology(&channel, config)
        .await
        .map_err(|e| format!("declaring the topology: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("enabling publisher confirms: {e}"))?;
    Ok((connection, channel))
}

/// Declares (or passively checks) the exchange and the optional queue and binding.
pub async fn declare_topology(
    channel: &Channel,
    config: &RabbitMqSinkConfig,
) -> Result<(), lapin::Error> {
    if config.declare == Declare::None {
        return Ok(());
    }
    let passive = config.declare == Declare::Check;
    if !config.exchange.is_empty() {
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                exchange_kind(&config.exchange_type),
                ExchangeDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    if let Some(queue) = &config.queue {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        if !passive && !config.exchange.is_empty() {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    config.exchange.as_str().into(),
                    config.binding_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// The lapin exchange kind for a configured type name.
pub fn exchange_kind(name: &str) -> lapin::ExchangeKind {
    match name {
        "direct" => lapin::ExchangeKind::Direct,
        "fanout" => lapin::ExchangeKind::Fanout,
        "topic" => lapin::ExchangeKind::Topic,
        "headers" => lapin::ExchangeKind::Headers,
        other => lapin::ExchangeKind::Custom(other.to_string()),
    }
}

fn properties(config: &RabbitMqSinkConfig, events: usize, message_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-events".into(), AMQPValue::LongLongInt(events as i64));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(config.encoding.content_type().into())
        .with_app_id("pipeline".into())
        .with_message_id(message_id.into())
        .with_headers(headers)
}

type ConfirmFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Confirmation, lapin::Error>> + Send>>;

async fn publish_loop(
    channel: &Channel,
    config: &RabbitMqSinkConfig,
    shared: &Shared,
    counters: &Counters,
    stop: &CancellationToken,
    stop_now: &CancellationToken,
) -> Result<(), String> {
    let mut confirms: FuturesOrdered<ConfirmFuture> = FuturesOrdered::new();
    let mut in_flight: VecDeque<(u64, Outgoing)> = VecDeque::new();
    let requeue = |in_flight: &mut VecDeque<(u64, Outgoing)>| {
        counters
            .republished
            .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
        shared.requeue_front(std::mem::take(in_flight).into_iter());
    };
    loop {
        while in_flight.len() < config.max_in_flight.max(1) {
            let Some((seq, message)) = shared.pop() else {
                break;
            };
            let published = channel
                .basic_publish(
                    config.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    properties(config, message.events, &message.message_id),
                )
                .await;
            in_flight.push_back((seq, message));
            match published {
                Ok(confirm) => {
                    counters.published.fetch_add(1, Ordering::Relaxed);
                    confirms.push_back(Box::pin(confirm));
                }
                Err(error) => {
                    requeue(&mut in_flight);
                    return Err(error.to_string());
                }
            }
        }
        if in_flight.is_empty() {
            if stop_now.is_cancelled() || (stop.is_cancelled() && shared.buffered_events() == 0) {
                return Ok(());
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                _ = stop_now.cancelled() => return Ok(()),
            }
            continue;
        }
        tokio::select! {
            confirmation = confirms.next() => {
                let Some(confirmation) = confirmation else { continue };
                match confirmation {
                    Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => {
                        if let Some((seq, message)) = in_flight.pop_front() {
                            counters.confirmed_events.fetch_add(message.events as u64, Ordering::Relaxed);
                            shared.confirm(seq, message.events);
                        }
                    }
                    Ok(Confirmation::Nack(_)) => {
                        requeue(&mut in_flight);
                        return Err("the broker refused (nacked) a message".to_string());
                    }
                    Err(error) => {
                        requeue(&mut in_flight);
                        return Err(error.to_string());
                    }
                }
            }
            _ = shared.wake.notified(), if in_flight.len() < config.max_in_flight.max(1) => {}
            _ = stop_now.cancelled() => {
                requeue(&mut in_flight);
                return Ok(());
            }
        }
    }
}
