//! Messages that travel on the pipeline's channels: data as Arrow micro-batches, and the
//! in-band control messages (watermarks, checkpoint barriers, idleness) that keep their order
//! with it.

use arrow::record_batch::RecordBatch;

/// Event-time progress: no event with a time below `micros` (µs since the Unix epoch, UTC) is
/// expected any more on the channel that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark(pub i64);

impl Watermark {
    /// The watermark that closes every window: sent when a stream ends.
    pub const END: Watermark = Watermark(i64::MAX);
}

/// A checkpoint barrier. Sources inject it, operators align it across their inputs and
/// forward it, sinks make everything before it durable and then acknowledge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Barrier {
    /// Monotonically increasing checkpoint id, starting at 1.
    pub checkpoint_id: u64,
    /// Wall-clock time the checkpoint was started, µs since the Unix epoch.
    pub started_at_micros: i64,
}

/// What flows on an edge of the graph.
#[derive(Debug, Clone)]
pub enum Message {
    /// A micro-batch of rows. Never empty.
    Data(RecordBatch),
    Watermark(Watermark),
    Barrier(Barrier),
    /// The input has nothing to deliver: its source is idle (not held back), so event time
    /// may advance past it by the wall clock until data comes again.
    Idle,
}
