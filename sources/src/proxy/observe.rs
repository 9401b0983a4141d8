//! Reads a model API's response as it streams past, without holding it back: for
//! `text/event-stream`, the time to the first chunk that carries generated content (not a role
//! or metadata frame), output tokens from the final `usage` object (else a count of content
//! chunks, marked as an estimate); for JSON, the `usage` object (`prompt_tokens` /
//! `completion_tokens` or `input_tokens` / `output_tokens`), found in a bounded tail of the
//! body so that memory stays flat whatever the response size.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use memchr::memmem::FinderRev;
use serde::Deserialize;

use super::model_json::{StreamFrame, Usage};

/// Longest SSE line kept; longer lines are skipped (they cannot be parsed within bounds).
const MAX_LINE: usize = 1 << 20;
/// Bytes of a JSON body's end kept to find its `usage` object.
const JSON_TAIL: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    EventStream,
    Json,
    Other,
}

impl BodyKind {
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let Some(content_type) = content_type.map(str::as_bytes) else {
            return BodyKind::Other;
        };
        let starts_with = |prefix: &str| {
            content_type
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        if starts_with("text/event-stream") {
            BodyKind::EventStream
        } else if starts_with("application/json")
            || content_type
                .windows(5)
                .any(|window| window.eq_ignore_ascii_case(b"+json"))
        {
            BodyKind::Json
        } else {
            BodyKind::Other
        }
    }
}

/// What was learned from a response body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub first_token: Option<Duration>,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub output_tokens_estimated: bool,
}

pub struct ResponseObserver {
    kind: BodyKind,
    line: Vec<u8>,
    skipping_line: bool,
    tail: Tail,
    content_chunks: u32,
    observed: Observed,
}

impl ResponseObserver {
    pub fn new(kind: BodyKind) -> Self {
        Self {
            kind,
            line: Vec::new(),
            skipping_line: false,
            tail: Tail::Empty,
            content_chunks: 0,
            observed: Observed::default(),
        }
    }

    /// Feeds the next chunk; `elapsed` is the time since the request started.
    pub fn feed(&mut self, chunk: &Bytes, elapsed: Duration) {
        match self.kind {
            BodyKind::EventStream => self.feed_stream(chunk, elapsed),
            BodyKind::Json => self.tail.push(chunk),
            BodyKind::Other => {}
        }
    }

    fn feed_stream(&mut self, chunk: &[u8], elapsed: Duration) {
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            let complete = piece.ends_with(b"\n");
            if !self.skipping_line {
                self.line.extend_from_slice(piece);
                if self.line.len() > MAX_LINE {
                    self.line.clear();
                    self.skipping_line = true;
                }
            }
            if complete {
                if !self.skipping_line {
                    let line = std::mem::take(&mut self.line);
                    self.stream_line(&line, elapsed);
                }
                self.skipping_line = false;
            }
        }
    }

    fn stream_line(&mut self, line: &[u8], elapsed: Duration) {
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        let Some(data) = text.trim().strip_prefix("data:") else {
            return;
        };
        let Some(frame) = StreamFrame::parse(data.trim()) else {
            return;
        };
        if frame.carries_content() {
            self.content_chunks += 1;
            self.observed.first_token.get_or_insert(elapsed);
        }
        if let Some(usage) = frame.usage() {
            usage.read_into(&mut self.observed);
        }
    }

    /// Ends the body; returns what was observed.
    pub fn finish(mut self) -> Observed {
        match self.kind {
            BodyKind::EventStream => {
                if !self.line.is_empty() && !self.skipping_line {
                    let line = std::mem::take(&mut self.line);
                    self.stream_line(&line, self.observed.first_token.unwrap_or_default());
                }
                if self.observed.output_tokens.is_none() && self.content_chunks > 0 {
                    self.observed.output_tokens = Some(self.content_chunks);
                    self.observed.output_tokens_estimated = true;
                }
            }
            BodyKind::Json => {
                if let Some(usage) = usage_in_tail(self.tail.as_slice()) {
                    usage.read_into(&mut self.observed);
                }
            }
            BodyKind::Other => {}
        }
        self.observed
    }
}

/// The end of a JSON body: its only chunk as received (no copy), or its last bytes.
enum Tail {
    Empty,
    Chunk(Bytes),
    Buffer(Vec<u8>),
}

impl Tail {
    fn push(&mut self, chunk: &Bytes) {
        match self {
            Tail::Empty => *self = Tail::Chunk(chunk.clone()),
            Tail::Chunk(first) => {
                let mut buffer = Vec::with_capacity(first.len() + chunk.len());
                buffer.extend_from_slice(first);
                buffer.extend_from_slice(chunk);
                *self = Tail::Buffer(buffer);
            }
            Tail::Buffer(buffer) => buffer.extend_from_slice(chunk),
        }
        if let Tail::Buffer(buffer) = self {
            if buffer.len() > 2 * JSON_TAIL {
                buffer.drain(..buffer.len() - JSON_TAIL);
            }
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Tail::Empty => &[],
            Tail::Chunk(chunk) => chunk,
            Tail::Buffer(buffer) => buffer,
        }
    }
}

/// The last `"usage": {...}` object in the tail of a JSON body.
fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    static FINDER: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(KEY));
    let tail = &tail[tail.len().saturating_sub(JSON_TAIL)..];
    let position = FINDER.rfind(tail)?;
    let object = tail[position + KEY.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    if !object.starts_with(b"{") {
        return None;
    }
    // The object alone: what follows it (the rest of the body) is never read.
    Usage::deserialize(&mut serde_json::Deserializer::from_slice(object)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn body_kinds_come_from_the_content_type_whatever_its_case_and_parameters() {
        let kind = BodyKind::from_content_type;
        assert_eq!(kind(Some("text/event-stream")), BodyKind::EventStream);
        assert_eq!(
            kind(Some("Text/Event-Stream; charset=utf-8")),
            BodyKind::EventStream
        );
        assert_eq!(kind(Some("application/json")), BodyKind::Json);
        assert_eq!(kind(Some("APPLICATION/JSON;charset=UTF-8")), BodyKind::Json);
        assert_eq!(kind(Some("application/vnd.api+JSON")), BodyKind::Json);
        assert_eq!(kind(Some("text/plain")), BodyKind::Other);
        assert_eq!(kind(Some("text")), BodyKind::Other);
        assert_eq!(kind(Some("")), BodyKind::Other);
        assert_eq!(kind(None), BodyKind::Other);
    }

    fn feed(observer: &mut ResponseObserver, chunk: &[u8], elapsed: Duration) {
        observer.feed(&Bytes::copy_from_slice(chunk), elapsed);
    }

    #[test]
    fn first_content_token_skips_role_frames_and_survives_split_chunks() {
        let mut observer = ResponseObserver::new(BodyKind::EventStream);
        feed(
            &mut observer,
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            5 * MS,
        );
        feed(
            &mut observer,
            b"data: {\"choices\":[{\"delta\":{\"con",
            10 * MS,
        );
        feed(&mut observer, b"tent\":\"Hi\"}}]}\n\n", 12 * MS);
        feed(&mut observer, b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n", 20 * MS);
        let observed = observer.finish();
        assert_eq!(observed.first_token, Some(12 * MS));
        assert_eq!(
            (observed.input_tokens, observed.output_tokens),
            (Some(7), Some(3))
        );
        assert!(!observed.output_tokens_estimated);
    }

    #[test]
    fn without_usage_content_chunks_are_counted_as_an_estimate() {
        let mut observer = ResponseObserver::new(BodyKind::EventStream);
        for i in 0..4 {
            feed(
                &mut observer,
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"w{i}\"}}}}]}}\n\n")
                    .as_bytes(),
                i * MS,
            );
        }
        let observed = observer.finish();
        assert_eq!(observed.output_tokens, Some(4));
        assert!(observed.output_tokens_estimated);
        assert_eq!(observed.first_token, Some(Duration::ZERO));
    }

    #[test]
    fn anthropic_style_streams_are_understood() {
        let mut observer = ResponseObserver::new(BodyKind::EventStream);
        feed(&mut observer, b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n", MS);
        feed(&mut observer, b"data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n", 9 * MS);
        feed(
            &mut observer,
            b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            30 * MS,
        );
        let observed = observer.finish();
        assert_eq!(observed.first_token, Some(9 * MS));
        assert_eq!(
            (observed.input_tokens, observed.output_tokens),
            (Some(25), Some(15))
        );
    }

    #[test]
    fn json_usage_is_read_from_the_tail_of_any_size_of_body() {
        let mut observer = ResponseObserver::new(BodyKind::Json);
        feed(
            &mut observer,
            b"{\"choices\":[{\"message\":{\"content\":\"",
            MS,
        );
        let filler = vec![b'x'; 100_000];
        feed(&mut observer, &filler, MS);
        feed(
            &mut observer,
            b"\"}}],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":22,\"total_tokens\":33}}",
            MS,
        );
        let observed = observer.finish();
        assert_eq!(
            (observed.input_tokens, observed.output_tokens),
            (Some(11), Some(22))
        );
        assert_eq!(observed.first_token, None);
    }

    #[test]
    fn json_usage_in_one_chunk_takes_either_spelling_and_skips_what_is_not_a_count() {
        let observe = |body: &[u8]| {
            let mut observer = ResponseObserver::new(BodyKind::Json);
            feed(&mut observer, body, MS);
            let observed = observer.finish();
            (observed.input_tokens, observed.output_tokens)
        };
        assert_eq!(
            observe(br#"{"usage": {"input_tokens": 5, "output_tokens": 9, "cache": {"a": [1]}}}"#),
            (Some(5), Some(9))
        );
        assert_eq!(
            observe(
                br#"{"usage":{"prompt_tokens":"many","input_tokens":4,"completion_tokens":2.5}}"#
            ),
            (Some(4), None)
        );
        assert_eq!(
            observe(
                br#"{"usage":{"prompt_tokens":-3,"completion_tokens":{"n":[1,{"m":2}]},"output_tokens":7,"prompt_tokens_details":{"cached_tokens":1}},"x":1}"#
            ),
            (None, Some(7))
        );
        assert_eq!(
            observe(
                br#"{"usage":{"prompt_tokens":null,"input_tokens":true,"completion_tokens":[3]}}"#
            ),
            (None, None)
        );
        assert_eq!(observe(br#"{"usage": {"prompt_tokens": 3"#), (None, None));
        assert_eq!(observe(br#"{"usage": [1, 2, 3, 4]}"#), (None, None));
        assert_eq!(observe(br#"{"usage": null}"#), (None, None));
        assert_eq!(observe(b"\xff\xfe not json"), (None, None));
    }
}
