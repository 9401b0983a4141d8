//! The `pipeline` binary: runs pipelines from `pipelines.toml`, validates and draws them, answers
//! SQL over the Parquet history, runs the embedded demo, and looks at a running instance.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pipeline::logging::{LogFormat, LogOptions};
use pipeline::query::OutputFormat;
use pipeline::{commands, demo, query, receiver, status};

/// mimalloc, not the system allocator: the proxy source builds each call's event on its own
/// worker thread and the pipeline frees it on another, a pattern glibc's per-thread caches
/// serve poorly (measured in docs/performance.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Real-time monitoring pipeline for ML and LLM model APIs"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "PIPELINE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Also write logs (as JSON) to daily-rotated files in this directory.
    #[arg(long, global = true, env = "PIPELINE_LOG_DIR")]
    log_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipelines of a config file until every source ends or SIGINT/SIGTERM.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "pipelines.toml", env = "PIPELINE_CONFIG")]
        config: PathBuf,
        /// Run only these pipelines (by name); all when omitted.
        #[arg(short, long)]
        pipeline: Vec<String>,
    },
    /// Check a config file without starting anything; exits non-zero on any error.
    Validate {
        #[arg(default_value = "pipelines.toml")]
        file: PathBuf,
    },
    /// Print the graph of a config file's pipelines.
    Graph {
        #[arg(default_value = "pipelines.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = commands::GraphFormat::Mermaid)]
        format: commands::GraphFormat,
    },
    /// Run SQL over the Parquet history (tables api_calls, window_metrics).
    Query {
        /// The SQL query.
        sql: String,
        /// Where the history is: a directory or s3://bucket/prefix.
        #[arg(long, default_value = "./data", env = "PIPELINE_DATA")]
        data: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Run everything embedded: a simulated model API, traffic against it, windows, a live
    /// console view and Parquet history under --data.
    Demo(demo::DemoOptions),
    /// Serve the demo's simulated model API alone (OpenAI-style chat with streaming, KServe v2
    /// inference): a sample upstream to put a proxy in front of.
    ModelApi(demo::ModelApiOptions),
    /// Receive alert notifications from a `webhook` sink: checks each signature and prints
    /// one line per notification (for trying alert rules, and in the demo).
    ReceiveWebhook(receiver::ReceiverOptions),
    /// Show a running instance's health, pipelines and per-component rates (through its API).
    Status(status::ClientOptions),
    /// A live view of a running instance's per-component throughput and errors.
    Top(status::TopOptions),
    /// Runs one SQL query for the API in a memory- and CPU-limited process (internal: the
    /// API starts it, with the query as JSON on stdin).
    #[command(hide = true)]
    SqlWorker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SqlWorker = cli.command {
        // Before logging and the multi-threaded runtime: the worker limits itself first.
        return pipeline::api::sql_worker::main();
    }
    let _guard = match pipeline::logging::init(&LogOptions {
        format: cli.log_format,
        directory: cli.log_dir.clone(),
    }) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config, pipeline } => commands::run(&config, &pipeline).await,
            Command::Validate { file } => commands::validate(&file),
            Command::Graph { file, format } => commands::graph(&file, format),
            Command::Query { sql, data, format } => query::run_cli(&sql, &data, format).await,
            Command::Demo(options) => demo::run(options).await,
            Command::ModelApi(options) => demo::serve_model_api(options).await,
            Command::ReceiveWebhook(options) => receiver::run(options).await,
            Command::Status(options) => status::status(options).await,
            Command::Top(options) => status::top(options).await,
            Command::SqlWorker => Ok(pipeline::api::sql_worker::main()),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
