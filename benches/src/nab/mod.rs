//! The NAB evaluation: loads the labelled corpus (`data/<category>/<name>.csv` and
//! `combined_windows.json`), streams every file through a detector row by row (each score
//! sees only the past), writes results in NAB's layout, and scores them with [`scoring`].

pub mod scoring;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::NaiveDateTime;
use operators::anomaly::{Detector, DetectorConfig};

use scoring::LabelledFile;

/// One data file: where it came from, its rows and its windows.
pub struct DataFile {
    /// `<category>/<name>.csv`, as in combined_windows.json.
    pub relative: String,
    pub timestamps: Vec<String>,
    pub times_micros: Vec<i64>,
    pub values: Vec<f64>,
    pub labels: LabelledFile,
}

fn parse_time(text: &str) -> Result<i64> {
    let text = text.trim();
    let parsed = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .with_context(|| format!("`{text}` is not a timestamp like 2014-04-10 07:15:00"))?;
    Ok(parsed.and_utc().timestamp_micros())
}

/// Loads every file listed in `combined_windows.json` under `root`.
pub fn load_corpus(root: &Path) -> Result<Vec<DataFile>> {
    let windows_path = root.join("combined_windows.json");
    let text = std::fs::read_to_string(&windows_path)
        .with_context(|| format!("reading {}", windows_path.display()))?;
    let windows: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", windows_path.display()))?;
    let mut files = Vec::new();
    for (relative, limits) in windows {
        let path = root.join("data").join(&relative);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut timestamps = Vec::new();
        let mut times_micros = Vec::new();
        let mut values = Vec::new();
        for (number, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let (time, value) = line.split_once(',').with_context(|| {
                format!(
                    "{}:{}: expected `timestamp,value`",
                    path.display(),
                    number + 1
                )
            })?;
            times_micros.push(
                parse_time(time).with_context(|| format!("{}:{}", path.display(), number + 1))?,
            );
            values.push(value.trim().parse::<f64>().with_context(|| {
                format!(
                    "{}:{}: `{value}` is not a number",
                    path.display(),
                    number + 1
                )
            })?);
            timestamps.push(time.to_string());
        }
        let mut ranges = Vec::new();
        for (start, end) in &limits {
            let (start, end) = (parse_time(start)?, parse_time(end)?);
            let first = times_micros.partition_point(|&t| t < start);
            let last = times_micros.partition_point(|&t| t <= end);
            if first >= last {
                bail!("{relative}: window {start}..{end} holds no rows");
            }
            ranges.push((first, last - 1));
        }
        let rows = values.len();
        files.push(DataFile {
            relative,
            timestamps,
            times_micros,
            values,
            labels: LabelledFile {
                rows,
                windows: ranges,
            },
        });
    }
    if files.is_empty() {
        bail!("{} lists no files", windows_path.display());
    }
    Ok(files)
}

/// Streams each file through a fresh state of `detector`, returning the scores per file and
/// the time spent in the detector alone.
pub fn run_detector(detector: &Detector, files: &[DataFile]) -> (Vec<Vec<f64>>, Duration) {
    let mut elapsed = Duration::ZERO;
    let scores = files
        .iter()
        .map(|file| {
            let mut state = detector.new_state();
            let mut scores = Vec::with_capacity(file.values.len());
            let started = Instant::now();
            for (&time, &value) in file.times_micros.iter().zip(&file.values) {
                let verdict = detector.observe(&mut state, time, &[value]);
                scores.push(verdict.map_or(0.0, |v| v.alert_score));
            }
            elapsed += started.elapsed();
            scores
        })
        .collect();
    (scores, elapsed)
}

/// Writes `results/<detector>/<category>/<detector>_<name>.csv` for every file.
pub fn write_results(
    results: &Path,
    name: &str,
    files: &[DataFile],
    scores: &[Vec<f64>],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (file, scores) in files.iter().zip(scores) {
        let (category, file_name) = file
            .relative
            .split_once('/')
            .unwrap_or(("", &file.relative));
        let dir = results.join(name).join(category);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}_{file_name}"));
        let mut out = String::with_capacity(scores.len() * 32);
        out.push_str("timestamp,anomaly_score\n");
        for (time, score) in file.timestamps.iter().zip(scores) {
            out.push_str(&format!("{time},{score}\n"));
        }
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The detectors evaluated, as pipelines.toml would configure them over a series `value`.
pub fn evaluated_detectors() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "robust",
            r#"field = "value"
method = "robust"
span = 300
warmup = 0
cooldown = 200"#,
        ),
        (
            "seasonal",
            r#"field = "value"
method = "seasonal"
season = "1d"
slot = "5m"
span = 300
warmup = 0
cooldown = 200"#,
        ),
        (
            "sequence",
            r#"field = "value"
method = "sequence"
span = 300
warmup = 0
cooldown = 120"#,
        ),
        (
            "forest",
            r#"fields = ["value"]
method = "forest"
trees = 12
depth = 8
window = 256
shingle = 8
span = 300
warmup = 0
cooldown = 200"#,
        ),
    ]
}

/// Builds one of [`evaluated_detectors`].
pub fn build_detector(settings: &str) -> Result<Detector> {
    let config: DetectorConfig = toml::from_str(settings).context("detector settings")?;
    Detector::new(&config).map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))
}
