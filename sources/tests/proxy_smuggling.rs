//! Request smuggling against the proxy, on both HTTP/1.1 forwarding paths (direct and hyper):
//! the classic CL.TE, TE.CL and TE.TE variants, header-name tricks and line-ending tricks, each
//! sent as raw bytes with a request hidden in it for `/smuggled`. The upstream is a recording
//! hyper server — a strict parser, so a request the proxy let through hidden in another's body
//! would show up there as a request of its own. Each case asserts that the upstream never sees
//! a request the client did not send as one (never `/smuggled`, never more requests than the
//! client meant, never a body other than the one meant), that the client gets one answer per
//! request it meant, and that the proxy records exactly those requests as events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod proxy_harness;
use proxy_harness::Proxy;

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    method: String,
    path: String,
    /// Whether it carried both `Content-Length` and `Transfer-Encoding` (a proxy must not
    /// forward both: RFC 9112 §6.3).
    both_lengths: bool,
    /// `None` when the body could not be read to its end.
    body: Option<Vec<u8>>,
}

/// A hyper HTTP/1.1 server that records every request and answers `200 ok`.
async fn start_recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let address = listener.local_addr().expect("upstream address");
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let method = request.method().to_string();
                        let path = request.uri().path().to_string();
                        let headers = request.headers();
                        let both_lengths = headers.contains_key(hyper::header::CONTENT_LENGTH)
                            && headers.contains_key(hyper::header::TRANSFER_ENCODING);
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .ok();
                        log.lock().expect("upstream log").push(Received {
                            method,
                            path,
                            both_lengths,
                            body,
                        });
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, received)
}

/// Sends `bytes` on one connection, closes the sending side, and reads until the proxy closes
/// the connection (at most 10 s).
async fn exchange(address: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the proxy kept the connection open after the client closed its side: {:?}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status codes in a stream of responses, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.")
        .filter_map(|(at, _)| answer.get(at + 9..at + 12))
        .filter_map(|code| code.parse().ok())
        .collect()
}

/// What the proxy may do with the one request the client meant.
enum Expect {
    /// Refuse it with a 4xx before anything reaches the upstream: its head is ambiguous.
    Refused,
    /// Refuse it with a 4xx or close the connection once its body's framing turns out wrong;
    /// the upstream may have received the head and part of the body (the proxy streams bodies),
    /// but never a complete request.
    Cut,
    /// Forward it, with one of these bodies, and answer 200.
    Forwarded(&'static [&'static [u8]]),
}
use Expect::{Cut, Forwarded, Refused};

/// One attack: its bytes, and what the client meant by them.
struct Case {
    name: &'static str,
    bytes: &'static [u8],
    expect: Expect,
}

const CASES: &[Case] = &[
    Case {
        // The front end reads Content-Length, the back end chunked: "0\r\n\r\n" ends the body
        // for the back end and the smuggled request follows.
        name: "CL.TE",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 51\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX: y\r\n\r\n",
        expect: Forwarded(&[b""]),
    },
    Case {
        // The front end reads chunked, the back end Content-Length 4.
        name: "TE.CL",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2d\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX: yyyyy\r\n\r\n\r\n0\r\n\r\n",
        expect: Forwarded(&[b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX: yyyyy\r\n\r\n"]),
    },
    Case {
        name: "TE.TE, an unknown coding after chunked",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "TE.TE, xchunked",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "TE.TE, a space before the colon",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "TE.TE, chunked in a list with identity",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Forwarded(&[b""]),
    },
    Case {
        name: "TE.TE, a tab before chunked",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Forwarded(&[b""]),
    },
    Case {
        name: "TE.TE, folded onto an earlier field",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "two different Content-Lengths",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\nX: yyyyyyy\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "a Content-Length list",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 44\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\nX: yyyyyyy\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "a signed Content-Length",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "a Content-Length past 64 bits",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551621\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "a NUL in a field name",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length\x00: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX: y\r\n\r\n",
        expect: Refused,
    },
    Case {
        // Content_Length is just an unknown field: the request has no body, and what follows
        // is a request the client sent in its own right.
        name: "an underscore for the hyphen",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n",
        expect: Forwarded(&[b""]),
    },
    Case {
        name: "a chunk size with a 0x prefix",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x2a\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX: yyyyy\r\n\r\n\r\n0\r\n\r\n",
        expect: Cut,
    },
    Case {
        name: "a chunk size past 64 bits",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000a\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
        expect: Cut,
    },
    Case {
        name: "a negative chunk size",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-2a\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
        expect: Cut,
    },
    Case {
        // A chunk extension is legal: the body is "hello", and nothing hides in it.
        name: "a chunk extension",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
        expect: Forwarded(&[b"hello"]),
    },
    Case {
        name: "a bare LF ending the chunk size",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        expect: Cut,
    },
    Case {
        name: "a bare CR inside a field",
        bytes: b"POST /meant HTTP/1.1\r\nHost: x\r\nX-Pad: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "bare LF line endings with Content-Length and chunked",
        bytes: b"POST /meant HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Forwarded(&[b""]),
    },
    Case {
        name: "chunked on HTTP/1.0",
        bytes: b"POST /meant HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        expect: Refused,
    },
    Case {
        name: "a space before the request line",
        bytes: b" POST /meant HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        expect: Refused,
    },
];

async fn run_cases(path_setting: &str, path_name: &str) {
    let (upstream, received) = start_recording_upstream().await;
    let mut failures = Vec::new();
    for case in CASES {
        received.lock().expect("upstream log").clear();
        let proxy = Proxy::start(&format!("http://{upstream}"), path_setting, 64).await;
        let answer = exchange(proxy.url.trim_start_matches("http://"), case.bytes).await;
        let calls = proxy.stop().await;
        let seen = received.lock().expect("upstream log").clone();
        let codes = statuses(&answer);
        let mut problems = Vec::new();
        if seen.iter().any(|r| r.path == "/smuggled") {
            problems.push("the upstream received the smuggled request".to_string());
        }
        if seen.len() > 1 {
            problems.push(format!("the upstream received {} requests", seen.len()));
        }
        if seen.iter().any(|r| r.both_lengths) {
            problems.push("the upstream received both Content-Length and Transfer-Encoding".into());
        }
        let refused = codes.len() == 1 && (400..500).contains(&codes[0]);
        match case.expect {
            Refused => {
                if !seen.is_empty() {
                    problems.push(format!(
                        "an ambiguous request reached the upstream: {seen:?}"
                    ));
                }
                if !refused {
                    problems.push(format!("answered {codes:?}, not one 4xx"));
                }
            }
            Cut => {
                if seen.iter().any(|r| r.path != "/meant" || r.body.is_some()) {
                    problems.push(format!("the upstream received a whole request: {seen:?}"));
                }
                if !(refused || codes.is_empty()) {
                    problems.push(format!("answered {codes:?}, not a 4xx or a close"));
                }
            }
            Forwarded(bodies) => {
                match seen.as_slice() {
                    [only]
                        if only.path == "/meant"
                            && only.body.as_deref().is_some_and(|b| bodies.contains(&b)) => {}
                    other => problems.push(format!("the upstream received {other:?}")),
                }
                if codes != [200] {
                    problems.push(format!("answered {codes:?}, not one 200"));
                }
            }
        }
        if calls.len() != 1 {
            problems.push(format!("{} events for one meant request", calls.len()));
        }
        if calls.iter().any(|c| {
            c.endpoint
                .as_deref()
                .is_some_and(|e| e.contains("smuggled"))
        }) {
            problems.push("an event for the smuggled request".to_string());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{path_name} path, {}: {} (client got {answer:?})",
                case.name,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn the_direct_path_lets_no_request_hide_in_another() {
    run_cases("", "direct").await;
}

#[tokio::test]
async fn the_hyper_path_lets_no_request_hide_in_another() {
    run_cases("http1_forwarding = \"hyper\"", "hyper").await;
}
