//! HTTPS for the proxy's clients (`tls_cert_file` / `tls_key_file`): a rustls server whose
//! certificate is read again on SIGHUP and whenever either file changes (checked every few
//! seconds), so a renewed certificate is served from the next handshake on while connections
//! already open keep theirs. A file that fails to load keeps the certificate in use and says
//! why in the log. Clients choose HTTP/2 or HTTP/1.1 by ALPN; hyper serves these connections
//! (the direct path serves cleartext clients only).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for a change.
const POLL: Duration = Duration::from_secs(5);

/// The listener's certificate, replaceable while connections are served.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// TLS for the proxy's listener.
pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl ListenerTls {
    /// Reads the certificate chain and key; the error names the file and what is wrong.
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Self, String> {
        let key = load(cert_file, key_file)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        })
    }

    /// Reads the files again; on success new handshakes use the new certificate.
    pub fn reload(&self) -> Result<(), String> {
        let key = load(&self.cert_file, &self.key_file)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// Reloads on SIGHUP and when a file's modification time changes, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let modified = |tls: &ListenerTls| (mtime(&tls.cert_file), mtime(&tls.key_file));
        let mut seen = modified(&self);
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut polls = tokio::time::interval(POLL);
        polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = polls.tick() => {
                    let now = modified(&self);
                    if now == seen { continue; }
                    seen = now;
                    "a certificate file changed"
                }
            };
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.cert_file.display(), reason = why, "proxy: listener certificate reloaded")
                }
                Err(error) => {
                    tracing::error!(%error, reason = why, "proxy: the listener certificate could not be reloaded; the previous one is still served")
                }
            }
        }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls_cert_file {}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert_file {} holds no PEM certificate",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls_key_file {}: {e}", key_file.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "tls_cert_file {} and tls_key_file {} do not fit together: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(certified)
}
