//! A worker's idle upstream connections, left by client connections that closed, for the
//! worker's next client connections (nginx's `keepalive` in an `upstream` block): hyper's
//! connection handles for calls hyper serves, sockets (plain or TLS) for the direct HTTP/1.1
//! path.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// An upstream connection that can wait in an idle set.
pub trait IdleConnection {
    /// The upstream has closed it (or it can no longer be used).
    fn is_closed(&mut self) -> bool;
}

impl IdleConnection for TcpStream {
    /// An idle connection has nothing to read: readable means the upstream closed it, or sent
    /// bytes no request asked for; either way it is not used again. Costs no system call while
    /// the socket has not been reported readable.
    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(self.try_read(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// One worker's idle upstream connections, left by client connections that closed, for the
/// worker's next client connections: at most `capacity`, the least recently used closed
/// first when it is exceeded (nginx's `keepalive` in an `upstream` block), each closed once it
/// has waited `timeout` (by [`IdleUpstreams::close_expired`], which the worker calls every
/// [`IdleUpstreams::sweep_interval`]).
pub struct IdleUpstreams<C> {
    capacity: usize,
    timeout: Duration,
    idle: Mutex<VecDeque<(C, Instant)>>,
}

impl<C: IdleConnection> IdleUpstreams<C> {
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
        idle.retain_mut(|(connection, since)| {
            since.elapsed() < self.timeout && !connection.is_closed()
        });
    }

    pub fn put(&self, mut connection: C) {
        if self.capacity == 0 || connection.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle.len() >= self.capacity {
            idle.pop_front();
        }
        idle.push_back((connection, Instant::now()));
    }

    /// The most recently used connection still open (the least likely to be timed out by
    /// the upstream).
    pub fn take(&self) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((mut connection, since)) = idle.pop_back() {
            if since.elapsed() >= self.timeout {
                // Every connection before it has waited longer still.
                idle.clear();
                return None;
            }
            if !connection.is_closed() {
                return Some(connection);
            }
        }
        None
    }
}
