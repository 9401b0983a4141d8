//! The proxy's direct HTTP/1.1 path against raw upstreams that answer byte for byte as a test
//! says: what it keeps of the upstream's response, pipelined calls, a hand-off to hyper in the
//! middle of a connection, a reused upstream connection that closes unanswered, responses
//! delimited by the connection's close, and responses it cannot forward.
//!
//! These are the direct path's own promises, so they run on it alone (every test in
//! `proxy.rs` and `proxy_tls.rs` runs on both paths): the hyper path re-frames what it
//! forwards (lower-case header names, a `date`, chunked instead of close-delimited bodies),
//! forwards a response with a transfer coding other than chunked as read-until-close, as
//! RFC 9112 §6.3 allows, and does not send a call again when a reused upstream connection closes
//! unanswered (it answers 502).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::schema::api_call::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod proxy_harness;
use proxy_harness::{client, one_connection_client, post_chat, raw_exchange, Proxy};

/// What a raw upstream sends for the `request`th request head (from 0) on its `connection`th
/// connection (from 0); `None` closes the connection without an answer.
type Answer = fn(connection: usize, request: usize) -> Option<Vec<u8>>;

/// An upstream that answers requests without bodies with exactly the bytes `answer` gives;
/// returns its address and the count of connections it accepted.
async fn start_raw_upstream(answer: Answer) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let connection = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut request = 0;
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        match answer(connection, request) {
                            Some(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            None => return,
                        }
                        request += 1;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (address, accepted)
}

fn fine(_: usize, _: usize) -> Option<Vec<u8>> {
    Some(b"HTTP/1.1 200 Fine\r\nX-Custom-Case: v\r\nContent-Length: 2\r\n\r\nok".to_vec())
}

/// Reads from `stream` until `text` has appeared `times` times (at most 5 s).
async fn read_until_seen(stream: &mut TcpStream, text: &str, times: usize) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while String::from_utf8_lossy(&answer).matches(text).count() < times {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the proxy answers in time")
            .unwrap();
        assert!(
            n > 0,
            "closed early: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn pipelined_calls_keep_the_upstreams_bytes_and_unusual_requests_go_to_hyper_mid_connection()
{
    let (upstream, accepted) = start_raw_upstream(fine).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let mut stream = TcpStream::connect(proxy.url.trim_start_matches("http://"))
        .await
        .unwrap();
    // Two calls in one write: answered in order, on one upstream connection.
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answers = read_until_seen(&mut stream, "\r\n\r\nok", 2).await;
    // The direct path forwards the upstream's status line and field names as they are.
    assert_eq!(
        answers.matches("HTTP/1.1 200 Fine\r\n").count(),
        2,
        "{answers}"
    );
    assert_eq!(
        answers.matches("X-Custom-Case: v\r\n").count(),
        2,
        "{answers}"
    );
    // An HTTP/1.0 request goes to hyper, which serves the rest of the connection (and writes
    // field names in lower case).
    stream
        .write_all(b"GET /c HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("hyper closes an HTTP/1.0 connection after its response")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.0 200 "), "{rest}");
    assert!(rest.contains("x-custom-case: v\r\n"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nok"), "{rest}");
    drop(stream);
    let calls = proxy.stop().await;
    let mut routes: Vec<_> = calls.iter().filter_map(|c| c.endpoint.clone()).collect();
    routes.sort();
    assert_eq!(routes, ["/a", "/b", "/c"]);
    assert!(calls.iter().all(|c| c.status_code == Some(200)
        && c.outcome == Outcome::Ok
        && c.response_bytes == Some(2)));
    assert!(accepted.load(Ordering::SeqCst) <= 2);

    // With `http1_forwarding = "hyper"` every call goes through hyper.
    let proxy = Proxy::start(
        &format!("http://{upstream}"),
        "http1_forwarding = \"hyper\"",
        64,
    )
    .await;
    let answer = raw_exchange(
        proxy.url.trim_start_matches("http://"),
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("x-custom-case: v\r\n"), "{answer}");
    assert_eq!(proxy.stop().await.len(), 1);
}

/// Answers the first call on the first connection, then closes that connection when the second
/// call arrives on it; answers everything on later connections.
fn closes_its_first_connection_on_the_second_call(
    connection: usize,
    request: usize,
) -> Option<Vec<u8>> {
    if connection == 0 && request == 1 {
        return None;
    }
    fine(connection, request)
}

#[tokio::test]
async fn an_idempotent_call_on_a_reused_upstream_connection_that_closes_unanswered_is_sent_again() {
    let (upstream, accepted) =
        start_raw_upstream(closes_its_first_connection_on_the_second_call).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let client = one_connection_client();
    for _ in 0..3 {
        let response = client
            .get(format!("{}/again", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.outcome == Outcome::Ok), "{calls:?}");
}

#[tokio::test]
async fn a_non_idempotent_call_is_not_sent_again_once_the_upstream_may_have_acted_on_it() {
    let (upstream, accepted) =
        start_raw_upstream(closes_its_first_connection_on_the_second_call).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let client = one_connection_client();
    let first = client
        .get(format!("{}/first", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    // Written to the reused connection, which then closed without an answer: the upstream may
    // have started it, so a POST is answered 502 rather than sent twice.
    let post = post_chat(&client, &proxy.url, r#"{"model": "m"}"#).await;
    assert_eq!(post.status(), 502);
    let error: serde_json::Value = post.json().await.unwrap();
    assert_eq!(error["error"]["type"], "upstream_unreachable");
    let after = client
        .get(format!("{}/after", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    after.bytes().await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let calls = proxy.stop().await;
    let outcomes: Vec<Outcome> = calls.iter().map(|c| c.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Ok, Outcome::UpstreamUnreachable, Outcome::Ok]
    );
}

/// A response without Content-Length or chunked coding: its body ends when the connection
/// closes.
const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}";

/// Sends `answer`'s bytes for one call per connection and closes the connection.
async fn start_one_answer_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn a_body_delimited_by_the_upstreams_close_is_forwarded_and_read() {
    let upstream = start_one_answer_upstream(UNTIL_CLOSE).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let response = client()
        .get(format!("{}/v1/completions", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The client's connection closes after it, which is how the client learns where it ends.
    assert_eq!(response.headers()["connection"], "close");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\"completion_tokens\":4}}"), "{text}");
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].outcome, Outcome::Ok);
    assert_eq!(calls[0].response_bytes, Some(text.len() as u64));
    assert_eq!(
        (calls[0].input_tokens, calls[0].output_tokens),
        (Some(3), Some(4))
    );
}

#[tokio::test]
async fn a_response_that_cannot_be_forwarded_unchanged_is_a_502() {
    for (answer, what) in [
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx"[..],
            "a transfer coding other than chunked",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nxx",
            "conflicting Content-Length values",
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid response head"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",
            "connection closed mid-head",
        ),
    ] {
        let upstream = start_one_answer_upstream(answer).await;
        let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
        let response = client()
            .get(format!("{}/v1/models", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{what}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "upstream_unreachable");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(what), "{message}");
        let calls = proxy.stop().await;
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].outcome, Outcome::UpstreamUnreachable);
        assert_eq!(calls[0].status_code, Some(502));
    }
}

#[tokio::test]
async fn a_response_cut_short_mid_body_is_recorded_and_its_client_connection_closed() {
    let upstream =
        start_one_answer_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this").await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let answer = raw_exchange(
        proxy.url.trim_start_matches("http://"),
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    // The head and the bytes that came are forwarded; then the connection closes, so the
    // client sees a body shorter than its Content-Length rather than a silent success.
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nonly this"), "{answer}");
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].outcome, Outcome::UpstreamUnreachable);
    assert_eq!(calls[0].response_bytes, Some(9));
}

/// Sends `head` a few bytes at a time, a pause between, until the proxy answers or closes;
/// returns what it answered and how long the connection stayed open.
async fn trickle(address: &str, head: &[u8], pause: Duration) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut answer = Vec::new();
    for piece in head.chunks(4).cycle().take(1000) {
        if stream.write_all(piece).await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(pause, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer))
                        .await;
                break;
            }
            Err(_) => {}
        }
    }
    (
        String::from_utf8_lossy(&answer).to_string(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_request_head_gets_a_408_on_both_paths() {
    let (upstream, _) = start_raw_upstream(fine).await;
    // A head that never ends: a header line repeated, 4 bytes every 200 ms.
    let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n";
    for forwarding in ["direct", "hyper"] {
        let proxy = Proxy::start(
            &format!("http://{upstream}"),
            &format!("http1_forwarding = \"{forwarding}\"\nheader_read_timeout = \"1s\""),
            64,
        )
        .await;
        let address = proxy.url.trim_start_matches("http://").to_string();
        let (answer, open_for) = trickle(&address, head, Duration::from_millis(200)).await;
        assert!(
            open_for < Duration::from_secs(4),
            "{forwarding}: the connection stayed open {open_for:?}"
        );
        if forwarding == "direct" {
            assert!(
                answer.starts_with("HTTP/1.1 408 "),
                "{forwarding}: {answer}"
            );
            assert!(
                answer.contains("\"type\":\"timeout\""),
                "{forwarding}: {answer}"
            );
            assert!(
                answer.contains("header_read_timeout"),
                "{forwarding}: {answer}"
            );
        }
        // The proxy still serves everyone else.
        let response = post_chat(&client(), &proxy.url, "{}").await;
        assert_eq!(response.status(), 200, "{forwarding}");
        let calls = proxy.stop().await;
        let refused: Vec<_> = calls
            .iter()
            .filter(|c| c.status_code == Some(408))
            .collect();
        assert_eq!(refused.len(), 1, "{forwarding}: {calls:?}");
        assert_eq!(refused[0].outcome, Outcome::ClientError);
        if forwarding == "direct" {
            assert!(
                refused[0].response_bytes.unwrap_or(0) > 0,
                "{:?}",
                refused[0]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_is_not_http_gets_a_json_400_and_an_event() {
    let (upstream, _) = start_raw_upstream(fine).await;
    let proxy = Proxy::start(&format!("http://{upstream}"), "", 64).await;
    let answer = raw_exchange(
        proxy.url.trim_start_matches("http://"),
        b"GET /a HTTP/1.1\r\nHo st: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("\"type\":\"bad_request\""), "{answer}");
    assert!(answer.contains("\"source\":\"proxy\""), "{answer}");
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].status_code, Some(400));
    assert!(calls[0].response_bytes.unwrap_or(0) > 0, "{:?}", calls[0]);
}
