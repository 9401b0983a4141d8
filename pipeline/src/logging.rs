//! Logging with tracing: `RUST_LOG`-style filters (default `info`), human or JSON lines on
//! stderr, and optionally JSON logs in a directory, rotated daily.

use std::path::PathBuf;

use anyhow::Context;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub struct LogOptions {
    pub format: LogFormat,
    pub directory: Option<PathBuf>,
}

/// Installs the global subscriber. Keep the returned guard alive: it flushes the log file.
pub fn init(options: &LogOptions) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a log redirected to a file holds no escape codes.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = match options.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(colours)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let (file, guard) = match &options.directory {
        Some(directory) => {
            std::fs::create_dir_all(directory)
                .with_context(|| format!("cannot create log directory {}", directory.display()))?;
            let appender = tracing_appender::rolling::daily(directory, "pipeline.log");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(filter())
                .boxed();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init()
        .context("cannot install the logger")?;
    Ok(guard)
}
