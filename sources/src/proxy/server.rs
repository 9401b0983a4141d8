//! The forwarding path: one hyper service per client connection (HTTP/1.1 with keep-alive, or
//! HTTP/2), a pooled upstream client (HTTP/1.1, or HTTP/2 over h2c or TLS), hop-by-hop headers
//! handled per RFC 9110 §7.6.1, `X-Forwarded-For` / `X-Forwarded-Proto`, bodies streamed in
//! both directions, WebSocket upgrades passed through or refused, and a JSON 502 / 504 when the
//! upstream cannot answer (the reason also in the event's `error`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::schema::api_call::{ApiCall, Outcome};
use engine::time::now_micros;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, HOST,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::affinity::{Affinity, IdleSenders};
use super::body::{BodyFailure, CallRecord, ObservedBody, RequestTap, TeeBody};
use super::config::{HostHeader, ProxyConfig, WebSocketPolicy};
use super::decode::Encoding;
use super::idle::{IdleConnection, IdleUpstreams};
use super::listener_tls::ListenerTls;
use super::observe::BodyKind;
use super::upstream::{PoolConnector, Speaks, Upstream};
use super::Emitter;

/// The `endpoint` of requests too malformed to have a route.
pub const MALFORMED_ROUTE: &str = "(malformed request)";

pub type ProxyBody = Either<ObservedBody<Incoming>, Full<Bytes>>;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
/// `Connection` comes first.
pub(super) static HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A client connection as the forwarding path sees it, worked out once per connection.
pub struct ClientConnection {
    /// The client's IP address as an `X-Forwarded-For` element.
    pub(super) forwarded_for: HeaderValue,
    /// `X-Forwarded-Proto`: `https` when the client called the proxy over TLS.
    pub(super) proto: HeaderValue,
}

impl ClientConnection {
    pub fn new(address: SocketAddr, tls: bool) -> Self {
        let forwarded_for = HeaderValue::from_str(&address.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        Self {
            forwarded_for,
            proto,
        }
    }
}

/// A call's event as it starts, before anything is sent upstream.
pub struct CallStart {
    pub record: Box<CallRecord>,
    pub request_id: String,
    /// Bytes of the request body's start to keep for the model (0 when it is already known).
    pub prefix_limit: usize,
    pub tap: Arc<RequestTap>,
}

pub struct Forwarder {
    pub config: ProxyConfig,
    pub(super) upstream: Arc<Upstream>,
    /// The upstream's authority, for the absolute-form targets of the shared pool.
    pool_authority: Authority,
    /// The `Host` header sent upstream when `host = "rewrite"`.
    pub(super) upstream_host: HeaderValue,
    client: Client<PoolConnector, TeeBody<Incoming>>,
    pub emitter: Arc<Emitter>,
    pub(super) request_id_header: HeaderName,
    client_id_header: Option<HeaderName>,
    model_header: Option<HeaderName>,
    pub(super) overhead_header: Option<HeaderName>,
    /// HTTPS for clients, when `tls_cert_file` and `tls_key_file` are set.
    pub(super) listener_tls: Option<Arc<ListenerTls>>,
    /// `client_id_header` is a credential: the id recorded is its hash.
    hash_client_id: bool,
}

fn header_name(value: &str, what: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(value.as_bytes())
        .map_err(|_| format!("`{value}` is not a valid {what} header name"))
}

/// The setting that names a header of this kind.
fn what_key(what: &str) -> &'static str {
    match what {
        "request id" => "request_id_header",
        "client id" => "client_id_header",
        "model" => "model_header",
        _ => "overhead_header",
    }
}

impl Forwarder {
    /// The forwarder of `config`; an error names the setting at fault and what is wrong.
    pub fn new(config: ProxyConfig, emitter: Arc<Emitter>) -> Result<Self, (&'static str, String)> {
        let upstream = Arc::new(Upstream::new(&config)?);
        let pool_authority: Authority = upstream.authority.parse().map_err(|_| {
            (
                "upstream",
                format!("`upstream` {:?} names no valid host", config.upstream),
            )
        })?;
        let upstream_host = HeaderValue::from_str(&upstream.authority).map_err(|_| {
            (
                "upstream",
                format!("`upstream` {:?} names no valid host", config.upstream),
            )
        })?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(config.upstream_keepalive_timeout.0)
            .pool_max_idle_per_host(1024)
            // Cleartext HTTP/2 needs prior knowledge; over TLS the handshake says which.
            .http2_only(!upstream.https && upstream.speaks() == Speaks::Http2);
        let client = builder.build(PoolConnector(upstream.clone()));
        let header =
            |value: &str, what: &str| header_name(value, what).map_err(|e| (what_key(what), e));
        let secret = |name: &str| {
            config
                .secret_headers
                .iter()
                .any(|secret| secret.eq_ignore_ascii_case(name))
        };
        for (key, name) in [
            ("model_header", config.model_header.as_deref()),
            ("request_id_header", Some(config.request_id_header.as_str())),
        ] {
            if let Some(name) = name.filter(|name| secret(name)) {
                return Err((key, format!("`{name}` carries credentials (it is in `secret_headers`): its value would be recorded in every event")));
            }
        }
        let hash_client_id = config.client_id_header.as_deref().is_some_and(secret);
        let listener_tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(
                ListenerTls::new(cert, key).map_err(|e| ("tls_cert_file", e))?,
            )),
            (None, None) => None,
            _ => {
                return Err((
                    "tls_cert_file",
                    "`tls_cert_file` and `tls_key_file` go together".to_string(),
                ))
            }
        };
        Ok(Self {
            listener_tls,
            hash_client_id,
            request_id_header: header(&config.request_id_header, "request id")?,
            client_id_header: config
                .client_id_header
                .as_deref()
                .map(|h| header(h, "client id"))
                .transpose()?,
            model_header: config
                .model_header
                .as_deref()
                .map(|h| header(h, "model"))
                .transpose()?,
            overhead_header: config
                .overhead_header
                .as_deref()
                .map(|h| header(h, "overhead"))
                .transpose()?,
            upstream,
            pool_authority,
            upstream_host,
            client,
            config,
            emitter,
        })
    }

    pub(super) fn json_error(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
        let body = json_error_body(kind, message);
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// The answer and event for a call whose request body the client broke off or malformed.
    fn client_body_failed(
        mut record: Box<CallRecord>,
        failure: BodyFailure,
        error: &str,
    ) -> Response<ProxyBody> {
        let (outcome, kind, message) = match failure {
            BodyFailure::Malformed => {
                record.event.status_code = Some(400);
                record.event.error = Some(error.to_string());
                (
                    Outcome::ClientError,
                    "bad_request",
                    "the request body's framing is invalid",
                )
            }
            // The client is gone; the answer is for the record.
            BodyFailure::ClientGone => (
                Outcome::ClientAbort,
                "client_abort",
                "the client stopped sending the request body before its end",
            ),
        };
        let response = Self::json_error(StatusCode::BAD_REQUEST, kind, message);
        record.emit(Some(outcome), Some(body_length(&response)), None);
        response
    }

    /// Records a request hyper refused before it reached `handle` (malformed request line or
    /// headers, an invalid Content-Length, headers over the size limit): hyper answers it with
    /// `status` and closes the connection; the event says what happened.
    pub fn malformed_request(
        &self,
        client: SocketAddr,
        status: u16,
        detail: &str,
        since: Instant,
        response_bytes: u64,
    ) {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("client_address".to_string(), client.ip().to_string());
        let event = ApiCall {
            event_time: now_micros(),
            request_id: new_request_id(),
            endpoint: Some(MALFORMED_ROUTE.to_string()),
            status_code: Some(status),
            outcome: Outcome::ClientError,
            latency_ms: since.elapsed().as_secs_f64() * 1000.0,
            response_bytes: Some(response_bytes),
            upstream: Some(self.upstream.authority.clone()),
            labels,
            error: Some(detail.to_string()),
            ..Default::default()
        };
        self.emitter.emit(event, &[], None);
    }

    /// A client connection's own upstream connection (see [`Affinity`]), taken from and left
    /// to its worker's `idle` upstream connections.
    pub fn affinity(&self, idle: Arc<IdleSenders>) -> Affinity {
        Affinity::new(self.upstream.clone(), idle)
    }

    /// A worker's set of idle upstream connections, as large as `upstream_keepalive`, each
    /// kept for `upstream_keepalive_timeout`.
    pub fn idle_upstreams<C: IdleConnection>(&self) -> IdleUpstreams<C> {
        IdleUpstreams::new(
            self.config.upstream_keepalive,
            self.config.upstream_keepalive_timeout.0,
        )
    }

    /// The start of a call's event, from its method, path and a lookup of its headers (the
    /// same for calls hyper serves and for the direct HTTP/1.1 path). Its `event_time` is the
    /// call's start until [`CallRecord::emit`] moves it to the call's end.
    pub fn start_call<'h>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&HeaderName) -> Option<&'h str>,
    ) -> CallStart {
        let started = Instant::now();
        let event_time = now_micros();
        let request_id = header(&self.request_id_header)
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let path_info = self.emitter.recognizer.from_path(path);
        let header_model = self
            .model_header
            .as_ref()
            .and_then(&header)
            .map(str::to_string);
        let client_id = self
            .client_id_header
            .as_ref()
            .and_then(&header)
            .map(|value| {
                if self.hash_client_id {
                    credential_id(value)
                } else {
                    value.to_string()
                }
            });
        let request_encoding = Encoding::from_header(header(&CONTENT_ENCODING));
        let event = ApiCall {
            event_time,
            request_id: request_id.clone(),
            model: header_model.or(path_info.model),
            endpoint: Some(path_info.route),
            method: Some(method.to_owned()),
            client_id,
            upstream: Some(self.upstream.authority.clone()),
            ..Default::default()
        };
        // The body's start is kept only while the model is still unknown.
        let prefix_limit = if event.model.is_some() {
            0
        } else {
            self.config.model_body_prefix_bytes
        };
        let tap = Arc::new(RequestTap::default());
        // Boxed: the record rides along with the call's futures and the response body, which
        // are moved several times on the way; a pointer moves cheaper than the event.
        let record = Box::new(CallRecord {
            event,
            started,
            request: tap.clone(),
            emitter: self.emitter.clone(),
            request_encoding,
            json_stream: path.ends_with(":streamGenerateContent"),
            fallback_model: path_info.fallback_model,
        });
        CallStart {
            record,
            request_id,
            prefix_limit,
            tap,
        }
    }

    /// Handles one request. Never fails: upstream problems become 502 / 504 responses. Calls
    /// of an HTTP/1.1 client go over `affinity` (its connection's own upstream connection)
    /// when given; HTTP/2 calls, upgrades and an h2c upstream use the shared pool.
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        client: Arc<ClientConnection>,
        affinity: Option<Arc<Affinity>>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let headers = request.headers();
        let call = self.start_call(request.method().as_str(), request.uri().path(), |name| {
            headers.get(name).and_then(|v| v.to_str().ok())
        });
        let is_upgrade = headers.get(UPGRADE).is_some()
            && headers
                .get(CONNECTION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                });
        let CallStart {
            record,
            request_id,
            prefix_limit,
            tap: request_tap,
        } = call;
        let started = record.started;
        if is_upgrade && self.config.websocket == WebSocketPolicy::Refuse {
            let mut record = record;
            record.event.status_code = Some(501);
            record.event.outcome = Outcome::ServerError;
            let response = Self::json_error(
                StatusCode::NOT_IMPLEMENTED,
                "upgrade_refused",
                "this proxy does not pass protocol upgrades through (websocket = \"refuse\")",
            );
            record.emit(None, Some(body_length(&response)), None);
            return Ok(response);
        }
        if let Some(problem) =
            super::framing::transfer_coding_problem(request.version(), request.headers())
        {
            let mut record = record;
            record.event.status_code = Some(400);
            record.event.error = Some(problem.to_string());
            let mut response = Self::json_error(StatusCode::BAD_REQUEST, "bad_request", problem);
            // What follows on the connection cannot be told apart from this body.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            record.emit(
                Some(Outcome::ClientError),
                Some(body_length(&response)),
                None,
            );
            return Ok(response);
        }
        let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut request));
        // HTTP/1.1 calls to an HTTP/1.1 upstream go over the client connection's own upstream
        // connection; an upgrade over a connection of its own (it is consumed by the upgrade,
        // and HTTP/2 cannot carry one); the rest over the shared pool.
        let affinity = if is_upgrade {
            Some(Arc::new(
                self.affinity(Arc::new(IdleSenders::new(0, Duration::ZERO))),
            ))
        } else {
            affinity.filter(|_| {
                request.version() <= hyper::Version::HTTP_11
                    && self.upstream.speaks() == Speaks::Http1
            })
        };

        // Build the upstream request: origin-form on the client connection's own upstream
        // connection (RFC 9112 §3.2.1), absolute-form for the shared pool, which takes the
        // upstream from it and sends origin-form itself.
        let (mut parts, body) = request.into_parts();
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let scheme = if self.upstream.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let absolute = affinity.is_none().then_some((scheme, &self.pool_authority));
        match upstream_target(&parts.uri, &self.upstream.base_path, absolute) {
            Some(uri) => parts.uri = uri,
            None => {
                let response = Self::json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request target cannot be forwarded",
                );
                record.emit(
                    Some(Outcome::ClientError),
                    Some(body_length(&response)),
                    None,
                );
                return Ok(response);
            }
        }
        let upgrade_headers = is_upgrade.then(|| {
            (
                parts.headers.get(UPGRADE).cloned(),
                parts.headers.get(CONNECTION).cloned(),
            )
        });
        strip_hop_by_hop(&mut parts.headers);
        if let Some((upgrade, connection)) = upgrade_headers {
            if let Some(upgrade) = upgrade {
                parts.headers.insert(UPGRADE, upgrade);
            }
            if let Some(connection) = connection {
                parts.headers.insert(CONNECTION, connection);
            }
        }
        parts.version = hyper::Version::HTTP_11;
        match self.config.host {
            HostHeader::Rewrite => {
                parts.headers.insert(HOST, self.upstream_host.clone());
            }
            HostHeader::Keep => {
                if let Some(host) = original_host.clone() {
                    parts.headers.insert(HOST, host);
                }
            }
        }
        append_forwarded(&mut parts.headers, &client, original_host.as_ref());
        if !parts.headers.contains_key(&self.request_id_header) {
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                parts.headers.insert(self.request_id_header.clone(), value);
            }
        }
        let body = TeeBody::new(body, request_tap, prefix_limit);
        let upstream_request = Request::from_parts(parts, body);
        let before_send = started.elapsed();

        let send = async {
            match affinity {
                Some(affinity) => affinity
                    .send(upstream_request)
                    .await
                    .map_err(|error| error_chain(&error)),
                None => self
                    .client
                    .request(upstream_request)
                    .await
                    .map_err(|error| error_chain(&error)),
            }
        };
        let response = tokio::time::timeout(self.config.response_timeout.0, send).await;
        let mut response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                // The client's body failed, not the upstream: the call is the client's doing.
                if let Some(failure) = record.request.failure() {
                    return Ok(Self::client_body_failed(record, failure, &error));
                }
                let mut record = record;
                record.event.status_code = Some(502);
                let message = format!(
                    "the upstream {} could not be reached: {error}",
                    self.upstream.authority
                );
                record.event.error = Some(error);
                let response =
                    Self::json_error(StatusCode::BAD_GATEWAY, "upstream_unreachable", &message);
                record.emit(
                    Some(Outcome::UpstreamUnreachable),
                    Some(body_length(&response)),
                    None,
                );
                return Ok(response);
            }
            Err(_) => {
                let mut record = record;
                record.event.status_code = Some(504);
                let message = format!(
                    "the upstream {} sent no response within {}",
                    self.upstream.authority, self.config.response_timeout
                );
                record.event.error = Some(format!(
                    "no response within {}",
                    self.config.response_timeout
                ));
                let response = Self::json_error(StatusCode::GATEWAY_TIMEOUT, "timeout", &message);
                record.emit(Some(Outcome::Timeout), Some(body_length(&response)), None);
                return Ok(response);
            }
        };
        let after_headers = Instant::now();
        let mut record = record;
        record.event.ttfb_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        let status = response.status();
        record.event.status_code = Some(status.as_u16());
        record.event.outcome = Outcome::from_status(status.as_u16());

        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(client_io), Ok(upstream_io)) =
                        (client_upgrade.await, upstream_upgrade.await)
                    {
                        let mut client_io = TokioIo::new(client_io);
                        let mut upstream_io = TokioIo::new(upstream_io);
                        let _ =
                            tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await;
                    }
                });
            }
            record.emit(None, Some(0), None);
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(
                parts,
                Either::Right(Full::new(Bytes::new())),
            ));
        }

        let kind = BodyKind::from_content_type(
            response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let encoding = Encoding::from_header(
            response
                .headers()
                .get(CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        );
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(name) = &self.overhead_header {
            let overhead = before_send + after_headers.elapsed();
            if let Ok(value) =
                HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0))
            {
                parts.headers.insert(name.clone(), value);
            }
        }
        Ok(Response::from_parts(
            parts,
            Either::Left(ObservedBody::new(body, record, kind, encoding)),
        ))
    }
}

/// The length of an answer the proxy built itself.
fn body_length(response: &Response<ProxyBody>) -> u64 {
    use hyper::body::Body;
    response.body().size_hint().exact().unwrap_or(0)
}

/// The JSON body of an error the proxy answers itself.
pub(super) fn json_error_body(kind: &str, message: &str) -> String {
    serde_json::json!({"error": {"type": kind, "message": message, "source": "proxy"}}).to_string()
}

/// The target of the upstream request for a client's `uri`: the upstream's `base_path`
/// joined with the client's path and query, in absolute form when an `authority` is given.
/// `None` for a target that is not a path (`*`, authority-form) or that does not join into a
/// valid URI.
fn upstream_target(
    uri: &Uri,
    base_path: &str,
    authority: Option<(Scheme, &Authority)>,
) -> Option<Uri> {
    let client_target = match uri.path_and_query() {
        Some(target) if target.as_str().starts_with('/') => target.clone(),
        Some(_) => return None,
        None => PathAndQuery::from_static("/"),
    };
    let path_and_query = if base_path.is_empty() {
        client_target
    } else {
        PathAndQuery::try_from(format!("{base_path}{client_target}")).ok()?
    };
    let mut parts = hyper::http::uri::Parts::default();
    if let Some((scheme, authority)) = authority {
        parts.scheme = Some(scheme);
        parts.authority = Some(authority.clone());
    }
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

/// A stable id for a credential that does not reveal it: `sha256:` and the first 16 hex digits
/// of its SHA-256 (a `Bearer ` prefix is hashed with it).
fn credential_id(value: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(value.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..8]))
}

/// A random (version 4) UUID from the thread's random generator: `Uuid::new_v4` asks the
/// kernel for every one, a system call per proxied call.
fn new_request_id() -> String {
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    uuid.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are present (most messages have none, or only
    // `Connection: keep-alive`); only those are looked up and removed.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present[index] = true;
        }
    }
    if present[0] {
        // Usually `keep-alive` or `close`, which name no other header: nothing is collected.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            for token in value.as_bytes().split(|byte| *byte == b',') {
                let token = token.trim_ascii();
                let names_no_other_header = token.is_empty()
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"close")
                    || HOP_BY_HOP
                        .iter()
                        .any(|hop| token.eq_ignore_ascii_case(hop.as_str().as_bytes()));
                if !names_no_other_header {
                    if let Ok(name) = HeaderName::from_bytes(token) {
                        named.push(name);
                    }
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// `name`'s place in [`HOP_BY_HOP`]: one match on the name's text, where comparing it with
/// each entry in turn costs a comparison per entry for every header of every message.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "proxy-connection" => Some(1),
        "keep-alive" => Some(2),
        "te" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        "proxy-authorization" => Some(6),
        _ => None,
    }
}

fn append_forwarded(
    headers: &mut HeaderMap,
    client: &ClientConnection,
    host: Option<&HeaderValue>,
) {
    let own = || client.forwarded_for.clone();
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut previous) => {
            // The chain so far (its first field line), with this client appended.
            let chain = previous
                .get()
                .to_str()
                .ok()
                .and_then(|chain| {
                    let own = client.forwarded_for.to_str().unwrap_or_default();
                    HeaderValue::from_str(&format!("{chain}, {own}")).ok()
                })
                .unwrap_or_else(own);
            previous.insert(chain);
        }
        Entry::Vacant(vacant) => {
            vacant.insert(own());
        }
    }
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert_with(|| client.proto.clone());
    if let Some(host) = host {
        headers
            .entry(X_FORWARDED_HOST)
            .or_insert_with(|| host.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("authorization", HeaderValue::from_static("Bearer k"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["authorization"]);
    }

    #[test]
    fn every_hop_by_hop_header_is_found_at_its_own_place() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
        }
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-te")), None);
        assert_eq!(hop_by_hop_index(&CONTENT_TYPE), None);
    }

    #[test]
    fn credentials_become_ids_that_do_not_reveal_them() {
        let id = credential_id("Bearer sk-live-1234567890");
        assert!(id.starts_with("sha256:") && id.len() == 7 + 16, "{id}");
        assert!(!id.contains("sk-live"));
        assert_eq!(id, credential_id("Bearer sk-live-1234567890"));
        assert_ne!(id, credential_id("Bearer sk-live-1234567891"));
    }

    #[test]
    fn generated_request_ids_are_distinct_version_4_uuids() {
        let (first, second) = (new_request_id(), new_request_id());
        assert_ne!(first, second);
        let parsed = uuid::Uuid::parse_str(&first).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[test]
    fn upstream_targets_are_origin_form_on_an_own_connection_and_absolute_for_the_pool() {
        let authority: Authority = "127.0.0.1:8000".parse().unwrap();
        let target = |uri: &str, base: &str, authority: Option<(Scheme, &Authority)>| {
            upstream_target(&uri.parse().unwrap(), base, authority).map(|u| u.to_string())
        };
        assert_eq!(
            target("/v1/chat?x=1", "", None).as_deref(),
            Some("/v1/chat?x=1")
        );
        assert_eq!(
            target("/v1/chat?x=1", "/api", None).as_deref(),
            Some("/api/v1/chat?x=1")
        );
        assert_eq!(
            target("/v1/chat", "/api", Some((Scheme::HTTP, &authority))).as_deref(),
            Some("http://127.0.0.1:8000/api/v1/chat")
        );
        // A client's absolute-form target keeps only its path and query.
        assert_eq!(
            target("http://elsewhere:9/p?q", "", None).as_deref(),
            Some("/p?q")
        );
        assert_eq!(target("http://elsewhere:9", "", None).as_deref(), Some("/"));
        assert_eq!(target("*", "", None), None);
    }

    #[test]
    fn forwarded_headers_append_to_an_existing_chain() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        append_forwarded(
            &mut headers,
            &ClientConnection::new("127.0.0.9:5000".parse().unwrap(), false),
            Some(&HeaderValue::from_static("api.example")),
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "api.example");
    }
}
