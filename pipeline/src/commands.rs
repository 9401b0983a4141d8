//! `run`, `validate` and `graph`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use engine::config::{ConfigErrors, SourceText};
use engine::graph::Graph;
use engine::runtime::{build, BuiltPipeline, RunReport};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::api::live::LiveState;
use crate::api::settings::ApiSettings;
use crate::api::{PipelineInfo, RunState};
use crate::components::registry_with;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

fn print_errors(errors: &ConfigErrors) {
    for error in &errors.0 {
        eprintln!("error: {error}");
    }
    let count = errors.0.len();
    eprintln!("{count} error{} found", if count == 1 { "" } else { "s" });
}

/// A checked file: its pipelines, built, and its `[api]` settings.
pub struct Checked {
    pub pipelines: Vec<BuiltPipeline>,
    pub api: Option<ApiSettings>,
}

/// Validates every pipeline of a file, and its `[api]` table; every error is collected. The
/// `api` sinks feed `live`.
pub fn check_file(source: &SourceText, live: Arc<LiveState>) -> Result<Checked, ConfigErrors> {
    let file = source.parse()?;
    let registry = registry_with(live);
    let mut errors = Vec::new();
    let mut built = Vec::new();
    for pipeline in &file.pipelines {
        match build(pipeline, &registry) {
            Ok(pipeline) => built.push(pipeline),
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    let api = match file.api_settings::<ApiSettings>() {
        Ok(Some(settings)) => match crate::api::check(&settings) {
            Ok(()) => Some(settings),
            Err(message) => {
                errors.push(file.api_error(message));
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            errors.push(error);
            None
        }
    };
    if errors.is_empty() {
        Ok(Checked {
            pipelines: built,
            api,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

pub fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let source = match SourceText::load(path) {
        Ok(source) => source,
        Err(errors) => {
            print_errors(&errors);
            return Ok(ExitCode::from(1));
        }
    };
    match check_file(&source, LiveState::new(16)) {
        Ok(Checked { pipelines, .. }) => {
            let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
            println!(
                "{}: ok ({} pipeline{}: {})",
                path.display(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            print_errors(&errors);
            Ok(ExitCode::from(1))
        }
    }
}

pub fn graph(path: &Path, format: GraphFormat) -> anyhow::Result<ExitCode> {
    let source = match SourceText::load(path) {
        Ok(source) => source,
        Err(errors) => {
            print_errors(&errors);
            return Ok(ExitCode::from(1));
        }
    };
    let file = match source.parse() {
        Ok(file) => file,
        Err(errors) => {
            print_errors(&errors);
            return Ok(ExitCode::from(1));
        }
    };
    for pipeline in &file.pipelines {
        let graph = match Graph::new(pipeline) {
            Ok(graph) => graph,
            Err(errors) => {
                print_errors(&errors);
                return Ok(ExitCode::from(1));
            }
        };
        if file.pipelines.len() > 1 {
            match format {
                GraphFormat::Dot => println!("// pipeline {}", pipeline.name),
                GraphFormat::Mermaid => println!("%% pipeline {}", pipeline.name),
            }
        }
        match format {
            GraphFormat::Dot => print!("{}", graph.to_dot()),
            GraphFormat::Mermaid => print!("{}", graph.to_mermaid()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints per-component counters to stderr.
pub fn print_report(name: &str, report: &RunReport) {
    eprintln!(
        "pipeline {name}: {} checkpoints completed",
        report.checkpoints.completed
    );
    // A source only emits, a sink only takes: their other column is empty, not 0.
    eprintln!(
        "  {:<20} {:<9} {:>12} {:>12} {:>8} {:>8} {:>8}",
        "component", "kind", "rows in", "rows out", "errors", "dropped", "late"
    );
    for c in &report.components {
        let rows_in = match c.kind {
            engine::metrics::ComponentKind::Source => "-".to_string(),
            _ => c.metrics.events_in.to_string(),
        };
        let rows_out = match c.kind {
            engine::metrics::ComponentKind::Sink => "-".to_string(),
            _ => c.metrics.events_out.to_string(),
        };
        eprintln!(
            "  {:<20} {:<9} {:>12} {:>12} {:>8} {:>8} {:>8}",
            c.id,
            format!("{:?}", c.kind).to_lowercase(),
            rows_in,
            rows_out,
            c.metrics.errors,
            c.metrics.dropped,
            c.metrics.late
        );
        if !c.counters.is_empty() {
            let counters: Vec<String> = c
                .counters
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            eprintln!("  {:<20} {}", "", counters.join(" "));
        }
    }
}

/// Runs pipelines until their sources end or a signal arrives, recording each one's run state
/// in `states` (by name) when given.
pub async fn run_pipelines(
    pipelines: Vec<BuiltPipeline>,
    states: &HashMap<String, Arc<Mutex<RunState>>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut handles = Vec::new();
    for pipeline in pipelines {
        let name = pipeline.name.clone();
        tracing::info!(pipeline = %name, "pipeline started");
        let state = states.get(&name).cloned();
        let run = pipeline.run(shutdown.clone());
        // Each pipeline records its own end as it happens, not when its turn to be awaited
        // comes, so readiness reports a failure at once.
        handles.push((
            name,
            tokio::spawn(async move {
                let outcome = run.await;
                if let Some(state) = state {
                    *state.lock().unwrap_or_else(|e| e.into_inner()) = match &outcome {
                        Ok(_) => RunState::Finished,
                        Err(error) => RunState::Failed {
                            error: error.to_string(),
                        },
                    };
                }
                outcome
            }),
        ));
    }
    let mut failed = false;
    for (name, handle) in handles {
        let outcome = handle.await.context("a pipeline task panicked")?;
        match outcome {
            Ok(report) => print_report(&name, &report),
            Err(error) => {
                eprintln!("error: pipeline {name}: {error}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn run(path: &Path, only: &[String]) -> anyhow::Result<ExitCode> {
    let source = match SourceText::load(path) {
        Ok(source) => source,
        Err(errors) => {
            print_errors(&errors);
            return Ok(ExitCode::from(1));
        }
    };
    let live = LiveState::new(ApiSettings::default().client_buffer);
    let Checked { pipelines, api } = match check_file(&source, live.clone()) {
        Ok(checked) => checked,
        Err(errors) => {
            print_errors(&errors);
            return Ok(ExitCode::from(1));
        }
    };
    for name in only {
        if !pipelines.iter().any(|p| &p.name == name) {
            let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!(
                "no pipeline named `{name}` in {}; it has: {}",
                path.display(),
                names.join(", ")
            );
        }
    }
    let selected: Vec<BuiltPipeline> = pipelines
        .into_iter()
        .filter(|p| only.is_empty() || only.contains(&p.name))
        .collect();
    let shutdown = crate::shutdown::on_signal();
    let mut states = HashMap::new();
    let mut server = None;
    if let Some(settings) = api {
        live.set_client_buffer(settings.client_buffer);
        let infos: Vec<PipelineInfo> = selected
            .iter()
            .map(|p| {
                let state = Arc::new(Mutex::new(RunState::Running));
                states.insert(p.name.clone(), state.clone());
                PipelineInfo {
                    name: p.name.clone(),
                    topology: p.topology(),
                    metrics: p.metrics(),
                    state,
                }
            })
            .collect();
        let has_api_sink = selected
            .iter()
            .flat_map(|p| p.metrics().report())
            .any(|c| c.component_type == "api");
        if !has_api_sink {
            tracing::warn!("no `api` sink: the realtime endpoints and the WebSocket feed stay empty; add [sinks.live] type = \"api\"");
        }
        let state = crate::api::state(settings, live, infos)?;
        let api_stop = tokio_util::sync::CancellationToken::new();
        let (address, handle) = crate::api::start(state, api_stop.clone()).await?;
        eprintln!("API on http://{address}/");
        server = Some((api_stop, handle));
    }
    let code = run_pipelines(selected, &states, shutdown.clone()).await?;
    if let Some((api_stop, handle)) = server {
        // Keep answering (readiness says why) until a signal, so orchestrators see the state.
        if !shutdown.is_cancelled() {
            tracing::info!("every pipeline ended; the API keeps serving until SIGINT/SIGTERM");
            shutdown.cancelled().await;
        }
        api_stop.cancel();
        let _ = handle.await;
    }
    Ok(code)
}
