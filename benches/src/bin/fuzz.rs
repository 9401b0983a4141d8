//! Fuzzes the proxy's parsers, the response observers and decoders, the pipelines.toml loader
//! and the broker message decoder for a set time each, on the stable toolchain (see
//! `benches::fuzz`). Exits 1 when any target crashed, hung or disagreed with its oracle.
//!
//! cargo run --release -p benches --bin fuzz -- --seconds 600            # every target
//! cargo run --release -p benches --bin fuzz -- --seconds 60 chunked      # one target
//! cargo run -p benches --bin fuzz -- --replay chunked FILE               # one input

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use benches::fuzz::targets::{target, TARGETS};
use benches::fuzz::{fuzz, replay, Target};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Targets to run (default: all): request-head, response-head, chunked, observer,
    /// decoder, config, broker-message.
    targets: Vec<String>,
    /// Time per target.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seed of the mutations (default: drawn, and printed so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Where crashing, hanging and mismatching inputs are written, per target.
    #[arg(long, default_value = "target/fuzz-findings")]
    findings: PathBuf,
    /// Run one input file through the first target named, and print what it makes of it.
    #[arg(long)]
    replay: Option<PathBuf>,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let chosen: Vec<&Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets
            .iter()
            .map(|name| {
                target(name).with_context(|| {
                    let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                    format!("no target `{name}`; the targets are {}", names.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if let Some(path) = &args.replay {
        let input = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let target = chosen[0];
        return Ok(match replay(target, &input) {
            Ok(Ok(signature)) => {
                println!("{}: ok (outcome {signature:016x})", target.name);
                ExitCode::SUCCESS
            }
            Ok(Err(mismatch)) => {
                println!("{}: MISMATCH {mismatch}", target.name);
                ExitCode::FAILURE
            }
            Err(panic) => {
                println!("{}: CRASH {panic}", target.name);
                ExitCode::FAILURE
            }
        });
    }
    // The loader resolves relative paths against the working directory: keep them in a
    // scratch one.
    let findings = std::env::current_dir()?.join(&args.findings);
    let scratch = tempfile::tempdir()?;
    std::env::set_current_dir(scratch.path())?;
    let seed = args.seed.unwrap_or_else(rand_seed);
    println!(
        "fuzz: seed {seed}, {} s per target, findings in {}",
        args.seconds,
        findings.display()
    );
    println!(
        "{:<15} {:>12} {:>10} {:>8} {:>10} {:>6} {:>8} {:>9} {:>10}",
        "TARGET",
        "EXECUTIONS",
        "PER SEC",
        "CRASHES",
        "MISMATCHES",
        "HANGS",
        "CORPUS",
        "OUTCOMES",
        "SLOWEST"
    );
    let mut failed = false;
    for (index, target) in chosen.iter().enumerate() {
        let report = fuzz(
            target,
            Duration::from_secs(args.seconds),
            seed.wrapping_add(index as u64),
            &findings,
        )?;
        failed |= report.crashes + report.mismatches + report.hangs > 0;
        println!(
            "{:<15} {:>12} {:>10.0} {:>8} {:>10} {:>6} {:>8} {:>9} {:>9.1}ms",
            target.name,
            report.executions,
            report.executions as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.crashes,
            report.mismatches,
            report.hangs,
            report.corpus,
            report.signatures,
            report.slowest.as_secs_f64() * 1000.0
        );
    }
    Ok(if failed {
        println!(
            "fuzz: FAILED (seed {seed}); the inputs are in {}",
            findings.display()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}
