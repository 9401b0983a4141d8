//! The model API a proxy forwards to, and how connections to it are made, for both forwarding
//! paths: its address (`http://` or `https://`, host, port, base path), TCP with a connect
//! timeout, and for `https://` a rustls handshake with its own timeout — the platform's root
//! certificates (Mozilla's, bundled, when the platform has none) or a private CA file, SNI,
//! ALPN, and certificate verification that only an explicitly dangerous setting turns off.
//! TLS sessions are resumed from rustls's in-memory cache, so a new pooled connection costs an
//! abbreviated handshake.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::config::{ProxyConfig, UpstreamProtocol};
use super::idle::IdleConnection;

/// The application protocols offered in a TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only: for connections that carry HTTP/1.1 whatever the server prefers.
    Http1,
    /// `h2` then `http/1.1`: the server chooses.
    Negotiate,
    /// `h2` only.
    Http2,
}

/// What the upstream is known to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    Http2,
    /// `upstream_protocol = "auto"` over TLS before the first handshake: learnt from ALPN.
    Unknown,
}

const UNKNOWN: u8 = 0;
const LEARNT_HTTP1: u8 = 1;
const LEARNT_HTTP2: u8 = 2;

/// Why no connection to the upstream could be made. Each message names the upstream and what
/// failed, so an event's `error` says it (e.g. `TLS handshake with api.example.com failed:
/// invalid peer certificate: certificate expired ...`).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {address} timed out after {after:?}")]
    Timeout { address: String, after: Duration },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {host} timed out after {after:?}")]
    TlsTimeout { host: String, after: Duration },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
}

/// The TLS settings of an `https://` upstream: one client config per ALPN offer, sharing one
/// session cache so resumption works whichever a connection used.
struct Tls {
    server_name: ServerName<'static>,
    http1: TlsConnector,
    negotiate: TlsConnector,
    http2: TlsConnector,
    timeout: Duration,
}

/// The upstream a proxy forwards to.
pub struct Upstream {
    pub https: bool,
    /// `host[:port]` as written in `upstream`: the `Host` header and the events' `upstream`.
    pub authority: String,
    /// `host:port` connected to (the scheme's port when none is written).
    pub address: String,
    /// The path the client's path is appended to, without a trailing `/`.
    pub base_path: String,
    protocol: UpstreamProtocol,
    learnt: AtomicU8,
    connect_timeout: Duration,
    tls: Option<Tls>,
}

impl Upstream {
    /// The upstream of `config`; every error names the setting and what is wrong with it.
    pub fn new(config: &ProxyConfig) -> Result<Self, (&'static str, String)> {
        let text = &config.upstream;
        let uri: Uri = text
            .parse()
            .map_err(|e| ("upstream", format!("`upstream` {text:?} is not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err((
                    "upstream",
                    format!("`upstream` must be an http:// or https:// URL, got scheme {other:?} in {text:?}"),
                ))
            }
            None => {
                return Err((
                    "upstream",
                    format!("`upstream` {text:?} needs a scheme: http://host:port or https://host"),
                ))
            }
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| ("upstream", format!("`upstream` {text:?} names no host")))?;
        if authority.as_str().contains('@') {
            return Err((
                "upstream",
                format!("`upstream` {text:?} carries credentials; send them as headers from the client instead"),
            ));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host();
        let address = format!("{host}:{port}");
        let tls = if https {
            let bare_host = host.trim_start_matches('[').trim_end_matches(']');
            let server_name = ServerName::try_from(bare_host.to_string()).map_err(|e| {
                (
                    "upstream",
                    format!("`upstream` host {host:?} is not a valid TLS server name: {e}"),
                )
            })?;
            Some(Tls::new(config, server_name)?)
        } else {
            for (key, set) in [
                ("upstream_ca_file", config.upstream_ca_file.is_some()),
                (
                    "upstream_client_cert_file",
                    config.upstream_client_cert_file.is_some(),
                ),
                (
                    "danger_accept_invalid_upstream_certificates",
                    config.danger_accept_invalid_upstream_certificates,
                ),
            ] {
                if set {
                    return Err((
                        key,
                        format!("`{key}` applies to an https:// upstream; `upstream` is {text:?}"),
                    ));
                }
            }
            None
        };
        Ok(Self {
            https,
            authority: authority.to_string(),
            address,
            base_path: uri.path().trim_end_matches('/').to_string(),
            protocol: config.upstream_protocol,
            learnt: AtomicU8::new(UNKNOWN),
            connect_timeout: config.connect_timeout.0,
            tls,
        })
    }

    /// What the upstream speaks, as configured or, for `auto` over TLS, as learnt from the
    /// first handshake.
    pub fn speaks(&self) -> Speaks {
        match (self.protocol, self.https) {
            (UpstreamProtocol::Http1, _) | (UpstreamProtocol::Auto, false) => Speaks::Http1,
            (UpstreamProtocol::Http2, _) => Speaks::Http2,
            (UpstreamProtocol::Auto, true) => match self.learnt.load(Ordering::Relaxed) {
                LEARNT_HTTP1 => Speaks::Http1,
                LEARNT_HTTP2 => Speaks::Http2,
                _ => Speaks::Unknown,
            },
        }
    }

    /// The ALPN offer for a connection that may carry either protocol.
    pub fn pool_alpn(&self) -> Alpn {
        match self.speaks() {
            Speaks::Http1 => Alpn::Http1,
            Speaks::Http2 => Alpn::Http2,
            Speaks::Unknown => Alpn::Negotiate,
        }
    }

    /// Connects: TCP, then TLS for `https://` offering `alpn`. What a `Negotiate` handshake
    /// chose is remembered for [`Upstream::speaks`].
    pub async fn connect(&self, alpn: Alpn) -> Result<UpstreamStream, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| ConnectError::Timeout {
                address: self.address.clone(),
                after: self.connect_timeout,
            })?
            .map_err(|source| ConnectError::Connect {
                address: self.address.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Plain(stream));
        };
        let connector = match alpn {
            Alpn::Http1 => &tls.http1,
            Alpn::Negotiate => &tls.negotiate,
            Alpn::Http2 => &tls.http2,
        };
        let host = || self.authority.clone();
        let stream = tokio::time::timeout(
            tls.timeout,
            connector.connect(tls.server_name.clone(), stream),
        )
        .await
        .map_err(|_| ConnectError::TlsTimeout {
            host: host(),
            after: tls.timeout,
        })?
        .map_err(|source| ConnectError::Tls {
            host: host(),
            source,
        })?;
        let stream = UpstreamStream::Tls(Box::new(stream));
        if alpn == Alpn::Negotiate {
            let learnt = if stream.negotiated_h2() {
                LEARNT_HTTP2
            } else {
                LEARNT_HTTP1
            };
            if self.learnt.swap(learnt, Ordering::Relaxed) != learnt {
                tracing::info!(upstream = %self.authority, protocol = if learnt == LEARNT_HTTP2 { "HTTP/2" } else { "HTTP/1.1" }, "proxy: the upstream chose its protocol in the TLS handshake");
            }
        }
        Ok(stream)
    }
}

impl Tls {
    fn new(
        config: &ProxyConfig,
        server_name: ServerName<'static>,
    ) -> Result<Self, (&'static str, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("upstream", format!("TLS setup failed: {e}")))?;
        let builder = if config.danger_accept_invalid_upstream_certificates {
            tracing::warn!(upstream = %config.upstream, "proxy: danger_accept_invalid_upstream_certificates is set: the upstream's certificate is NOT verified; anyone on the path can read and change the calls");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            builder.with_root_certificates(root_store(config.upstream_ca_file.as_deref())?)
        };
        let mut base = match (
            &config.upstream_client_cert_file,
            &config.upstream_client_key_file,
        ) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert, "upstream_client_cert_file")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    (
                        "upstream_client_key_file",
                        format!("cannot read a private key from {}: {e}", key.display()),
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    (
                        "upstream_client_cert_file",
                        format!("the client certificate and key do not fit together: {e}"),
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) | (None, Some(_)) => {
                return Err((
                    "upstream_client_cert_file",
                    "`upstream_client_cert_file` and `upstream_client_key_file` go together"
                        .to_string(),
                ))
            }
        };
        // One session cache for the three offers (the default cache is per config).
        base.resumption = rustls::client::Resumption::in_memory_sessions(1024);
        let with_alpn = |protocols: &[&[u8]]| {
            let mut config = base.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        };
        Ok(Self {
            server_name,
            http1: with_alpn(&[b"http/1.1"]),
            negotiate: with_alpn(&[b"h2", b"http/1.1"]),
            http2: with_alpn(&[b"h2"]),
            timeout: config.tls_handshake_timeout.0,
        })
    }
}

fn read_certificates(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            (
                key,
                format!("cannot read PEM certificates from {}: {e}", path.display()),
            )
        })?;
    if certificates.is_empty() {
        return Err((key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certificates)
}

/// The roots an upstream's certificate is checked against: only the CA file's when one is
/// given, else the platform's, else (a minimal container without a CA bundle) Mozilla's.
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, (&'static str, String)> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        for certificate in read_certificates(path, "upstream_ca_file")? {
            roots.add(certificate).map_err(|e| {
                (
                    "upstream_ca_file",
                    format!("{} holds a certificate rustls refuses: {e}", path.display()),
                )
            })?;
        }
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!(errors = ?native.errors, "proxy: no root certificates found on this system; using Mozilla's bundled roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(roots)
}

/// `danger_accept_invalid_upstream_certificates`: any certificate is accepted, its signature
/// over the handshake still checked (so the connection is encrypted to whoever holds it).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to the upstream, plain or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// The TLS handshake chose HTTP/2.
    pub fn negotiated_h2(&self) -> bool {
        match self {
            UpstreamStream::Plain(_) => false,
            UpstreamStream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl IdleConnection for UpstreamStream {
    /// An idle connection has nothing to read: readable means the upstream closed it (or sent
    /// what no request asked for). For TLS, a read that rustls answers from what it has
    /// (session tickets are handled inside it) or that would block tells it; the read registers
    /// no waker that matters (a later read replaces it).
    fn is_closed(&mut self) -> bool {
        match self {
            UpstreamStream::Plain(stream) => stream.is_closed(),
            UpstreamStream::Tls(tls) => {
                let mut byte = [0u8; 1];
                let mut buffer = ReadBuf::new(&mut byte);
                let mut context = Context::from_waker(Waker::noop());
                !matches!(
                    Pin::new(tls.as_mut()).poll_read(&mut context, &mut buffer),
                    Poll::Pending
                )
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(stream) => stream.is_write_vectored(),
            UpstreamStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

/// The shared upstream pool's connector (hyper's client): every connection goes to the one
/// upstream, whatever the request's URI, offering the protocols the upstream may speak.
#[derive(Clone)]
pub struct PoolConnector(pub Arc<Upstream>);

impl tower_service::Service<Uri> for PoolConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let upstream = self.0.clone();
        Box::pin(async move {
            let alpn = upstream.pool_alpn();
            upstream.connect(alpn).await.map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ProxyConfig {
        toml::from_str(text).expect("a proxy config")
    }

    fn upstream(text: &str) -> Result<Upstream, String> {
        Upstream::new(&config(&format!("upstream = {text:?}"))).map_err(|(_, message)| message)
    }

    fn refusal(text: &str) -> String {
        match upstream(text) {
            Ok(_) => panic!("{text} was accepted"),
            Err(message) => message,
        }
    }

    #[test]
    fn addresses_take_the_schemes_port_and_keep_the_base_path() {
        let plain = upstream("http://127.0.0.1:8002").unwrap();
        assert!(!plain.https);
        assert_eq!(plain.address, "127.0.0.1:8002");
        assert_eq!(plain.base_path, "");
        assert_eq!(plain.speaks(), Speaks::Http1);
        let tls = upstream("https://api.example.com/v1/").unwrap();
        assert!(tls.https);
        assert_eq!(tls.authority, "api.example.com");
        assert_eq!(tls.address, "api.example.com:443");
        assert_eq!(tls.base_path, "/v1");
        assert_eq!(tls.speaks(), Speaks::Unknown);
        assert_eq!(tls.pool_alpn(), Alpn::Negotiate);
        let ipv6 = upstream("https://[::1]:8443").unwrap();
        assert_eq!(ipv6.address, "[::1]:8443");
        assert_eq!(upstream("http://models").unwrap().address, "models:80");
    }

    #[test]
    fn bad_upstreams_are_refused_with_the_reason() {
        assert!(refusal("ftp://x").contains("http:// or https://"));
        assert!(refusal("localhost:80").contains("scheme"));
        assert!(refusal("https://user:pw@api.example.com").contains("credentials"));
        let error = Upstream::new(&config(
            "upstream = \"http://127.0.0.1:1\"\nupstream_ca_file = \"/ca.pem\"",
        ))
        .map_err(|(key, _)| key)
        .err();
        assert_eq!(error, Some("upstream_ca_file"));
        let Err(missing) = Upstream::new(&config(
            "upstream = \"https://x.example\"\nupstream_ca_file = \"/nonexistent/ca.pem\"",
        )) else {
            panic!("a missing CA file was accepted");
        };
        assert_eq!(missing.0, "upstream_ca_file");
        assert!(missing.1.contains("/nonexistent/ca.pem"), "{}", missing.1);
    }

    #[test]
    fn the_configured_protocol_decides_over_tls_and_auto_learns_it() {
        let forced = Upstream::new(&config(
            "upstream = \"https://x.example\"\nupstream_protocol = \"http1\"",
        ))
        .unwrap();
        assert_eq!(forced.speaks(), Speaks::Http1);
        let h2 = Upstream::new(&config(
            "upstream = \"https://x.example\"\nupstream_protocol = \"http2\"",
        ))
        .unwrap();
        assert_eq!(h2.speaks(), Speaks::Http2);
        assert_eq!(h2.pool_alpn(), Alpn::Http2);
        let auto = upstream("https://x.example").unwrap();
        auto.learnt.store(LEARNT_HTTP2, Ordering::Relaxed);
        assert_eq!(auto.speaks(), Speaks::Http2);
        auto.learnt.store(LEARNT_HTTP1, Ordering::Relaxed);
        assert_eq!(auto.speaks(), Speaks::Http1);
    }
}
