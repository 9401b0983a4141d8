//! `rabbitmq` source: consumes api_call events from a queue (JSON lines, a JSON array, or an
//! Arrow IPC stream per message; see `engine::codec`) with manual acknowledgements.
//!
//! A delivery is acknowledged only after a checkpoint whose barrier followed it has completed,
//! i.e. every sink made what was derived from it durable. The source's own checkpointed state
//! is the `message_id`s its checkpoint covers, so that with operator state restored from that
//! checkpoint a redelivered message already counted is skipped: exactly-once for messages
//! that carry a `message_id` (the `rabbitmq` sink sets one on every message). When many deliveries
//! are unacknowledged (half the prefetch) the source asks for a checkpoint, so a small prefetch
//! never stalls the stream. A message that cannot be decoded (or is over `max_message_bytes`)
//! is published to the dead-letter exchange with the reason in headers, and acknowledged with
//! the rest; it never blocks the queue. A lost connection is reopened with exponential backoff
//! and jitter; deliveries not yet acknowledged are redelivered by the broker and recognised by
//! id (without an id they are processed again, bounded by the prefetch). On shutdown the
//! source stops consuming, asks for a final checkpoint and acknowledges what it covered.

mod acks;
mod config;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::backoff::Backoff;
use engine::codec::{
    decode_api_calls, encode_api_calls_json, take_future, DecodedCalls, JSON_CONTENT_TYPE,
};
use engine::component::{ComponentError, ComponentResult, Source, SourceContext};
use engine::config::ConfigError;
use engine::message::{Barrier, Message};
use engine::registry::{BuildContext, BuiltSource};
use engine::schema::api_call::{api_call_schema, ApiCallBatchBuilder};
use futures::StreamExt;
use lapin::message::Delivery;

use acks::{AckTracker, SourceState};
pub use config::{Declare, FutureEvents, RabbitMqSourceConfig};
use session::{DeadLetter, Session};

/// How often the queue is checked while nothing is delivered.
const QUEUE_PROBE: Duration = Duration::from_secs(1);

/// A span of µs as the largest sensible unit, for messages.
fn humanize_micros(micros: i64) -> String {
    let seconds = micros / 1_000_000;
    match seconds {
        s if s >= 365 * 86_400 => format!("{} years", s / (365 * 86_400)),
        s if s >= 86_400 => format!("{} days", s / 86_400),
        s if s >= 3_600 => format!("{} h", s / 3_600),
        s => format!("{s} s"),
    }
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltSource, ConfigError> {
    let config: RabbitMqSourceConfig = ctx.spec.settings()?;
    if config.queue.is_empty() {
        return Err(ctx.spec.error_at_key("queue", "`queue` must not be empty"));
    }
    if config.prefetch == 0 {
        return Err(ctx.spec.error_at_key(
            "prefetch",
            "must be at least 1 (0 would mean unlimited, which defeats backpressure)",
        ));
    }
    if config.batch_size == 0 {
        return Err(ctx.spec.error_at_key("batch_size", "must be at least 1"));
    }
    if let Err(error) = config.url.parse::<lapin::uri::AMQPUri>() {
        return Err(ctx
            .spec
            .error_at_key("url", format!("not an AMQP URL: {error}")));
    }
    Ok(BuiltSource {
        source: Box::new(RabbitMqSource {
            component: ctx.spec.id.clone(),
            config,
        }),
        schema: api_call_schema(),
    })
}

pub struct RabbitMqSource {
    component: String,
    config: RabbitMqSourceConfig,
}

impl RabbitMqSource {
    pub fn new(component: impl Into<String>, config: RabbitMqSourceConfig) -> Self {
        Self {
            component: component.into(),
            config,
        }
    }
}

/// The source's named counters.
struct Counters {
    /// Redelivered messages already counted by the restored state (or before a reconnect).
    skipped: Arc<AtomicU64>,
    deliveries: Arc<AtomicU64>,
    redelivered: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    dead_lettered: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    unacked: Arc<AtomicU64>,
    /// Events stamped beyond `max_future_skew`, dead-lettered or clamped.
    future_events: Arc<AtomicU64>,
}

/// Rows decoded and not yet sent downstream.
struct Pending {
    rows: ApiCallBatchBuilder,
    batches: Vec<RecordBatch>,
    count: usize,
    since: Option<tokio::time::Instant>,
}

impl Pending {
    fn new(batch_size: usize) -> Self {
        Self {
            rows: ApiCallBatchBuilder::with_capacity(batch_size),
            batches: Vec::new(),
            count: 0,
            since: None,
        }
    }

    fn add(&mut self, decoded: DecodedCalls) {
        if decoded.is_empty() {
            return;
        }
        self.count += decoded.len();
        match decoded {
            DecodedCalls::Rows(rows) => rows.iter().for_each(|row| self.rows.push(row)),
            DecodedCalls::Batches(batches) => self.batches.extend(batches),
        }
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    async fn flush(&mut self, ctx: &mut SourceContext) -> ComponentResult {
        self.since = None;
        if self.count == 0 {
            return Ok(());
        }
        self.count = 0;
        if !self.rows.is_empty() {
            ctx.output.send_batch(0, self.rows.finish()).await?;
        }
        for batch in std::mem::take(&mut self.batches) {
            ctx.output.send_batch(0, batch).await?;
        }
        Ok(())
    }
}

/// Hands the source's state for `barrier`'s checkpoint to the coordinator.
async fn save_state(ctx: &SourceContext, barrier: Barrier, acks: &AckTracker) -> ComponentResult {
    let state = engine::state::encode(&acks.covered.snapshot()).map_err(ComponentError::other)?;
    ctx.state.save(barrier.checkpoint_id, state).await;
    Ok(())
}

/// How a connected session ended.
enum Ended {
    Shutdown,
    ConnectionLost(String),
}

#[async_trait]
impl Source for RabbitMqSource {
    fn saves_state(&self) -> bool {
        true
    }

    async fn run(self: Box<Self>, mut ctx: SourceContext) -> ComponentResult {
        let counters = Counters {
            skipped: ctx.metrics.named("duplicates_skipped"),
            deliveries: ctx.metrics.named("deliveries"),
            redelivered: ctx.metrics.named("redelivered"),
            acked: ctx.metrics.named("acked"),
            dead_lettered: ctx.metrics.named("dead_lettered"),
            reconnects: ctx.metrics.named("reconnects"),
            unacked: ctx.metrics.gauge("unacked"),
            future_events: ctx.metrics.named("future_events"),
        };
        // Not idle until the queue is known to be empty: a broker it cannot reach yet may
        // hold messages.
        ctx.output.activity().set_busy(true);
        let mut backoff =
            Backoff::new(self.config.reconnect_initial.0, self.config.reconnect_max.0);
        let mut pending = Pending::new(self.config.batch_size);
        let mut acks = AckTracker::default();
        if let Some(saved) = ctx.restored_state.take() {
            match engine::state::decode::<SourceState>(&saved) {
                Ok(state) => {
                    tracing::info!(source = %self.component, covered = state.covered_ids.len(), "rabbitmq: restored the message ids the checkpoint covers");
                    acks.covered.restore(state);
                }
                Err(error) => {
                    tracing::warn!(source = %self.component, %error, "rabbitmq: the saved state does not fit; redelivered messages will be processed again")
                }
            }
        }
        let mut connected_before = false;
        loop {
            if ctx.shutdown.is_cancelled() {
                return pending.flush(&mut ctx).await;
            }
            let session = match Session::open(&self.component, &self.config).await {
                Ok(session) => {
                    ctx.metrics.set_connected(true);
                    session
                }
                Err(error) => {
                    ctx.metrics.set_connected(false);
                    ctx.output.activity().set_busy(true);
                    let delay = backoff.next_delay();
                    tracing::warn!(source = %self.component, %error, retry_in = ?delay, "rabbitmq: cannot consume; retrying");
                    self.wait_forwarding_barriers(&mut ctx, &mut pending, &acks, delay)
                        .await?;
                    continue;
                }
            };
            if connected_before {
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(source = %self.component, queue = %self.config.queue, "rabbitmq: reconnected");
            } else {
                tracing::info!(source = %self.component, queue = %self.config.queue, prefetch = self.config.prefetch, "rabbitmq: consuming");
            }
            connected_before = true;
            acks.reset();
            counters.unacked.store(0, Ordering::Relaxed);
            let (ended, session) = self
                .consume(
                    &mut ctx,
                    session,
                    &mut pending,
                    &mut acks,
                    &counters,
                    &mut backoff,
                )
                .await?;
            match ended {
                Ended::Shutdown => {
                    let result = self
                        .final_checkpoint(&mut ctx, &session, &mut pending, &mut acks, &counters)
                        .await;
                    session.close().await;
                    return result;
                }
                Ended::ConnectionLost(error) => {
                    ctx.metrics.set_connected(false);
                    ctx.output.activity().set_busy(true);
                    tracing::warn!(source = %self.component, %error, unacked = acks.unacked(), "rabbitmq: connection lost; unacknowledged deliveries will be redelivered");
                    session.close().await;
                    let delay = backoff.next_delay();
                    self.wait_forwarding_barriers(&mut ctx, &mut pending, &acks, delay)
                        .await?;
                }
            }
        }
    }
}

impl RabbitMqSource {
    /// Consumes until the connection is lost or shutdown begins.
    async fn consume(
        &self,
        ctx: &mut SourceContext,
        mut session: Session,
        pending: &mut Pending,
        acks: &mut AckTracker,
        counters: &Counters,
        backoff: &mut Backoff,
    ) -> Result<(Ended, Session), ComponentError> {
        let linger = self.config.linger.0;
        let request_at = u64::from(self.config.prefetch).div_ceil(2);
        let mut requested = false;
        let mut completed = ctx.completed_checkpoints.clone();
        completed.borrow_and_update();
        // While nothing is delivered, the queue is checked every second: the source is idle
        // (event time may follow the wall clock) only when the queue is empty and the broker
        // is not holding deliveries back for want of acknowledgements.
        let mut probe = tokio::time::interval(QUEUE_PROBE);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_delivery = tokio::time::Instant::now();
        loop {
            let deadline = pending
                .since
                .map(|since| since + linger)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ok((Ended::Shutdown, session)),
                Some(barrier) = ctx.barriers.recv() => {
                    pending.flush(ctx).await?;
                    save_state(ctx, barrier, acks).await?;
                    ctx.output.send_control(Message::Barrier(barrier)).await?;
                    acks.barrier(barrier.checkpoint_id);
                }
                Ok(()) = completed.changed() => {
                    let id = *completed.borrow_and_update();
                    requested = false;
                    if let Some(ack) = acks.completed(id) {
                        if let Err(error) = session.ack_up_to(ack.tag).await {
                            return Ok((Ended::ConnectionLost(format!("acknowledging: {error}")), session));
                        }
                        counters.acked.fetch_add(ack.count, Ordering::Relaxed);
                        counters.unacked.store(acks.unacked(), Ordering::Relaxed);
                        backoff.reset();
                    }
                }
                _ = tokio::time::sleep_until(deadline), if pending.since.is_some() => {
                    pending.flush(ctx).await?;
                }
                _ = probe.tick(), if last_delivery.elapsed() >= QUEUE_PROBE => {
                    match session.ready_messages(&self.config.queue).await {
                        Ok(ready) => {
                            let held = acks.unacked() >= u64::from(self.config.prefetch);
                            ctx.output.activity().set_busy(ready > 0 || held);
                        }
                        Err(error) => {
                            return Ok((Ended::ConnectionLost(format!("checking the queue: {error}")), session));
                        }
                    }
                }
                delivery = session.consumer.next() => {
                    let delivery = match delivery {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(error)) => return Ok((Ended::ConnectionLost(error.to_string()), session)),
                        None => return Ok((Ended::ConnectionLost("the broker cancelled the consumer".into()), session)),
                    };
                    last_delivery = tokio::time::Instant::now();
                    let message_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
                    if acks.covered.already_counted(message_id.as_deref()) {
                        counters.skipped.fetch_add(1, Ordering::Relaxed);
                    } else if let Err(error) = self.take(&session, &delivery, pending, counters).await {
                        return Ok((Ended::ConnectionLost(error), session));
                    }
                    acks.delivered(delivery.delivery_tag);
                    acks.covered.taken(delivery.delivery_tag, message_id);
                    counters.unacked.store(acks.unacked(), Ordering::Relaxed);
                    if acks.unacked() >= u64::from(self.config.prefetch) {
                        // The broker sends nothing more until a checkpoint acknowledges.
                        ctx.output.activity().set_busy(true);
                    }
                    if pending.count >= self.config.batch_size {
                        pending.flush(ctx).await?;
                    }
                    if !requested && acks.unacked() >= request_at {
                        requested = true;
                        ctx.checkpoint_requests.request();
                    }
                }
            }
        }
    }

    /// Decodes one delivery into `pending`, or dead-letters it.
    async fn take(
        &self,
        session: &Session,
        delivery: &Delivery,
        pending: &mut Pending,
        counters: &Counters,
    ) -> Result<(), String> {
        counters.deliveries.fetch_add(1, Ordering::Relaxed);
        if delivery.redelivered {
            counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let letter = if delivery.data.len() > self.config.max_message_bytes {
            Some(DeadLetter {
                body: None,
                reason: "too_large",
                error: format!(
                    "the message has {} bytes; max_message_bytes is {}",
                    delivery.data.len(),
                    self.config.max_message_bytes
                ),
                delivery,
            })
        } else {
            let content_type = delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str());
            match decode_api_calls(&delivery.data, content_type) {
                Ok(decoded) => self.take_on_time(decoded, delivery, pending, counters),
                Err(error) => Some(DeadLetter {
                    body: None,
                    reason: "decode_error",
                    error: error.to_string(),
                    delivery,
                }),
            }
        };
        let Some(letter) = letter else {
            return Ok(());
        };
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_else(|| format!("delivery tag {}", delivery.delivery_tag));
        tracing::warn!(source = %self.component, message_id = %message_id, routing_key = %delivery.routing_key, reason = letter.reason, error = %letter.error, "rabbitmq: message dead-lettered");
        let exchange = self.config.dead_letter_exchange();
        if exchange.is_empty() {
            return Ok(());
        }
        session
            .dead_letter(&exchange, &self.component, &self.config.queue, letter)
            .await
    }

    /// Adds the events of `decoded` to `pending`, except those stamped beyond
    /// `max_future_skew`: clamped to now, or returned as a dead letter of their own.
    fn take_on_time<'d>(
        &self,
        decoded: DecodedCalls,
        delivery: &'d Delivery,
        pending: &mut Pending,
        counters: &Counters,
    ) -> Option<DeadLetter<'d>> {
        let now = engine::time::now_micros();
        let limit = now.saturating_add(self.config.max_future_skew.as_micros());
        let (on_time, mut future) = match take_future(decoded, limit) {
            Ok(split) => split,
            Err(error) => {
                return Some(DeadLetter {
                    body: None,
                    reason: "decode_error",
                    error: error.to_string(),
                    delivery,
                })
            }
        };
        pending.add(on_time);
        if future.is_empty() {
            return None;
        }
        counters
            .future_events
            .fetch_add(future.len() as u64, Ordering::Relaxed);
        let first = future[0].event_time;
        match self.config.future_events {
            FutureEvents::Clamp => {
                tracing::warn!(source = %self.component, events = future.len(), event_time = %engine::time::format_micros(first), "rabbitmq: events stamped in the future were clamped to now");
                for call in &mut future {
                    call.event_time = now;
                }
                pending.add(DecodedCalls::Rows(future));
                None
            }
            FutureEvents::DeadLetter => {
                let error = format!(
                    "{} event(s) stamped up to {} ahead of this machine's clock (first: {}), beyond max_future_skew = {}",
                    future.len(),
                    humanize_micros(future.iter().map(|c| c.event_time).max().unwrap_or(first) - now),
                    engine::time::format_micros(first),
                    self.config.max_future_skew
                );
                let body = encode_api_calls_json(future.iter()).ok()?;
                Some(DeadLetter {
                    body: Some((body, JSON_CONTENT_TYPE)),
                    reason: "event_time_in_future",
                    error,
                    delivery,
                })
            }
        }
    }

    /// Sleeps for `delay`, still passing barriers downstream (so checkpoints of the rest of
    /// the pipeline are not held up by a broker outage).
    async fn wait_forwarding_barriers(
        &self,
        ctx: &mut SourceContext,
        pending: &mut Pending,
        acks: &AckTracker,
        delay: Duration,
    ) -> ComponentResult {
        pending.flush(ctx).await?;
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(until) => return Ok(()),
                Some(barrier) = ctx.barriers.recv() => {
                    save_state(ctx, barrier, acks).await?;
                    ctx.output.send_control(Message::Barrier(barrier)).await?;
                }
            }
        }
    }

    /// On shutdown: stop taking deliveries, flush, run one more checkpoint and acknowledge
    /// what it covered, so a clean restart redelivers nothing already processed.
    async fn final_checkpoint(
        &self,
        ctx: &mut SourceContext,
        session: &Session,
        pending: &mut Pending,
        acks: &mut AckTracker,
        counters: &Counters,
    ) -> ComponentResult {
        pending.flush(ctx).await?;
        if acks.unacked() == 0 {
            return Ok(());
        }
        ctx.checkpoint_requests.request();
        let mut completed = ctx.completed_checkpoints.clone();
        let wait = async {
            let barrier: Barrier = ctx.barriers.recv().await?;
            save_state(ctx, barrier, acks).await.ok()?;
            ctx.output
                .send_control(Message::Barrier(barrier))
                .await
                .ok()?;
            acks.barrier(barrier.checkpoint_id);
            completed
                .wait_for(|&id| id >= barrier.checkpoint_id)
                .await
                .ok()
                .map(|id| *id)
        };
        match tokio::time::timeout(self.config.shutdown_timeout.0, wait).await {
            Ok(Some(id)) => {
                if let Some(ack) = acks.completed(id) {
                    if session.ack_up_to(ack.tag).await.is_ok() {
                        counters.acked.fetch_add(ack.count, Ordering::Relaxed);
                    }
                }
                counters.unacked.store(acks.unacked(), Ordering::Relaxed);
                tracing::info!(source = %self.component, checkpoint = id, "rabbitmq: final checkpoint acknowledged");
            }
            _ => {
                tracing::warn!(source = %self.component, unacked = acks.unacked(), "rabbitmq: no final checkpoint before the shutdown timeout; unacknowledged deliveries will be redelivered");
            }
        }
        Ok(())
    }
}
