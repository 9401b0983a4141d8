//! The fuzzing targets and their oracles: the direct path's request and response heads (a
//! re-parse of what it sends, and hyper reading the same client bytes), its chunked scanner
//! (split anywhere, and against hyper), the response observers (split anywhere, and through
//! every compression), the compressed-body decoders (bounded, split anywhere), the
//! pipelines.toml loader (errors located in the file) and the broker message decoder (what
//! decodes encodes back to the same events).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use engine::codec::{self, DecodedCalls, ARROW_CONTENT_TYPE, JSON_CONTENT_TYPE};
use engine::schema::api_call::{ApiCall, ApiCallBatchBuilder, Outcome};
use sources::proxy::decode::{Decoder, Encoding, Undecoded};
use sources::proxy::fuzzing::{self, BodyFraming, Head};
use sources::proxy::observe::{BodyKind, Observed, ResponseObserver};

use super::oracle::{hyper_first_request, HyperFraming};
use super::{fnv1a, Target, Verdict};

/// Every target, in the order `all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "request-head",
        about: "the direct path's request head parser and rewriter, against a re-parse of what it sends upstream and against hyper reading the same bytes",
        dictionary: HTTP_TOKENS,
        generated_seeds: no_generated_seeds,
        max_len: 16 * 1024,
        run: request_head,
    },
    Target {
        name: "response-head",
        about: "the direct path's response head parser and rewriter, against a re-parse of what it sends the client",
        dictionary: HTTP_TOKENS,
        generated_seeds: no_generated_seeds,
        max_len: 16 * 1024,
        run: response_head,
    },
    Target {
        name: "chunked",
        about: "the direct path's chunked body scanner, fed whole and split, against hyper",
        dictionary: CHUNK_TOKENS,
        generated_seeds: no_generated_seeds,
        max_len: 16 * 1024,
        run: chunked,
    },
    Target {
        name: "observer",
        about: "the SSE / NDJSON / JSON response observers, fed whole and split, plain and through gzip, deflate, br and zstd",
        dictionary: BODY_TOKENS,
        generated_seeds: no_generated_seeds,
        max_len: 8 * 1024,
        run: observer,
    },
    Target {
        name: "decoder",
        about: "the compressed-body decoders on arbitrary bytes: bounded output, the same whole and split",
        dictionary: &[],
        generated_seeds: compressed_seeds,
        max_len: 64 * 1024,
        run: decoder,
    },
    Target {
        name: "config",
        about: "the pipelines.toml loader and validator: no panic, every error located in the file",
        dictionary: CONFIG_TOKENS,
        generated_seeds: no_generated_seeds,
        max_len: 16 * 1024,
        run: config,
    },
    Target {
        name: "broker-message",
        about: "the broker message decoder (JSON lines, JSON arrays, Arrow IPC): what decodes re-encodes to the same events",
        dictionary: BODY_TOKENS,
        generated_seeds: broker_seeds,
        max_len: 32 * 1024,
        run: broker_message,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

const HTTP_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"CONNECT ",
    b"OPTIONS * ",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding:chunked",
    b"Connection: close",
    b"Connection: keep-alive, x-hop",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"Host: ",
    b"X-Forwarded-For: ",
    b"Trailer: x",
    b"TE: trailers",
    b"Keep-Alive: 5",
    b"Proxy-Connection: keep-alive",
    b"content-length: 0",
    b" chunked",
    b"\t",
    b" :",
    b"\x00",
    b"0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.1 304 \r\n",
    b"HTTP/1.1 100 Continue\r\n",
];

const CHUNK_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"0\r\n\r\n",
    b"0\r\n",
    b";ext=1",
    b";",
    b" ",
    b"\t",
    b"ffffffffffffffff",
    b"00000000000000001",
    b"x-trailer: 1\r\n",
    b"a\r\n0123456789\r\n",
    b"1\r\nx\r\n",
];

const BODY_TOKENS: &[&[u8]] = &[
    b"data: ",
    b"data:",
    b"\n\n",
    b"\r\n",
    b"[DONE]",
    b"event: ",
    b": comment\n",
    b"\"usage\"",
    b"{\"prompt_tokens\":12,\"completion_tokens\":34}",
    b"\"choices\":[{\"delta\":{\"content\":\"hi\"}}]",
    b"\"input_tokens\":",
    b"\"output_tokens\":",
    b"\"usageMetadata\":{\"promptTokenCount\":3}",
    b"\"model\":\"gpt-4o\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\u0000",
    b"\\\"",
    b"1e400",
    b"-1",
    b"4294967296",
    b"null",
    b"true",
    b"\"event_time\":",
    b"\"timestamp\":\"2026-05-01T10:00:00Z\"",
    b"\"latency_ms\":",
    b"\"http.response.status_code\":",
];

const CONFIG_TOKENS: &[&[u8]] = &[
    b"[sources.",
    b"[operators.",
    b"[sinks.",
    b"[api]",
    b"[[operators.a.rules]]",
    b"type = ",
    b"inputs = [",
    b"\"]",
    b"\"proxy\"",
    b"\"window\"",
    b"\"alert\"",
    b"\"anomaly\"",
    b"\"parquet\"",
    b"\"postgres\"",
    b"\"webhook\"",
    b"\"generator\"",
    b"size = \"10s\"",
    b"\"1ms\"",
    b"\"99999999999d\"",
    b"key = [\"model\"]",
    b"condition = \"p99_latency_ms > 1\"",
    b"${X}",
    b"${X:-y}",
    b"$${",
    b"\n",
    b"=",
    b"\"",
    b"'''",
    b"[[",
    b"]]",
    b"{",
    b"}",
    b"#",
    b"\\u",
    b"1e999",
    b"-0",
    b"inf",
    b"nan",
    b"true",
];

fn no_generated_seeds() -> Vec<Vec<u8>> {
    Vec::new()
}

/// Cut points for `input`, drawn from its hash so a finding reproduces from the input alone.
fn pieces(input: &[u8]) -> Vec<&[u8]> {
    let mut state = fnv1a(input) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cuts: Vec<usize> = (0..1 + next() % 8)
        .map(|_| (next() % (input.len() as u64 + 1)) as usize)
        .collect();
    if next() % 4 == 0 {
        // Sometimes one byte at a time near the start.
        cuts.extend(0..input.len().min(16));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts {
        out.push(&input[from..cut]);
        from = cut;
    }
    out.push(&input[from..]);
    out
}

fn signature(parts: &[u64]) -> u64 {
    parts.iter().fold(0xcbf2_9ce4_8422_2325, |hash, part| {
        (hash ^ part).wrapping_mul(0x0100_0000_01b3)
    })
}

fn bucket(n: usize) -> u64 {
    (usize::BITS - n.leading_zeros()) as u64
}

/// The fields of a head, re-parsed: (lower-case name, value).
fn fields(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// Checks the framing fields of a forwarded head against the framing the direct path chose.
fn check_framing(fields: &[(String, Vec<u8>)], framing: BodyFraming) -> Result<(), String> {
    let values = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let lengths = values("content-length");
    let codings = values("transfer-encoding");
    for (name, _) in fields {
        if fuzzing::is_hop_by_hop(name.as_bytes())
            && !(name == "transfer-encoding" && framing == BodyFraming::Chunked)
            && name != "connection"
        {
            return Err(format!("the hop-by-hop field `{name}` was forwarded"));
        }
    }
    match framing {
        BodyFraming::Chunked => {
            if codings != [b"chunked".as_slice()] || !lengths.is_empty() {
                return Err(format!(
                    "chunked framing sent with transfer-encoding {codings:?} and content-length {lengths:?}"
                ));
            }
        }
        BodyFraming::Length(n) => {
            let says_n = |value: &[u8]| {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    == Some(n)
            };
            if !codings.is_empty() || lengths.is_empty() || !lengths.iter().all(|v| says_n(v)) {
                return Err(format!(
                    "a body of {n} bytes sent with content-length {lengths:?} and transfer-encoding {codings:?}"
                ));
            }
        }
        BodyFraming::Empty => {
            if !codings.is_empty() {
                return Err(format!(
                    "an empty body sent with transfer-encoding {codings:?}"
                ));
            }
        }
        BodyFraming::UntilClose => {
            if !codings.is_empty() || !lengths.is_empty() {
                return Err("a read-until-close body sent with framing fields".into());
            }
        }
    }
    Ok(())
}

fn framing_kind(framing: BodyFraming) -> u64 {
    match framing {
        BodyFraming::Empty => 0,
        BodyFraming::Length(_) => 1,
        BodyFraming::Chunked => 2,
        BodyFraming::UntilClose => 3,
    }
}

fn request_head(input: &[u8]) -> Verdict {
    let (head_len, method, target, framing, out) = match fuzzing::request_head(input, "/base") {
        Head::Partial => return Ok(1),
        Head::Invalid => return Ok(2),
        Head::HandOff => return Ok(3),
        Head::Forwarded {
            head_len,
            method,
            target,
            framing,
            out,
        } => (head_len, method, target, framing, out),
    };
    // What goes upstream is one complete, valid head that says what the client's said.
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut sent = httparse::Request::new(&mut headers);
    match sent.parse(&out) {
        Ok(httparse::Status::Complete(len)) if len == out.len() => {}
        other => {
            return Err(format!(
                "the head sent upstream does not parse as one head ({other:?}): {:?}",
                String::from_utf8_lossy(&out)
            ))
        }
    }
    if sent.method != Some(method.as_str()) || sent.path != Some(format!("/base{target}").as_str())
    {
        return Err(format!(
            "sent {:?} {:?} for {method} {target}",
            sent.method, sent.path
        ));
    }
    let sent_fields = fields(sent.headers);
    check_framing(&sent_fields, framing)?;
    let hosts = sent_fields.iter().filter(|(n, _)| n == "host").count();
    if hosts != 1 {
        return Err(format!("{hosts} host fields sent upstream"));
    }
    // hyper, reading the client's bytes, sees the same request with the same body.
    let Some(hyper) = hyper_first_request(input) else {
        return Err(format!(
            "the direct path forwards {method} {target} but hyper refuses the head"
        ));
    };
    if hyper.method != method || hyper.target != target {
        return Err(format!(
            "direct: {method} {target}; hyper: {} {}",
            hyper.method, hyper.target
        ));
    }
    let body = &input[head_len..];
    let direct_body: Option<Vec<u8>> = match framing {
        BodyFraming::Empty | BodyFraming::Length(0) => Some(Vec::new()),
        BodyFraming::Length(n) => (body.len() as u64 >= n).then(|| body[..n as usize].to_vec()),
        BodyFraming::Chunked => {
            let scanned = fuzzing::scan_chunked(&[body]);
            scanned.done.then_some(scanned.data)
        }
        BodyFraming::UntilClose => return Err("a request framed until close".into()),
    };
    let same_framing = matches!(
        (framing, hyper.framing),
        (
            BodyFraming::Empty | BodyFraming::Length(0),
            HyperFraming::Empty
        ) | (BodyFraming::Chunked, HyperFraming::Chunked)
    ) || matches!((framing, hyper.framing), (BodyFraming::Length(a), HyperFraming::Length(b)) if a == b);
    if !same_framing {
        return Err(format!(
            "direct frames the body as {framing:?}, hyper as {:?}",
            hyper.framing
        ));
    }
    if let Some(direct_body) = &direct_body {
        if hyper.body.as_ref() != Ok(direct_body) {
            return Err(format!(
                "direct reads a body of {} bytes, hyper {:?}",
                direct_body.len(),
                hyper.body.as_ref().map(Vec::len)
            ));
        }
    }
    let kind = framing_kind(framing);
    Ok(signature(&[
        4,
        kind,
        bucket(sent_fields.len()),
        direct_body.is_some() as u64,
        fnv1a(method.as_bytes()) & 0xff,
    ]))
}

fn response_head(input: &[u8]) -> Verdict {
    let Some((&flags, rest)) = input.split_first() else {
        return Ok(0);
    };
    let (to_head, close) = (flags & 1 == 1, flags & 2 == 2);
    let (status, framing, out) = match fuzzing::response_head(rest, to_head, close) {
        Head::Partial => return Ok(1),
        Head::Invalid => return Ok(2),
        Head::HandOff => return Ok(3),
        Head::Forwarded {
            target,
            framing,
            out,
            ..
        } => (target, framing, out),
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut sent = httparse::Response::new(&mut headers);
    match sent.parse(&out) {
        Ok(httparse::Status::Complete(len)) if len == out.len() => {}
        other => {
            return Err(format!(
                "the head sent to the client does not parse as one head ({other:?}): {:?}",
                String::from_utf8_lossy(&out)
            ))
        }
    }
    if sent.code.map(|c| c.to_string()) != Some(status.clone()) {
        return Err(format!("sent status {:?} for {status}", sent.code));
    }
    let sent_fields = fields(sent.headers);
    if framing == BodyFraming::Empty {
        // A HEAD, 204 or 304 response keeps the Content-Length of what a GET would get.
        if sent_fields.iter().any(|(n, _)| n == "transfer-encoding") {
            return Err("a bodiless response sent with transfer-encoding".into());
        }
    } else {
        check_framing(&sent_fields, framing)?;
    }
    let closes = sent_fields
        .iter()
        .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case(b"close"));
    if (close || framing == BodyFraming::UntilClose) && !closes {
        return Err("the client connection closes without `connection: close`".into());
    }
    let kind = framing_kind(framing);
    Ok(signature(&[
        4,
        kind,
        bucket(sent_fields.len()),
        flags as u64 & 3,
    ]))
}

fn chunked(input: &[u8]) -> Verdict {
    let whole = fuzzing::scan_chunked(&[input]);
    let split = fuzzing::scan_chunked(&pieces(input));
    if whole != split {
        return Err(format!("whole: {whole:?}\nsplit: {split:?}"));
    }
    if whole.error.is_none() && whole.data.len() > whole.consumed {
        return Err("more data than bytes consumed".into());
    }
    let mut stream = b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    stream.extend_from_slice(input);
    let hyper = hyper_first_request(&stream);
    let hyper_body = hyper.as_ref().map(|h| h.body.clone());
    if whole.done {
        if hyper_body.as_ref() != Some(&Ok(whole.data.clone())) {
            return Err(format!(
                "the scanner ends the body after {} bytes with {} data bytes; hyper reads {:?}",
                whole.consumed,
                whole.data.len(),
                hyper_body.map(|b| b.map(|d| d.len()))
            ));
        }
    } else if whole.error.is_none() {
        if let Some(Ok(data)) = &hyper_body {
            return Err(format!(
                "the scanner still waits for the body's end; hyper read a whole body of {} bytes",
                data.len()
            ));
        }
    }
    Ok(signature(&[
        whole.done as u64,
        whole
            .error
            .as_deref()
            .map(|e| fnv1a(e.as_bytes()))
            .unwrap_or(0),
        bucket(whole.data.len()),
        (whole.consumed == input.len()) as u64,
        hyper_body.map(|b| b.is_ok() as u64 + 1).unwrap_or(0),
    ]))
}

const OBSERVE_LIMIT: usize = 1 << 20;

fn observe(kind: BodyKind, json_stream: bool, encoding: Encoding, pieces: &[&[u8]]) -> Observed {
    let mut observer = ResponseObserver::new(kind, encoding, OBSERVE_LIMIT);
    if json_stream {
        observer = observer.json_stream();
    }
    for (index, piece) in pieces.iter().enumerate() {
        observer.feed(
            &Bytes::copy_from_slice(piece),
            Duration::from_micros(index as u64 + 1),
        );
    }
    observer.finish()
}

/// What must not depend on how a body was cut or compressed (the first token's time does).
fn comparable(observed: &Observed) -> Observed {
    Observed {
        first_token: observed.first_token.map(|_| Duration::ZERO),
        ..observed.clone()
    }
}

fn compress(encoding: Encoding, body: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = encoder.write_all(body);
            encoder.finish().unwrap_or_default()
        }
        Encoding::Deflate => {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = encoder.write_all(body);
            encoder.finish().unwrap_or_default()
        }
        Encoding::Brotli => {
            let mut out = Vec::new();
            {
                let mut encoder = brotli::CompressorWriter::new(&mut out, 4096, 2, 22);
                let _ = encoder.write_all(body);
            }
            out
        }
        Encoding::Zstd => zstd::encode_all(body, 1).unwrap_or_default(),
        Encoding::Identity | Encoding::Unsupported => body.to_vec(),
    }
}

const ENCODINGS: [Encoding; 4] = [
    Encoding::Gzip,
    Encoding::Deflate,
    Encoding::Brotli,
    Encoding::Zstd,
];

fn observer(input: &[u8]) -> Verdict {
    let Some((&flags, body)) = input.split_first() else {
        return Ok(0);
    };
    let kind = [
        BodyKind::EventStream,
        BodyKind::NdJson,
        BodyKind::Json,
        BodyKind::Other,
    ][(flags & 3) as usize];
    let json_stream = flags & 4 == 4;
    let whole = comparable(&observe(kind, json_stream, Encoding::Identity, &[body]));
    let split = comparable(&observe(
        kind,
        json_stream,
        Encoding::Identity,
        &pieces(body),
    ));
    if whole != split {
        return Err(format!("{kind:?} whole: {whole:?}\nsplit: {split:?}"));
    }
    if kind != BodyKind::Other {
        for encoding in ENCODINGS {
            let compressed = compress(encoding, body);
            let through = comparable(&observe(kind, json_stream, encoding, &pieces(&compressed)));
            if through != whole {
                return Err(format!(
                    "{kind:?} plain: {whole:?}\nthrough {encoding:?}: {through:?}"
                ));
            }
        }
    }
    Ok(signature(&[
        flags as u64 & 7,
        whole.first_token.is_some() as u64,
        whole
            .input_tokens
            .map(|n| bucket(n as usize) + 1)
            .unwrap_or(0),
        whole
            .output_tokens
            .map(|n| bucket(n as usize) + 1)
            .unwrap_or(0),
        whole.output_tokens_estimated as u64,
        whole.cached_input_tokens.is_some() as u64,
        whole.reasoning_tokens.is_some() as u64,
    ]))
}

const DECODE_LIMIT: usize = 64 * 1024;

fn decode(encoding: Encoding, pieces: &[&[u8]]) -> (Vec<u8>, Option<Undecoded>) {
    let Some(mut decoder) = Decoder::new(encoding, DECODE_LIMIT) else {
        return (Vec::new(), None);
    };
    let mut out = Vec::new();
    for piece in pieces {
        decoder.feed(piece, |decoded| out.extend_from_slice(decoded));
    }
    decoder.finish(|decoded| out.extend_from_slice(decoded));
    (out, decoder.failure())
}

fn decoder(input: &[u8]) -> Verdict {
    let Some((&flags, body)) = input.split_first() else {
        return Ok(0);
    };
    let encoding = ENCODINGS[(flags % 4) as usize];
    let (whole, whole_failure) = decode(encoding, &[body]);
    let (split, split_failure) = decode(encoding, &pieces(body));
    if whole.len() > DECODE_LIMIT || split.len() > DECODE_LIMIT {
        return Err(format!(
            "{encoding:?}: decoded {} / {} bytes past the limit of {DECODE_LIMIT}",
            whole.len(),
            split.len()
        ));
    }
    // A body both invalid and past the limit may be found to be either first.
    if whole_failure.is_some() != split_failure.is_some() {
        return Err(format!(
            "{encoding:?}: whole {whole_failure:?}, split {split_failure:?}"
        ));
    }
    // A body decoded to its end decodes the same however it arrives.
    if whole_failure.is_none() && whole != split {
        return Err(format!(
            "{encoding:?}: whole decodes to {} bytes, split to {}",
            whole.len(),
            split.len()
        ));
    }
    Ok(signature(&[
        flags as u64 % 4,
        match whole_failure {
            None => 0,
            Some(Undecoded::OverLimit) => 1,
            Some(Undecoded::Invalid) => 2,
        },
        bucket(whole.len()),
    ]))
}

/// Bodies compressed with each encoding (the flag byte first), and bombs past the limit.
fn compressed_seeds() -> Vec<Vec<u8>> {
    let bodies: Vec<Vec<u8>> = std::fs::read_dir(super::corpus_dir("observer"))
        .into_iter()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
        .map(|seed| seed.get(1..).unwrap_or_default().to_vec())
        .chain([vec![0u8; 4 * 1024 * 1024], b"x".repeat(100)])
        .collect();
    let mut seeds = Vec::new();
    for body in &bodies {
        for (flag, encoding) in ENCODINGS.iter().enumerate() {
            let mut seed = vec![flag as u8];
            seed.extend(compress(*encoding, body));
            seeds.push(seed);
        }
    }
    seeds
}

fn config(input: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(input).to_string();
    let lines = text.lines().count().max(1) + 1;
    let located = |errors: &engine::config::ConfigErrors| -> Result<u64, String> {
        for error in &errors.0 {
            if error.line == 0
                || error.column == 0
                || error.line > lines
                || error.message.is_empty()
            {
                return Err(format!(
                    "an error without a place in the file: {}:{}:{}: {:?}",
                    error.file, error.line, error.column, error.message
                ));
            }
        }
        Ok(signature(&[
            1,
            bucket(errors.0.len()),
            errors
                .0
                .first()
                .map(|e| fnv1a(e.message.get(..12).unwrap_or(&e.message).as_bytes()))
                .unwrap_or(0),
        ]))
    };
    let source = match engine::config::SourceText::new("fuzz.toml", text.clone(), |_| None) {
        Ok(source) => source,
        Err(errors) => return located(&errors),
    };
    match pipeline::commands::check_file(&source, pipeline::api::live::LiveState::new(16)) {
        Ok(checked) => Ok(signature(&[2, checked.pipelines.len() as u64])),
        Err(errors) => located(&errors),
    }
}

fn calls_json(rows: &[ApiCall]) -> Result<Vec<u8>, String> {
    codec::encode_api_calls_json(rows.iter()).map_err(|e| e.to_string())
}

fn broker_message(input: &[u8]) -> Verdict {
    let Some((&flags, body)) = input.split_first() else {
        return Ok(0);
    };
    let content_type = [
        None,
        Some(JSON_CONTENT_TYPE),
        Some("application/json"),
        Some(ARROW_CONTENT_TYPE),
    ][(flags & 3) as usize];
    let decoded = match codec::decode_api_calls(body, content_type) {
        Ok(decoded) => decoded,
        Err(error) => {
            let text = error.to_string();
            return Ok(signature(&[
                1,
                fnv1a(text.get(..10).unwrap_or(&text).as_bytes()),
            ]));
        }
    };
    let rows = match &decoded {
        DecodedCalls::Rows(rows) => rows.clone(),
        DecodedCalls::Batches(batches) => {
            let mut rows = Vec::new();
            for batch in batches {
                rows.extend(
                    engine::schema::api_call::batch_to_api_calls(batch)
                        .map_err(|e| format!("a decoded Arrow batch does not read back: {e}"))?,
                );
            }
            rows
        }
    };
    // What was accepted encodes back to JSON that decodes to the same events.
    let json = calls_json(&rows)?;
    if rows.is_empty() {
        return Ok(signature(&[2, 0]));
    }
    match codec::decode_api_calls(&json, Some(JSON_CONTENT_TYPE)) {
        Ok(DecodedCalls::Rows(again)) => {
            if calls_json(&again)? != json {
                return Err("decoded events re-encode differently".into());
            }
        }
        Ok(DecodedCalls::Batches(_)) => return Err("JSON decoded as Arrow".into()),
        Err(error) => {
            return Err(format!(
                "accepted events do not decode once re-encoded: {error}"
            ))
        }
    }
    Ok(signature(&[
        2 + matches!(decoded, DecodedCalls::Batches(_)) as u64,
        bucket(rows.len()),
        flags as u64 & 3,
    ]))
}

/// Arrow IPC messages of a few events (the flag byte first), beside the JSON seed files.
fn broker_seeds() -> Vec<Vec<u8>> {
    let calls = [
        ApiCall {
            event_time: 1_777_000_000_000_000,
            request_id: "r1".into(),
            model: Some("gpt-4o".into()),
            endpoint: Some("/v1/chat/completions".into()),
            status_code: Some(200),
            latency_ms: 120.5,
            input_tokens: Some(12),
            output_tokens: Some(34),
            ..ApiCall::default()
        },
        ApiCall {
            event_time: 1_777_000_000_500_000,
            request_id: "r2".into(),
            status_code: Some(502),
            outcome: Outcome::UpstreamUnreachable,
            latency_ms: 3.0,
            error: Some("cannot connect".into()),
            ..ApiCall::default()
        },
    ];
    let mut builder = ApiCallBatchBuilder::with_capacity(calls.len());
    for call in &calls {
        builder.push(call);
    }
    let batch = builder.finish();
    let mut seeds = Vec::new();
    if let Ok(body) = codec::encode(&batch, codec::Encoding::Arrow) {
        for flag in [0u8, 3] {
            let mut seed = vec![flag];
            seed.extend_from_slice(&body);
            seeds.push(seed);
        }
    }
    seeds
}
