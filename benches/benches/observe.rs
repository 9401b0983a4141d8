//! Criterion benchmarks of the proxy's response observer on an LLM event stream (what it costs
//! per streamed frame to find the first content token and the usage), with the way it read
//! frames before — building a `serde_json::Value` of each — measured in the same run.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sources::proxy::observe::{BodyKind, ResponseObserver};

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
    let mut observer = ResponseObserver::new(BodyKind::EventStream);
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

criterion_group!(benches, event_stream);
criterion_main!(benches);
