//! One client connection of the proxy: HTTP/1.1 calls to an HTTP/1.1 upstream go over the
//! direct path until a request needs hyper; hyper serves the rest (HTTP/1.x or h2c, with
//! upgrades, and every client connection over TLS) with its own upstream connection for
//! HTTP/1.1 calls, and requests hyper refuses before any handler runs still become events.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::affinity::IdleSenders;
use super::config::Http1Forwarding;
use super::direct::{self, Ended, IdleStreams, Rewind};
use super::refusals::{JsonRefusals, RefusalCounters};
use super::server::{ClientConnection, Forwarder};
use super::upstream::Speaks;

/// Time a client has to finish its TLS handshake.
const TLS_ACCEPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every connection of a worker shares.
pub struct WorkerShared {
    pub builder: auto::Builder<TokioExecutor>,
    pub graceful: GracefulShutdown,
    /// hyper's idle upstream connections.
    pub idle_senders: Arc<IdleSenders>,
    /// The direct path's idle upstream connections.
    pub idle_streams: Arc<IdleStreams>,
    pub stop: CancellationToken,
}

impl WorkerShared {
    pub fn new(forwarder: &Forwarder, stop: CancellationToken) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(forwarder.config.header_read_timeout.0)
            // A client may close its sending side once its request is out and still wait for
            // the answer (HTTP/1.0 tools, `nc -N`): answer it, as the direct path does.
            .half_close(true);
        Self {
            builder,
            graceful: GracefulShutdown::new(),
            idle_senders: Arc::new(forwarder.idle_upstreams()),
            idle_streams: Arc::new(forwarder.idle_upstreams()),
            stop,
        }
    }
}

/// The task serving `stream` until the client closes it (or the proxy stops).
pub fn serve(
    shared: &WorkerShared,
    stream: TcpStream,
    client: SocketAddr,
    forwarder: Arc<Forwarder>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
    let _ = stream.set_nodelay(true);
    let hyper = HyperConnection {
        builder: shared.builder.clone(),
        watcher: shared.graceful.watcher(),
        idle_senders: shared.idle_senders.clone(),
        forwarder: forwarder.clone(),
        client,
    };
    let direct = forwarder.config.http1_forwarding == Http1Forwarding::Direct
        && forwarder.upstream.speaks() != Speaks::Http2;
    let idle_streams = shared.idle_streams.clone();
    let stop = shared.stop.clone();
    // Boxed once here, so spawning the connection's task moves a pointer rather than the
    // state machine; hyper's connection future, large and the rarer case on the direct path,
    // is boxed on its own so the direct path's task does not carry its size.
    Box::pin(async move {
        if let Some(tls) = forwarder.listener_tls.clone() {
            let accepted =
                tokio::time::timeout(TLS_ACCEPT_TIMEOUT, tls.acceptor.accept(stream)).await;
            return match accepted {
                Ok(Ok(stream)) => Box::pin(hyper.serve(stream, true)).await,
                Ok(Err(error)) => {
                    forwarder.emitter.count_tls_failure();
                    tracing::debug!(%error, %client, "proxy: a client's TLS handshake failed");
                }
                Err(_) => {
                    forwarder.emitter.count_tls_failure();
                    tracing::debug!(%client, "proxy: a client's TLS handshake timed out");
                }
            };
        }
        if !direct {
            return Box::pin(hyper.serve(Rewind::new(Bytes::new(), stream), false)).await;
        }
        match direct::serve(stream, client, forwarder, idle_streams, stop).await {
            Ended::Closed => {}
            Ended::HandOff(rewound) => Box::pin(hyper.serve(rewound, false)).await,
        }
    })
}

/// hyper serving a client connection.
struct HyperConnection {
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    idle_senders: Arc<IdleSenders>,
    forwarder: Arc<Forwarder>,
    client: SocketAddr,
}

impl HyperConnection {
    async fn serve<I>(self, io: I, tls: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            builder,
            watcher,
            idle_senders,
            forwarder,
            client,
        } = self;
        let affinity = Arc::new(forwarder.affinity(idle_senders));
        let handler = forwarder.clone();
        let client_connection = Arc::new(ClientConnection::new(client, tls));
        let refusals = Arc::new(RefusalCounters::default());
        let handled = refusals.clone();
        let service = service_fn(move |request| {
            handled.request_handled();
            handler
                .clone()
                .handle(request, client_connection.clone(), Some(affinity.clone()))
        });
        let io = JsonRefusals::new(io, refusals.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let since = Instant::now();
        if let Err(error) = watcher.watch(connection).await {
            // Requests hyper rejected before any handler ran still become events, with the
            // bytes of the JSON answer that replaced hyper's.
            if let Some(error) = error.downcast_ref::<hyper::Error>() {
                let answered = refusals.answered_body_bytes();
                let detail = error.to_string();
                if error.is_parse_too_large() {
                    // hyper says which limit in the message only: the target's or the head's.
                    let status = if detail.contains("URI too long") {
                        414
                    } else {
                        431
                    };
                    forwarder.malformed_request(client, status, &detail, since, answered);
                } else if error.is_parse() {
                    forwarder.malformed_request(client, 400, &detail, since, answered);
                } else if error.is_timeout() {
                    // header_read_timeout: hyper closes the connection without an answer.
                    forwarder.malformed_request(client, 408, &error.to_string(), since, 0);
                }
            }
        }
    }
}
