//! One alert rule as written in pipelines.toml, and its compiled form: a SQL condition over
//! the window row (`p99_latency_ms > 1000 AND count >= 20`, with `anomaly.<detector>` for an
//! anomaly flag), or an absence check (no row for a key for `absent_for`); `for`,
//! `keep_firing_for`, severity, labels and annotation templates.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arrow::datatypes::{DataType, SchemaRef};
use engine::time::ConfigDuration;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::state::Timing;
use super::template::Template;
use crate::filter::{compile, Filter};

/// A rule as written: in pipelines.toml, or as JSON through the API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The alert's name (`alertname`).
    pub name: String,
    /// A SQL condition over the row's fields; `anomaly.<name>` is detector `<name>`'s flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Shorthand for `condition = "anomaly.<name>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
    /// Fires for a key that has had no row for this long (in event time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_for: Option<ConfigDuration>,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", default)]
    pub for_duration: ConfigDuration,
    /// How long a firing alert keeps firing after its condition stops holding.
    #[serde(default)]
    pub keep_firing_for: ConfigDuration,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The field reported as the alert's value; default: the first numeric field the
    /// condition names (for anomaly rules, the scored field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn default_severity() -> String {
    "warning".to_string()
}

/// What makes a rule's condition hold.
pub enum Check {
    Condition(Filter),
    Absent { after_micros: i64 },
}

/// A compiled rule.
pub struct Rule {
    pub name: String,
    pub check: Check,
    pub timing: Timing,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: Vec<(String, Template)>,
    /// The input column whose value the alert reports.
    pub value_column: Option<usize>,
}

/// An error in one setting of a rule: (setting, message).
pub type RuleError = (&'static str, String);

fn anomaly_reference() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r"\banomaly\.([A-Za-z_][A-Za-z0-9_]*)")
            .unwrap_or_else(|e| panic!("pattern: {e}"))
    })
}

fn identifiers() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r"[A-Za-z_][A-Za-z0-9_]*").unwrap_or_else(|e| panic!("pattern: {e}"))
    })
}

fn is_number(schema: &SchemaRef, column: usize) -> bool {
    let data_type = schema.field(column).data_type();
    data_type.is_numeric() && data_type != &DataType::Boolean
}

impl Rule {
    /// Compiles `config` against the input `schema`; `key_names` are the key fields (labels).
    pub fn compile(
        config: &RuleConfig,
        schema: &SchemaRef,
        key_names: &[String],
    ) -> Result<Rule, RuleError> {
        if config.name.trim().is_empty() {
            return Err((
                "name",
                "a rule needs a name, e.g. \"HighP99Latency\"".into(),
            ));
        }
        let given = [
            config.condition.is_some(),
            config.anomaly.is_some(),
            config.absent_for.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err((
                "condition",
                "give exactly one of `condition` (e.g. \"p99_latency_ms > 1000\"), `anomaly` (a detector name) or `absent_for` (e.g. \"5m\")".into(),
            ));
        }
        let (check, default_value) = if let Some(after) = config.absent_for {
            if after.as_micros() <= 0 {
                return Err(("absent_for", "must be longer than zero".into()));
            }
            (
                Check::Absent {
                    after_micros: after.as_micros(),
                },
                None,
            )
        } else {
            let (text, setting) = match (&config.condition, &config.anomaly) {
                (Some(condition), _) => (condition.clone(), "condition"),
                (None, Some(detector)) => (format!("anomaly.{detector}"), "anomaly"),
                (None, None) => return Err(("condition", "a condition is needed".into())),
            };
            let mut default_value = None;
            for reference in anomaly_reference().captures_iter(&text) {
                let detector = &reference[1];
                let flag = crate::anomaly::flag_column(detector);
                if schema.index_of(&flag).is_err() {
                    return Err((
                        setting,
                        format!("`anomaly.{detector}` needs an anomaly detector named `{detector}` upstream (a `{flag}` field); the input has none"),
                    ));
                }
                if default_value.is_none() {
                    default_value = schema
                        .index_of(detector)
                        .ok()
                        .filter(|&i| is_number(schema, i))
                        .or_else(|| {
                            schema
                                .index_of(&crate::anomaly::score_column(detector))
                                .ok()
                        });
                }
            }
            let sql = anomaly_reference()
                .replace_all(&text, "anomaly_${1}_flag")
                .into_owned();
            let filter = compile(&sql, schema).map_err(|message| (setting, message))?;
            if default_value.is_none() {
                default_value = identifiers()
                    .find_iter(&sql)
                    .filter_map(|m| schema.index_of(m.as_str()).ok())
                    .find(|&i| is_number(schema, i));
            }
            (Check::Condition(filter), default_value)
        };
        let value_column = match &config.value {
            Some(name) => {
                let column = schema.index_of(name).map_err(|_| {
                    (
                        "value",
                        format!(
                            "no field `{name}` in the input; it has: {}",
                            engine::schema::field_names(schema)
                        ),
                    )
                })?;
                if !is_number(schema, column) {
                    return Err(("value", format!("`{name}` is not a number")));
                }
                Some(column)
            }
            None => default_value,
        };
        let mut labels = config.labels.clone();
        labels.insert("alertname".into(), config.name.clone());
        labels.insert("severity".into(), config.severity.clone());
        let known = |name: &str| {
            matches!(name, "value" | "alertname" | "rule" | "severity")
                || labels.contains_key(name)
                || key_names.iter().any(|k| k == name)
                || schema.index_of(name).is_ok()
        };
        let annotations = config
            .annotations
            .iter()
            .map(|(name, text)| {
                Template::parse(text, &known)
                    .map(|template| (name.clone(), template))
                    .map_err(|message| ("annotations", format!("annotation `{name}`: {message}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            name: config.name.clone(),
            check,
            timing: Timing {
                for_micros: config.for_duration.as_micros(),
                keep_firing_for_micros: config.keep_firing_for.as_micros(),
            },
            severity: config.severity.clone(),
            labels,
            annotations,
            value_column,
        })
    }
}
