//! Criterion benchmarks of the proxy's response observer on an LLM event stream (what it costs
//! per streamed frame to find the first content token and the usage), with the way it read
//! frames before — building a `serde_json::Value` of each — measured in the same run; and on
//! gzip-compressed bodies (a 64 KB JSON response and the same event stream), beside gunzipping
//! alone, the floor for any observer that reads compressed bodies.

use std::hint::black_box;
use std::time::Duration;

use std::io::Write;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sources::proxy::decode::Encoding;
use sources::proxy::observe::{BodyKind, ResponseObserver};

const DECODE_LIMIT: usize = 8 << 20;

const CONTENT_FRAMES: usize = 200;

/// An OpenAI-style chat completion stream, one frame per chunk as a model server flushes them:
/// a role frame, content frames, a finish frame, the usage frame and `[DONE]`.
fn openai_stream() -> Vec<Bytes> {
    let frame = |choices: &str, usage: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{choices}]{usage}}}\n\n"
        ))
    };
    let mut chunks = vec![frame(
        r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#,
        "",
    )];
    for i in 0..CONTENT_FRAMES {
        chunks.push(frame(
            &format!(r#"{{"index":0,"delta":{{"content":" token{i}"}},"logprobs":null,"finish_reason":null}}"#),
            "",
        ));
    }
    chunks.push(frame(
        r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#,
        "",
    ));
    chunks.push(frame(
        "",
        r#","usage":{"prompt_tokens":31,"completion_tokens":200,"total_tokens":231,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}"#,
    ));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

fn observe(chunks: &[Bytes]) -> Option<u32> {
    observe_as(chunks, BodyKind::EventStream, Encoding::Identity)
}

fn observe_as(chunks: &[Bytes], kind: BodyKind, encoding: Encoding) -> Option<u32> {
    let mut observer = ResponseObserver::new(kind, encoding, DECODE_LIMIT);
    for (index, chunk) in chunks.iter().enumerate() {
        observer.feed(chunk, Duration::from_micros(index as u64));
    }
    observer.finish().output_tokens
}

/// Each frame's data built into a `serde_json::Value`, and nothing more done with it.
fn frames_as_values(chunks: &[Bytes]) -> usize {
    let mut parsed = 0;
    for chunk in chunks {
        let Some(data) = std::str::from_utf8(chunk)
            .ok()
            .and_then(|line| line.trim().strip_prefix("data:"))
        else {
            continue;
        };
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(data.trim()) {
            parsed += usize::from(black_box(value).is_object());
        }
    }
    parsed
}

fn event_stream(c: &mut Criterion) {
    let chunks = openai_stream();
    assert_eq!(observe(&chunks), Some(200), "the observer reads the usage");
    let mut group = c.benchmark_group("observer");
    group.throughput(Throughput::Elements(chunks.len() as u64));
    group.bench_function("openai stream, per frame: observer", |b| {
        b.iter(|| observe(black_box(&chunks)))
    });
    group.bench_function("openai stream, per frame: serde_json::Value of each", |b| {
        b.iter(|| frames_as_values(black_box(&chunks)))
    });
    group.finish();
}

/// `chunks` gzip-compressed as a server streaming them does: each flushed, so it can be read
/// as soon as it arrives; the compressed body cut into chunks of about `chunk` bytes when
/// `chunk` is set (a whole body received in reads), else one compressed piece per chunk.
fn gzipped(chunks: &[Bytes], chunk: Option<usize>) -> Vec<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut pieces = Vec::new();
    for data in chunks {
        encoder.write_all(data).unwrap();
        if chunk.is_none() {
            encoder.flush().unwrap();
            pieces.push(Bytes::from(std::mem::take(encoder.get_mut())));
        }
    }
    let rest = encoder.finish().unwrap();
    match chunk {
        None => {
            pieces.push(Bytes::from(rest));
            pieces
        }
        Some(size) => rest.chunks(size).map(Bytes::copy_from_slice).collect(),
    }
}

/// A 64 KB chat completion: long generated text, then the usage.
fn json_64k() -> Bytes {
    let words: String = (0..20_000).map(|i| format!("w{} ", i % 97)).collect();
    let text = &words[..64 * 1024 - 400];
    Bytes::from(format!(
        r#"{{"id":"chatcmpl-9x","object":"chat.completion","created":1732000000,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":31,"completion_tokens":16000,"total_tokens":16031}}}}"#
    ))
}

fn gunzip_only(chunks: &[Bytes]) -> usize {
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    for chunk in chunks {
        decoder.write_all(chunk).unwrap();
    }
    decoder.finish().unwrap().len()
}

fn compressed(c: &mut Criterion) {
    let json = gzipped(&[json_64k()], Some(16 * 1024));
    assert_eq!(
        observe_as(&json, BodyKind::Json, Encoding::Gzip),
        Some(16000),
        "the observer reads a gzip body's usage"
    );
    let stream = gzipped(&openai_stream(), None);
    assert_eq!(
        observe_as(&stream, BodyKind::EventStream, Encoding::Gzip),
        Some(200),
        "the observer reads a gzip stream's usage"
    );
    let mut group = c.benchmark_group("observer, gzip");
    group.throughput(Throughput::Bytes(64 * 1024));
    group.bench_function("64 KB JSON: observer", |b| {
        b.iter(|| observe_as(black_box(&json), BodyKind::Json, Encoding::Gzip))
    });
    group.bench_function("64 KB JSON: gunzip alone", |b| {
        b.iter(|| gunzip_only(black_box(&json)))
    });
    group.throughput(Throughput::Elements(stream.len() as u64));
    group.bench_function("openai stream, per frame: observer", |b| {
        b.iter(|| observe_as(black_box(&stream), BodyKind::EventStream, Encoding::Gzip))
    });
    group.bench_function("openai stream, per frame: gunzip alone", |b| {
        b.iter(|| gunzip_only(black_box(&stream)))
    });
    group.finish();
}

criterion_group!(benches, event_stream, compressed);
criterion_main!(benches);
