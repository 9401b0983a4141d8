//! A component's inputs merged into one ordered stream of events: data from any input, the
//! combined watermark (minimum over active inputs; an input whose source said it is idle —
//! has nothing to deliver, see `runtime::idle` — stops holding it back until it delivers data
//! again; a quiet input that is held back, by backpressure or a backlog, holds it), and
//! checkpoint barriers aligned across inputs (an input that has delivered barrier N is not
//! read again until every input has, so the barrier cuts the stream consistently).

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::message::{Barrier, Message, Watermark};
use crate::metrics::ComponentMetrics;

/// What the merged inputs yield.
#[derive(Debug)]
pub enum InputEvent {
    Data(usize, RecordBatch),
    /// The combined watermark advanced to this value.
    Watermark(Watermark),
    /// A barrier has arrived on every open input.
    Barrier(Barrier),
    /// Every input has closed.
    End,
}

struct InputState {
    receiver: mpsc::Receiver<Message>,
    open: bool,
    /// Delivered the pending barrier; not read until alignment completes.
    blocked: bool,
    watermark: Option<i64>,
    /// Its source has nothing to deliver (an idle marker, and no data since).
    idle: bool,
}

/// The merged inputs of one operator or sink.
pub struct InputSet {
    inputs: Vec<InputState>,
    pending_barrier: Option<Barrier>,
    combined: Option<i64>,
    next_start: usize,
    metrics: Arc<ComponentMetrics>,
}

impl InputSet {
    pub fn new(receivers: Vec<mpsc::Receiver<Message>>, metrics: Arc<ComponentMetrics>) -> Self {
        Self {
            inputs: receivers
                .into_iter()
                .map(|receiver| InputState {
                    receiver,
                    open: true,
                    blocked: false,
                    watermark: None,
                    idle: false,
                })
                .collect(),
            pending_barrier: None,
            combined: None,
            next_start: 0,
            metrics,
        }
    }

    /// The next event. Cancel-safe: no message is held across the await point.
    pub async fn next(&mut self) -> InputEvent {
        loop {
            let Some((index, message)) = self.poll_any().await else {
                return InputEvent::End;
            };
            let Some(message) = message else {
                self.inputs[index].open = false;
                if let Some(barrier) = self.try_complete_barrier() {
                    return InputEvent::Barrier(barrier);
                }
                if let Some(watermark) = self.advance_watermark() {
                    return InputEvent::Watermark(watermark);
                }
                continue;
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            match message {
                Message::Data(batch) => {
                    self.inputs[index].idle = false;
                    self.metrics.record_in(batch.num_rows());
                    return InputEvent::Data(index, batch);
                }
                Message::Idle => {
                    self.inputs[index].idle = true;
                    if let Some(watermark) = self.advance_watermark() {
                        return InputEvent::Watermark(watermark);
                    }
                }
                Message::Watermark(Watermark(micros)) => {
                    let input = &mut self.inputs[index];
                    input.watermark = Some(input.watermark.map_or(micros, |w| w.max(micros)));
                    if let Some(watermark) = self.advance_watermark() {
                        return InputEvent::Watermark(watermark);
                    }
                }
                Message::Barrier(barrier) => {
                    self.inputs[index].blocked = true;
                    if self.pending_barrier.is_none() {
                        self.pending_barrier = Some(barrier);
                    }
                    if let Some(barrier) = self.try_complete_barrier() {
                        return InputEvent::Barrier(barrier);
                    }
                }
            }
        }
    }

    /// Whether every open input's source is idle (nothing to deliver): only then may event
    /// time advance by the wall clock. `false` without inputs.
    pub fn all_idle(&self) -> bool {
        let mut open = self.inputs.iter().filter(|i| i.open).peekable();
        open.peek().is_some() && open.all(|i| i.idle)
    }

    /// The current combined watermark.
    pub fn watermark(&self) -> Option<Watermark> {
        self.combined.map(Watermark)
    }

    fn try_complete_barrier(&mut self) -> Option<Barrier> {
        let barrier = self.pending_barrier?;
        if self.inputs.iter().all(|i| i.blocked || !i.open) {
            for input in &mut self.inputs {
                input.blocked = false;
            }
            self.pending_barrier = None;
            return Some(barrier);
        }
        None
    }

    fn advance_watermark(&mut self) -> Option<Watermark> {
        let candidates = self
            .inputs
            .iter()
            .filter(|i| i.open && i.watermark.is_some());
        let active: Vec<i64> = candidates
            .clone()
            .filter(|i| !i.idle)
            .filter_map(|i| i.watermark)
            .collect();
        let minimum = if active.is_empty() {
            // Every input with a watermark is idle: the furthest one leads.
            candidates.filter_map(|i| i.watermark).max()
        } else {
            active.into_iter().min()
        };
        let all_closed = self.inputs.iter().all(|i| !i.open);
        let next = if all_closed { Some(i64::MAX) } else { minimum }?;
        if self.combined.is_some_and(|c| c >= next) {
            return None;
        }
        self.combined = Some(next);
        self.metrics.watermark.store(next, Ordering::Relaxed);
        Some(Watermark(next))
    }

    /// Polls the unblocked, open inputs fairly. `None` when every input has closed;
    /// `Some((i, None))` when input `i` has just closed.
    async fn poll_any(&mut self) -> Option<(usize, Option<Message>)> {
        poll_fn(|cx| {
            let count = self.inputs.len();
            let mut any_open = false;
            for offset in 0..count {
                let index = (self.next_start + offset) % count;
                let input = &mut self.inputs[index];
                if !input.open {
                    continue;
                }
                any_open = true;
                if input.blocked {
                    continue;
                }
                if let Poll::Ready(message) = input.receiver.poll_recv(cx) {
                    self.next_start = (index + 1) % count;
                    return Poll::Ready(Some((index, message)));
                }
            }
            if any_open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::api_call::{api_calls_to_batch, ApiCall};

    fn batch(rows: usize) -> RecordBatch {
        let calls: Vec<ApiCall> = (0..rows)
            .map(|i| ApiCall {
                event_time: i as i64,
                request_id: format!("r{i}"),
                latency_ms: 1.0,
                ..Default::default()
            })
            .collect();
        api_calls_to_batch(&calls)
    }

    fn barrier(id: u64) -> Barrier {
        Barrier {
            checkpoint_id: id,
            started_at_micros: 0,
        }
    }

    #[tokio::test]
    async fn barriers_align_across_inputs_and_block_the_early_input() {
        let (tx_a, rx_a) = mpsc::channel(8);
        let (tx_b, rx_b) = mpsc::channel(8);
        let mut inputs = InputSet::new(vec![rx_a, rx_b], ComponentMetrics::new());
        tx_a.send(Message::Barrier(barrier(1))).await.unwrap();
        tx_a.send(Message::Data(batch(3))).await.unwrap(); // after the barrier on input a
        tx_b.send(Message::Data(batch(2))).await.unwrap(); // before the barrier on input b
        tx_b.send(Message::Barrier(barrier(1))).await.unwrap();
        match inputs.next().await {
            InputEvent::Data(1, b) => assert_eq!(b.num_rows(), 2),
            other => panic!("expected b's pre-barrier data first, got {other:?}"),
        }
        match inputs.next().await {
            InputEvent::Barrier(b) => assert_eq!(b.checkpoint_id, 1),
            other => panic!("expected the aligned barrier, got {other:?}"),
        }
        match inputs.next().await {
            InputEvent::Data(0, b) => assert_eq!(b.num_rows(), 3),
            other => panic!("expected a's post-barrier data, got {other:?}"),
        }
        drop(tx_a);
        drop(tx_b);
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark::END)
        ));
        assert!(matches!(inputs.next().await, InputEvent::End));
    }

    #[tokio::test]
    async fn combined_watermark_is_the_minimum_of_inputs() {
        let (tx_a, rx_a) = mpsc::channel(8);
        let (tx_b, rx_b) = mpsc::channel(8);
        let mut inputs = InputSet::new(vec![rx_a, rx_b], ComponentMetrics::new());
        tx_a.send(Message::Watermark(Watermark(100))).await.unwrap();
        tx_b.send(Message::Watermark(Watermark(50))).await.unwrap();
        tx_a.send(Message::Watermark(Watermark(200))).await.unwrap();
        tx_b.send(Message::Watermark(Watermark(150))).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            match inputs.next().await {
                InputEvent::Watermark(w) => seen.push(w.0),
                other => panic!("unexpected {other:?}"),
            }
        }
        // a=100 (b unknown) -> 100; b=50 and a=200 keep the minimum at 50 (no regress, no
        // event); b=150 -> min(200, 150) = 150.
        assert_eq!(seen, vec![100, 150]);
        assert_eq!(inputs.watermark(), Some(Watermark(150)));
    }

    #[tokio::test]
    async fn an_idle_input_stops_holding_the_watermark_back_and_a_quiet_one_does_not() {
        let (tx_a, rx_a) = mpsc::channel(8);
        let (tx_b, rx_b) = mpsc::channel(8);
        let mut inputs = InputSet::new(vec![rx_a, rx_b], ComponentMetrics::new());
        tx_b.send(Message::Watermark(Watermark(10))).await.unwrap();
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(10))
        ));
        // b is quiet (held back, say) but not idle: a's progress does not pass it.
        tx_a.send(Message::Watermark(Watermark(1_000)))
            .await
            .unwrap();
        tx_a.send(Message::Data(batch(1))).await.unwrap();
        assert!(matches!(inputs.next().await, InputEvent::Data(0, _)));
        assert_eq!(inputs.watermark(), Some(Watermark(10)));
        assert!(!inputs.all_idle());
        // b's source says it is idle: a alone decides.
        tx_b.send(Message::Idle).await.unwrap();
        assert!(matches!(
            inputs.next().await,
            InputEvent::Watermark(Watermark(1_000))
        ));
        assert!(!inputs.all_idle(), "a is not idle");
        tx_a.send(Message::Idle).await.unwrap();
        tx_b.send(Message::Data(batch(1))).await.unwrap();
        assert!(matches!(inputs.next().await, InputEvent::Data(1, _)));
        assert!(!inputs.all_idle(), "b's data ends its idleness");
        drop(tx_a);
        drop(tx_b);
    }
}
