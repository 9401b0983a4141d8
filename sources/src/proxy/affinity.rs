//! Upstream connections owned by one client connection. An HTTP/1.1 client sends its calls
//! on a connection one after another, so that connection gets an upstream connection of its
//! own: no pool lock, and its task is spawned on the worker serving the client (each worker
//! is a single-threaded runtime), so a call never crosses threads (measured: about a quarter
//! more calls per second than the shared pool). The upstream connection runs as a task of
//! its own rather than inside the client connection's task, so a wake-up of one does not
//! poll the other. HTTP/2 clients (many calls at once on one connection), protocol upgrades
//! and `upstream_protocol = "h2c"` use the shared upstream pool instead.

use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::TeeBody;

pub type UpstreamBody = TeeBody<Incoming>;

/// Why a call could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect timeout ({0:?})")]
    ConnectTimeout(Duration),
    #[error(transparent)]
    Connect(std::io::Error),
    #[error(transparent)]
    Http(hyper::Error),
}

/// The upstream connection of one client connection.
pub struct Affinity {
    authority: String,
    connect_timeout: Duration,
    sender: Mutex<Option<http1::SendRequest<UpstreamBody>>>,
}

impl Affinity {
    pub fn new(authority: String, connect_timeout: Duration) -> Self {
        Self {
            authority,
            connect_timeout,
            sender: Mutex::new(None),
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

    /// The upstream connection once it is ready for another request, if it is still open.
    /// (A pipelining client's previous response may still be streaming; it is being written
    /// to the client meanwhile, so this wait ends.)
    async fn open_sender(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut sender = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        sender.ready().await.ok()?;
        Some(sender)
    }

    async fn connect(&self) -> Result<http1::SendRequest<UpstreamBody>, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
        .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        // On the worker's runtime, so on this thread. It ends when the connection closes, or
        // when the client connection's task (holding the only sender) is gone.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}
