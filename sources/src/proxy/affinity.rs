//! Upstream connections owned by one client connection that hyper serves (the direct path,
//! `super::direct`, keeps its own as a plain socket). An HTTP/1.1 client sends its calls
//! on a connection one after another, so that connection gets an upstream connection of its
//! own: no pool lock, and its task is spawned on the worker serving the client (each worker
//! is a single-threaded runtime), so a call never crosses threads (measured: about a quarter
//! more calls per second than the shared pool). The upstream connection runs as a task of
//! its own rather than inside the client connection's task, so a wake-up of one does not
//! poll the other. When the client connection closes, its upstream connection goes to its
//! worker's idle set ([`IdleSenders`], nginx's `keepalive`) for the worker's next client
//! connection, so clients that open a connection per call do not cost an upstream connect
//! per call. HTTP/2 clients (many calls at once on one connection), protocol upgrades and
//! `upstream_protocol = "h2c"` use the shared upstream pool instead.

use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::body::TeeBody;
use super::idle::{IdleConnection, IdleUpstreams};
use super::upstream::{Alpn, ConnectError, Upstream};

pub type UpstreamBody = TeeBody<Incoming>;

/// Why a call could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(ConnectError),
    #[error(transparent)]
    Http(hyper::Error),
}

type Sender = http1::SendRequest<UpstreamBody>;

/// A worker's idle hyper upstream connections.
pub type IdleSenders = IdleUpstreams<Sender>;

impl IdleConnection for Sender {
    fn is_closed(&mut self) -> bool {
        Sender::is_closed(self)
    }
}

/// The upstream connection of one client connection.
pub struct Affinity {
    upstream: Arc<Upstream>,
    sender: Mutex<Option<Sender>>,
    idle: Arc<IdleSenders>,
}

impl Affinity {
    pub fn new(upstream: Arc<Upstream>, idle: Arc<IdleSenders>) -> Self {
        Self {
            upstream,
            sender: Mutex::new(None),
            idle,
        }
    }

    /// Sends `request` on this client connection's upstream connection, opening one when there
    /// is none (or it has closed). A request the upstream never saw — its idle connection had
    /// just closed — is sent again once, on a new connection.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut retried = false;
        loop {
            let mut sender = match self.open_sender().await {
                Some(sender) => sender,
                None => self.connect().await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.sender
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .replace(sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        request = unsent;
                    }
                    _ => return Err(SendError::Http(error.into_error())),
                },
            }
        }
    }

    /// The upstream connection once it is ready for another request, if it is still open,
    /// else one from the worker's idle set. (A pipelining client's previous response may
    /// still be streaming; it is being written to the client meanwhile, so this wait ends. An
    /// idle connection whose last response was cut short is drained or closed by hyper, so
    /// its wait ends too.)
    async fn open_sender(&self) -> Option<Sender> {
        let own = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut sender) = own {
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        while let Some(mut sender) = self.idle.take() {
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        None
    }

    /// A new HTTP/1.1 connection (over TLS offering only `http/1.1`, whatever else the
    /// upstream speaks).
    async fn connect(&self) -> Result<Sender, SendError> {
        let stream = self
            .upstream
            .connect(Alpn::Http1)
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        // On the worker's runtime, so on this thread. It ends when the connection closes, or
        // when its only sender is dropped (the client connection gone and the worker's idle
        // set full, past its timeout, or stopped).
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

impl Drop for Affinity {
    /// The client connection has closed: its upstream connection waits for the worker's next.
    fn drop(&mut self) {
        let sender = self
            .sender
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sender) = sender {
            self.idle.put(sender);
        }
    }
}
