//! `GET /metrics`: the pipeline's own metrics in the Prometheus text format (version 0.0.4):
//! per pipeline checkpoints started / completed and the last one's duration; per component rows
//! received / sent, errors, drops, late rows, queue depth, watermark lag, checkpoints, and each
//! component's own counters and gauges as families of their own (`pipeline_component_retries_total`,
//! `pipeline_component_future_events_total`, `pipeline_component_unacked`, ...); then the monitored
//! APIs' metrics (see [`super::call_metrics`]).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::state::AppState;

/// Escapes a label value as the text format requires.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: String,
    kind: &'static str,
    help: String,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: impl Into<String>, kind: &'static str, help: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind,
            help: help.into(),
            samples: Vec::new(),
        }
    }

    fn render(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{{{labels}}} {value}", self.name);
        }
    }
}

/// The exposition text for every pipeline's components.
pub fn render(state: &AppState) -> String {
    let mut received = Family::new(
        "pipeline_component_received_events_total",
        "counter",
        "Rows a component received.",
    );
    let mut sent = Family::new(
        "pipeline_component_sent_events_total",
        "counter",
        "Rows a component emitted or delivered.",
    );
    let mut errors = Family::new(
        "pipeline_component_errors_total",
        "counter",
        "Errors a component counted (bad input, failed deliveries).",
    );
    let mut dropped = Family::new(
        "pipeline_component_dropped_events_total",
        "counter",
        "Rows a component dropped (full queues, rejected notifications).",
    );
    let mut late = Family::new(
        "pipeline_component_late_events_total",
        "counter",
        "Rows that arrived after their window closed.",
    );
    let mut queue = Family::new(
        "pipeline_component_queue_depth",
        "gauge",
        "Items waiting in a component's own queue.",
    );
    let mut lag = Family::new(
        "pipeline_component_watermark_lag_seconds",
        "gauge",
        "Wall-clock time minus the component's event-time watermark.",
    );
    let mut checkpoints = Family::new(
        "pipeline_component_checkpoints_acked_total",
        "counter",
        "Checkpoint barriers the component acknowledged.",
    );
    // Each component type's own counters and gauges, one family each (a counter named
    // `retries` is `pipeline_component_retries_total`).
    let mut own: std::collections::BTreeMap<String, Family> = std::collections::BTreeMap::new();
    let mut up = Family::new(
        "pipeline_running",
        "gauge",
        "1 while the pipeline runs, 0 once it ended or failed.",
    );
    let mut checkpoints_started = Family::new(
        "pipeline_checkpoints_started_total",
        "counter",
        "Checkpoints the pipeline began.",
    );
    let mut checkpoints_completed = Family::new(
        "pipeline_checkpoints_completed_total",
        "counter",
        "Checkpoints every sink acknowledged.",
    );
    let mut checkpoint_duration = Family::new(
        "pipeline_checkpoint_duration_seconds",
        "gauge",
        "From barrier injection to the last acknowledgement, of the newest checkpoint.",
    );
    let mut checkpoints_failed = Family::new(
        "pipeline_checkpoints_failed_total",
        "counter",
        "Checkpoints abandoned because a state or the manifest could not be written.",
    );
    let mut checkpoint_state = Family::new(
        "pipeline_checkpoint_state_bytes",
        "gauge",
        "Bytes of operator and source state in the newest checkpoint.",
    );
    let mut checkpoint_restored = Family::new(
        "pipeline_checkpoint_restored",
        "gauge",
        "The checkpoint restored at start (0: none).",
    );
    let now_micros = chrono::Utc::now().timestamp_micros();
    for pipeline in &state.pipelines {
        let running = pipeline.run_state() == super::state::RunState::Running;
        let label = format!("pipeline=\"{}\"", escape(&pipeline.name));
        up.samples
            .push((label.clone(), f64::from(u8::from(running))));
        let live = &pipeline.metrics.checkpoints;
        checkpoints_started
            .samples
            .push((label.clone(), live.started.load(Ordering::Relaxed) as f64));
        checkpoints_completed
            .samples
            .push((label.clone(), live.completed.load(Ordering::Relaxed) as f64));
        checkpoint_duration.samples.push((
            label.clone(),
            live.last_duration_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ));
        checkpoints_failed
            .samples
            .push((label.clone(), live.failed.load(Ordering::Relaxed) as f64));
        checkpoint_state.samples.push((
            label.clone(),
            live.last_state_bytes.load(Ordering::Relaxed) as f64,
        ));
        checkpoint_restored
            .samples
            .push((label, live.restored.load(Ordering::Relaxed) as f64));
        for report in pipeline.metrics.report() {
            let labels = format!(
                "pipeline=\"{}\",component=\"{}\",kind=\"{}\",type=\"{}\"",
                escape(&pipeline.name),
                escape(&report.id),
                report.kind.section().trim_end_matches('s'),
                escape(&report.component_type)
            );
            let m = report.metrics;
            received.samples.push((labels.clone(), m.events_in as f64));
            sent.samples.push((labels.clone(), m.events_out as f64));
            errors.samples.push((labels.clone(), m.errors as f64));
            dropped.samples.push((labels.clone(), m.dropped as f64));
            late.samples.push((labels.clone(), m.late as f64));
            queue.samples.push((labels.clone(), m.queue_depth as f64));
            checkpoints
                .samples
                .push((labels.clone(), m.checkpoints_acked as f64));
            if let Some(watermark) = m.watermark_micros {
                let seconds = (now_micros - watermark) as f64 / 1e6;
                lag.samples.push((labels.clone(), seconds));
            }
            for (name, value) in &report.counters {
                let gauge = report.gauges.contains(name);
                let family_name = if gauge {
                    format!("pipeline_component_{name}")
                } else {
                    format!("pipeline_component_{name}_total")
                };
                own.entry(family_name.clone())
                    .or_insert_with(|| {
                        let kind = if gauge { "gauge" } else { "counter" };
                        Family::new(
                            family_name,
                            kind,
                            format!("A component's own {kind}: {}.", name.replace('_', " ")),
                        )
                    })
                    .samples
                    .push((labels.clone(), *value as f64));
            }
        }
    }
    let mut out = String::new();
    for family in [
        &up,
        &checkpoints_started,
        &checkpoints_completed,
        &checkpoints_failed,
        &checkpoint_duration,
        &checkpoint_state,
        &checkpoint_restored,
        &received,
        &sent,
        &errors,
        &dropped,
        &late,
        &queue,
        &lag,
        &checkpoints,
    ] {
        family.render(&mut out);
    }
    for family in own.values() {
        family.render(&mut out);
    }
    state.live.calls.render(&mut out);
    out
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(&state),
    )
}
