//! The direct HTTP/1.1 path: the common call — HTTP/1.1, an origin-form target, a body framed by
//! `Content-Length` or chunked — served straight on the sockets, as nginx does: the request
//! head is parsed with `httparse`, rewritten (hop-by-hop headers removed, forwarding headers
//! added) and written with the body's first bytes in one system call to the client
//! connection's own upstream connection; the response head is parsed and rewritten the same
//! way, and body bytes are forwarded unchanged as they arrive (chunked framing included), read
//! by the observer on the way. One task, no channel, no hand-off between tasks for a call.
//!
//! Anything else — HTTP/1.0, h2c, upgrades, `Expect`, absolute-form targets, a malformed or
//! oversized head — goes to hyper with the bytes read so far, which serves the rest of that
//! connection exactly as it serves every connection with `http1_forwarding = "hyper"`.

mod chunked;
pub mod fuzzing;
mod head;
mod io;

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use engine::schema::api_call::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::body::{CallRecord, RequestTap};
use super::config::HostHeader;
use super::decode::Encoding;
use super::idle::{IdleConnection, IdleUpstreams};
use super::observe::BodyKind;
use super::server::{json_error_body, CallStart, Forwarder};
use super::upstream::{Alpn, Speaks, UpstreamStream};
use chunked::ChunkedScanner;
use head::{Framing, RequestFacts, UpstreamHead, MAX_HEADERS};
pub use io::Rewind;

/// A worker's idle upstream connections of the direct path.
pub type IdleStreams = IdleUpstreams<UpstreamStream>;

/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;
/// A request head not complete within this many bytes is left to hyper (which answers 431
/// beyond its own limit).
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// A response head larger than this is refused with a 502.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// How a client connection served by the direct path ended.
pub enum Ended {
    /// Closed (by the client, after `Connection: close`, on an error, or as the proxy stops).
    Closed,
    /// A request the direct path leaves to hyper: the connection and the bytes read from it.
    HandOff(Rewind),
}

/// Serves `stream` until it closes or a request must go to hyper; its upstream connection is
/// taken from, and left to, `idle`.
pub async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    forwarder: Arc<Forwarder>,
    idle: Arc<IdleStreams>,
    stop: CancellationToken,
) -> Ended {
    let mut connection = DirectConnection {
        forwarded_for: client.ip().to_string(),
        forwarder,
        client: stream,
        client_buf: BytesMut::with_capacity(READ_SIZE),
        upstream: None,
        upstream_buf: BytesMut::new(),
        out: Vec::with_capacity(1024),
        data_ranges: Vec::new(),
        idle,
    };
    // Both live as long as the connection, so a call registers neither a waiter nor a timer.
    let stopped = stop.cancelled_owned();
    tokio::pin!(stopped);
    let response_timeout = connection.forwarder.config.response_timeout.0;
    let mut deadline = CoarseDeadline::new(response_timeout);
    let hand_off = loop {
        match connection.call(stopped.as_mut(), &mut deadline).await {
            Next::Continue => {}
            Next::Close => break false,
            Next::HandOff => break true,
        }
    };
    let DirectConnection {
        client: stream,
        client_buf,
        upstream,
        idle,
        ..
    } = connection;
    if let Some(upstream) = upstream {
        idle.put(upstream);
    }
    if hand_off {
        Ended::HandOff(Rewind::new(client_buf.freeze(), stream))
    } else {
        Ended::Closed
    }
}

enum Next {
    Continue,
    Close,
    HandOff,
}

/// A parsed request, its upstream head written to `out`.
struct Prepared {
    head_len: usize,
    facts: RequestFacts,
    call: CallStart,
}

enum Parsed {
    Complete(Prepared),
    Partial,
    HandOff,
    /// Not an HTTP/1 request head (and not HTTP/2's preface): answered 400, with why.
    Malformed(String),
}

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4): left to hyper.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What went wrong between sending a request and reading its response head.
enum ExchangeError {
    /// The upstream could not be reached, broke off, or answered something unforwardable.
    Upstream(String),
    /// The client went away in the middle of its request body.
    ClientGone,
    /// The client's chunked request body is malformed.
    BadRequestBody(chunked::ChunkError),
}

/// Why no response head could be read.
enum HeadError {
    /// The connection closed (or failed) before any byte of a response.
    ClosedUnanswered(String),
    Invalid(String),
}

enum ParsedResponse {
    Complete(ResponseStart),
    /// A 1xx response, skipped.
    Informational,
    Partial,
}

/// A response body's remaining part, as read from the upstream.
enum ResponseLeft {
    Done,
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
}

/// A request body's remaining part, as read from the client.
enum BodyLeft {
    Done,
    Length(u64),
    Chunked(ChunkedScanner),
}

/// The response head, already written into `out` for the client.
struct ResponseStart {
    status: u16,
    framing: Framing,
    upstream_closes: bool,
    close_client: bool,
    kind: BodyKind,
    encoding: Encoding,
}

struct DirectConnection {
    forwarder: Arc<Forwarder>,
    forwarded_for: String,
    client: TcpStream,
    client_buf: BytesMut,
    upstream: Option<UpstreamStream>,
    upstream_buf: BytesMut,
    /// The head being written (the upstream request's, then the client response's).
    out: Vec<u8>,
    /// Chunk data ranges of the response bytes being forwarded.
    data_ranges: Vec<Range<usize>>,
    idle: Arc<IdleStreams>,
}

impl DirectConnection {
    /// Serves the next call on the connection.
    async fn call(
        &mut self,
        mut stopped: Pin<&mut WaitForCancellationFutureOwned>,
        deadline: &mut CoarseDeadline,
    ) -> Next {
        // Set once a head has begun: the rest of it must arrive by then.
        let mut head_deadline: Option<(tokio::time::Instant, Instant)> = None;
        let prepared = loop {
            if !self.client_buf.is_empty() {
                match self.prepare() {
                    Parsed::Complete(prepared) => break prepared,
                    Parsed::HandOff => return Next::HandOff,
                    Parsed::Malformed(why) => {
                        let since = head_deadline.map_or_else(Instant::now, |(_, began)| began);
                        return self.malformed_head(400, "Bad Request", &why, since).await;
                    }
                    Parsed::Partial if self.client_buf.len() > MAX_REQUEST_HEAD => {
                        return Next::HandOff
                    }
                    Parsed::Partial => {}
                }
            }
            self.client_buf.reserve(READ_SIZE);
            let read = if self.client_buf.is_empty() {
                // Between calls: the proxy stopping closes the idle connection.
                tokio::select! {
                    biased;
                    read = self.client.read_buf(&mut self.client_buf) => read,
                    () = &mut stopped => return Next::Close,
                }
            } else {
                let (deadline, began) = *head_deadline.get_or_insert_with(|| {
                    let now = tokio::time::Instant::now();
                    (
                        now + self.forwarder.config.header_read_timeout.0,
                        now.into_std(),
                    )
                });
                match tokio::time::timeout_at(deadline, self.client.read_buf(&mut self.client_buf))
                    .await
                {
                    Ok(read) => read,
                    Err(_) => {
                        let why = format!(
                            "the request head was not complete within {} (header_read_timeout)",
                            self.forwarder.config.header_read_timeout
                        );
                        return self
                            .malformed_head(408, "Request Timeout", &why, began)
                            .await;
                    }
                }
            };
            match read {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {}
            }
        };
        let Prepared {
            head_len,
            facts,
            call,
        } = prepared;
        self.client_buf.advance(head_len);
        let CallStart {
            mut record,
            prefix_limit,
            tap,
            ..
        } = call;
        let mut body = match facts.framing {
            Framing::Length(length) => BodyLeft::Length(length),
            Framing::Chunked => BodyLeft::Chunked(ChunkedScanner::new()),
            Framing::Empty | Framing::UntilClose => BodyLeft::Done,
        };
        let first_body = match self.take_request_body(&mut body, &tap, prefix_limit) {
            Ok(first) => first,
            Err(error) => {
                return self.bad_request_body(record, error).await;
            }
        };
        let before_send = self
            .forwarder
            .overhead_header
            .is_some()
            .then(|| record.started.elapsed());

        let sleep = deadline.arm(record.started);
        let exchange = self.exchange(
            first_body,
            &mut body,
            &tap,
            prefix_limit,
            &facts,
            before_send,
        );
        let response = tokio::select! {
            biased;
            response = exchange => Ok(response),
            () = sleep => Err(()),
        };
        let body_read = matches!(body, BodyLeft::Done);
        match response {
            Ok(Ok((start, upstream))) => {
                record.event.ttfb_ms = Some(record.started.elapsed().as_secs_f64() * 1000.0);
                record.event.status_code = Some(start.status);
                record.event.outcome = Outcome::from_status(start.status);
                self.forward_response(record, start, upstream).await
            }
            Ok(Err(ExchangeError::Upstream(error))) => {
                record.event.status_code = Some(502);
                let message = format!(
                    "the upstream {} could not be reached: {error}",
                    self.forwarder.upstream.authority
                );
                let body = json_error_body("upstream_unreachable", &message);
                record.event.error = Some(error);
                record.emit(
                    Some(Outcome::UpstreamUnreachable),
                    Some(body.len() as u64),
                    None,
                );
                self.answer_error(502, "Bad Gateway", &body, !body_read)
                    .await
            }
            Ok(Err(ExchangeError::ClientGone)) => {
                record.emit(Some(Outcome::ClientAbort), None, None);
                Next::Close
            }
            Ok(Err(ExchangeError::BadRequestBody(error))) => {
                self.bad_request_body(record, error).await
            }
            Err(_) => {
                record.event.status_code = Some(504);
                let timeout = self.forwarder.config.response_timeout;
                let message = format!(
                    "the upstream {} sent no response within {timeout}",
                    self.forwarder.upstream.authority
                );
                let body = json_error_body("timeout", &message);
                record.event.error = Some(format!("no response within {timeout}"));
                record.emit(Some(Outcome::Timeout), Some(body.len() as u64), None);
                self.answer_error(504, "Gateway Timeout", &body, !body_read)
                    .await
            }
        }
    }

    /// Sends the request upstream (its head in `out`, then `first_body`, then the rest of the
    /// body as the client sends it) and reads the response head, writing the client's response
    /// head into `out`. A reused upstream connection the upstream has closed is not used; one
    /// that turns out to be closed when the request is written to it is given up for a new one,
    /// the request sent again when it is whole in hand (its body ended within the first bytes);
    /// and when it closes after the request was written and before any byte of a response, the
    /// request is sent again only if its method is idempotent (RFC 9110 §9.2.2: the upstream
    /// may have acted on it).
    async fn exchange(
        &mut self,
        first_body: Bytes,
        body: &mut BodyLeft,
        tap: &RequestTap,
        prefix_limit: usize,
        facts: &RequestFacts,
        before_send: Option<Duration>,
    ) -> Result<(ResponseStart, UpstreamStream), ExchangeError> {
        let replayable = matches!(body, BodyLeft::Done);
        let mut retried = false;
        loop {
            let own = self
                .upstream
                .take()
                .and_then(|mut own| (!own.is_closed()).then_some(own));
            let (mut upstream, reused) = match own.or_else(|| self.idle.take()) {
                Some(upstream) => (upstream, true),
                None => (self.connect().await?, false),
            };
            self.upstream_buf.clear();
            if let Err(error) = io::write_both(&mut upstream, &self.out, &first_body).await {
                if reused && replayable && !retried {
                    retried = true;
                    continue;
                }
                return Err(ExchangeError::Upstream(error.to_string()));
            }
            while !matches!(body, BodyLeft::Done) {
                self.client_buf.reserve(READ_SIZE);
                match self.client.read_buf(&mut self.client_buf).await {
                    Ok(0) | Err(_) => return Err(ExchangeError::ClientGone),
                    Ok(_) => {}
                }
                let bytes = self
                    .take_request_body(body, tap, prefix_limit)
                    .map_err(ExchangeError::BadRequestBody)?;
                upstream
                    .write_all(&bytes)
                    .await
                    .map_err(|error| ExchangeError::Upstream(error.to_string()))?;
            }
            match self
                .read_response_head(&mut upstream, facts, before_send)
                .await
            {
                Ok(start) => return Ok((start, upstream)),
                Err(HeadError::ClosedUnanswered(_))
                    if reused && replayable && facts.idempotent && !retried =>
                {
                    retried = true;
                }
                Err(HeadError::ClosedUnanswered(error) | HeadError::Invalid(error)) => {
                    return Err(ExchangeError::Upstream(error))
                }
            }
        }
    }

    /// A new upstream connection carrying HTTP/1.1. Before the upstream's protocol is known
    /// (`auto` over TLS) the handshake offers HTTP/2 too, and the upstream's choice is
    /// remembered; should it choose HTTP/2, this call goes over a second connection offering
    /// HTTP/1.1 only, and later calls are handed to hyper, which speaks HTTP/2.
    async fn connect(&self) -> Result<UpstreamStream, ExchangeError> {
        let upstream = &self.forwarder.upstream;
        let refused =
            |error: super::upstream::ConnectError| ExchangeError::Upstream(error.to_string());
        if upstream.speaks() == Speaks::Unknown {
            let stream = upstream.connect(Alpn::Negotiate).await.map_err(refused)?;
            if !stream.negotiated_h2() {
                return Ok(stream);
            }
        }
        upstream.connect(Alpn::Http1).await.map_err(refused)
    }

    /// Reads the upstream's response head (informational responses skipped) and writes the
    /// client's response head into `out`.
    async fn read_response_head(
        &mut self,
        upstream: &mut UpstreamStream,
        facts: &RequestFacts,
        before_send: Option<Duration>,
    ) -> Result<ResponseStart, HeadError> {
        let mut received = false;
        loop {
            if !self.upstream_buf.is_empty() {
                match self.parse_response(facts, before_send)? {
                    ParsedResponse::Complete(start) => return Ok(start),
                    ParsedResponse::Informational => continue,
                    ParsedResponse::Partial => {}
                }
            }
            if self.upstream_buf.len() > MAX_RESPONSE_HEAD {
                return Err(HeadError::Invalid("response head too large".into()));
            }
            self.upstream_buf.reserve(READ_SIZE);
            match upstream.read_buf(&mut self.upstream_buf).await {
                Ok(0) if !received => {
                    return Err(HeadError::ClosedUnanswered(
                        "connection closed before a response".into(),
                    ))
                }
                Ok(0) => return Err(HeadError::Invalid("connection closed mid-head".into())),
                Err(error) if !received => {
                    return Err(HeadError::ClosedUnanswered(error.to_string()))
                }
                Err(error) => return Err(HeadError::Invalid(error.to_string())),
                Ok(_) => received = true,
            }
        }
    }

    fn parse_response(
        &mut self,
        facts: &RequestFacts,
        before_send: Option<Duration>,
    ) -> Result<ParsedResponse, HeadError> {
        // Measured only for the overhead header.
        let after_headers = before_send.map(|before_send| (before_send, Instant::now()));
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &self.upstream_buf,
            &mut headers,
        );
        let head_len = match parsed {
            Ok(httparse::Status::Complete(head_len)) => head_len,
            Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
            Err(error) => {
                return Err(HeadError::Invalid(format!(
                    "invalid response head: {error}"
                )))
            }
        };
        let (Some(status), Some(version)) = (response.code, response.version) else {
            return Err(HeadError::Invalid("invalid response head".into()));
        };
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(HeadError::Invalid(
                    "101 Switching Protocols to a request without an upgrade".into(),
                ));
            }
            self.upstream_buf.advance(head_len);
            return Ok(ParsedResponse::Informational);
        }
        let response_facts = head::response_facts(status, version, response.headers, facts.is_head)
            .map_err(|error| HeadError::Invalid(error.into()))?;
        let kind = BodyKind::from_content_type(head::find_header(response.headers, "content-type"));
        let encoding =
            Encoding::from_header(head::find_header(response.headers, "content-encoding"));
        let close_client = facts.close || response_facts.framing == Framing::UntilClose;
        let overhead = self
            .forwarder
            .overhead_header
            .as_ref()
            .zip(after_headers)
            .map(|(name, (before_send, after_headers))| {
                let overhead = before_send + after_headers.elapsed();
                (
                    name.as_str(),
                    format!("{:.3}", overhead.as_secs_f64() * 1000.0),
                )
            });
        self.out.clear();
        head::write_client_response(
            &mut self.out,
            status,
            response.reason.unwrap_or(""),
            response.headers,
            response_facts.framing,
            close_client,
            overhead
                .as_ref()
                .map(|(name, value)| (*name, value.as_str())),
        );
        self.upstream_buf.advance(head_len);
        Ok(ParsedResponse::Complete(ResponseStart {
            status,
            framing: response_facts.framing,
            upstream_closes: response_facts.upstream_closes,
            close_client,
            kind,
            encoding,
        }))
    }

    /// Forwards the response (its head in `out`) and its body as it arrives, feeding the
    /// observer, then emits the call's event.
    async fn forward_response(
        &mut self,
        record: Box<CallRecord>,
        start: ResponseStart,
        mut upstream: UpstreamStream,
    ) -> Next {
        let mut observer = record.observer(start.kind, start.encoding);
        let mut left = match start.framing {
            Framing::Empty => ResponseLeft::Done,
            Framing::Length(length) => ResponseLeft::Length(length),
            Framing::Chunked => ResponseLeft::Chunked(ChunkedScanner::new()),
            Framing::UntilClose => ResponseLeft::UntilClose,
        };
        let mut data_bytes = 0u64;
        let mut head_written = false;
        loop {
            let raw = match &mut left {
                ResponseLeft::Done => Bytes::new(),
                ResponseLeft::Length(length_left) => {
                    let take = (*length_left).min(self.upstream_buf.len() as u64) as usize;
                    let raw = self.upstream_buf.split_to(take).freeze();
                    *length_left -= take as u64;
                    if *length_left == 0 {
                        left = ResponseLeft::Done;
                    }
                    data_bytes += raw.len() as u64;
                    observer.feed(&raw, record.started.elapsed());
                    raw
                }
                ResponseLeft::UntilClose => {
                    let raw = self.upstream_buf.split().freeze();
                    data_bytes += raw.len() as u64;
                    observer.feed(&raw, record.started.elapsed());
                    raw
                }
                ResponseLeft::Chunked(scanner) => {
                    self.data_ranges.clear();
                    let ranges = &mut self.data_ranges;
                    let scanned = scanner.scan(&self.upstream_buf, |range| ranges.push(range));
                    let scanned = match scanned {
                        Ok(scanned) => scanned,
                        Err(_) => {
                            // The upstream's framing is broken: the response cannot be finished.
                            record.emit(
                                Some(Outcome::UpstreamUnreachable),
                                Some(data_bytes),
                                Some(observer),
                            );
                            return Next::Close;
                        }
                    };
                    let raw = self.upstream_buf.split_to(scanned.consumed).freeze();
                    for range in self.data_ranges.drain(..) {
                        data_bytes += range.len() as u64;
                        observer.feed(&raw.slice(range), record.started.elapsed());
                    }
                    if scanned.done {
                        left = ResponseLeft::Done;
                    }
                    raw
                }
            };
            let written = if !head_written {
                head_written = true;
                io::write_both(&mut self.client, &self.out, &raw).await
            } else if raw.is_empty() {
                Ok(())
            } else {
                self.client.write_all(&raw).await
            };
            if written.is_err() {
                record.emit(Some(Outcome::ClientAbort), Some(data_bytes), Some(observer));
                return Next::Close;
            }
            if matches!(left, ResponseLeft::Done) {
                break;
            }
            self.upstream_buf.reserve(READ_SIZE);
            let read = tokio::select! {
                biased;
                read = upstream.read_buf(&mut self.upstream_buf) => read,
                () = client_closed(&self.client, &mut self.client_buf) => {
                    record.emit(Some(Outcome::ClientAbort), Some(data_bytes), Some(observer));
                    return Next::Close;
                }
            };
            match read {
                Ok(0) if matches!(left, ResponseLeft::UntilClose) => break,
                // A TLS upstream that closes without close_notify, ending a body framed by
                // the connection's end.
                Err(error)
                    if matches!(left, ResponseLeft::UntilClose)
                        && error.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    break
                }
                Ok(0) | Err(_) => {
                    // The upstream broke off mid-body.
                    record.emit(
                        Some(Outcome::UpstreamUnreachable),
                        Some(data_bytes),
                        Some(observer),
                    );
                    return Next::Close;
                }
                Ok(_) => {}
            }
        }
        record.emit(None, Some(data_bytes), Some(observer));
        // Bytes after a complete response were not asked for: the connection is not reused.
        if !start.upstream_closes && self.upstream_buf.is_empty() {
            self.upstream = Some(upstream);
        }
        if start.close_client {
            let _ = self.client.shutdown().await;
            return Next::Close;
        }
        Next::Continue
    }

    /// Answers a call the proxy could not forward with a JSON error `body`; `close` when the
    /// rest of the request was not read (the connection cannot carry another call).
    async fn answer_error(&mut self, status: u16, reason: &str, body: &str, close: bool) -> Next {
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        let written = io::write_both(&mut self.client, head.as_bytes(), body.as_bytes()).await;
        if close || written.is_err() {
            let _ = self.client.shutdown().await;
            return Next::Close;
        }
        Next::Continue
    }

    /// A request head the proxy cannot read (`status` 400) or that did not arrive in time
    /// (408): a JSON error, an event for the record, and the connection closes.
    async fn malformed_head(
        &mut self,
        status: u16,
        reason: &str,
        why: &str,
        since: Instant,
    ) -> Next {
        let kind = if status == 408 {
            "timeout"
        } else {
            "bad_request"
        };
        let body = json_error_body(kind, why);
        if let Ok(client) = self.client.peer_addr() {
            self.forwarder
                .malformed_request(client, status, why, since, body.len() as u64);
        }
        self.answer_error(status, reason, &body, true).await
    }

    /// A chunked request body that breaks its framing: 400, and the connection closes.
    async fn bad_request_body(
        &mut self,
        mut record: Box<CallRecord>,
        error: chunked::ChunkError,
    ) -> Next {
        record.event.status_code = Some(400);
        record.event.error = Some(error.to_string());
        let message = format!("the request body's chunked framing is invalid: {error}");
        let body = json_error_body("bad_request", &message);
        record.emit(Some(Outcome::ClientError), Some(body.len() as u64), None);
        self.answer_error(400, "Bad Request", &body, true).await
    }

    /// Parses the request head in `client_buf` and writes the upstream request's head to `out`.
    fn prepare(&mut self) -> Parsed {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let head_len = match request.parse_with_uninit_headers(&self.client_buf, &mut headers) {
            Ok(httparse::Status::Complete(head_len)) => head_len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) if self.client_buf.starts_with(HTTP2_PREFACE) => return Parsed::HandOff,
            Err(error) => {
                return Parsed::Malformed(format!("the request head is invalid: {error}"))
            }
        };
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return Parsed::HandOff;
        };
        let headers = &*request.headers;
        let Some(facts) = head::request_facts(method, target, version, headers) else {
            return Parsed::HandOff;
        };
        let forwarder = &*self.forwarder;
        if forwarder.upstream.speaks() == Speaks::Http2 {
            // Learnt since the connection started: hyper speaks HTTP/2 upstream.
            return Parsed::HandOff;
        }
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let call = forwarder.start_call(method, path, |name| {
            head::find_header(headers, name.as_str())
        });
        let request_id_name = forwarder.request_id_header.as_str();
        let has_request_id = headers
            .iter()
            .any(|header| header.name.eq_ignore_ascii_case(request_id_name));
        let host = match forwarder.config.host {
            HostHeader::Rewrite => Some(forwarder.upstream_host.as_bytes()),
            HostHeader::Keep => headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("host"))
                .map(|header| header.value),
        };
        self.out.clear();
        head::write_upstream_request(
            &mut self.out,
            method,
            target,
            headers,
            facts.framing,
            &UpstreamHead {
                base_path: &forwarder.upstream.base_path,
                host,
                forwarded_for: self.forwarded_for.as_bytes(),
                request_id: (!has_request_id)
                    .then_some((request_id_name, call.request_id.as_str())),
            },
        );
        Parsed::Complete(Prepared {
            head_len,
            facts,
            call,
        })
    }

    /// Takes the request body's bytes buffered from the client, recording them in `tap`.
    fn take_request_body(
        &mut self,
        body: &mut BodyLeft,
        tap: &RequestTap,
        prefix_limit: usize,
    ) -> Result<Bytes, chunked::ChunkError> {
        match body {
            BodyLeft::Done => Ok(Bytes::new()),
            BodyLeft::Length(left) => {
                let take = (*left).min(self.client_buf.len() as u64) as usize;
                let bytes = self.client_buf.split_to(take).freeze();
                tap.record(&bytes, prefix_limit);
                *left -= take as u64;
                if *left == 0 {
                    *body = BodyLeft::Done;
                }
                Ok(bytes)
            }
            BodyLeft::Chunked(scanner) => {
                let buffered = &self.client_buf[..];
                let scanned = scanner.scan(buffered, |range| {
                    tap.record(&buffered[range], prefix_limit);
                })?;
                let done = scanned.done;
                let bytes = self.client_buf.split_to(scanned.consumed).freeze();
                if done {
                    *body = BodyLeft::Done;
                }
                Ok(bytes)
            }
        }
    }
}

/// Returns once the client has closed its connection, reading anything it sends meanwhile (a
/// pipelined next request) into `buffer`; never returns once `buffer` is full.
async fn client_closed(client: &TcpStream, buffer: &mut BytesMut) {
    loop {
        if buffer.len() >= MAX_REQUEST_HEAD || client.readable().await.is_err() {
            return std::future::pending().await;
        }
        buffer.reserve(READ_SIZE);
        match client.try_read_buf(buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// A connection's response timeout as one timer, moved only when a call needs it later: a
/// call's deadline is at least `timeout` after it starts and at most `slack` (an eighth of the
/// timeout, at most 1 s) more, and the timer is reset about once per `slack` rather than
/// registered and removed for every call.
struct CoarseDeadline {
    timeout: Duration,
    slack: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl CoarseDeadline {
    fn new(timeout: Duration) -> Self {
        let slack = (timeout / 8).min(Duration::from_secs(1));
        Self {
            timeout,
            slack,
            sleep: Box::pin(tokio::time::sleep(timeout + slack)),
        }
    }

    /// The timer for a call that started at `started`.
    fn arm(&mut self, started: Instant) -> Pin<&mut Sleep> {
        let earliest = tokio::time::Instant::from_std(started) + self.timeout;
        if self.sleep.deadline() < earliest {
            self.sleep.as_mut().reset(earliest + self.slack);
        }
        self.sleep.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_deadline_is_never_early_and_the_timer_moves_only_past_its_slack() {
        let timeout = Duration::from_secs(8);
        let slack = Duration::from_secs(1);
        let mut deadline = CoarseDeadline::new(timeout);
        let within = |deadline: tokio::time::Instant, started: Instant| {
            let earliest = tokio::time::Instant::from_std(started) + timeout;
            deadline >= earliest && deadline <= earliest + slack
        };
        let start = Instant::now();
        let first = deadline.arm(start).deadline();
        assert!(within(first, start));
        // A call half a second later is still covered by the same timer.
        let soon = start + Duration::from_millis(500);
        assert_eq!(deadline.arm(soon).deadline(), first);
        assert!(within(first, soon));
        // One past the slack moves it.
        let later = start + Duration::from_millis(1500);
        let moved = deadline.arm(later).deadline();
        assert_ne!(moved, first);
        assert!(within(moved, later));
    }
}
