//! Settings of the `proxy` source.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use engine::time::ConfigDuration;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    /// Send the upstream's host, as nginx's `proxy_pass` does by default.
    #[default]
    Rewrite,
    /// Pass the client's `Host` through unchanged.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 to an `http://` upstream; to an `https://` one, HTTP/2 when the server offers
    /// it in the TLS handshake (ALPN), else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: with prior knowledge (h2c) to an `http://` upstream, by ALPN over TLS.
    #[serde(alias = "h2c", alias = "h2")]
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Http1Forwarding {
    /// Common HTTP/1.1 calls on the proxy's own direct path (one task, no channels), anything
    /// else (HTTP/1.0, h2c, upgrades, `Expect`, malformed requests) through hyper.
    #[default]
    Direct,
    /// Every call through hyper.
    Hyper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebSocketPolicy {
    /// Pass WebSocket upgrades through to the upstream (one event per upgrade).
    #[default]
    Pass,
    /// Answer upgrades with 501 and a JSON error.
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where clients connect (HTTP/1.1 and h2c).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The model API, e.g. `http://127.0.0.1:8002` or `https://api.openai.com`.
    pub upstream: String,
    /// PEM file of the CA (or CAs) an `https://` upstream's certificate must chain to, in place
    /// of the platform's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// PEM certificate chain and key the proxy presents to an upstream that asks for one (mTLS).
    pub upstream_client_cert_file: Option<PathBuf>,
    pub upstream_client_key_file: Option<PathBuf>,
    /// Accepts any certificate from an `https://` upstream: for tests only, never in production.
    #[serde(default)]
    pub danger_accept_invalid_upstream_certificates: bool,
    /// Time allowed for the TLS handshake with an `https://` upstream.
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout: ConfigDuration,
    /// PEM certificate chain and key for clients calling the proxy over HTTPS (both or
    /// neither); reloaded on SIGHUP and when the files change.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// How HTTP/1.1 calls to an HTTP/1.1 upstream are forwarded.
    #[serde(default)]
    pub http1_forwarding: Http1Forwarding,
    /// The proxy's own health endpoint, apart from the upstream's paths.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(default)]
    pub host: HostHeader,
    /// Header carrying the request id (generated, and added upstream, when absent).
    #[serde(default = "default_request_id_header")]
    pub request_id_header: String,
    /// Header whose value is the calling client's id. When it is one of `secret_headers`
    /// (an API key), the id is a hash of the value: `sha256:` and 16 hex digits.
    pub client_id_header: Option<String>,
    /// Headers that carry credentials: forwarded unchanged, never recorded (no event, log line
    /// or store sees them). `model_header` and `request_id_header` may not name one.
    #[serde(default = "default_secret_headers")]
    pub secret_headers: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// Time allowed for the upstream's response headers.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: ConfigDuration,
    /// Time a client has to send a whole request head once it started one: a client that
    /// trickles its head (slowloris) gets a 408 and the connection closes.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// Header naming the model (e.g. `x-model-name`); wins over every other recogniser.
    pub model_header: Option<String>,
    /// A regex over the path with a named group `model`.
    pub model_path_regex: Option<String>,
    /// How much of a JSON request body is scanned for a top-level `model` field.
    #[serde(default = "default_body_prefix")]
    pub model_body_prefix_bytes: usize,
    /// Bytes of a compressed response body decoded per call to read its usage (the body is
    /// forwarded as it came, whatever its size); beyond them the call's token counts are
    /// unknown and `bodies_over_decode_limit` counts it.
    #[serde(default = "default_max_decoded_body_bytes")]
    pub max_decoded_body_bytes: usize,
    /// Route templates such as `/v1/users/{id}`.
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default = "default_max_models")]
    pub max_models: usize,
    #[serde(default = "default_max_routes")]
    pub max_routes: usize,
    /// A TOML file of `[[prices]]` (see `engine::pricing`), relative to the config file: each
    /// event gets `cost_usd`.
    pub prices_file: Option<PathBuf>,
    /// Prices given inline, before those of `prices_file`.
    #[serde(default)]
    pub prices: Vec<engine::pricing::Price>,
    /// Adds this response header with the proxy's own overhead in milliseconds (off when absent).
    pub overhead_header: Option<String>,
    #[serde(default)]
    pub websocket: WebSocketPolicy,
    /// Events the queue to the pipeline holds, in batches of `batch_size` (at least one batch);
    /// beyond it a worker's batch is dropped and its events counted, never blocking.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Events a worker collects before it queues them as one batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How often each worker queues the events it has collected, however few.
    #[serde(default = "default_linger")]
    pub linger: ConfigDuration,
    /// Threads serving client connections, each with its own single-threaded runtime (one per
    /// core by default, as nginx's `worker_processes auto`).
    #[serde(default = "default_workers")]
    pub workers: NonZeroUsize,
    /// Idle upstream connections each worker keeps for its next client connections once the
    /// client connection they served has closed (nginx's `keepalive`); 0: an upstream
    /// connection closes with its client connection.
    #[serde(default = "default_upstream_keepalive")]
    pub upstream_keepalive: usize,
    /// How long such an idle upstream connection is kept before the proxy closes it (nginx's
    /// `keepalive_timeout` in an `upstream` block).
    #[serde(default = "default_upstream_keepalive_timeout")]
    pub upstream_keepalive_timeout: ConfigDuration,
}

fn default_secret_headers() -> Vec<String> {
    [
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
    ]
    .map(String::from)
    .to_vec()
}
fn default_tls_handshake_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}
fn default_upstream_keepalive() -> usize {
    128
}
fn default_upstream_keepalive_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(90)
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9091)))
}
fn default_request_id_header() -> String {
    "x-request-id".to_string()
}
fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_response_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_header_read_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_body_prefix() -> usize {
    64 * 1024
}
fn default_max_decoded_body_bytes() -> usize {
    8 << 20
}
fn default_max_models() -> usize {
    200
}
fn default_max_routes() -> usize {
    500
}
fn default_queue_capacity() -> usize {
    65_536
}
fn default_batch_size() -> usize {
    1024
}
fn default_linger() -> ConfigDuration {
    ConfigDuration::from_millis(200)
}
