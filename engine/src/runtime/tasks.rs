//! The task loops that drive operators and sinks from their merged inputs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::component::{Collector, CommitPlan, ComponentResult, Operator, Sink};
use crate::message::Message;
use crate::metrics::ComponentMetrics;
use crate::runtime::checkpoint::Reporter;
use crate::runtime::input::{InputEvent, InputSet};
use crate::runtime::output::Output;
use crate::time::now_micros;

async fn drain(collector: &mut Collector, output: &mut Output) -> ComponentResult {
    let (batches, watermark) = collector.take();
    for (port, batch) in batches {
        output.send_batch(port, batch).await?;
    }
    if let Some(watermark) = watermark {
        output.send_control(Message::Watermark(watermark)).await?;
    }
    Ok(())
}

pub(crate) async fn run_operator(
    mut operator: Box<dyn Operator>,
    mut inputs: InputSet,
    mut output: Output,
    tick: Duration,
    (reporter, save_state): (Reporter, bool),
) -> ComponentResult {
    let mut collector = Collector::default();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut idle = inputs.all_idle();
    operator.on_inputs_idle(idle);
    loop {
        tokio::select! {
            biased;
            event = inputs.next() => match event {
                InputEvent::Data(input, batch) => operator.process(input, &batch, &mut collector)?,
                InputEvent::Watermark(watermark) => operator.on_watermark(watermark, &mut collector)?,
                InputEvent::Barrier(barrier) => {
                    operator.on_barrier(barrier)?;
                    let state = if save_state { operator.snapshot()? } else { None };
                    reporter.state(barrier.checkpoint_id, state).await;
                    drain(&mut collector, &mut output).await?;
                    output.send_control(Message::Barrier(barrier)).await?;
                    continue;
                }
                InputEvent::End => {
                    operator.on_end(&mut collector)?;
                    drain(&mut collector, &mut output).await?;
                    return Ok(());
                }
            },
            _ = ticker.tick() => operator.on_tick(now_micros(), &mut collector)?,
        }
        drain(&mut collector, &mut output).await?;
        // Idleness passes downstream with the data before it: when every input of this
        // operator is idle, so is its output.
        if inputs.all_idle() != idle {
            idle = !idle;
            operator.on_inputs_idle(idle);
            if idle {
                output.send_control(Message::Idle).await?;
            }
        }
    }
}

/// How a sink task talks to the checkpoint coordinator.
pub(crate) struct SinkLinks {
    pub reporter: Reporter,
    /// The newest completed checkpoint, for `commit`.
    pub completed: watch::Receiver<u64>,
    pub plan: Option<CommitPlan>,
}

pub(crate) async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut inputs: InputSet,
    links: SinkLinks,
    metrics: Arc<ComponentMetrics>,
    tick: Duration,
) -> ComponentResult {
    let SinkLinks {
        reporter,
        mut completed,
        plan,
    } = links;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    if let Err(error) = sink.begin(plan).await {
        metrics.add_errors(1);
        return Err(error);
    }
    completed.borrow_and_update();
    loop {
        tokio::select! {
            biased;
            event = inputs.next() => match event {
                InputEvent::Data(_, batch) => {
                    if let Err(error) = sink.write(batch).await {
                        metrics.add_errors(1);
                        return Err(error);
                    }
                }
                InputEvent::Watermark(watermark) => sink.on_watermark(watermark).await?,
                InputEvent::Barrier(barrier) => {
                    sink.checkpoint(barrier).await?;
                    metrics.checkpoints_acked.fetch_add(1, Ordering::Relaxed);
                    reporter.state(barrier.checkpoint_id, None).await;
                }
                InputEvent::End => {
                    sink.close().await?;
                    return Ok(());
                }
            },
            Ok(()) = completed.changed() => {
                let id = *completed.borrow_and_update();
                sink.commit(id).await?;
            }
            _ = ticker.tick() => sink.on_tick().await?,
        }
    }
}
