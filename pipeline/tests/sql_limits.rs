//! SQL limits hold for every query, and the deployment keeps serving while they do: a real
//! `pipeline run` with a proxy in front of a model API, windows and the API in one process
//! (the embedded setup), answers a corpus of hostile queries — scalar functions that allocate
//! gigabytes, cross and hash joins, unbounded recursion, deep expressions, sorts and
//! aggregations over billions of rows, file reads, DDL — each with 400, 408 or 413 within its
//! time limit plus a second, while calls go through the proxy the whole time. The pipeline
//! process's memory stays where it was, and every query worker's anonymous memory stays under
//! its limit (`query_memory_mib` + the worker's allowance).

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipeline::api::sql_worker::WORKER_ALLOWANCE_MIB;
use pipeline::demo::model_api::{router, ModelApiConfig};
use sources::generator::LatencyDistribution;

const MEMORY_MIB: usize = 128;
const TIMEOUT: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, `RssAnon`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`: comm may hold spaces, so split after it.
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The corpus: each query and the statuses it may answer with.
fn hostile_queries() -> Vec<(String, &'static [u16])> {
    let memory: &[u16] = &[413];
    let time: &[u16] = &[408];
    let memory_or_time: &[u16] = &[408, 413];
    let refused: &[u16] = &[400];
    let planning: &[u16] = &[400, 413];
    vec![
        ("SELECT repeat('x', 2000000000)".into(), memory),
        ("SELECT lpad('x', 2000000000, 'y')".into(), memory),
        ("SELECT rpad('x', 1500000000)".into(), memory),
        ("SELECT length(repeat(repeat('x', 100000), 20000))".into(), memory),
        ("SELECT array_repeat('x', 1000000000)".into(), memory),
        ("SELECT unnest(array_repeat(1, 1000000000))".into(), memory),
        ("SELECT sha256(repeat('x', 1500000000))".into(), memory),
        ("SELECT concat(repeat('ab', 500000000), repeat('cd', 500000000))".into(), memory),
        ("SELECT repeat('x', 1000000) FROM generate_series(1, 1000)".into(), memory),
        ("SELECT regexp_replace(repeat('a', 100000000), 'a', 'bb', 'g')".into(), memory),
        ("SELECT string_agg(repeat('x', 1000), ',') FROM generate_series(1, 10000000)".into(), memory),
        ("SELECT array_agg(value) FROM generate_series(1, 500000000)".into(), memory_or_time),
        ("SELECT count(*) FROM generate_series(1, 50000000) a JOIN generate_series(1, 50000000) b ON a.value = b.value".into(), memory_or_time),
        ("SELECT value FROM generate_series(1, 200000000) ORDER BY random()".into(), memory_or_time),
        ("SELECT count(DISTINCT value) FROM generate_series(1, 500000000)".into(), memory_or_time),
        ("SELECT to_hex(value) FROM generate_series(1, 1000000000) ORDER BY 1 DESC".into(), memory_or_time),
        ("SELECT count(*) FROM generate_series(1, 100000000000)".into(), time),
        ("SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b".into(), time),
        ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t".into(), memory_or_time),
        (format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)), refused),
        (format!("SELECT {}", vec!["1"; 20000].join("+")), planning),
        ("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'".into(), refused),
        ("COPY (SELECT 1) TO '/tmp/pipeline-sql-limits.csv'".into(), refused),
        ("SELECT * FROM '/etc/passwd'".into(), refused),
        ("SET datafusion.execution.target_partitions = 64".into(), refused),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_answer_within_their_limits_while_the_proxy_keeps_serving() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("upstream");
    let upstream_address = upstream.local_addr().expect("address");
    let model_api = router(Arc::new(ModelApiConfig {
        latency: LatencyDistribution::Constant { ms: 1.0 },
        error_rate: 0.0,
        incidents: Vec::new(),
        started: Instant::now(),
    }));
    tokio::spawn(async move { axum::serve(upstream, model_api).await });

    let (proxy_port, admin_port, api_port) = (free_port(), free_port(), free_port());
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("pipelines.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sources.calls]
type = "proxy"
listen = "127.0.0.1:{proxy_port}"
admin_listen = "127.0.0.1:{admin_port}"
upstream = "http://{upstream_address}"

[operators.per_second]
type = "window"
inputs = ["calls"]
size = "1s"
key = ["model", "endpoint"]

[sinks.live]
type = "api"
inputs = ["per_second"]

[api]
listen = "127.0.0.1:{api_port}"
history = "{history}"
rules_file = "{history}/rules.json"
query_memory_mib = {MEMORY_MIB}
query_timeout = "{timeout}s"
"#,
            history = data.path().display(),
            timeout = TIMEOUT.as_secs(),
        ),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pipeline runs");
    let pipeline_pid = child.id();
    let _running = Running(child);
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    let proxy = format!("http://127.0.0.1:{proxy_port}/v1/chat/completions");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let api_up = client.get(format!("{api}/health")).send().await.is_ok();
        let proxy_up = client
            .post(&proxy)
            .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if api_up && proxy_up {
            break;
        }
        assert!(Instant::now() < deadline, "the pipeline did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_before = status_kib(pipeline_pid, "VmRSS").expect("pipeline RSS");

    // Calls through the proxy for the whole test, and the memory of the pipeline and of
    // every query worker it starts, sampled.
    let done = Arc::new(AtomicBool::new(false));
    let calls = {
        let (client, proxy, done) = (client.clone(), proxy.clone(), done.clone());
        tokio::spawn(async move {
            let mut answered = Vec::new();
            let mut failed = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let outcome = client
                    .post(&proxy)
                    .timeout(Duration::from_secs(5))
                    .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await;
                match outcome {
                    Ok(response) if response.status().is_success() => {
                        answered.push((sent, sent.elapsed()))
                    }
                    Ok(response) => failed.push(format!("status {}", response.status())),
                    Err(error) => failed.push(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (answered, failed)
        })
    };
    let peaks = Arc::new(Mutex::new((0u64, HashMap::<u32, u64>::new())));
    let sampler = {
        let (done, peaks) = (done.clone(), peaks.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let mut peaks = peaks.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(rss) = status_kib(pipeline_pid, "VmRSS") {
                    peaks.0 = peaks.0.max(rss);
                }
                for worker in children(pipeline_pid) {
                    if let Some(anonymous) = status_kib(worker, "RssAnon") {
                        let peak = peaks.1.entry(worker).or_default();
                        *peak = (*peak).max(anonymous);
                    }
                }
                drop(peaks);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut wrong = Vec::new();
    let corpus = hostile_queries();
    assert!(corpus.len() >= 20);
    for (sql, allowed) in &corpus {
        let sent = Instant::now();
        let response = client
            .post(format!("{api}/api/v1/query"))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("the API answers");
        let took = sent.elapsed();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        let shown: String = sql.chars().take(70).collect();
        eprintln!("{status} in {took:.2?}: {shown}: {}", body["error"]);
        if !allowed.contains(&status) || body["message"].as_str().is_none_or(str::is_empty) {
            wrong.push(format!(
                "{shown}: {status} {body} (expected one of {allowed:?})"
            ));
        }
        if took > TIMEOUT + Duration::from_secs(1) {
            wrong.push(format!(
                "{shown}: answered after {took:?}, past its limit plus a second"
            ));
        }
    }
    // A 50 MB body is refused before it is read, and before any worker starts.
    let (status, body) = common::post_head_only(
        &format!("127.0.0.1:{api_port}"),
        "/api/v1/query",
        50 * 1024 * 1024,
        &[],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
    // And the API still answers a plain query.
    let response = client
        .post(format!("{api}/api/v1/query"))
        .json(&serde_json::json!({ "sql": "SELECT 41 + 1 AS answer" }))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["rows"][0]["answer"], 42, "{body}");

    done.store(true, Ordering::Relaxed);
    let (answered, failed) = calls.await.expect("calls");
    sampler.join().expect("sampler");
    assert!(
        wrong.is_empty(),
        "answers out of their limits:\n{}",
        wrong.join("\n")
    );

    // The proxy served throughout: no failed call, and no gap of a second between answers.
    assert!(
        failed.is_empty(),
        "calls through the proxy failed: {failed:?}"
    );
    assert!(
        answered.len() > 100,
        "only {} calls answered",
        answered.len()
    );
    let mut worst_gap = Duration::ZERO;
    for pair in answered.windows(2) {
        let gap = (pair[1].0 + pair[1].1).duration_since(pair[0].0 + pair[0].1);
        worst_gap = worst_gap.max(gap);
    }
    let slowest = answered
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} calls through the proxy, slowest {slowest:?}, longest gap {worst_gap:?}",
        answered.len()
    );
    assert!(
        worst_gap < Duration::from_secs(1),
        "the proxy paused for {worst_gap:?}"
    );

    // The pipeline's own memory did not follow the queries', and no worker passed its limit.
    let (pipeline_peak, worker_peaks) = {
        let peaks = peaks.lock().unwrap_or_else(|e| e.into_inner());
        (peaks.0, peaks.1.clone())
    };
    eprintln!(
        "pipeline RSS {} MiB before, peak {} MiB; {} workers seen, largest {} MiB anonymous",
        rss_before / 1024,
        pipeline_peak / 1024,
        worker_peaks.len(),
        worker_peaks.values().max().copied().unwrap_or(0) / 1024
    );
    assert!(
        pipeline_peak < rss_before + 128 * 1024,
        "the pipeline grew from {rss_before} KiB to {pipeline_peak} KiB"
    );
    assert!(!worker_peaks.is_empty(), "no query worker was seen");
    let worker_limit = ((MEMORY_MIB + WORKER_ALLOWANCE_MIB) * 1024) as u64;
    for (worker, peak) in &worker_peaks {
        assert!(
            *peak <= worker_limit,
            "worker {worker} held {peak} KiB, over its {worker_limit} KiB"
        );
    }
}
