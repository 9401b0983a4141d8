//! A component's outputs: named ports, each fanning out to any number of downstream input
//! channels. Sending awaits channel capacity, which is how backpressure reaches the source.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::component::{ComponentError, ComponentResult};
use crate::message::Message;
use crate::metrics::ComponentMetrics;
use crate::runtime::idle::Activity;

/// One downstream input channel.
pub(crate) struct Edge {
    pub(crate) tx: mpsc::Sender<Message>,
    /// The receiving component's metrics, for its queue depth.
    pub(crate) downstream: Arc<ComponentMetrics>,
}

/// Outcome of a non-blocking send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendOutcome {
    Sent,
    /// At least one downstream queue was full; the batch was not sent there and is counted as
    /// dropped.
    Dropped,
}

/// The output ports of one component.
pub struct Output {
    pub(crate) ports: Vec<Vec<Edge>>,
    pub(crate) metrics: Arc<ComponentMetrics>,
    /// For a source: when it last sent data and whether it is held back (see `idle`).
    pub(crate) activity: Arc<Activity>,
}

impl Output {
    /// An output with `ports` ports and nothing connected (for tests of a component alone).
    pub fn detached(ports: usize, metrics: Arc<ComponentMetrics>) -> Self {
        Self {
            ports: (0..ports.max(1)).map(|_| Vec::new()).collect(),
            metrics,
            activity: Arc::default(),
        }
    }

    /// The source's activity: a source with work it cannot deliver yet says so here, so that
    /// it is not taken for idle (see [`Activity::set_busy`]).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Weak handles on every downstream channel, for the idle watcher.
    pub(crate) fn weak_edges(&self) -> Vec<tokio::sync::mpsc::WeakSender<Message>> {
        self.ports
            .iter()
            .flatten()
            .map(|edge| edge.tx.downgrade())
            .collect()
    }

    /// Connects a new channel to `port` and returns its receiving end.
    pub fn connect(
        &mut self,
        port: usize,
        capacity: usize,
        downstream: Arc<ComponentMetrics>,
    ) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        if self.ports.len() <= port {
            self.ports.resize_with(port + 1, Vec::new);
        }
        self.ports[port].push(Edge { tx, downstream });
        rx
    }

    pub fn is_connected(&self) -> bool {
        self.ports.iter().any(|p| !p.is_empty())
    }

    /// Sends a batch to every channel of `port`, waiting for capacity.
    pub async fn send_batch(&mut self, port: usize, batch: RecordBatch) -> ComponentResult {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let Some(edges) = self.ports.get(port) else {
            return Ok(());
        };
        if edges.is_empty() {
            return Ok(());
        }
        let _sending = self.activity.sending();
        if let Err(error) = send_all(edges, Message::Data(batch)).await {
            // Delivered nowhere: the rows are dropped, and counted as such.
            self.metrics.add_dropped(rows as u64);
            return Err(error);
        }
        self.metrics.record_out(rows);
        Ok(())
    }

    /// Sends a batch without waiting: a full downstream queue drops it there and counts it.
    /// For sources that must never block (the proxy).
    pub fn try_send_batch(&mut self, port: usize, batch: RecordBatch) -> TrySendOutcome {
        let rows = batch.num_rows();
        let Some(edges) = self.ports.get(port) else {
            return TrySendOutcome::Sent;
        };
        let mut outcome = TrySendOutcome::Sent;
        for edge in edges {
            match edge.tx.try_send(Message::Data(batch.clone())) {
                Ok(()) => {
                    edge.downstream.queue_depth.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    outcome = TrySendOutcome::Dropped;
                }
            }
        }
        match outcome {
            TrySendOutcome::Sent => self.metrics.record_out(rows),
            TrySendOutcome::Dropped => self.metrics.add_dropped(rows as u64),
        }
        outcome
    }

    /// Sends a control message (watermark or barrier) on every port.
    pub async fn send_control(&mut self, message: Message) -> ComponentResult {
        for edges in &self.ports {
            if !edges.is_empty() {
                send_all(edges, message.clone()).await?;
            }
        }
        Ok(())
    }
}

async fn send_all(edges: &[Edge], message: Message) -> ComponentResult {
    let mut delivered = 0;
    let last = edges.len() - 1;
    let mut message = Some(message);
    for (i, edge) in edges.iter().enumerate() {
        let m = if i == last {
            message.take().expect("the last edge takes the message")
        } else {
            message
                .clone()
                .expect("message is present until the last edge")
        };
        if edge.tx.send(m).await.is_ok() {
            edge.downstream.queue_depth.fetch_add(1, Ordering::Relaxed);
            delivered += 1;
        }
    }
    if delivered == 0 {
        return Err(ComponentError::DownstreamClosed);
    }
    Ok(())
}
