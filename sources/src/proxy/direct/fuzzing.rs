//! Entry points for the fuzzing harness (`benches`' `fuzz` binary): the direct path's pure
//! parts — parsing and rewriting request and response heads, scanning chunked bodies — run
//! exactly as the path runs them, with the connection and the forwarder left out.

use std::mem::MaybeUninit;

use super::chunked::ChunkedScanner;
use super::head::{self, Framing, UpstreamHead, MAX_HEADERS};

/// How a forwarded message's body is delimited, as the direct path decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

impl From<Framing> for BodyFraming {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyFraming::Empty,
            Framing::Length(length) => BodyFraming::Length(length),
            Framing::Chunked => BodyFraming::Chunked,
            Framing::UntilClose => BodyFraming::UntilClose,
        }
    }
}

/// What the direct path does with bytes that begin a request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The head is not complete yet.
    Partial,
    /// Refused as invalid (a 400 to the client, or a 502 for a response).
    Invalid,
    /// Left to hyper (requests only).
    HandOff,
    /// Forwarded: the head was `head_len` bytes, its body is framed as `framing`, and `out` is
    /// the head sent on.
    Forwarded {
        head_len: usize,
        method: String,
        target: String,
        framing: BodyFraming,
        out: Vec<u8>,
    },
}

/// The client's request head in `input`, parsed and rewritten for an upstream under
/// `base_path` as the direct path does (the host rewritten, a request id added when absent).
pub fn request_head(input: &[u8], base_path: &str) -> Head {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(input, &mut headers) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) if input.starts_with(super::HTTP2_PREFACE) => return Head::HandOff,
        Err(_) => return Head::Invalid,
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Head::HandOff;
    };
    let headers = &*request.headers;
    let Some(facts) = head::request_facts(method, target, version, headers) else {
        return Head::HandOff;
    };
    let has_request_id = headers
        .iter()
        .any(|header| header.name.eq_ignore_ascii_case("x-request-id"));
    let mut out = Vec::new();
    head::write_upstream_request(
        &mut out,
        method,
        target,
        headers,
        facts.framing,
        &UpstreamHead {
            base_path,
            host: Some(b"upstream.test:8000"),
            forwarded_for: b"127.0.0.1",
            request_id: (!has_request_id).then_some(("x-request-id", "fuzz-request-id")),
        },
    );
    Head::Forwarded {
        head_len,
        method: method.to_string(),
        target: target.to_string(),
        framing: facts.framing.into(),
        out,
    }
}

/// The upstream's response head in `input` to a request (a `HEAD` one when `to_head`),
/// rewritten for the client as the direct path does; `close` asks for `Connection: close`.
pub fn response_head(input: &[u8], to_head: bool, close: bool) -> Head {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        input,
        &mut headers,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid,
    };
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Head::Invalid;
    };
    if (100..200).contains(&status) {
        return Head::Invalid;
    }
    let Ok(facts) = head::response_facts(status, version, response.headers, to_head) else {
        return Head::Invalid;
    };
    let close_client = close || facts.framing == Framing::UntilClose;
    let mut out = Vec::new();
    head::write_client_response(
        &mut out,
        status,
        response.reason.unwrap_or(""),
        response.headers,
        facts.framing,
        close_client,
        None,
    );
    Head::Forwarded {
        head_len,
        method: String::new(),
        target: status.to_string(),
        framing: facts.framing.into(),
        out,
    }
}

/// Whether `name` is a hop-by-hop field the proxy never forwards.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    head::is_hop_by_hop(name)
}

/// A chunked body fed to the scanner in `pieces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    /// Bytes that belong to the body (all of them unless it ended earlier); 0 when the
    /// framing was refused.
    pub consumed: usize,
    /// The body ended at `consumed`.
    pub done: bool,
    /// The chunk data, in order.
    pub data: Vec<u8>,
    /// Why the framing was refused.
    pub error: Option<String>,
}

/// Scans `pieces`, the body's bytes in the order they arrive, as the direct path does.
pub fn scan_chunked(pieces: &[&[u8]]) -> Chunked {
    let mut scanner = ChunkedScanner::new();
    let mut result = Chunked {
        consumed: 0,
        done: false,
        data: Vec::new(),
        error: None,
    };
    for piece in pieces {
        let data = &mut result.data;
        match scanner.scan(piece, |range| data.extend_from_slice(&piece[range])) {
            Ok(scanned) => {
                result.consumed += scanned.consumed;
                if scanned.done {
                    result.done = true;
                    return result;
                }
            }
            Err(error) => {
                result.consumed = 0;
                result.error = Some(error.to_string());
                return result;
            }
        }
    }
    result
}
