//! What every alert notifier (`webhook`, `slack`, `email`) shares: a sink that renders each
//! alert state change once, keeps it in a durable queue on disk (see [`queue`]) before
//! accepting it, and a background task that delivers the queue in order through a
//! [`Transport`], retrying transient failures with exponential backoff and jitter and giving up
//! on permanent ones (logged and counted). A receiver that is down for minutes, or a pipeline
//! restart, loses nothing.

pub mod queue;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::backoff::Backoff;
use engine::component::{ComponentError, ComponentResult, Sink};
use engine::metrics::ComponentMetrics;
use engine::schema::alert::{batch_to_notifications, AlertNotification};
use engine::time::ConfigDuration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use queue::{DurableQueue, Entry};

/// What a delivery attempt came to.
#[derive(Debug)]
pub enum Outcome {
    Delivered,
    /// The receiver refused it for good (e.g. an HTTP 4xx, an SMTP 5xx).
    Rejected(String),
    /// Worth trying again (e.g. an HTTP 5xx, an SMTP 4xx, a timeout, a refused connection).
    Retry(String),
}

/// How one kind of receiver gets a notification.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// What the queue stores for `notification`: the exact payload to deliver, rendered once
    /// so every retry sends the same bytes.
    fn render(&self, notification: &AlertNotification) -> String;
    /// One delivery attempt of a queued entry.
    async fn attempt(&self, entry: &Entry) -> Outcome;
}

/// The queue and retry settings every notifier has.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Where the durable queue lives.
    pub dir: PathBuf,
    /// Undelivered notifications kept; beyond it the oldest is dropped and counted.
    pub capacity: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Also send `pending` changes and the `resolved` of alerts that never fired.
    pub send_pending: bool,
    /// On shutdown, how long to keep delivering before leaving the rest queued on disk.
    pub drain_timeout: Duration,
}

pub(crate) fn default_queue_capacity() -> usize {
    10_000
}
pub(crate) fn default_retry_initial() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
pub(crate) fn default_retry_max() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
pub(crate) fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

struct Shared {
    queue: Mutex<Option<DurableQueue>>,
    wake: Notify,
    metrics: Arc<ComponentMetrics>,
}

/// A sink that delivers alert notifications through `T`.
pub struct NotifySink<T: Transport> {
    settings: QueueSettings,
    receiver: String,
    transport: Arc<T>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    worker: Option<JoinHandle<()>>,
}

impl<T: Transport> NotifySink<T> {
    /// A sink named `receiver` (the sink's id, used in logs) delivering through `transport`.
    pub fn with_transport(
        transport: T,
        settings: QueueSettings,
        receiver: &str,
        metrics: Arc<ComponentMetrics>,
    ) -> Self {
        Self {
            settings,
            receiver: receiver.to_string(),
            transport: Arc::new(transport),
            shared: Arc::new(Shared {
                queue: Mutex::new(None),
                wake: Notify::new(),
                metrics,
            }),
            stop: CancellationToken::new(),
            worker: None,
        }
    }

    /// Opens the queue and starts delivering (once, on first use, inside the runtime).
    fn start(&mut self) -> ComponentResult {
        if self.worker.is_some() {
            return Ok(());
        }
        let queue = DurableQueue::open(&self.settings.dir, self.settings.capacity)
            .map_err(ComponentError::other)?;
        if !queue.is_empty() {
            tracing::info!(receiver = %self.receiver, queued = queue.len(), "delivering notifications queued before a restart");
        }
        self.shared
            .metrics
            .queue_depth
            .store(queue.len() as i64, Ordering::Relaxed);
        *self.lock_queue()? = Some(queue);
        let backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        self.worker = Some(tokio::spawn(deliver_forever(
            self.transport.clone(),
            self.shared.clone(),
            self.stop.clone(),
            backoff,
            self.receiver.clone(),
        )));
        Ok(())
    }

    fn lock_queue(&self) -> ComponentResult<std::sync::MutexGuard<'_, Option<DurableQueue>>> {
        self.shared
            .queue
            .lock()
            .map_err(|_| ComponentError::other("the notification queue lock was poisoned"))
    }

    fn wanted(&self, notification: &AlertNotification) -> bool {
        self.settings.send_pending || notification.is_news()
    }

    /// Undelivered notifications.
    pub fn queued(&self) -> usize {
        self.lock_queue()
            .ok()
            .and_then(|q| q.as_ref().map(DurableQueue::len))
            .unwrap_or(0)
    }
}

async fn deliver_forever<T: Transport>(
    transport: Arc<T>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut backoff: Backoff,
    receiver: String,
) {
    let retries = shared.metrics.named("retries");
    let rejected = shared.metrics.named("rejected");
    loop {
        let front = match shared.queue.lock() {
            Ok(queue) => queue.as_ref().and_then(|q| q.front().cloned()),
            Err(_) => return,
        };
        let Some(entry) = front else {
            tokio::select! {
                _ = shared.wake.notified() => continue,
                _ = stop.cancelled() => return,
            }
        };
        let outcome = tokio::select! {
            outcome = transport.attempt(&entry) => outcome,
            _ = stop.cancelled() => return,
        };
        // A receiver that answers, even with a refusal, is reachable.
        shared
            .metrics
            .set_connected(!matches!(outcome, Outcome::Retry(_)));
        match outcome {
            Outcome::Delivered | Outcome::Rejected(_) => {
                if let Outcome::Rejected(reason) = &outcome {
                    tracing::error!(%receiver, notification_id = %entry.notification_id, %reason, "the receiver rejected a notification; not retrying");
                    rejected.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.add_errors(1);
                } else {
                    shared.metrics.record_out(1);
                }
                backoff.reset();
                let Ok(mut queue) = shared.queue.lock() else {
                    return;
                };
                if let Some(queue) = queue.as_mut() {
                    if let Err(e) = queue.pop() {
                        tracing::error!(%receiver, error = %e, "could not mark a notification delivered; it may be sent again after a restart");
                    }
                    shared
                        .metrics
                        .queue_depth
                        .store(queue.len() as i64, Ordering::Relaxed);
                }
            }
            Outcome::Retry(reason) => {
                retries.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.next_delay();
                tracing::warn!(%receiver, notification_id = %entry.notification_id, %reason, retry_in = ?wait, "notification delivery failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[async_trait]
impl<T: Transport> Sink for NotifySink<T> {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        self.start()?;
        let notifications = batch_to_notifications(&batch)?;
        let items: Vec<(String, String, String)> = notifications
            .iter()
            .filter(|n| self.wanted(n))
            .map(|n| {
                (
                    n.notification_id.clone(),
                    n.alert_id.clone(),
                    self.transport.render(n),
                )
            })
            .collect();
        if items.is_empty() {
            return Ok(());
        }
        let dropped = {
            let mut guard = self.lock_queue()?;
            let queue = guard
                .as_mut()
                .ok_or_else(|| ComponentError::other("the notification queue is not open"))?;
            let pushed = queue.push(items).map_err(ComponentError::other)?;
            self.shared
                .metrics
                .queue_depth
                .store(queue.len() as i64, Ordering::Relaxed);
            pushed
        };
        if dropped.duplicates > 0 {
            tracing::info!(receiver = %self.receiver, duplicates = dropped.duplicates, "notifications already sent (replayed after a restore) were not queued again");
        }
        let dropped = dropped.dropped;
        for entry in &dropped {
            tracing::error!(receiver = %self.receiver, notification_id = %entry.notification_id, "notification queue full: dropped the oldest undelivered notification");
        }
        self.shared.metrics.add_dropped(dropped.len() as u64);
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn on_tick(&mut self) -> ComponentResult {
        // Deliver what an earlier run left queued even before any new alert arrives.
        self.start()
    }

    /// Notifications are durable once `write` returns (fsynced to the queue).
    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }

    async fn close(&mut self) -> ComponentResult {
        if self.worker.is_none() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        while self.queued() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.queued();
        if left > 0 {
            tracing::warn!(receiver = %self.receiver, queued = left, dir = %self.settings.dir.display(), "shutting down with undelivered notifications; they are kept on disk and sent after the next start");
        }
        self.stop.cancel();
        if let Some(worker) = self.worker.take() {
            let _ = worker.await;
        }
        Ok(())
    }
}

impl<T: Transport> Drop for NotifySink<T> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
