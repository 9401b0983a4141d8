//! Builds a pipeline from its config and drives it: one task per component, bounded channels
//! between them, the checkpoint coordinator, and graceful shutdown (sources stop on the
//! shutdown signal and flush; every downstream component then drains, flushes its windows and
//! closes its sinks as its inputs end).

mod checkpoint;
pub mod input;
pub mod output;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::component::{ComponentError, Operator, Sink, Source};
use crate::config::{ConfigError, ConfigErrors, PipelineSpec, RuntimeSettings};
use crate::graph::Graph;
use crate::message::Message;
use crate::metrics::{ComponentKind, ComponentMetrics, ComponentReport, MetricsRegistry};
use crate::registry::{BuildContext, OutputPort, Registry};

pub use checkpoint::{CheckpointHandle, CheckpointStats};
use input::InputSet;
use output::Output;

enum BuiltComponent {
    Source(Box<dyn Source>),
    Operator(Box<dyn Operator>),
    Sink(Box<dyn Sink>),
}

struct Node {
    id: String,
    kind: ComponentKind,
    component: BuiltComponent,
    outputs: Vec<OutputPort>,
    /// (upstream node index, upstream port index) per input.
    inputs: Vec<(usize, usize)>,
    metrics: Arc<ComponentMetrics>,
}

/// A built component, its output ports, and (upstream node, port) per input.
type Built = (BuiltComponent, Vec<OutputPort>, Vec<(usize, usize)>);

/// A pipeline that has been validated and built, ready to run.
pub struct BuiltPipeline {
    pub name: String,
    settings: RuntimeSettings,
    nodes: Vec<Node>,
    metrics: Arc<MetricsRegistry>,
}

/// A component failed while running.
#[derive(Debug, thiserror::Error)]
#[error("{component}: {source}")]
pub struct RuntimeError {
    pub component: String,
    #[source]
    pub source: ComponentError,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub components: Vec<ComponentReport>,
    pub checkpoints: CheckpointStats,
}

impl RunReport {
    pub fn component(&self, id: &str) -> Option<&ComponentReport> {
        self.components.iter().find(|c| c.id == id)
    }
}

/// Validates and builds one pipeline; every error found is returned.
pub fn build(spec: &PipelineSpec<'_>, registry: &Registry) -> Result<BuiltPipeline, ConfigErrors> {
    let graph = Graph::new(spec)?;
    let metrics = MetricsRegistry::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    let count = spec.components.len();
    let mut built: Vec<Option<Built>> = (0..count).map(|_| None).collect();
    let mut failed = vec![false; count];
    for &index in &graph.order {
        let component = &spec.components[index];
        if graph.upstream[index].iter().any(|&up| failed[up]) {
            // Its inputs' schemas are unknown, but an unknown type can still be reported.
            let known = match component.kind {
                ComponentKind::Source => registry.source(component).map(|_| ()),
                ComponentKind::Operator => registry.operator(component).map(|_| ()),
                ComponentKind::Sink => registry.sink(component).map(|_| ()),
            };
            if let Err(error) = known {
                errors.push(error);
            }
            failed[index] = true;
            continue;
        }
        let mut input_schemas: Vec<SchemaRef> = Vec::new();
        let mut inputs = Vec::new();
        let mut input_error = false;
        for (input_index, (input, &up)) in component
            .inputs
            .iter()
            .zip(&graph.upstream[index])
            .enumerate()
        {
            let ports = &built[up].as_ref().expect("inputs are built first").1;
            let wanted = input.port.as_deref().unwrap_or("");
            match ports.iter().position(|p| p.name == wanted) {
                Some(port) => {
                    input_schemas.push(ports[port].schema.clone());
                    inputs.push((up, port));
                }
                None => {
                    let names: Vec<String> = ports
                        .iter()
                        .map(|p| {
                            if p.name.is_empty() {
                                format!("`{}`", input.component)
                            } else {
                                format!("`{}.{}`", input.component, p.name)
                            }
                        })
                        .collect();
                    errors.push(component.error_at_input(
                        input_index,
                        format!(
                            "`{}` has no output `{wanted}`; its outputs are: {}",
                            input.component,
                            names.join(", ")
                        ),
                    ));
                    input_error = true;
                }
            }
        }
        if input_error {
            failed[index] = true;
            continue;
        }
        let component_metrics =
            metrics.register(&component.id, component.kind, &component.type_name);
        let context = BuildContext {
            spec: component,
            input_schemas,
            metrics: component_metrics,
        };
        let result = match component.kind {
            ComponentKind::Source => {
                registry
                    .source(component)
                    .and_then(|b| b(&context))
                    .map(|s| {
                        (
                            BuiltComponent::Source(s.source),
                            vec![OutputPort::default_port(s.schema)],
                        )
                    })
            }
            ComponentKind::Operator => registry
                .operator(component)
                .and_then(|b| b(&context))
                .map(|o| (BuiltComponent::Operator(o.operator), o.outputs)),
            ComponentKind::Sink => registry
                .sink(component)
                .and_then(|b| b(&context))
                .map(|s| (BuiltComponent::Sink(s), Vec::new())),
        };
        match result {
            Ok((built_component, outputs)) => {
                built[index] = Some((built_component, outputs, inputs))
            }
            Err(error) => {
                errors.push(error);
                failed[index] = true;
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(errors));
    }
    // Nodes keep file order so that reports read like the config.
    let nodes = built
        .into_iter()
        .enumerate()
        .map(|(index, built)| {
            let (component, outputs, inputs) = built.expect("every component built");
            let spec = &spec.components[index];
            Node {
                id: spec.id.clone(),
                kind: spec.kind,
                component,
                outputs,
                inputs,
                metrics: metrics.get(&spec.id).expect("registered when built"),
            }
        })
        .collect();
    Ok(BuiltPipeline {
        name: spec.name.clone(),
        settings: spec.runtime.clone(),
        nodes,
        metrics,
    })
}

/// Builds the only pipeline of a config text (for tests, benches and embedding).
pub fn build_from_text(
    name: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    registry: &Registry,
) -> Result<BuiltPipeline, ConfigErrors> {
    let source = crate::config::SourceText::new(name, text, lookup)?;
    let file = source.parse()?;
    let pipeline = file.pipeline(None).map_err(|message| {
        ConfigErrors(vec![ConfigError {
            file: name.to_string(),
            line: 1,
            column: 1,
            component: None,
            message,
        }])
    })?;
    build(pipeline, registry)
}

/// One component of a pipeline's graph, as tools show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopologyNode {
    pub id: String,
    pub kind: ComponentKind,
    /// What feeds it: `id`, or `id.port` for a named output.
    pub inputs: Vec<String>,
}

impl BuiltPipeline {
    /// The graph: every component with its inputs, in build order.
    pub fn topology(&self) -> Vec<TopologyNode> {
        self.nodes
            .iter()
            .map(|node| TopologyNode {
                id: node.id.clone(),
                kind: node.kind,
                inputs: node
                    .inputs
                    .iter()
                    .map(|&(upstream, port)| {
                        let upstream = &self.nodes[upstream];
                        match upstream.outputs.get(port).map(|p| p.name.as_str()) {
                            Some(name) if !name.is_empty() => format!("{}.{name}", upstream.id),
                            _ => upstream.id.clone(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Live metrics of every component, also while running.
    pub fn metrics(&self) -> Arc<MetricsRegistry> {
        self.metrics.clone()
    }

    /// The output schema of a component's default output (for tests and tools).
    pub fn output_schema(&self, id: &str) -> Option<SchemaRef> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.outputs.first())
            .map(|p| p.schema.clone())
    }

    /// Starts every component. Returns a handle to trigger checkpoints, and the run's future.
    pub fn start(
        self,
        shutdown: CancellationToken,
    ) -> (
        CheckpointHandle,
        impl std::future::Future<Output = Result<RunReport, RuntimeError>>,
    ) {
        let settings = self.settings.clone();
        let capacity = settings.channel_capacity;
        let mut outputs: Vec<Output> = self
            .nodes
            .iter()
            .map(|n| Output::detached(n.outputs.len(), n.metrics.clone()))
            .collect();
        let mut receivers: Vec<Vec<mpsc::Receiver<Message>>> =
            self.nodes.iter().map(|_| Vec::new()).collect();
        for (index, node) in self.nodes.iter().enumerate() {
            for &(up, port) in &node.inputs {
                let rx = outputs[up].connect(port, capacity, node.metrics.clone());
                receivers[index].push(rx);
            }
        }
        let sink_count = self
            .nodes
            .iter()
            .filter(|n| n.kind == ComponentKind::Sink)
            .count();
        let (ack_tx, ack_rx) = mpsc::channel(64);
        let (completed_tx, completed_rx) = watch::channel(0u64);
        let (trigger_tx, trigger_rx) = mpsc::channel(1);
        let mut barrier_senders = Vec::new();
        let mut tasks: JoinSet<Result<(), RuntimeError>> = JoinSet::new();
        let failure = shutdown.child_token();
        let tick = settings.tick_interval.0.max(Duration::from_millis(1));
        let mut sink_index = 0;
        for ((node, output), inputs) in self.nodes.into_iter().zip(outputs).zip(receivers) {
            let id = node.id.clone();
            let input_set = InputSet::new(inputs, settings.idle_timeout.0, node.metrics.clone());
            let wrap = move |id: String, result: Result<(), ComponentError>| {
                result.map_err(|source| RuntimeError {
                    component: id,
                    source,
                })
            };
            match node.component {
                BuiltComponent::Source(source) => {
                    // A failed component stops ordinary sources; a fail-open one only stops
                    // on a shutdown request.
                    let stop = if source.fail_open() {
                        shutdown.clone()
                    } else {
                        failure.clone()
                    };
                    let (barrier_tx, barrier_rx) = mpsc::channel(4);
                    barrier_senders.push(barrier_tx);
                    let context = crate::component::SourceContext {
                        id: id.clone(),
                        output,
                        barriers: barrier_rx,
                        completed_checkpoints: completed_rx.clone(),
                        checkpoint_requests: crate::component::CheckpointRequester(
                            trigger_tx.clone(),
                        ),
                        shutdown: stop,
                        metrics: node.metrics.clone(),
                    };
                    tasks.spawn(async move { wrap(id, source.run(context).await) });
                }
                BuiltComponent::Operator(operator) => {
                    tasks.spawn(async move {
                        wrap(
                            id,
                            tasks::run_operator(operator, input_set, output, tick).await,
                        )
                    });
                }
                BuiltComponent::Sink(sink) => {
                    let acks = ack_tx.clone();
                    let index = sink_index;
                    sink_index += 1;
                    let metrics = node.metrics.clone();
                    tasks.spawn(async move {
                        wrap(
                            id,
                            tasks::run_sink(sink, input_set, index, acks, metrics, tick).await,
                        )
                    });
                }
            }
        }
        drop(ack_tx);
        let (handle, coordinator) = checkpoint::Coordinator::new(
            barrier_senders,
            sink_count,
            ack_rx,
            completed_tx,
            completed_rx,
            (trigger_tx, trigger_rx),
            settings.checkpoint_interval.0,
        );
        let coordinator_stop = CancellationToken::new();
        let coordinator_task =
            tokio::spawn(coordinator.run(coordinator_stop.clone(), self.metrics.clone()));
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        let run = async move {
            let mut first_error: Option<RuntimeError> = None;
            while let Some(joined) = tasks.join_next().await {
                let result = joined.unwrap_or_else(|join_error| {
                    Err(RuntimeError {
                        component: "runtime".to_string(),
                        source: ComponentError::other(format!(
                            "a component task panicked: {join_error}"
                        )),
                    })
                });
                if let Err(error) = result {
                    if matches!(error.source, ComponentError::DownstreamClosed)
                        && first_error.is_some()
                    {
                        continue;
                    }
                    tracing::error!(pipeline = %name, component = %error.component, error = %error.source, "component failed; stopping the pipeline");
                    failure.cancel();
                    first_error.get_or_insert(error);
                }
            }
            coordinator_stop.cancel();
            let checkpoints = coordinator_task.await.unwrap_or_default();
            match first_error {
                Some(error) => Err(error),
                None => Ok(RunReport {
                    components: metrics.report(),
                    checkpoints,
                }),
            }
        };
        (handle, run)
    }

    /// Runs until every source has finished or `shutdown` is cancelled and everything drained.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, RuntimeError> {
        let (_handle, run) = self.start(shutdown);
        run.await
    }
}

#[cfg(test)]
mod tests;
