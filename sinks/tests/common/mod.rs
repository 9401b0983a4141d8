//! Helpers the alert-notifier tests share: a notification and a polling wait.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::schema::alert::{AlertNotification, AlertState};

/// A change of `alert-{model}` at `minute`, with a stable notification id.
pub fn notification(model: &str, state: AlertState, minute: i64) -> AlertNotification {
    let micros = minute * 60_000_000;
    AlertNotification {
        notification_id: format!("{model}-{}-{minute}", state.as_str()),
        alert_id: format!("alert-{model}"),
        rule: "HighP99Latency".into(),
        state,
        severity: "critical".into(),
        labels: BTreeMap::from([
            ("alertname".into(), "HighP99Latency".into()),
            ("model".into(), model.into()),
            ("severity".into(), "critical".into()),
        ]),
        annotations: BTreeMap::from([("summary".into(), format!("p99 of {model} is high"))]),
        value: Some(1500.0),
        active_at: 0,
        fired_at: (state != AlertState::Pending).then_some(micros.min(60_000_000)),
        resolved_at: (state == AlertState::Resolved).then_some(micros),
        event_time: micros,
    }
}

/// Polls `condition` for up to 10 s.
pub async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
