//! `generator`: synthetic api_call events at a configured rate, over configured models and
//! endpoints, with latency, TTFT and token distributions, a background error rate, and
//! injected incidents (latency spike, error burst, traffic drop) at configured offsets.
//! `clock = "wall"` stamps events with the wall clock and paces them; `clock = "simulated"`
//! starts event time at `start_time` and generates as fast as it can (for tests, benchmarks
//! and backfills).

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentResult, Source, SourceContext};
use engine::config::ConfigError;
use engine::message::{Message, Watermark};
use engine::registry::{BuildContext, BuiltSource};
use engine::schema::api_call::{api_call_schema, ApiCall, ApiCallBatchBuilder, Outcome};
use engine::time::{now_micros, parse_rfc3339_micros, ConfigDuration};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal, Normal};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    #[default]
    Wall,
    Simulated,
}

/// A latency-like distribution in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case", deny_unknown_fields)]
pub enum LatencyDistribution {
    /// Right-skewed, like real service latency: median and log-space sigma.
    LogNormal {
        median_ms: f64,
        sigma: f64,
    },
    Normal {
        mean_ms: f64,
        stddev_ms: f64,
    },
    Exponential {
        mean_ms: f64,
    },
    Uniform {
        min_ms: f64,
        max_ms: f64,
    },
    Constant {
        ms: f64,
    },
}

impl LatencyDistribution {
    fn check(&self) -> Result<(), String> {
        let ok = match *self {
            LatencyDistribution::LogNormal { median_ms, sigma } => median_ms > 0.0 && sigma >= 0.0,
            LatencyDistribution::Normal { mean_ms, stddev_ms } => {
                mean_ms >= 0.0 && stddev_ms >= 0.0
            }
            LatencyDistribution::Exponential { mean_ms } => mean_ms > 0.0,
            LatencyDistribution::Uniform { min_ms, max_ms } => min_ms >= 0.0 && max_ms >= min_ms,
            LatencyDistribution::Constant { ms } => ms >= 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("invalid distribution parameters: {self:?}"))
        }
    }

    /// Draws one value (never negative).
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        let value = match *self {
            LatencyDistribution::LogNormal { median_ms, sigma } => {
                LogNormal::new(median_ms.ln(), sigma)
                    .map(|d| d.sample(rng))
                    .unwrap_or(median_ms)
            }
            LatencyDistribution::Normal { mean_ms, stddev_ms } => Normal::new(mean_ms, stddev_ms)
                .map(|d| d.sample(rng))
                .unwrap_or(mean_ms),
            LatencyDistribution::Exponential { mean_ms } => Exp::new(1.0 / mean_ms)
                .map(|d| d.sample(rng))
                .unwrap_or(mean_ms),
            LatencyDistribution::Uniform { min_ms, max_ms } => {
                if max_ms > min_ms {
                    rng.random_range(min_ms..max_ms)
                } else {
                    min_ms
                }
            }
            LatencyDistribution::Constant { ms } => ms,
        };
        value.max(0.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Latency (and TTFT) multiplied by `factor`.
    LatencySpike,
    /// Error rate raised to `error_rate`.
    ErrorBurst,
    /// Traffic multiplied by `factor` (e.g. 0.1 keeps 10%).
    TrafficDrop,
}

/// An incident injected between `at` and `at + duration` after the generator starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub kind: IncidentKind,
    pub at: ConfigDuration,
    pub duration: ConfigDuration,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Only these models are affected (all when empty).
    #[serde(default)]
    pub models: Vec<String>,
    /// Only these endpoints are affected (all when empty).
    #[serde(default)]
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRange {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Events per second.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Stop after this many events (runs until shutdown when absent).
    pub count: Option<u64>,
    #[serde(default)]
    pub clock: Clock,
    /// With `clock = "simulated"`: the first event's time (RFC 3339). Default: now.
    pub start_time: Option<String>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_models")]
    pub models: Vec<String>,
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// Fraction of calls that fail with a server error outside incidents.
    #[serde(default = "default_error_rate")]
    pub error_rate: f64,
    /// Fraction of calls that time out outside incidents.
    #[serde(default)]
    pub timeout_rate: f64,
    #[serde(default = "default_latency")]
    pub latency: LatencyDistribution,
    /// Fraction of calls that stream, and so have a time to first token.
    #[serde(default = "default_streaming_ratio")]
    pub streaming_ratio: f64,
    /// TTFT as a fraction of the call's latency.
    #[serde(default = "default_ttft_fraction")]
    pub ttft_fraction: f64,
    #[serde(default = "default_input_tokens")]
    pub input_tokens: TokenRange,
    #[serde(default = "default_output_tokens")]
    pub output_tokens: TokenRange,
    #[serde(default)]
    pub incidents: Vec<Incident>,
    /// Seed for reproducible output.
    pub seed: Option<u64>,
}

fn default_rate() -> f64 {
    100.0
}
fn default_batch_size() -> usize {
    1024
}
fn default_models() -> Vec<String> {
    vec!["gpt-4o".into(), "llama-3-70b".into(), "resnet-50".into()]
}
fn default_endpoints() -> Vec<String> {
    vec!["/v1/chat/completions".into(), "/v1/embeddings".into()]
}
fn default_error_rate() -> f64 {
    0.01
}
fn default_latency() -> LatencyDistribution {
    LatencyDistribution::LogNormal {
        median_ms: 120.0,
        sigma: 0.5,
    }
}
fn default_streaming_ratio() -> f64 {
    0.5
}
fn default_ttft_fraction() -> f64 {
    0.25
}
fn default_input_tokens() -> TokenRange {
    TokenRange { min: 10, max: 2000 }
}
fn default_output_tokens() -> TokenRange {
    TokenRange { min: 1, max: 800 }
}

impl GeneratorConfig {
    /// Checks the settings; an error names the key at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err((
                "rate",
                "`rate` must be a positive number of events per second".into(),
            ));
        }
        if self.batch_size == 0 {
            return Err(("batch_size", "`batch_size` must be at least 1".into()));
        }
        if self.models.is_empty() || self.endpoints.is_empty() {
            return Err((
                "models",
                "`models` and `endpoints` must not be empty".into(),
            ));
        }
        for (key, value) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("streaming_ratio", self.streaming_ratio),
            ("ttft_fraction", self.ttft_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err((key, format!("`{key}` must be between 0 and 1")));
            }
        }
        self.latency.check().map_err(|m| ("latency", m))?;
        if self.input_tokens.min > self.input_tokens.max {
            return Err(("input_tokens", "`min` must not exceed `max`".into()));
        }
        if self.output_tokens.min > self.output_tokens.max {
            return Err(("output_tokens", "`min` must not exceed `max`".into()));
        }
        for incident in &self.incidents {
            let needs = match incident.kind {
                IncidentKind::LatencySpike | IncidentKind::TrafficDrop => incident.factor.is_none(),
                IncidentKind::ErrorBurst => incident.error_rate.is_none(),
            };
            if needs {
                return Err((
                    "incidents",
                    format!(
                        "a {:?} incident needs {}",
                        incident.kind,
                        if incident.kind == IncidentKind::ErrorBurst {
                            "`error_rate`"
                        } else {
                            "`factor`"
                        }
                    ),
                ));
            }
        }
        if let Some(start) = &self.start_time {
            if parse_rfc3339_micros(start).is_none() {
                return Err((
                    "start_time",
                    format!("`start_time` {start:?} is not RFC 3339"),
                ));
            }
        }
        Ok(())
    }
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltSource, ConfigError> {
    let config: GeneratorConfig = ctx.spec.settings()?;
    config
        .check()
        .map_err(|(key, message)| ctx.spec.error_at_key(key, message))?;
    Ok(BuiltSource {
        source: Box::new(Generator::new(config)),
        schema: api_call_schema(),
    })
}

/// Produces calls deterministically for a seed; usable without a runtime (benches).
pub struct Generator {
    config: GeneratorConfig,
    rng: StdRng,
    produced: u64,
    /// Event time of the first event.
    origin: i64,
    interval_micros: f64,
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let origin = config
            .start_time
            .as_deref()
            .and_then(parse_rfc3339_micros)
            .unwrap_or_else(now_micros);
        let interval_micros = 1_000_000.0 / config.rate;
        Self {
            config,
            rng,
            produced: 0,
            origin,
            interval_micros,
        }
    }

    /// The event time of the `n`-th scheduled event.
    fn scheduled_time(&self, n: u64) -> i64 {
        self.origin + (n as f64 * self.interval_micros) as i64
    }

    fn remaining(&self) -> u64 {
        self.config
            .count
            .map_or(u64::MAX, |c| c.saturating_sub(self.produced))
    }

    /// Generates the scheduled events with times before `until` (at most `batch_size`).
    pub fn next_batch(
        &mut self,
        until: i64,
        builder: &mut ApiCallBatchBuilder,
    ) -> Option<RecordBatch> {
        let limit = (self.config.batch_size as u64).min(self.remaining());
        let mut made = 0;
        while made < limit {
            let time = self.scheduled_time(self.produced);
            if time >= until {
                break;
            }
            self.produced += 1;
            made += 1;
            if let Some(call) = self.make_call(time) {
                builder.push(&call);
            }
        }
        (!builder.is_empty()).then(|| builder.finish())
    }

    pub fn is_done(&self) -> bool {
        self.remaining() == 0
    }

    fn active<'a>(
        &'a self,
        time: i64,
        model: &'a str,
        endpoint: &'a str,
    ) -> impl Iterator<Item = &'a Incident> + 'a {
        let offset = time - self.origin;
        self.config.incidents.iter().filter(move |i| {
            let start = i.at.as_micros();
            offset >= start
                && offset < start + i.duration.as_micros()
                && (i.models.is_empty() || i.models.iter().any(|m| m == model))
                && (i.endpoints.is_empty() || i.endpoints.iter().any(|e| e == endpoint))
        })
    }

    fn make_call(&mut self, time: i64) -> Option<ApiCall> {
        let model_index = self.rng.random_range(0..self.config.models.len());
        let endpoint_index = self.rng.random_range(0..self.config.endpoints.len());
        let model = self.config.models[model_index].clone();
        let endpoint = self.config.endpoints[endpoint_index].clone();
        let mut latency_factor = 1.0;
        let mut error_rate = self.config.error_rate;
        let mut keep = 1.0;
        for incident in self.active(time, &model, &endpoint) {
            match incident.kind {
                IncidentKind::LatencySpike => latency_factor *= incident.factor.unwrap_or(1.0),
                IncidentKind::ErrorBurst => {
                    error_rate = error_rate.max(incident.error_rate.unwrap_or(0.0))
                }
                IncidentKind::TrafficDrop => keep *= incident.factor.unwrap_or(1.0),
            }
        }
        if keep < 1.0 && self.rng.random::<f64>() >= keep {
            return None;
        }
        let latency = self.config.latency.sample(&mut self.rng) * latency_factor;
        let draw: f64 = self.rng.random();
        let (outcome, status) = if draw < self.config.timeout_rate {
            (Outcome::Timeout, None)
        } else if draw < self.config.timeout_rate + error_rate {
            (
                Outcome::ServerError,
                Some(if self.rng.random_bool(0.5) { 500 } else { 503 }),
            )
        } else {
            (Outcome::Ok, Some(200))
        };
        let streaming = self.rng.random::<f64>() < self.config.streaming_ratio;
        let ok = outcome == Outcome::Ok;
        let input_tokens = self
            .rng
            .random_range(self.config.input_tokens.min..=self.config.input_tokens.max);
        let output_tokens = self
            .rng
            .random_range(self.config.output_tokens.min..=self.config.output_tokens.max);
        Some(ApiCall {
            event_time: time,
            request_id: format!("gen-{:016x}", self.rng.random::<u64>()),
            model: Some(model),
            endpoint: Some(endpoint),
            method: Some("POST".to_string()),
            status_code: status,
            outcome,
            latency_ms: latency,
            ttfb_ms: Some(latency * self.config.ttft_fraction * 0.8),
            ttft_ms: (streaming && ok).then_some(latency * self.config.ttft_fraction),
            request_bytes: Some(200 + u64::from(input_tokens) * 4),
            response_bytes: ok.then_some(150 + u64::from(output_tokens) * 4),
            input_tokens: ok.then_some(input_tokens),
            output_tokens: ok.then_some(output_tokens),
            output_tokens_estimated: None,
            output_tokens_per_second: None,
            client_id: None,
            upstream: Some("generator".to_string()),
            ..Default::default()
        })
    }
}

#[async_trait]
impl Source for Generator {
    async fn run(mut self: Box<Self>, mut ctx: SourceContext) -> ComponentResult {
        let mut builder = ApiCallBatchBuilder::with_capacity(self.config.batch_size);
        let wall_start = now_micros();
        let tick = Duration::from_millis(20);
        loop {
            if ctx.shutdown.is_cancelled() {
                break;
            }
            while let Ok(barrier) = ctx.barriers.try_recv() {
                ctx.output.send_control(Message::Barrier(barrier)).await?;
            }
            let until = match self.config.clock {
                Clock::Simulated => i64::MAX,
                Clock::Wall => self.origin + (now_micros() - wall_start),
            };
            match self.next_batch(until, &mut builder) {
                Some(batch) => {
                    ctx.output.send_batch(0, batch).await?;
                    // Events are generated in time order: everything before the next scheduled
                    // event has been sent.
                    let next = self.scheduled_time(self.produced);
                    ctx.output
                        .send_control(Message::Watermark(Watermark(next - 1)))
                        .await?;
                }
                None if self.config.clock == Clock::Wall && !self.is_done() => {
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(tick) => {}
                    }
                }
                None => {}
            }
            if self.is_done() {
                break;
            }
            if self.config.clock == Clock::Simulated {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> GeneratorConfig {
        toml::from_str(&format!(
            "rate = 100.0\nclock = \"simulated\"\nstart_time = \"2026-01-01T00:00:00Z\"\nseed = 7\n{extra}"
        ))
        .unwrap()
    }

    fn all(generator: &mut Generator) -> Vec<ApiCall> {
        let mut builder = ApiCallBatchBuilder::default();
        let mut calls = Vec::new();
        while let Some(batch) = generator.next_batch(i64::MAX, &mut builder) {
            calls.extend(engine::schema::api_call::batch_to_api_calls(&batch).unwrap());
            if generator.is_done() {
                break;
            }
        }
        calls
    }

    #[test]
    fn simulated_clock_spaces_events_by_the_rate_and_is_reproducible() {
        let mut a = Generator::new(config("count = 500"));
        let mut b = Generator::new(config("count = 500"));
        let calls = all(&mut a);
        assert_eq!(calls.len(), 500);
        assert_eq!(calls, all(&mut b));
        let origin = parse_rfc3339_micros("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(calls[0].event_time, origin);
        assert_eq!(calls[100].event_time, origin + 1_000_000);
    }

    #[test]
    fn incidents_change_latency_errors_and_traffic_in_their_interval() {
        let mut generator = Generator::new(config(
            r#"count = 6000
error_rate = 0.0
latency = { distribution = "constant", ms = 100.0 }
incidents = [
  { kind = "latency_spike", at = "10s", duration = "10s", factor = 5.0 },
  { kind = "error_burst", at = "20s", duration = "10s", error_rate = 0.5 },
  { kind = "traffic_drop", at = "40s", duration = "10s", factor = 0.1 },
]"#,
        ));
        let calls = all(&mut generator);
        let origin = parse_rfc3339_micros("2026-01-01T00:00:00Z").unwrap();
        let in_range = |from: i64, to: i64| {
            calls.iter().filter(move |c| {
                c.event_time >= origin + from * 1_000_000 && c.event_time < origin + to * 1_000_000
            })
        };
        assert!(in_range(0, 10).all(|c| c.latency_ms == 100.0));
        assert!(in_range(10, 20).all(|c| c.latency_ms == 500.0));
        let burst: Vec<_> = in_range(20, 30).collect();
        let errors = burst
            .iter()
            .filter(|c| c.outcome == Outcome::ServerError)
            .count();
        assert!(
            (350..650).contains(&errors),
            "{errors} errors of {}",
            burst.len()
        );
        assert_eq!(
            in_range(30, 40)
                .filter(|c| c.outcome != Outcome::Ok)
                .count(),
            0
        );
        let dropped = in_range(40, 50).count();
        assert!((50..160).contains(&dropped), "{dropped} calls kept of 1000");
        assert_eq!(in_range(50, 60).count(), 1000);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let zero_rate: GeneratorConfig = toml::from_str("rate = 0.0").unwrap();
        assert_eq!(zero_rate.check().unwrap_err().0, "rate");
        let bad: GeneratorConfig = toml::from_str(
            "incidents = [{ kind = \"error_burst\", at = \"1s\", duration = \"1s\" }]",
        )
        .unwrap();
        assert_eq!(bad.check().unwrap_err().0, "incidents");
    }
}
