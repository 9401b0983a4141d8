//! Builds a pipeline from its config and drives it: one task per component, bounded channels
//! between them, the checkpoint coordinator, and graceful shutdown (sources stop on the
//! shutdown signal and flush; every downstream component then drains, flushes its windows and
//! closes its sinks as its inputs end).

mod checkpoint;
pub mod idle;
pub mod input;
pub mod output;
mod restore;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::component::{CommitPlan, ComponentError, Operator, Sink, Source, StateReporter};
use crate::config::{ConfigError, ConfigErrors, PipelineSpec, RuntimeSettings};
use crate::graph::Graph;
use crate::message::Message;
use crate::metrics::{ComponentKind, ComponentMetrics, ComponentReport, MetricsRegistry};
use crate::registry::{BuildContext, OutputPort, Registry};
use crate::state::CheckpointStore;

pub use checkpoint::{CheckpointHandle, CheckpointStats, Reporter};
use input::InputSet;
use output::Output;

enum BuiltComponent {
    Source(Box<dyn Source>),
    Operator(Box<dyn Operator>),
    Sink(Box<dyn Sink>),
}

/// A wired component waiting for the run to start it.
enum Ready {
    Source(Box<dyn Source>, Box<crate::component::SourceContext>),
    Operator(Box<dyn Operator>, InputSet, Output, Reporter),
    Sink(Box<dyn Sink>, InputSet, Reporter),
}

impl Ready {
    /// The component's line to the checkpoint coordinator, if it takes part.
    fn reporter(&self) -> Option<Reporter> {
        match self {
            Ready::Source(_, context) => context.state.0.clone(),
            Ready::Operator(.., reporter) | Ready::Sink(.., reporter) => Some(reporter.clone()),
        }
    }
}

struct ReadyNode {
    id: String,
    fingerprint: String,
    metrics: Arc<ComponentMetrics>,
    task: Ready,
}

struct Node {
    id: String,
    type_name: String,
    fingerprint: String,
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
                type_name: spec.type_name.clone(),
                fingerprint: spec.fingerprint(),
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

    /// Wires every component. Returns a handle to trigger checkpoints, and the run's future,
    /// which first restores the newest complete checkpoint (when the pipeline has a
    /// `checkpoint_dir`) and then starts every component.
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
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let (completed_tx, completed_rx) = watch::channel(0u64);
        let (trigger_tx, trigger_rx) = mpsc::channel(1);
        let (started_tx, started_rx) = watch::channel(false);
        let mut barrier_senders = Vec::new();
        let mut participants = Vec::new();
        let mut ready = Vec::new();
        let mut idle_watchers = Vec::new();
        let idle_timeout = settings.idle_timeout.0;
        let tick = settings.tick_interval.0.max(Duration::from_millis(1));
        for ((node, output), inputs) in self.nodes.into_iter().zip(outputs).zip(receivers) {
            let input_set = InputSet::new(inputs, node.metrics.clone());
            let mut register = |stateful: bool| {
                participants.push(checkpoint::Participant {
                    id: node.id.clone(),
                    type_name: node.type_name.clone(),
                    fingerprint: node.fingerprint.clone(),
                    stateful,
                });
                Reporter::new(participants.len() - 1, report_tx.clone())
            };
            let task = match node.component {
                BuiltComponent::Source(source) => {
                    if output.is_connected() {
                        idle_watchers.push((output.activity.clone(), output.weak_edges()));
                    }
                    let reporter = source.saves_state().then(|| register(true));
                    let (barrier_tx, barrier_rx) = mpsc::channel(4);
                    barrier_senders.push(barrier_tx);
                    let context = crate::component::SourceContext {
                        id: node.id.clone(),
                        output,
                        barriers: barrier_rx,
                        completed_checkpoints: completed_rx.clone(),
                        checkpoint_requests: crate::component::CheckpointRequester(
                            trigger_tx.clone(),
                        ),
                        shutdown: CancellationToken::new(), // replaced when started
                        metrics: node.metrics.clone(),
                        restored_state: None,
                        state: StateReporter(reporter),
                    };
                    Ready::Source(source, Box::new(context))
                }
                BuiltComponent::Operator(operator) => {
                    Ready::Operator(operator, input_set, output, register(true))
                }
                BuiltComponent::Sink(sink) => Ready::Sink(sink, input_set, register(false)),
            };
            ready.push(ReadyNode {
                id: node.id,
                fingerprint: node.fingerprint,
                metrics: node.metrics,
                task,
            });
        }
        drop(report_tx);
        let store = match &settings.checkpoint_dir {
            Some(_) if settings.checkpoint_interval.0.is_zero() => {
                tracing::warn!(pipeline = %self.name, "checkpoint_dir is set but checkpoint_interval is \"0s\": no checkpoints are taken, so no state is saved or restored");
                None
            }
            Some(location) => Some(
                CheckpointStore::open(location, &self.name, settings.checkpoints_retained)
                    .map(Arc::new),
            ),
            None => None,
        };
        let handle = CheckpointHandle::new(trigger_tx, completed_rx.clone(), started_rx);
        let interval = settings.checkpoint_interval.0;
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        let run = async move {
            let store = store.transpose().map_err(|error| RuntimeError {
                component: "checkpoints".to_string(),
                source: ComponentError::other(error),
            })?;
            let restored = match &store {
                Some(store) => store.newest().await.map_err(|error| RuntimeError {
                    component: "checkpoints".to_string(),
                    source: ComponentError::other(error),
                })?,
                None => None,
            };
            let restored_id = restored.as_ref().map_or(0, |r| r.manifest.checkpoint_id);
            let first_id = restored.as_ref().map_or(0, |r| r.highest_id) + 1;
            if restored.is_some() {
                tracing::info!(pipeline = %name, checkpoint = restored_id, "restoring from checkpoint");
                metrics
                    .checkpoints
                    .restored
                    .store(restored_id, std::sync::atomic::Ordering::Relaxed);
            }
            let lineage = crc32fast::hash(
                format!(
                    "{name}\u{0}{}",
                    settings.checkpoint_dir.as_deref().unwrap_or_default()
                )
                .as_bytes(),
            );
            let plan = store.as_ref().map(|_| CommitPlan {
                restored: restored_id,
                next: first_id,
                lineage: u64::from(lineage),
            });
            completed_tx.send_replace(restored_id);
            let coordinator = checkpoint::Coordinator::new(
                barrier_senders,
                participants,
                report_rx,
                completed_tx,
                trigger_rx,
                interval,
                checkpoint::Persistence {
                    store: store.clone(),
                    pipeline: name.clone(),
                    first_id,
                },
            );
            let mut states = restore::States::new(restored, &name);
            let mut tasks: JoinSet<Result<(), RuntimeError>> = JoinSet::new();
            let failure = shutdown.child_token();
            let save_states = store.is_some();
            for node in ready {
                let ReadyNode {
                    id,
                    fingerprint,
                    metrics: node_metrics,
                    task,
                } = node;
                let saved = states.take(&id, &fingerprint);
                let left = task.reporter();
                let wrap = move |id: String, result: Result<(), ComponentError>| {
                    if let Some(reporter) = left {
                        reporter.left();
                    }
                    result.map_err(|source| RuntimeError {
                        component: id,
                        source,
                    })
                };
                match task {
                    Ready::Source(source, mut context) => {
                        // A failed component stops ordinary sources; a fail-open one only
                        // stops on a shutdown request.
                        context.shutdown = if source.fail_open() {
                            shutdown.clone()
                        } else {
                            failure.clone()
                        };
                        context.restored_state = saved;
                        tasks.spawn(async move { wrap(id, source.run(*context).await) });
                    }
                    Ready::Operator(mut operator, input_set, output, reporter) => {
                        if let Some(state) = saved {
                            if let Err(error) = operator.restore(&state) {
                                tracing::warn!(pipeline = %name, component = %id, %error, "the saved state does not fit this operator; it starts empty");
                            }
                        }
                        tasks.spawn(async move {
                            let result = tasks::run_operator(
                                operator,
                                input_set,
                                output,
                                tick,
                                (reporter, save_states),
                            )
                            .await;
                            wrap(id, result)
                        });
                    }
                    Ready::Sink(sink, input_set, reporter) => {
                        let completed = completed_rx.clone();
                        tasks.spawn(async move {
                            let result = tasks::run_sink(
                                sink,
                                input_set,
                                tasks::SinkLinks {
                                    reporter,
                                    completed,
                                    plan,
                                },
                                node_metrics,
                                tick,
                            )
                            .await;
                            wrap(id, result)
                        });
                    }
                }
            }
            for (activity, edges) in idle_watchers {
                tokio::spawn(idle::watch(activity, edges, idle_timeout));
            }
            states.report_unused();
            let coordinator_stop = CancellationToken::new();
            let coordinator_task =
                tokio::spawn(coordinator.run(coordinator_stop.clone(), metrics.clone()));
            let _ = started_tx.send(true);
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
