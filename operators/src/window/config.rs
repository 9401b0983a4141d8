//! Settings of the `window` operator, with defaults, and their checks.

use engine::time::ConfigDuration;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Back-to-back windows of `size`.
    #[default]
    Tumbling,
    /// Windows of `size` starting every `slide` (sliding windows).
    Hopping,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(default)]
    pub kind: WindowKind,
    pub size: ConfigDuration,
    /// Hopping windows only: how far apart window starts are. `size` must be a multiple.
    pub slide: Option<ConfigDuration>,
    /// Fields that make up the key; one row per window and key.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// Latency and TTFT quantiles to compute, in (0, 1).
    #[serde(default = "default_quantiles")]
    pub quantiles: Vec<f64>,
    /// DDSketch relative accuracy of every quantile.
    #[serde(default = "default_relative_accuracy")]
    pub relative_accuracy: f64,
    /// Watermark = the largest event time seen minus this bound.
    #[serde(default = "default_out_of_orderness")]
    pub out_of_orderness: ConfigDuration,
    /// How long after a window has closed a late event still updates and re-emits it.
    #[serde(default)]
    pub allowed_lateness: ConfigDuration,
    /// With no events for this long (processing time) while every input's source is idle (has
    /// nothing to deliver, as opposed to being held back), event time is taken to advance with
    /// the wall clock, so the windows of a quiet stream still close.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Outcomes that count as errors.
    #[serde(default = "default_error_outcomes")]
    pub error_outcomes: Vec<String>,
    /// Distinct keys held at once (over the open windows); past it new keys go to the `other`
    /// key, or are dropped (`on_max_keys`), counted and warned about.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    #[serde(default)]
    pub on_max_keys: OnMaxKeys,
    /// Rows stamped further ahead of the wall clock than this never move the watermark: they
    /// go to the `late` output and are counted in `future_events`.
    #[serde(default = "default_max_future_skew")]
    pub max_future_skew: ConfigDuration,
}

/// What happens to a row whose key is new once `max_keys` keys are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMaxKeys {
    /// Counted under the key whose every field is `other`.
    #[default]
    Other,
    /// Left out of the windows (and counted).
    Drop,
}

fn default_max_keys() -> usize {
    10_000
}

fn default_max_future_skew() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}

fn default_key() -> Vec<String> {
    vec!["model".to_string(), "endpoint".to_string()]
}

pub fn default_quantiles() -> Vec<f64> {
    vec![0.5, 0.9, 0.95, 0.99]
}

fn default_relative_accuracy() -> f64 {
    0.01
}

fn default_out_of_orderness() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

fn default_error_outcomes() -> Vec<String> {
    vec![
        "server_error".to_string(),
        "timeout".to_string(),
        "upstream_unreachable".to_string(),
    ]
}

/// A problem with one setting: (the key, the message).
pub type SettingError = (&'static str, String);

impl WindowConfig {
    /// The pane length: windows are unions of panes, so each event updates one pane only.
    pub fn pane_micros(&self) -> i64 {
        match self.kind {
            WindowKind::Tumbling => self.size.as_micros(),
            WindowKind::Hopping => self.slide.map_or(self.size.as_micros(), |s| s.as_micros()),
        }
    }

    pub fn check(&self) -> Result<(), SettingError> {
        let size = self.size.as_micros();
        if size <= 0 {
            return Err(("size", "`size` must be longer than zero".to_string()));
        }
        match (self.kind, self.slide) {
            (WindowKind::Tumbling, Some(_)) => {
                return Err((
                    "slide",
                    "`slide` applies to hopping windows only; set kind = \"hopping\" or remove it"
                        .to_string(),
                ))
            }
            (WindowKind::Hopping, None) => {
                return Err((
                    "kind",
                    "hopping windows need `slide`, e.g. size = \"1m\", slide = \"10s\"".to_string(),
                ))
            }
            (WindowKind::Hopping, Some(slide)) => {
                let slide = slide.as_micros();
                if slide <= 0 || slide > size || size % slide != 0 {
                    return Err((
                        "slide",
                        format!(
                            "`slide` must be longer than zero and divide `size` ({}) exactly",
                            self.size
                        ),
                    ));
                }
            }
            (WindowKind::Tumbling, None) => {}
        }
        if self.quantiles.is_empty() || self.quantiles.iter().any(|q| !(*q > 0.0 && *q < 1.0)) {
            return Err((
                "quantiles",
                "`quantiles` must be a non-empty list of numbers between 0 and 1 (exclusive), e.g. [0.5, 0.99]"
                    .to_string(),
            ));
        }
        if !(self.relative_accuracy > 0.0 && self.relative_accuracy < 1.0) {
            return Err((
                "relative_accuracy",
                "`relative_accuracy` must be between 0 and 1 (exclusive), e.g. 0.01 for 1%"
                    .to_string(),
            ));
        }
        if self.max_keys == 0 {
            return Err(("max_keys", "`max_keys` must be at least 1".to_string()));
        }
        for outcome in &self.error_outcomes {
            if engine::schema::Outcome::parse(outcome).is_none() {
                return Err((
                    "error_outcomes",
                    format!(
                        "unknown outcome `{outcome}`; expected some of: {}",
                        engine::schema::Outcome::ALL.map(|o| o.as_str()).join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}
