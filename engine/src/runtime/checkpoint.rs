//! The checkpoint coordinator: injects a barrier into every source at the configured interval
//! (or when triggered), collects every participant's report — each operator's state snapshot,
//! each stateful source's state, each sink's acknowledgement that what came before the barrier
//! is durable — writes the states and then the manifest to the checkpoint store (when the
//! pipeline has one), and then publishes the checkpoint as complete: sources may acknowledge
//! what came before it upstream and sinks publish what they staged for it. One checkpoint is
//! in flight at a time. A participant whose task has ended no longer takes part.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::message::Barrier;
use crate::metrics::MetricsRegistry;
use crate::state::{CheckpointStore, ComponentState, Manifest, FORMAT_VERSION};
use crate::time::now_micros;

/// Counters of the coordinator, reported when the run ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointStats {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub last_duration: Option<Duration>,
    /// The checkpoint restored at start (0: none).
    pub restored: u64,
}

/// Lets a caller trigger a checkpoint and wait for its completion.
#[derive(Clone)]
pub struct CheckpointHandle {
    trigger: mpsc::Sender<()>,
    completed: watch::Receiver<u64>,
    /// True once the run has restored its checkpoint and started its components.
    started: watch::Receiver<bool>,
}

impl CheckpointHandle {
    pub(crate) fn new(
        trigger: mpsc::Sender<()>,
        completed: watch::Receiver<u64>,
        started: watch::Receiver<bool>,
    ) -> Self {
        Self {
            trigger,
            completed,
            started,
        }
    }

    /// Starts a checkpoint (unless one is in flight) and waits until a checkpoint newer than
    /// the last completed one completes. `None` if the pipeline stopped first.
    pub async fn checkpoint(&mut self) -> Option<u64> {
        // Until the run has restored, `completed` may still move to the restored checkpoint.
        self.started.wait_for(|&started| started).await.ok()?;
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

    /// The newest completed checkpoint id (the restored one, or 0, before the first).
    pub fn completed(&self) -> u64 {
        *self.completed.borrow()
    }
}

/// What a participant tells the coordinator.
#[derive(Debug)]
pub(crate) enum Report {
    /// Done with checkpoint `id`, with its state (operators, stateful sources) if any.
    Done {
        participant: usize,
        id: u64,
        state: Option<Vec<u8>>,
    },
    /// Its task ended: it will not take part in any further checkpoint.
    Left { participant: usize },
}

/// A participant's line to the coordinator.
#[derive(Debug, Clone)]
pub struct Reporter {
    participant: usize,
    reports: mpsc::UnboundedSender<Report>,
}

impl Reporter {
    pub(crate) fn new(participant: usize, reports: mpsc::UnboundedSender<Report>) -> Self {
        Self {
            participant,
            reports,
        }
    }

    pub(crate) async fn state(&self, id: u64, state: Option<Vec<u8>>) {
        // The coordinator is gone only when the run is over.
        let _ = self.reports.send(Report::Done {
            participant: self.participant,
            id,
            state,
        });
    }

    pub(crate) fn left(&self) {
        let _ = self.reports.send(Report::Left {
            participant: self.participant,
        });
    }
}

/// Who takes part in checkpoints, and what identifies their state.
#[derive(Debug, Clone)]
pub(crate) struct Participant {
    pub id: String,
    pub type_name: String,
    pub fingerprint: String,
    /// Operators and stateful sources: once one has stopped, no checkpoint can hold the
    /// pipeline's whole state any more.
    pub stateful: bool,
}

/// Where states go, and the id to number new checkpoints from.
pub(crate) struct Persistence {
    pub store: Option<Arc<CheckpointStore>>,
    pub pipeline: String,
    pub first_id: u64,
}

pub(crate) struct Coordinator {
    sources: Vec<mpsc::Sender<Barrier>>,
    participants: Vec<Participant>,
    reports: mpsc::UnboundedReceiver<Report>,
    completed: watch::Sender<u64>,
    trigger: mpsc::Receiver<()>,
    interval: Duration,
    persistence: Persistence,
}

struct InFlight {
    barrier: Barrier,
    started: Instant,
    done: HashSet<usize>,
    states: Vec<ComponentState>,
    state_bytes: u64,
    failed: bool,
    /// Abandoned for a reason that is not an error (a component stopped): not counted.
    quiet: bool,
}

impl Coordinator {
    pub(crate) fn new(
        sources: Vec<mpsc::Sender<Barrier>>,
        participants: Vec<Participant>,
        reports: mpsc::UnboundedReceiver<Report>,
        completed: watch::Sender<u64>,
        trigger: mpsc::Receiver<()>,
        interval: Duration,
        persistence: Persistence,
    ) -> Self {
        Self {
            sources,
            participants,
            reports,
            completed,
            trigger,
            interval,
            persistence,
        }
    }

    /// Runs until `stop`; `live` mirrors the stats as they change.
    pub(crate) async fn run(
        mut self,
        stop: CancellationToken,
        live: Arc<MetricsRegistry>,
    ) -> CheckpointStats {
        let mut stats = CheckpointStats {
            restored: *self.completed.borrow(),
            ..CheckpointStats::default()
        };
        let mut next_id = self.persistence.first_id.max(1);
        let mut in_flight: Option<InFlight> = None;
        let mut left: HashSet<usize> = HashSet::new();
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
                Some(report) = self.reports.recv() => {
                    match report {
                        Report::Done { participant, id, state } => {
                            if let Some(flight) = in_flight.as_mut().filter(|f| f.barrier.checkpoint_id == id) {
                                if let Some(state) = state {
                                    self.save_state(flight, participant, &state).await;
                                }
                                flight.done.insert(participant);
                            }
                        }
                        Report::Left { participant } => {
                            left.insert(participant);
                        }
                    }
                    let finished = in_flight.as_ref().is_some_and(|flight| {
                        (0..self.participants.len()).all(|p| flight.done.contains(&p) || left.contains(&p))
                    });
                    if finished {
                        if let Some(mut flight) = in_flight.take() {
                            self.check_whole(&mut flight, &left);
                            self.finish(flight, &mut stats, &live).await;
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
            let flight = InFlight {
                barrier,
                started: Instant::now(),
                done: HashSet::new(),
                states: Vec::new(),
                state_bytes: 0,
                failed: false,
                quiet: false,
            };
            if (0..self.participants.len()).all(|p| left.contains(&p)) {
                let mut flight = flight;
                self.check_whole(&mut flight, &left);
                self.finish(flight, &mut stats, &live).await;
                continue;
            }
            in_flight = Some(flight);
        }
    }

    /// With a store, a checkpoint taken after an operator or stateful source stopped (its
    /// input ended, or the pipeline is shutting down) would lack that component's state and
    /// must not replace the previous checkpoint: it is abandoned.
    fn check_whole(&self, flight: &mut InFlight, left: &HashSet<usize>) {
        if self.persistence.store.is_none() || flight.failed {
            return;
        }
        if let Some(stopped) = self
            .participants
            .iter()
            .enumerate()
            .find(|(p, info)| info.stateful && left.contains(p) && !flight.done.contains(p))
        {
            tracing::debug!(pipeline = %self.persistence.pipeline, checkpoint = flight.barrier.checkpoint_id, component = %stopped.1.id, "checkpoint abandoned: a stateful component has stopped");
            flight.failed = true;
            flight.quiet = true;
        }
    }

    async fn save_state(&self, flight: &mut InFlight, participant: usize, state: &[u8]) {
        let Some(store) = &self.persistence.store else {
            return;
        };
        let Some(info) = self.participants.get(participant) else {
            return;
        };
        let id = flight.barrier.checkpoint_id;
        match store
            .put_state(id, &info.id, &info.type_name, &info.fingerprint, state)
            .await
        {
            Ok(saved) => {
                flight.state_bytes += saved.bytes;
                flight.states.push(saved);
            }
            Err(error) => {
                tracing::error!(pipeline = %self.persistence.pipeline, checkpoint = id, component = %info.id, %error, "cannot save state; this checkpoint will not complete");
                flight.failed = true;
            }
        }
    }

    /// Every participant reported: write the manifest and publish the checkpoint.
    async fn finish(
        &self,
        mut flight: InFlight,
        stats: &mut CheckpointStats,
        live: &MetricsRegistry,
    ) {
        let id = flight.barrier.checkpoint_id;
        let pipeline = &self.persistence.pipeline;
        if !flight.failed {
            if let Some(store) = &self.persistence.store {
                flight.states.sort_by(|a, b| a.id.cmp(&b.id));
                let manifest = Manifest {
                    format_version: FORMAT_VERSION,
                    pipeline: pipeline.clone(),
                    checkpoint_id: id,
                    completed_at_micros: now_micros(),
                    components: flight.states,
                };
                if let Err(error) = store.put_manifest(&manifest).await {
                    tracing::error!(%pipeline, checkpoint = id, %error, "cannot write the checkpoint manifest; this checkpoint does not complete");
                    flight.failed = true;
                }
            }
        }
        if flight.failed {
            if !flight.quiet {
                stats.failed += 1;
                live.checkpoints.failed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let duration = flight.started.elapsed();
        stats.completed += 1;
        stats.last_duration = Some(duration);
        live.checkpoints.completed.fetch_add(1, Ordering::Relaxed);
        live.checkpoints.last_duration_micros.store(
            duration.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        live.checkpoints
            .last_state_bytes
            .store(flight.state_bytes, Ordering::Relaxed);
        tracing::debug!(%pipeline, checkpoint = id, ?duration, state_bytes = flight.state_bytes, "checkpoint complete");
        let _ = self.completed.send(id);
        if let Some(store) = self.persistence.store.clone() {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                match store.clean(id).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(%pipeline, removed, "old checkpoints deleted"),
                    Err(error) => {
                        tracing::warn!(%pipeline, %error, "cannot delete old checkpoints")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(id: &str) -> Participant {
        Participant {
            id: id.into(),
            type_name: "test".into(),
            fingerprint: "f".into(),
            stateful: !id.contains("sink"),
        }
    }

    #[tokio::test]
    async fn a_request_during_a_checkpoint_starts_another_when_it_completes() {
        let (barrier_tx, mut barriers) = mpsc::channel(4);
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let (completed_tx, completed_rx) = watch::channel(0);
        let (trigger_tx, trigger_rx) = mpsc::channel(1);
        let handle = CheckpointHandle::new(
            trigger_tx.clone(),
            completed_rx.clone(),
            watch::channel(true).1,
        );
        let coordinator = Coordinator::new(
            vec![barrier_tx],
            vec![participant("sink")],
            report_rx,
            completed_tx,
            trigger_rx,
            Duration::ZERO,
            Persistence {
                store: None,
                pipeline: "p".into(),
                first_id: 1,
            },
        );
        let stop = CancellationToken::new();
        let live = MetricsRegistry::new();
        let task = tokio::spawn(coordinator.run(stop.clone(), live.clone()));
        let sink = Reporter::new(0, report_tx);
        trigger_tx.send(()).await.unwrap();
        let first = barriers.recv().await.unwrap();
        assert_eq!(first.checkpoint_id, 1);
        // Requested while checkpoint 1 is in flight: not lost.
        trigger_tx.send(()).await.unwrap();
        tokio::task::yield_now().await;
        assert!(barriers.try_recv().is_err(), "one checkpoint at a time");
        sink.state(1, None).await;
        let second = barriers.recv().await.unwrap();
        assert_eq!(second.checkpoint_id, 2);
        assert_eq!(handle.completed(), 1);
        sink.state(2, None).await;
        let mut completed = completed_rx;
        completed.wait_for(|&id| id == 2).await.unwrap();
        stop.cancel();
        let stats = task.await.unwrap();
        assert_eq!((stats.started, stats.completed), (2, 2));
        assert_eq!(live.checkpoints.completed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn states_are_saved_with_a_manifest_and_a_participant_that_left_is_not_awaited() {
        let dir = std::env::temp_dir().join(format!("coordinator-{}", uuid_like()));
        let store = Arc::new(CheckpointStore::open(dir.to_str().unwrap(), "p", 2).unwrap());
        let (barrier_tx, mut barriers) = mpsc::channel(4);
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let (completed_tx, completed_rx) = watch::channel(0);
        let (trigger_tx, trigger_rx) = mpsc::channel(1);
        let trigger_tx2 = trigger_tx.clone();
        let completed_rx2 = completed_rx.clone();
        let mut handle = CheckpointHandle::new(trigger_tx, completed_rx, watch::channel(true).1);
        let coordinator = Coordinator::new(
            vec![barrier_tx],
            vec![
                participant("window"),
                participant("gone_sink"),
                participant("sink"),
            ],
            report_rx,
            completed_tx,
            trigger_rx,
            Duration::ZERO,
            Persistence {
                store: Some(store.clone()),
                pipeline: "p".into(),
                first_id: 7,
            },
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(coordinator.run(stop.clone(), MetricsRegistry::new()));
        let window = Reporter::new(0, report_tx.clone());
        let gone_sink = Reporter::new(1, report_tx.clone());
        let sink = Reporter::new(2, report_tx);
        gone_sink.left();
        let waiter = tokio::spawn(async move { handle.checkpoint().await });
        let barrier = barriers.recv().await.unwrap();
        assert_eq!(
            barrier.checkpoint_id, 7,
            "numbered after the restored checkpoints"
        );
        window.state(7, Some(b"open windows".to_vec())).await;
        sink.state(7, None).await;
        assert_eq!(waiter.await.unwrap(), Some(7));
        let restored = store
            .newest()
            .await
            .unwrap()
            .expect("a complete checkpoint");
        assert_eq!(restored.manifest.checkpoint_id, 7);
        assert_eq!(
            restored.states,
            vec![("window".to_string(), b"open windows".to_vec())]
        );
        // The window stops (its input ended): checkpoint 8 cannot hold its state and is
        // abandoned, so 7 stays the one a restart restores.
        window.left();
        trigger_tx2.send(()).await.unwrap();
        let barrier = barriers.recv().await.unwrap();
        assert_eq!(barrier.checkpoint_id, 8);
        sink.state(8, None).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*completed_rx2.borrow(), 7);
        let restored = store.newest().await.unwrap().expect("a checkpoint");
        assert_eq!(restored.manifest.checkpoint_id, 7);
        stop.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    fn uuid_like() -> String {
        format!("{}-{}", std::process::id(), now_micros())
    }
}
