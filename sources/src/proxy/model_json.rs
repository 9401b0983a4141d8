//! The parts of a model API's JSON the response observer reads — usage objects, and whether a
//! streamed frame carries generated content — for the APIs people call, each read leniently in
//! one pass (see [`lenient`](super::lenient)): no `serde_json::Value` is built for a frame, and a
//! field of an unexpected type is read past rather than spoiling the frame.
//!
//! | API | content | usage |
//! |---|---|---|
//! | OpenAI chat / completions, vLLM, TGI `/v1`, Ollama `/v1` | `choices[].delta.content`, `delta.tool_calls`, `choices[].text` | `usage`: `prompt_tokens` (`prompt_tokens_details.cached_tokens`), `completion_tokens` (`completion_tokens_details.reasoning_tokens`) |
//! | OpenAI Responses | `type` `response.output_text.delta` (and the other `*.delta` events) | `response.usage` / `usage`: `input_tokens` (`input_tokens_details.cached_tokens`), `output_tokens` (`output_tokens_details.reasoning_tokens`) |
//! | Anthropic Messages | `type` `content_block_delta` with `delta.text`, `partial_json` or `thinking` | `message.usage` then `usage`: `input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens`, `output_tokens` |
//! | Gemini | `candidates[].content.parts[].text` / `functionCall` | `usageMetadata`: `promptTokenCount` (`cachedContentTokenCount`), `candidatesTokenCount` + `thoughtsTokenCount` |
//! | Ollama `/api/chat`, `/api/generate` | `message.content`, `response` | `prompt_eval_count`, `eval_count` |
//! | TGI `generate_stream` | `token.text` | `details.generated_tokens` |
//! | Bedrock Converse | — | `usage`: `inputTokens` (+ `cacheReadInputTokens`, `cacheWriteInputTokens`), `outputTokens` |

use serde::de::{IgnoredAny, MapAccess, SeqAccess};

use super::lenient::{deserialize_leniently, Count, Lenient, NonEmptyText};
use super::observe::Observed;

/// Token counts as an API spells them; any other field is read past. A count that is not a
/// whole number is ignored, as if absent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Usage {
    prompt_tokens: Count,
    input_tokens: Count,
    completion_tokens: Count,
    output_tokens: Count,
    /// `*_tokens_details.cached_tokens` (OpenAI), `cachedContentTokenCount` (Gemini).
    cached_tokens: Count,
    /// `*_tokens_details.reasoning_tokens` (OpenAI).
    reasoning_tokens: Count,
    /// Anthropic's and Bedrock's cache counts, which `input_tokens` does not include.
    cache_read_input_tokens: Count,
    cache_creation_input_tokens: Count,
    /// Gemini.
    prompt_token_count: Count,
    candidates_token_count: Count,
    thoughts_token_count: Count,
    /// Ollama.
    prompt_eval_count: Count,
    eval_count: Count,
    /// TGI.
    generated_tokens: Count,
}

impl Usage {
    /// Whether any count is present.
    fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    pub fn read_into(&self, observed: &mut Observed) {
        let clamp = |value: u64| value.min(u64::from(u32::MAX)) as u32;
        let first = |counts: &[Count]| counts.iter().find_map(|count| count.0);
        let cache_read = self.cache_read_input_tokens.0;
        let cache_written = self.cache_creation_input_tokens.0;
        let input = first(&[
            self.prompt_tokens,
            self.prompt_token_count,
            self.prompt_eval_count,
        ])
        .or_else(|| {
            // Anthropic and Bedrock count cached input apart from `input_tokens`.
            let parts = [self.input_tokens.0, cache_read, cache_written];
            parts
                .iter()
                .any(Option::is_some)
                .then(|| parts.iter().flatten().sum())
        });
        if let Some(input) = input {
            observed.input_tokens = Some(clamp(input));
        }
        let gemini_output = (self.candidates_token_count.0.is_some()
            || self.thoughts_token_count.0.is_some())
        .then(|| {
            self.candidates_token_count.0.unwrap_or(0) + self.thoughts_token_count.0.unwrap_or(0)
        });
        let output = first(&[
            self.completion_tokens,
            self.output_tokens,
            self.eval_count,
            self.generated_tokens,
        ])
        .or(gemini_output);
        if let Some(output) = output {
            observed.output_tokens = Some(clamp(output));
            observed.output_tokens_estimated = false;
        }
        if let Some(cached) = first(&[self.cached_tokens]).or(cache_read) {
            observed.cached_input_tokens = Some(clamp(cached));
        }
        if let Some(reasoning) = first(&[self.reasoning_tokens, self.thoughts_token_count]) {
            observed.reasoning_tokens = Some(clamp(reasoning));
        }
    }
}

/// What one streamed frame (an SSE `data:` line, or an NDJSON line) says: whether it carries
/// generated content, and its usage.
#[derive(Debug, Default)]
pub struct StreamFrame {
    choices: Choices,
    kind: FrameType,
    delta: Delta,
    usage: Option<Usage>,
    message: Message,
    response: ResponseField,
    usage_metadata: Option<Usage>,
    candidates: bool,
    token: Token,
    details: Option<Usage>,
    /// Counts at the top level (Ollama's final line).
    top: Usage,
}

impl StreamFrame {
    /// The frame in `data`; `None` when it is not JSON.
    pub fn parse(data: &[u8]) -> Option<Self> {
        serde_json::from_slice(data).ok()
    }

    pub fn carries_content(&self) -> bool {
        if let Choices::Array { content } = self.choices {
            return content;
        }
        match self.kind {
            FrameType::ContentBlockDelta => {
                self.delta.text || self.delta.partial_json || self.delta.thinking
            }
            FrameType::ResponseDelta => self.delta.as_text,
            FrameType::Other => {
                self.candidates || self.message.content || self.response.text || self.token.text
            }
        }
    }

    pub fn usage(&self) -> Option<&Usage> {
        [
            self.usage.as_ref(),
            self.message.usage.as_ref(),
            self.response.usage.as_ref(),
            self.usage_metadata.as_ref(),
            self.details.as_ref(),
            Some(&self.top),
        ]
        .into_iter()
        .flatten()
        .find(|usage| !usage.is_empty())
    }
}

/// A frame's `type`, as far as it says where content is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FrameType {
    /// Anthropic's `content_block_delta`.
    ContentBlockDelta,
    /// An OpenAI Responses event whose `delta` is generated text: `response.output_text.delta`,
    /// `response.function_call_arguments.delta`, `response.reasoning_summary_text.delta`, ...
    ResponseDelta,
    #[default]
    Other,
}

impl Lenient<'_> for FrameType {
    fn of_str(value: &str) -> Self {
        if value == "content_block_delta" {
            FrameType::ContentBlockDelta
        } else if value.starts_with("response.") && value.ends_with(".delta") {
            FrameType::ResponseDelta
        } else {
            FrameType::Other
        }
    }
}

/// A frame's `choices`: whether it is an array, and whether one of its choices carries text.
#[derive(Debug, Default)]
enum Choices {
    #[default]
    None,
    Array {
        content: bool,
    },
}

/// One of `choices`.
#[derive(Debug, Default)]
struct Choice {
    delta: Delta,
    text: bool,
}

/// A `delta`: an object (OpenAI chat, Anthropic) or text (OpenAI Responses).
#[derive(Debug, Default)]
struct Delta {
    content: bool,
    text: bool,
    tool_calls: bool,
    partial_json: bool,
    thinking: bool,
    /// The delta is itself non-empty text.
    as_text: bool,
}

/// Anthropic's `message` (its `usage`), or Ollama's (its `content`).
#[derive(Debug, Default)]
struct Message {
    usage: Option<Usage>,
    content: bool,
}

/// `response`: an object with `usage` (OpenAI Responses), or generated text (Ollama).
#[derive(Debug, Default)]
struct ResponseField {
    usage: Option<Usage>,
    text: bool,
}

/// TGI's `token`.
#[derive(Debug, Default)]
struct Token {
    text: bool,
}

/// `*_tokens_details`: the parts of a count.
#[derive(Debug, Default)]
struct Details {
    cached_tokens: Count,
    reasoning_tokens: Count,
}

/// Gemini's `candidates`: whether a part of one carries text or a function call.
#[derive(Debug, Default)]
struct Candidates(bool);

#[derive(Debug, Default)]
struct Candidate(bool);

#[derive(Debug, Default)]
struct Content(bool);

#[derive(Debug, Default)]
struct Parts(bool);

#[derive(Debug, Default)]
struct Part(bool);

/// The names of the keys read here, matched without allocating; any other is `Other`.
#[derive(Debug, Default)]
enum Key {
    Choices,
    Type,
    Delta,
    Usage,
    Message,
    Response,
    Content,
    Text,
    ToolCalls,
    PartialJson,
    Thinking,
    PromptTokens,
    InputTokens,
    CompletionTokens,
    OutputTokens,
    PromptTokensDetails,
    CompletionTokensDetails,
    CachedTokens,
    ReasoningTokens,
    CacheReadInputTokens,
    CacheCreationInputTokens,
    UsageMetadata,
    PromptTokenCount,
    CandidatesTokenCount,
    CachedContentTokenCount,
    ThoughtsTokenCount,
    Candidates,
    Parts,
    FunctionCall,
    PromptEvalCount,
    EvalCount,
    Token,
    Details,
    GeneratedTokens,
    #[default]
    Other,
}

impl Lenient<'_> for Key {
    fn of_str(value: &str) -> Self {
        match value {
            "choices" => Key::Choices,
            "type" => Key::Type,
            "delta" => Key::Delta,
            "usage" => Key::Usage,
            "message" => Key::Message,
            "response" => Key::Response,
            "content" => Key::Content,
            "text" => Key::Text,
            "tool_calls" => Key::ToolCalls,
            "partial_json" => Key::PartialJson,
            "thinking" => Key::Thinking,
            "prompt_tokens" => Key::PromptTokens,
            "input_tokens" | "inputTokens" => Key::InputTokens,
            "completion_tokens" => Key::CompletionTokens,
            "output_tokens" | "outputTokens" => Key::OutputTokens,
            "prompt_tokens_details" | "input_tokens_details" => Key::PromptTokensDetails,
            "completion_tokens_details" | "output_tokens_details" => Key::CompletionTokensDetails,
            "cached_tokens" => Key::CachedTokens,
            "reasoning_tokens" => Key::ReasoningTokens,
            "cache_read_input_tokens" | "cacheReadInputTokens" => Key::CacheReadInputTokens,
            "cache_creation_input_tokens" | "cacheWriteInputTokens" => {
                Key::CacheCreationInputTokens
            }
            "usageMetadata" => Key::UsageMetadata,
            "promptTokenCount" => Key::PromptTokenCount,
            "candidatesTokenCount" => Key::CandidatesTokenCount,
            "cachedContentTokenCount" => Key::CachedContentTokenCount,
            "thoughtsTokenCount" => Key::ThoughtsTokenCount,
            "candidates" => Key::Candidates,
            "parts" => Key::Parts,
            "functionCall" => Key::FunctionCall,
            "prompt_eval_count" => Key::PromptEvalCount,
            "eval_count" => Key::EvalCount,
            "token" => Key::Token,
            "details" => Key::Details,
            "generated_tokens" => Key::GeneratedTokens,
            _ => Key::Other,
        }
    }
}

/// Reads every entry of `map`, giving each value whose key is read here to `read` (which must
/// read it), and reading past the rest.
fn entries<'de, A: MapAccess<'de>>(
    mut map: A,
    mut read: impl FnMut(Key, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key::<Key>()? {
        if !read(key, &mut map)? {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(())
}

/// Reads the counts a usage object (or Ollama's top-level line) may hold; `false` for any
/// other key.
fn read_count<'de, A: MapAccess<'de>>(
    usage: &mut Usage,
    key: &Key,
    map: &mut A,
) -> Result<bool, A::Error> {
    let count = match key {
        Key::PromptTokens => &mut usage.prompt_tokens,
        Key::InputTokens => &mut usage.input_tokens,
        Key::CompletionTokens => &mut usage.completion_tokens,
        Key::OutputTokens => &mut usage.output_tokens,
        Key::CacheReadInputTokens => &mut usage.cache_read_input_tokens,
        Key::CacheCreationInputTokens => &mut usage.cache_creation_input_tokens,
        Key::PromptTokenCount => &mut usage.prompt_token_count,
        Key::CandidatesTokenCount => &mut usage.candidates_token_count,
        Key::CachedContentTokenCount => &mut usage.cached_tokens,
        Key::ThoughtsTokenCount => &mut usage.thoughts_token_count,
        Key::PromptEvalCount => &mut usage.prompt_eval_count,
        Key::EvalCount => &mut usage.eval_count,
        Key::GeneratedTokens => &mut usage.generated_tokens,
        Key::PromptTokensDetails | Key::CompletionTokensDetails => {
            let details: Details = map.next_value()?;
            if details.cached_tokens.0.is_some() {
                usage.cached_tokens = details.cached_tokens;
            }
            if details.reasoning_tokens.0.is_some() {
                usage.reasoning_tokens = details.reasoning_tokens;
            }
            return Ok(true);
        }
        _ => return Ok(false),
    };
    *count = map.next_value()?;
    Ok(true)
}

impl<'de> Lenient<'de> for Usage {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut usage = Usage::default();
        entries(map, |key, map| read_count(&mut usage, &key, map))?;
        Ok(usage)
    }
}

impl<'de> Lenient<'de> for Details {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut details = Details::default();
        entries(map, |key, map| {
            match key {
                Key::CachedTokens => details.cached_tokens = map.next_value()?,
                Key::ReasoningTokens => details.reasoning_tokens = map.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(details)
    }
}

impl<'de> Lenient<'de> for Delta {
    fn of_str(value: &str) -> Self {
        Delta {
            as_text: !value.is_empty(),
            ..Delta::default()
        }
    }

    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut delta = Delta::default();
        entries(map, |key, map| {
            match key {
                Key::Content => delta.content = map.next_value::<NonEmptyText>()?.0,
                Key::Text => delta.text = map.next_value::<NonEmptyText>()?.0,
                Key::PartialJson => delta.partial_json = map.next_value::<NonEmptyText>()?.0,
                Key::Thinking => delta.thinking = map.next_value::<NonEmptyText>()?.0,
                Key::ToolCalls => {
                    map.next_value::<IgnoredAny>()?;
                    delta.tool_calls = true;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(delta)
    }
}

impl<'de> Lenient<'de> for Choice {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut choice = Choice::default();
        entries(map, |key, map| {
            match key {
                Key::Delta => choice.delta = map.next_value()?,
                Key::Text => choice.text = map.next_value::<NonEmptyText>()?.0,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(choice)
    }
}

impl<'de> Lenient<'de> for Choices {
    fn of_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut content = false;
        while let Some(choice) = seq.next_element::<Choice>()? {
            content |= choice.delta.content || choice.delta.tool_calls || choice.text;
        }
        Ok(Choices::Array { content })
    }
}

impl<'de> Lenient<'de> for Message {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut message = Message::default();
        entries(map, |key, map| {
            match key {
                Key::Usage => message.usage = map.next_value()?,
                Key::Content => message.content = map.next_value::<NonEmptyText>()?.0,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(message)
    }
}

impl<'de> Lenient<'de> for ResponseField {
    fn of_str(value: &str) -> Self {
        ResponseField {
            usage: None,
            text: !value.is_empty(),
        }
    }

    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut response = ResponseField::default();
        entries(map, |key, map| {
            if !matches!(key, Key::Usage) {
                return Ok(false);
            }
            response.usage = map.next_value()?;
            Ok(true)
        })?;
        Ok(response)
    }
}

impl<'de> Lenient<'de> for Token {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut token = Token::default();
        entries(map, |key, map| {
            if !matches!(key, Key::Text) {
                return Ok(false);
            }
            token.text = map.next_value::<NonEmptyText>()?.0;
            Ok(true)
        })?;
        Ok(token)
    }
}

impl<'de> Lenient<'de> for Candidates {
    fn of_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut content = false;
        while let Some(candidate) = seq.next_element::<Candidate>()? {
            content |= candidate.0;
        }
        Ok(Candidates(content))
    }
}

impl<'de> Lenient<'de> for Candidate {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut candidate = Candidate::default();
        entries(map, |key, map| {
            if !matches!(key, Key::Content) {
                return Ok(false);
            }
            candidate.0 = map.next_value::<Content>()?.0;
            Ok(true)
        })?;
        Ok(candidate)
    }
}

impl<'de> Lenient<'de> for Content {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut content = Content::default();
        entries(map, |key, map| {
            if !matches!(key, Key::Parts) {
                return Ok(false);
            }
            content.0 = map.next_value::<Parts>()?.0;
            Ok(true)
        })?;
        Ok(content)
    }
}

impl<'de> Lenient<'de> for Parts {
    fn of_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut content = false;
        while let Some(part) = seq.next_element::<Part>()? {
            content |= part.0;
        }
        Ok(Parts(content))
    }
}

impl<'de> Lenient<'de> for Part {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut part = Part::default();
        entries(map, |key, map| {
            match key {
                Key::Text => part.0 |= map.next_value::<NonEmptyText>()?.0,
                Key::FunctionCall => {
                    map.next_value::<IgnoredAny>()?;
                    part.0 = true;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(part)
    }
}

impl<'de> Lenient<'de> for StreamFrame {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut frame = StreamFrame::default();
        entries(map, |key, map| {
            match key {
                Key::Choices => frame.choices = map.next_value()?,
                Key::Type => frame.kind = map.next_value()?,
                Key::Delta => frame.delta = map.next_value()?,
                Key::Usage => frame.usage = map.next_value()?,
                Key::Message => frame.message = map.next_value()?,
                Key::Response => frame.response = map.next_value()?,
                Key::UsageMetadata => frame.usage_metadata = map.next_value()?,
                Key::Candidates => frame.candidates = map.next_value::<Candidates>()?.0,
                Key::Token => frame.token = map.next_value()?,
                Key::Details => frame.details = map.next_value()?,
                Key::PromptEvalCount | Key::EvalCount => {
                    return read_count(&mut frame.top, &key, map);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(frame)
    }
}

deserialize_leniently!(
    Usage,
    StreamFrame,
    FrameType,
    Choices,
    Choice,
    Delta,
    Message,
    ResponseField,
    Token,
    Details,
    Candidates,
    Candidate,
    Content,
    Parts,
    Part,
    Key
);

#[cfg(test)]
mod tests {
    use super::*;

    fn content(data: &str) -> bool {
        StreamFrame::parse(data.as_bytes()).is_some_and(|frame| frame.carries_content())
    }

    fn usage(data: &str) -> Observed {
        let frame = StreamFrame::parse(data.as_bytes()).expect("JSON");
        let mut observed = Observed::default();
        if let Some(usage) = frame.usage() {
            usage.read_into(&mut observed);
        }
        observed
    }

    fn counts(data: &str) -> (Option<u32>, Option<u32>) {
        let observed = usage(data);
        (observed.input_tokens, observed.output_tokens)
    }

    #[test]
    fn frames_carry_content_as_each_api_style_spells_it() {
        assert!(content(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#));
        assert!(content(r#"{"choices":[{"index":0,"text":"Hi"}]}"#));
        assert!(content(
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#
        ));
        assert!(content(
            r#"{"choices":[{"delta":{"role":"assistant"}},{"delta":{"content":"x"}}]}"#
        ));
        assert!(content(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#
        ));
        assert!(content(
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#
        ));
        assert!(content(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me"}}"#
        ));
        assert!(content(
            r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}"#
        ));
        assert!(content(
            r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":4}}"#
        ));
        assert!(content(
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]}}]}"#
        ));
        assert!(content(
            r#"{"model":"llama3.2","message":{"role":"assistant","content":"The"},"done":false}"#
        ));
        assert!(content(
            r#"{"model":"llama3.2","response":"The","done":false}"#
        ));
        assert!(content(
            r#"{"index":1,"token":{"id":5,"text":"Hi","special":false}}"#
        ));
        // Role and metadata frames, empty text, and text where the style does not put it.
        assert!(!content(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!content(
            r#"{"choices":[{"delta":{"content":null}}],"usage":null}"#
        ));
        assert!(!content(r#"{"choices":[],"usage":{"prompt_tokens":7}}"#));
        assert!(!content(r#"{"type":"message_start","delta":{"text":"x"}}"#));
        assert!(!content(
            r#"{"type":"response.created","response":{"id":"r"}}"#
        ));
        assert!(!content(
            r#"{"type":"response.output_text.delta","delta":""}"#
        ));
        assert!(!content(r#"{"choices":[{"delta":{"text":"x"}}]}"#));
        assert!(!content(r#"{"choices":[{"delta":{"content":["parts"]}}]}"#));
        assert!(!content(
            r#"{"candidates":[{"content":{"parts":[{"text":""}]}}]}"#
        ));
        assert!(!content(
            r#"{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"eval_count":3}"#
        ));
        // `choices` decides when it is an array, whatever `type` says.
        assert!(!content(
            r#"{"choices":[],"type":"content_block_delta","delta":{"text":"x"}}"#
        ));
        assert!(content(
            r#"{"choices":{"odd":1},"type":"content_block_delta","delta":{"text":"x"}}"#
        ));
        assert!(!content("[DONE]"));
        assert!(!content(r#"["not", "an", "object"]"#));
    }

    #[test]
    fn openai_usage_with_cached_and_reasoning_tokens() {
        let observed = usage(
            r#"{"choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":192,"accepted_prediction_tokens":0}}}"#,
        );
        assert_eq!(
            (
                observed.input_tokens,
                observed.output_tokens,
                observed.cached_input_tokens,
                observed.reasoning_tokens
            ),
            (Some(2006), Some(300), Some(1920), Some(192))
        );
    }

    #[test]
    fn responses_api_usage_comes_from_the_completed_event() {
        let observed = usage(
            r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","status":"completed","usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":12},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}}}"#,
        );
        assert_eq!(
            (
                observed.input_tokens,
                observed.output_tokens,
                observed.cached_input_tokens,
                observed.reasoning_tokens
            ),
            (Some(36), Some(87), Some(12), Some(64))
        );
    }

    #[test]
    fn anthropic_cached_input_is_added_to_the_input() {
        let observed = usage(
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1}}}"#,
        );
        assert_eq!(observed.input_tokens, Some(2125));
        assert_eq!(observed.cached_input_tokens, Some(2000));
        assert_eq!(observed.output_tokens, Some(1));
        assert_eq!(
            counts(
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#
            ),
            (None, Some(15))
        );
    }

    #[test]
    fn gemini_ollama_tgi_and_bedrock_counts() {
        let gemini = usage(
            r#"{"candidates":[],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":40,"totalTokenCount":260,"cachedContentTokenCount":100,"thoughtsTokenCount":100}}"#,
        );
        assert_eq!(
            (
                gemini.input_tokens,
                gemini.output_tokens,
                gemini.cached_input_tokens,
                gemini.reasoning_tokens
            ),
            (Some(120), Some(140), Some(100), Some(100))
        );
        assert_eq!(
            counts(
                r#"{"model":"llama3.2","done":true,"total_duration":5,"prompt_eval_count":26,"eval_count":290}"#
            ),
            (Some(26), Some(290))
        );
        assert_eq!(
            counts(
                r#"{"token":{"text":""},"generated_text":"x","details":{"finish_reason":"length","generated_tokens":20}}"#
            ),
            (None, Some(20))
        );
        let bedrock = usage(
            r#"{"output":{},"usage":{"inputTokens":30,"outputTokens":10,"totalTokens":40,"cacheReadInputTokens":5}}"#,
        );
        assert_eq!(
            (
                bedrock.input_tokens,
                bedrock.output_tokens,
                bedrock.cached_input_tokens
            ),
            (Some(35), Some(10), Some(5))
        );
    }

    #[test]
    fn usage_comes_from_the_frame_or_its_message_and_odd_fields_are_read_past() {
        assert_eq!(
            counts(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#),
            (Some(7), Some(3))
        );
        assert_eq!(
            counts(r#"{"usage":null,"message":{"usage":{"input_tokens":2}}}"#),
            (Some(2), None)
        );
        assert_eq!(
            counts(
                r#"{"usage":{"prompt_tokens":"many","input_tokens":4,"completion_tokens":2.5,"details":{"a":[1]}}}"#
            ),
            (Some(4), None)
        );
        // A key spelled twice: the last one counts, as when building the whole object.
        assert_eq!(
            counts(r#"{"usage":{"completion_tokens":1,"completion_tokens":9}}"#),
            (None, Some(9))
        );
        assert_eq!(counts(r#"{"usage":[1,2]}"#), (None, None));
        assert_eq!(counts(r#"{"usage":{}}"#), (None, None));
    }
}
