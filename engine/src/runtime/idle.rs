//! Which sources are idle — have nothing to deliver — as opposed to held back. Event time may
//! advance by the wall clock only past an idle input (Flink's idleness, not a timeout on
//! silence): a source blocked by backpressure, waiting on a lost connection, or with messages
//! still waiting on its broker is not idle, however long it has sent nothing.
//!
//! Each source's output tracks when it last sent data and whether a send is in progress (held
//! by backpressure); the source itself says when it has work it cannot deliver yet
//! ([`Activity::set_busy`]). A watcher per source sends [`Message::Idle`] downstream, in band,
//! once the source has sent nothing for `idle_timeout` while neither sending nor busy; the next
//! data clears it at the receiver.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::WeakSender;

use crate::message::Message;

/// What a source's output knows of its activity.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// µs since `epoch` of the last data sent (or of the start).
    last_data: AtomicU64,
    sending: AtomicBool,
    busy: AtomicBool,
    /// An idle marker went out since the last data.
    announced: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_data: AtomicU64::new(0),
            sending: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            announced: AtomicBool::new(false),
        }
    }
}

/// Marks a send in progress until dropped; then records it as the last data sent.
pub(crate) struct Sending<'a>(&'a Activity);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.sending.store(false, Ordering::Release);
    }
}

impl Activity {
    /// The source has work it cannot deliver yet (messages waiting on its broker, a lost
    /// connection, unacknowledged deliveries filling its window): it is not idle.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
        if busy {
            self.touch();
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.last_data.store(now, Ordering::Release);
        self.announced.store(false, Ordering::Release);
    }

    pub(crate) fn sending(&self) -> Sending<'_> {
        self.sending.store(true, Ordering::Release);
        self.touch();
        Sending(self)
    }

    /// Whether the source is idle now (and not yet announced as idle).
    fn due(&self, idle_timeout: Duration) -> bool {
        if self.sending.load(Ordering::Acquire)
            || self.busy.load(Ordering::Acquire)
            || self.announced.load(Ordering::Acquire)
        {
            return false;
        }
        let last = Duration::from_micros(self.last_data.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last) >= idle_timeout
    }
}

/// Sends an idle marker on `edges` whenever the source of `activity` becomes idle, until every
/// edge's channel has closed (the source has finished). A full channel takes no marker: its
/// receiver has not caught up with the data, so it is not starved.
pub(crate) async fn watch(
    activity: Arc<Activity>,
    edges: Vec<WeakSender<Message>>,
    idle_timeout: Duration,
) {
    let mut ticks = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let senders: Vec<_> = edges.iter().filter_map(WeakSender::upgrade).collect();
        if senders.is_empty() {
            return;
        }
        if !activity.due(idle_timeout) {
            continue;
        }
        activity.announced.store(true, Ordering::Release);
        for sender in senders {
            let _ = sender.try_send(Message::Idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_idle_only_when_it_neither_sends_nor_is_busy() {
        let activity = Arc::new(Activity::default());
        assert!(
            !activity.due(Duration::from_secs(3600)),
            "not yet silent that long"
        );
        let sending = activity.sending();
        assert!(
            !activity.due(Duration::ZERO),
            "a send in progress is not idle"
        );
        drop(sending);
        assert!(activity.due(Duration::ZERO));
        activity.set_busy(true);
        assert!(!activity.due(Duration::ZERO), "busy is not idle");
        activity.set_busy(false);
        assert!(activity.due(Duration::ZERO));
        activity.announced.store(true, Ordering::Release);
        assert!(
            !activity.due(Duration::ZERO),
            "announced once per idle spell"
        );
    }

    #[tokio::test]
    async fn the_watcher_announces_idleness_once_and_ends_with_the_source() {
        let activity = Arc::new(Activity::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let watcher = tokio::spawn(watch(
            activity.clone(),
            vec![tx.downgrade()],
            Duration::from_millis(50),
        ));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an idle marker");
        assert!(matches!(first, Some(Message::Idle)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "one marker per idle spell");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watcher ends when the source's channels close")
            .unwrap();
    }
}
