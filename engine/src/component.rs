//! The three component traits. Sources produce micro-batches and inject barriers; operators are
//! synchronous transformations driven by the runtime (so they are easy to test and cheap to
//! call); sinks write batches out and make them durable at each checkpoint barrier.

use std::sync::Arc;

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::message::{Barrier, Watermark};
use crate::metrics::ComponentMetrics;
use crate::runtime::output::Output;

/// An error raised by a running component. The runtime logs it with the component's id and
/// stops the pipeline (sinks retry transient failures themselves before giving up).
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("every downstream component has stopped")]
    DownstreamClosed,
    #[error("{0}")]
    Other(String),
}

impl ComponentError {
    pub fn other(message: impl std::fmt::Display) -> Self {
        ComponentError::Other(message.to_string())
    }
}

pub type ComponentResult<T = ()> = Result<T, ComponentError>;

/// What a running source is handed.
pub struct SourceContext {
    pub id: String,
    pub output: Output,
    /// Barriers to inject, in order, from the checkpoint coordinator. A source sends each one
    /// downstream after the data it has already emitted, and before anything newer.
    pub barriers: mpsc::Receiver<Barrier>,
    /// The id of the newest checkpoint that every sink has made durable.
    pub completed_checkpoints: watch::Receiver<u64>,
    /// Asks the coordinator for a checkpoint now (a source holding many unacknowledged
    /// deliveries, or one about to stop, wants them acknowledged).
    pub checkpoint_requests: CheckpointRequester,
    /// Cancelled on shutdown: flush what is buffered, then return.
    pub shutdown: CancellationToken,
    pub metrics: Arc<ComponentMetrics>,
    /// The state this source saved in the checkpoint the pipeline restored (only for a source
    /// whose `saves_state` is true, and only when a checkpoint was restored).
    pub restored_state: Option<Vec<u8>>,
    /// Where a source whose `saves_state` is true hands its state at each barrier.
    pub state: StateReporter,
}

/// Hands a component's state for a checkpoint to the coordinator.
#[derive(Debug, Clone)]
pub struct StateReporter(pub(crate) Option<crate::runtime::Reporter>);

impl StateReporter {
    /// Saves `state` as this component's part of checkpoint `checkpoint`. A source calls it
    /// when it forwards that checkpoint's barrier (before or after, as long as it is the
    /// state as of the barrier).
    pub async fn save(&self, checkpoint: u64, state: Vec<u8>) {
        if let Some(reporter) = &self.0 {
            reporter.state(checkpoint, Some(state)).await;
        }
    }

    /// A reporter connected to nothing (for sources driven outside a pipeline, in tests).
    pub fn detached() -> Self {
        Self(None)
    }
}

/// Lets a source ask for a checkpoint. Requests made while one is in flight or already
/// requested are merged.
#[derive(Debug, Clone)]
pub struct CheckpointRequester(pub(crate) mpsc::Sender<()>);

impl CheckpointRequester {
    /// Requests a checkpoint without waiting.
    pub fn request(&self) {
        let _ = self.0.try_send(());
    }

    /// A requester connected to nothing (for sources driven outside a pipeline, in tests).
    pub fn detached() -> Self {
        Self(mpsc::channel(1).0)
    }
}

/// Produces batches. `run` returns when its input is exhausted or on shutdown, after sending
/// everything it has buffered.
#[async_trait]
pub trait Source: Send {
    async fn run(self: Box<Self>, ctx: SourceContext) -> ComponentResult;

    /// A fail-open source (the proxy) keeps running when a downstream component fails: its
    /// `shutdown` is cancelled only by a shutdown request, and it must drop (and count) what it
    /// can no longer send instead of stopping.
    fn fail_open(&self) -> bool {
        false
    }

    /// A source with state of its own (e.g. which broker messages a checkpoint covered) returns
    /// true, and then must call `ctx.state.save` for every barrier it forwards.
    fn saves_state(&self) -> bool {
        false
    }
}

/// What an operator emits while handling one call.
#[derive(Debug, Default)]
pub struct Collector {
    pub(crate) batches: Vec<(usize, RecordBatch)>,
    pub(crate) watermark: Option<Watermark>,
}

impl Collector {
    /// Emits a batch on the default output.
    pub fn emit(&mut self, batch: RecordBatch) {
        self.emit_to(0, batch);
    }

    /// Emits a batch on the output port with this index (0 is the default output; named
    /// ports follow in the order the operator declared them). Empty batches are dropped.
    pub fn emit_to(&mut self, port: usize, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push((port, batch));
        }
    }

    /// Sets the operator's output watermark.
    pub fn watermark(&mut self, watermark: Watermark) {
        self.watermark = Some(match self.watermark {
            Some(previous) => previous.max(watermark),
            None => watermark,
        });
    }

    /// Takes what was collected (for tests and for the runtime).
    pub fn take(&mut self) -> (Vec<(usize, RecordBatch)>, Option<Watermark>) {
        (std::mem::take(&mut self.batches), self.watermark.take())
    }
}

/// A synchronous transformation of batches. The runtime calls it from one task; inputs are
/// numbered in the order of the component's `inputs` setting.
pub trait Operator: Send {
    /// Handles one input batch.
    fn process(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> ComponentResult;

    /// The combined watermark of the inputs advanced. The default forwards it.
    fn on_watermark(&mut self, watermark: Watermark, out: &mut Collector) -> ComponentResult {
        out.watermark(watermark);
        Ok(())
    }

    /// Called periodically with the wall clock (µs), for processing-time work such as
    /// advancing event time on an idle stream.
    fn on_tick(&mut self, _now_micros: i64, _out: &mut Collector) -> ComponentResult {
        Ok(())
    }

    /// Whether every input's source is idle — has nothing to deliver, as opposed to being held
    /// back (see `runtime::idle`) — from now on; called at the start and on every change. Event
    /// time may advance by the wall clock only while it is.
    fn on_inputs_idle(&mut self, _idle: bool) {}

    /// A checkpoint barrier has arrived on every input; everything before it was processed.
    /// State snapshots hook in here.
    fn on_barrier(&mut self, _barrier: Barrier) -> ComponentResult {
        Ok(())
    }

    /// Every input has ended (or the pipeline is shutting down): emit everything still held.
    fn on_end(&mut self, _out: &mut Collector) -> ComponentResult {
        Ok(())
    }

    /// The operator's state as of the barrier just handled (after `on_barrier`), for the
    /// checkpoint; `None` for a stateless operator. `engine::state::snapshot` encodes it.
    fn snapshot(&mut self) -> ComponentResult<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Restores what `snapshot` returned, before the first input. An error means the state
    /// does not fit this operator; the runtime then starts it empty and says so.
    fn restore(&mut self, _state: &[u8]) -> ComponentResult {
        Ok(())
    }
}

/// How a sink takes part in exactly-once output: checkpoint `restored` was restored (0: none)
/// and the next checkpoint is `next`. A sink that stages output at each barrier and publishes
/// it in `commit` publishes what it staged for checkpoints up to `restored` and discards the
/// rest (output of a run that crashed after that checkpoint, which will be produced again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPlan {
    pub restored: u64,
    pub next: u64,
    /// Identifies the line of checkpoints these ids belong to (the pipeline and where its
    /// checkpoints are kept): two pipelines, or two instances with checkpoints of their own,
    /// have different lineages whatever their ids.
    pub lineage: u64,
}

/// Writes batches somewhere.
#[async_trait]
pub trait Sink: Send {
    /// Accepts one batch. May buffer; buffered data must be made durable by `checkpoint`.
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult;

    /// The combined watermark of the inputs advanced.
    async fn on_watermark(&mut self, _watermark: Watermark) -> ComponentResult {
        Ok(())
    }

    /// Called periodically, for time-based flushing.
    async fn on_tick(&mut self) -> ComponentResult {
        Ok(())
    }

    /// Makes everything written before the barrier durable. The runtime acknowledges the
    /// barrier to the checkpoint coordinator only after this returns `Ok`.
    async fn checkpoint(&mut self, _barrier: Barrier) -> ComponentResult {
        self.flush().await
    }

    /// Called once before the first batch. `Some` when the pipeline saves state at
    /// checkpoints, so that a sink can make its output exactly-once by staging it at each
    /// barrier and publishing it in `commit`.
    async fn begin(&mut self, _plan: Option<CommitPlan>) -> ComponentResult {
        Ok(())
    }

    /// Checkpoint `checkpoint` (and every one before it) completed.
    async fn commit(&mut self, _checkpoint: u64) -> ComponentResult {
        Ok(())
    }

    /// Writes out anything buffered.
    async fn flush(&mut self) -> ComponentResult;

    /// The inputs ended: flush and release resources.
    async fn close(&mut self) -> ComponentResult {
        self.flush().await
    }
}
