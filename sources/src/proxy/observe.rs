//! Reads a model API's response as it streams past, without holding it back: for
//! `text/event-stream` and NDJSON (`application/x-ndjson`, Ollama's streams), the time to the
//! first frame that carries generated content (not a role or metadata frame) and the usage the
//! stream reports (else a count of content frames, marked as an estimate); for JSON, the usage
//! object found in a bounded tail of the body, so that memory stays flat whatever the response
//! size, and for a streamed JSON array (Gemini's `streamGenerateContent` without `alt=sse`) the
//! time to its first text. Compressed bodies are decoded on the way (see [`decode`](super::decode)),
//! up to a limit of decoded bytes per call; beyond it, or when the body does not decode, the
//! call's token counts are unknown and `usage_unknown` says why.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use memchr::memmem::{Finder, FinderRev};
use serde::Deserialize;

use super::decode::{Decoder, Encoding, Undecoded};
use super::model_json::{StreamFrame, Usage};

/// Longest stream line kept; longer lines are skipped (they cannot be parsed within bounds).
const MAX_LINE: usize = 1 << 20;
/// Bytes of a JSON body's end kept to find its usage.
const JSON_TAIL: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    EventStream,
    /// Newline-delimited JSON objects.
    NdJson,
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
        } else if starts_with("application/x-ndjson")
            || starts_with("application/ndjson")
            || starts_with("application/jsonl")
            || starts_with("application/json-seq")
        {
            BodyKind::NdJson
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
    pub cached_input_tokens: Option<u32>,
    pub reasoning_tokens: Option<u32>,
    /// The body could not all be decoded, so its usage is unknown.
    pub usage_unknown: Option<Undecoded>,
}

/// Reads one response body.
pub struct ResponseObserver {
    decoder: Option<Decoder>,
    scanner: Scanner,
}

impl ResponseObserver {
    /// An observer of a body of `kind`, sent with `encoding`; at most `limit` bytes of a
    /// compressed body are decoded.
    pub fn new(kind: BodyKind, encoding: Encoding, limit: usize) -> Self {
        let decoder = match kind {
            BodyKind::Other => None,
            _ => Decoder::new(encoding, limit),
        };
        Self {
            decoder,
            scanner: Scanner::new(kind),
        }
    }

    /// Watches a JSON body that streams generated text as a growing array (Gemini's
    /// `streamGenerateContent` without `alt=sse`) for its first text.
    pub fn json_stream(mut self) -> Self {
        if self.scanner.kind == BodyKind::Json {
            self.scanner.text_probe = Some(TextProbe::default());
        }
        self
    }

    /// Feeds the next chunk as received; `elapsed` is the time since the request started.
    pub fn feed(&mut self, chunk: &Bytes, elapsed: Duration) {
        let scanner = &mut self.scanner;
        match &mut self.decoder {
            None => scanner.feed(Piece::Shared(chunk), elapsed),
            Some(decoder) => decoder.feed(chunk, |decoded| {
                scanner.feed(Piece::Borrowed(decoded), elapsed)
            }),
        }
        self.scanner.last_elapsed = elapsed;
    }

    /// Ends the body; returns what was observed.
    pub fn finish(mut self) -> Observed {
        let elapsed = self.scanner.last_elapsed;
        if let Some(decoder) = &mut self.decoder {
            let scanner = &mut self.scanner;
            decoder.finish(|decoded| scanner.feed(Piece::Borrowed(decoded), elapsed));
        }
        let failure = self.decoder.as_ref().and_then(Decoder::failure);
        let mut observed = self.scanner.finish();
        if let Some(failure) = failure {
            observed.input_tokens = None;
            observed.output_tokens = None;
            observed.output_tokens_estimated = false;
            observed.cached_input_tokens = None;
            observed.reasoning_tokens = None;
            observed.usage_unknown = Some(failure);
        }
        observed
    }
}

/// Body bytes to scan: a received chunk (kept without a copy), or decoded bytes.
enum Piece<'a> {
    Shared(&'a Bytes),
    Borrowed(&'a [u8]),
}

impl Piece<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Shared(bytes) => bytes,
            Piece::Borrowed(bytes) => bytes,
        }
    }
}

/// Reads decoded body bytes.
struct Scanner {
    kind: BodyKind,
    line: Vec<u8>,
    skipping_line: bool,
    tail: Tail,
    content_chunks: u32,
    observed: Observed,
    text_probe: Option<TextProbe>,
    last_elapsed: Duration,
}

impl Scanner {
    fn new(kind: BodyKind) -> Self {
        Self {
            kind,
            line: Vec::new(),
            skipping_line: false,
            tail: Tail::Empty,
            content_chunks: 0,
            observed: Observed::default(),
            text_probe: None,
            last_elapsed: Duration::ZERO,
        }
    }

    fn feed(&mut self, piece: Piece<'_>, elapsed: Duration) {
        match self.kind {
            BodyKind::EventStream | BodyKind::NdJson => self.feed_lines(piece.bytes(), elapsed),
            BodyKind::Json => {
                if let Some(probe) = &mut self.text_probe {
                    if self.observed.first_token.is_none() && probe.finds_text(piece.bytes()) {
                        self.observed.first_token = Some(elapsed);
                    }
                }
                match piece {
                    Piece::Shared(bytes) => self.tail.push_shared(bytes),
                    Piece::Borrowed(bytes) => self.tail.push(bytes),
                }
            }
            BodyKind::Other => {}
        }
    }

    fn feed_lines(&mut self, chunk: &[u8], elapsed: Duration) {
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
                    self.line = line;
                    self.line.clear();
                }
                self.skipping_line = false;
            }
        }
    }

    fn stream_line(&mut self, line: &[u8], elapsed: Duration) {
        let line = line.trim_ascii();
        let data = match self.kind {
            BodyKind::EventStream => match line.strip_prefix(b"data:") {
                Some(data) => data.trim_ascii(),
                None => return,
            },
            _ => line,
        };
        if data.first() != Some(&b'{') {
            return;
        }
        let Some(frame) = StreamFrame::parse(data) else {
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

    fn finish(mut self) -> Observed {
        match self.kind {
            BodyKind::EventStream | BodyKind::NdJson => {
                if !self.line.is_empty() && !self.skipping_line {
                    let line = std::mem::take(&mut self.line);
                    self.stream_line(&line, self.observed.first_token.unwrap_or_default());
                }
                if self.observed.output_tokens.is_none() && self.content_chunks > 0 {
                    self.observed.output_tokens = Some(self.content_chunks);
                    self.observed.output_tokens_estimated = true;
                }
            }
            BodyKind::Json => usage_in_tail(self.tail.as_slice(), &mut self.observed),
            BodyKind::Other => {}
        }
        self.observed
    }
}

/// Finds the first `"text": "<something>"` of a streamed JSON array, across chunk boundaries.
#[derive(Default)]
struct TextProbe {
    /// The end of what was fed: a key whose value is not yet known, or the last bytes.
    carry: Vec<u8>,
}

/// What follows a `"text"` key.
enum Value {
    Text,
    NotText,
    Undecided,
}

impl TextProbe {
    const KEY: &'static [u8] = b"\"text\"";
    /// Whitespace after a key is not kept past this.
    const MAX_CARRY: usize = 4096;

    fn finds_text(&mut self, chunk: &[u8]) -> bool {
        static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(TextProbe::KEY));
        self.carry.extend_from_slice(chunk);
        let mut from = 0;
        while let Some(found) = FINDER.find(&self.carry[from..]) {
            let key_at = from + found;
            match value_after(&self.carry[key_at + Self::KEY.len()..]) {
                Value::Text => return true,
                Value::NotText => from = key_at + Self::KEY.len(),
                Value::Undecided => {
                    self.carry.drain(..key_at);
                    if self.carry.len() > Self::MAX_CARRY {
                        self.carry.clear();
                    }
                    return false;
                }
            }
        }
        // A key may begin in the last bytes.
        let keep = Self::KEY.len() - 1;
        let len = self.carry.len();
        if len > keep {
            self.carry.drain(..len - keep);
        }
        false
    }
}

fn value_after(after: &[u8]) -> Value {
    let after = after.trim_ascii_start();
    let Some(rest) = after.strip_prefix(b":") else {
        return if after.is_empty() {
            Value::Undecided
        } else {
            Value::NotText
        };
    };
    match rest.trim_ascii_start() {
        [] | [b'"'] => Value::Undecided,
        [b'"', b'"', ..] => Value::NotText,
        [b'"', ..] => Value::Text,
        _ => Value::NotText,
    }
}

/// The end of a JSON body: its only chunk as received (no copy), or its last bytes.
enum Tail {
    Empty,
    Chunk(Bytes),
    Buffer(Vec<u8>),
}

impl Tail {
    fn push_shared(&mut self, chunk: &Bytes) {
        if let Tail::Empty = self {
            *self = Tail::Chunk(chunk.clone());
        } else {
            self.push(chunk);
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        match self {
            Tail::Empty => *self = Tail::Buffer(chunk.to_vec()),
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

/// Reads the usage at the end of a JSON body: the last `"usage"` or `"usageMetadata"` object,
/// else the last top-level counts Ollama and TGI write (`prompt_eval_count`, `eval_count`,
/// `generated_tokens`).
fn usage_in_tail(tail: &[u8], observed: &mut Observed) {
    static USAGE: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"usage\""));
    static METADATA: LazyLock<FinderRev<'static>> =
        LazyLock::new(|| FinderRev::new(b"\"usageMetadata\""));
    let tail = &tail[tail.len().saturating_sub(JSON_TAIL)..];
    let found = [
        USAGE.rfind(tail).map(|at| at + b"\"usage\"".len()),
        METADATA
            .rfind(tail)
            .map(|at| at + b"\"usageMetadata\"".len()),
    ]
    .into_iter()
    .flatten()
    .max();
    if let Some(after) = found {
        let object = tail[after..]
            .trim_ascii_start()
            .strip_prefix(b":")
            .map(<[u8]>::trim_ascii_start);
        if let Some(object) = object.filter(|o| o.starts_with(b"{")) {
            // The object alone: what follows it (the rest of the body) is never read.
            if let Ok(usage) = Usage::deserialize(&mut serde_json::Deserializer::from_slice(object))
            {
                usage.read_into(observed);
                return;
            }
        }
    }
    if let Some(input) = count_after(tail, b"\"prompt_eval_count\"") {
        observed.input_tokens = Some(input);
    }
    if let Some(output) =
        count_after(tail, b"\"eval_count\"").or_else(|| count_after(tail, b"\"generated_tokens\""))
    {
        observed.output_tokens = Some(output);
        observed.output_tokens_estimated = false;
    }
}

/// The whole number after the last `key:` in `text`.
fn count_after(text: &[u8], key: &[u8]) -> Option<u32> {
    let at = memchr::memmem::rfind(text, key)?;
    let value = text[at + key.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0
        || value
            .get(digits)
            .is_some_and(|b| *b == b'.' || *b == b'e' || *b == b'E')
    {
        return None;
    }
    std::str::from_utf8(&value[..digits])
        .ok()?
        .parse::<u64>()
        .ok()
        .map(|v| v.min(u64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const LIMIT: usize = 8 << 20;

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
        assert_eq!(kind(Some("application/x-ndjson")), BodyKind::NdJson);
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
        let mut observer = ResponseObserver::new(BodyKind::EventStream, Encoding::Identity, LIMIT);
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
        let mut observer = ResponseObserver::new(BodyKind::EventStream, Encoding::Identity, LIMIT);
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
        let mut observer = ResponseObserver::new(BodyKind::EventStream, Encoding::Identity, LIMIT);
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
        let mut observer = ResponseObserver::new(BodyKind::Json, Encoding::Identity, LIMIT);
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
            let mut observer = ResponseObserver::new(BodyKind::Json, Encoding::Identity, LIMIT);
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

    fn gzip_stream(frames: &[&str]) -> Vec<Vec<u8>> {
        use std::io::Write;
        // Each frame flushed as a server streaming gzip does, so it can be read at once.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut pieces = Vec::new();
        for frame in frames {
            encoder.write_all(frame.as_bytes()).unwrap();
            encoder.flush().unwrap();
            pieces.push(std::mem::take(encoder.get_mut()));
        }
        pieces.push(encoder.finish().unwrap());
        pieces
    }

    #[test]
    fn a_gzip_compressed_stream_is_read_as_it_arrives() {
        let pieces = gzip_stream(&[
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\ndata: [DONE]\n\n",
        ]);
        let mut observer = ResponseObserver::new(BodyKind::EventStream, Encoding::Gzip, LIMIT);
        for (i, piece) in pieces.iter().enumerate() {
            feed(&mut observer, piece, (i as u32 + 1) * 10 * MS);
        }
        let observed = observer.finish();
        assert_eq!(
            observed.first_token,
            Some(20 * MS),
            "the first content frame's piece"
        );
        assert_eq!(
            (
                observed.input_tokens,
                observed.output_tokens,
                observed.cached_input_tokens
            ),
            (Some(7), Some(3), Some(2))
        );
        assert_eq!(observed.usage_unknown, None);
    }

    #[test]
    fn a_body_over_the_decode_limit_has_unknown_usage() {
        use std::io::Write;
        let mut body = br#"{"choices":[{"message":{"content":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        body.extend_from_slice(br#""}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&body).unwrap();
        let compressed = encoder.finish().unwrap();
        let observe = |limit: usize| {
            let mut observer = ResponseObserver::new(BodyKind::Json, Encoding::Gzip, limit);
            for piece in compressed.chunks(4096) {
                feed(&mut observer, piece, MS);
            }
            observer.finish()
        };
        let within = observe(2 << 20);
        assert_eq!(
            (within.input_tokens, within.output_tokens),
            (Some(1), Some(2))
        );
        let over = observe(64 * 1024);
        assert_eq!((over.input_tokens, over.output_tokens), (None, None));
        assert_eq!(over.usage_unknown, Some(Undecoded::OverLimit));
    }

    #[test]
    fn ollama_ndjson_streams_give_ttft_and_counts() {
        let mut observer = ResponseObserver::new(BodyKind::NdJson, Encoding::Identity, LIMIT);
        feed(&mut observer, b"{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":false}\n", 3 * MS);
        feed(&mut observer, b"{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"The\"},\"done\":false}\n{\"model\":", 8 * MS);
        feed(&mut observer, b"\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"prompt_eval_count\":26,\"eval_count\":290}\n", 40 * MS);
        let observed = observer.finish();
        assert_eq!(observed.first_token, Some(8 * MS));
        assert_eq!(
            (observed.input_tokens, observed.output_tokens),
            (Some(26), Some(290))
        );
        assert!(!observed.output_tokens_estimated);
    }

    #[test]
    fn a_gemini_json_array_stream_gives_its_first_text_and_final_usage() {
        let mut observer =
            ResponseObserver::new(BodyKind::Json, Encoding::Identity, LIMIT).json_stream();
        feed(
            &mut observer,
            b"[{\"candidates\": [{\"content\": {\"parts\": [{\"text",
            4 * MS,
        );
        feed(
            &mut observer,
            b"\": \"Hel\"}], \"role\": \"model\"}}], \"usageMetadata\": {\"promptTokenCount\": 9}}",
            6 * MS,
        );
        feed(&mut observer, b",\r\n{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}]}}], \"usageMetadata\": {\"promptTokenCount\": 9, \"candidatesTokenCount\": 2}}]", 9 * MS);
        let observed = observer.finish();
        assert_eq!(observed.first_token, Some(6 * MS));
        assert_eq!(
            (observed.input_tokens, observed.output_tokens),
            (Some(9), Some(2))
        );
        // Without the hint a JSON body has no first token.
        let mut plain = ResponseObserver::new(BodyKind::Json, Encoding::Identity, LIMIT);
        feed(
            &mut plain,
            b"{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"x\"}]}}]}",
            MS,
        );
        assert_eq!(plain.finish().first_token, None);
    }

    #[test]
    fn ollama_and_tgi_json_counts_are_read_from_the_top_level() {
        let observe = |body: &[u8]| {
            let mut observer = ResponseObserver::new(BodyKind::Json, Encoding::Identity, LIMIT);
            feed(&mut observer, body, MS);
            let observed = observer.finish();
            (observed.input_tokens, observed.output_tokens)
        };
        assert_eq!(
            observe(br#"{"model":"llama3","response":"hi","done":true,"context":[1,2,3],"prompt_eval_count":26,"prompt_eval_duration":5,"eval_count":290,"eval_duration":9}"#),
            (Some(26), Some(290))
        );
        assert_eq!(
            observe(br#"{"generated_text":"hi","details":{"finish_reason":"length","generated_tokens":20}}"#),
            (None, Some(20))
        );
        assert_eq!(
            observe(br#"{"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":7}}"#),
            (Some(5), Some(7))
        );
    }
}
