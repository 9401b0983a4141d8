//! Upstream connections owned by one client connection. An HTTP/1.1 client sends its calls
//! on a connection one after another, so that connection gets an upstream connection of its
//! own: no pool lock, and its task is spawned on the worker serving the client (each worker
//! is a single-threaded runtime), so a call never crosses threads (measured: about a quarter
//! more calls per second than the shared pool). The upstream connection runs as a task of
//! its own rather than inside the client connection's task, so a wake-up of one does not
//! poll the other. When the client connection closes, its upstream connection goes to its
//! worker's idle set ([`IdleUpstreams`], nginx's `keepalive`) for the worker's next client
//! connection, so clients that open a connection per call do not cost an upstream connect
//! per call. HTTP/2 clients (many calls at once on one connection), protocol upgrades and
//! `upstream_protocol = "h2c"` use the shared upstream pool instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

type Sender = http1::SendRequest<UpstreamBody>;

/// One worker's idle upstream connections, left by client connections that closed, for the
/// worker's next client connections: at most `capacity`, the least recently used closed
/// first when it is exceeded (nginx's `keepalive` in an `upstream` block), each closed once it
/// has waited `timeout` (by [`IdleUpstreams::close_expired`], which the worker calls every
/// [`IdleUpstreams::sweep_interval`]).
pub struct IdleUpstreams {
    capacity: usize,
    timeout: Duration,
    idle: Mutex<VecDeque<(Sender, Instant)>>,
}

impl IdleUpstreams {
    pub fn new(capacity: usize, timeout: Duration) -> Self {
        Self {
            capacity,
            timeout,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// How often the worker closes expired connections: a quarter of the timeout, so none
    /// waits more than a quarter longer than it should.
    pub fn sweep_interval(&self) -> Duration {
        (self.timeout / 4).max(Duration::from_millis(10))
    }

    /// Closes the connections that have waited `timeout` or that the upstream has closed,
    /// oldest first.
    pub fn close_expired(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(sender, since)| since.elapsed() < self.timeout && !sender.is_closed());
    }

    fn put(&self, sender: Sender) {
        if self.capacity == 0 || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle.len() >= self.capacity {
            idle.pop_front();
        }
        idle.push_back((sender, Instant::now()));
    }

    /// The most recently used connection still open (the least likely to be timed out by
    /// the upstream).
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop_back() {
            if since.elapsed() >= self.timeout {
                // Every connection before it has waited longer still.
                idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }
}

/// The upstream connection of one client connection.
pub struct Affinity {
    authority: String,
    connect_timeout: Duration,
    sender: Mutex<Option<Sender>>,
    idle: Arc<IdleUpstreams>,
}

impl Affinity {
    pub fn new(authority: String, connect_timeout: Duration, idle: Arc<IdleUpstreams>) -> Self {
        Self {
            authority,
            connect_timeout,
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

    async fn connect(&self) -> Result<Sender, SendError> {
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
        // when its only sender is dropped (the client connection gone and the worker's idle
        // set full, past its timeout, or stopped).
        tokio::spawn(async move {
            if let Err(error) = connection.await {
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
