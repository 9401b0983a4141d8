//! What `/api/v1/metrics/historical` computes per bucket from the `window_metrics` columns a
//! history table actually has: the window operator's quantiles and its token and cost columns
//! follow its configuration, so the SELECT is built from the table's columns rather than
//! assumed. Shared by the Parquet (DataFusion) and PostgreSQL readers; every aggregate is a
//! `DOUBLE PRECISION`, so both answer the same JSON numbers.

use engine::schema::window_metrics as wm;

/// Columns summed into a bucket (`count` is answered as `requests`).
const SUMMED: [&str; 9] = [
    wm::ERRORS,
    wm::TTFT_COUNT,
    wm::INPUT_TOKENS,
    wm::OUTPUT_TOKENS,
    wm::CACHED_INPUT_TOKENS,
    wm::REASONING_TOKENS,
    wm::COST_USD,
    wm::UNPRICED_CALLS,
    wm::COUNT,
];

/// `p50_latency_ms`, `p99_9_ttft_ms`, ...: a quantile column of the window operator.
fn is_quantile(column: &str) -> bool {
    let Some(rest) = column.strip_prefix('p') else {
        return false;
    };
    let Some(number) = rest
        .strip_suffix("_latency_ms")
        .or_else(|| rest.strip_suffix("_ttft_ms"))
    else {
        return false;
    };
    !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit() || b == b'_')
}

/// The SELECT list of a bucket's aggregates for a table with `columns`; `step` is the SQL of
/// the bucket's length in seconds. Returns the expressions and the names they answer as.
pub(super) fn bucket_aggregates(columns: &[String], step: &str) -> Vec<(String, String)> {
    let has = |name: &str| columns.iter().any(|c| c == name);
    let double = |sql: String| format!("CAST({sql} AS DOUBLE PRECISION)");
    let mut select = Vec::new();
    for column in SUMMED {
        if has(column) {
            let name = if column == wm::COUNT {
                "requests"
            } else {
                column
            };
            select.push((double(format!("sum({column})")), name.to_string()));
        }
    }
    if has(wm::COUNT) {
        let count = double(format!("sum({})", wm::COUNT));
        if has(wm::ERRORS) {
            select.push((
                format!(
                    "{} / NULLIF({count}, 0)",
                    double(format!("sum({})", wm::ERRORS))
                ),
                wm::ERROR_RATE.to_string(),
            ));
        }
        select.push((format!("{count} / {step}"), wm::RATE_PER_SEC.to_string()));
        if has(wm::MEAN_LATENCY_MS) {
            select.push((
                format!(
                    "sum({} * {}) / NULLIF({count}, 0)",
                    wm::MEAN_LATENCY_MS,
                    wm::COUNT
                ),
                wm::MEAN_LATENCY_MS.to_string(),
            ));
        }
    }
    for (column, function) in [(wm::MIN_LATENCY_MS, "min"), (wm::MAX_LATENCY_MS, "max")] {
        if has(column) {
            select.push((double(format!("{function}({column})")), column.to_string()));
        }
    }
    // A bucket's quantile is the highest of its windows' (exact when the step is the window).
    let mut quantiles: Vec<&String> = columns.iter().filter(|c| is_quantile(c)).collect();
    quantiles.sort();
    for column in quantiles {
        select.push((double(format!("max({column})")), column.clone()));
    }
    select
}

/// The names the aggregates answer as, in order.
pub(super) fn answered_names(aggregates: &[(String, String)]) -> Vec<&str> {
    aggregates.iter().map(|(_, name)| name.as_str()).collect()
}

/// `aggregates` as a SELECT list, each named.
pub(super) fn select_list(aggregates: &[(String, String)]) -> String {
    aggregates
        .iter()
        .map(|(sql, name)| format!("{sql} AS \"{name}\""))
        .collect::<Vec<_>>()
        .join(",\n               ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn quantile_columns_are_recognised_whatever_the_configured_quantiles() {
        for yes in ["p50_latency_ms", "p99_9_latency_ms", "p95_ttft_ms"] {
            assert!(is_quantile(yes), "{yes}");
        }
        for no in [
            "p_latency_ms",
            "mean_latency_ms",
            "px_ttft_ms",
            "p50_latency",
        ] {
            assert!(!is_quantile(no), "{no}");
        }
    }

    #[test]
    fn only_the_columns_the_table_has_are_aggregated() {
        let plain = bucket_aggregates(
            &columns(&["window_start", "model", "count", "errors", "p99_latency_ms"]),
            "60",
        );
        assert_eq!(
            answered_names(&plain),
            [
                "errors",
                "requests",
                "error_rate",
                "rate_per_sec",
                "p99_latency_ms"
            ]
        );
        let llm = bucket_aggregates(
            &columns(&[
                "count",
                "output_tokens",
                "cost_usd",
                "p95_ttft_ms",
                "p50_ttft_ms",
            ]),
            "60",
        );
        let names = answered_names(&llm);
        for name in ["output_tokens", "cost_usd", "p50_ttft_ms", "p95_ttft_ms"] {
            assert!(names.contains(&name), "{names:?}");
        }
    }
}
