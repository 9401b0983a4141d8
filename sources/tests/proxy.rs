//! The proxy source against a real upstream on loopback: forwarding (streaming without
//! buffering, hop-by-hop headers, X-Forwarded-*), the events it emits (models and routes,
//! TTFT and tokens, outcomes for errors, timeouts, unreachable upstreams and client aborts),
//! and fail-open behaviour when the pipeline behind it is stuck.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::schema::api_call::{ApiCall, Outcome};
use engine::time::now_micros;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

mod proxy_harness;
use proxy_harness::{client, free_port, one_connection_client, post_chat, raw_exchange, Proxy};

/// Body frames fed from a channel, for a streaming upstream.
struct Frames(mpsc::Receiver<Bytes>);

impl futures::Stream for Frames {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type UpstreamBody = Either<Full<Bytes>, StreamBody<Frames>>;

fn json(value: serde_json::Value) -> Response<UpstreamBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(value.to_string()))));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

fn sse(frames: &'static [&'static str]) -> Response<UpstreamBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        for (i, frame) in frames.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            if tx
                .send(Bytes::from(format!("data: {frame}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let mut response = Response::new(Either::Right(StreamBody::new(Frames(rx))));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

const STREAM: &[&str] = &[
    r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
    r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#,
];

async fn upstream_handler(
    mut request: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let path = request.uri().path().to_string();
    let target = request.uri().to_string();
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buffer = [0u8; 64];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut io, &mut buffer).await {
                    if n == 0
                        || tokio::io::AsyncWriteExt::write_all(&mut io, &buffer[..n])
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
        *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        response
            .headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return Ok(response);
    }
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = match path.as_str() {
        "/v1/chat/completions" => {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if request["stream"] == true {
                sse(STREAM)
            } else {
                json(
                    serde_json::json!({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 12, "completion_tokens": 34}}),
                )
            }
        }
        "/headers" => json(serde_json::Value::Object(headers)),
        "/echo" => Response::new(Either::Left(Full::new(body))),
        "/blob" => {
            // 8 MiB in 1 MiB chunks, sent chunked.
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                for part in 0..8u64 {
                    if tx.send(Bytes::from(blob_part(part))).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(Either::Right(StreamBody::new(Frames(rx))))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            json(serde_json::json!({}))
        }
        "/error" => {
            let mut response = json(serde_json::json!({"error": "overloaded"}));
            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            response
        }
        _ => json(serde_json::json!({"outputs": [], "path": path, "target": target})),
    };
    Ok(response)
}

/// Deterministic, incompressible-looking bytes for part `part` of the blob.
fn blob_part(part: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ part;
    (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        service_fn(upstream_handler),
                    )
                    .await;
            });
        }
    });
    address
}

on_both_paths! {
async fn calls_are_forwarded_streamed_and_measured() {
    let upstream = start_upstream().await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let client = client();

    let plain = client
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body(r#"{"model": "gpt-4o", "messages": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain
        .text()
        .await
        .unwrap()
        .contains("\"completion_tokens\":34"));

    // The stream passes through as it is produced: the first content chunk arrives well before
    // the end of the stream.
    let started = Instant::now();
    let mut stream = client
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body(r#"{"stream": true, "model": "llama-3-70b"}"#)
        .send()
        .await
        .unwrap();
    let mut first_content = None;
    let mut text = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if first_content.is_none() && text.contains("Hel") {
            first_content = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first_content = first_content.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        total - first_content >= Duration::from_millis(250),
        "first token at {first_content:?}, end at {total:?}"
    );

    let infer = client
        .post(format!(
            "{}/v2/models/resnet-50/versions/2/infer",
            proxy.url
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(infer.status(), 200);
    let health: serde_json::Value = reqwest::get(format!("{}/health", proxy.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    let chat = calls
        .iter()
        .find(|c| c.model.as_deref() == Some("gpt-4o"))
        .unwrap();
    assert_eq!(chat.endpoint.as_deref(), Some("/v1/chat/completions"));
    assert_eq!((chat.status_code, chat.outcome), (Some(200), Outcome::Ok));
    assert_eq!(
        (chat.input_tokens, chat.output_tokens),
        (Some(12), Some(34))
    );
    assert_eq!(chat.request_bytes, Some(35));
    assert!(chat.ttfb_ms.unwrap() <= chat.latency_ms);
    let streamed = calls
        .iter()
        .find(|c| c.model.as_deref() == Some("llama-3-70b"))
        .unwrap();
    let ttft = streamed.ttft_ms.unwrap();
    assert!((140.0..400.0).contains(&ttft), "ttft {ttft}");
    assert!(
        streamed.latency_ms >= 440.0,
        "latency {}",
        streamed.latency_ms
    );
    assert_eq!(
        (
            streamed.input_tokens,
            streamed.output_tokens,
            streamed.output_tokens_estimated
        ),
        (Some(9), Some(2), Some(false))
    );
    // Two tokens over the ~300 ms after the first one.
    let rate = streamed.output_tokens_per_second.unwrap();
    assert!((2.0..10.0).contains(&rate), "tokens/s {rate}");
    let infer = calls
        .iter()
        .find(|c| c.model.as_deref() == Some("resnet-50"))
        .unwrap();
    assert_eq!(
        infer.endpoint.as_deref(),
        Some("/v2/models/{model}/versions/{version}/infer")
    );
    let authority = upstream.to_string();
    assert!(calls
        .iter()
        .all(|c| c.upstream.as_deref() == Some(authority.as_str())));
}
}

on_both_paths! {
async fn headers_follow_rfc_9110_and_carry_forwarding_information() {
    let upstream = start_upstream().await;
    let proxy = Proxy::start(
        &format!("http://{upstream}"),
        "overhead_header = \"x-proxy-overhead-ms\"",
        64,
    )
    .await;
    let response = client()
        .get(format!("{}/headers", proxy.url))
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-request-id", "req-42")
        .header("authorization", "Bearer secret")
        .send()
        .await
        .unwrap();
    let overhead: f64 = response.headers()["x-proxy-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..50.0).contains(&overhead), "overhead {overhead} ms");
    let seen: serde_json::Value = response.json().await.unwrap();
    assert!(seen.get("x-hop").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["host"], upstream.to_string());
    assert_eq!(seen["x-request-id"], "req-42");
    assert_eq!(seen["authorization"], "Bearer secret");
    let calls = proxy.stop().await;
    assert_eq!(calls[0].request_id, "req-42");
}
}

#[tokio::test]
async fn a_call_without_a_request_id_gets_one_upstream_and_in_its_event_on_both_paths() {
    let upstream = start_upstream().await;
    for settings in ["", "http1_forwarding = \"hyper\""] {
        let proxy = Proxy::start(&format!("http://{upstream}"), settings, 64).await;
        let response = client()
            .get(format!("{}/headers", proxy.url))
            .send()
            .await
            .unwrap();
        let seen: serde_json::Value = response.json().await.unwrap();
        let sent_upstream = seen["x-request-id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let calls = proxy.stop().await;
        assert_eq!(calls.len(), 1, "{settings}: {calls:?}");
        assert!(
            uuid::Uuid::parse_str(&sent_upstream).is_ok(),
            "{settings}: the upstream got {seen}"
        );
        assert_eq!(calls[0].request_id, sent_upstream, "{settings}");
    }
}

on_both_paths! {
async fn the_upstream_gets_origin_form_targets_under_its_base_path() {
    let upstream = start_upstream().await;
    // HTTP/1.1 calls go over the client connection's own upstream connection, HTTP/2 calls
    // over the shared pool: both send the origin-form target RFC 9112 §3.2.1 asks for. An h2c
    // upstream gets the path in `:path` (hyper shows it as an absolute URI).
    let cases = [
        ("", false, "/base/v2/models/m/ready?verbose=1".to_string()),
        ("", true, "/base/v2/models/m/ready?verbose=1".to_string()),
        (
            "upstream_protocol = \"h2c\"",
            false,
            format!("http://{upstream}/base/v2/models/m/ready?verbose=1"),
        ),
    ];
    for (settings, http2_client, expected) in cases {
        let proxy = Proxy::start(&format!("http://{upstream}/base/"), settings, 64).await;
        let client = if http2_client {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        } else {
            client()
        };
        let seen: serde_json::Value = client
            .get(format!("{}/v2/models/m/ready?verbose=1", proxy.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["target"], expected.as_str(), "{settings} {seen}");
        proxy.stop().await;
    }
}
}

on_both_paths! {
async fn errors_timeouts_and_unreachable_upstreams_are_answered_and_recorded() {
    let upstream = start_upstream().await;
    let proxy = Proxy::start(
        &format!("http://{upstream}"),
        "response_timeout = \"300ms\"",
        64,
    )
    .await;
    let client = client();
    let error = client
        .get(format!("{}/error", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error.status(), 503);
    let slow = client
        .get(format!("{}/slow", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    let body: serde_json::Value = slow.json().await.unwrap();
    assert_eq!(body["error"]["type"], "timeout");
    let calls = proxy.stop().await;
    let outcomes: Vec<(Option<u16>, Outcome)> =
        calls.iter().map(|c| (c.status_code, c.outcome)).collect();
    assert!(
        outcomes.contains(&(Some(503), Outcome::ServerError)),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(Some(504), Outcome::Timeout)),
        "{outcomes:?}"
    );

    let closed = free_port();
    let proxy = Proxy::start(&format!("http://127.0.0.1:{closed}"), "", 64).await;
    // The body is never read when the upstream cannot be reached, so the model comes from the
    // path (or a configured header) here.
    let response = client
        .post(format!("{}/v2/models/m/infer", proxy.url))
        .body(r#"{"inputs":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_unreachable");
    let calls = proxy.stop().await;
    assert_eq!(calls[0].outcome, Outcome::UpstreamUnreachable);
    assert_eq!(calls[0].model.as_deref(), Some("m"));
}
}

#[tokio::test]
async fn an_events_time_is_when_its_call_completed_on_both_forwarding_paths() {
    let upstream = start_upstream().await;
    for settings in ["", "http1_forwarding = \"hyper\""] {
        let proxy = Proxy::start(&format!("http://{upstream}"), settings, 64).await;
        let sent = now_micros();
        let response = client()
            .get(format!("{}/slow", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{settings}");
        response.bytes().await.unwrap();
        // The event is complete once the last byte has been written, which may be just after
        // the client has read it: the bound is taken after the proxy has stopped.
        let calls = proxy.stop().await;
        let stopped = now_micros();
        assert_eq!(calls.len(), 1, "{settings}: {calls:?}");
        let call = &calls[0];
        // The upstream holds `/slow` for 2 s: the event's time is its end, not its start.
        assert!(call.latency_ms >= 2_000.0, "{settings}: {call:?}");
        assert!(
            call.event_time >= sent + 2_000_000 && call.event_time <= stopped,
            "{settings}: sent {sent}, stopped {stopped}, {call:?}"
        );
        // 1 µs either way: the time adds whole µs of the call's duration, latency_ms is exact.
        let start = call.event_time - (call.latency_ms * 1000.0).round() as i64;
        assert!(
            (sent - 1..=sent + 1_000_000).contains(&start),
            "{settings}: the call's start (event_time - latency) {start} is not just after {sent}"
        );
    }
}

on_both_paths! {
async fn a_client_that_goes_away_mid_stream_is_recorded_as_an_abort() {
    let upstream = start_upstream().await;
    let mut proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let mut response = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body(r#"{"stream": true, "model": "m"}"#)
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap();
    drop(response);
    proxy.wait_for_calls(1).await;
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].outcome, Outcome::ClientAbort);
}
}

on_both_paths! {
async fn calls_succeed_when_the_pipeline_behind_the_proxy_is_stuck() {
    let upstream = start_upstream().await;
    // Nobody reads the proxy's output (capacity 1) and its queue holds 2 events.
    let proxy = Proxy::start(
        &format!("http://{upstream}"),
        "queue_capacity = 2\nbatch_size = 1",
        1,
    )
    .await;
    let client = client();
    let started = Instant::now();
    for _ in 0..50 {
        let response = post_chat(&client, &proxy.url, r#"{"model":"m"}"#).await;
        assert_eq!(response.status(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls were slowed: {:?}",
        started.elapsed()
    );
    let dropped = proxy.metrics.snapshot().dropped;
    assert!(dropped >= 40, "only {dropped} events dropped");
    // The source is blocked on its full output; the test ends without waiting for it.
    proxy.shutdown.cancel();
}
}

/// `GET path` on the proxy's admin endpoint: status and JSON body.
async fn admin(proxy: &Proxy, path: &str) -> (u16, serde_json::Value) {
    let response = client()
        .get(format!("{}{path}", proxy.admin))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_whether_the_upstream_answers_and_whether_events_get_through() {
    let upstream = start_upstream().await;
    // Nobody reads the proxy's output (capacity 1) and its queue holds 2 events.
    let proxy = Proxy::start(
        &format!("http://{upstream}"),
        "queue_capacity = 2\nbatch_size = 1",
        1,
    )
    .await;
    // No call yet: the health check connects to the upstream itself.
    let (status, ready) = admin(&proxy, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["upstream"]["reachable"], true, "{ready}");
    assert_eq!(
        ready["checks"]["upstream"]["checked_by"], "probe",
        "{ready}"
    );

    // Liveness never touches the network: before any call it knows nothing of the upstream
    // beyond that probe.
    let (_, health) = admin(&proxy, "/health").await;
    assert_eq!(
        health["checks"]["upstream"]["checked_by"], "probe",
        "{health}"
    );

    let client = client();
    assert_eq!(
        post_chat(&client, &proxy.url, r#"{"model":"m"}"#)
            .await
            .status(),
        200
    );
    let (status, health) = admin(&proxy, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        health["checks"]["upstream"]["checked_by"], "calls",
        "{health}"
    );
    assert_eq!(health["checks"]["event_path"]["state"], "ok", "{health}");

    // The pipeline is stuck: calls still pass, events are dropped, and health says so.
    for _ in 0..20 {
        assert_eq!(
            post_chat(&client, &proxy.url, r#"{"model":"m"}"#)
                .await
                .status(),
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let (_, health) = admin(&proxy, "/health").await;
        if health["checks"]["event_path"]["state"] == "dropping" {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "never reported dropping: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["checks"]["event_path"]["events_dropped"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        health["checks"]["event_path"]["queued_batches"], 2,
        "{health}"
    );
    // Calls still pass, so the proxy stays ready.
    assert_eq!(admin(&proxy, "/ready").await.0, 200);
    proxy.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_be_reached_makes_the_proxy_unready_with_the_reason() {
    let closed = free_port();
    let proxy = Proxy::start(&format!("http://127.0.0.1:{closed}"), "", 64).await;
    // Liveness alone does not probe: nothing is known yet.
    let (status, health) = admin(&proxy, "/health").await;
    assert_eq!((status, &health["status"]), (200, &serde_json::json!("ok")));
    assert_eq!(
        health["checks"]["upstream"]["checked_by"], "none",
        "{health}"
    );
    let (status, ready) = admin(&proxy, "/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    let upstream = &ready["checks"]["upstream"];
    assert_eq!(upstream["reachable"], false, "{ready}");
    assert_eq!(upstream["checked_by"], "probe", "{ready}");
    let error = upstream["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("cannot connect to 127.0.0.1:{closed}")),
        "{error}"
    );
    // Liveness stays 200 (restarting the proxy would not bring the upstream back) and reports
    // the probe's finding.
    let (status, health) = admin(&proxy, "/health").await;
    assert_eq!(
        (status, &health["status"]),
        (200, &serde_json::json!("degraded"))
    );

    // A call learns the same, and then speaks for the upstream.
    assert_eq!(post_chat(&client(), &proxy.url, "{}").await.status(), 502);
    let (status, ready) = admin(&proxy, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(
        ready["checks"]["upstream"]["checked_by"], "calls",
        "{ready}"
    );
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].outcome, Outcome::UpstreamUnreachable);
}

on_both_paths! {
async fn a_workers_partial_batch_reaches_the_pipeline_within_linger() {
    let upstream = start_upstream().await;
    // Three calls never fill a batch of 1,024: they must still arrive while the proxy runs.
    let mut proxy = Proxy::start(&format!("http://{upstream}"), "batch_size = 1024", 64).await;
    let client = client();
    for _ in 0..3 {
        let response = post_chat(&client, &proxy.url, r#"{"model":"m"}"#).await;
        assert_eq!(response.status(), 200);
    }
    let mut rows = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while rows < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, proxy.events.recv()).await {
            Ok(Some(engine::message::Message::Data(batch))) => rows += batch.num_rows(),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("{rows} of 3 events arrived within 2 s (linger 20 ms)"),
        }
    }
    assert_eq!(rows, 3);
    assert!(proxy.stop().await.is_empty());
}
}

on_both_paths! {
async fn http2_cleartext_clients_are_served() {
    let upstream = start_upstream().await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = Request::post(format!("{}/v1/chat/completions", proxy.url))
        .body(Full::new(Bytes::from_static(br#"{"model": "gpt-4o"}"#)))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("completion_tokens"));
    let calls = proxy.stop().await;
    assert_eq!(calls[0].model.as_deref(), Some("gpt-4o"));
}
}

on_both_paths! {
async fn websocket_upgrades_pass_through_or_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = start_upstream().await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let address = proxy.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream.write_all(b"ping-through-proxy").await.unwrap();
    let mut echoed = [0u8; 18];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping-through-proxy");
    drop(stream);
    let calls = proxy.stop().await;
    assert_eq!(calls[0].status_code, Some(101));

    let refusing = Proxy::start(&format!("http://{upstream}"), "websocket = \"refuse\"", 64).await;
    let response = client()
        .get(format!("{}/ws", refusing.url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 501);
    refusing.stop().await;
}
}

on_both_paths! {
async fn large_bodies_pass_through_byte_for_byte_in_both_directions() {
    let upstream = start_upstream().await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let client = client();
    let downloaded = client
        .get(format!("{}/blob", proxy.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let expected: Vec<u8> = (0..8).flat_map(blob_part).collect();
    assert_eq!(downloaded.len(), expected.len());
    assert!(
        downloaded.as_ref() == expected.as_slice(),
        "the downloaded body differs"
    );

    let upload: Vec<u8> = (0..4).flat_map(blob_part).collect();
    let echoed = client
        .post(format!("{}/echo", proxy.url))
        .body(upload.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        echoed.as_ref() == upload.as_slice(),
        "the echoed body differs"
    );

    let calls = proxy.stop().await;
    let blob = calls
        .iter()
        .find(|c| c.endpoint.as_deref() == Some("/blob"))
        .unwrap();
    assert_eq!(blob.response_bytes, Some(8 << 20));
    let echo = calls
        .iter()
        .find(|c| c.endpoint.as_deref() == Some("/echo"))
        .unwrap();
    assert_eq!(
        (echo.request_bytes, echo.response_bytes),
        (Some(4 << 20), Some(4 << 20))
    );
}
}

/// Sends raw bytes and returns what the proxy answered (until it closes the connection).
#[tokio::test]
async fn malformed_requests_get_a_4xx_and_an_event_and_the_proxy_carries_on() {
    malformed_requests_on("").await;
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_an_event_on_hyper_s_path_too() {
    malformed_requests_on("http1_forwarding = \"hyper\"").await;
}

/// Malformed requests against a proxy with `settings`.
async fn malformed_requests_on(settings: &str) {
    let upstream = start_upstream().await;
    let mut proxy = Proxy::start(&format!("http://{upstream}"), settings, 64).await;
    let address = proxy.url.trim_start_matches("http://").to_string();
    let invalid_header = raw_exchange(
        &address,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n",
    )
    .await;
    assert!(
        invalid_header.starts_with("HTTP/1.1 400"),
        "{invalid_header:?}"
    );
    let bad_length = raw_exchange(
        &address,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    )
    .await;
    assert!(bad_length.starts_with("HTTP/1.1 400"), "{bad_length:?}");
    let mut oversized = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 512 * 1024));
    oversized.extend_from_slice(b"\r\n\r\n");
    let too_large = raw_exchange(&address, &oversized).await;
    assert!(
        too_large.starts_with("HTTP/1.1 431"),
        "{:?}",
        &too_large[..too_large.len().min(80)]
    );
    // A valid call, then a malformed one on the same connection: the first answer is the
    // upstream's, byte for byte, the second the proxy's JSON refusal.
    let after_a_call = raw_exchange(
        &address,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n",
    )
    .await;
    assert!(after_a_call.starts_with("HTTP/1.1 200"), "{after_a_call:?}");
    let second = after_a_call
        .find("HTTP/1.1 400")
        .map(|at| &after_a_call[at..])
        .unwrap_or_else(|| panic!("no 400 after the 200: {after_a_call:?}"));
    for answer in [
        invalid_header.as_str(),
        bad_length.as_str(),
        too_large.as_str(),
        second,
    ] {
        assert_json_refusal(answer);
    }
    // A chunked body whose chunk size is not a number.
    let bad_chunk = raw_exchange(
        &address,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert!(bad_chunk.starts_with("HTTP/1.1 400"), "{bad_chunk:?}");
    // A client that promises a body and goes away half-way through it.
    let truncated = raw_exchange(
        &address,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\": \"gpt",
    );
    let _ = tokio::time::timeout(Duration::from_millis(300), truncated).await;
    // And it still serves.
    let ok = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .body(r#"{"model": "m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Four refusals, the call before the second one, the bad chunk, the half-sent body and
    // the last call.
    proxy.wait_for_calls(8).await;
    let calls = proxy.stop().await;
    let malformed: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.endpoint.as_deref() == Some(sources::proxy::MALFORMED_ROUTE))
        .collect();
    let mut statuses: Vec<u16> = malformed.iter().filter_map(|c| c.status_code).collect();
    statuses.sort();
    assert_eq!(statuses, [400, 400, 400, 431], "{calls:#?}");
    assert!(malformed
        .iter()
        .all(|c| c.outcome == Outcome::ClientError && c.error.is_some()));
    // Each event records the bytes of the JSON body the client was sent.
    assert!(
        malformed
            .iter()
            .all(|c| c.response_bytes.is_some_and(|bytes| bytes > 20)),
        "{malformed:#?}"
    );
    assert!(calls.iter().any(|c| c.status_code == Some(200)));
    // The bad chunk and the half-sent body: calls started, then the client's doing.
    let started: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.endpoint.as_deref() == Some("/v1/chat/completions"))
        .filter(|c| c.status_code != Some(200))
        .collect();
    assert_eq!(started.len(), 2, "{calls:#?}");
    assert!(
        started.iter().any(|c| c.outcome == Outcome::ClientError
            && c.status_code == Some(400)
            && c.error.is_some()),
        "{started:#?}"
    );
    assert!(
        started.iter().any(|c| c.outcome == Outcome::ClientAbort),
        "{started:#?}"
    );
}

/// `answer` is an HTTP/1.1 4xx with the proxy's JSON error body, its length as sent.
fn assert_json_refusal(answer: &str) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head: {answer:?}"));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{head} / {body}"
    );
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(value["error"]["source"], "proxy", "{body}");
    assert_eq!(value["error"]["type"], "bad_request", "{body}");
    assert!(value["error"]["message"].is_string(), "{body}");
}

/// Connections an upstream has accepted, and how many of them are still open.
#[derive(Default)]
struct ConnectionCount {
    accepted: std::sync::atomic::AtomicUsize,
    open: std::sync::atomic::AtomicUsize,
}

/// A minimal upstream that counts its connections; with `keep_alive` false it closes each
/// connection after one response.
async fn start_counting_upstream(keep_alive: bool) -> (SocketAddr, Arc<ConnectionCount>) {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let count = Arc::new(ConnectionCount::default());
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.accepted.fetch_add(1, Ordering::SeqCst);
            counter.open.fetch_add(1, Ordering::SeqCst);
            let counter = counter.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                    .await;
                counter.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (address, count)
}

on_both_paths! {
async fn a_client_connection_keeps_one_upstream_connection_and_reconnects_when_it_closes() {
    use std::sync::atomic::Ordering;
    // Sequential calls on one keep-alive client connection share one upstream connection;
    // with `upstream_keepalive = 0` it closes when the client connection does.
    let (upstream, count) = start_counting_upstream(true).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "upstream_keepalive = 0", 64).await;
    let client = one_connection_client();
    for _ in 0..5 {
        call_ok(&client, &proxy.url).await;
    }
    assert_eq!(count.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(count.open.load(Ordering::SeqCst), 1);
    drop(client);
    wait_until_open_upstream_connections(&count, 0).await;
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 5);
    assert!(calls.iter().all(|c| c.outcome == Outcome::Ok), "{calls:?}");

    // An upstream that closes its connection after every response: each call still succeeds,
    // on a new upstream connection, and no closed connection is kept idle for the next.
    let (upstream, count) = start_counting_upstream(false).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let client = one_connection_client();
    for _ in 0..3 {
        call_ok(&client, &proxy.url).await;
        // The upstream has closed it, so the next call finds the connection closed.
        wait_until_open_upstream_connections(&count, 0).await;
    }
    drop(client);
    for _ in 0..3 {
        call_ok(&one_connection_client(), &proxy.url).await;
        wait_until_open_upstream_connections(&count, 0).await;
    }
    assert_eq!(count.accepted.load(Ordering::SeqCst), 6);
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|c| c.outcome == Outcome::Ok), "{calls:?}");
}
}

on_both_paths! {
async fn a_closed_client_connection_leaves_its_upstream_connection_to_the_next() {
    use std::sync::atomic::Ordering;
    // One worker, and clients that open a connection per call (as `Connection: close` does):
    // the calls share the upstream connection the first one opened, as nginx's `keepalive`.
    let (upstream, count) = start_counting_upstream(true).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "workers = 1", 64).await;
    for _ in 0..20 {
        let client = one_connection_client();
        call_ok(&client, &proxy.url).await;
        drop(client);
        // The proxy sees the client connection close before the next one opens.
        wait_for_worker_load(&proxy, &[0]).await;
    }
    assert_eq!(count.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(count.open.load(Ordering::SeqCst), 1);

    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 20);
    assert!(calls.iter().all(|c| c.outcome == Outcome::Ok), "{calls:?}");
    // A stopped proxy closes its idle upstream connections.
    wait_until_open_upstream_connections(&count, 0).await;

    // At most `upstream_keepalive` connections wait per worker: of four client connections
    // open at once, each with its own upstream connection, two are kept after they close.
    let proxy = Proxy::start(
        &format!("http://{upstream}"),
        "workers = 1\nupstream_keepalive = 2",
        64,
    )
    .await;
    let clients: Vec<_> = (0..4).map(|_| one_connection_client()).collect();
    // Hold four client connections open at once with slow calls, then close them all.
    futures::future::join_all(clients.iter().map(|client| async {
        let response = client
            .get(format!("{}/slow", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }))
    .await;
    assert_eq!(count.accepted.load(Ordering::SeqCst), 5);
    drop(clients);
    wait_for_worker_load(&proxy, &[0]).await;
    wait_until_open_upstream_connections(&count, 2).await;
    // The next client connection gets one of the two.
    call_ok(&one_connection_client(), &proxy.url).await;
    assert_eq!(count.accepted.load(Ordering::SeqCst), 5);
    proxy.stop().await;
    wait_until_open_upstream_connections(&count, 0).await;

    // An idle upstream connection is closed after `upstream_keepalive_timeout`, even when no
    // client connection comes to take it.
    let proxy = Proxy::start(
        &format!("http://{upstream}"),
        "workers = 1\nupstream_keepalive_timeout = \"300ms\"",
        64,
    )
    .await;
    call_ok(&one_connection_client(), &proxy.url).await;
    wait_for_worker_load(&proxy, &[0]).await;
    assert_eq!(count.accepted.load(Ordering::SeqCst), 6);
    assert_eq!(count.open.load(Ordering::SeqCst), 1, "kept idle at first");
    wait_until_open_upstream_connections(&count, 0).await;
    proxy.stop().await;
}
}

async fn call_ok(client: &reqwest::Client, url: &str) {
    let response = client
        .post(format!("{url}/v1/chat/completions"))
        .body(r#"{"model": "m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
}

/// Waits (up to 5 s) until the upstream has `expected` connections open.
async fn wait_until_open_upstream_connections(count: &ConnectionCount, expected: usize) {
    use std::sync::atomic::Ordering;
    let deadline = Instant::now() + Duration::from_secs(5);
    while count.open.load(Ordering::SeqCst) != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count.open.load(Ordering::SeqCst), expected);
}

async fn open_connections_per_worker(proxy: &Proxy) -> Vec<u64> {
    let health: serde_json::Value = client()
        .get(format!("{}/health", proxy.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["open_connections_per_worker"]
        .as_array()
        .unwrap_or_else(|| panic!("no open_connections_per_worker in {health}"))
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

async fn wait_for_worker_load(proxy: &Proxy, expected: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let load = open_connections_per_worker(proxy).await;
        if load == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "open connections per worker: {load:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_paths! {
async fn connections_are_spread_over_the_workers_and_each_serves_its_calls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = start_upstream().await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "workers = 3", 64).await;
    let address = proxy.url.trim_start_matches("http://").to_string();
    let mut connections = Vec::new();
    for _ in 0..6 {
        connections.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // Each new connection goes to the worker with the fewest open ones.
    wait_for_worker_load(&proxy, &[2, 2, 2]).await;
    for (index, stream) in connections.iter_mut().enumerate() {
        for call in 0..2 {
            let request = format!("GET /v2/models/m{index}/infer?call={call} HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let mut buffer = [0u8; 4096];
            // The response's body is JSON ending with `}`: read until the whole of it is in.
            while !answer.ends_with(b"}") {
                let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                    .await
                    .expect("the proxy answers in time")
                    .unwrap();
                assert!(n > 0, "connection {index} closed before its response");
                answer.extend_from_slice(&buffer[..n]);
            }
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    drop(connections);
    wait_for_worker_load(&proxy, &[0, 0, 0]).await;
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 12);
    let mut models: Vec<_> = calls.iter().filter_map(|c| c.model.clone()).collect();
    models.sort();
    models.dedup();
    assert_eq!(models, ["m0", "m1", "m2", "m3", "m4", "m5"]);
}
}

on_both_paths! {
async fn chunked_request_bodies_and_pipelined_head_requests_are_forwarded_and_measured() {
    let upstream = start_upstream().await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    // A chunked body split inside its `model` field, then a pipelined HEAD that closes.
    let answer = raw_exchange(
        proxy.url.trim_start_matches("http://"),
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          7\r\n{\"model\r\n9;ext=1\r\n\": \"m-1\"}\r\n0\r\n\r\n\
          HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let responses: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 2, "{answer}");
    assert!(responses[0].starts_with("200 "), "{answer}");
    assert!(
        responses[0].contains("\"completion_tokens\":34"),
        "{answer}"
    );
    // A HEAD response has no body, whatever its Content-Length says; the connection then
    // closes as the client asked.
    assert!(responses[1].starts_with("200 "), "{answer}");
    assert!(responses[1].ends_with("\r\n\r\n"), "{answer}");
    assert!(responses[1].contains("connection: close\r\n"), "{answer}");
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    let chat = calls
        .iter()
        .find(|c| c.endpoint.as_deref() == Some("/v1/chat/completions"))
        .expect("the chunked call's event");
    assert_eq!(chat.model.as_deref(), Some("m-1"));
    assert_eq!(chat.request_bytes, Some(16));
    assert_eq!(
        (chat.input_tokens, chat.output_tokens),
        (Some(12), Some(34))
    );
    let head = calls
        .iter()
        .find(|c| c.method.as_deref() == Some("HEAD"))
        .expect("the HEAD call's event");
    assert_eq!(
        (head.status_code, head.response_bytes),
        (Some(200), Some(0))
    );
}
}
