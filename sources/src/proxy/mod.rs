//! `proxy`: a reverse proxy in front of a model API; every call through it becomes an api_call
//! event, emitted after the response completes (and for client aborts, upstream timeouts and
//! unreachable upstreams). It is fail-open: emitting never blocks or delays a call — events go
//! to a bounded queue with `try_send`, and when it is full the event is dropped and counted in
//! the source's `dropped` metric. Each worker thread builds its own Arrow batch of the events
//! of the calls it served and hands whole batches over (at `batch_size` rows, every `linger`, and
//! when the worker stops), so no per-event allocation crosses threads: handing each event over
//! cost about 1.3 µs of CPU per call, 3 % of the proxy's throughput against nginx (docs/performance.md).

mod affinity;
mod body;
pub mod config;
mod connection;
pub mod decode;
mod direct;
pub mod extract;
mod framing;
mod health;
mod idle;
mod lenient;
mod listener_tls;
mod model_json;
pub mod observe;
mod refusals;
mod server;
mod upstream;
mod workers;

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use engine::component::{ComponentError, ComponentResult, Source, SourceContext};
use engine::config::ConfigError;
use engine::message::Message;
use engine::metrics::ComponentMetrics;
use engine::pricing::{Cost, PriceTable};
use engine::registry::{BuildContext, BuiltSource};
use engine::schema::api_call::{api_call_schema, ApiCall, ApiCallBatchBuilder};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::ProxyConfig;
/// The direct path's pure parts, for the fuzzing harness (`benches`' `fuzz`).
#[doc(hidden)]
pub use direct::fuzzing;
use extract::{CardinalityCap, Recognizer, RouteTemplate};
use server::Forwarder;
pub use server::{strip_hop_by_hop, MALFORMED_ROUTE};
use workers::{WorkerLoad, Workers};

thread_local! {
    /// The events of the calls this worker thread served, not yet handed to the pipeline.
    /// `None` on threads that are not workers: their events go out one batch each.
    static STAGED: RefCell<Option<ApiCallBatchBuilder>> = const { RefCell::new(None) };
}

/// Finishes events (model from the body prefix, caps), collects them in the serving worker's
/// batch and queues whole batches without blocking.
pub struct Emitter {
    sender: mpsc::Sender<RecordBatch>,
    metrics: Arc<ComponentMetrics>,
    batch_size: usize,
    pub recognizer: Recognizer,
    tls_failures: Arc<AtomicU64>,
    /// Decoded bytes read of a compressed body per call.
    pub decode_limit: usize,
    undecoded_over_limit: Arc<AtomicU64>,
    undecoded_invalid: Arc<AtomicU64>,
    prices: Option<PriceTable>,
    unpriced: Arc<AtomicU64>,
    /// What the calls and the queue say about the upstream and the event path.
    pub health: Arc<health::Health>,
}

impl Emitter {
    /// `fallback_model` names the model when neither the event nor the request body's
    /// prefix does (an Azure deployment).
    pub fn emit(&self, mut event: ApiCall, request_prefix: &[u8], fallback_model: Option<String>) {
        if event.model.is_none() {
            if !request_prefix.is_empty() {
                event.model = extract::model_from_json_prefix(request_prefix);
            }
            if event.model.is_none() {
                event.model = fallback_model;
            }
        }
        let (route, model) = self.recognizer.capped(
            event.endpoint.take().unwrap_or_default(),
            event.model.take(),
        );
        event.endpoint = Some(route);
        event.model = model;
        self.health.record_call(&event);
        if let Some(prices) = &self.prices {
            match prices.cost(&event) {
                Cost::Usd(usd) => event.cost_usd = Some(usd),
                Cost::Unpriced => {
                    self.unpriced.fetch_add(1, Ordering::Relaxed);
                }
                Cost::NoUsage => {}
            }
        }
        let ready = STAGED.with(|staged| match staged.borrow_mut().as_mut() {
            Some(builder) => {
                builder.push(&event);
                (builder.len() >= self.batch_size).then(|| builder.finish())
            }
            None => {
                let mut single = ApiCallBatchBuilder::with_capacity(1);
                single.push(&event);
                Some(single.finish())
            }
        });
        if let Some(batch) = ready {
            self.queue(batch);
        }
    }

    /// Counts a call whose compressed body could not all be read (its usage is unknown).
    pub fn count_undecoded(&self, why: decode::Undecoded) {
        let counter = match why {
            decode::Undecoded::OverLimit => &self.undecoded_over_limit,
            decode::Undecoded::Invalid => &self.undecoded_invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client whose TLS handshake with the proxy failed (no call, no event).
    pub fn count_tls_failure(&self) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes the calling thread (a worker) collect its events into batches.
    pub fn stage_on_this_thread(&self) {
        STAGED.with(|staged| {
            *staged.borrow_mut() = Some(ApiCallBatchBuilder::with_capacity(self.batch_size));
        });
    }

    /// Queues the events the calling thread has collected so far.
    pub fn flush_this_thread(&self) {
        let batch = STAGED.with(|staged| {
            staged
                .borrow_mut()
                .as_mut()
                .filter(|builder| !builder.is_empty())
                .map(ApiCallBatchBuilder::finish)
        });
        if let Some(batch) = batch {
            self.queue(batch);
        }
    }

    fn queue(&self, batch: RecordBatch) {
        let rows = batch.num_rows() as u64;
        if self.sender.try_send(batch).is_err() {
            self.metrics.add_dropped(rows);
            self.health.record_drop();
        }
    }

    /// The event path's state now.
    pub fn event_path(&self) -> health::EventPath {
        self.health.event_path(self.sender.capacity())
    }

    /// Batches waiting in the queue, and how many it holds.
    pub fn queued_batches(&self) -> (usize, usize) {
        let capacity = self.sender.max_capacity();
        (capacity - self.sender.capacity(), capacity)
    }
}

/// The queue's length in batches: `queue_capacity` events in batches of `batch_size`.
fn queue_batches(config: &ProxyConfig) -> usize {
    (config.queue_capacity / config.batch_size).max(1)
}

fn recognizer(config: &ProxyConfig) -> Result<Recognizer, (&'static str, String)> {
    let templates = config
        .routes
        .iter()
        .map(|t| RouteTemplate::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("routes", e))?;
    let path_regex = config
        .model_path_regex
        .as_deref()
        .map(|r| {
            let regex = regex::Regex::new(r)
                .map_err(|e| ("model_path_regex", format!("invalid regex: {e}")))?;
            if regex.capture_names().any(|n| n == Some("model")) {
                Ok(regex)
            } else {
                Err((
                    "model_path_regex",
                    "the regex needs a named group `model`, e.g. ^/models/(?P<model>[^/]+)/"
                        .to_string(),
                ))
            }
        })
        .transpose()?;
    Ok(Recognizer {
        model_header: config.model_header.clone(),
        path_regex,
        templates,
        models: CardinalityCap::new(config.max_models),
        routes: CardinalityCap::new(config.max_routes),
    })
}

/// The price table of `config` (inline prices, then `prices_file`), `None` when it has none.
pub fn price_table(
    prices: &[engine::pricing::Price],
    file: Option<&std::path::Path>,
) -> Result<Option<PriceTable>, (&'static str, String)> {
    let inline = PriceTable::new(prices.to_vec()).map_err(|e| ("prices", e))?;
    let table = match file {
        Some(path) => inline.extended(PriceTable::from_file(path).map_err(|e| ("prices_file", e))?),
        None => inline,
    };
    Ok((!table.is_empty()).then_some(table))
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltSource, ConfigError> {
    let mut config: ProxyConfig = ctx.spec.settings()?;
    config.prices_file = config
        .prices_file
        .as_deref()
        .map(|p| ctx.spec.resolve_path(p));
    let prices = price_table(&config.prices, config.prices_file.as_deref())
        .map_err(|(key, message)| ctx.spec.error_at_key(key, message))?;
    if config.batch_size == 0 || config.queue_capacity == 0 {
        return Err(ctx.spec.error_at_key(
            "queue_capacity",
            "`queue_capacity` and `batch_size` must be at least 1",
        ));
    }
    // Check the recognisers, upstream and header names now, so `validate` reports them.
    let recognizer =
        recognizer(&config).map_err(|(key, message)| ctx.spec.error_at_key(key, message))?;
    let (sender, _) = mpsc::channel(1);
    let probe = Arc::new(Emitter {
        sender,
        metrics: ctx.metrics.clone(),
        batch_size: config.batch_size,
        recognizer,
        tls_failures: Arc::new(AtomicU64::new(0)),
        decode_limit: config.max_decoded_body_bytes,
        undecoded_over_limit: Arc::new(AtomicU64::new(0)),
        undecoded_invalid: Arc::new(AtomicU64::new(0)),
        prices,
        unpriced: Arc::new(AtomicU64::new(0)),
        health: Arc::default(),
    });
    Forwarder::new(config.clone(), probe)
        .map_err(|(key, message)| ctx.spec.error_at_key(key, message))?;
    Ok(BuiltSource {
        source: Box::new(ProxySource { config }),
        schema: api_call_schema(),
    })
}

pub struct ProxySource {
    config: ProxyConfig,
}

impl ProxySource {
    /// A proxy source from settings already checked (see [`build`] for the checks).
    pub fn new(config: ProxyConfig) -> Self {
        Self { config }
    }
}

async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<ComponentMetrics>,
    forwarder: Arc<Forwarder>,
    load: WorkerLoad,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let metrics = metrics.clone();
        let forwarder = forwarder.clone();
        let load = load.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let forwarder = forwarder.clone();
                let load = load.clone();
                async move {
                    let path = request.uri().path().to_string();
                    let (status, body) = match path.as_str() {
                        "/health" | "/ready" => {
                            admin_health(&path, &metrics, &forwarder, &load).await
                        }
                        _ => (
                            StatusCode::NOT_FOUND,
                            serde_json::json!({"error": "not found; the proxy's admin endpoint serves /health and /ready"}),
                        ),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `/health` (liveness: always 200 while the process runs, `status` `ok` or `degraded`, from
/// what recent calls and probes showed, without touching the network) and `/ready` (503 while
/// the upstream cannot be reached, probing it when no call showed lately: calls through this
/// proxy would fail). A troubled event path degrades health but not readiness, since calls
/// still pass (fail-open).
async fn admin_health(
    path: &str,
    metrics: &ComponentMetrics,
    forwarder: &Forwarder,
    load: &WorkerLoad,
) -> (StatusCode, serde_json::Value) {
    let upstream = forwarder
        .emitter
        .health
        .upstream(&forwarder.upstream, path == "/ready")
        .await;
    let event_path = forwarder.emitter.event_path();
    let (queued, capacity) = forwarder.emitter.queued_batches();
    let snapshot = metrics.snapshot();
    let healthy = !upstream.unreachable() && event_path == health::EventPath::Ok;
    let checks = serde_json::json!({
        "upstream": upstream.to_json(&forwarder.config.upstream),
        "event_path": {
            "state": event_path.name(),
            "queued_batches": queued,
            "queue_batches": capacity,
            "events_dropped": snapshot.dropped,
        },
    });
    if path == "/ready" {
        let ready = upstream.reachable();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return (
            status,
            serde_json::json!({"ready": ready, "checks": checks}),
        );
    }
    (
        StatusCode::OK,
        serde_json::json!({
            "status": if healthy { "ok" } else { "degraded" },
            "upstream": forwarder.config.upstream,
            "checks": checks,
            "events": snapshot.events_out,
            "events_dropped": snapshot.dropped,
            "open_connections_per_worker": load.open_connections(),
        }),
    )
}

/// Sends the workers' batches on as they come, forwards each barrier after the batches queued
/// before it, and once the workers have finished (`drained`: they queue what they collected as
/// they stop) sends what is still queued.
async fn forward_batches(
    receiver: &mut mpsc::Receiver<RecordBatch>,
    ctx: &mut SourceContext,
    drained: &CancellationToken,
) -> ComponentResult {
    loop {
        tokio::select! {
            _ = drained.cancelled() => break,
            Some(barrier) = ctx.barriers.recv() => {
                while let Ok(batch) = receiver.try_recv() {
                    ctx.output.send_batch(0, batch).await?;
                }
                ctx.output.send_control(Message::Barrier(barrier)).await?;
            }
            batch = receiver.recv() => match batch {
                Some(batch) => ctx.output.send_batch(0, batch).await?,
                None => break,
            },
        }
    }
    while let Ok(batch) = receiver.try_recv() {
        ctx.output.send_batch(0, batch).await?;
    }
    Ok(())
}

#[async_trait]
impl Source for ProxySource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> ComponentResult {
        let config = self.config;
        let bind = |address: SocketAddr, what: &'static str| async move {
            TcpListener::bind(address).await.map_err(|e| {
                ComponentError::other(format!("cannot listen on {address} for the {what}: {e}"))
            })
        };
        let listener = bind(config.listen, "proxy").await?;
        let admin = match config.admin_listen {
            Some(address) => Some(bind(address, "proxy's admin endpoint").await?),
            None => None,
        };
        let (sender, mut receiver) = mpsc::channel(queue_batches(&config));
        let emitter = Arc::new(Emitter {
            sender,
            metrics: ctx.metrics.clone(),
            batch_size: config.batch_size,
            recognizer: recognizer(&config)
                .map_err(|(_, message)| ComponentError::other(message))?,
            tls_failures: ctx.metrics.named("client_tls_failures"),
            decode_limit: config.max_decoded_body_bytes,
            undecoded_over_limit: ctx.metrics.named("bodies_over_decode_limit"),
            undecoded_invalid: ctx.metrics.named("bodies_undecodable"),
            prices: price_table(&config.prices, config.prices_file.as_deref())
                .map_err(|(_, message)| ComponentError::other(message))?,
            unpriced: ctx.metrics.named("unpriced_calls"),
            health: Arc::default(),
        });
        let health = emitter.health.clone();
        let forwarder = Arc::new(
            Forwarder::new(config.clone(), emitter)
                .map_err(|(_, message)| ComponentError::other(message))?,
        );
        if let Some(tls) = forwarder.listener_tls.clone() {
            tokio::spawn(tls.watch(ctx.shutdown.child_token()));
        }
        if forwarder.upstream.speaks() == upstream::Speaks::Unknown {
            // Learn which protocol the upstream chooses before the first call needs it (and
            // say at once if its certificate is refused).
            let upstream = forwarder.upstream.clone();
            tokio::spawn(async move {
                if let Err(error) = upstream.connect(upstream::Alpn::Negotiate).await {
                    tracing::warn!(upstream = %upstream.authority, %error, "proxy: cannot reach the upstream yet");
                }
            });
        }
        let stop = ctx.shutdown.child_token();
        tracing::info!(source = %ctx.id, listen = %config.listen, upstream = %config.upstream, "proxy listening");
        let cannot_start = |e: std::io::Error| {
            ComponentError::other(format!("cannot start the proxy's workers: {e}"))
        };
        // The workers accept on the listening socket themselves; they stop accepting, and let
        // calls in flight finish, on `stop`.
        let admin_forwarder = forwarder.clone();
        let workers = Workers::start(
            config.workers.get(),
            &ctx.id.to_string(),
            listener.into_std().map_err(cannot_start)?,
            forwarder,
            stop.clone(),
        )
        .map_err(cannot_start)?;
        let load = workers.load();
        let server = tokio::spawn(workers.finish());
        if let Some(admin) = admin {
            tokio::spawn(serve_admin(
                admin,
                ctx.metrics.clone(),
                admin_forwarder,
                load,
                stop.clone(),
            ));
        }
        // On shutdown the server stops accepting and lets calls in flight finish (bounded);
        // events keep flowing until then, and what is queued is flushed after.
        let drained = CancellationToken::new();
        let drained_signal = drained.clone();
        tokio::spawn(async move {
            let _ = server.await;
            drained_signal.cancel();
        });
        let result = forward_batches(&mut receiver, &mut ctx, &drained).await;
        match result {
            // Fail-open: everything downstream is gone (a component failed), but the model API
            // must not notice. Keep forwarding calls; count their events as dropped.
            Err(ComponentError::DownstreamClosed) => {
                tracing::error!(source = %ctx.id, "proxy: every downstream component has stopped; still forwarding calls, their events are dropped and counted");
                health.record_downstream_stopped();
                loop {
                    tokio::select! {
                        _ = drained.cancelled() => break,
                        batch = receiver.recv() => match batch {
                            Some(batch) => ctx.metrics.add_dropped(batch.num_rows() as u64),
                            None => break,
                        },
                    }
                }
                while let Ok(batch) = receiver.try_recv() {
                    ctx.metrics.add_dropped(batch.num_rows() as u64);
                }
                Err(ComponentError::DownstreamClosed)
            }
            other => other,
        }
    }

    fn fail_open(&self) -> bool {
        true
    }
}
