//! hyper as the reference HTTP/1.1 server: what it makes of a byte stream sent to it as a
//! client connection, in memory (no sockets), for the targets to compare the direct path with.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How hyper delimits a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HyperFraming {
    Empty,
    Length(u64),
    /// Chunked (no length known in advance).
    Chunked,
}

/// What hyper saw of the first request on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HyperRequest {
    pub method: String,
    pub target: String,
    pub framing: HyperFraming,
    /// The whole body, or why hyper could not read it.
    pub body: Result<Vec<u8>, String>,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// Sends `stream` to a hyper server as one client connection (then closes it) and returns the
/// first request hyper handed to its service, or `None` when hyper refused the stream first.
pub fn hyper_first_request(stream: &[u8]) -> Option<HyperRequest> {
    RUNTIME.with(|runtime| runtime.block_on(first_request(stream)))
}

async fn first_request(stream: &[u8]) -> Option<HyperRequest> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen: Arc<Mutex<Option<HyperRequest>>> = Arc::default();
    let record = seen.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let first = record.lock().map(|r| r.is_none()).unwrap_or(false);
            let hint = request.body().size_hint();
            let framing = if request.body().is_end_stream() {
                HyperFraming::Empty
            } else if let Some(exact) = hint.exact() {
                HyperFraming::Length(exact)
            } else {
                HyperFraming::Chunked
            };
            let method = request.method().to_string();
            let target = request.uri().to_string();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|collected| collected.to_bytes().to_vec())
                .map_err(|e| e.to_string());
            if first {
                if let Ok(mut record) = record.lock() {
                    *record = Some(HyperRequest {
                        method,
                        target,
                        framing,
                        body,
                    });
                }
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    // half_close: the client closes its side after sending; hyper must still answer.
    let connection = http1::Builder::new()
        .keep_alive(true)
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let talk = async {
        let _ = client.write_all(stream).await;
        let _ = client.shutdown().await;
        let mut answers = Vec::new();
        let _ = client.read_to_end(&mut answers).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(connection, talk)
    })
    .await;
    let seen = seen.lock().ok()?.take();
    seen
}
