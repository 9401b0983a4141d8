//! The proxy in front of an HTTPS model API on loopback, signed by a throwaway CA: HTTP/1.1
//! and HTTP/2 upstreams (chosen by ALPN), both forwarding paths, compressed bodies forwarded
//! byte for byte and read for their usage, the providers' stream formats, pooled TLS
//! connections, certificate failures answered with a JSON 502 and a clear event, and HTTPS for
//! the proxy's own clients with its certificate reloaded when its files change.

use std::time::Duration;

use engine::schema::api_call::{ApiCall, Outcome};

mod proxy_harness;
mod tls_upstream;
use proxy_harness::Proxy;
use tls_upstream::{sha256_hex, Pki, TlsUpstream};

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn proxy_to(upstream: &TlsUpstream, pki: &Pki, extra: &str) -> Proxy {
    Proxy::start(
        &format!("https://localhost:{}", upstream.port),
        &format!(
            "upstream_ca_file = {:?}\n{extra}",
            pki.ca_file().display().to_string()
        ),
        64,
    )
    .await
}

async fn post(
    proxy: &str,
    path: &str,
    body: &str,
    accept_encoding: Option<&str>,
) -> (u16, Vec<u8>, Option<String>) {
    let mut request = client()
        .post(format!("{proxy}{path}"))
        .body(body.to_string());
    if let Some(encoding) = accept_encoding {
        request = request.header("accept-encoding", encoding);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let encoding = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    (status, response.bytes().await.unwrap().to_vec(), encoding)
}

fn one(calls: &[ApiCall], path: &str) -> ApiCall {
    let matching: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.endpoint.as_deref() == Some(path))
        .collect();
    assert_eq!(matching.len(), 1, "{calls:#?}");
    matching[0].clone()
}

/// For each forwarding path and each ALPN offer of the upstream: a gzip JSON answer and a
/// gzip stream arrive byte for byte, and their usage, TTFT and model are in the events.
#[tokio::test]
async fn compressed_answers_over_tls_are_forwarded_exactly_and_read() {
    let pki = Pki::new();
    let cert = pki.issue("localhost", &["localhost"], false);
    for (alpn, expected_version) in [
        (H1_ONLY, hyper::Version::HTTP_11),
        (H2_AND_H1, hyper::Version::HTTP_2),
    ] {
        for forwarding in ["direct", "hyper"] {
            let upstream = TlsUpstream::start(&cert, alpn).await;
            let proxy = proxy_to(
                &upstream,
                &pki,
                &format!("http1_forwarding = {forwarding:?}"),
            )
            .await;
            let label = format!("{forwarding} path, upstream ALPN {expected_version:?}");
            let (status, body, encoding) = post(
                &proxy.url,
                "/v1/chat/completions",
                r#"{"model": "gpt-4o", "messages": []}"#,
                Some("gzip, deflate"),
            )
            .await;
            assert_eq!(
                (status, encoding.as_deref()),
                (200, Some("gzip")),
                "{label}"
            );
            let (status, stream, _) = post(
                &proxy.url,
                "/v1/chat/completions",
                r#"{"model": "gpt-4o-mini", "stream": true}"#,
                Some("gzip"),
            )
            .await;
            assert_eq!(status, 200, "{label}");
            let sent = upstream.sent();
            assert_eq!(sent.len(), 2, "{label}: {sent:?}");
            assert_eq!(
                sent[0].sha256,
                sha256_hex(&body),
                "{label}: the JSON body, byte for byte"
            );
            assert_eq!(
                sent[1].sha256,
                sha256_hex(&stream),
                "{label}: the stream, byte for byte"
            );
            // The proxy learns the upstream's choice at start; the stream is surely after it.
            assert_eq!(sent[1].version, expected_version, "{label}: {sent:?}");
            let calls = proxy.stop().await;
            assert_eq!(calls.len(), 2, "{label}: {calls:#?}");
            let (json, streamed) = (&calls[0], &calls[1]);
            assert_eq!(json.model.as_deref(), Some("gpt-4o"), "{label}");
            assert_eq!(
                (
                    json.input_tokens,
                    json.output_tokens,
                    json.cached_input_tokens,
                    json.reasoning_tokens
                ),
                (Some(12), Some(7), Some(8), Some(3)),
                "{label}: usage read through gzip"
            );
            assert_eq!(json.response_bytes, Some(body.len() as u64), "{label}");
            assert_eq!(
                json.upstream.as_deref(),
                Some(format!("localhost:{}", upstream.port).as_str())
            );
            assert_eq!(streamed.model.as_deref(), Some("gpt-4o-mini"), "{label}");
            assert_eq!(
                (streamed.input_tokens, streamed.output_tokens),
                (Some(9), Some(2)),
                "{label}"
            );
            let ttft = streamed.ttft_ms.expect("a TTFT through a gzip stream");
            assert!(
                ttft >= 50.0 && ttft < streamed.latency_ms,
                "{label}: ttft {ttft} of {}",
                streamed.latency_ms
            );
            assert!(
                calls
                    .iter()
                    .all(|c| c.outcome == Outcome::Ok && c.error.is_none()),
                "{label}"
            );
        }
    }
}

/// Many calls from one client reuse the proxy's TLS connections: far fewer handshakes than
/// calls, on both paths.
#[tokio::test]
async fn tls_connections_to_the_upstream_are_pooled() {
    let pki = Pki::new();
    let cert = pki.issue("localhost", &["localhost"], false);
    for (alpn, forwarding) in [
        (H1_ONLY, "direct"),
        (H1_ONLY, "hyper"),
        (H2_AND_H1, "direct"),
    ] {
        let upstream = TlsUpstream::start(&cert, alpn).await;
        let proxy = proxy_to(
            &upstream,
            &pki,
            &format!("http1_forwarding = {forwarding:?}"),
        )
        .await;
        let client = client();
        for _ in 0..40 {
            let response = client
                .post(format!("{}/v1/chat/completions", proxy.url))
                .body(r#"{"model": "m"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
        let calls = proxy.stop().await;
        assert_eq!(calls.len(), 40);
        let handshakes = upstream
            .handshakes
            .load(std::sync::atomic::Ordering::SeqCst);
        // One learning handshake offering HTTP/2 may come before the HTTP/1.1 connection.
        assert!(
            handshakes <= 3,
            "{forwarding}, {alpn:?}: {handshakes} handshakes for 40 calls"
        );
    }
}

on_both_paths! {
/// Every encoding a server may choose is read, and forwarded unchanged.
async fn every_content_encoding_is_read_for_its_usage() {
    let pki = Pki::new();
    let cert = pki.issue("localhost", &["localhost"], false);
    let upstream = TlsUpstream::start(&cert, H1_ONLY).await;
    let proxy = proxy_to(&upstream, &pki, "").await;
    let mut bodies = Vec::new();
    for encoding in ["gzip", "deflate", "br", "zstd", "identity"] {
        let (status, body, sent_as) = post(
            &proxy.url,
            &format!("/v1/chat/completions?encoding={encoding}"),
            &format!(r#"{{"model": "model-{encoding}"}}"#),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            sent_as.as_deref(),
            (encoding != "identity").then_some(encoding)
        );
        bodies.push(body);
    }
    let sent = upstream.sent();
    for (sent, body) in sent.iter().zip(&bodies) {
        assert_eq!(sent.sha256, sha256_hex(body), "{:?}", sent.encoding);
    }
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 5);
    for call in &calls {
        assert_eq!(
            (call.input_tokens, call.output_tokens),
            (Some(12), Some(7)),
            "{:?}",
            call.model
        );
    }
}
}

on_both_paths! {
/// Anthropic's and Gemini's streams through TLS: first content and usage as each spells them.
async fn anthropic_and_gemini_streams_are_understood() {
    let pki = Pki::new();
    let cert = pki.issue("localhost", &["localhost"], false);
    let upstream = TlsUpstream::start(&cert, H2_AND_H1).await;
    let proxy = proxy_to(&upstream, &pki, "").await;
    let (status, _, _) = post(
        &proxy.url,
        "/v1/messages",
        r#"{"model": "claude-sonnet-4", "stream": true, "max_tokens": 100}"#,
        Some("gzip"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post(
        &proxy.url,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        r#"{"contents": []}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let calls = proxy.stop().await;
    let anthropic = one(&calls, "/v1/messages");
    assert_eq!(anthropic.model.as_deref(), Some("claude-sonnet-4"));
    assert_eq!(
        (
            anthropic.input_tokens,
            anthropic.cached_input_tokens,
            anthropic.output_tokens
        ),
        (Some(125), Some(100), Some(15))
    );
    assert!(
        anthropic.ttft_ms.is_some_and(|t| t >= 100.0),
        "{anthropic:?}"
    );
    let gemini = one(&calls, "/v1beta/models/{model}:streamGenerateContent");
    assert_eq!(gemini.model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(
        (
            gemini.input_tokens,
            gemini.output_tokens,
            gemini.reasoning_tokens
        ),
        (Some(6), Some(6), Some(4))
    );
    assert!(gemini.ttft_ms.is_some(), "{gemini:?}");
}
}

/// A certificate the proxy must not trust: expired, for another name, or from an unknown CA.
/// Each gives the client a JSON 502, and an event naming the TLS error.
#[tokio::test]
async fn certificate_failures_are_a_json_502_and_a_clear_event() {
    let pki = Pki::new();
    let stranger = Pki::named("a stranger's CA");
    let cases = [
        (
            "expired",
            pki.issue("expired", &["localhost"], true),
            "expired",
        ),
        (
            "wrong name",
            pki.issue("wrong", &["wrong.example"], false),
            "not valid for name",
        ),
        (
            "unknown CA",
            stranger.issue("stranger", &["localhost"], false),
            "UnknownIssuer",
        ),
    ];
    for (case, cert, expected) in cases {
        for forwarding in ["direct", "hyper"] {
            let upstream = TlsUpstream::start(&cert, H1_ONLY).await;
            let proxy = proxy_to(
                &upstream,
                &pki,
                &format!("http1_forwarding = {forwarding:?}"),
            )
            .await;
            let (status, body, _) = post(
                &proxy.url,
                "/v1/chat/completions",
                r#"{"model": "m"}"#,
                None,
            )
            .await;
            assert_eq!(status, 502, "{case}, {forwarding}");
            let json: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{case}, {forwarding}: not JSON ({e}): {body:?}"));
            assert_eq!(json["error"]["type"], "upstream_unreachable", "{case}");
            let message = json["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("TLS handshake with localhost"),
                "{case}: {message}"
            );
            let calls = proxy.stop().await;
            assert_eq!(calls.len(), 1);
            let call = &calls[0];
            assert_eq!(call.outcome, Outcome::UpstreamUnreachable, "{case}");
            assert_eq!(call.status_code, Some(502));
            assert_eq!(
                call.response_bytes,
                Some(body.len() as u64),
                "{case}: bytes sent"
            );
            let error = call.error.as_deref().unwrap_or_default();
            assert!(error.contains(expected), "{case}, {forwarding}: {error}");
            assert_eq!(
                upstream
                    .handshakes
                    .load(std::sync::atomic::Ordering::SeqCst),
                0
            );
        }
    }
}

on_both_paths! {
/// `danger_accept_invalid_upstream_certificates` (tests only) does what it says.
async fn verification_can_be_turned_off_explicitly() {
    let pki = Pki::new();
    let cert = pki.issue("expired", &["localhost"], true);
    let upstream = TlsUpstream::start(&cert, H1_ONLY).await;
    let proxy = Proxy::start(
        &format!("https://localhost:{}", upstream.port),
        "danger_accept_invalid_upstream_certificates = true",
        64,
    )
    .await;
    let (status, _, _) = post(
        &proxy.url,
        "/v1/chat/completions",
        r#"{"model": "m"}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);
    proxy.stop().await;
}
}

on_both_paths! {
/// A TLS handshake the upstream never answers times out as a clear 502.
async fn a_silent_tls_upstream_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let proxy = Proxy::start(
        &format!("https://localhost:{port}"),
        "tls_handshake_timeout = \"300ms\"",
        64,
    )
    .await;
    let (status, _, _) = post(&proxy.url, "/v1/chat/completions", "{}", None).await;
    assert_eq!(status, 502);
    let calls = proxy.stop().await;
    let error = calls[0].error.clone().unwrap_or_default();
    assert!(error.contains("timed out after 300ms"), "{error}");
    held.abort();
}
}

on_both_paths! {
/// Clients call the proxy over HTTPS (HTTP/1.1 or HTTP/2); a renewed certificate is served
/// from the next handshake once its files change, with the connection already open kept.
async fn clients_call_over_https_and_a_renewed_certificate_is_picked_up() {
    let pki = Pki::new();
    let upstream_cert = pki.issue("localhost", &["localhost"], false);
    let upstream = TlsUpstream::start(&upstream_cert, H1_ONLY).await;
    let listener_cert = pki.issue("listener", &["localhost"], false);
    let proxy = proxy_to(
        &upstream,
        &pki,
        &format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}",
            listener_cert.cert.display().to_string(),
            listener_cert.key.display().to_string()
        ),
    )
    .await;
    let https_url = proxy.url.replace("http://127.0.0.1", "https://localhost");
    let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap();
    let tls_client = |http2: bool| {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone());
        let builder = if http2 { builder } else { builder.http1_only() };
        builder.build().unwrap()
    };
    let kept = tls_client(false);
    for http2 in [false, true] {
        let response = tls_client(http2)
            .post(format!("{https_url}/v1/chat/completions"))
            .body(r#"{"model": "m"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
    }
    assert_eq!(
        kept.get(format!("{https_url}/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Renew: a certificate from another CA replaces the files; clients trusting only the
    // first CA fail from the next handshake on, those trusting the new one succeed.
    let other = Pki::named("the renewing CA");
    let renewed = other.issue("renewed", &["localhost"], false);
    std::fs::copy(&renewed.cert, &listener_cert.cert).unwrap();
    std::fs::copy(&renewed.key, &listener_cert.key).unwrap();
    let other_ca = reqwest::Certificate::from_pem(other.ca_pem().as_bytes()).unwrap();
    let renewed_client = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(other_ca)
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answered = renewed_client
            .get(format!("{https_url}/v1/models"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if answered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before the renewal still works.
    assert_eq!(
        kept.get(format!("{https_url}/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let calls = proxy.stop().await;
    assert!(calls.len() >= 4, "{calls:#?}");
}
}
