//! `run`, `validate` and `graph`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use engine::config::{ConfigErrors, SourceText};
use engine::graph::Graph;
use engine::runtime::{build, BuiltPipeline, RunReport};

use crate::components::registry;

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

/// Validates every pipeline of a file; every error is collected.
pub fn check_file(source: &SourceText) -> Result<Vec<BuiltPipeline>, ConfigErrors> {
    let file = source.parse()?;
    let registry = registry();
    let mut errors = Vec::new();
    let mut built = Vec::new();
    for pipeline in &file.pipelines {
        match build(pipeline, &registry) {
            Ok(pipeline) => built.push(pipeline),
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    if errors.is_empty() {
        Ok(built)
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
    match check_file(&source) {
        Ok(pipelines) => {
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
    eprintln!(
        "  {:<20} {:<9} {:>12} {:>12} {:>8} {:>8} {:>8}",
        "component", "kind", "events in", "events out", "errors", "dropped", "late"
    );
    for c in &report.components {
        eprintln!(
            "  {:<20} {:<9} {:>12} {:>12} {:>8} {:>8} {:>8}",
            c.id,
            format!("{:?}", c.kind).to_lowercase(),
            c.metrics.events_in,
            c.metrics.events_out,
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

/// Runs pipelines until their sources end or a signal arrives.
pub async fn run_pipelines(
    pipelines: Vec<BuiltPipeline>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut handles = Vec::new();
    for pipeline in pipelines {
        let name = pipeline.name.clone();
        tracing::info!(pipeline = %name, "pipeline started");
        handles.push((name, tokio::spawn(pipeline.run(shutdown.clone()))));
    }
    let mut failed = false;
    for (name, handle) in handles {
        match handle.await.context("a pipeline task panicked")? {
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
    let pipelines = match check_file(&source) {
        Ok(pipelines) => pipelines,
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
    run_pipelines(selected, crate::shutdown::on_signal()).await
}
