//! Thread-per-core serving for the proxy, as nginx runs one worker process per core: each
//! worker is an OS thread with a single-threaded tokio runtime, and every client connection
//! lives its whole life on one worker. A call is then served start to end on one thread —
//! no work stealing, no wake-up of another thread, no cross-thread hand-off of the socket's
//! readiness — which is where a multi-threaded runtime spent its time under load (context
//! switches and futex wake-ups in a profile of the proxy). One acceptor hands each new
//! connection to the worker with the fewest open connections, so a burst of connections
//! cannot pile onto one core the way a per-socket hash can.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::connection;
use super::server::Forwarder;

/// How long calls in flight may take to finish once the proxy stops.
const GRACE: Duration = Duration::from_secs(10);

/// A connection accepted by the acceptor, on its way to a worker.
type Handoff = (std::net::TcpStream, SocketAddr);

struct Worker {
    connections: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

/// The proxy's worker threads.
pub struct Workers {
    workers: Vec<Worker>,
    finished: Vec<oneshot::Receiver<()>>,
}

/// Each worker's open client connections, for the admin endpoint.
#[derive(Clone)]
pub struct WorkerLoad(Vec<Arc<AtomicUsize>>);

impl WorkerLoad {
    pub fn open_connections(&self) -> Vec<usize> {
        self.0
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .collect()
    }
}

/// Counts a connection open from hand-off until its task ends (or is dropped with the runtime).
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` worker threads (named `proxy-{source}-{n}`) serving through `forwarder`.
    pub fn start(
        count: usize,
        name: &str,
        forwarder: Arc<Forwarder>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count);
        let mut finished = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (connections, incoming) = mpsc::unbounded_channel();
            let (done, finished_one) = oneshot::channel();
            let open = Arc::new(AtomicUsize::new(0));
            let serve = run_worker(incoming, forwarder.clone(), open.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("proxy-{name}-{index}"))
                .spawn(move || {
                    runtime.block_on(serve);
                    // Connections still open after the grace period are closed with the runtime.
                    drop(runtime);
                    let _ = done.send(());
                })?;
            workers.push(Worker { connections, open });
            finished.push(finished_one);
        }
        Ok(Self { workers, finished })
    }

    pub fn load(&self) -> WorkerLoad {
        WorkerLoad(self.workers.iter().map(|w| w.open.clone()).collect())
    }

    /// Hands `stream` to the worker with the fewest open connections.
    pub fn dispatch(&self, stream: TcpStream, client: SocketAddr) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|worker| worker.open.load(Ordering::Relaxed))
        else {
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, %client, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        if worker.connections.send((stream, client)).is_err() {
            // The worker has stopped (the proxy is stopping): the connection is closed.
            worker.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Stops handing out connections and waits until every worker has finished its calls in
    /// flight (at most the grace period).
    pub async fn finish(self) {
        drop(self.workers);
        for finished in self.finished {
            let _ = finished.await;
        }
    }
}

async fn run_worker(
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
    forwarder: Arc<Forwarder>,
    open: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = connection::builder();
    loop {
        let (stream, client) = tokio::select! {
            _ = stop.cancelled() => break,
            handed = incoming.recv() => match handed {
                Some(handed) => handed,
                None => break,
            },
        };
        let guard = OpenConnection(open.clone());
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, %client, "a worker cannot take over an accepted connection");
                continue;
            }
        };
        let served = connection::serve(&builder, &graceful, stream, client, forwarder.clone());
        tokio::spawn(async move {
            served.await;
            drop(guard);
        });
    }
    // Connections handed over but not yet taken are closed; calls in flight may finish.
    drop(incoming);
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}
