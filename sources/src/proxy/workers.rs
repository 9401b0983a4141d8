//! Thread-per-core serving for the proxy, as nginx runs one worker process per core: each
//! worker is an OS thread with a single-threaded tokio runtime, and every client connection
//! lives its whole life on one worker. A call is then served start to end on one thread —
//! no work stealing, no wake-up of another thread, no cross-thread hand-off of the socket's
//! readiness — which is where a multi-threaded runtime spent its time under load (context
//! switches and futex wake-ups in a profile of the proxy).
//!
//! Every worker accepts on the one listening socket (as nginx's workers do without
//! `accept_mutex`), so a new connection is normally served by the thread that accepted it. A
//! worker that holds more open connections than the least-loaded one hands the connection it
//! accepted to that worker instead, so a burst of connections cannot pile onto one core (an
//! idle worker would otherwise accept them all) the way a per-socket hash can.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::connection;
use super::server::Forwarder;

/// How long calls in flight may take to finish once the proxy stops.
const GRACE: Duration = Duration::from_secs(10);

/// A connection accepted by one worker, on its way to another, counted open from here on.
type Handoff = (std::net::TcpStream, SocketAddr, OpenConnection);

struct Worker {
    connections: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

/// Where each accepted connection is served: every worker's open connections, and the way to
/// hand a connection to each.
struct Balancer {
    workers: Vec<Worker>,
    /// Held while a placement is chosen and counted, so two workers accepting at once cannot
    /// both pick the same least-loaded worker.
    placing: Mutex<()>,
}

impl Balancer {
    /// The worker that serves a connection `accepted_by` accepted — that one unless it holds
    /// more open connections than another (then the least loaded) — counted open there.
    fn place(&self, accepted_by: usize) -> (usize, OpenConnection) {
        let _placing = self
            .placing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let load = |index: usize| self.workers[index].open.load(Ordering::Relaxed);
        let mut target = accepted_by;
        for index in 0..self.workers.len() {
            if load(index) < load(target) {
                target = index;
            }
        }
        (target, OpenConnection::count(&self.workers[target].open))
    }

    fn open_connections(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|worker| worker.open.load(Ordering::Relaxed))
            .collect()
    }
}

/// The proxy's worker threads.
pub struct Workers {
    balancer: Arc<Balancer>,
    finished: Vec<oneshot::Receiver<()>>,
}

/// Each worker's open client connections, for the admin endpoint.
#[derive(Clone)]
pub struct WorkerLoad(Arc<Balancer>);

impl WorkerLoad {
    pub fn open_connections(&self) -> Vec<usize> {
        self.0.open_connections()
    }
}

/// Counts a connection open from its placement until its task ends, or until it is dropped
/// unserved (left in a stopping worker's queue, or with the runtime).
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
    /// Starts `count` worker threads (named `proxy-{source}-{n}`) accepting on `listener` and
    /// serving through `forwarder` until `stop`.
    pub fn start(
        count: usize,
        name: &str,
        listener: std::net::TcpListener,
        forwarder: Arc<Forwarder>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut workers = Vec::with_capacity(count);
        let mut queues = Vec::with_capacity(count);
        for _ in 0..count {
            let (connections, incoming) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            workers.push(Worker { connections, open });
            queues.push(incoming);
        }
        let balancer = Arc::new(Balancer {
            workers,
            placing: Mutex::new(()),
        });
        let mut finished = Vec::with_capacity(count);
        for (index, incoming) in queues.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (done, finished_one) = oneshot::channel();
            let serve = run_worker(WorkerContext {
                index,
                listener: listener.try_clone()?,
                incoming,
                balancer: balancer.clone(),
                forwarder: forwarder.clone(),
                stop: stop.clone(),
            });
            let emitter = forwarder.emitter.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{name}-{index}"))
                .spawn(move || {
                    emitter.stage_on_this_thread();
                    runtime.block_on(serve);
                    // Connections still open after the grace period are closed with the runtime.
                    drop(runtime);
                    emitter.flush_this_thread();
                    let _ = done.send(());
                })?;
            finished.push(finished_one);
        }
        Ok(Self { balancer, finished })
    }

    pub fn load(&self) -> WorkerLoad {
        WorkerLoad(self.balancer.clone())
    }

    /// Waits until every worker has stopped (on `stop`): stopped accepting, and finished its
    /// calls in flight (at most the grace period).
    pub async fn finish(self) {
        for finished in self.finished {
            let _ = finished.await;
        }
    }
}

/// What one worker runs with.
struct WorkerContext {
    index: usize,
    /// This worker's handle on the shared listening socket.
    listener: std::net::TcpListener,
    /// Connections other workers accepted and handed to this one.
    incoming: mpsc::UnboundedReceiver<Handoff>,
    balancer: Arc<Balancer>,
    forwarder: Arc<Forwarder>,
    stop: CancellationToken,
}

async fn run_worker(context: WorkerContext) {
    let WorkerContext {
        index,
        listener,
        mut incoming,
        balancer,
        forwarder,
        stop,
    } = context;
    let shared = connection::WorkerShared::new(&forwarder, stop.clone());
    // The events this worker collected go to the pipeline at least every `linger`.
    let (emitter, linger) = (forwarder.emitter.clone(), forwarder.config.linger.0);
    tokio::spawn(async move {
        let mut flushes = tokio::time::interval(linger.max(Duration::from_millis(1)));
        flushes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            flushes.tick().await;
            emitter.flush_this_thread();
        }
    });
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
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => Some(listener),
        Err(error) => {
            // This worker still serves connections the others hand it.
            tracing::error!(%error, worker = index, "a proxy worker cannot watch the listening socket");
            None
        }
    };
    let serve_here = |stream: TcpStream, client: SocketAddr, open: OpenConnection| {
        let served = connection::serve(&shared, stream, client, forwarder.clone());
        tokio::spawn(async move {
            served.await;
            drop(open);
        });
    };
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            handed = incoming.recv() => {
                // The balancer keeps every worker's sender, so the queue never closes here.
                let Some((stream, client, open)) = handed else { break };
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve_here(stream, client, open),
                    Err(error) => tracing::warn!(%error, %client, "a worker cannot take over a connection handed to it"),
                }
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((stream, client)) => {
                    let (target, open) = balancer.place(index);
                    if target == index {
                        serve_here(stream, client, open);
                    } else {
                        hand_over(&balancer, target, stream, client, open);
                    }
                }
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning on it.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    // New connections are no longer accepted here (the socket closes with the last worker's
    // handle); connections handed over but not yet taken are closed; calls in flight may
    // finish: the direct path closes its connections between calls once `stop` is cancelled,
    // hyper on its graceful shutdown. Every connection holds a graceful-shutdown watcher from
    // its start (for a hand-off to hyper), so the shutdown waits for both kinds.
    drop(listener);
    drop(incoming);
    let connection::WorkerShared { graceful, .. } = shared;
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}

/// The next connection on `listener`; never, for a worker without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Hands `stream` to worker `target`. Were that worker stopped, the proxy is stopping (every
/// worker stops on the same signal): the connection is closed, and uncounted with `open`.
fn hand_over(
    balancer: &Balancer,
    target: usize,
    stream: TcpStream,
    client: SocketAddr,
    open: OpenConnection,
) {
    match stream.into_std() {
        Ok(stream) => {
            let _ = balancer.workers[target]
                .connections
                .send((stream, client, open));
        }
        Err(error) => {
            tracing::warn!(%error, %client, "cannot hand an accepted connection to another worker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(loads: &[usize]) -> (Balancer, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let mut workers = Vec::new();
        let mut queues = Vec::new();
        for load in loads {
            let (connections, incoming) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(*load));
            workers.push(Worker { connections, open });
            queues.push(incoming);
        }
        let balancer = Balancer {
            workers,
            placing: Mutex::new(()),
        };
        (balancer, queues)
    }

    fn loads(balancer: &Balancer) -> Vec<usize> {
        balancer.open_connections()
    }

    #[test]
    fn the_accepting_worker_keeps_a_connection_unless_another_holds_fewer() {
        let (balancer, _queues) = balancer(&[2, 2, 3]);
        // Tied with the least loaded: kept where it was accepted.
        let (target, kept) = balancer.place(1);
        assert_eq!(target, 1);
        assert_eq!(loads(&balancer), [2, 3, 3]);
        // Worker 2 holds more than worker 0: the connection goes to worker 0.
        let (target, moved) = balancer.place(2);
        assert_eq!(target, 0);
        assert_eq!(loads(&balancer), [3, 3, 3]);
        drop((kept, moved));
        assert_eq!(loads(&balancer), [2, 2, 3]);
    }

    #[tokio::test]
    async fn a_handed_connection_is_counted_where_it_goes_and_one_for_a_stopped_worker_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (balancer, mut queues) = balancer(&[0, 3]);
        let _first = TcpStream::connect(address).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();

        // Worker 1 accepted, worker 0 is running and less loaded: handed over.
        let (stream, client) = listener.accept().await.unwrap();
        let (target, open) = balancer.place(1);
        assert_eq!(target, 0);
        hand_over(&balancer, target, stream, client, open);
        assert_eq!(loads(&balancer), [1, 3]);
        let handed = queues[0].try_recv().expect("worker 0 got it");
        drop(handed);
        assert_eq!(loads(&balancer), [0, 3]);

        // Worker 0 has stopped: the connection is closed and no longer counted.
        queues.remove(0);
        let (stream, client) = listener.accept().await.unwrap();
        let (target, open) = balancer.place(1);
        hand_over(&balancer, target, stream, client, open);
        assert_eq!(loads(&balancer), [0, 3]);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut second, &mut byte),
        )
        .await
        .expect("the client sees the close");
        assert_eq!(read.unwrap(), 0);
    }
}
