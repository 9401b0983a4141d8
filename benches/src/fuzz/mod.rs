//! A fuzzing harness that runs on the stable toolchain: each target takes bytes, must not
//! panic or hang, and checks what it computed against an oracle (hyper, a re-parse, the same
//! input split differently, a compression round trip); a disagreement is a mismatch. Inputs are
//! mutated from a checked-in seed corpus (`benches/fuzz/corpus/<target>/`), and an input whose
//! outcome (the target's signature of it) is new joins the corpus for this run — feedback from
//! outcomes, since stable Rust has no coverage instrumentation for libFuzzer. Every run is
//! reproducible from its printed seed. Findings are written to `<findings>/<target>/`.

pub mod mutate;
pub mod oracle;
pub mod targets;

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

/// What a target makes of one input: a signature of the outcome (inputs with new signatures
/// join the corpus), or a mismatch against its oracle.
pub type Verdict = Result<u64, String>;

/// One fuzzing target.
pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    /// Byte strings mutations insert (tokens of the input's grammar).
    pub dictionary: &'static [&'static [u8]],
    /// Seeds made in code (binary ones: compressed bodies, Arrow IPC), beside the corpus files.
    pub generated_seeds: fn() -> Vec<Vec<u8>>,
    /// Largest input tried.
    pub max_len: usize,
    pub run: fn(&[u8]) -> Verdict,
}

/// The totals of one target's run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub executions: u64,
    pub crashes: u64,
    pub mismatches: u64,
    pub hangs: u64,
    pub corpus: usize,
    pub signatures: usize,
    pub elapsed: Duration,
    pub slowest: Duration,
}

/// How long one input may run before it counts as a hang (reported, and the run stops).
pub const HANG_AFTER: Duration = Duration::from_secs(5);
/// An input slower than this is reported as a hang too, once it finishes.
pub const SLOW_AFTER: Duration = Duration::from_secs(1);
/// Findings saved per kind per target; the rest are counted.
const SAVED_PER_KIND: u64 = 10;
/// Inputs kept in the in-memory corpus.
const MAX_CORPUS: usize = 20_000;

/// The checked-in seeds of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn load_seeds(target: &Target) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = corpus_dir(target.name);
    let mut seeds = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("cannot read the seed corpus {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    for path in paths {
        seeds.push(std::fs::read(&path)?);
    }
    seeds.extend((target.generated_seeds)());
    anyhow::ensure!(
        !seeds.is_empty(),
        "no seeds for {} in {}",
        target.name,
        dir.display()
    );
    Ok(seeds)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a finding and returns where.
fn save(findings: &Path, target: &str, kind: &str, input: &[u8], why: &str) -> PathBuf {
    let dir = findings.join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{kind}-{:016x}", fnv1a(input)));
    let _ = std::fs::write(&path, input);
    let _ = std::fs::write(path.with_extension("txt"), why);
    path
}

/// Reports the `count`th finding of a kind, saving its input while fewer than
/// [`SAVED_PER_KIND`] were.
fn finding(findings: &Path, target: &str, count: u64, kind: &str, input: &[u8], why: &str) {
    if count <= SAVED_PER_KIND {
        let path = save(findings, target, kind, input, why);
        eprintln!(
            "fuzz {target}: {} {why}\n  input saved to {}",
            kind.to_uppercase(),
            path.display()
        );
    }
}

thread_local! {
    /// The message of the last panic on this thread, taken by the loop after `catch_unwind`.
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Replaces the panic hook so a caught panic is recorded instead of printed.
fn quiet_panics() {
    panic::set_hook(Box::new(|info| {
        let message = format!("{info}");
        PANIC.with(|last| *last.borrow_mut() = Some(message));
    }));
}

/// Runs `target` for `duration` from `seed`; findings go to `findings`.
pub fn fuzz(
    target: &Target,
    duration: Duration,
    seed: u64,
    findings: &Path,
) -> anyhow::Result<Report> {
    let mut corpus = load_seeds(target)?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut signatures = HashSet::new();
    let mut report = Report::default();
    quiet_panics();

    // A watchdog that ends the process when one input runs past HANG_AFTER, saving it first.
    let current = Arc::new(Mutex::new(Vec::new()));
    let started_ms = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    {
        let (current, started_ms) = (current.clone(), started_ms.clone());
        let findings = findings.to_path_buf();
        let name = target.name;
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let started = started_ms.load(Ordering::Relaxed);
            let now = epoch.elapsed().as_millis() as u64;
            if started != 0 && now.saturating_sub(started) > HANG_AFTER.as_millis() as u64 {
                let input = current.lock().map(|i| i.clone()).unwrap_or_default();
                let path = save(&findings, name, "hang", &input, "ran past the hang limit");
                eprintln!(
                    "fuzz {name}: HANG — one input ran past {HANG_AFTER:?}; saved to {}",
                    path.display()
                );
                std::process::exit(3);
            }
        });
    }

    // Every seed runs once as it is.
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut input = Vec::with_capacity(target.max_len);
    while Instant::now() < deadline {
        for _ in 0..64 {
            match queue.pop() {
                Some(seed) => input = seed,
                None => mutate::mutate(&mut input, &corpus, target, &mut rng),
            }
            if let Ok(mut current) = current.lock() {
                current.clone_from(&input);
            }
            started_ms.store(epoch.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
            let began = Instant::now();
            let verdict = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
            let took = began.elapsed();
            started_ms.store(0, Ordering::Relaxed);
            report.executions += 1;
            report.slowest = report.slowest.max(took);
            match verdict {
                Ok(Ok(signature)) => {
                    if signatures.insert(signature) && corpus.len() < MAX_CORPUS {
                        corpus.push(input.clone());
                    }
                }
                Ok(Err(mismatch)) => {
                    report.mismatches += 1;
                    finding(
                        findings,
                        target.name,
                        report.mismatches,
                        "mismatch",
                        &input,
                        &mismatch,
                    );
                }
                Err(_) => {
                    report.crashes += 1;
                    let message = PANIC
                        .with(|last| last.borrow_mut().take())
                        .unwrap_or_default();
                    finding(
                        findings,
                        target.name,
                        report.crashes,
                        "crash",
                        &input,
                        &message,
                    );
                }
            }
            if took > SLOW_AFTER {
                report.hangs += 1;
                let why = format!("took {took:?}");
                finding(findings, target.name, report.hangs, "slow", &input, &why);
            }
        }
    }
    report.elapsed = start.elapsed();
    report.corpus = corpus.len();
    report.signatures = signatures.len();
    Ok(report)
}

/// Runs one input through `target` (to reproduce a finding), returning its verdict or panic.
pub fn replay(target: &Target, input: &[u8]) -> Result<Verdict, String> {
    quiet_panics();
    panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|_| {
        PANIC
            .with(|last| last.borrow_mut().take())
            .unwrap_or_default()
    })
}
