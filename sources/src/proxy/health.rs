//! What the proxy's admin endpoint says about itself: whether the upstream answers (learnt from
//! the calls it forwards, or from a bounded connection probe when none came lately) and whether
//! events reach the pipeline (queue full, events being dropped, the pipeline gone). Recording
//! costs the data path one relaxed atomic store per call; the probe runs only when readiness is
//! asked for (liveness never touches the network).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use engine::schema::api_call::{ApiCall, Outcome};
use serde_json::{json, Value};

use super::upstream::Upstream;

/// How recent a call's outcome must be to speak for the upstream without a probe.
pub const FRESH: Duration = Duration::from_secs(10);
/// The longest a health probe waits for the upstream (load balancers time out at 1–2 s).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a probe's answer is reused, so frequent health checks do not become a connection
/// storm against an idle upstream.
const PROBE_REUSE: Duration = Duration::from_secs(5);

/// Never (for the timestamps below, µs since the epoch).
const NEVER: i64 = i64::MIN;

/// The latest evidence about the upstream and the event path.
pub struct Health {
    /// Event time (µs) of the newest call the upstream answered (any status, or a timeout:
    /// it accepted the connection).
    last_answer: AtomicI64,
    /// Event time (µs) of the newest call that could not reach it, and why.
    last_unreachable: AtomicI64,
    unreachable_error: Mutex<String>,
    /// When (µs) the newest probe ran, and what it found.
    last_probe: Mutex<Option<(i64, Reachability)>>,
    /// When (µs) events were last dropped because the queue was full.
    last_drop: AtomicI64,
    /// Every downstream component has stopped: events are counted and dropped.
    downstream_stopped: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            last_answer: AtomicI64::new(NEVER),
            last_unreachable: AtomicI64::new(NEVER),
            unreachable_error: Mutex::new(String::new()),
            last_probe: Mutex::new(None),
            last_drop: AtomicI64::new(NEVER),
            downstream_stopped: AtomicBool::new(false),
        }
    }
}

/// What is known of the upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Reachability {
    Reachable {
        seconds_ago: f64,
        from: Evidence,
    },
    Unreachable {
        error: String,
        from: Evidence,
    },
    /// No call lately and no probe asked for.
    Unknown,
}

/// Where the upstream's state was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The calls forwarded in the last [`FRESH`] seconds.
    Calls,
    /// A connection the health check opened (TCP, and the TLS handshake for `https://`).
    Probe,
}

impl Evidence {
    fn name(self) -> &'static str {
        match self {
            Evidence::Calls => "calls",
            Evidence::Probe => "probe",
        }
    }
}

/// The event path's state, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPath {
    /// Every downstream component stopped: calls are forwarded, their events dropped.
    Stopped,
    /// Events were dropped in the last [`FRESH`] seconds because the queue was full.
    Dropping,
    /// The queue is full now (the next batch would be dropped).
    QueueFull,
    Ok,
}

impl EventPath {
    pub fn name(self) -> &'static str {
        match self {
            EventPath::Stopped => "stopped",
            EventPath::Dropping => "dropping",
            EventPath::QueueFull => "queue_full",
            EventPath::Ok => "ok",
        }
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn micros(duration: Duration) -> i64 {
    duration.as_micros() as i64
}

impl Health {
    /// Learns from a finished call whether the upstream answered it.
    pub fn record_call(&self, call: &ApiCall) {
        match call.outcome {
            Outcome::UpstreamUnreachable => self.record_unreachable(
                call.event_time,
                call.error.as_deref().unwrap_or("unreachable"),
            ),
            // The client left: nothing was learnt about the upstream.
            Outcome::ClientAbort => {}
            _ => {
                self.last_answer
                    .fetch_max(call.event_time, Ordering::Relaxed);
            }
        }
    }

    fn record_unreachable(&self, at: i64, error: &str) {
        if let Ok(mut last) = self.unreachable_error.lock() {
            last.clear();
            last.push_str(error);
        }
        self.last_unreachable.fetch_max(at, Ordering::Relaxed);
    }

    /// Notes that a batch of events was dropped (the queue was full).
    pub fn record_drop(&self) {
        self.last_drop.store(now_micros(), Ordering::Relaxed);
    }

    /// Notes that the pipeline behind the proxy has stopped taking events.
    pub fn record_downstream_stopped(&self) {
        self.downstream_stopped.store(true, Ordering::Relaxed);
    }

    /// The upstream's state as of `now` from recorded evidence alone: `None` when nothing
    /// recent enough is known.
    fn known(&self, now: i64, fresh: i64, from: Evidence) -> Option<Reachability> {
        let answer = self.last_answer.load(Ordering::Relaxed);
        let unreachable = self.last_unreachable.load(Ordering::Relaxed);
        let newest = answer.max(unreachable);
        if newest == NEVER || now.saturating_sub(newest) > fresh {
            return None;
        }
        Some(if answer >= unreachable {
            Reachability::Reachable {
                seconds_ago: (now - answer).max(0) as f64 / 1e6,
                from,
            }
        } else {
            let error = self
                .unreachable_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            Reachability::Unreachable { error, from }
        })
    }

    /// Whether the upstream answers: from the calls of the last [`FRESH`] seconds, else from a
    /// recent probe, else — when `probe` — from a new connection probe (at most
    /// [`PROBE_TIMEOUT`] long), else unknown.
    pub async fn upstream(&self, upstream: &Upstream, probe: bool) -> Reachability {
        let now = now_micros();
        if let Some(known) = self.known(now, micros(FRESH), Evidence::Calls) {
            return known;
        }
        if let Some((at, found)) = self.last_probe.lock().ok().and_then(|p| p.clone()) {
            if now.saturating_sub(at) <= micros(PROBE_REUSE) {
                return found;
            }
        }
        if !probe {
            return Reachability::Unknown;
        }
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, upstream.connect(upstream.pool_alpn()))
            .await
            .map_err(|_| {
                format!(
                    "no connection to {} within {PROBE_TIMEOUT:?}",
                    upstream.address
                )
            })
            .and_then(|connected| connected.map_err(|e| e.to_string()));
        let found = match outcome {
            Ok(_) => Reachability::Reachable {
                seconds_ago: 0.0,
                from: Evidence::Probe,
            },
            Err(error) => Reachability::Unreachable {
                error,
                from: Evidence::Probe,
            },
        };
        if let Ok(mut last) = self.last_probe.lock() {
            *last = Some((now_micros(), found.clone()));
        }
        found
    }

    /// The event path's state, given how many of the queue's batches are free now.
    pub fn event_path(&self, free_batches: usize) -> EventPath {
        if self.downstream_stopped.load(Ordering::Relaxed) {
            return EventPath::Stopped;
        }
        let dropped = self.last_drop.load(Ordering::Relaxed);
        if dropped != NEVER && now_micros().saturating_sub(dropped) <= micros(FRESH) {
            return EventPath::Dropping;
        }
        if free_batches == 0 {
            EventPath::QueueFull
        } else {
            EventPath::Ok
        }
    }
}

impl Reachability {
    pub fn reachable(&self) -> bool {
        matches!(self, Reachability::Reachable { .. })
    }

    /// Known to be unreachable.
    pub fn unreachable(&self) -> bool {
        matches!(self, Reachability::Unreachable { .. })
    }

    /// The `upstream` object of `/health` and `/ready`.
    pub fn to_json(&self, url: &str) -> Value {
        match self {
            Reachability::Reachable { seconds_ago, from } => json!({
                "url": url,
                "reachable": true,
                "checked_by": from.name(),
                "last_answer_seconds_ago": (seconds_ago * 10.0).round() / 10.0,
            }),
            Reachability::Unreachable { error, from } => json!({
                "url": url,
                "reachable": false,
                "checked_by": from.name(),
                "error": error,
            }),
            Reachability::Unknown => json!({
                "url": url,
                "reachable": null,
                "checked_by": "none",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(outcome: Outcome, at: i64) -> ApiCall {
        ApiCall {
            event_time: at,
            outcome,
            error: (outcome == Outcome::UpstreamUnreachable)
                .then(|| "cannot connect to 127.0.0.1:1: Connection refused".to_string()),
            ..ApiCall::default()
        }
    }

    #[test]
    fn the_newest_call_decides_and_old_calls_say_nothing() {
        let health = Health::default();
        let now = now_micros();
        let fresh = micros(FRESH);
        assert_eq!(health.known(now, fresh, Evidence::Calls), None);
        health.record_call(&call(Outcome::ServerError, now - 2_000_000));
        assert!(matches!(
            health.known(now, fresh, Evidence::Calls),
            Some(Reachability::Reachable { seconds_ago, .. }) if (seconds_ago - 2.0).abs() < 0.01
        ));
        health.record_call(&call(Outcome::UpstreamUnreachable, now - 1_000_000));
        match health.known(now, fresh, Evidence::Calls) {
            Some(Reachability::Unreachable { error, .. }) => {
                assert!(error.contains("Connection refused"), "{error}")
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
        // A client that went away says nothing about the upstream.
        health.record_call(&call(Outcome::ClientAbort, now));
        assert!(!health
            .known(now, fresh, Evidence::Calls)
            .unwrap()
            .reachable());
        // Calls finish out of order: an older answer does not hide a newer failure.
        health.record_call(&call(Outcome::Ok, now - 3_000_000));
        assert!(!health
            .known(now, fresh, Evidence::Calls)
            .unwrap()
            .reachable());
        health.record_call(&call(Outcome::Timeout, now));
        assert!(health
            .known(now, fresh, Evidence::Calls)
            .unwrap()
            .reachable());
        assert_eq!(health.known(now + fresh + 1, fresh, Evidence::Calls), None);
    }

    #[test]
    fn the_event_path_reports_the_worst_state() {
        let health = Health::default();
        assert_eq!(health.event_path(3), EventPath::Ok);
        assert_eq!(health.event_path(0), EventPath::QueueFull);
        health.record_drop();
        assert_eq!(health.event_path(3), EventPath::Dropping);
        health.record_downstream_stopped();
        assert_eq!(health.event_path(3), EventPath::Stopped);
    }
}
