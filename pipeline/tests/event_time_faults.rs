//! Event time against the faults that used to break it, with the real RabbitMQ, PostgreSQL and
//! Redis: steady load published to the broker (as an edge does, holding what it cannot publish
//! and sending it on when the broker is back) through a central pipeline (rabbitmq → window →
//! PostgreSQL and Redis, and the raw calls → PostgreSQL), while, in turn:
//!
//! - events stamped in 2100 and in 1970 are mixed in with the good ones;
//! - PostgreSQL is stopped;
//! - Redis is stopped;
//! - RabbitMQ is stopped and started again;
//! - an event with a negative latency is mixed in.
//!
//! Afterwards every window in PostgreSQL holds exactly the good events sent in it, the raw
//! calls table holds every accepted call once, nothing went
//! to `late` (but the 1970 events), the 2100 events are in the dead-letter queue with the
//! reason `event_time_in_future`, and the negative latency is dead-lettered naming its field.
//!
//! Short in CI (`FAULT_OUTAGE=8s`, `FAULT_LOAD=24s`, 2 s windows, a 2 s idle timeout, so an
//! outage lasts four idle timeouts); in full with `benches/faults/run.sh` (60 s outages, 10 s
//! windows, the defaults' 10 s idle timeout). Under CI=true a missing service fails the test.

use std::collections::{BTreeMap, VecDeque};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::schema::api_call::{ApiCall, Outcome};
use engine::time::now_micros;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MODELS: [&str; 3] = ["gpt-4o", "llama-3-70b", "claude-sonnet-4"];
const YEAR_2100: i64 = 4_102_444_800_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    FutureAndPast,
    StopPostgres,
    StopRedis,
    RestartBroker,
    NegativeLatency,
}

struct Settings {
    outage: Duration,
    load: Duration,
    window: &'static str,
    window_secs: i64,
    idle: &'static str,
    rate: u64,
}

fn settings() -> Settings {
    let seconds = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(Duration::from_secs(default))
    };
    let full = std::env::var("FAULT_FULL").is_ok_and(|v| v == "1");
    Settings {
        outage: seconds("FAULT_OUTAGE", if full { 60 } else { 8 }),
        load: seconds("FAULT_LOAD", if full { 150 } else { 24 }),
        window: if full { "10s" } else { "2s" },
        window_secs: if full { 10 } else { 2 },
        idle: if full { "10s" } else { "2s" },
        rate: if full { 500 } else { 300 },
    }
}

fn cluster_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .expect("a cluster version")
}

fn run(command: &str, args: &[&str]) {
    let status = Command::new(command)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{command} runs: {e}"));
    assert!(status.success(), "{command} {args:?}");
}

fn stop(fault: Fault) {
    match fault {
        Fault::StopPostgres => run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &cluster_version(),
                "main",
                "stop",
                "-m",
                "fast",
            ],
        ),
        Fault::StopRedis => {
            let _ = Command::new("redis-cli")
                .args(["-p", "6379", "shutdown", "nosave"])
                .status();
        }
        Fault::RestartBroker => run("rabbitmqctl", &["-q", "stop_app"]),
        _ => {}
    }
}

fn start(fault: Fault) {
    match fault {
        Fault::StopPostgres => run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &cluster_version(),
                "main",
                "start",
            ],
        ),
        Fault::StopRedis => run(
            "redis-server",
            &[
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        ),
        Fault::RestartBroker => {
            run("rabbitmqctl", &["-q", "start_app"]);
            run("rabbitmqctl", &["-q", "await_startup"]);
        }
        _ => {}
    }
}

/// Events generated at a steady rate, stamped when generated, and published in messages of
/// ten; what cannot be published (the broker down) waits, in order, as an edge's buffer does.
async fn publish_load(
    queue: String,
    settings: &Settings,
    fault: Fault,
    sent: Arc<Mutex<Vec<ApiCall>>>,
    stop_at: Instant,
) {
    let mut buffer: VecDeque<(Vec<ApiCall>, String)> = VecDeque::new();
    let mut channel: Option<(Connection, lapin::Channel)> = None;
    let mut sequence = 0u64;
    let period = Duration::from_millis(100);
    let per_tick = (settings.rate / 10).max(1);
    let mut next = tokio::time::Instant::now();
    while Instant::now() < stop_at || !buffer.is_empty() {
        if Instant::now() < stop_at {
            let mut events = Vec::new();
            let mut alone = Vec::new();
            for _ in 0..per_tick {
                sequence += 1;
                let mut call = ApiCall {
                    event_time: now_micros(),
                    request_id: format!("req-{sequence}"),
                    model: Some(MODELS[(sequence % 3) as usize].to_string()),
                    endpoint: Some("/v1/chat/completions".to_string()),
                    status_code: Some(200),
                    outcome: Outcome::Ok,
                    latency_ms: 10.0 + (sequence % 50) as f64,
                    ..Default::default()
                };
                match fault {
                    Fault::FutureAndPast if sequence.is_multiple_of(97) => {
                        call.event_time = YEAR_2100 + sequence as i64;
                        call.model = Some("from-2100".into());
                    }
                    Fault::FutureAndPast if sequence.is_multiple_of(89) => {
                        call.event_time = 1_000_000 + sequence as i64;
                        call.model = Some("from-1970".into());
                    }
                    Fault::NegativeLatency if sequence % 500 == 250 => {
                        // In a message of its own: the message is refused whole.
                        call.latency_ms = -5.0;
                        call.model = Some("negative".into());
                        alone.push(vec![call]);
                        continue;
                    }
                    _ => {}
                }
                events.push(call);
            }
            let mut chunks: Vec<Vec<ApiCall>> =
                events.chunks(10).map(<[ApiCall]>::to_vec).collect();
            chunks.extend(alone);
            for chunk in chunks {
                buffer.push_back((chunk, format!("{queue}-{sequence}-{}", buffer.len())));
            }
        }
        while let Some((events, message_id)) = buffer.front() {
            if channel.is_none() {
                channel = match Connection::connect(AMQP, ConnectionProperties::default()).await {
                    Ok(connection) => match connection.create_channel().await {
                        Ok(channel) => {
                            let _ = channel.confirm_select(Default::default()).await;
                            Some((connection, channel))
                        }
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
            }
            let Some((_, publisher)) = &channel else {
                break;
            };
            let body = engine::codec::encode_api_calls_json(events.iter()).unwrap();
            let published = publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_message_id(message_id.as_str().into())
                        .with_delivery_mode(2)
                        .with_content_type(engine::codec::JSON_CONTENT_TYPE.into()),
                )
                .await;
            let confirmed = match published {
                Ok(confirm) => confirm.await.is_ok(),
                Err(_) => false,
            };
            if !confirmed {
                channel = None;
                break;
            }
            let (events, _) = buffer.pop_front().expect("the front");
            sent.lock().unwrap().extend(events);
        }
        next += period;
        tokio::time::sleep_until(next).await;
    }
}

struct Observed {
    expected: BTreeMap<(i64, String), u64>,
    actual: BTreeMap<(i64, String), u64>,
    late: u64,
    future_events: u64,
    dead_letters: Vec<(String, String)>,
    sent: Vec<ApiCall>,
    /// (rows, distinct request ids) of the raw calls in PostgreSQL.
    raw: (i64, i64),
}

async fn scenario(fault: Fault) -> Observed {
    let settings = settings();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let queue = format!("faults-{id}");
    let schema = format!("faults_{id}");
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[runtime]
checkpoint_interval = "1s"
checkpoint_dir = "{checkpoints}"
idle_timeout = "{idle}"

[sources.calls]
type = "rabbitmq"
url = "{AMQP}"
queue = "{queue}"
prefetch = 200
reconnect_max = "1s"

[operators.w]
type = "window"
inputs = ["calls"]
size = "{window}"
key = ["model"]
out_of_orderness = "1s"
idle_timeout = "{idle}"

[sinks.db]
type = "timescaledb"
inputs = ["w"]
url = "{PG}"
schema = "{schema}"

# The raw calls too, as the root pipelines.toml keeps them: a store that is down holds the
# source back, not only the window.
[sinks.db_calls]
type = "timescaledb"
inputs = ["calls"]
url = "{PG}"
schema = "{schema}"

[sinks.live]
type = "redis"
inputs = ["w"]
key_prefix = "{queue}"
"#,
        checkpoints = data.path().join("checkpoints").display(),
        idle = settings.idle,
        window = settings.window,
    );
    // The queue exists before anything is published to it (as the root pipelines.toml's edge
    // declares it), so nothing published before the pipeline starts is lost.
    {
        let connection = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "declared".into()).await;
    }
    let pipeline = engine::runtime::build_from_text(
        "faults.toml",
        &config,
        |_| None,
        &pipeline::components::registry(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let metrics = pipeline.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(pipeline.run(shutdown.clone()));

    let sent = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + settings.load;
    let publisher = tokio::spawn({
        let (queue, sent) = (queue.clone(), sent.clone());
        async move { publish_load(queue, &settings, fault, sent, stop_at).await }
    });
    let settings = self::settings();
    // The fault a third of the way in, for `outage`.
    tokio::time::sleep(settings.load / 3).await;
    if matches!(
        fault,
        Fault::StopPostgres | Fault::StopRedis | Fault::RestartBroker
    ) {
        eprintln!("{fault:?}: down for {:?}", settings.outage);
        stop(fault);
        tokio::time::sleep(settings.outage).await;
        start(fault);
        eprintln!("{fault:?}: back");
    }
    tokio::time::timeout(settings.load * 3 + settings.outage * 2, publisher)
        .await
        .expect("the load is published")
        .unwrap();
    // Wait until the pipeline has taken every message, and a little past the last window.
    let (connection, channel) = loop {
        if let Ok(connection) = Connection::connect(AMQP, ConnectionProperties::default()).await {
            if let Ok(channel) = connection.create_channel().await {
                break (connection, channel);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ready = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(u32::MAX);
        let unacked = metrics
            .get("calls")
            .map_or(0, |m| m.named_values().get("unacked").copied().unwrap_or(0));
        if ready == 0 && unacked == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline never caught up: {ready} ready, {unacked} unacked"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Then until event time has passed the end of the last window the calls fall in (idle,
    // it advances with the wall clock), so every window closed on its own.
    let last_window_end = {
        let window_micros = settings.window_secs * 1_000_000;
        let now = now_micros();
        let newest = sent
            .lock()
            .unwrap()
            .iter()
            .map(|call| call.event_time)
            .filter(|&t| t <= now + 300_000_000)
            .max()
            .unwrap_or(now);
        (newest.div_euclid(window_micros) + 1) * window_micros
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let watermark = metrics.get("w").map_or(i64::MIN, |m| {
            m.watermark.load(std::sync::atomic::Ordering::Relaxed)
        });
        if watermark >= last_window_end {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "event time stopped at {watermark} µs, before the last window's end {last_window_end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("the pipeline stops")
        .unwrap()
        .unwrap_or_else(|e| panic!("{fault:?}: the pipeline failed: {e}"));
    let window = report.component("w").unwrap();
    let late = window.metrics.late;
    let future_events = report
        .component("calls")
        .and_then(|c| c.counters.get("future_events").copied())
        .unwrap_or(0);

    let sent = sent.lock().unwrap().clone();
    let window_micros = settings.window_secs * 1_000_000;
    let mut expected: BTreeMap<(i64, String), u64> = BTreeMap::new();
    let now = now_micros();
    for call in &sent {
        // Only what a window can hold: not from 2100 (dead-lettered), not from 1970 (late),
        // not the negative latency (dead-lettered).
        if call.event_time > now + 300_000_000
            || call.event_time < 1_000_000_000_000_000
            || call.latency_ms < 0.0
        {
            continue;
        }
        let start = call.event_time.div_euclid(window_micros) * window_micros / 1_000_000;
        *expected
            .entry((start, call.model.clone().unwrap()))
            .or_default() += 1;
    }
    let (pg, connection_task) = tokio_postgres::connect(PG, NoTls)
        .await
        .expect("PostgreSQL is back");
    tokio::spawn(connection_task);
    let rows = pg
        .query(
            &format!("SELECT extract(epoch FROM window_start)::bigint, model, count FROM \"{schema}\".window_metrics"),
            &[],
        )
        .await
        .unwrap();
    let actual: BTreeMap<(i64, String), u64> = rows
        .iter()
        .map(|r| {
            (
                (r.get::<_, i64>(0), r.get::<_, String>(1)),
                r.get::<_, i64>(2) as u64,
            )
        })
        .collect();
    let raw_row = pg
        .query_one(
            &format!("SELECT count(*), count(DISTINCT request_id) FROM \"{schema}\".api_calls"),
            &[],
        )
        .await
        .unwrap();
    let raw = (raw_row.get::<_, i64>(0), raw_row.get::<_, i64>(1));
    let mut dead_letters = Vec::new();
    let dead_queue = format!("{queue}.dead");
    while let Ok(Some(message)) = channel
        .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(text)) => text.to_string(),
            _ => String::new(),
        };
        dead_letters.push((header("x-pipeline-reason"), header("x-pipeline-error")));
    }
    for name in [queue.as_str(), dead_queue.as_str()] {
        let _ = channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = pg
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await;
    let _ = connection.close(200, "done".into()).await;
    Observed {
        expected,
        actual,
        late,
        future_events,
        dead_letters,
        sent,
        raw,
    }
}

fn services_or_skip() -> bool {
    let checks = [
        (
            "RabbitMQ",
            Command::new("rabbitmqctl").args(["-q", "status"]).output(),
        ),
        (
            "PostgreSQL",
            Command::new("pg_isready")
                .args(["-h", "127.0.0.1"])
                .output(),
        ),
        ("Redis", Command::new("redis-cli").arg("ping").output()),
    ];
    for (name, output) in checks {
        if !output.is_ok_and(|o| o.status.success()) {
            engine::testing::missing(name, "start it as .ci/run does");
            return false;
        }
    }
    true
}

fn assert_exact(fault: Fault, outcome: &Observed) {
    assert!(!outcome.expected.is_empty());
    let missing: Vec<_> = outcome
        .expected
        .iter()
        .filter(|(key, count)| outcome.actual.get(*key) != Some(*count))
        .map(|(key, count)| (key.clone(), *count, outcome.actual.get(key).copied()))
        .collect();
    assert!(
        missing.is_empty(),
        "{fault:?}: {} of {} windows wrong (window, expected, found): {:?}",
        missing.len(),
        outcome.expected.len(),
        &missing[..missing.len().min(20)]
    );
    let extra: Vec<_> = outcome
        .actual
        .keys()
        .filter(|key| !outcome.expected.contains_key(*key))
        .collect();
    assert!(
        extra.is_empty(),
        "{fault:?}: windows nothing was sent to: {extra:?}"
    );
    // Every raw call the decoder accepted is in PostgreSQL once: all but the dead-lettered
    // ones (from 2100, and the negative latency), the 1970 ones included.
    let accepted = outcome
        .sent
        .iter()
        .filter(|call| call.event_time < YEAR_2100 && call.latency_ms >= 0.0)
        .count() as i64;
    assert_eq!(
        outcome.raw,
        (accepted, accepted),
        "{fault:?}: raw api_calls in PostgreSQL (rows, distinct request ids)"
    );
    eprintln!(
        "{fault:?}: {} events in {} windows, all exact; raw calls {} once each; late {}, future {}, dead letters {}",
        outcome.sent.len(),
        outcome.expected.len(),
        outcome.raw.0,
        outcome.late,
        outcome.future_events,
        outcome.dead_letters.len()
    );
}

/// The scenarios run one after another: each stops a service the others use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_survives_bad_events_and_outages() {
    if !services_or_skip() {
        return;
    }
    let only = std::env::var("FAULT_ONLY").ok();
    for fault in [
        Fault::FutureAndPast,
        Fault::NegativeLatency,
        Fault::StopPostgres,
        Fault::StopRedis,
        Fault::RestartBroker,
    ] {
        if only
            .as_deref()
            .is_some_and(|o| !format!("{fault:?}").eq_ignore_ascii_case(o))
        {
            continue;
        }
        let outcome = scenario(fault).await;
        assert_exact(fault, &outcome);
        match fault {
            Fault::FutureAndPast => {
                let from_2100 = outcome
                    .sent
                    .iter()
                    .filter(|c| c.event_time > YEAR_2100 - 1)
                    .count() as u64;
                let from_1970 = outcome
                    .sent
                    .iter()
                    .filter(|c| c.event_time < 1_000_000_000_000_000)
                    .count() as u64;
                assert!(from_2100 > 0 && from_1970 > 0);
                assert_eq!(outcome.future_events, from_2100);
                assert_eq!(outcome.late, from_1970, "only the 1970 events are late");
                assert!(
                    outcome
                        .dead_letters
                        .iter()
                        .all(|(reason, _)| reason == "event_time_in_future"),
                    "{:?}",
                    outcome.dead_letters
                );
                assert_eq!(
                    outcome.dead_letters.len() as u64,
                    from_2100,
                    "one letter per message with one"
                );
            }
            Fault::NegativeLatency => {
                assert_eq!(outcome.late, 0);
                assert!(!outcome.dead_letters.is_empty());
                assert!(
                    outcome
                        .dead_letters
                        .iter()
                        .all(|(reason, error)| reason == "decode_error"
                            && error.contains("field `latency_ms` is -5")),
                    "{:?}",
                    outcome.dead_letters
                );
            }
            _ => {
                assert_eq!(outcome.late, 0, "{fault:?}: nothing late");
                assert!(
                    outcome.dead_letters.is_empty(),
                    "{:?}",
                    outcome.dead_letters
                );
            }
        }
    }
}
