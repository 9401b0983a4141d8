//! What the server shares with the pipelines of its process: the alert operators' rules, and
//! the live state fed by `api` sinks: the latest window result
//! per (window, key), the active alerts and the recent alert changes, the monitored APIs'
//! Prometheus metrics; and the broadcast every WebSocket client subscribes to.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use engine::schema::alert::{AlertNotification, AlertState};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

/// Alert changes kept for `GET /api/v1/alerts`.
pub const RECENT_ALERTS: usize = 200;
/// Window results kept per key, for a new WebSocket client's charts.
pub const SERIES_LENGTH: usize = 120;

/// One update for WebSocket clients, serialised once for all of them.
#[derive(Debug, Clone)]
pub struct Update {
    pub model: Option<String>,
    pub endpoint: Option<String>,
    /// Shared by every client's send: cloning it does not copy the text.
    pub json: axum::extract::ws::Utf8Bytes,
}

/// One key's recent window results, oldest first.
type Series = VecDeque<Map<String, Value>>;

pub struct LiveState {
    /// The running alert operators' rules, which the API can change.
    pub alert_rules: Arc<operators::alert::control::AlertControl>,
    /// The monitored APIs' histograms and counters for `/metrics`.
    pub calls: super::call_metrics::CallMetrics,
    /// Per (window, key), the recent results by `window_start`, newest last.
    windows: RwLock<BTreeMap<(String, String), Series>>,
    active_alerts: RwLock<BTreeMap<String, Value>>,
    recent_alerts: RwLock<VecDeque<Value>>,
    updates: RwLock<broadcast::Sender<Update>>,
}

fn text_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    text_ref(object, name).map(str::to_string)
}

fn text_ref<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    object.get(name).and_then(Value::as_str)
}

impl LiveState {
    /// `client_buffer`: updates a WebSocket client may fall behind before it skips ahead.
    pub fn new(client_buffer: usize) -> Arc<Self> {
        let (updates, _) = broadcast::channel(client_buffer.max(16));
        Arc::new(Self {
            alert_rules: operators::alert::control::AlertControl::new(),
            calls: Default::default(),
            windows: RwLock::new(BTreeMap::new()),
            active_alerts: RwLock::new(BTreeMap::new()),
            recent_alerts: RwLock::new(VecDeque::new()),
            updates: RwLock::new(updates),
        })
    }

    /// Sets how far a WebSocket client may fall behind; call before the first subscriber.
    pub fn set_client_buffer(&self, client_buffer: usize) {
        let (updates, _) = broadcast::channel(client_buffer.max(16));
        *self.updates.write().unwrap_or_else(|e| e.into_inner()) = updates;
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .subscribe()
    }

    fn publish(&self, update: Update) {
        let updates = self.updates.read().unwrap_or_else(|e| e.into_inner());
        // No subscriber is not an error.
        let _ = updates.send(update);
    }

    /// Adds `row` to its key's series in `window_start` order (a later revision of a window
    /// replaces it in place; the oldest beyond [`SERIES_LENGTH`] is dropped), and sends it to
    /// WebSocket clients.
    pub fn record_window(&self, key: String, row: Map<String, Value>) {
        let window = text_field(&row, "window").unwrap_or_default();
        let start = text_field(&row, "window_start").unwrap_or_default();
        let update = Update {
            model: text_field(&row, "model"),
            endpoint: text_field(&row, "endpoint"),
            json: json!({ "type": "window_result", "data": &row })
                .to_string()
                .into(),
        };
        {
            let mut windows = self.windows.write().unwrap_or_else(|e| e.into_inner());
            let series = windows.entry((window, key)).or_default();
            // RFC 3339 text of one fixed width sorts like the time it names; a later revision
            // of a window replaces it in place.
            let position = series.partition_point(|held| {
                text_ref(held, "window_start").is_some_and(|held| held < start.as_str())
            });
            let same = series
                .get(position)
                .is_some_and(|held| text_ref(held, "window_start") == Some(start.as_str()));
            if same {
                series[position] = row;
            } else {
                series.insert(position, row);
                if series.len() > SERIES_LENGTH {
                    series.pop_front();
                }
            }
        }
        self.publish(update);
    }

    /// Applies an alert change: pending and firing alerts are active, resolved ones are not.
    pub fn record_alert(&self, notification: &AlertNotification) {
        let body = sinks::webhook::payload::json_body(notification);
        {
            let mut active = self
                .active_alerts
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if notification.state == AlertState::Resolved {
                active.remove(&notification.alert_id);
            } else {
                active.insert(notification.alert_id.clone(), body.clone());
            }
        }
        {
            let mut recent = self
                .recent_alerts
                .write()
                .unwrap_or_else(|e| e.into_inner());
            recent.push_front(body.clone());
            recent.truncate(RECENT_ALERTS);
        }
        self.publish(Update {
            model: notification.labels.get("model").cloned(),
            endpoint: notification.labels.get("endpoint").cloned(),
            json: json!({ "type": "alert", "data": body }).to_string().into(),
        });
    }

    /// The latest result of every key that passes `keep`, by window then key.
    pub fn latest(&self, keep: impl Fn(&Map<String, Value>) -> bool) -> Vec<Value> {
        let windows = self.windows.read().unwrap_or_else(|e| e.into_inner());
        windows
            .values()
            .filter_map(|series| series.back())
            .filter(|row| keep(row))
            .map(|row| Value::Object(row.clone()))
            .collect()
    }

    /// The recent results (up to [`SERIES_LENGTH`] per key) of every key that passes `keep`.
    pub fn recent(&self, keep: impl Fn(&Map<String, Value>) -> bool) -> Vec<Value> {
        let windows = self.windows.read().unwrap_or_else(|e| e.into_inner());
        windows
            .values()
            .filter(|series| series.back().is_some_and(&keep))
            .flat_map(|series| series.iter().map(|row| Value::Object(row.clone())))
            .collect()
    }

    pub fn active_alerts(&self) -> Vec<Value> {
        let active = self.active_alerts.read().unwrap_or_else(|e| e.into_inner());
        active.values().cloned().collect()
    }

    /// Newest first.
    pub fn recent_alerts(&self) -> Vec<Value> {
        let recent = self.recent_alerts.read().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(window: &str, start: &str, model: &str, count: u64) -> Map<String, Value> {
        let Value::Object(map) = json!({
            "window": window, "window_start": start, "model": model, "count": count
        }) else {
            unreachable!("an object literal")
        };
        map
    }

    #[test]
    fn series_keep_recent_windows_in_order_with_revisions_in_place() {
        let live = LiveState::new(16);
        for minute in [2, 0, 1] {
            let start = format!("2026-01-01T00:0{minute}:00.000000Z");
            live.record_window("a".into(), row("1m", &start, "a", minute));
        }
        live.record_window("a".into(), row("1m", "2026-01-01T00:01:00.000000Z", "a", 7));
        let counts: Vec<_> = live
            .recent(|_| true)
            .iter()
            .map(|r| r["count"].clone())
            .collect();
        assert_eq!(counts, vec![json!(0), json!(7), json!(2)]);
        for minute in 0..(SERIES_LENGTH as u64 + 10) {
            let start = format!(
                "2026-01-02T{:02}:{:02}:00.000000Z",
                minute / 60,
                minute % 60
            );
            live.record_window("a".into(), row("1m", &start, "a", minute));
        }
        assert_eq!(live.recent(|_| true).len(), SERIES_LENGTH);
    }

    #[test]
    fn a_late_revision_of_an_older_window_does_not_replace_a_newer_one() {
        let live = LiveState::new(16);
        live.record_window("a".into(), row("1m", "2026-01-01T00:01:00.000000Z", "a", 5));
        live.record_window("a".into(), row("1m", "2026-01-01T00:00:00.000000Z", "a", 9));
        live.record_window("b".into(), row("1m", "2026-01-01T00:00:00.000000Z", "b", 1));
        let latest = live.latest(|_| true);
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0]["count"], 5);
        let only_b = live.latest(|r| r.get("model") == Some(&json!("b")));
        assert_eq!(only_b.len(), 1);
    }
}
