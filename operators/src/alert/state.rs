//! One alert's state machine, with Prometheus's semantics in event time: a condition that
//! holds makes the alert pending, and firing once it has held for `for`; a firing alert whose
//! condition stops holding keeps firing for `keep_firing_for` (which absorbs flapping), then
//! resolves. Each change is reported once; evaluations older than the last one are ignored.

use engine::schema::alert::AlertState;
use serde::{Deserialize, Serialize};

/// A rule's timing, in µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub for_micros: i64,
    pub keep_firing_for_micros: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Inactive,
    Pending,
    Firing,
}

/// One alert (a rule for one key). Serialisable for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    pub phase: Phase,
    /// When the condition began to hold (this episode).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub last_true_at: i64,
    pub last_evaluated: i64,
    pub value: Option<f64>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            phase: Phase::Inactive,
            active_at: 0,
            fired_at: None,
            last_true_at: i64::MIN,
            last_evaluated: i64::MIN,
            value: None,
        }
    }
}

/// A reported change: the new state and the episode's times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub state: AlertState,
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub value: Option<f64>,
}

impl Tracker {
    pub fn is_active(&self) -> bool {
        self.phase != Phase::Inactive
    }

    /// Evaluates the rule at event time `at`: `holds` is whether its condition is true, and
    /// `value` what it measured. Returns the change to report, if any.
    pub fn evaluate(
        &mut self,
        timing: Timing,
        holds: bool,
        at: i64,
        value: Option<f64>,
    ) -> Option<Change> {
        if at < self.last_evaluated {
            return None;
        }
        self.last_evaluated = at;
        if holds {
            self.value = value.or(self.value);
            self.last_true_at = at;
            match self.phase {
                Phase::Inactive => {
                    self.active_at = at;
                    self.fired_at = None;
                    if timing.for_micros <= 0 {
                        self.fire(at)
                    } else {
                        self.phase = Phase::Pending;
                        Some(self.change(AlertState::Pending, None))
                    }
                }
                Phase::Pending if at.saturating_sub(self.active_at) >= timing.for_micros => {
                    self.fire(at)
                }
                Phase::Pending | Phase::Firing => None,
            }
        } else {
            match self.phase {
                Phase::Inactive => None,
                // A pending alert that clears never fired: reported as resolved without a
                // `fired_at`, so live views drop it and notifiers can ignore it.
                Phase::Pending => self.resolve(at, value),
                Phase::Firing
                    if at.saturating_sub(self.last_true_at) < timing.keep_firing_for_micros =>
                {
                    None
                }
                Phase::Firing => self.resolve(at, value),
            }
        }
    }

    fn fire(&mut self, at: i64) -> Option<Change> {
        self.phase = Phase::Firing;
        self.fired_at = Some(at);
        Some(self.change(AlertState::Firing, None))
    }

    /// The alert clears at `at`; its value becomes the one that cleared it (what a resolved
    /// notification quotes), not the last one that held.
    fn resolve(&mut self, at: i64, value: Option<f64>) -> Option<Change> {
        self.phase = Phase::Inactive;
        self.value = value;
        Some(self.change(AlertState::Resolved, Some(at)))
    }

    fn change(&self, state: AlertState, resolved_at: Option<i64>) -> Change {
        Change {
            state,
            active_at: self.active_at,
            fired_at: self.fired_at,
            resolved_at,
            value: self.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    fn run(timing: Timing, conditions: &[bool]) -> Vec<(usize, AlertState)> {
        let mut tracker = Tracker::default();
        conditions
            .iter()
            .enumerate()
            .filter_map(|(minute, &holds)| {
                tracker
                    .evaluate(timing, holds, minute as i64 * MINUTE, Some(minute as f64))
                    .map(|change| (minute, change.state))
            })
            .collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let timing = Timing {
            for_micros: 2 * MINUTE,
            keep_firing_for_micros: 0,
        };
        let changes = run(timing, &[false, true, true, true, true, false, false]);
        assert_eq!(
            changes,
            vec![
                (1, AlertState::Pending),
                (3, AlertState::Firing),
                (5, AlertState::Resolved)
            ]
        );
    }

    #[test]
    fn a_pending_alert_that_clears_never_fires() {
        let timing = Timing {
            for_micros: 5 * MINUTE,
            keep_firing_for_micros: 0,
        };
        let mut tracker = Tracker::default();
        assert_eq!(
            tracker.evaluate(timing, true, 0, None).map(|c| c.state),
            Some(AlertState::Pending)
        );
        let cleared = tracker
            .evaluate(timing, false, MINUTE, None)
            .expect("a change");
        assert_eq!(cleared.state, AlertState::Resolved);
        assert_eq!(cleared.fired_at, None);
        // The next episode starts afresh.
        let again = tracker
            .evaluate(timing, true, 2 * MINUTE, None)
            .expect("a change");
        assert_eq!(
            (again.state, again.active_at),
            (AlertState::Pending, 2 * MINUTE)
        );
    }

    #[test]
    fn without_for_it_fires_at_once() {
        let changes = run(Timing::default(), &[true, true, false]);
        assert_eq!(
            changes,
            vec![(0, AlertState::Firing), (2, AlertState::Resolved)]
        );
    }

    #[test]
    fn keep_firing_for_absorbs_flapping() {
        let timing = Timing {
            for_micros: 0,
            keep_firing_for_micros: 3 * MINUTE,
        };
        // The condition flaps every minute, then stops for good at minute 8.
        let flapping = [
            true, false, true, false, true, false, true, false, false, false, false, false,
        ];
        let changes = run(timing, &flapping);
        // One firing, one resolved: 3 minutes after the last true (minute 6).
        assert_eq!(
            changes,
            vec![(0, AlertState::Firing), (9, AlertState::Resolved)]
        );
        // Without keep_firing_for every flap is a notification.
        let noisy = run(Timing::default(), &flapping);
        assert_eq!(noisy.len(), 8);
    }

    #[test]
    fn stale_evaluations_are_ignored_and_changes_carry_their_times() {
        let timing = Timing {
            for_micros: MINUTE,
            keep_firing_for_micros: 0,
        };
        let mut tracker = Tracker::default();
        tracker.evaluate(timing, true, 10 * MINUTE, Some(1.0));
        assert_eq!(tracker.evaluate(timing, false, 5 * MINUTE, None), None);
        let firing = tracker
            .evaluate(timing, true, 11 * MINUTE, Some(2.0))
            .expect("fires");
        assert_eq!(firing.state, AlertState::Firing);
        assert_eq!(
            (firing.active_at, firing.fired_at, firing.value),
            (10 * MINUTE, Some(11 * MINUTE), Some(2.0))
        );
        let resolved = tracker
            .evaluate(timing, false, 12 * MINUTE, None)
            .expect("resolves");
        assert_eq!(
            (resolved.active_at, resolved.fired_at, resolved.resolved_at),
            (10 * MINUTE, Some(11 * MINUTE), Some(12 * MINUTE))
        );
        let restored: Tracker =
            serde_json::from_str(&serde_json::to_string(&tracker).expect("serialises"))
                .expect("restores");
        assert_eq!(restored, tracker);
    }
}
