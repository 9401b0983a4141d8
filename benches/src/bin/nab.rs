//! Evaluates the anomaly detectors on the NAB sample: streams every file through each
//! detector, writes NAB-format results, and prints per detector
//! - the leave-one-category-out score under NAB's three profiles: each category scored with
//!   the threshold that is best on the other categories, pooled as NAB pools files. This is
//!   the score to expect on series nobody tuned on;
//! - the score at the detector's shipped threshold (no search at all);
//! - the sample score (threshold searched on the whole sample, as NAB's own scorer does);
//! - its speed.
//!
//! cargo run --release -p benches --bin nab -- --data ../shared/data/nab --results target/nab-results

use std::path::PathBuf;

use anyhow::Result;
use benches::nab::scoring::{score_corpus, score_corpus_at, score_held_out, PROFILES};
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
    /// Also print each held-out category's threshold and score.
    #[arg(long)]
    per_category: bool,
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
    let labels: Vec<_> = files.iter().map(|f| f.labels.clone()).collect();
    let categories: Vec<&str> = files
        .iter()
        .map(|f| f.relative.split_once('/').map_or("", |(c, _)| c))
        .collect();
    println!(
        "{:<10} {:>22} {:>9} {:>9} {:>9} {:>14}",
        "", "held out (std/FP/FN)", "shipped", "sample", "sample", "points/s/core"
    );
    println!(
        "{:<10} {:>22} {:>9} {:>9} {:>9} {:>14}",
        "detector", "", "std", "std", "threshold", ""
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
        let held_out: Vec<_> = PROFILES
            .iter()
            .map(|p| score_held_out(&labels, &categories, &scores, p))
            .collect();
        let shipped = score_corpus_at(&labels, &scores, &PROFILES[0], detector.threshold());
        let sample = score_corpus(&labels, &scores, &PROFILES[0]);
        println!(
            "{:<10} {:>22} {:>9.1} {:>9.1} {:>9.4} {:>14.0}",
            name,
            format!(
                "{:.1} / {:.1} / {:.1}",
                held_out[0].normalized, held_out[1].normalized, held_out[2].normalized
            ),
            shipped.normalized,
            sample.normalized,
            sample.threshold,
            points as f64 / best.as_secs_f64()
        );
        if args.per_category {
            for group in &held_out[0].groups {
                println!(
                    "    {:<24} threshold {:>8.4}  raw {:>7.2}  null {:>6.1}  perfect {:>6.2}",
                    group.name,
                    group.threshold,
                    group.score.raw,
                    group.score.null,
                    group.score.perfect
                );
            }
        }
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
    let held_out: Vec<_> = PROFILES
        .iter()
        .map(|p| score_held_out(&labels, &categories, &random, p))
        .collect();
    let sample = score_corpus(&labels, &random, &PROFILES[0]);
    println!(
        "{:<10} {:>22} {:>9} {:>9.1} {:>9.4} {:>14}",
        "random",
        format!(
            "{:.1} / {:.1} / {:.1}",
            held_out[0].normalized, held_out[1].normalized, held_out[2].normalized
        ),
        "-",
        sample.normalized,
        sample.threshold,
        "-"
    );
    println!("results in {}", args.results.display());
    Ok(())
}
