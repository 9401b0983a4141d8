//! One client connection of the proxy: hyper serves it (HTTP/1.1 or h2c, with upgrades) with
//! its own upstream connection for HTTP/1.1 calls, and requests hyper refuses before any
//! handler runs still become events.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;

use super::affinity::IdleUpstreams;
use super::server::{ClientConnection, Forwarder};

/// The connection builder every worker uses.
pub fn builder() -> auto::Builder<TokioExecutor> {
    auto::Builder::new(TokioExecutor::new())
}

/// The task serving `stream` until the client closes it (or the proxy stops, via `graceful`);
/// its HTTP/1.1 calls go over an upstream connection from, and later left to, `idle_upstreams`.
pub fn serve(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    client: SocketAddr,
    forwarder: Arc<Forwarder>,
    idle_upstreams: &Arc<IdleUpstreams>,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    let affinity = Arc::new(forwarder.affinity(idle_upstreams.clone()));
    let handler = forwarder.clone();
    let client_connection = Arc::new(ClientConnection::new(client));
    let service = service_fn(move |request| {
        handler
            .clone()
            .handle(request, client_connection.clone(), Some(affinity.clone()))
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    async move {
        let since = Instant::now();
        if let Err(error) = connection.await {
            // Requests hyper rejected before any handler ran still become events.
            if let Some(error) = error.downcast_ref::<hyper::Error>() {
                if error.is_parse_too_large() {
                    forwarder.malformed_request(client, 431, &error.to_string(), since);
                } else if error.is_parse() {
                    forwarder.malformed_request(client, 400, &error.to_string(), since);
                }
            }
        }
    }
}
