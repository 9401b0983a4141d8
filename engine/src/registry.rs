//! The component registry: maps each `type` name to the function that builds it from its config
//! table. Builders run in graph order and see their inputs' schemas, so type mismatches (a
//! window fed something without a latency column) are config errors, found by `validate`.
//! Building never opens connections or files: that happens when the component runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::component::{Operator, Sink, Source};
use crate::config::{ComponentSpec, ConfigError};
use crate::metrics::{ComponentKind, ComponentMetrics};

/// One output of a component: the default one is named `""`; others are referenced in
/// `inputs` as `id.name`.
#[derive(Debug, Clone)]
pub struct OutputPort {
    pub name: String,
    pub schema: SchemaRef,
}

impl OutputPort {
    pub fn default_port(schema: SchemaRef) -> Self {
        Self {
            name: String::new(),
            schema,
        }
    }

    pub fn named(name: &str, schema: SchemaRef) -> Self {
        Self {
            name: name.to_string(),
            schema,
        }
    }
}

/// What a builder is given.
pub struct BuildContext<'s, 'a> {
    pub spec: &'s ComponentSpec<'a>,
    /// The schema of each input, in the order of `inputs`.
    pub input_schemas: Vec<SchemaRef>,
    pub metrics: Arc<ComponentMetrics>,
}

impl BuildContext<'_, '_> {
    /// The schema shared by every input; an input with a different schema is an error.
    pub fn input_schema(&self) -> Result<SchemaRef, ConfigError> {
        let first = self
            .input_schemas
            .first()
            .cloned()
            .ok_or_else(|| self.spec.error("this component needs at least one input"))?;
        for (index, schema) in self.input_schemas.iter().enumerate().skip(1) {
            if schema.fields() != first.fields() {
                return Err(self.spec.error_at_input(
                    index,
                    format!(
                        "input `{}` has a different schema from input `{}`; every input of one component must carry the same kind of rows",
                        self.spec.inputs[index], self.spec.inputs[0]
                    ),
                ));
            }
        }
        Ok(first)
    }
}

pub struct BuiltSource {
    pub source: Box<dyn Source>,
    pub schema: SchemaRef,
}

pub struct BuiltOperator {
    pub operator: Box<dyn Operator>,
    /// The default output first, then named ones.
    pub outputs: Vec<OutputPort>,
}

pub type SourceBuilder =
    Arc<dyn Fn(&BuildContext<'_, '_>) -> Result<BuiltSource, ConfigError> + Send + Sync>;
pub type OperatorBuilder =
    Arc<dyn Fn(&BuildContext<'_, '_>) -> Result<BuiltOperator, ConfigError> + Send + Sync>;
pub type SinkBuilder =
    Arc<dyn Fn(&BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> + Send + Sync>;

/// Every known component type.
#[derive(Clone, Default)]
pub struct Registry {
    sources: BTreeMap<String, SourceBuilder>,
    operators: BTreeMap<String, OperatorBuilder>,
    sinks: BTreeMap<String, SinkBuilder>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_source(
        &mut self,
        type_name: &str,
        builder: impl Fn(&BuildContext<'_, '_>) -> Result<BuiltSource, ConfigError>
            + Send
            + Sync
            + 'static,
    ) {
        self.sources
            .insert(type_name.to_string(), Arc::new(builder));
    }

    pub fn add_operator(
        &mut self,
        type_name: &str,
        builder: impl Fn(&BuildContext<'_, '_>) -> Result<BuiltOperator, ConfigError>
            + Send
            + Sync
            + 'static,
    ) {
        self.operators
            .insert(type_name.to_string(), Arc::new(builder));
    }

    pub fn add_sink(
        &mut self,
        type_name: &str,
        builder: impl Fn(&BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError>
            + Send
            + Sync
            + 'static,
    ) {
        self.sinks.insert(type_name.to_string(), Arc::new(builder));
    }

    /// The type names known for a kind of component, sorted.
    pub fn type_names(&self, kind: ComponentKind) -> Vec<String> {
        match kind {
            ComponentKind::Source => self.sources.keys().cloned().collect(),
            ComponentKind::Operator => self.operators.keys().cloned().collect(),
            ComponentKind::Sink => self.sinks.keys().cloned().collect(),
        }
    }

    fn unknown_type(&self, spec: &ComponentSpec<'_>) -> ConfigError {
        let kind = match spec.kind {
            ComponentKind::Source => "source",
            ComponentKind::Operator => "operator",
            ComponentKind::Sink => "sink",
        };
        spec.error_at_type(format!(
            "unknown {kind} type `{}`; expected one of: {}",
            spec.type_name,
            self.type_names(spec.kind).join(", ")
        ))
    }

    pub(crate) fn source(&self, spec: &ComponentSpec<'_>) -> Result<&SourceBuilder, ConfigError> {
        self.sources
            .get(&spec.type_name)
            .ok_or_else(|| self.unknown_type(spec))
    }

    pub(crate) fn operator(
        &self,
        spec: &ComponentSpec<'_>,
    ) -> Result<&OperatorBuilder, ConfigError> {
        self.operators
            .get(&spec.type_name)
            .ok_or_else(|| self.unknown_type(spec))
    }

    pub(crate) fn sink(&self, spec: &ComponentSpec<'_>) -> Result<&SinkBuilder, ConfigError> {
        self.sinks
            .get(&spec.type_name)
            .ok_or_else(|| self.unknown_type(spec))
    }
}
