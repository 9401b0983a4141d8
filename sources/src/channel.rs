//! `channel`: api_call events handed over in-process (by the embedded demo's traffic driver, or
//! by a program embedding the pipeline), taken in batches: `linger` after the first event of a
//! batch, everything queued is sent, in batches of at most `batch_size`.
//! The sending side uses `try_send`: when the pipeline falls behind, events are dropped and
//! counted by the sender, never blocking it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use engine::component::{ComponentResult, Source, SourceContext};
use engine::config::ConfigError;
use engine::message::Message;
use engine::registry::{BuildContext, BuiltSource, Registry};
use engine::schema::api_call::{api_call_schema, ApiCall, ApiCallBatchBuilder};
use engine::time::ConfigDuration;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelConfig {
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_linger")]
    linger: ConfigDuration,
}

fn default_batch_size() -> usize {
    1024
}

fn default_linger() -> ConfigDuration {
    ConfigDuration::from_millis(100)
}

/// Registers a source type `type_name` fed by `receiver`. The receiver goes to the first
/// pipeline run that builds the source; validating builds use no receiver.
pub fn register(registry: &mut Registry, type_name: &str, receiver: mpsc::Receiver<ApiCall>) {
    let slot = Arc::new(Mutex::new(Some(receiver)));
    let name = type_name.to_string();
    registry.add_source(
        type_name,
        move |ctx: &BuildContext<'_, '_>| -> Result<BuiltSource, ConfigError> {
            let config: ChannelConfig = ctx.spec.settings()?;
            if config.batch_size == 0 {
                return Err(ctx
                    .spec
                    .error_at_key("batch_size", "`batch_size` must be at least 1"));
            }
            Ok(BuiltSource {
                source: Box::new(ChannelSource {
                    slot: slot.clone(),
                    name: name.clone(),
                    batch_size: config.batch_size,
                    linger: config.linger.0,
                }),
                schema: api_call_schema(),
            })
        },
    );
}

struct ChannelSource {
    slot: Arc<Mutex<Option<mpsc::Receiver<ApiCall>>>>,
    name: String,
    batch_size: usize,
    linger: Duration,
}

#[async_trait]
impl Source for ChannelSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> ComponentResult {
        let receiver = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut receiver) = receiver else {
            return Err(engine::component::ComponentError::other(format!(
                "the `{}` source's channel is already in use by another pipeline",
                self.name
            )));
        };
        let stop = ctx.shutdown.clone();
        forward_events(&mut receiver, &mut ctx, self.batch_size, self.linger, &stop).await
    }
}

/// Batches events from `receiver` into the source's output (everything queued `linger` after
/// a batch's first event, in batches of at most `batch_size`), forwards barriers after the
/// events queued before them, and when `stop` is cancelled (or every sender is gone) flushes
/// what is queued. The queue must hold what arrives in `linger`.
pub async fn forward_events(
    receiver: &mut mpsc::Receiver<ApiCall>,
    ctx: &mut SourceContext,
    batch_size: usize,
    linger: Duration,
    stop: &CancellationToken,
) -> ComponentResult {
    let mut builder = ApiCallBatchBuilder::with_capacity(batch_size);
    // Wait for a first event; then let the queue fill for `linger` without being woken by each
    // event (a wake-up per event costs the sender a cross-thread notification), and take
    // everything at once.
    let mut drain_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = drain_at.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(barrier) = ctx.barriers.recv() => {
                drain_into(receiver, &mut builder, batch_size, ctx).await?;
                ctx.output.send_control(Message::Barrier(barrier)).await?;
                drain_at = None;
            }
            call = receiver.recv(), if drain_at.is_none() => match call {
                Some(call) => {
                    builder.push(&call);
                    drain_at = Some(tokio::time::Instant::now() + linger);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline), if drain_at.is_some() => {
                drain_into(receiver, &mut builder, batch_size, ctx).await?;
                drain_at = None;
            }
        }
    }
    // Take what is still queued, then flush.
    drain_into(receiver, &mut builder, batch_size, ctx).await
}

/// Moves every queued event into batches of at most `batch_size` and sends them.
async fn drain_into(
    receiver: &mut mpsc::Receiver<ApiCall>,
    builder: &mut ApiCallBatchBuilder,
    batch_size: usize,
    ctx: &mut SourceContext,
) -> ComponentResult {
    while let Ok(call) = receiver.try_recv() {
        builder.push(&call);
        if builder.len() >= batch_size {
            ctx.output.send_batch(0, builder.finish()).await?;
        }
    }
    if !builder.is_empty() {
        ctx.output.send_batch(0, builder.finish()).await?;
    }
    Ok(())
}
