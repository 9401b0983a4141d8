//! `rabbitmq` sink: publishes rows to an exchange, `max_events_per_message` rows per message,
//! grouped by a routing-key template (`{model}.{endpoint}` by default), as JSON lines or an
//! Arrow IPC stream, persistent and with publisher confirms.
//!
//! Writing never waits on the broker: rows are encoded and queued for a background publisher
//! (see [`publisher`]) up to `buffer_max_events`; beyond that, new rows are dropped and
//! counted, so an edge proxy keeps serving through a broker outage. A checkpoint barrier is
//! acknowledged once every message queued before it is confirmed by the broker.

mod config;
pub mod publisher;
mod routing;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::codec::{encode, encode_api_calls_json, Encoding};
use engine::component::{ComponentError, ComponentResult, Sink};
use engine::config::ConfigError;
use engine::message::Barrier;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::api_call::{api_call_schema, batch_to_api_calls};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Declare, RabbitMqSinkConfig};
pub use routing::RoutingTemplate;

use publisher::{Outgoing, Shared};

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    let config: RabbitMqSinkConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    let routing = RoutingTemplate::parse(&config.routing_key, &schema)
        .map_err(|message| ctx.spec.error_at_key("routing_key", message))?;
    if config.max_events_per_message == 0 {
        return Err(ctx
            .spec
            .error_at_key("max_events_per_message", "must be at least 1"));
    }
    if config.buffer_max_events < config.max_events_per_message {
        return Err(ctx.spec.error_at_key(
            "buffer_max_events",
            "must hold at least one message (`max_events_per_message` events)",
        ));
    }
    if let Err(error) = config.url.parse::<lapin::uri::AMQPUri>() {
        return Err(ctx
            .spec
            .error_at_key("url", format!("not an AMQP URL: {error}")));
    }
    if config.exchange.is_empty() && config.queue.is_none() && routing.constant().is_none() {
        tracing::debug!("rabbitmq sink publishes to the default exchange with computed keys");
    }
    let is_api_call = schema.fields() == api_call_schema().fields();
    Ok(Box::new(RabbitMqSink {
        component: ctx.spec.id.clone(),
        shared: Shared::new(config.buffer_max_events, &ctx.metrics),
        config,
        routing,
        is_api_call,
        metrics: ctx.metrics.clone(),
        publisher: None,
    }))
}

struct RabbitMqSink {
    component: String,
    config: RabbitMqSinkConfig,
    routing: RoutingTemplate,
    is_api_call: bool,
    shared: Arc<Shared>,
    metrics: Arc<ComponentMetrics>,
    publisher: Option<Publisher>,
}

struct Publisher {
    task: JoinHandle<()>,
    stop: CancellationToken,
    stop_now: CancellationToken,
}

impl RabbitMqSink {
    /// Starts the background publisher on first use (building a sink, e.g. for `validate`,
    /// must not connect).
    fn ensure_publisher(&mut self) {
        if self.publisher.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        let stop_now = CancellationToken::new();
        let task = tokio::spawn(publisher::run(
            self.component.clone(),
            self.config.clone(),
            self.shared.clone(),
            self.metrics.clone(),
            stop.clone(),
            stop_now.clone(),
        ));
        self.publisher = Some(Publisher {
            task,
            stop,
            stop_now,
        });
    }

    fn encode_messages(&self, batch: &RecordBatch) -> Result<Vec<Outgoing>, ComponentError> {
        let per_message = self.config.max_events_per_message;
        let groups = self.routing.group(batch)?;
        let mut messages = Vec::new();
        for (routing_key, rows) in groups {
            if self.is_api_call && self.config.encoding == Encoding::Json {
                let calls = batch_to_api_calls(&rows)?;
                for chunk in calls.chunks(per_message) {
                    let body = encode_api_calls_json(chunk.iter())
                        .map_err(|e| ComponentError::other(e.to_string()))?;
                    messages.push(Outgoing {
                        routing_key: routing_key.clone(),
                        body,
                        events: chunk.len(),
                        message_id: uuid::Uuid::now_v7().to_string(),
                    });
                }
                continue;
            }
            let mut offset = 0;
            while offset < rows.num_rows() {
                let length = per_message.min(rows.num_rows() - offset);
                let body = encode(&rows.slice(offset, length), self.config.encoding)
                    .map_err(|e| ComponentError::other(e.to_string()))?;
                messages.push(Outgoing {
                    routing_key: routing_key.clone(),
                    body,
                    events: length,
                    message_id: uuid::Uuid::now_v7().to_string(),
                });
                offset += length;
            }
        }
        Ok(messages)
    }

    /// Waits until every message queued so far is confirmed.
    async fn wait_confirmed(&mut self) -> ComponentResult {
        let target = self.shared.last_seq();
        let mut confirmed = self.shared.subscribe_confirmed();
        let finished = self.publisher.as_ref().map(|p| p.task.is_finished());
        if finished == Some(true) && *confirmed.borrow() < target {
            return Err(ComponentError::other(
                "the rabbitmq publisher stopped with messages unconfirmed",
            ));
        }
        confirmed
            .wait_for(|&seq| seq >= target)
            .await
            .map_err(|_| ComponentError::other("the rabbitmq publisher stopped"))?;
        Ok(())
    }
}

#[async_trait]
impl Sink for RabbitMqSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        self.ensure_publisher();
        let mut dropped = 0u64;
        for message in self.encode_messages(&batch)? {
            let events = message.events as u64;
            if !self.shared.enqueue(message) {
                dropped += events;
            }
        }
        if dropped > 0 {
            self.metrics.add_dropped(dropped);
            let total = self.metrics.dropped.load(Ordering::Relaxed);
            if total == dropped || total % 100_000 < dropped {
                tracing::warn!(sink = %self.component, dropped_total = total, buffer_max_events = self.config.buffer_max_events, "rabbitmq: buffer full (broker unreachable or slow); dropping events");
            }
        }
        Ok(())
    }

    async fn checkpoint(&mut self, _barrier: Barrier) -> ComponentResult {
        if self.publisher.is_none() {
            return Ok(());
        }
        self.wait_confirmed().await
    }

    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }

    async fn close(&mut self) -> ComponentResult {
        let Some(publisher) = self.publisher.take() else {
            return Ok(());
        };
        publisher.stop.cancel();
        self.shared.wake();
        let timeout = self.config.close_timeout.0;
        let mut task = publisher.task;
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(_) => Ok(()),
            Err(_) => {
                publisher.stop_now.cancel();
                let _ = task.await;
                let lost = self.shared.buffered_events();
                self.metrics.add_dropped(lost as u64);
                Err(ComponentError::other(format!(
                    "rabbitmq: {lost} events were still unconfirmed after waiting {timeout:?} at shutdown"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::registry::Registry;

    fn validate(settings: &str) -> Result<(), String> {
        let text = format!(
            "[sources.gen]\ntype = \"generator\"\n[sinks.out]\ntype = \"rabbitmq\"\ninputs = [\"gen\"]\n{settings}\n"
        );
        let mut registry = Registry::new();
        registry.add_source("generator", |_ctx| {
            Ok(engine::registry::BuiltSource {
                source: Box::new(Never),
                schema: api_call_schema(),
            })
        });
        registry.add_sink("rabbitmq", build);
        engine::runtime::build_from_text("pipelines.toml", &text, |_| None, &registry)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    struct Never;

    #[async_trait]
    impl engine::component::Source for Never {
        async fn run(self: Box<Self>, _ctx: engine::SourceContext) -> ComponentResult {
            Ok(())
        }
    }

    #[test]
    fn settings_are_checked_where_they_are_written() {
        validate("exchange = \"calls\"").unwrap();
        let error = validate("exchange = \"calls\"\nrouting_key = \"{modle}\"").unwrap_err();
        assert!(error.contains("pipelines.toml:7:15"), "{error}");
        assert!(error.contains("`modle`"), "{error}");
        let error = validate("exchange = \"calls\"\nmax_events_per_message = 0").unwrap_err();
        assert!(error.contains("must be at least 1"), "{error}");
        let error = validate("exchange = \"calls\"\nurl = \"http://x\"").unwrap_err();
        assert!(error.contains("not an AMQP URL"), "{error}");
        let error = validate("exchange = \"calls\"\nencoding = \"xml\"").unwrap_err();
        assert!(error.contains("unknown variant"), "{error}");
    }
}
