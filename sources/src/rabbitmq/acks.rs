//! Which deliveries may be acknowledged when. The source notes the newest delivery tag it had
//! passed downstream when each checkpoint barrier went out; when that checkpoint completes
//! (every sink made everything before the barrier durable) one `basic.ack` with
//! `multiple = true` acknowledges all of them. Delivery tags belong to one channel: after a
//! reconnect the old marks are void (the broker redelivers those messages).

use std::collections::{HashSet, VecDeque};

/// The message ids a checkpoint covers, so that a message redelivered after a restore (or a
/// reconnect) that the restored state already counts is recognised and skipped. A checkpoint
/// keeps the ids of every delivery taken and not yet acknowledged, plus those acknowledged by
/// the newest ack (an ack in flight when the process died may not have reached the broker).
/// Messages without a `message_id` cannot be recognised; they are processed again.
///
/// It also remembers the ids of the last [`RECENT_IDS`] deliveries, so a message *published*
/// twice — a producer retrying a publish whose confirm was lost when the broker restarted, as
/// the `rabbitmq` sink does, keeping the id — is counted once when its copies arrive that close
/// together (in memory only: after a restart the checkpoint's ids do this).
#[derive(Debug, Default)]
pub struct Covered {
    /// (delivery tag, message id) of deliveries taken and not yet acknowledged.
    unacked: VecDeque<(u64, Option<String>)>,
    last_acked: Vec<String>,
    /// Ids already counted: skip (and acknowledge) them when they come again.
    skip: HashSet<String>,
    /// The ids of the latest deliveries taken, oldest first, and the same as a set.
    recent_order: VecDeque<String>,
    recent: HashSet<String>,
}

/// Deliveries whose ids are remembered to recognise a message published twice.
pub const RECENT_IDS: usize = 16_384;

/// What the source keeps in a checkpoint.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceState {
    pub covered_ids: Vec<String>,
}

impl Covered {
    /// The restored checkpoint's ids.
    pub fn restore(&mut self, state: SourceState) {
        self.skip.extend(state.covered_ids);
    }

    /// Whether a delivery was already counted; if so it is skipped once.
    pub fn already_counted(&mut self, message_id: Option<&str>) -> bool {
        message_id.is_some_and(|id| self.skip.remove(id) || self.recent.contains(id))
    }

    pub fn taken(&mut self, tag: u64, message_id: Option<String>) {
        if let Some(id) = &message_id {
            if self.recent.insert(id.clone()) {
                self.recent_order.push_back(id.clone());
                if self.recent_order.len() > RECENT_IDS {
                    if let Some(oldest) = self.recent_order.pop_front() {
                        self.recent.remove(&oldest);
                    }
                }
            }
        }
        self.unacked.push_back((tag, message_id));
    }

    pub fn acked_up_to(&mut self, tag: u64) {
        // Requeued messages return to the head of the queue, ahead of anything taken since:
        // once a later delivery is acknowledged, no skipped id can come again.
        self.skip.clear();
        self.last_acked.clear();
        while let Some((front, _)) = self.unacked.front() {
            if *front > tag {
                break;
            }
            if let Some((_, Some(id))) = self.unacked.pop_front() {
                self.last_acked.push(id);
            }
        }
    }

    /// The channel was lost: what it delivered and was not acknowledged will come again, and
    /// is already counted downstream.
    pub fn reconnected(&mut self) {
        for (_, id) in self.unacked.drain(..) {
            if let Some(id) = id {
                self.skip.insert(id);
            }
        }
    }

    /// The ids to keep in a checkpoint taken now.
    pub fn snapshot(&self) -> SourceState {
        let mut covered_ids: Vec<String> = self
            .unacked
            .iter()
            .filter_map(|(_, id)| id.clone())
            .chain(self.last_acked.iter().cloned())
            .collect();
        // Skipped-but-not-yet-redelivered ids stay covered too.
        covered_ids.extend(self.skip.iter().cloned());
        covered_ids.sort_unstable();
        covered_ids.dedup();
        SourceState { covered_ids }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    checkpoint: u64,
    tag: u64,
    delivered: u64,
}

/// Delivery bookkeeping of one consumer channel, and the message ids checkpoints cover.
#[derive(Debug, Default)]
pub struct AckTracker {
    last_tag: Option<u64>,
    delivered: u64,
    acked: u64,
    marks: VecDeque<Mark>,
    pub covered: Covered,
}

/// An acknowledgement to send: every delivery up to `tag`, `count` of them newly acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub tag: u64,
    pub count: u64,
}

impl AckTracker {
    /// A new channel: forget the previous one's tags (its unacknowledged deliveries come
    /// again and are recognised by id).
    pub fn reset(&mut self) {
        let mut covered = std::mem::take(&mut self.covered);
        covered.reconnected();
        *self = Self {
            covered,
            ..Self::default()
        };
    }

    /// A delivery was taken (decoded and queued downstream, or dead-lettered).
    pub fn delivered(&mut self, tag: u64) {
        self.last_tag = Some(tag);
        self.delivered += 1;
    }

    /// Checkpoint `checkpoint`'s barrier went downstream after everything delivered so far.
    pub fn barrier(&mut self, checkpoint: u64) {
        let Some(tag) = self.last_tag else { return };
        if self.marks.back().is_some_and(|m| m.tag == tag) || self.delivered == self.acked {
            // Nothing new since the previous mark (or since the last ack).
            return;
        }
        self.marks.push_back(Mark {
            checkpoint,
            tag,
            delivered: self.delivered,
        });
    }

    /// Checkpoint `completed` (and every earlier one) is durable: what may be acknowledged.
    pub fn completed(&mut self, completed: u64) -> Option<Ack> {
        let mut newest = None;
        while let Some(mark) = self.marks.front().copied() {
            if mark.checkpoint > completed {
                break;
            }
            self.marks.pop_front();
            newest = Some(mark);
        }
        let mark = newest?;
        let count = mark.delivered - self.acked;
        self.acked = mark.delivered;
        self.covered.acked_up_to(mark.tag);
        Some(Ack {
            tag: mark.tag,
            count,
        })
    }

    /// Deliveries taken and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.delivered - self.acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_published_twice_is_counted_once_while_its_id_is_recent() {
        let mut covered = Covered::default();
        assert!(!covered.already_counted(Some("m1")));
        covered.taken(1, Some("m1".into()));
        covered.acked_up_to(1);
        // The producer's retry of m1 arrives as a new delivery after others.
        covered.taken(2, Some("m2".into()));
        assert!(covered.already_counted(Some("m1")));
        assert!(!covered.already_counted(Some("m3")));
        // Only the latest RECENT_IDS ids are remembered.
        for tag in 0..RECENT_IDS as u64 {
            covered.taken(10 + tag, Some(format!("x{tag}")));
        }
        assert!(!covered.already_counted(Some("m1")));
        assert!(covered.already_counted(Some(&format!("x{}", RECENT_IDS - 1))));
        assert_eq!(covered.recent.len(), RECENT_IDS);
    }

    #[test]
    fn a_checkpoint_covers_unacked_and_just_acked_ids_and_a_restore_skips_them_once() {
        let mut covered = Covered::default();
        covered.taken(1, Some("a".into()));
        covered.taken(2, Some("b".into()));
        covered.taken(3, None);
        covered.acked_up_to(2);
        covered.taken(4, Some("c".into()));
        let state = covered.snapshot();
        assert_eq!(state.covered_ids, vec!["a", "b", "c"]);
        let mut restored = Covered::default();
        restored.restore(state);
        assert!(restored.already_counted(Some("c")));
        assert!(!restored.already_counted(Some("c")), "once");
        assert!(!restored.already_counted(None));
        assert!(!restored.already_counted(Some("d")));
        // After a reconnect, what was taken and not acknowledged is skipped when redelivered.
        restored.taken(1, Some("d".into()));
        restored.reconnected();
        assert!(restored.already_counted(Some("d")));
        // Ids that never came again are forgotten once a later delivery is acknowledged.
        restored.restore(SourceState {
            covered_ids: vec!["e".into()],
        });
        restored.taken(2, Some("f".into()));
        restored.acked_up_to(2);
        assert_eq!(restored.snapshot().covered_ids, vec!["f"]);
    }

    #[test]
    fn a_completed_checkpoint_acks_everything_before_its_barrier() {
        let mut acks = AckTracker::default();
        for tag in 1..=5 {
            acks.delivered(tag);
        }
        acks.barrier(1);
        acks.delivered(6);
        acks.delivered(7);
        acks.barrier(2);
        acks.delivered(8);
        assert_eq!(acks.unacked(), 8);
        assert_eq!(acks.completed(1), Some(Ack { tag: 5, count: 5 }));
        assert_eq!(acks.unacked(), 3);
        assert_eq!(acks.completed(1), None);
        assert_eq!(acks.completed(2), Some(Ack { tag: 7, count: 2 }));
        assert_eq!(acks.unacked(), 1);
    }

    #[test]
    fn completing_a_later_checkpoint_covers_the_earlier_ones() {
        let mut acks = AckTracker::default();
        acks.delivered(1);
        acks.barrier(1);
        acks.delivered(2);
        acks.barrier(2);
        assert_eq!(acks.completed(2), Some(Ack { tag: 2, count: 2 }));
        assert_eq!(acks.unacked(), 0);
    }

    #[test]
    fn barriers_without_new_deliveries_add_no_acks_and_a_reset_voids_marks() {
        let mut acks = AckTracker::default();
        acks.barrier(1);
        assert_eq!(acks.completed(1), None);
        acks.delivered(1);
        acks.barrier(2);
        acks.barrier(3);
        assert_eq!(acks.completed(2), Some(Ack { tag: 1, count: 1 }));
        assert_eq!(acks.completed(3), None);
        acks.barrier(4);
        assert_eq!(acks.completed(4), None, "tag 1 is acknowledged already");
        acks.delivered(2);
        acks.barrier(5);
        acks.reset();
        assert_eq!(acks.completed(5), None);
        assert_eq!(acks.unacked(), 0);
    }
}
