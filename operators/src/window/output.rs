//! Turns fired windows into `window_metrics` record batches.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, StringBuilder, TimestampMicrosecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow::record_batch::RecordBatch;
use engine::component::ComponentResult;

use super::keys::KeyId;
use super::{Aggregate, Window};

pub(super) fn build_batch(
    window: &Window,
    rows: &[(i64, KeyId, Aggregate)],
    revisions: &[u32],
) -> ComponentResult<RecordBatch> {
    let n = rows.len();
    // A window the stream began inside of, or that is emitted because the stream ended before
    // it did, covers only part of its length: its rate divides by what it covers (at least
    // one second, so a single call cannot make a rate of thousands per second).
    let ending = window.watermark == i64::MAX;
    let covered = |start: i64| -> (bool, f64) {
        let end = start + window.size;
        let from = start.max(window.first_event_time);
        let to = if ending && end > window.max_event_time {
            window.max_event_time.saturating_add(1)
        } else {
            end
        };
        let partial = from > start || to < end;
        let micros = (to - from).clamp(1_000_000.min(window.size), window.size);
        (partial, micros as f64 / 1_000_000.0)
    };
    let mut name = StringBuilder::with_capacity(n, n * window.name.len());
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut end = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut keys: Vec<StringBuilder> = window
        .columns
        .keys
        .iter()
        .map(|_| StringBuilder::new())
        .collect();
    let mut count = UInt64Builder::with_capacity(n);
    let mut errors = UInt64Builder::with_capacity(n);
    let mut error_rate = Float64Builder::with_capacity(n);
    let mut rate = Float64Builder::with_capacity(n);
    let mut mean = Float64Builder::with_capacity(n);
    let mut min = Float64Builder::with_capacity(n);
    let mut max = Float64Builder::with_capacity(n);
    let mut latency_q: Vec<Float64Builder> = window
        .quantiles
        .iter()
        .map(|_| Float64Builder::with_capacity(n))
        .collect();
    let mut ttft_count = UInt64Builder::with_capacity(n);
    let mut ttft_q: Vec<Float64Builder> = window
        .quantiles
        .iter()
        .map(|_| Float64Builder::with_capacity(n))
        .collect();
    let mut input_tokens = UInt64Builder::with_capacity(n);
    let mut output_tokens = UInt64Builder::with_capacity(n);
    let mut cached_input_tokens = UInt64Builder::with_capacity(n);
    let mut reasoning_tokens = UInt64Builder::with_capacity(n);
    let mut cost_usd = Float64Builder::with_capacity(n);
    let mut unpriced_calls = UInt64Builder::with_capacity(n);
    let mut partial = BooleanBuilder::with_capacity(n);
    let mut covered_seconds = Float64Builder::with_capacity(n);
    let mut revision = UInt32Builder::with_capacity(n);
    for ((window_start, key, aggregate), rev) in rows.iter().zip(revisions) {
        name.append_value(&window.name);
        start.append_value(*window_start);
        end.append_value(window_start + window.size);
        for (builder, value) in keys.iter_mut().zip(window.keys.values(*key)) {
            builder.append_option(value.as_deref());
        }
        count.append_value(aggregate.count);
        errors.append_value(aggregate.errors);
        let total = aggregate.count.max(1) as f64;
        error_rate.append_value(aggregate.errors as f64 / total);
        let (is_partial, seconds) = covered(*window_start);
        partial.append_value(is_partial);
        covered_seconds.append_value(seconds);
        rate.append_value(aggregate.count as f64 / seconds);
        if aggregate.count > 0 {
            mean.append_value(aggregate.latency_sum / aggregate.count as f64);
            min.append_value(aggregate.latency_min);
            max.append_value(aggregate.latency_max);
        } else {
            mean.append_null();
            min.append_null();
            max.append_null();
        }
        for (builder, q) in latency_q.iter_mut().zip(&window.quantiles) {
            builder.append_option(aggregate.latency_quantile(*q));
        }
        ttft_count.append_value(aggregate.ttft_count);
        for (builder, q) in ttft_q.iter_mut().zip(&window.quantiles) {
            if aggregate.ttft_count > 0 {
                builder.append_option(aggregate.ttft_quantile(*q));
            } else {
                builder.append_null();
            }
        }
        input_tokens.append_value(aggregate.input_tokens);
        output_tokens.append_value(aggregate.output_tokens);
        cached_input_tokens.append_value(aggregate.cached_input_tokens);
        reasoning_tokens.append_value(aggregate.reasoning_tokens);
        cost_usd.append_option((aggregate.priced_calls > 0).then_some(aggregate.cost_usd));
        unpriced_calls.append_value(aggregate.unpriced_calls);
        revision.append_value(*rev);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(name.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
    ];
    columns.extend(keys.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend([
        Arc::new(count.finish()) as ArrayRef,
        Arc::new(errors.finish()),
        Arc::new(error_rate.finish()),
        Arc::new(rate.finish()),
        Arc::new(mean.finish()),
        Arc::new(min.finish()),
        Arc::new(max.finish()),
    ]);
    columns.extend(
        latency_q
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef),
    );
    columns.push(Arc::new(ttft_count.finish()));
    columns.extend(ttft_q.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend([
        Arc::new(input_tokens.finish()) as ArrayRef,
        Arc::new(output_tokens.finish()),
        Arc::new(cached_input_tokens.finish()),
        Arc::new(reasoning_tokens.finish()),
        Arc::new(cost_usd.finish()),
        Arc::new(unpriced_calls.finish()),
        Arc::new(partial.finish()),
        Arc::new(covered_seconds.finish()),
        Arc::new(revision.finish()),
    ]);
    Ok(RecordBatch::try_new(window.output_schema.clone(), columns)?)
}
