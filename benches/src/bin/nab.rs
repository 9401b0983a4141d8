//! Evaluates the anomaly detectors on the NAB sample: streams every file through each
//! detector, writes NAB-format results, and prints each detector's score under NAB's three
//! profiles and its speed.
//!
//! cargo run --release -p benches --bin nab -- --data ../shared/data/nab --results target/nab-results

use std::path::PathBuf;

use anyhow::Result;
use benches::nab::scoring::{score_corpus, PROFILES};
use benches::nab::{build_detector, evaluated_detectors, load_corpus, run_detector, write_results};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The NAB corpus: a folder with `data/` and `combined_windows.json`.
    #[arg(long, default_value = "../shared/data/nab")]
    data: PathBuf,
    /// Where to write `<detector>/<category>/<detector>_<name>.csv`.
    #[arg(long, default_value = "target/nab-results")]
    results: PathBuf,
    /// Only these detectors (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    detectors: Vec<String>,
    /// Times each detector streams the corpus, for a steadier speed figure.
    #[arg(long, default_value_t = 5)]
    repeat: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let files = load_corpus(&args.data)?;
    let points: usize = files.iter().map(|f| f.values.len()).sum();
    let windows: usize = files.iter().map(|f| f.labels.windows.len()).sum();
    println!(
        "NAB sample: {} files, {points} points, {windows} anomaly windows",
        files.len()
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>10} {:>14}",
        "detector", "standard", "low FP", "low FN", "threshold", "points/s/core"
    );
    for (name, settings) in evaluated_detectors() {
        if !args.detectors.is_empty() && !args.detectors.iter().any(|d| d == name) {
            continue;
        }
        let detector = build_detector(settings)?;
        let (scores, _) = run_detector(&detector, &files);
        let mut best = std::time::Duration::MAX;
        for _ in 0..args.repeat {
            best = best.min(run_detector(&detector, &files).1);
        }
        write_results(&args.results, name, &files, &scores)?;
        let results: Vec<_> = PROFILES
            .iter()
            .map(|p| {
                score_corpus(
                    &files.iter().map(|f| f.labels.clone()).collect::<Vec<_>>(),
                    &scores,
                    p,
                )
            })
            .collect();
        println!(
            "{:<10} {:>9.1} {:>9.1} {:>9.1} {:>10.6} {:>14.0}",
            name,
            results[0].normalized,
            results[1].normalized,
            results[2].normalized,
            results[0].threshold,
            points as f64 / best.as_secs_f64()
        );
    }
    // The reference point of NAB's scale: uniformly random scores (a seeded generator).
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let random: Vec<Vec<f64>> = files
        .iter()
        .map(|f| {
            f.values
                .iter()
                .map(|_| {
                    // xorshift64*: plenty for a baseline, and the same every run.
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
                })
                .collect()
        })
        .collect();
    let labels: Vec<_> = files.iter().map(|f| f.labels.clone()).collect();
    let baseline: Vec<_> = PROFILES
        .iter()
        .map(|p| score_corpus(&labels, &random, p))
        .collect();
    println!(
        "{:<10} {:>9.1} {:>9.1} {:>9.1} {:>10.6} {:>14}",
        "random",
        baseline[0].normalized,
        baseline[1].normalized,
        baseline[2].normalized,
        baseline[0].threshold,
        "-"
    );
    println!("results in {}", args.results.display());
    Ok(())
}
