//! The running aggregate of one pane and key: counts, latency statistics, DDSketches for
//! latency and TTFT, token sums. Mergeable, so hopping windows combine their panes exactly
//! as sketches allow, and instances can combine per-key results. Serialisable for checkpoints.

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

#[derive(Clone, Serialize, Deserialize)]
pub struct Aggregate {
    pub count: u64,
    pub errors: u64,
    pub latency_sum: f64,
    pub latency_min: f64,
    pub latency_max: f64,
    pub latency: DDSketch,
    pub ttft: DDSketch,
    pub ttft_count: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cached_input_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    /// Calls with a cost.
    #[serde(default)]
    pub priced_calls: u64,
    /// Calls that reported usage without a cost.
    #[serde(default)]
    pub unpriced_calls: u64,
}

impl Aggregate {
    pub fn new(config: SketchConfig) -> Self {
        Self {
            count: 0,
            errors: 0,
            latency_sum: 0.0,
            latency_min: f64::INFINITY,
            latency_max: f64::NEG_INFINITY,
            latency: DDSketch::new(config),
            ttft: DDSketch::new(config),
            ttft_count: 0,
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            reasoning_tokens: 0,
            cost_usd: 0.0,
            priced_calls: 0,
            unpriced_calls: 0,
        }
    }

    #[inline]
    pub fn add_latency(&mut self, latency_ms: f64, is_error: bool) {
        self.count += 1;
        self.errors += u64::from(is_error);
        self.latency_sum += latency_ms;
        self.latency_min = self.latency_min.min(latency_ms);
        self.latency_max = self.latency_max.max(latency_ms);
        // DDSketch indexes positive values; a zero or negative latency is a clock artefact and
        // lands in the sketch's lowest bucket.
        self.latency.add(latency_ms.max(0.0));
    }

    #[inline]
    pub fn add_ttft(&mut self, ttft_ms: f64) {
        self.ttft_count += 1;
        self.ttft.add(ttft_ms.max(0.0));
    }

    pub fn merge(&mut self, other: &Aggregate) {
        self.count += other.count;
        self.errors += other.errors;
        self.latency_sum += other.latency_sum;
        self.latency_min = self.latency_min.min(other.latency_min);
        self.latency_max = self.latency_max.max(other.latency_max);
        // Both sketches come from the same operator config, so merging cannot fail.
        let _ = self.latency.merge(&other.latency);
        let _ = self.ttft.merge(&other.ttft);
        self.ttft_count += other.ttft_count;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost_usd += other.cost_usd;
        self.priced_calls += other.priced_calls;
        self.unpriced_calls += other.unpriced_calls;
    }

    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        self.latency.quantile(q).ok().flatten()
    }

    pub fn ttft_quantile(&self, q: f64) -> Option<f64> {
        self.ttft.quantile(q).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let config = SketchConfig::new(0.01, 2048, 1e-9);
        let mut all = Aggregate::new(config);
        let mut left = Aggregate::new(config);
        let mut right = Aggregate::new(config);
        for i in 1..=1000 {
            let v = i as f64;
            all.add_latency(v, i % 10 == 0);
            if i % 2 == 0 {
                left.add_latency(v, i % 10 == 0);
            } else {
                right.add_latency(v, i % 10 == 0);
            }
        }
        left.merge(&right);
        assert_eq!(left.count, all.count);
        assert_eq!(left.errors, 100);
        assert_eq!(left.latency_min, 1.0);
        assert_eq!(left.latency_max, 1000.0);
        assert_eq!(left.latency_quantile(0.99), all.latency_quantile(0.99));
        let p99 = all.latency_quantile(0.99).unwrap();
        assert!((p99 - 990.0).abs() / 990.0 <= 0.011, "p99 {p99}");
    }
}
