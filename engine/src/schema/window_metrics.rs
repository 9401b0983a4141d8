//! The `window_metrics` schema: one row per (window, key). Key columns come from the window
//! operator's `key` setting and keep their input types; quantile columns follow the configured
//! quantiles (`p50_latency_ms`, `p99_9_latency_ms`, `p95_ttft_ms`, ...).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};

use super::api_call::timestamp_type;

pub const WINDOW: &str = "window";
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
pub const COUNT: &str = "count";
pub const ERRORS: &str = "errors";
pub const ERROR_RATE: &str = "error_rate";
pub const RATE_PER_SEC: &str = "rate_per_sec";
pub const MEAN_LATENCY_MS: &str = "mean_latency_ms";
pub const MIN_LATENCY_MS: &str = "min_latency_ms";
pub const MAX_LATENCY_MS: &str = "max_latency_ms";
pub const TTFT_COUNT: &str = "ttft_count";
pub const INPUT_TOKENS: &str = "input_tokens";
pub const OUTPUT_TOKENS: &str = "output_tokens";
pub const CACHED_INPUT_TOKENS: &str = "cached_input_tokens";
pub const REASONING_TOKENS: &str = "reasoning_tokens";
/// Spend of the window's priced calls; null when none was priced.
pub const COST_USD: &str = "cost_usd";
/// Calls that reported usage but whose model has no price (their cost is not in `cost_usd`).
pub const UNPRICED_CALLS: &str = "unpriced_calls";
/// The window covers less than its length: the stream began inside it, or ended before it did.
pub const PARTIAL: &str = "partial";
/// The seconds of the window the stream covered (`rate_per_sec` is `count` over this).
pub const COVERED_SECONDS: &str = "covered_seconds";
pub const REVISION: &str = "revision";

/// `0.99` → `p99`, `0.999` → `p99_9`, `0.5` → `p50`.
pub fn quantile_label(q: f64) -> String {
    let percent = format!("{}", (q * 100_000.0).round() / 1000.0);
    format!("p{}", percent.replace('.', "_"))
}

/// The latency quantile column for `q`, e.g. `p99_latency_ms`.
pub fn latency_quantile_column(q: f64) -> String {
    format!("{}_latency_ms", quantile_label(q))
}

/// The time-to-first-token quantile column for `q`, e.g. `p95_ttft_ms`.
pub fn ttft_quantile_column(q: f64) -> String {
    format!("{}_ttft_ms", quantile_label(q))
}

/// The schema a window operator emits for the given key fields and quantiles.
pub fn window_metrics_schema(key_fields: &[FieldRef], quantiles: &[f64]) -> SchemaRef {
    let mut fields: Vec<Field> = vec![
        Field::new(WINDOW, DataType::Utf8, false),
        Field::new(WINDOW_START, timestamp_type(), false),
        Field::new(WINDOW_END, timestamp_type(), false),
    ];
    fields.extend(
        key_fields
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    fields.extend([
        Field::new(COUNT, DataType::UInt64, false),
        Field::new(ERRORS, DataType::UInt64, false),
        Field::new(ERROR_RATE, DataType::Float64, false),
        Field::new(RATE_PER_SEC, DataType::Float64, false),
        Field::new(MEAN_LATENCY_MS, DataType::Float64, true),
        Field::new(MIN_LATENCY_MS, DataType::Float64, true),
        Field::new(MAX_LATENCY_MS, DataType::Float64, true),
    ]);
    for q in quantiles {
        fields.push(Field::new(
            latency_quantile_column(*q),
            DataType::Float64,
            true,
        ));
    }
    fields.push(Field::new(TTFT_COUNT, DataType::UInt64, false));
    for q in quantiles {
        fields.push(Field::new(
            ttft_quantile_column(*q),
            DataType::Float64,
            true,
        ));
    }
    fields.extend([
        Field::new(INPUT_TOKENS, DataType::UInt64, false),
        Field::new(OUTPUT_TOKENS, DataType::UInt64, false),
        Field::new(CACHED_INPUT_TOKENS, DataType::UInt64, false),
        Field::new(REASONING_TOKENS, DataType::UInt64, false),
        Field::new(COST_USD, DataType::Float64, true),
        Field::new(UNPRICED_CALLS, DataType::UInt64, false),
        Field::new(PARTIAL, DataType::Boolean, false),
        Field::new(COVERED_SECONDS, DataType::Float64, false),
        Field::new(REVISION, DataType::UInt32, false),
    ]);
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_columns_are_readable() {
        assert_eq!(latency_quantile_column(0.5), "p50_latency_ms");
        assert_eq!(latency_quantile_column(0.99), "p99_latency_ms");
        assert_eq!(latency_quantile_column(0.999), "p99_9_latency_ms");
        assert_eq!(ttft_quantile_column(0.95), "p95_ttft_ms");
    }
}
