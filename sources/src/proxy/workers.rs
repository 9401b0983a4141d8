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

/// A connection accepted by the acceptor, on its way to a worker, counted open from here on.
type Handoff = (std::net::TcpStream, SocketAddr, OpenConnection);

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

/// Counts a connection open from hand-off until its task ends, or until it is dropped unserved
/// (left in a stopping worker's queue, or with the runtime).
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

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
            let serve = run_worker(incoming, forwarder.clone(), stop.clone());
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

    /// Hands `stream` to the worker with the fewest open connections (the next fewest if that
    /// one has stopped).
    pub fn dispatch(&self, stream: TcpStream, client: SocketAddr) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, %client, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        let mut by_load: Vec<&Worker> = self.workers.iter().collect();
        by_load.sort_by_key(|worker| worker.open.load(Ordering::Relaxed));
        let mut stream = stream;
        for worker in by_load {
            let guard = OpenConnection::count(&worker.open);
            match worker.connections.send((stream, client, guard)) {
                Ok(()) => return,
                // This worker has stopped; the guard returned with the hand-off uncounts it.
                Err(mpsc::error::SendError((returned, _, _guard))) => stream = returned,
            }
        }
        // Every worker has stopped (the proxy is stopping): the connection is closed.
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
    stop: CancellationToken,
) {
    let shared = connection::WorkerShared::new(&forwarder, stop.clone());
    // Both idle sets are swept by one task, which ends with the worker's runtime.
    let (senders, streams) = (shared.idle_senders.clone(), shared.idle_streams.clone());
    tokio::spawn(async move {
        let mut sweeps = tokio::time::interval(senders.sweep_interval());
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            sweeps.tick().await;
            senders.close_expired();
            streams.close_expired();
        }
    });
    loop {
        let (stream, client, guard) = tokio::select! {
            _ = stop.cancelled() => break,
            handed = incoming.recv() => match handed {
                Some(handed) => handed,
                None => break,
            },
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, %client, "a worker cannot take over an accepted connection");
                continue;
            }
        };
        let served = connection::serve(&shared, stream, client, forwarder.clone());
        tokio::spawn(async move {
            served.await;
            drop(guard);
        });
    }
    // Connections handed over but not yet taken are closed; calls in flight may finish: the
    // direct path closes its connections between calls once `stop` is cancelled, hyper on
    // its graceful shutdown. Every connection holds a graceful-shutdown watcher from its
    // start (for a hand-off to hyper), so the shutdown waits for both kinds.
    drop(incoming);
    let connection::WorkerShared { graceful, .. } = shared;
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> (Worker, mpsc::UnboundedReceiver<Handoff>) {
        let (connections, incoming) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        (Worker { connections, open }, incoming)
    }

    #[tokio::test]
    async fn a_stopped_worker_is_skipped_and_an_unserved_connection_is_uncounted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stopped, stopped_queue) = worker();
        let (running, mut running_queue) = worker();
        drop(stopped_queue);
        let workers = Workers {
            workers: vec![stopped, running],
            finished: Vec::new(),
        };
        let _client = TcpStream::connect(address).await.unwrap();
        let (accepted, client) = listener.accept().await.unwrap();
        workers.dispatch(accepted, client);
        // Both had no connections; the first has stopped, so the second took it.
        assert_eq!(workers.load().open_connections(), [0, 1]);
        let handed = running_queue.try_recv().expect("the running worker got it");
        drop(handed);
        assert_eq!(workers.load().open_connections(), [0, 0]);
    }
}
