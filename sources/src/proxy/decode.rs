//! Decoding of compressed bodies on the observer's side only (`Content-Encoding: gzip`,
//! `deflate`, `br`, `zstd`): the bytes forwarded are never touched; a copy of each chunk is
//! decoded as it passes, and what it decodes to is handed to the observer, which keeps only
//! its bounded tail or current line. Decoding stops at `limit` decoded bytes per call (a zip
//! bomb, or just a very large body, costs at most that much CPU): beyond it, or on a stream
//! that does not decode, the call's usage is unknown and the caller counts it.

use std::io::{self, Write};

/// The `Content-Encoding` of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
    /// One this proxy does not decode, or several layered.
    Unsupported,
}

impl Encoding {
    /// The encoding a `Content-Encoding` header names (none: identity).
    pub fn from_header(value: Option<&str>) -> Self {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Encoding::Identity;
        };
        if value.contains(',') {
            // Layered encodings (`gzip, br`) are rare enough not to be worth decoding.
            let mut layers = value.split(',').map(str::trim).filter(|l| !l.is_empty());
            return match (layers.next(), layers.next()) {
                (Some(only), None) => Self::from_header(Some(only)),
                _ => Encoding::Unsupported,
            };
        }
        match value.to_ascii_lowercase().as_str() {
            "identity" => Encoding::Identity,
            "gzip" | "x-gzip" => Encoding::Gzip,
            "deflate" => Encoding::Deflate,
            "br" => Encoding::Brotli,
            "zstd" => Encoding::Zstd,
            _ => Encoding::Unsupported,
        }
    }
}

/// Why a body's decoded content could not all be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecoded {
    /// More than the limit of decoded bytes.
    OverLimit,
    /// Not valid for its encoding, or an encoding this proxy does not decode.
    Invalid,
}

/// The largest zstd window accepted (8 MiB, zstd's default for streaming); a frame asking
/// for more is refused rather than allocated.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decoded bytes collected between two chunks.
#[derive(Default)]
struct Collected(Vec<u8>);

impl Write for Collected {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Gzip(flate2::write::GzDecoder<Collected>),
    Zlib(flate2::write::ZlibDecoder<Collected>),
    RawDeflate(flate2::write::DeflateDecoder<Collected>),
    /// `deflate` before its first byte says whether it is zlib-wrapped (as RFC 9110 says) or
    /// raw (as some servers send it).
    DeflateUndecided,
    Brotli(Box<brotli::DecompressorWriter<Collected>>),
    Zstd(zstd::stream::write::Decoder<'static, Collected>),
}

/// Decodes one body, chunk by chunk.
pub struct Decoder {
    inner: Inner,
    limit: usize,
    decoded: usize,
    failed: Option<Undecoded>,
}

impl Decoder {
    /// A decoder for `encoding`; `None` for identity. An unsupported encoding gives a decoder
    /// that has already failed, so the call's usage is reported unknown.
    pub fn new(encoding: Encoding, limit: usize) -> Option<Self> {
        let mut failed = None;
        let inner = match encoding {
            Encoding::Identity => return None,
            Encoding::Gzip => Inner::Gzip(flate2::write::GzDecoder::new(Collected::default())),
            Encoding::Deflate => Inner::DeflateUndecided,
            Encoding::Brotli => Inner::Brotli(Box::new(brotli::DecompressorWriter::new(
                Collected::default(),
                4096,
            ))),
            Encoding::Zstd => match zstd::stream::write::Decoder::new(Collected::default()) {
                Ok(mut decoder) => {
                    if decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).is_err() {
                        failed = Some(Undecoded::Invalid);
                    }
                    Inner::Zstd(decoder)
                }
                Err(_) => {
                    failed = Some(Undecoded::Invalid);
                    Inner::DeflateUndecided
                }
            },
            Encoding::Unsupported => {
                failed = Some(Undecoded::Invalid);
                Inner::DeflateUndecided
            }
        };
        Some(Self {
            inner,
            limit,
            decoded: 0,
            failed,
        })
    }

    /// Why the body could not all be decoded, once it could not.
    pub fn failure(&self) -> Option<Undecoded> {
        self.failed
    }

    /// Decodes the next compressed chunk and hands what it decodes to to `sink`.
    pub fn feed(&mut self, chunk: &[u8], sink: impl FnMut(&[u8])) {
        if self.failed.is_some() || chunk.is_empty() {
            return;
        }
        if let Inner::DeflateUndecided = self.inner {
            self.inner = if looks_like_zlib(chunk) {
                Inner::Zlib(flate2::write::ZlibDecoder::new(Collected::default()))
            } else {
                Inner::RawDeflate(flate2::write::DeflateDecoder::new(Collected::default()))
            };
        }
        let written = match &mut self.inner {
            Inner::Gzip(decoder) => decoder.write_all(chunk).and_then(|()| decoder.flush()),
            Inner::Zlib(decoder) => decoder.write_all(chunk).and_then(|()| decoder.flush()),
            Inner::RawDeflate(decoder) => decoder.write_all(chunk).and_then(|()| decoder.flush()),
            Inner::Brotli(decoder) => decoder.write_all(chunk).and_then(|()| decoder.flush()),
            Inner::Zstd(decoder) => decoder.write_all(chunk).and_then(|()| decoder.flush()),
            Inner::DeflateUndecided => Ok(()),
        };
        if written.is_err() {
            self.failed = Some(Undecoded::Invalid);
        }
        self.hand_over(sink);
    }

    /// Ends the body: what the decoder still holds goes to `sink`.
    pub fn finish(&mut self, sink: impl FnMut(&[u8])) {
        if self.failed.is_some() {
            return;
        }
        let finished = match &mut self.inner {
            Inner::Gzip(decoder) => decoder.try_finish(),
            Inner::Zlib(decoder) => decoder.try_finish(),
            Inner::RawDeflate(decoder) => decoder.try_finish(),
            // `close` and `do_finish` also hand over what the decoder still holds, and fail
            // on a stream that stopped short: `flush` did neither, so a truncated body's
            // usage could read differently depending on how its bytes arrived (found by the
            // `decoder` fuzz target).
            Inner::Brotli(decoder) => decoder.close(),
            Inner::Zstd(decoder) => decoder.do_finish(),
            Inner::DeflateUndecided => Ok(()),
        };
        if finished.is_err() {
            self.failed = Some(Undecoded::Invalid);
        }
        self.hand_over(sink);
    }

    /// Hands the bytes decoded so far to `sink`, as far as the limit allows.
    fn hand_over(&mut self, mut sink: impl FnMut(&[u8])) {
        let collected = match &mut self.inner {
            Inner::Gzip(decoder) => &mut decoder.get_mut().0,
            Inner::Zlib(decoder) => &mut decoder.get_mut().0,
            Inner::RawDeflate(decoder) => &mut decoder.get_mut().0,
            Inner::Brotli(decoder) => &mut decoder.get_mut().0,
            Inner::Zstd(decoder) => &mut decoder.get_mut().0,
            Inner::DeflateUndecided => return,
        };
        if collected.is_empty() {
            return;
        }
        let room = self.limit.saturating_sub(self.decoded);
        if collected.len() > room {
            self.failed = Some(Undecoded::OverLimit);
            collected.clear();
            collected.shrink_to_fit();
            return;
        }
        self.decoded += collected.len();
        sink(collected);
        collected.clear();
    }
}

/// A zlib header: compression method 8 with a window of at most 32 KiB, and a check value
/// that makes the first two bytes a multiple of 31 (RFC 1950).
fn looks_like_zlib(start: &[u8]) -> bool {
    match start {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        [cmf] => cmf & 0x0f == 8 && cmf >> 4 <= 7,
        [] => false,
    }
}

/// Decodes the start of a compressed request body, at most `limit` bytes of it (for the
/// `model` field; the prefix kept may end mid-stream, so a truncated stream is fine).
pub fn decode_prefix(encoding: Encoding, prefix: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut decoder = Decoder::new(encoding, usize::MAX)?;
    let mut decoded = Vec::new();
    for piece in prefix.chunks(4096) {
        decoder.feed(piece, |bytes| {
            let room = limit.saturating_sub(decoded.len());
            decoded.extend_from_slice(&bytes[..bytes.len().min(room)]);
        });
        if decoded.len() >= limit || decoder.failure().is_some() {
            break;
        }
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = br#"{"choices":[{"message":{"content":"hello"}}],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn encoded(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        match encoding {
            Encoding::Gzip => gzip(data),
            Encoding::Deflate => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(data).unwrap();
                encoder.finish().unwrap()
            }
            Encoding::Brotli => {
                let mut out = Vec::new();
                {
                    let mut encoder = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    encoder.write_all(data).unwrap();
                }
                out
            }
            Encoding::Zstd => zstd::encode_all(data, 3).unwrap(),
            _ => data.to_vec(),
        }
    }

    fn decode_in_pieces(
        encoding: Encoding,
        data: &[u8],
        piece: usize,
        limit: usize,
    ) -> (Vec<u8>, Option<Undecoded>) {
        let mut decoder = Decoder::new(encoding, limit).expect("a decoder");
        let mut out = Vec::new();
        for chunk in data.chunks(piece) {
            decoder.feed(chunk, |bytes| out.extend_from_slice(bytes));
        }
        decoder.finish(|bytes| out.extend_from_slice(bytes));
        (out, decoder.failure())
    }

    #[test]
    fn a_stream_that_stops_short_is_invalid_in_every_encoding() {
        let long = TEXT.repeat(200);
        for encoding in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Brotli,
            Encoding::Zstd,
        ] {
            let data = encoded(encoding, &long);
            let cut = &data[..data.len() - 3];
            for piece in [1, 100, cut.len()] {
                let (_, failure) = decode_in_pieces(encoding, cut, piece, 1 << 20);
                assert_eq!(
                    failure,
                    Some(Undecoded::Invalid),
                    "{encoding:?} cut short, in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn every_encoding_decodes_whatever_the_chunking() {
        for encoding in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Brotli,
            Encoding::Zstd,
        ] {
            let data = encoded(encoding, TEXT);
            for piece in [1, 7, 64, data.len()] {
                let (out, failure) = decode_in_pieces(encoding, &data, piece, 1 << 20);
                assert_eq!(failure, None, "{encoding:?} in pieces of {piece}");
                assert_eq!(out, TEXT, "{encoding:?} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn raw_deflate_is_recognised_beside_zlib() {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(TEXT).unwrap();
        let raw = encoder.finish().unwrap();
        let (out, failure) = decode_in_pieces(Encoding::Deflate, &raw, 5, 1 << 20);
        assert_eq!((out.as_slice(), failure), (TEXT, None));
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_invalid() {
        let bomb = gzip(&vec![b'a'; 50 << 20]);
        assert!(bomb.len() < 100_000, "a small body: {}", bomb.len());
        let (out, failure) = decode_in_pieces(Encoding::Gzip, &bomb, 16 * 1024, 1 << 20);
        assert_eq!(failure, Some(Undecoded::OverLimit));
        assert!(out.len() <= 1 << 20);
        let (_, failure) = decode_in_pieces(Encoding::Gzip, b"this is not gzip at all", 4, 1 << 20);
        assert_eq!(failure, Some(Undecoded::Invalid));
        let (_, failure) =
            decode_in_pieces(Encoding::Zstd, b"\x28\xb5\x2f\xfd garbage", 4, 1 << 20);
        assert_eq!(failure, Some(Undecoded::Invalid));
        assert_eq!(
            Decoder::new(Encoding::Unsupported, 10).unwrap().failure(),
            Some(Undecoded::Invalid)
        );
    }

    #[test]
    fn headers_name_their_encoding() {
        assert_eq!(Encoding::from_header(None), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("GZIP")), Encoding::Gzip);
        assert_eq!(Encoding::from_header(Some(" br ")), Encoding::Brotli);
        assert_eq!(Encoding::from_header(Some("zstd")), Encoding::Zstd);
        assert_eq!(Encoding::from_header(Some("deflate")), Encoding::Deflate);
        assert_eq!(
            Encoding::from_header(Some("gzip, br")),
            Encoding::Unsupported
        );
        assert_eq!(
            Encoding::from_header(Some("compress")),
            Encoding::Unsupported
        );
        assert_eq!(Encoding::from_header(Some("identity")), Encoding::Identity);
    }

    #[test]
    fn a_request_prefix_cut_short_still_decodes_its_start() {
        let body = format!(
            r#"{{"model": "gpt-4o", "messages": "{}"}}"#,
            "x".repeat(100_000)
        );
        let compressed = gzip(body.as_bytes());
        let prefix = &compressed[..compressed.len() / 3];
        let decoded = decode_prefix(Encoding::Gzip, prefix, 1024).unwrap();
        assert!(decoded.starts_with(br#"{"model": "gpt-4o""#));
        assert!(decoded.len() <= 1024);
    }
}
