//! The checkpoint coordinator: injects a barrier into every source at the configured interval
//! (or when triggered), collects every sink's acknowledgement, and then publishes the
//! checkpoint as complete, which is when sources may acknowledge what came before it upstream.
//! One checkpoint is in flight at a time.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::message::Barrier;
use crate::metrics::MetricsRegistry;
use crate::time::now_micros;

/// Counters of the coordinator, reported when the run ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointStats {
    pub started: u64,
    pub completed: u64,
    pub last_duration: Option<Duration>,
}

/// Lets a caller trigger a checkpoint and wait for its completion.
#[derive(Clone)]
pub struct CheckpointHandle {
    trigger: mpsc::Sender<()>,
    completed: watch::Receiver<u64>,
}

impl CheckpointHandle {
    /// Starts a checkpoint (unless one is in flight) and waits until a checkpoint newer than
    /// the last completed one completes. `None` if the pipeline stopped first.
    pub async fn checkpoint(&mut self) -> Option<u64> {
        let before = *self.completed.borrow_and_update();
        self.trigger.send(()).await.ok()?;
        loop {
            self.completed.changed().await.ok()?;
            let now = *self.completed.borrow_and_update();
            if now > before {
                return Some(now);
            }
        }
    }

    /// The newest completed checkpoint id (0 before the first).
    pub fn completed(&self) -> u64 {
        *self.completed.borrow()
    }
}

pub(crate) struct Coordinator {
    sources: Vec<mpsc::Sender<Barrier>>,
    sink_count: usize,
    acks: mpsc::Receiver<(usize, u64)>,
    completed: watch::Sender<u64>,
    trigger: mpsc::Receiver<()>,
    interval: Duration,
}

struct InFlight {
    barrier: Barrier,
    started: Instant,
    acked: HashSet<usize>,
}

impl Coordinator {
    pub(crate) fn new(
        sources: Vec<mpsc::Sender<Barrier>>,
        sink_count: usize,
        acks: mpsc::Receiver<(usize, u64)>,
        completed: watch::Sender<u64>,
        completed_rx: watch::Receiver<u64>,
        (trigger_tx, trigger_rx): (mpsc::Sender<()>, mpsc::Receiver<()>),
        interval: Duration,
    ) -> (CheckpointHandle, Self) {
        (
            CheckpointHandle {
                trigger: trigger_tx,
                completed: completed_rx,
            },
            Self {
                sources,
                sink_count,
                acks,
                completed,
                trigger: trigger_rx,
                interval,
            },
        )
    }

    /// Runs until `stop`; `live` mirrors the stats as they change.
    pub(crate) async fn run(
        mut self,
        stop: CancellationToken,
        live: Arc<MetricsRegistry>,
    ) -> CheckpointStats {
        let mut stats = CheckpointStats::default();
        let mut next_id = 1u64;
        let mut in_flight: Option<InFlight> = None;
        // A request that arrived while a checkpoint was in flight: start one when it completes.
        let mut requested = false;
        let periodic = !self.interval.is_zero();
        let mut ticker = tokio::time::interval(if periodic {
            self.interval
        } else {
            Duration::from_secs(3600)
        });
        ticker.tick().await; // the first tick is immediate: skip it
        loop {
            let start = tokio::select! {
                _ = stop.cancelled() => return stats,
                _ = ticker.tick() => periodic,
                Some(()) = self.trigger.recv() => {
                    requested = in_flight.is_some();
                    true
                }
                Some((sink, id)) = self.acks.recv() => {
                    if let Some(flight) = in_flight.as_mut().filter(|f| f.barrier.checkpoint_id == id) {
                        flight.acked.insert(sink);
                        if flight.acked.len() >= self.sink_count {
                            let duration = flight.started.elapsed();
                            stats.completed += 1;
                            stats.last_duration = Some(duration);
                            live.checkpoints.completed.fetch_add(1, Ordering::Relaxed);
                            live.checkpoints.last_duration_micros.store(
                                duration.as_micros().min(u64::MAX as u128) as u64,
                                Ordering::Relaxed,
                            );
                            tracing::debug!(checkpoint = id, ?duration, "checkpoint complete");
                            let _ = self.completed.send(id);
                            in_flight = None;
                        }
                    }
                    in_flight.is_none() && std::mem::take(&mut requested)
                }
            };
            if !start || in_flight.is_some() || self.sources.is_empty() {
                continue;
            }
            let barrier = Barrier {
                checkpoint_id: next_id,
                started_at_micros: now_micros(),
            };
            next_id += 1;
            // A source that has finished has dropped its receiver; it no longer takes part.
            self.sources.retain(|s| !s.is_closed());
            for source in &self.sources {
                let _ = source.try_send(barrier);
            }
            stats.started += 1;
            live.checkpoints.started.fetch_add(1, Ordering::Relaxed);
            if self.sink_count == 0 {
                stats.completed += 1;
                live.checkpoints.completed.fetch_add(1, Ordering::Relaxed);
                let _ = self.completed.send(barrier.checkpoint_id);
                continue;
            }
            in_flight = Some(InFlight {
                barrier,
                started: Instant::now(),
                acked: HashSet::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_during_a_checkpoint_starts_another_when_it_completes() {
        let (barrier_tx, mut barriers) = mpsc::channel(4);
        let (ack_tx, ack_rx) = mpsc::channel(4);
        let (completed_tx, completed_rx) = watch::channel(0);
        let (trigger_tx, trigger_rx) = mpsc::channel(1);
        let (handle, coordinator) = Coordinator::new(
            vec![barrier_tx],
            1,
            ack_rx,
            completed_tx,
            completed_rx.clone(),
            (trigger_tx.clone(), trigger_rx),
            Duration::ZERO,
        );
        let stop = CancellationToken::new();
        let live = MetricsRegistry::new();
        let task = tokio::spawn(coordinator.run(stop.clone(), live.clone()));
        trigger_tx.send(()).await.unwrap();
        let first = barriers.recv().await.unwrap();
        assert_eq!(first.checkpoint_id, 1);
        // Requested while checkpoint 1 is in flight: not lost.
        trigger_tx.send(()).await.unwrap();
        tokio::task::yield_now().await;
        assert!(barriers.try_recv().is_err(), "one checkpoint at a time");
        ack_tx.send((0, 1)).await.unwrap();
        let second = barriers.recv().await.unwrap();
        assert_eq!(second.checkpoint_id, 2);
        assert_eq!(handle.completed(), 1);
        ack_tx.send((0, 2)).await.unwrap();
        let mut completed = completed_rx;
        completed.wait_for(|&id| id == 2).await.unwrap();
        stop.cancel();
        let stats = task.await.unwrap();
        assert_eq!((stats.started, stats.completed), (2, 2));
        assert_eq!(live.checkpoints.completed.load(Ordering::Relaxed), 2);
    }
}
