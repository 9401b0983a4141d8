//! What a receiver gets for one alert state change: this project's JSON, an Alertmanager
//! (webhook version 4) message so existing Alertmanager receivers work unchanged, or a Slack
//! incoming-webhook message; and the HMAC-SHA256 signature over the exact body.

use engine::schema::alert::{AlertNotification, AlertState};
use engine::time::format_micros;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

/// The body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One notification as a JSON object (all fields of the `alert` schema).
    #[default]
    Json,
    /// Alertmanager's webhook payload, version 4, with one alert.
    Alertmanager,
    /// A Slack incoming-webhook message.
    Slack,
}

/// Alertmanager's "no end time" for firing alerts.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The body for `notification` in `format`; `receiver` and `external_url` fill the
/// Alertmanager fields of the same names.
pub fn body(
    format: Format,
    notification: &AlertNotification,
    receiver: &str,
    external_url: &str,
) -> String {
    let value = match format {
        Format::Json => json_body(notification),
        Format::Alertmanager => alertmanager_body(notification, receiver, external_url),
        Format::Slack => slack_body(notification),
    };
    value.to_string()
}

fn optional_time(micros: Option<i64>) -> Value {
    micros.map_or(Value::Null, |m| Value::String(format_micros(m)))
}

/// A notification as this project's JSON object (the `json` format's body).
pub fn json_body(n: &AlertNotification) -> Value {
    json!({
        "notification_id": n.notification_id,
        "alert_id": n.alert_id,
        "rule": n.rule,
        "state": n.state.as_str(),
        "severity": n.severity,
        "labels": n.labels,
        "annotations": n.annotations,
        "value": n.value,
        "active_at": format_micros(n.active_at),
        "fired_at": optional_time(n.fired_at),
        "resolved_at": optional_time(n.resolved_at),
        "event_time": format_micros(n.event_time),
    })
}

fn alertmanager_body(n: &AlertNotification, receiver: &str, external_url: &str) -> Value {
    let status = if n.state == AlertState::Resolved {
        "resolved"
    } else {
        "firing"
    };
    let starts_at = format_micros(n.fired_at.unwrap_or(n.active_at));
    let ends_at = n
        .resolved_at
        .map_or_else(|| ZERO_TIME.to_string(), format_micros);
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}/{}", n.rule, n.alert_id),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": { "alertname": n.rule },
        "commonLabels": n.labels,
        "commonAnnotations": n.annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": n.labels,
            "annotations": n.annotations,
            "startsAt": starts_at,
            "endsAt": ends_at,
            "generatorURL": external_url,
            "fingerprint": n.alert_id,
        }],
    })
}

fn slack_body(n: &AlertNotification) -> Value {
    let (marker, color) = match (n.state, n.severity.as_str()) {
        (AlertState::Resolved, _) => ("RESOLVED", "#2eb886"),
        (_, "critical") => ("FIRING", "#e01e5a"),
        _ => ("FIRING", "#ecb22e"),
    };
    let key: Vec<String> = n
        .labels
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "alertname" | "severity"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let title = format!("[{marker}] {} ({})", n.rule, n.severity);
    let mut text = n
        .annotations
        .get("summary")
        .or_else(|| n.annotations.get("description"))
        .cloned()
        .unwrap_or_default();
    if let Some(value) = n.value {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("value: {value}"));
    }
    json!({
        "text": format!("{title} {}", key.join(" ")),
        "attachments": [{
            "color": color,
            "title": title,
            "text": text,
            "fields": n.labels.iter().map(|(k, v)| json!({"title": k, "value": v, "short": true})).collect::<Vec<_>>(),
            "ts": n.event_time / 1_000_000,
        }],
    })
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`, the value of the signature header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|e| panic!("hmac key: {e}"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header value in constant time (for receivers and tests).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_digest) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn notification(state: AlertState) -> AlertNotification {
        AlertNotification {
            notification_id: "n1".into(),
            alert_id: "f00d".into(),
            rule: "HighP99Latency".into(),
            state,
            severity: "critical".into(),
            labels: BTreeMap::from([
                ("alertname".into(), "HighP99Latency".into()),
                ("model".into(), "gpt-4o".into()),
                ("severity".into(), "critical".into()),
            ]),
            annotations: BTreeMap::from([("summary".into(), "p99 is 1.5 s".into())]),
            value: Some(1500.0),
            active_at: 1_700_000_000_000_000,
            fired_at: Some(1_700_000_120_000_000),
            resolved_at: (state == AlertState::Resolved).then_some(1_700_000_600_000_000),
            event_time: 1_700_000_120_000_000,
        }
    }

    #[test]
    fn alertmanager_v4_fields() {
        let firing: Value = serde_json::from_str(&body(
            Format::Alertmanager,
            &notification(AlertState::Firing),
            "oncall",
            "http://pipeline:8080",
        ))
        .expect("json");
        assert_eq!(firing["version"], "4");
        assert_eq!(firing["status"], "firing");
        assert_eq!(firing["receiver"], "oncall");
        assert_eq!(firing["alerts"][0]["labels"]["model"], "gpt-4o");
        assert_eq!(
            firing["alerts"][0]["startsAt"],
            "2023-11-14T22:15:20.000000Z"
        );
        assert_eq!(firing["alerts"][0]["endsAt"], ZERO_TIME);
        assert_eq!(firing["alerts"][0]["fingerprint"], "f00d");
        assert_eq!(firing["groupLabels"]["alertname"], "HighP99Latency");
        let resolved: Value = serde_json::from_str(&body(
            Format::Alertmanager,
            &notification(AlertState::Resolved),
            "oncall",
            "",
        ))
        .expect("json");
        assert_eq!(resolved["status"], "resolved");
        assert_eq!(
            resolved["alerts"][0]["endsAt"],
            "2023-11-14T22:23:20.000000Z"
        );
    }

    #[test]
    fn json_and_slack_bodies() {
        let json: Value = serde_json::from_str(&body(
            Format::Json,
            &notification(AlertState::Firing),
            "",
            "",
        ))
        .expect("json");
        assert_eq!(json["state"], "firing");
        assert_eq!(json["value"], 1500.0);
        assert_eq!(json["resolved_at"], Value::Null);
        let slack: Value = serde_json::from_str(&body(
            Format::Slack,
            &notification(AlertState::Firing),
            "",
            "",
        ))
        .expect("json");
        assert_eq!(
            slack["text"],
            "[FIRING] HighP99Latency (critical) model=gpt-4o"
        );
        assert_eq!(slack["attachments"][0]["color"], "#e01e5a");
        assert!(slack["attachments"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("p99 is 1.5 s")));
    }

    #[test]
    fn signatures_verify_and_tampering_is_detected() {
        let header = signature(b"s3cret", b"{\"a\":1}");
        assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
        assert!(verify(b"s3cret", b"{\"a\":1}", &header));
        assert!(!verify(b"s3cret", b"{\"a\":2}", &header));
        assert!(!verify(b"other", b"{\"a\":1}", &header));
        assert!(!verify(b"s3cret", b"{\"a\":1}", "md5=00"));
    }
}
