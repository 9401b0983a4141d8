//! The monitored APIs' own metrics for Prometheus, fed by an `api` sink on raw `api_call`
//! events: request duration, time to first token and token usage per call as histograms with
//! OpenTelemetry's buckets, and spend counters, under OpenTelemetry-style names
//! (`http.server.request.duration` → `http_server_request_duration_seconds`), on the server's
//! side since the proxy measures calls where they are served. Label sets are capped per family: past the cap,
//! new ones are counted under `model="other"`, `http_route="other"`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::prometheus::escape;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, UInt16Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use engine::schema::api_call::{
    COST_USD, ENDPOINT, INPUT_TOKENS, LATENCY_MS, METHOD, MODEL, OUTCOME, OUTPUT_TOKENS,
    STATUS_CODE, TTFT_MS,
};

/// OpenTelemetry's default buckets for `http.server.request.duration`, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// OpenTelemetry's buckets for `gen_ai.server.time_to_first_token`, in seconds.
pub const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// OpenTelemetry's buckets for `gen_ai.client.token.usage` (tokens per call, by type).
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Label sets kept per family before new ones go to the `other` bucket.
pub const MAX_SERIES: usize = 2000;

#[derive(Debug, Clone)]
struct Histogram {
    /// Per bucket (not cumulative), then the +Inf overflow.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: usize) -> Self {
        Self {
            counts: vec![0; buckets + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], value: f64) {
        let index = bounds.partition_point(|&bound| bound < value);
        self.counts[index] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// `(model, route, method, status, outcome)` for durations; `(model, route)` for TTFT;
/// `(model, route, token type)` for tokens.
type Labels = Vec<String>;

#[derive(Default)]
struct Families {
    duration: HashMap<Labels, Histogram>,
    ttft: HashMap<Labels, Histogram>,
    tokens: HashMap<Labels, Histogram>,
    /// `(model, route)`: USD spent, from each call's `cost_usd`.
    cost: HashMap<Labels, f64>,
    /// `(model, route)`: calls that reported usage but carry no cost.
    unpriced: HashMap<Labels, u64>,
    overflowed: u64,
}

/// The entry for `labels`, or for the `other` label set when the family is full.
fn capped<'a, V>(
    family: &'a mut HashMap<Labels, V>,
    mut labels: Labels,
    overflowed: &mut u64,
    new: impl Fn() -> V,
) -> &'a mut V {
    if !family.contains_key(&labels) && family.len() >= MAX_SERIES {
        *overflowed += 1;
        labels[0] = "other".into();
        labels[1] = "other".into();
    }
    family.entry(labels).or_insert_with(new)
}

#[derive(Default)]
pub struct CallMetrics {
    families: Mutex<Families>,
}

fn text(batch: &RecordBatch, name: &str, row: usize) -> String {
    batch
        .column_by_name(name)
        .filter(|c| !c.is_null(row))
        .and_then(|c| c.as_string_opt::<i32>().map(|s| s.value(row).to_string()))
        .unwrap_or_default()
}

fn number(batch: &RecordBatch, name: &str, row: usize) -> Option<f64> {
    let column = batch.column_by_name(name)?;
    if column.is_null(row) {
        return None;
    }
    if let Some(values) = column.as_primitive_opt::<Float64Type>() {
        return Some(values.value(row));
    }
    if let Some(values) = column.as_primitive_opt::<UInt32Type>() {
        return Some(f64::from(values.value(row)));
    }
    column
        .as_primitive_opt::<UInt16Type>()
        .map(|values| f64::from(values.value(row)))
}

fn label_text(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect::<Vec<_>>()
        .join(",")
}

fn render_histograms(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    label_names: &[&str],
    family: &HashMap<Labels, Histogram>,
) {
    if family.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut series: Vec<_> = family.iter().collect();
    series.sort_by(|a, b| a.0.cmp(b.0));
    for (labels, histogram) in series {
        let labels = label_text(label_names, labels);
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(&histogram.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            histogram.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count);
    }
}

fn render_counters<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    label_names: &[&str],
    family: &HashMap<Labels, V>,
) {
    if family.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let mut series: Vec<_> = family.iter().collect();
    series.sort_by(|a, b| a.0.cmp(b.0));
    for (labels, value) in series {
        let labels = label_text(label_names, labels);
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

impl CallMetrics {
    /// Counts every call of an `api_call` batch.
    pub fn record(&self, batch: &RecordBatch) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let Families {
            duration,
            ttft,
            tokens,
            cost,
            unpriced,
            overflowed,
        } = &mut *families;
        for row in 0..batch.num_rows() {
            let model = text(batch, MODEL, row);
            let route = text(batch, ENDPOINT, row);
            let status = number(batch, STATUS_CODE, row)
                .map(|s| format!("{s}"))
                .unwrap_or_default();
            if let Some(latency) = number(batch, LATENCY_MS, row) {
                let labels = vec![
                    model.clone(),
                    route.clone(),
                    text(batch, METHOD, row),
                    status,
                    text(batch, OUTCOME, row),
                ];
                capped(duration, labels, overflowed, || {
                    Histogram::new(DURATION_BUCKETS.len())
                })
                .observe(&DURATION_BUCKETS, latency / 1000.0);
            }
            if let Some(first_token) = number(batch, TTFT_MS, row) {
                capped(ttft, vec![model.clone(), route.clone()], overflowed, || {
                    Histogram::new(TTFT_BUCKETS.len())
                })
                .observe(&TTFT_BUCKETS, first_token / 1000.0);
            }
            let mut reported_usage = false;
            for (column, kind) in [(INPUT_TOKENS, "input"), (OUTPUT_TOKENS, "output")] {
                if let Some(count) = number(batch, column, row) {
                    reported_usage = true;
                    let labels = vec![model.clone(), route.clone(), kind.to_string()];
                    capped(tokens, labels, overflowed, || {
                        Histogram::new(TOKEN_BUCKETS.len())
                    })
                    .observe(&TOKEN_BUCKETS, count);
                }
            }
            match number(batch, COST_USD, row) {
                Some(usd) => {
                    *capped(cost, vec![model.clone(), route.clone()], overflowed, || 0.0) += usd
                }
                None if reported_usage => {
                    *capped(
                        unpriced,
                        vec![model.clone(), route.clone()],
                        overflowed,
                        || 0,
                    ) += 1
                }
                None => {}
            }
        }
    }

    /// The exposition text of every family.
    pub fn render(&self, out: &mut String) {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        render_histograms(
            out,
            "http_server_request_duration_seconds",
            "Duration of model API calls seen by the pipeline (OpenTelemetry http.server.request.duration).",
            &DURATION_BUCKETS,
            &[
                "model",
                "http_route",
                "http_request_method",
                "http_response_status_code",
                "outcome",
            ],
            &families.duration,
        );
        render_histograms(
            out,
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first generated token of streamed responses (OpenTelemetry gen_ai.server.time_to_first_token).",
            &TTFT_BUCKETS,
            &["model", "http_route"],
            &families.ttft,
        );
        render_histograms(
            out,
            "gen_ai_server_token_usage",
            "Tokens per call the model APIs reported (or the proxy counted), by type (OpenTelemetry gen_ai.client.token.usage, measured where calls are served); _sum is the total.",
            &TOKEN_BUCKETS,
            &["model", "http_route", "gen_ai_token_type"],
            &families.tokens,
        );
        render_counters(
            out,
            "gen_ai_server_cost_usd_total",
            "USD spent on the model APIs, from each call's cost_usd (the price table).",
            &["model", "http_route"],
            &families.cost,
        );
        render_counters(
            out,
            "gen_ai_server_unpriced_calls_total",
            "Calls that reported usage but whose model has no price: their spend is not in gen_ai_server_cost_usd_total.",
            &["model", "http_route"],
            &families.unpriced,
        );
        let name = "pipeline_api_metrics_overflow_total";
        let _ = writeln!(
            out,
            "# HELP {name} Observations counted under model=\"other\" because a family reached {MAX_SERIES} label sets."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", families.overflowed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_fill_the_right_buckets() {
        let mut histogram = Histogram::new(DURATION_BUCKETS.len());
        for value in [0.004, 0.005, 0.3, 20.0] {
            histogram.observe(&DURATION_BUCKETS, value);
        }
        // le is inclusive: 0.005 falls in the 0.005 bucket.
        assert_eq!(histogram.counts[0], 2);
        assert_eq!(histogram.counts[7], 1, "0.3 s is in the 0.5 bucket");
        assert_eq!(histogram.counts[DURATION_BUCKETS.len()], 1, "+Inf");
        assert_eq!(histogram.count, 4);
    }

    #[test]
    fn label_sets_past_the_cap_go_to_other() {
        let mut family: HashMap<Labels, u64> = HashMap::new();
        let mut overflowed = 0;
        for i in 0..MAX_SERIES + 5 {
            *capped(
                &mut family,
                vec![format!("m{i}"), "/r".into(), "input".into()],
                &mut overflowed,
                || 0,
            ) += 1;
        }
        assert_eq!(family.len(), MAX_SERIES + 1);
        assert_eq!(overflowed, 5);
        assert_eq!(
            family[&vec![
                "other".to_string(),
                "other".to_string(),
                "input".to_string()
            ]],
            5
        );
    }
}
