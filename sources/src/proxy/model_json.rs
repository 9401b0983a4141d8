//! The parts of a model API's JSON the response observer reads — `usage` objects, and whether an
//! event-stream frame carries generated content — each read leniently in one pass (see
//! [`lenient`](super::lenient)): no `serde_json::Value` is built for a frame, and a field of an
//! unexpected type is read past rather than spoiling the frame.

use serde::de::{IgnoredAny, MapAccess, SeqAccess};

use super::lenient::{deserialize_leniently, Count, Lenient, NonEmptyText};
use super::observe::Observed;

/// A `usage` object: both spellings of its counts (`prompt_tokens` / `completion_tokens` and
/// `input_tokens` / `output_tokens`); other fields are read past. A count that is not a whole
/// number is ignored, as if absent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Usage {
    prompt_tokens: Count,
    input_tokens: Count,
    completion_tokens: Count,
    output_tokens: Count,
}

impl Usage {
    pub fn read_into(&self, observed: &mut Observed) {
        let number = |spellings: [Count; 2]| {
            spellings
                .iter()
                .find_map(|count| count.0)
                .map(|v| v.min(u64::from(u32::MAX)) as u32)
        };
        if let Some(input) = number([self.prompt_tokens, self.input_tokens]) {
            observed.input_tokens = Some(input);
        }
        if let Some(output) = number([self.completion_tokens, self.output_tokens]) {
            observed.output_tokens = Some(output);
            observed.output_tokens_estimated = false;
        }
    }
}

/// What one `data:` frame of an event stream says: whether it carries generated text — OpenAI
/// chat (`choices[].delta.content`, or `delta.tool_calls`), OpenAI completions
/// (`choices[].text`), Anthropic (`"type": "content_block_delta"` with `delta.text`) — and its
/// usage (`usage`, or Anthropic's `message.usage`).
#[derive(Debug, Default)]
pub struct StreamFrame {
    choices: Choices,
    content_block_delta: bool,
    delta: Delta,
    usage: Option<Usage>,
    message_usage: Option<Usage>,
}

impl StreamFrame {
    /// The frame in `data`; `None` when it is not JSON.
    pub fn parse(data: &str) -> Option<Self> {
        serde_json::from_str(data).ok()
    }

    pub fn carries_content(&self) -> bool {
        match self.choices {
            Choices::Array { content } => content,
            Choices::None => self.content_block_delta && self.delta.text,
        }
    }

    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref().or(self.message_usage.as_ref())
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

/// A `delta` object: what of it says that text was generated.
#[derive(Debug, Default)]
struct Delta {
    content: bool,
    text: bool,
    tool_calls: bool,
}

/// Anthropic's `message`, read for its `usage`.
#[derive(Debug, Default)]
struct Message {
    usage: Option<Usage>,
}

/// Whether a `type` is `content_block_delta`.
#[derive(Debug, Default)]
struct ContentBlockDelta(bool);

/// The names of the keys read here, matched without allocating; any other is `Other`.
#[derive(Debug, Default)]
enum Key {
    Choices,
    Type,
    Delta,
    Usage,
    Message,
    Content,
    Text,
    ToolCalls,
    PromptTokens,
    InputTokens,
    CompletionTokens,
    OutputTokens,
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
            "content" => Key::Content,
            "text" => Key::Text,
            "tool_calls" => Key::ToolCalls,
            "prompt_tokens" => Key::PromptTokens,
            "input_tokens" => Key::InputTokens,
            "completion_tokens" => Key::CompletionTokens,
            "output_tokens" => Key::OutputTokens,
            _ => Key::Other,
        }
    }
}

impl Lenient<'_> for ContentBlockDelta {
    fn of_str(value: &str) -> Self {
        ContentBlockDelta(value == "content_block_delta")
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

impl<'de> Lenient<'de> for Usage {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut usage = Usage::default();
        entries(map, |key, map| {
            let count = match key {
                Key::PromptTokens => &mut usage.prompt_tokens,
                Key::InputTokens => &mut usage.input_tokens,
                Key::CompletionTokens => &mut usage.completion_tokens,
                Key::OutputTokens => &mut usage.output_tokens,
                _ => return Ok(false),
            };
            *count = map.next_value()?;
            Ok(true)
        })?;
        Ok(usage)
    }
}

impl<'de> Lenient<'de> for Delta {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut delta = Delta::default();
        entries(map, |key, map| {
            match key {
                Key::Content => delta.content = map.next_value::<NonEmptyText>()?.0,
                Key::Text => delta.text = map.next_value::<NonEmptyText>()?.0,
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
            if !matches!(key, Key::Usage) {
                return Ok(false);
            }
            message.usage = map.next_value()?;
            Ok(true)
        })?;
        Ok(message)
    }
}

impl<'de> Lenient<'de> for StreamFrame {
    fn of_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut frame = StreamFrame::default();
        entries(map, |key, map| {
            match key {
                Key::Choices => frame.choices = map.next_value()?,
                Key::Type => frame.content_block_delta = map.next_value::<ContentBlockDelta>()?.0,
                Key::Delta => frame.delta = map.next_value()?,
                Key::Usage => frame.usage = map.next_value()?,
                Key::Message => frame.message_usage = map.next_value::<Message>()?.usage,
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
    Choices,
    Choice,
    Delta,
    Message,
    ContentBlockDelta,
    Key
);

#[cfg(test)]
mod tests {
    use super::*;

    fn content(data: &str) -> bool {
        StreamFrame::parse(data).is_some_and(|frame| frame.carries_content())
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
        // Role and metadata frames, empty text, and text where the style does not put it.
        assert!(!content(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!content(
            r#"{"choices":[{"delta":{"content":null}}],"usage":null}"#
        ));
        assert!(!content(r#"{"choices":[],"usage":{"prompt_tokens":7}}"#));
        assert!(!content(r#"{"type":"message_start","delta":{"text":"x"}}"#));
        assert!(!content(r#"{"choices":[{"delta":{"text":"x"}}]}"#));
        assert!(!content(r#"{"choices":[{"delta":{"content":["parts"]}}]}"#));
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
    fn usage_comes_from_the_frame_or_its_message_and_odd_fields_are_read_past() {
        let usage = |data: &str| {
            let frame = StreamFrame::parse(data).expect("JSON");
            let mut observed = Observed::default();
            if let Some(usage) = frame.usage() {
                usage.read_into(&mut observed);
            }
            (observed.input_tokens, observed.output_tokens)
        };
        assert_eq!(
            usage(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#),
            (Some(7), Some(3))
        );
        assert_eq!(
            usage(
                r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"output_tokens":1}}}"#
            ),
            (Some(25), Some(1))
        );
        assert_eq!(
            usage(r#"{"usage":null,"message":{"usage":{"input_tokens":2}}}"#),
            (Some(2), None)
        );
        assert_eq!(
            usage(
                r#"{"usage":{"prompt_tokens":"many","input_tokens":4,"completion_tokens":2.5,"details":{"a":[1]}}}"#
            ),
            (Some(4), None)
        );
        // A key spelled twice: the last one counts, as when building the whole object.
        assert_eq!(
            usage(r#"{"usage":{"completion_tokens":1,"completion_tokens":9}}"#),
            (None, Some(9))
        );
        assert_eq!(usage(r#"{"usage":[1,2]}"#), (None, None));
    }
}
