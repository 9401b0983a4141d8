//! The official `openai` Python client (from PyPI) pointed at the proxy with `base_url`, the
//! proxy in front of an HTTPS upstream with a throwaway CA that gzips its answers (the client
//! asks for `gzip, deflate`, as it always does): a chat completion and a streamed one, each
//! read by the client as it would read OpenAI's, and each an event with its model, TTFT and
//! token counts. Needs `python3 -m pip install openai` (`.ci/run` installs it).

use std::process::Command;

use engine::schema::api_call::Outcome;

mod proxy_harness;
mod tls_upstream;
use proxy_harness::Proxy;
use tls_upstream::{Pki, TlsUpstream};

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-test-not-a-real-key", max_retries=0)
chat = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
parts = []
for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print(json.dumps({
    "chat": chat.choices[0].message.content,
    "chat_usage": [chat.usage.prompt_tokens, chat.usage.completion_tokens],
    "stream": "".join(parts),
}))
"#;

fn python_with_openai() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        engine::testing::missing("the openai Python package", "python3 -m pip install openai");
    }
    found
}

#[tokio::test]
async fn the_openai_python_client_works_through_the_proxy_to_an_https_upstream() {
    if !python_with_openai() {
        return;
    }
    let pki = Pki::new();
    let cert = pki.issue("localhost", &["localhost"], false);
    let upstream = TlsUpstream::start(&cert, &[b"h2", b"http/1.1"]).await;
    let proxy = Proxy::start(
        &format!("https://localhost:{}", upstream.port),
        &format!(
            "upstream_ca_file = {:?}",
            pki.ca_file().display().to_string()
        ),
        64,
    )
    .await;
    let base_url = format!("{}/v1", proxy.url);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", SCRIPT, &base_url])
            .env("NO_PROXY", "*")
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["chat"], "Hello there, how can I help?");
    assert_eq!(result["chat_usage"], serde_json::json!([12, 7]));
    assert_eq!(result["stream"], "Hello");
    let sent = upstream.sent();
    assert!(
        sent.iter().all(|s| s.encoding.as_deref() == Some("gzip")),
        "the client asked for gzip: {sent:?}"
    );
    let calls = proxy.stop().await;
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let (chat, stream) = (&calls[0], &calls[1]);
    assert_eq!(chat.model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        (
            chat.input_tokens,
            chat.output_tokens,
            chat.cached_input_tokens
        ),
        (Some(12), Some(7), Some(8))
    );
    assert_eq!(stream.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        (stream.input_tokens, stream.output_tokens),
        (Some(9), Some(2))
    );
    assert!(stream.ttft_ms.is_some_and(|ttft| ttft < stream.latency_ms));
    assert!(calls.iter().all(|c| c.outcome == Outcome::Ok));
    // The client's API key reached the upstream, never the events.
    assert!(calls.iter().all(|c| !format!("{c:?}").contains("sk-test")));
}
