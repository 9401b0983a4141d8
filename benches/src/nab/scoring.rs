//! NAB's scoring rules, as the benchmark's paper and scorer define them: anomaly windows, the
//! scaled sigmoid that rewards early detection and forgives false positives just after a
//! window, the probationary period, one threshold swept over the whole corpus, and the
//! normalisation between a detector that never flags (0) and a perfect one (100).

/// A cost profile.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub true_positive: f64,
    pub false_positive: f64,
    pub false_negative: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        true_positive: 1.0,
        false_positive: 0.11,
        false_negative: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        true_positive: 1.0,
        false_positive: 0.22,
        false_negative: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        true_positive: 1.0,
        false_positive: 0.11,
        false_negative: 2.0,
    },
];

/// The share of each file (capped at 15% of 5,000 rows) that is not scored.
pub const PROBATION_PERCENT: f64 = 0.15;

/// One labelled data file: its row count and its anomaly windows as inclusive row ranges.
#[derive(Debug, Clone)]
pub struct LabelledFile {
    pub rows: usize,
    pub windows: Vec<(usize, usize)>,
}

/// One scorable row: the detector's score, the row's weighted value when flagged, and the
/// window it lies in (a corpus-wide id).
#[derive(Debug, Clone, Copy)]
pub struct ScoredRow {
    pub anomaly_score: f64,
    pub weighted: f64,
    pub window: Option<usize>,
}

/// `2 / (1 + e^(5x)) - 1`, and -1 beyond 3 window widths past the window.
pub fn scaled_sigmoid(relative_position: f64) -> f64 {
    if relative_position > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * relative_position).exp()) - 1.0
    }
}

pub fn probation_rows(rows: usize) -> usize {
    (PROBATION_PERCENT * rows as f64)
        .floor()
        .min(PROBATION_PERCENT * 5000.0) as usize
}

/// The rows of `file` after its probation period, weighted under `profile`. Window ids start
/// at `first_window`; returns the rows and how many windows have scorable rows.
pub fn sweep_rows(
    file: &LabelledFile,
    scores: &[f64],
    profile: &Profile,
    first_window: usize,
) -> (Vec<ScoredRow>, Vec<usize>) {
    let probation = probation_rows(file.rows);
    let mut rows = Vec::with_capacity(file.rows.saturating_sub(probation));
    let mut windows_seen = Vec::new();
    let mut previous_window: Option<(usize, usize)> = None;
    let mut next_window = 0;
    for (i, &anomaly_score) in scores.iter().enumerate().take(file.rows) {
        while next_window < file.windows.len() && file.windows[next_window].1 < i {
            previous_window = Some(file.windows[next_window]);
            next_window += 1;
        }
        let current = file
            .windows
            .get(next_window)
            .filter(|(start, end)| (*start..=*end).contains(&i));
        let (weighted, window) = match current {
            Some(&(start, end)) => {
                let width = (end - start + 1) as f64;
                let position = -((end - i + 1) as f64) / width;
                (
                    scaled_sigmoid(position) * profile.true_positive,
                    Some(first_window + next_window),
                )
            }
            None => match previous_window {
                Some((start, end)) => {
                    let width = (end - start + 1) as f64;
                    let past = (i - end) as f64 / (width - 1.0).max(1.0);
                    (scaled_sigmoid(past) * profile.false_positive, None)
                }
                None => (-profile.false_positive, None),
            },
        };
        if i >= probation {
            if let Some(id) = window {
                if windows_seen.last() != Some(&id) {
                    windows_seen.push(id);
                }
            }
            rows.push(ScoredRow {
                anomaly_score,
                weighted,
                window,
            });
        }
    }
    (rows, windows_seen)
}

/// The raw score at every threshold, highest threshold first: `(threshold, score)` where every
/// row scoring at least `threshold` is flagged. Each window counts once, by its best
/// (earliest) flagged row; each flagged row outside windows adds its (negative) weight; each
/// window with no flag costs `false_negative`.
pub fn score_by_threshold(
    rows: &[ScoredRow],
    windows: &[usize],
    profile: &Profile,
) -> Vec<(f64, f64)> {
    let mut order: Vec<&ScoredRow> = rows.iter().collect();
    order.sort_by(|a, b| b.anomaly_score.total_cmp(&a.anomaly_score));
    let mut window_parts: std::collections::HashMap<usize, f64> = windows
        .iter()
        .map(|&w| (w, -profile.false_negative))
        .collect();
    let mut windows_total: f64 = window_parts.values().sum();
    let mut false_positive_total = 0.0;
    let mut thresholds = Vec::new();
    let mut current = f64::INFINITY;
    for row in order {
        if row.anomaly_score != current {
            thresholds.push((current, windows_total + false_positive_total));
            current = row.anomaly_score;
        }
        match row.window {
            None => false_positive_total += row.weighted,
            Some(id) => {
                let part = window_parts.entry(id).or_insert(-profile.false_negative);
                if row.weighted > *part {
                    windows_total += row.weighted - *part;
                    *part = row.weighted;
                }
            }
        }
    }
    thresholds.push((current, windows_total + false_positive_total));
    thresholds
}

/// The raw score with every row at or above `threshold` flagged.
pub fn score_at(rows: &[ScoredRow], windows: &[usize], profile: &Profile, threshold: f64) -> f64 {
    let mut best: std::collections::HashMap<usize, f64> = windows
        .iter()
        .map(|&w| (w, -profile.false_negative))
        .collect();
    let mut false_positives = 0.0;
    for row in rows.iter().filter(|r| r.anomaly_score >= threshold) {
        match row.window {
            None => false_positives += row.weighted,
            Some(id) => {
                let part = best.entry(id).or_insert(-profile.false_negative);
                *part = part.max(row.weighted);
            }
        }
    }
    best.values().sum::<f64>() + false_positives
}

/// A detector's result over a corpus under one profile.
#[derive(Debug, Clone, Copy)]
pub struct CorpusScore {
    pub threshold: f64,
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    /// 100 × (raw − null) / (perfect − null).
    pub normalized: f64,
}

/// Scores `scores` (one vector per file, in file order) over `files`: the threshold that
/// maximises the corpus score, and that score normalised.
pub fn score_corpus(files: &[LabelledFile], scores: &[Vec<f64>], profile: &Profile) -> CorpusScore {
    let (rows, windows) = corpus_rows(files, scores, profile);
    let (threshold, raw) = score_by_threshold(&rows, &windows, profile)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((f64::INFINITY, 0.0));
    let (null, perfect) = corpus_bounds(files, profile);
    CorpusScore {
        threshold,
        raw,
        null,
        perfect,
        normalized: normalize(raw, null, perfect),
    }
}

/// The corpus scored at one given threshold: no search at all, as a detector with a shipped
/// threshold meets data it has never seen.
pub fn score_corpus_at(
    files: &[LabelledFile],
    scores: &[Vec<f64>],
    profile: &Profile,
    threshold: f64,
) -> CorpusScore {
    let (rows, windows) = corpus_rows(files, scores, profile);
    let raw = score_at(&rows, &windows, profile, threshold);
    let (null, perfect) = corpus_bounds(files, profile);
    CorpusScore {
        threshold,
        raw,
        null,
        perfect,
        normalized: normalize(raw, null, perfect),
    }
}

/// One held-out group of a [`score_held_out`] evaluation.
#[derive(Debug, Clone)]
pub struct HeldOutGroup {
    pub name: String,
    /// The threshold chosen on every other group.
    pub threshold: f64,
    /// This group scored at that threshold.
    pub score: CorpusScore,
}

/// A leave-one-group-out evaluation (NAB's categories as the groups).
#[derive(Debug, Clone)]
pub struct HeldOutScore {
    pub groups: Vec<HeldOutGroup>,
    /// The held-out scores pooled as NAB pools files: raw, null and perfect summed over the
    /// groups, then normalised, so each group weighs by its windows.
    pub normalized: f64,
}

/// Scores each group with the threshold that is best on all the *other* groups: the figure a
/// user can expect on series the threshold was not chosen on. `groups[i]` names file `i`'s
/// group.
pub fn score_held_out(
    files: &[LabelledFile],
    groups: &[&str],
    scores: &[Vec<f64>],
    profile: &Profile,
) -> HeldOutScore {
    let mut names: Vec<&str> = groups.to_vec();
    names.sort_unstable();
    names.dedup();
    let select = |keep: &dyn Fn(&str) -> bool| {
        let mut chosen_files = Vec::new();
        let mut chosen_scores = Vec::new();
        for ((file, group), file_scores) in files.iter().zip(groups).zip(scores) {
            if keep(group) {
                chosen_files.push(file.clone());
                chosen_scores.push(file_scores.clone());
            }
        }
        (chosen_files, chosen_scores)
    };
    let mut held_out = Vec::new();
    let (mut raw, mut null, mut perfect) = (0.0, 0.0, 0.0);
    for name in names {
        let (train_files, train_scores) = select(&|group| group != name);
        let (test_files, test_scores) = select(&|group| group == name);
        let threshold = if train_files.is_empty() {
            f64::INFINITY
        } else {
            score_corpus(&train_files, &train_scores, profile).threshold
        };
        let score = score_corpus_at(&test_files, &test_scores, profile, threshold);
        raw += score.raw;
        null += score.null;
        perfect += score.perfect;
        held_out.push(HeldOutGroup {
            name: name.to_string(),
            threshold,
            score,
        });
    }
    HeldOutScore {
        groups: held_out,
        normalized: normalize(raw, null, perfect),
    }
}

fn normalize(raw: f64, null: f64, perfect: f64) -> f64 {
    if perfect > null {
        100.0 * (raw - null) / (perfect - null)
    } else {
        0.0
    }
}

/// What never flagging and flagging each window at its first scored row earn on `files`.
fn corpus_bounds(files: &[LabelledFile], profile: &Profile) -> (f64, f64) {
    let windows: usize = files
        .iter()
        .map(|file| {
            let probation = probation_rows(file.rows);
            file.windows.iter().filter(|w| w.1 >= probation).count()
        })
        .sum();
    let null = -profile.false_negative * windows as f64;
    let perfect_scores: Vec<Vec<f64>> = files
        .iter()
        .map(|file| {
            let mut s = vec![0.0; file.rows];
            for &(start, end) in &file.windows {
                let first_scored = start.max(probation_rows(file.rows));
                if first_scored <= end && first_scored < file.rows {
                    s[first_scored] = 1.0;
                }
            }
            s
        })
        .collect();
    let (perfect_rows, perfect_windows) = corpus_rows(files, &perfect_scores, profile);
    let perfect = score_at(&perfect_rows, &perfect_windows, profile, 1.0);
    (null, perfect)
}

fn corpus_rows(
    files: &[LabelledFile],
    scores: &[Vec<f64>],
    profile: &Profile,
) -> (Vec<ScoredRow>, Vec<usize>) {
    let mut rows = Vec::new();
    let mut windows = Vec::new();
    let mut first_window = 0;
    for (file, file_scores) in files.iter().zip(scores) {
        let (file_rows, file_windows) = sweep_rows(file, file_scores, profile, first_window);
        first_window += file.windows.len();
        rows.extend(file_rows);
        windows.extend(file_windows);
    }
    (rows, windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> LabelledFile {
        // 1,000 rows (probation 150), windows at 300..=399 and 700..=799.
        LabelledFile {
            rows: 1000,
            windows: vec![(300, 399), (700, 799)],
        }
    }

    #[test]
    fn sigmoid_rewards_early_and_punishes_late() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614).abs() < 1e-5);
        assert!(scaled_sigmoid(-0.01) > 0.0 && scaled_sigmoid(-0.01) < 0.05);
        assert!(scaled_sigmoid(0.5) < -0.8);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
        assert_eq!(probation_rows(1000), 150);
        assert_eq!(probation_rows(10_000), 750);
    }

    #[test]
    fn never_flagging_scores_zero_and_perfect_scores_one_hundred() {
        let files = vec![file()];
        let standard = &PROFILES[0];
        let never = score_corpus(&files, &[vec![0.0; 1000]], standard);
        assert!(never.normalized.abs() < 1e-9, "{never:?}");
        assert_eq!(never.null, -2.0);
        let mut perfect = vec![0.0; 1000];
        perfect[300] = 1.0;
        perfect[700] = 1.0;
        let best = score_corpus(&files, &[perfect], standard);
        assert!((best.normalized - 100.0).abs() < 1e-9, "{best:?}");
    }

    #[test]
    fn late_detection_earns_less_and_false_positives_cost() {
        let files = vec![file()];
        let standard = &PROFILES[0];
        let mut late = vec![0.0; 1000];
        late[390] = 1.0;
        late[790] = 1.0;
        let late = score_corpus(&files, &[late], standard);
        // Each flag lies a tenth of the window before its end: sigmoid(-0.1) = 0.2449.
        assert!((late.raw - 2.0 * 0.244_918_7).abs() < 1e-6, "{late:?}");
        assert!(late.normalized > 50.0 && late.normalized < 70.0, "{late:?}");
        let mut noisy = vec![0.0; 1000];
        noisy[300] = 1.0;
        noisy[700] = 1.0;
        for i in (160..290).step_by(10) {
            noisy[i] = 1.0;
        }
        let noisy = score_corpus(&files, &[noisy], standard);
        // 13 false positives before any window, each −0.11.
        assert!(
            (noisy.raw - (2.0 * 0.986_614 - 13.0 * 0.11)).abs() < 1e-3,
            "{noisy:?}"
        );
        // A flag during probation is not scored.
        let mut probation = vec![0.0; 1000];
        probation[10] = 1.0;
        assert!(
            score_corpus(&files, &[probation], standard)
                .normalized
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn the_sweep_picks_the_best_threshold() {
        let files = vec![file()];
        let standard = &PROFILES[0];
        let mut scores = vec![0.1; 1000];
        scores[300] = 0.9;
        scores[700] = 0.8;
        scores[500] = 0.5;
        let result = score_corpus(&files, &[scores], standard);
        assert_eq!(result.threshold, 0.8);
        assert!((result.normalized - 100.0).abs() < 1e-9, "{result:?}");
    }

    #[test]
    fn a_held_out_group_is_scored_at_the_threshold_of_the_others() {
        let files = vec![file(), file()];
        let standard = &PROFILES[0];
        // Group a's windows score 0.9 and its noise 0.5; group b's windows 0.4 and its noise 0.1:
        // the best threshold for a (0.9) misses all of b, and b's (0.4) flags a's noise.
        let mut a = vec![0.5; 1000];
        a[300] = 0.9;
        a[700] = 0.9;
        let mut b = vec![0.1; 1000];
        b[300] = 0.4;
        b[700] = 0.4;
        let scores = vec![a, b];
        let held_out = score_held_out(&files, &["a", "b"], &scores, standard);
        let threshold_for = |name: &str| {
            held_out
                .groups
                .iter()
                .find(|g| g.name == name)
                .map(|g| g.threshold)
        };
        assert_eq!(threshold_for("a"), Some(0.4));
        assert_eq!(threshold_for("b"), Some(0.9));
        // b scores as never flagging; a flags its noise everywhere: the pooled score is far
        // below the sample score, where each group could not be told apart from the other.
        let sample = score_corpus(&files, &scores, standard);
        assert!(held_out.normalized < 0.0, "{held_out:?}");
        assert!(sample.normalized > held_out.normalized, "{sample:?}");
        // With one shared threshold that suits both, held out equals the sample.
        let mut c = vec![0.1; 1000];
        c[300] = 0.9;
        c[700] = 0.9;
        let same = vec![c.clone(), c];
        let held_out = score_held_out(&files, &["a", "b"], &same, standard);
        let sample = score_corpus(&files, &same, standard);
        assert!((held_out.normalized - sample.normalized).abs() < 1e-9);
        assert!((score_corpus_at(&files, &same, standard, 0.9).normalized - 100.0).abs() < 1e-9);
    }
}
