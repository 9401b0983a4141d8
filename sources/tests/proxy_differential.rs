//! The direct HTTP/1.1 path checked against hyper's: the same raw request streams — valid,
//! pipelined, chunked with extensions and trailers, odd whitespace, obsolete line folding,
//! Content-Length with Transfer-Encoding, duplicate fields, huge and tiny chunks — go through
//! the proxy once with `http1_forwarding = "direct"` and once with `"hyper"`, and the two runs
//! must agree: the upstream (a strict hyper server) receives the same requests (method, target,
//! fields, body, trailers), the client the same responses (status, fields, body; for the
//! proxy's own refusals the status), and the proxy records the same events. Two streams are also
//! sent split in two at every byte position.
//!
//! What the paths may do differently by design is left out of the comparison: how a forwarded
//! message is framed (`content-length`, `transfer-encoding`, `connection`), the `date` hyper
//! adds, and the wording of a refusal's error message (each names its own parser's complaint).

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

/// Fields whose presence or value depends on how a message is framed, or on the moment.
const FRAMING: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "date",
    "te",
    "trailer",
];

/// One request as the upstream received it, framing left out.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    method: String,
    target: String,
    fields: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    trailers: Vec<(String, String)>,
}

fn comparable(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !FRAMING.contains(&name.as_str()))
        // The proxy's generated request id is new for every call.
        .filter(|(name, _)| name.as_str() != "x-request-id")
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    fields.sort();
    fields
}

/// A hyper HTTP/1.1 server that records every request and answers with a JSON body saying how
/// many body bytes it read.
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
                        let target = request
                            .uri()
                            .path_and_query()
                            .map_or_else(String::new, |p| p.as_str().to_string());
                        let fields = comparable(request.headers());
                        let (body, trailers) = match request.into_body().collect().await {
                            Ok(collected) => {
                                let trailers =
                                    collected.trailers().map(comparable).unwrap_or_default();
                                (Some(collected.to_bytes().to_vec()), trailers)
                            }
                            Err(_) => (None, Vec::new()),
                        };
                        let length = body.as_ref().map_or(0, Vec::len);
                        log.lock().expect("upstream log").push(Received {
                            method,
                            target,
                            fields,
                            body,
                            trailers,
                        });
                        let answer = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .header("x-upstream", "recording")
                            .body(Full::new(Bytes::from(format!(
                                "{{\"usage\": {{\"prompt_tokens\": {length}, \"completion_tokens\": 1}}}}"
                            ))))
                            .expect("a response");
                        Ok::<_, Infallible>(answer)
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

/// A response as the client read it, framing left out.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    /// Empty for the proxy's own refusals, whose wording differs by parser.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Splits the bytes a client read into responses. `heads` says which of the meant requests
/// were HEAD (their responses have no body).
fn answers(mut bytes: &[u8], heads: &[bool]) -> Result<Vec<Answer>, String> {
    let mut parsed = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(bytes) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) => return Err(format!("a cut head: {bytes:?}")),
            Err(error) => return Err(format!("not a response ({error}): {bytes:?}")),
        };
        let status = response.code.unwrap_or(0);
        let field = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let chunked = field("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length = field("content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let mut fields: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .filter(|(name, _)| !FRAMING.contains(&name.as_str()))
            .collect();
        fields.sort();
        let rest = &bytes[head..];
        let no_body = heads.get(parsed.len()).copied().unwrap_or(false)
            || status < 200
            || status == 204
            || status == 304;
        let (body, used) = if no_body {
            (Vec::new(), 0)
        } else if chunked {
            dechunk(rest)?
        } else if let Some(length) = length {
            if rest.len() < length {
                return Err(format!("a cut body: {rest:?}"));
            }
            (rest[..length].to_vec(), length)
        } else {
            (rest.to_vec(), rest.len())
        };
        bytes = &rest[used..];
        let refusal = status >= 400 && !fields.iter().any(|(name, _)| name == "x-upstream");
        parsed.push(if refusal {
            Answer {
                status,
                fields: Vec::new(),
                body: Vec::new(),
            }
        } else {
            Answer {
                status,
                fields,
                body,
            }
        });
    }
    Ok(parsed)
}

/// The body of a chunked message and how many bytes its framing took.
fn dechunk(bytes: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = bytes[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a cut chunk size")?;
        let line = std::str::from_utf8(&bytes[at..at + line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {line:?}: {e}"))?;
        at += line_end + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let end = bytes[at..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("a cut trailer")?;
                at += end + 2;
                if end == 0 {
                    return Ok((body, at));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return Err("a cut chunk".into());
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

/// Sends `parts` on one connection, one write each (with a pause between, so the proxy reads
/// them apart), closes the sending side and reads until the proxy closes the connection.
async fn exchange(address: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the proxy kept the connection open after the client closed its side: {:?}",
        String::from_utf8_lossy(&answer)
    );
    answer
}

type Event = (
    Option<String>,
    Option<String>,
    Option<u16>,
    engine::schema::api_call::Outcome,
    Option<u32>,
);

/// What one path did with one stream.
#[derive(Debug, PartialEq)]
struct Run {
    upstream: Vec<Received>,
    client: Result<Vec<Answer>, String>,
    /// (method, endpoint, status, outcome, input tokens) of each event, in order.
    events: Vec<Event>,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Which of the requests the client means are HEAD.
    heads: &'static [bool],
}

fn cases() -> Vec<Case> {
    let chunked_body = |chunks: &[&[u8]]| {
        let mut bytes = Vec::new();
        for chunk in chunks {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes
    };
    let huge = vec![b'x'; 1 << 20];
    let tiny: Vec<&[u8]> = (0..200).map(|_| &b"y"[..]).collect();
    let mut huge_chunk =
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    huge_chunk.extend(chunked_body(&[&huge]));
    let mut tiny_chunks =
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    tiny_chunks.extend(chunked_body(&tiny));
    let mut huge_length = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        huge.len()
    )
    .into_bytes();
    huge_length.extend_from_slice(&huge);
    let case = |name, bytes: &[u8], heads| Case {
        name,
        bytes: bytes.to_vec(),
        heads,
    };
    vec![
        case(
            "a plain call",
            b"POST /v1/chat/completions?api-version=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"model\": \"gpt\"}\n",
            &[false],
        ),
        case(
            "three pipelined calls with a HEAD between",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            &[false, true, false],
        ),
        case(
            "chunked with extensions and trailers",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5;ext=1\r\nhello\r\n6;a;b=\"q\"\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
            &[false],
        ),
        case(
            "upper-case chunk sizes",
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
            &[false],
        ),
        case(
            "odd whitespace around field values",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost:x\r\nX-Odd: \t spaced \t\r\nContent-Length:   2  \r\n\r\n{}",
            &[false],
        ),
        case(
            "obsolete line folding",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
            &[false],
        ),
        case(
            "Content-Length with Transfer-Encoding",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            &[false],
        ),
        case(
            "duplicate fields",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAccept: a\r\nX-Tag: one\r\nX-Tag: two\r\nAccept: b\r\n\r\n",
            &[false],
        ),
        case(
            "the same Content-Length twice",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            &[false],
        ),
        case(
            "an HTTP/1.0 call",
            b"POST /v1/completions HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            &[false],
        ),
        case(
            "an absolute-form target",
            b"GET http://x/v1/models?limit=2 HTTP/1.1\r\nHost: x\r\n\r\n",
            &[false],
        ),
        case(
            "Expect: 100-continue",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
            &[false],
        ),
        case(
            "a missing Host",
            b"GET /v1/models HTTP/1.1\r\n\r\n",
            &[false],
        ),
        case(
            "a bad field name",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n",
            &[false],
        ),
        case(
            "a bad chunk size",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            &[false],
        ),
        Case {
            name: "one huge chunk",
            bytes: huge_chunk,
            heads: &[false],
        },
        Case {
            name: "200 one-byte chunks",
            bytes: tiny_chunks,
            heads: &[false],
        },
        Case {
            name: "a 1 MiB body by Content-Length",
            bytes: huge_length,
            heads: &[false],
        },
    ]
}

/// `value` in Debug form with byte arrays as (shortened) text.
fn shown(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find(']') else {
            break;
        };
        let inner = &rest[start + 1..start + end];
        let bytes: Option<Vec<u8>> = inner
            .split(", ")
            .map(|b| b.trim().parse::<u8>().ok())
            .collect();
        match bytes {
            Some(bytes) if !inner.is_empty() => {
                let text = String::from_utf8_lossy(&bytes);
                let short: String = text.chars().take(60).collect();
                out.push_str(&format!("b{short:?}({} bytes)", bytes.len()));
            }
            _ => out.push_str(&rest[start..=start + end]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Sends `parts` through `proxy` and gathers what the upstream, the client and the events saw.
async fn run(
    upstream: &Mutex<Vec<Received>>,
    address: &str,
    parts: &[&[u8]],
    heads: &[bool],
) -> (Vec<Received>, Result<Vec<Answer>, String>) {
    upstream.lock().expect("upstream log").clear();
    let bytes = exchange(address, parts).await;
    let seen = upstream.lock().expect("upstream log").clone();
    (seen, answers(&bytes, heads))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_path_and_hyper_forward_and_answer_every_stream_alike() {
    let (upstream, log) = start_recording_upstream().await;
    let mut mismatches = Vec::new();
    for case in cases() {
        let mut runs = Vec::new();
        for setting in [
            "http1_forwarding = \"direct\"",
            "http1_forwarding = \"hyper\"",
        ] {
            let proxy = Proxy::start(&format!("http://{upstream}"), setting, 1024).await;
            let address = proxy.url.trim_start_matches("http://").to_string();
            let (seen, client) = run(&log, &address, &[&case.bytes], case.heads).await;
            let events = proxy
                .stop()
                .await
                .into_iter()
                .map(|call| {
                    (
                        call.method,
                        call.endpoint,
                        call.status_code,
                        call.outcome,
                        call.input_tokens,
                    )
                })
                .collect();
            runs.push(Run {
                upstream: seen,
                client,
                events,
            });
        }
        let (direct, hyper) = (&runs[0], &runs[1]);
        if direct.upstream != hyper.upstream {
            mismatches.push(format!(
                "{}: the upstream received\n  direct: {}\n  hyper:  {}",
                case.name,
                shown(&direct.upstream),
                shown(&hyper.upstream)
            ));
        }
        if direct.client != hyper.client {
            mismatches.push(format!(
                "{}: the client read\n  direct: {}\n  hyper:  {}",
                case.name,
                shown(&direct.client),
                shown(&hyper.client)
            ));
        }
        if direct.events != hyper.events {
            mismatches.push(format!(
                "{}: the events\n  direct: {:?}\n  hyper:  {:?}",
                case.name, direct.events, hyper.events
            ));
        }
        assert!(
            runs[0].client.is_ok(),
            "{}: the client could not read the answers: {:?}",
            case.name,
            runs[0].client
        );
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_split_at_every_byte_are_forwarded_as_when_sent_whole() {
    let streams: [(&str, &[u8], &[bool]); 2] = [
        (
            "a chunked call with a trailer, then a pipelined HEAD",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nx-sum: 1\r\n\r\nHEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
            &[false, true],
        ),
        (
            "a call by Content-Length",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-A: b\r\nContent-Length: 11\r\n\r\n{\"a\": \"bc\"}",
            &[false],
        ),
    ];
    for setting in [
        "http1_forwarding = \"direct\"",
        "http1_forwarding = \"hyper\"",
    ] {
        let (upstream, log) = start_recording_upstream().await;
        let proxy = Proxy::start(&format!("http://{upstream}"), setting, 4096).await;
        let address = proxy.url.trim_start_matches("http://").to_string();
        for (name, bytes, heads) in streams {
            let whole = run(&log, &address, &[bytes], heads).await;
            assert!(whole.1.is_ok(), "{setting}, {name}: {:?}", whole.1);
            assert_eq!(whole.0.len(), heads.len(), "{setting}, {name}: {whole:?}");
            for split in 1..bytes.len() {
                let (first, second) = bytes.split_at(split);
                let parted = run(&log, &address, &[first, second], heads).await;
                assert_eq!(
                    parted, whole,
                    "{setting}, {name}: split after byte {split} changed what was forwarded"
                );
            }
        }
        proxy.stop().await;
    }
}
