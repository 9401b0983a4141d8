//! hyper's own answers to requests it cannot parse — 400, 414 and 431 with an empty body,
//! written before any handler runs — turned into the proxy's JSON error answers, so every
//! error the proxy answers itself has the same body shape on both forwarding paths.
//!
//! hyper offers no hook for those answers, so the client connection's IO is wrapped: a write
//! that is exactly such an answer (a complete HTTP/1.1 head with status 400, 414 or 431,
//! `content-length: 0` and nothing but `date` and `connection` besides) and that no handler's
//! response can have produced (no request reached a handler since the previous write) is
//! replaced by the JSON answer. hyper writes such an answer only once the previous response is
//! fully flushed, as the last bytes of the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::server::json_error_body;

/// Longest write inspected: hyper's answers are well under it.
const MAX_REFUSAL_HEAD: usize = 512;

/// What a client connection's handlers and its IO share.
#[derive(Default)]
pub struct RefusalCounters {
    /// Requests that reached a handler.
    handled: AtomicU64,
    /// Bytes of the JSON body written in place of hyper's answer (0 when none was).
    answered_body_bytes: AtomicU64,
}

impl RefusalCounters {
    /// Called by the service for every request hyper hands it.
    pub fn request_handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// The length of the JSON body that replaced hyper's answer.
    pub fn answered_body_bytes(&self) -> u64 {
        self.answered_body_bytes.load(Ordering::Relaxed)
    }
}

/// A client connection's IO with hyper's empty refusals replaced by JSON ones.
pub struct JsonRefusals<I> {
    inner: I,
    counters: Arc<RefusalCounters>,
    /// `handled` at the previous write.
    handled_at_last_write: u64,
    /// The answer being written in place of one of hyper's, and how long hyper's was.
    replacement: Option<Replacement>,
}

struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    replaced_len: usize,
}

impl<I> JsonRefusals<I> {
    pub fn new(inner: I, counters: Arc<RefusalCounters>) -> Self {
        Self {
            inner,
            counters,
            handled_at_last_write: 0,
            replacement: None,
        }
    }

    /// The replacement for `bytes` when they are one of hyper's refusals.
    fn replacement_for(&mut self, bytes: &[u8]) -> Option<Replacement> {
        let handled = self.counters.handled.load(Ordering::Relaxed);
        let after_a_handler = handled != self.handled_at_last_write;
        self.handled_at_last_write = handled;
        if after_a_handler {
            return None;
        }
        let answer = json_answer(bytes)?;
        let body_len = answer.len() - answer_head_len(&answer);
        self.counters
            .answered_body_bytes
            .store(body_len as u64, Ordering::Relaxed);
        Some(Replacement {
            bytes: answer,
            written: 0,
            replaced_len: bytes.len(),
        })
    }
}

impl<I: AsyncWrite + Unpin> JsonRefusals<I> {
    /// Writes the pending replacement. Once it is out, a write (`offered` the length hyper
    /// offers again) is answered with the length of what it replaced and the replacement is
    /// done; a flush or shutdown (`offered` `None`) leaves that answer to hyper's next write.
    fn poll_replacement(
        &mut self,
        cx: &mut Context<'_>,
        offered: Option<usize>,
    ) -> Poll<io::Result<usize>> {
        let Some(replacement) = self.replacement.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while replacement.written < replacement.bytes.len() {
            let n =
                ready!(Pin::new(&mut self.inner)
                    .poll_write(cx, &replacement.bytes[replacement.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            replacement.written += n;
        }
        let Some(offered) = offered else {
            return Poll::Ready(Ok(0));
        };
        let replaced = replacement.replaced_len.min(offered);
        self.replacement = None;
        Poll::Ready(Ok(replaced))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for JsonRefusals<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_none() && buf.len() <= MAX_REFUSAL_HEAD {
            this.replacement = this.replacement_for(buf);
        } else if this.replacement.is_none() {
            this.handled_at_last_write = this.counters.handled.load(Ordering::Relaxed);
        }
        if this.replacement.is_some() {
            return this.poll_replacement(cx, Some(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.replacement.is_none() && total <= MAX_REFUSAL_HEAD {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            this.replacement = this.replacement_for(&joined);
        } else if this.replacement.is_none() {
            this.handled_at_last_write = this.counters.handled.load(Ordering::Relaxed);
        }
        if this.replacement.is_some() {
            return this.poll_replacement(cx, Some(total));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacement.is_some() {
            ready!(self.poll_replacement(cx, None))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacement.is_some() {
            ready!(self.poll_replacement(cx, None))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The JSON answer for `bytes` when they are one of hyper's refusals, keeping its `date`.
fn json_answer(bytes: &[u8]) -> Option<Vec<u8>> {
    // Most small writes are a streamed body's chunks: one comparison rules them out.
    if !bytes.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 4];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(bytes).ok()? else {
        return None;
    };
    if head_len != bytes.len() || response.version != Some(1) {
        return None;
    }
    let (reason, message) = match response.code? {
        400 => ("Bad Request", "the request head is invalid"),
        414 => (
            "URI Too Long",
            "the request target is longer than the proxy accepts",
        ),
        431 => (
            "Request Header Fields Too Large",
            "the request head is larger than the proxy accepts",
        ),
        _ => return None,
    };
    let mut date = None;
    let mut empty_body = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            empty_body = header.value == b"0";
        } else if header.name.eq_ignore_ascii_case("date") {
            date = Some(header.value);
        } else if !header.name.eq_ignore_ascii_case("connection") {
            return None;
        }
    }
    if !empty_body {
        return None;
    }
    let code = response.code?;
    let body = json_error_body("bad_request", message);
    let mut answer = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    )
    .into_bytes();
    if let Some(date) = date {
        answer.extend_from_slice(b"date: ");
        answer.extend_from_slice(date);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"\r\n");
    answer.extend_from_slice(body.as_bytes());
    Some(answer)
}

/// Where the head of an answer built by [`json_answer`] ends.
fn answer_head_len(answer: &[u8]) -> usize {
    answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |at| at + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 18:00:00 GMT\r\n\r\n";

    async fn written(writes: &[&[u8]], handled_before: &[bool]) -> Vec<u8> {
        let counters = Arc::new(RefusalCounters::default());
        let mut io = JsonRefusals::new(Vec::new(), counters.clone());
        for (bytes, handled) in writes.iter().zip(handled_before) {
            if *handled {
                counters.request_handled();
            }
            io.write_all(bytes).await.unwrap();
        }
        io.flush().await.unwrap();
        io.inner
    }

    #[tokio::test]
    async fn hyper_s_refusal_becomes_the_json_answer_with_its_date() {
        let out = String::from_utf8(written(&[HYPER_431], &[false]).await).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(out.contains("content-type: application/json\r\n"), "{out}");
        assert!(
            out.contains("date: Thu, 03 Dec 2026 18:00:00 GMT\r\n"),
            "{out}"
        );
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["error"]["type"], "bad_request");
        assert_eq!(value["error"]["source"], "proxy");
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[tokio::test]
    async fn a_handler_s_response_is_never_replaced() {
        // An upstream's own empty 400, forwarded after a handler ran: byte for byte.
        let upstream_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let out = written(&[upstream_400], &[true]).await;
        assert_eq!(out, upstream_400);
    }

    #[tokio::test]
    async fn only_an_exact_refusal_is_replaced() {
        for bytes in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-other: 1\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"some body bytes",
        ] {
            assert_eq!(written(&[bytes], &[false]).await, bytes);
        }
    }

    #[tokio::test]
    async fn a_refusal_after_a_finished_response_is_replaced() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let out = written(&[response, b"ok", HYPER_431], &[true, false, false]).await;
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 431"),
            "{out}"
        );
        assert!(out.contains("\"source\":\"proxy\""), "{out}");
    }
}
