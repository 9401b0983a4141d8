//! The `pipelines.toml` model. Vector-style: `[sources.ID]`, `[operators.ID]` and `[sinks.ID]`
//! tables, each with a `type` and (except sources) `inputs`; optional `[runtime]` settings;
//! optionally several named pipelines under `[pipelines.NAME]`, each with the same shape; and an
//! optional top-level `[api]` table for the HTTP server, kept as spanned TOML for its owner.
//! Component bodies stay as spanned TOML until the registry deserialises them into the
//! component's own typed config, so that every error points at the exact line and column.

mod error;
pub mod interpolate;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub use error::{ConfigError, ConfigErrors};
use interpolate::{interpolate, Interpolated};

use crate::metrics::ComponentKind;
use crate::time::ConfigDuration;

/// The text of a config file, after interpolation, with the means to locate spans in the
/// original.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub name: String,
    original: String,
    interpolated: Interpolated,
}

impl SourceText {
    /// Reads and interpolates a file from disk, using the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: 1,
            column: 1,
            component: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Self::new(name, text, |var| std::env::var(var).ok())
    }

    /// Interpolates `text` with variables from `lookup`.
    pub fn new(
        name: impl Into<String>,
        text: impl Into<String>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let name = name.into();
        let original = text.into();
        match interpolate(&original, lookup) {
            Ok(interpolated) => Ok(Self {
                name,
                original,
                interpolated,
            }),
            Err(errors) => {
                let source = Self {
                    name,
                    interpolated: interpolate("", |_| None).expect("empty text interpolates"),
                    original,
                };
                Err(ConfigErrors(
                    errors
                        .into_iter()
                        .map(|e| source.error_at_original(e.offset, None, e.message))
                        .collect(),
                ))
            }
        }
    }

    /// The interpolated text that is parsed.
    pub fn text(&self) -> &str {
        &self.interpolated.text
    }

    /// 1-based line and column of an offset in the original text.
    fn line_column(&self, original_offset: usize) -> (usize, usize) {
        let offset = original_offset.min(self.original.len());
        let before = &self.original[..self.original.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |p| p + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn error_at_original(
        &self,
        original_offset: usize,
        component: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_column(original_offset);
        ConfigError {
            file: self.name.clone(),
            line,
            column,
            component: component.map(str::to_string),
            message: message.into(),
        }
    }

    /// An error at a span of the interpolated text.
    pub fn error(
        &self,
        span: &Range<usize>,
        component: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        let offset = self.interpolated.original_offset(span.start);
        self.error_at_original(offset, component, message)
    }

    /// Parses the file into pipelines. Every structural error is collected.
    pub fn parse(&self) -> Result<ConfigFile<'_>, ConfigErrors> {
        let root = DeTable::parse(self.text()).map_err(|e| self.toml_error(&e, None, 0..0))?;
        let mut errors = Vec::new();
        let mut pipelines = Vec::new();
        let mut api = None;
        let root_span = root.span();
        let root = root.into_inner();
        let has_top_level_components = ["sources", "operators", "sinks"]
            .iter()
            .any(|section| root.get(*section).is_some());
        if has_top_level_components || root.get("pipelines").is_none() {
            pipelines.push(self.parse_pipeline("main", "", &root, &mut errors));
        }
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "sources" | "operators" | "sinks" | "runtime" => {}
                "api" => match value.get_ref() {
                    DeValue::Table(_) => api = Some(value.clone()),
                    _ => errors.push(self.error(
                        &value.span(),
                        None,
                        "`api` must be a table, e.g. [api] listen = \"0.0.0.0:8001\"",
                    )),
                },
                "pipelines" => match value.get_ref() {
                    DeValue::Table(table) => {
                        for (name, pipeline) in table.iter() {
                            let prefix = format!("pipelines.{}.", name.get_ref());
                            match pipeline.get_ref() {
                                DeValue::Table(body) => pipelines.push(self.parse_pipeline(
                                    name.get_ref(),
                                    &prefix,
                                    body,
                                    &mut errors,
                                )),
                                _ => errors.push(self.error(
                                    &pipeline.span(),
                                    None,
                                    format!("`pipelines.{}` must be a table", name.get_ref()),
                                )),
                            }
                        }
                    }
                    _ => errors.push(self.error(&value.span(), None, "`pipelines` must be a table")),
                },
                other => errors.push(self.error(
                    &key.span(),
                    None,
                    format!(
                        "unknown top-level key `{other}`, expected one of `sources`, `operators`, `sinks`, `runtime`, `pipelines`, `api`"
                    ),
                )),
            }
        }
        if pipelines.iter().all(|p| p.components.is_empty()) && errors.is_empty() {
            errors.push(self.error(
                &(root_span.start..root_span.start),
                None,
                "the file defines no components: add at least a `[sources.ID]` and a `[sinks.ID]`",
            ));
        }
        if errors.is_empty() {
            Ok(ConfigFile {
                source: self,
                pipelines,
                api,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn parse_pipeline<'a>(
        &'a self,
        name: &str,
        prefix: &str,
        table: &DeTable<'a>,
        errors: &mut Vec<ConfigError>,
    ) -> PipelineSpec<'a> {
        let runtime = match table.get("runtime") {
            Some(value) => {
                let deserializer = ValueDeserializer::from(value.clone());
                RuntimeSettings::deserialize(deserializer).unwrap_or_else(|e| {
                    errors.push(self.toml_error(
                        &e,
                        Some(&format!("{prefix}runtime")),
                        value.span(),
                    ));
                    RuntimeSettings::default()
                })
            }
            None => RuntimeSettings::default(),
        };
        let mut components = Vec::new();
        for kind in [
            ComponentKind::Source,
            ComponentKind::Operator,
            ComponentKind::Sink,
        ] {
            let section = kind.section();
            let Some(value) = table.get(section) else {
                continue;
            };
            let DeValue::Table(entries) = value.get_ref() else {
                errors.push(self.error(
                    &value.span(),
                    None,
                    format!(
                        "`{prefix}{section}` must be a table of components, e.g. [{section}.my_id]"
                    ),
                ));
                continue;
            };
            for (id, body) in entries.iter() {
                let path = format!("{prefix}{section}.{}", id.get_ref());
                match ComponentSpec::parse(self, kind, id, body, path) {
                    Ok(spec) => components.push(spec),
                    Err(error) => errors.push(error),
                }
            }
        }
        PipelineSpec {
            name: name.to_string(),
            runtime,
            components,
        }
    }

    /// Converts a toml error into a located one.
    fn toml_error(
        &self,
        error: &toml::de::Error,
        component: Option<&str>,
        fallback: Range<usize>,
    ) -> ConfigError {
        let span = error.span().unwrap_or(fallback);
        self.error(&span, component, error.message().trim().to_string())
    }
}

/// Settings of the runtime, from an optional `[runtime]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Capacity, in batches, of each channel between components.
    pub channel_capacity: usize,
    /// How often checkpoint barriers are injected; `"0s"` turns checkpoints off.
    pub checkpoint_interval: ConfigDuration,
    /// Where operator and source state is saved at each checkpoint (a directory, or
    /// `s3://bucket/prefix`). Unset: no state is saved, and a crash loses open windows.
    pub checkpoint_dir: Option<String>,
    /// How many complete checkpoints to keep; older ones are deleted.
    pub checkpoints_retained: usize,
    /// How often operators and sinks get a processing-time tick.
    pub tick_interval: ConfigDuration,
    /// An input silent for this long stops holding back its consumer's watermark.
    pub idle_timeout: ConfigDuration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            channel_capacity: 16,
            checkpoint_interval: ConfigDuration::from_secs(10),
            checkpoint_dir: None,
            checkpoints_retained: 3,
            tick_interval: ConfigDuration::from_millis(100),
            idle_timeout: ConfigDuration::from_secs(10),
        }
    }
}

/// A parsed file: one or more pipelines.
#[derive(Debug)]
pub struct ConfigFile<'a> {
    pub source: &'a SourceText,
    pub pipelines: Vec<PipelineSpec<'a>>,
    /// The `[api]` table, when present.
    api: Option<Spanned<DeValue<'a>>>,
}

impl<'a> ConfigFile<'a> {
    /// Deserialises the `[api]` table into `T`; `None` when the file has none. Unknown keys and
    /// wrong types come back located at the offending key or value.
    pub fn api_settings<T: DeserializeOwned>(&self) -> Result<Option<T>, ConfigError> {
        let Some(value) = &self.api else {
            return Ok(None);
        };
        let span = value.span();
        T::deserialize(ValueDeserializer::from(value.clone()))
            .map(Some)
            .map_err(|e| self.source.toml_error(&e, Some("api"), span))
    }

    /// An error about the `[api]` table as a whole (located at it).
    pub fn api_error(&self, message: impl Into<String>) -> ConfigError {
        let span = self.api.as_ref().map(|v| v.span()).unwrap_or(0..0);
        self.source.error(&span, Some("api"), message)
    }

    /// The pipeline called `name`, or the only one when `name` is `None`.
    pub fn pipeline(&self, name: Option<&str>) -> Result<&PipelineSpec<'a>, String> {
        let names = || {
            self.pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(name) => self
                .pipelines
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| format!("no pipeline named `{name}`; the file has: {}", names())),
            None if self.pipelines.len() == 1 => Ok(&self.pipelines[0]),
            None => Err(format!(
                "the file has several pipelines ({}); choose one with --pipeline",
                names()
            )),
        }
    }
}

/// One pipeline: its components in file order.
#[derive(Debug)]
pub struct PipelineSpec<'a> {
    pub name: String,
    pub runtime: RuntimeSettings,
    pub components: Vec<ComponentSpec<'a>>,
}

/// A reference to another component's output: `id` (the default output) or `id.port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    pub component: String,
    pub port: Option<String>,
    pub span: Range<usize>,
}

impl InputRef {
    fn parse(text: &str, span: Range<usize>) -> Self {
        match text.split_once('.') {
            Some((component, port)) => Self {
                component: component.to_string(),
                port: Some(port.to_string()),
                span,
            },
            None => Self {
                component: text.to_string(),
                port: None,
                span,
            },
        }
    }
}

impl std::fmt::Display for InputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.port {
            Some(port) => write!(f, "{}.{port}", self.component),
            None => write!(f, "{}", self.component),
        }
    }
}

/// One component's table: its identity, type, inputs, and the rest of its settings, still as
/// spanned TOML for the component's builder to deserialise.
#[derive(Debug, Clone)]
pub struct ComponentSpec<'a> {
    pub kind: ComponentKind,
    pub id: String,
    /// Where it sits in the file: `operators.per_minute`, `pipelines.edge.sinks.out`.
    pub path: String,
    pub type_name: String,
    pub type_span: Range<usize>,
    pub id_span: Range<usize>,
    pub inputs: Vec<InputRef>,
    pub inputs_span: Option<Range<usize>>,
    body: Spanned<DeValue<'a>>,
    source: &'a SourceText,
}

impl<'a> ComponentSpec<'a> {
    fn parse(
        source: &'a SourceText,
        kind: ComponentKind,
        id: &Spanned<std::borrow::Cow<'a, str>>,
        value: &Spanned<DeValue<'a>>,
        path: String,
    ) -> Result<Self, ConfigError> {
        let id_span = id.span();
        let error = |span: &Range<usize>, message: String| source.error(span, Some(&path), message);
        let DeValue::Table(table) = value.get_ref() else {
            return Err(error(
                &value.span(),
                format!("`{path}` must be a table with at least a `type`"),
            ));
        };
        let id_text = id.get_ref().to_string();
        if id_text.is_empty()
            || !id_text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(error(
                &id_span,
                format!("component id `{id_text}` may only contain letters, digits, `_` and `-`"),
            ));
        }
        let mut body = table.clone();
        let (type_name, type_span) = match body.remove("type") {
            Some(value) => match value.get_ref() {
                DeValue::String(text) => (text.to_string(), value.span()),
                _ => return Err(error(&value.span(), "`type` must be a string".to_string())),
            },
            None => {
                return Err(error(
                    &id_span,
                    format!("`{path}` has no `type`: every component needs one"),
                ))
            }
        };
        let (inputs, inputs_span) = match body.remove("inputs") {
            Some(value) => {
                let span = value.span();
                let DeValue::Array(items) = value.get_ref() else {
                    return Err(error(
                        &span,
                        "`inputs` must be an array of component ids, e.g. inputs = [\"calls\"]"
                            .to_string(),
                    ));
                };
                let mut inputs = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(text) => inputs.push(InputRef::parse(text, item.span())),
                        _ => {
                            return Err(error(
                                &item.span(),
                                "each entry of `inputs` must be a string naming a component"
                                    .to_string(),
                            ))
                        }
                    }
                }
                (inputs, Some(span))
            }
            None => (Vec::new(), None),
        };
        match kind {
            ComponentKind::Source if inputs_span.is_some() => {
                return Err(error(
                    inputs_span.as_ref().expect("checked above"),
                    "sources take no `inputs`".to_string(),
                ))
            }
            ComponentKind::Operator | ComponentKind::Sink if inputs.is_empty() => {
                return Err(error(
                    inputs_span.as_ref().unwrap_or(&id_span),
                    format!(
                        "`{path}` needs `inputs` naming at least one source or operator, e.g. inputs = [\"calls\"]"
                    ),
                ))
            }
            _ => {}
        }
        Ok(Self {
            kind,
            id: id_text,
            path,
            type_name,
            type_span,
            id_span,
            inputs,
            inputs_span,
            body: Spanned::new(value.span(), DeValue::Table(body)),
            source,
        })
    }

    /// Deserialises the component's own settings (everything but `type` and `inputs`).
    /// Unknown keys and wrong types come back located at the offending key or value.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let deserializer = ValueDeserializer::from(self.body.clone());
        T::deserialize(deserializer).map_err(|e| {
            self.source
                .toml_error(&e, Some(&self.path), self.type_span.clone())
        })
    }

    /// A fingerprint of the component's type and settings (formatting and comments aside):
    /// checkpoints store it so that a restart restores state only into a component whose
    /// configuration has not changed.
    pub fn fingerprint(&self) -> String {
        let normalised = toml::Value::deserialize(ValueDeserializer::from(self.body.clone()))
            .map(|value| value.to_string())
            .unwrap_or_default();
        let text = format!("{}\n{normalised}", self.type_name);
        format!(
            "{:08x}{:08x}",
            crc32fast::hash(text.as_bytes()),
            text.len() as u32
        )
    }

    /// A path a setting names, relative to the config file's directory (as written when
    /// absolute, or when the config did not come from a file).
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let file = Path::new(&self.source.name);
        match file.parent().filter(|_| file.is_file()) {
            Some(directory) => directory.join(path),
            None => path.to_path_buf(),
        }
    }

    /// An error about the component as a whole (located at its `type`).
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        self.source
            .error(&self.type_span, Some(&self.path), message)
    }

    /// An error located at one of the component's own keys (or its `type` if absent).
    pub fn error_at_key(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let span = match self.body.get_ref() {
            DeValue::Table(table) => table.get(key).map(|v| v.span()),
            _ => None,
        }
        .unwrap_or_else(|| self.type_span.clone());
        self.source.error(&span, Some(&self.path), message)
    }

    /// An error located at a nested setting: `path` walks tables by key and arrays by index
    /// (e.g. `["detectors", "1", "threshold"]`), stopping at the deepest part that exists.
    pub fn error_at_path(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        let mut span = self.type_span.clone();
        let mut value = self.body.get_ref();
        for part in path {
            let next = match value {
                DeValue::Table(table) => table.get(*part),
                DeValue::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(found) => {
                    span = found.span();
                    value = found.get_ref();
                }
                None => break,
            }
        }
        self.source.error(&span, Some(&self.path), message)
    }

    /// An error located at entry `index` of `inputs`.
    pub fn error_at_input(&self, index: usize, message: impl Into<String>) -> ConfigError {
        let span = self
            .inputs
            .get(index)
            .map(|i| i.span.clone())
            .or_else(|| self.inputs_span.clone())
            .unwrap_or_else(|| self.id_span.clone());
        self.source.error(&span, Some(&self.path), message)
    }

    /// An error located at the type name (e.g. an unknown type).
    pub fn error_at_type(&self, message: impl Into<String>) -> ConfigError {
        self.error(message)
    }
}

#[cfg(test)]
mod tests;
