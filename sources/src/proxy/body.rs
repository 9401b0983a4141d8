//! Body wrappers that watch a call without holding it back: `TeeBody` counts the request's bytes
//! and keeps a bounded prefix (for the `model` field); `ObservedBody` counts the response's
//! bytes, feeds the response observer, and emits the call's event exactly once — when the body
//! ends, when the upstream breaks off, or, if the client goes away first, as a client abort.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use engine::schema::api_call::{ApiCall, Outcome};
use hyper::body::{Body, Frame, SizeHint};

use super::observe::{BodyKind, ResponseObserver};
use super::Emitter;

/// What the request body's wrapper has seen, read when the call's event is emitted.
#[derive(Default)]
pub struct RequestTap {
    bytes: AtomicU64,
    prefix: Mutex<Vec<u8>>,
}

impl RequestTap {
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

impl<B: Body<Data = Bytes> + Unpin> Body for TeeBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.tap.record(data, this.limit);
            }
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
}

impl CallRecord {
    /// Completes and emits the event.
    pub fn emit(
        mut self: Box<Self>,
        outcome: Option<Outcome>,
        response_bytes: Option<u64>,
        observer: Option<ResponseObserver>,
    ) {
        self.event.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.event.request_bytes = Some(self.request.bytes.load(Ordering::Relaxed));
        self.event.response_bytes = response_bytes;
        if let Some(outcome) = outcome {
            self.event.outcome = outcome;
        }
        if let Some(observer) = observer {
            let observed = observer.finish();
            self.event.ttft_ms = observed.first_token.map(|d| d.as_secs_f64() * 1000.0);
            self.event.input_tokens = observed.input_tokens;
            self.event.output_tokens = observed.output_tokens;
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
        let prefix = std::mem::take(
            &mut *self
                .request
                .prefix
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let CallRecord { event, emitter, .. } = *self;
        emitter.emit(event, &prefix);
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
    pub fn new(inner: B, record: Box<CallRecord>, kind: BodyKind) -> Self {
        Self {
            inner,
            record: Some(record),
            observer: Some(ResponseObserver::new(kind)),
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
