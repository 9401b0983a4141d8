//! Finds where a chunked message body (RFC 9112 §7.1) ends, and which of its bytes are data,
//! as the bytes stream past: the direct path forwards the body's bytes unchanged and only needs
//! to know where the message ends and what its content is (for the request's size and model
//! prefix, and for the response observer).
//!
//! Every line of the framing must end in CRLF. RFC 9112 lets a recipient accept a bare LF, but
//! the direct path forwards the body's bytes unchanged, so a lenient reading here could end the
//! body where a stricter upstream does not: the disagreement request smuggling is made of.

use std::ops::Range;

/// A chunk size line longer than this (size, extensions and all) is refused.
const MAX_SIZE_LINE: usize = 4096;
/// Trailer section bytes allowed after the last chunk (hyper's limit).
const MAX_TRAILERS: usize = 16 * 1024;
/// Trailer fields allowed (hyper's limit).
const MAX_TRAILER_FIELDS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    SizeLine,
    #[error("chunk size too large")]
    SizeOverflow,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("trailer section too large")]
    Trailers,
    #[error("invalid trailer field")]
    TrailerField,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` seen so far.
    Size {
        digits: u8,
    },
    /// Whitespace after the size: more of it, `;` or the line's end may follow.
    SizeWhitespace,
    /// After a `;`: extensions up to the line's end.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or the empty line that ends the message.
    TrailerStart,
    TrailerLine,
    /// Expecting the LF that ends a trailer field line.
    TrailerLf,
    EndLf,
    Done,
}

/// The scanner of one chunked body.
#[derive(Debug)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    line_bytes: usize,
    trailer_bytes: usize,
    /// The trailer section, kept (when there is one) to check it is made of valid fields.
    trailers: Vec<u8>,
}

/// What one call to [`ChunkedScanner::scan`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of the input that belong to this body (all of it unless the body ended inside).
    pub consumed: usize,
    /// The body has ended (at `consumed`).
    pub done: bool,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line_bytes: 0,
            trailer_bytes: 0,
            trailers: Vec::new(),
        }
    }

    /// Scans `input`, the body's next bytes, calling `data` with the ranges of `input` that
    /// are chunk data.
    pub fn scan(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<Scanned, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            match self.state {
                State::Size { digits } => {
                    self.line_bytes += 1;
                    if let Some(value) = hex_value(byte) {
                        if digits >= 15 {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size = self.size * 16 + u64::from(value);
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError::SizeLine);
                    } else {
                        match byte {
                            b'\r' => self.state = State::SizeLf,
                            b';' => self.state = State::Extension,
                            b' ' | b'\t' => self.state = State::SizeWhitespace,
                            _ => return Err(ChunkError::SizeLine),
                        }
                    }
                    at += 1;
                }
                State::SizeWhitespace => {
                    self.line_bytes += 1;
                    if self.line_bytes > MAX_SIZE_LINE {
                        return Err(ChunkError::SizeLine);
                    }
                    match byte {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::Extension,
                        b' ' | b'\t' => {}
                        _ => return Err(ChunkError::SizeLine),
                    }
                    at += 1;
                }
                State::Extension => {
                    self.line_bytes += 1;
                    if self.line_bytes > MAX_SIZE_LINE {
                        return Err(ChunkError::SizeLine);
                    }
                    match byte {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' | 0 => return Err(ChunkError::SizeLine),
                        _ => {}
                    }
                    at += 1;
                }
                State::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::SizeLine);
                    }
                    self.end_size_line();
                    at += 1;
                }
                State::Data { remaining } => {
                    let available = (input.len() - at) as u64;
                    let take = remaining.min(available) as usize;
                    data(at..at + take);
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    };
                }
                State::DataCr => {
                    match byte {
                        b'\r' => self.state = State::DataLf,
                        _ => return Err(ChunkError::DataEnd),
                    }
                    at += 1;
                }
                State::DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::DataEnd);
                    }
                    self.start_size_line();
                    at += 1;
                }
                State::TrailerStart => {
                    self.count_trailer(byte)?;
                    match byte {
                        b'\r' => self.state = State::EndLf,
                        b'\n' => return Err(ChunkError::Trailers),
                        _ => self.state = State::TrailerLine,
                    }
                    at += 1;
                }
                State::TrailerLine => {
                    self.count_trailer(byte)?;
                    match byte {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError::Trailers),
                        _ => {}
                    }
                    at += 1;
                }
                State::TrailerLf => {
                    self.count_trailer(byte)?;
                    if byte != b'\n' {
                        return Err(ChunkError::Trailers);
                    }
                    self.state = State::TrailerStart;
                    at += 1;
                }
                State::EndLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::Trailers);
                    }
                    self.check_trailers()?;
                    self.state = State::Done;
                    return Ok(Scanned {
                        consumed: at + 1,
                        done: true,
                    });
                }
                State::Done => {
                    return Ok(Scanned {
                        consumed: at,
                        done: true,
                    })
                }
            }
        }
        Ok(Scanned {
            consumed: input.len(),
            done: self.state == State::Done,
        })
    }

    fn start_size_line(&mut self) {
        self.state = State::Size { digits: 0 };
        self.size = 0;
        self.line_bytes = 0;
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data {
                remaining: self.size,
            }
        };
    }

    fn count_trailer(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(ChunkError::Trailers);
        }
        self.trailers.push(byte);
        Ok(())
    }

    /// The trailer section must be field lines hyper would read (a name of token characters,
    /// a colon, a value without control characters): what one HTTP/1.1 implementation
    /// refuses, the direct path does not forward to another (found by the `request-head` fuzz
    /// target; before, any line was let through).
    fn check_trailers(&mut self) -> Result<(), ChunkError> {
        // What was kept ends with the CR of the empty line that ends the section.
        if self.trailers.last() == Some(&b'\r') {
            self.trailers.pop();
        }
        if self.trailers.is_empty() {
            return Ok(());
        }
        self.trailers.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let valid = match httparse::parse_headers(&self.trailers, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => fields.iter().all(|field| {
                hyper::header::HeaderName::from_bytes(field.name.as_bytes()).is_ok()
                    && hyper::header::HeaderValue::from_bytes(field.value).is_ok()
            }),
            _ => false,
        };
        self.trailers = Vec::new();
        if valid {
            Ok(())
        } else {
            Err(ChunkError::TrailerField)
        }
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` split into pieces of `step` bytes; returns the data and where it ended.
    fn scan_in_pieces(body: &[u8], step: usize) -> Result<(Vec<u8>, Option<usize>), ChunkError> {
        let mut scanner = ChunkedScanner::new();
        let mut content = Vec::new();
        let mut offset = 0;
        for piece in body.chunks(step) {
            let scanned = scanner.scan(piece, |range| content.extend_from_slice(&piece[range]))?;
            if scanned.done {
                return Ok((content, Some(offset + scanned.consumed)));
            }
            offset += piece.len();
        }
        Ok((content, None))
    }

    #[test]
    fn data_and_the_end_are_found_whatever_the_pieces() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (content, end) = scan_in_pieces(body, step).unwrap();
            assert_eq!(content, b"hello, world", "step {step}");
            assert_eq!(end, Some(body.len() - 4), "step {step}");
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (content, end) = scan_in_pieces(b"A\r\n0123456789\r\n", 4).unwrap();
        assert_eq!(content, b"0123456789");
        assert_eq!(end, None);
    }

    #[test]
    fn upper_case_sizes_are_accepted_and_bare_line_feeds_are_not() {
        let (content, end) = scan_in_pieces(b"B\r\n0123456789a\r\n0\r\n\r\n", 3).unwrap();
        assert_eq!(content, b"0123456789a");
        assert_eq!(end, Some(21));
        for (body, error) in [
            (
                b"B\n0123456789a\r\n0\r\n\r\n".as_slice(),
                ChunkError::SizeLine,
            ),
            (b"5;ext\nhello\r\n0\r\n\r\n", ChunkError::SizeLine),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::DataEnd),
            (b"5\r\nhello\r\n0\r\n\n", ChunkError::Trailers),
            (b"0\r\nx-trailer: 1\n\r\n", ChunkError::Trailers),
            (b"0\r\nx-trailer: 1\rX\r\n\r\n", ChunkError::Trailers),
        ] {
            for step in [1, 3, 64] {
                assert_eq!(
                    scan_in_pieces(body, step).unwrap_err(),
                    error,
                    "{:?} in pieces of {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn size_lines_and_trailers_are_read_as_hyper_reads_them() {
        // Whitespace after the size may lead only to an extension or the line's end.
        let (content, end) = scan_in_pieces(b"3 \t;x=1\r\nabc\r\n0 \r\n\r\n", 2).unwrap();
        assert_eq!((content.as_slice(), end), (b"abc".as_slice(), Some(20)));
        assert_eq!(
            scan_in_pieces(b"0 HTTP/1.1\r\n\r\n", 4).unwrap_err(),
            ChunkError::SizeLine
        );
        // Trailer lines must be fields.
        let (_, end) = scan_in_pieces(b"0\r\nx-a: 1\r\nx-b:\t2 \r\n\r\n", 3).unwrap();
        assert_eq!(end, Some(22));
        for body in [
            b"0\r\nno colon\r\n\r\n".as_slice(),
            b"0\r\nx-a: 1\r\nbad name: 2\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nx-a: \x01\r\n\r\n",
        ] {
            for step in [1, 5, 64] {
                assert_eq!(
                    scan_in_pieces(body, step).unwrap_err(),
                    ChunkError::TrailerField,
                    "{:?} in pieces of {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        assert_eq!(
            scan_in_pieces(b"zz\r\n", 8).unwrap_err(),
            ChunkError::SizeLine
        );
        assert_eq!(
            scan_in_pieces(b"\r\n", 8).unwrap_err(),
            ChunkError::SizeLine
        );
        assert_eq!(
            scan_in_pieces(b"3\r\nabcX", 8).unwrap_err(),
            ChunkError::DataEnd
        );
        assert_eq!(
            scan_in_pieces(b"ffffffffffffffff1\r\n", 8).unwrap_err(),
            ChunkError::SizeOverflow
        );
        let long_extension = [b"1;".as_slice(), &[b'x'; MAX_SIZE_LINE], b"\r\n"].concat();
        assert_eq!(
            scan_in_pieces(&long_extension, 64).unwrap_err(),
            ChunkError::SizeLine
        );
    }
}
