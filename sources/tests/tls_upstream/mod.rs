//! A throwaway certificate authority, and an HTTPS model API on loopback that answers like the
//! providers do (OpenAI chat, streaming or not; Anthropic Messages and Gemini streams),
//! compressing its bodies when asked, and recording what it sent: the hash of every body's
//! bytes as they left it, the protocol each request came in, and how many TLS handshakes it
//! served.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A CA that signs certificates for the tests, with its files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        Self::named("pipeline test CA")
    }

    /// A CA with its own name (two CAs of one name look like one to a verifier).
    pub fn named(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Self { dir, issuer }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names`, valid from yesterday, or expired when `expired`, in files
    /// named after `label`.
    pub fn issue(&self, label: &str, names: &[&str], expired: bool) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: self.dir.path().join(format!("{label}.pem")),
            key: self.dir.path().join(format!("{label}.key")),
        };
        write_replacing(&issued.cert, cert.pem().as_bytes());
        write_replacing(&issued.key, key.serialize_pem().as_bytes());
        issued
    }
}

/// Writes `path` whole, by a rename, so a reader never sees half a file.
fn write_replacing(path: &Path, bytes: &[u8]) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(partial, path).unwrap();
}

/// A response body the upstream sent, as it left it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub path: String,
    pub version: hyper::Version,
    pub encoding: Option<String>,
    pub sha256: String,
    pub bytes: usize,
}

/// The HTTPS model API.
pub struct TlsUpstream {
    pub port: u16,
    pub handshakes: Arc<AtomicUsize>,
    pub sent: Arc<Mutex<Vec<Sent>>>,
}

impl TlsUpstream {
    /// Serves with `cert`, offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub async fn start(cert: &Issued, alpn: &[&[u8]]) -> Self {
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(&cert.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let (count, record) = (handshakes.clone(), sent.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, count, record) = (acceptor.clone(), count.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |request| answer(request, record.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            handshakes,
            sent,
        }
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

type Body = Either<Full<Bytes>, StreamBody<Frames>>;

/// Body frames fed from a channel.
pub struct Frames(mpsc::Receiver<Bytes>);

impl futures::Stream for Frames {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The encoding to answer with: `?encoding=` wins, else gzip when the client accepts it.
fn chosen_encoding(request: &Request<Incoming>) -> Option<String> {
    if let Some(forced) = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("encoding=")))
    {
        return (forced != "identity").then(|| forced.to_string());
    }
    let accepts = request
        .headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accepts.contains("gzip").then(|| "gzip".to_string())
}

/// A streaming compressor: each frame flushed so the client can read it at once.
enum Compressor {
    Identity,
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    fn new(encoding: Option<&str>) -> Self {
        match encoding {
            None => Compressor::Identity,
            Some("gzip") => Compressor::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::default(),
            )),
            Some("deflate") => Compressor::Deflate(flate2::write::ZlibEncoder::new(
                Vec::new(),
                flate2::Compression::default(),
            )),
            Some("br") => Compressor::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                5,
                22,
            ))),
            Some("zstd") => {
                Compressor::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap())
            }
            Some(other) => panic!("the test upstream does not compress with {other}"),
        }
    }

    /// Compresses `data` and returns what is ready to send.
    fn frame(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            Compressor::Identity => data.to_vec(),
            Compressor::Gzip(e) => {
                e.write_all(data).unwrap();
                e.flush().unwrap();
                std::mem::take(e.get_mut())
            }
            Compressor::Deflate(e) => {
                e.write_all(data).unwrap();
                e.flush().unwrap();
                std::mem::take(e.get_mut())
            }
            Compressor::Brotli(e) => {
                e.write_all(data).unwrap();
                e.flush().unwrap();
                std::mem::take(e.get_mut())
            }
            Compressor::Zstd(e) => {
                e.write_all(data).unwrap();
                e.flush().unwrap();
                std::mem::take(e.get_mut())
            }
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Compressor::Identity => Vec::new(),
            Compressor::Gzip(e) => e.finish().unwrap(),
            Compressor::Deflate(e) => e.finish().unwrap(),
            Compressor::Brotli(mut e) => {
                e.flush().unwrap();
                e.into_inner()
            }
            Compressor::Zstd(e) => e.finish().unwrap(),
        }
    }
}

fn chat_json(model: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how can I help?"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                  "prompt_tokens_details": {"cached_tokens": 8},
                  "completion_tokens_details": {"reasoning_tokens": 3}}
    })
    .to_string()
}

fn openai_frames(model: &str) -> Vec<String> {
    let chunk = |delta: serde_json::Value| {
        serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    };
    let mut frames = vec![
        chunk(serde_json::json!({"role": "assistant", "content": ""})),
        chunk(serde_json::json!({"content": "Hel"})),
        chunk(serde_json::json!({"content": "lo"})),
        serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}),
    ]
    .into_iter()
    .map(|f| format!("data: {f}\n\n"))
    .collect::<Vec<_>>();
    frames.push("data: [DONE]\n\n".to_string());
    frames
}

fn anthropic_frames() -> Vec<String> {
    [
        ("message_start", r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4","usage":{"input_tokens":25,"cache_read_input_tokens":100,"cache_creation_input_tokens":0,"output_tokens":1}}}"#),
        ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
        ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#),
        ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
        ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ]
    .iter()
    .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
    .collect()
}

fn gemini_frames() -> Vec<String> {
    [
        r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":6,"candidatesTokenCount":1},"modelVersion":"gemini-2.0-flash"}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":6,"candidatesTokenCount":2,"thoughtsTokenCount":4,"totalTokenCount":12}}"#,
    ]
    .iter()
    .map(|data| format!("data: {data}\r\n\r\n"))
    .collect()
}

async fn answer(
    request: Request<Incoming>,
    sent: Arc<Mutex<Vec<Sent>>>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let version = request.version();
    let encoding = chosen_encoding(&request);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = json["model"].as_str().unwrap_or("unknown").to_string();
    let streaming = json["stream"].as_bool() == Some(true);
    let frames = match path.as_str() {
        "/v1/chat/completions" if streaming => Some(openai_frames(&model)),
        "/v1/messages" => Some(anthropic_frames()),
        p if p.ends_with(":streamGenerateContent") => Some(gemini_frames()),
        _ => None,
    };
    let record = move |bytes: &[u8], hasher: Sha256, encoding: &Option<String>| {
        sent.lock().unwrap().push(Sent {
            path: path.clone(),
            version,
            encoding: encoding.clone(),
            sha256: hex::encode(hasher.finalize()),
            bytes: bytes.len(),
        });
    };
    let mut compressor = Compressor::new(encoding.as_deref());
    let mut response = match frames {
        None => {
            let mut bytes = compressor.frame(chat_json(&model).as_bytes());
            bytes.extend(compressor.finish());
            let mut hasher = Sha256::new();
            hasher.update(&bytes);
            record(&bytes, hasher, &encoding);
            let mut response = Response::new(Either::Left(Full::new(Bytes::from(bytes))));
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            response
        }
        Some(frames) => {
            let (tx, rx) = mpsc::channel(8);
            let encoding_sent = encoding.clone();
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut total = Vec::new();
                for (i, frame) in frames.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(60)).await;
                    }
                    let bytes = compressor.frame(frame.as_bytes());
                    hasher.update(&bytes);
                    total.extend_from_slice(&bytes);
                    if tx.send(Bytes::from(bytes)).await.is_err() {
                        return;
                    }
                }
                let rest = compressor.finish();
                hasher.update(&rest);
                total.extend_from_slice(&rest);
                record(&total, hasher, &encoding_sent);
                let _ = tx.send(Bytes::from(rest)).await;
            });
            let mut response = Response::new(Either::Right(StreamBody::new(Frames(rx))));
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            response
        }
    };
    if let Some(encoding) = encoding {
        response
            .headers_mut()
            .insert("content-encoding", encoding.parse().unwrap());
    }
    Ok(response)
}
