//! Body wrappers that watch a call without holding it back: `TeeBody` counts the request's bytes
//! and keeps a bounded prefix (for the `model` field); `ObservedBody` counts the response's
//! bytes, feeds the response observer, and emits the call's event exactly once — when the body
//! ends, when the upstream breaks off, or, if the client goes away first, as a client abort.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use engine::schema::api_call::{ApiCall, Outcome};
use hyper::body::{Body, Frame, SizeHint};

use super::decode::{self, Encoding};
use super::observe::{BodyKind, ResponseObserver};
use super::Emitter;

/// What the request body's wrapper has seen, read when the call's event is emitted.
#[derive(Default)]
pub struct RequestTap {
    bytes: AtomicU64,
    prefix: Mutex<Vec<u8>>,
    /// A [`BodyFailure`] as a number; 0 while the body has not failed.
    failure: AtomicU8,
}

/// Why the client's request body could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The client went away (closed, reset or cancelled) before the body's end.
    ClientGone = 1,
    /// The body broke its framing (an invalid chunk, say).
    Malformed = 2,
}

impl BodyFailure {
    /// Tells the two apart by the I/O error under `error`: hyper reports a body that breaks
    /// its framing as invalid input or data, and a body cut short as anything else (an
    /// unexpected end, a reset, an HTTP/2 stream cancelled).
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) {
                    return Self::Malformed;
                }
            }
            cause = error.source();
        }
        Self::ClientGone
    }
}

impl RequestTap {
    /// Why the body failed, if it did.
    pub fn failure(&self) -> Option<BodyFailure> {
        match self.failure.load(Ordering::Relaxed) {
            1 => Some(BodyFailure::ClientGone),
            2 => Some(BodyFailure::Malformed),
            _ => None,
        }
    }

    /// Counts the body's next `data` and keeps what fits of it in the first `limit` bytes.
    pub fn record(&self, data: &[u8], limit: usize) {
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if limit > 0 {
            let mut prefix = self.prefix.lock().unwrap_or_else(|e| e.into_inner());
            let room = limit.saturating_sub(prefix.len());
            if room > 0 {
                prefix.extend_from_slice(&data[..room.min(data.len())]);
            }
        }
    }
}

/// The request body, passed through frame by frame.
pub struct TeeBody<B> {
    inner: B,
    tap: Arc<RequestTap>,
    /// Bytes of the body's start to keep (0 when the model is already known).
    limit: usize,
}

impl<B> TeeBody<B> {
    pub fn new(inner: B, tap: Arc<RequestTap>, limit: usize) -> Self {
        Self { inner, tap, limit }
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.tap.record(data, this.limit);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                let failure = BodyFailure::of(error) as u8;
                this.tap.failure.store(failure, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Everything needed to finish a call's event once its response body is done.
pub struct CallRecord {
    pub event: ApiCall,
    pub started: Instant,
    pub request: Arc<RequestTap>,
    pub emitter: Arc<Emitter>,
    /// The request body's `Content-Encoding` (its prefix is decoded for the model).
    pub request_encoding: Encoding,
    /// The call streams a JSON array (Gemini's `streamGenerateContent` without SSE).
    pub json_stream: bool,
    /// The model when the request names none (an Azure deployment).
    pub fallback_model: Option<String>,
}

impl CallRecord {
    /// The observer of this call's response body of `kind`, sent with `encoding`.
    pub fn observer(&self, kind: BodyKind, encoding: Encoding) -> ResponseObserver {
        let observer = ResponseObserver::new(kind, encoding, self.emitter.decode_limit);
        if self.json_stream {
            observer.json_stream()
        } else {
            observer
        }
    }
}

impl CallRecord {
    /// Completes and emits the event. Its time becomes the moment the call completed (its
    /// start, stamped in `start_call`, plus its latency), as an access log line or a latency
    /// histogram records a call: a window then holds the calls that completed in it, and rows
    /// reach it in the order calls end, so a call longer than the window's `out_of_orderness`
    /// is counted on time instead of arriving late. Its start is `event_time - latency_ms`.
    pub fn emit(
        mut self: Box<Self>,
        outcome: Option<Outcome>,
        response_bytes: Option<u64>,
        observer: Option<ResponseObserver>,
    ) {
        let elapsed = self.started.elapsed();
        self.event.latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.event.event_time = self
            .event
            .event_time
            .saturating_add(i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX));
        self.event.request_bytes = Some(self.request.bytes.load(Ordering::Relaxed));
        self.event.response_bytes = response_bytes;
        if let Some(outcome) = outcome {
            self.event.outcome = outcome;
        }
        if let Some(observer) = observer {
            let observed = observer.finish();
            if let Some(why) = observed.usage_unknown {
                self.emitter.count_undecoded(why);
            }
            self.event.ttft_ms = observed.first_token.map(|d| d.as_secs_f64() * 1000.0);
            self.event.input_tokens = observed.input_tokens;
            self.event.output_tokens = observed.output_tokens;
            self.event.cached_input_tokens = observed.cached_input_tokens;
            self.event.reasoning_tokens = observed.reasoning_tokens;
            self.event.output_tokens_estimated = observed
                .output_tokens
                .map(|_| observed.output_tokens_estimated);
            // Generation time: after the first token when streaming, else the whole call.
            let generating_ms = self.event.latency_ms - self.event.ttft_ms.unwrap_or(0.0);
            self.event.output_tokens_per_second = observed
                .output_tokens
                .filter(|tokens| *tokens > 0 && generating_ms > 0.0)
                .map(|tokens| f64::from(tokens) / (generating_ms / 1000.0));
        }
        let mut prefix = std::mem::take(
            &mut *self
                .request
                .prefix
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !prefix.is_empty() && self.request_encoding != Encoding::Identity {
            prefix =
                decode::decode_prefix(self.request_encoding, &prefix, prefix.len().max(64 * 1024))
                    .unwrap_or_default();
        }
        let CallRecord {
            event,
            emitter,
            fallback_model,
            ..
        } = *self;
        emitter.emit(event, &prefix, fallback_model);
    }
}

/// The response body, passed through frame by frame.
pub struct ObservedBody<B: Body> {
    inner: B,
    record: Option<Box<CallRecord>>,
    observer: Option<ResponseObserver>,
    bytes: u64,
}

impl<B: Body> ObservedBody<B> {
    pub fn new(inner: B, record: Box<CallRecord>, kind: BodyKind, encoding: Encoding) -> Self {
        let observer = record.observer(kind, encoding);
        Self {
            inner,
            record: Some(record),
            observer: Some(observer),
            bytes: 0,
        }
    }

    fn complete(&mut self, outcome: Option<Outcome>) {
        if let Some(record) = self.record.take() {
            record.emit(outcome, Some(self.bytes), self.observer.take());
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if let (Some(observer), Some(record)) =
                        (this.observer.as_mut(), this.record.as_ref())
                    {
                        observer.feed(data, record.started.elapsed());
                    }
                }
                if this.inner.is_end_stream() {
                    this.complete(None);
                }
            }
            // The upstream broke off mid-body.
            Poll::Ready(Some(Err(_))) => this.complete(Some(Outcome::UpstreamUnreachable)),
            Poll::Ready(None) => this.complete(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // An empty body may never be polled; otherwise the client went away before the end.
        let outcome = if self.inner.is_end_stream() {
            None
        } else {
            Some(Outcome::ClientAbort)
        };
        if let Some(record) = self.record.take() {
            record.emit(outcome, Some(self.bytes), self.observer.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping another, as hyper wraps the I/O error under a body error.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error reading a body from connection")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_body_breaking_its_framing_is_malformed_and_one_cut_short_is_the_client_gone() {
        use std::io::{Error, ErrorKind};
        let invalid = Wrapped(Error::new(
            ErrorKind::InvalidInput,
            "invalid chunk size line",
        ));
        assert_eq!(BodyFailure::of(&invalid), BodyFailure::Malformed);
        let cut_short = Wrapped(Error::new(
            ErrorKind::UnexpectedEof,
            "end of file before message length reached",
        ));
        assert_eq!(BodyFailure::of(&cut_short), BodyFailure::ClientGone);
        let reset = Error::from(ErrorKind::ConnectionReset);
        assert_eq!(BodyFailure::of(&reset), BodyFailure::ClientGone);

        let tap = RequestTap::default();
        assert_eq!(tap.failure(), None);
        tap.failure
            .store(BodyFailure::Malformed as u8, Ordering::Relaxed);
        assert_eq!(tap.failure(), Some(BodyFailure::Malformed));
    }
}
