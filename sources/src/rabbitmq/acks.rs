//! Which deliveries may be acknowledged when. The source notes the newest delivery tag it had
//! passed downstream when each checkpoint barrier went out; when that checkpoint completes
//! (every sink made everything before the barrier durable) one `basic.ack` with
//! `multiple = true` acknowledges all of them. Delivery tags belong to one channel: after a
//! reconnect the old marks are void (the broker redelivers those messages).

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    checkpoint: u64,
    tag: u64,
    delivered: u64,
}

/// Delivery bookkeeping of one consumer channel.
#[derive(Debug, Default)]
pub struct AckTracker {
    last_tag: Option<u64>,
    delivered: u64,
    acked: u64,
    marks: VecDeque<Mark>,
}

/// An acknowledgement to send: every delivery up to `tag`, `count` of them newly acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub tag: u64,
    pub count: u64,
}

impl AckTracker {
    /// A new channel: forget everything about the previous one.
    pub fn reset(&mut self) {
        *self = Self::default();
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
