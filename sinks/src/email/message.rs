//! What an alert email says: a subject a pager-weary reader can triage from the inbox list
//! (`[FIRING:critical] HighP99Latency model=gpt-4o route=/v1/chat/completions`) and a plain
//! text body with the summary, the value, every label and annotation, and the times. The
//! rendered message is what the durable queue stores, so retries send the same words.

use engine::schema::alert::{AlertNotification, AlertState};
use engine::time::format_micros;
use serde::{Deserialize, Serialize};

/// The subject and body of one notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    /// The alert's fingerprint: messages about one alert share a thread.
    pub alert_id: String,
}

/// Labels that identify what the alert is about, without the ones the subject already says.
fn key_labels(notification: &AlertNotification) -> Vec<String> {
    notification
        .labels
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "alertname" | "severity"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// Renders `notification`, with `subject_prefix` (e.g. `[prod]`) in front of the subject.
pub fn render(notification: &AlertNotification, subject_prefix: &str) -> RenderedEmail {
    let marker = match notification.state {
        AlertState::Pending => "PENDING",
        AlertState::Firing => "FIRING",
        AlertState::Resolved => "RESOLVED",
    };
    let mut subject = String::new();
    if !subject_prefix.is_empty() {
        subject.push_str(subject_prefix);
        subject.push(' ');
    }
    subject.push_str(&format!(
        "[{marker}:{}] {}",
        notification.severity, notification.rule
    ));
    let key = key_labels(notification);
    if !key.is_empty() {
        subject.push(' ');
        subject.push_str(&key.join(" "));
    }

    let mut text = String::new();
    if let Some(summary) = notification.annotations.get("summary") {
        text.push_str(summary);
        text.push_str("\n\n");
    }
    text.push_str(&format!("Alert:     {}\n", notification.rule));
    text.push_str(&format!("State:     {}\n", notification.state.as_str()));
    text.push_str(&format!("Severity:  {}\n", notification.severity));
    if let Some(value) = notification.value {
        text.push_str(&format!("Value:     {value}\n"));
    }
    text.push_str(&format!(
        "Active:    {}\n",
        format_micros(notification.active_at)
    ));
    if let Some(fired_at) = notification.fired_at {
        text.push_str(&format!("Fired:     {}\n", format_micros(fired_at)));
    }
    if let Some(resolved_at) = notification.resolved_at {
        text.push_str(&format!("Resolved:  {}\n", format_micros(resolved_at)));
    }
    text.push_str("\nLabels:\n");
    for (name, value) in &notification.labels {
        text.push_str(&format!("  {name} = {value}\n"));
    }
    let others: Vec<_> = notification
        .annotations
        .iter()
        .filter(|(name, _)| name.as_str() != "summary")
        .collect();
    if !others.is_empty() {
        text.push_str("\nAnnotations:\n");
        for (name, value) in others {
            text.push_str(&format!("  {name}: {value}\n"));
        }
    }
    text.push_str(&format!(
        "\nAlert id:        {}\nNotification id: {}\n",
        notification.alert_id, notification.notification_id
    ));
    RenderedEmail {
        subject,
        text,
        alert_id: notification.alert_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn notification(state: AlertState) -> AlertNotification {
        AlertNotification {
            notification_id: "n-1".into(),
            alert_id: "a-1".into(),
            rule: "HighP99Latency".into(),
            state,
            severity: "critical".into(),
            labels: BTreeMap::from([
                ("alertname".to_string(), "HighP99Latency".to_string()),
                ("model".to_string(), "gpt-4o".to_string()),
                ("severity".to_string(), "critical".to_string()),
            ]),
            annotations: BTreeMap::from([
                ("summary".to_string(), "p99 is 1800 ms".to_string()),
                (
                    "runbook".to_string(),
                    "https://runbooks/latency".to_string(),
                ),
            ]),
            value: Some(1800.0),
            active_at: 60_000_000,
            fired_at: Some(120_000_000),
            resolved_at: None,
            event_time: 120_000_000,
        }
    }

    #[test]
    fn the_subject_names_state_severity_rule_and_key() {
        let email = render(&notification(AlertState::Firing), "[prod]");
        assert_eq!(
            email.subject,
            "[prod] [FIRING:critical] HighP99Latency model=gpt-4o"
        );
        let resolved = render(&notification(AlertState::Resolved), "");
        assert!(resolved.subject.starts_with("[RESOLVED:critical] "));
    }

    #[test]
    fn the_body_carries_summary_value_labels_annotations_and_ids() {
        let email = render(&notification(AlertState::Firing), "");
        assert!(email.text.starts_with("p99 is 1800 ms\n\n"));
        for expected in [
            "Value:     1800\n",
            "  model = gpt-4o\n",
            "  runbook: https://runbooks/latency\n",
            "Notification id: n-1\n",
            "Fired:     ",
        ] {
            assert!(
                email.text.contains(expected),
                "missing {expected:?} in {}",
                email.text
            );
        }
        assert!(!email.text.contains("Resolved:"));
    }
}
