//! Wire encodings of event batches in broker messages. `json`: newline-delimited JSON objects
//! (api_call rows in their documented JSON form, any other schema through arrow-json); a
//! single-event message is therefore one plain JSON object. `arrow`: an Arrow IPC stream (schema
//! then record batches), compact and cheap to decode. Decoding is strict: a body that is not
//! entirely valid yields an error naming the line and field, and nothing from it is used.

use std::io::Cursor;

use arrow::datatypes::Schema;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::schema::api_call::{api_call_schema, batch_to_api_calls, ApiCall};

/// MIME type of a `json` body.
pub const JSON_CONTENT_TYPE: &str = "application/x-ndjson";
/// MIME type of an `arrow` body.
pub const ARROW_CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// How events are encoded in a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Json,
    Arrow,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON_CONTENT_TYPE,
            Encoding::Arrow => ARROW_CONTENT_TYPE,
        }
    }
}

/// Why a body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty message body")]
    Empty,
    #[error("line {line}: {message}")]
    JsonLine { line: usize, message: String },
    #[error("invalid JSON array: {0}")]
    JsonArray(String),
    #[error("invalid Arrow IPC stream: {0}")]
    Arrow(String),
    #[error("the Arrow stream's schema is not api_call's: {0}")]
    SchemaMismatch(String),
    #[error("encoding: {0}")]
    Encode(String),
}

/// Encodes a batch (or a slice of one) as one message body.
pub fn encode(batch: &RecordBatch, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    match encoding {
        Encoding::Json => {
            if is_api_call_schema(batch.schema().as_ref()) {
                let calls =
                    batch_to_api_calls(batch).map_err(|e| CodecError::Encode(e.to_string()))?;
                encode_api_calls_json(calls.iter())
            } else {
                let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
                writer
                    .write(batch)
                    .map_err(|e| CodecError::Encode(e.to_string()))?;
                writer
                    .finish()
                    .map_err(|e| CodecError::Encode(e.to_string()))?;
                Ok(writer.into_inner())
            }
        }
        Encoding::Arrow => {
            let mut body = Vec::with_capacity(batch.get_array_memory_size() / 2 + 512);
            let mut writer = StreamWriter::try_new(&mut body, batch.schema().as_ref())
                .map_err(|e| CodecError::Encode(e.to_string()))?;
            writer
                .write(batch)
                .map_err(|e| CodecError::Encode(e.to_string()))?;
            writer
                .finish()
                .map_err(|e| CodecError::Encode(e.to_string()))?;
            drop(writer);
            Ok(body)
        }
    }
}

/// Encodes api_call rows as newline-delimited JSON.
pub fn encode_api_calls_json<'a>(
    calls: impl Iterator<Item = &'a ApiCall>,
) -> Result<Vec<u8>, CodecError> {
    let mut body = Vec::new();
    for call in calls {
        if !body.is_empty() {
            body.push(b'\n');
        }
        serde_json::to_writer(&mut body, call).map_err(|e| CodecError::Encode(e.to_string()))?;
    }
    Ok(body)
}

/// Decoded api_call events: rows from JSON, or batches straight from Arrow.
#[derive(Debug)]
pub enum DecodedCalls {
    Rows(Vec<ApiCall>),
    Batches(Vec<RecordBatch>),
}

impl DecodedCalls {
    pub fn len(&self) -> usize {
        match self {
            DecodedCalls::Rows(rows) => rows.len(),
            DecodedCalls::Batches(batches) => batches.iter().map(|b| b.num_rows()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes a message body holding api_call events. The content type, when given, picks the
/// encoding; otherwise it is recognised from the first byte (`{` / `[` JSON, `0xFF` Arrow).
pub fn decode_api_calls(
    body: &[u8],
    content_type: Option<&str>,
) -> Result<DecodedCalls, CodecError> {
    let first = body
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(CodecError::Empty)?;
    let arrow = match content_type.map(|c| c.split(';').next().unwrap_or(c).trim()) {
        Some(ARROW_CONTENT_TYPE) => true,
        Some(JSON_CONTENT_TYPE) | Some("application/json") => false,
        _ => first == 0xFF,
    };
    if arrow {
        decode_arrow(body).map(DecodedCalls::Batches)
    } else if first == b'[' {
        decode_json_array(body).map(DecodedCalls::Rows)
    } else {
        decode_json_lines(body).map(DecodedCalls::Rows)
    }
}

fn decode_json_lines(body: &[u8]) -> Result<Vec<ApiCall>, CodecError> {
    let mut calls = Vec::new();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut deserializer = serde_json::Deserializer::from_slice(line);
        let call =
            serde_path_to_error::deserialize::<_, ApiCall>(&mut deserializer).map_err(|e| {
                CodecError::JsonLine {
                    line: index + 1,
                    message: describe_json_error(&e),
                }
            })?;
        deserializer.end().map_err(|e| CodecError::JsonLine {
            line: index + 1,
            message: e.to_string(),
        })?;
        calls.push(call);
    }
    if calls.is_empty() {
        return Err(CodecError::Empty);
    }
    Ok(calls)
}

fn decode_json_array(body: &[u8]) -> Result<Vec<ApiCall>, CodecError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let calls = serde_path_to_error::deserialize::<_, Vec<ApiCall>>(&mut deserializer)
        .map_err(|e| CodecError::JsonArray(describe_json_error(&e)))?;
    deserializer
        .end()
        .map_err(|e| CodecError::JsonArray(e.to_string()))?;
    if calls.is_empty() {
        return Err(CodecError::Empty);
    }
    Ok(calls)
}

fn describe_json_error(error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    if path.is_empty() || path == "." {
        error.inner().to_string()
    } else {
        format!("field `{path}`: {}", error.inner())
    }
}

fn decode_arrow(body: &[u8]) -> Result<Vec<RecordBatch>, CodecError> {
    let reader = StreamReader::try_new(Cursor::new(body), None)
        .map_err(|e| CodecError::Arrow(e.to_string()))?;
    let expected = api_call_schema();
    check_api_call_schema(reader.schema().as_ref(), expected.as_ref())?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| CodecError::Arrow(e.to_string()))?;
        // Re-label with the canonical schema (metadata differences are not errors).
        let batch = RecordBatch::try_new(expected.clone(), batch.columns().to_vec())
            .map_err(|e| CodecError::SchemaMismatch(e.to_string()))?;
        batches.push(batch);
    }
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Err(CodecError::Empty);
    }
    Ok(batches)
}

fn check_api_call_schema(actual: &Schema, expected: &Schema) -> Result<(), CodecError> {
    if actual.fields().len() != expected.fields().len() {
        return Err(CodecError::SchemaMismatch(format!(
            "{} columns, expected {}",
            actual.fields().len(),
            expected.fields().len()
        )));
    }
    for (got, want) in actual.fields().iter().zip(expected.fields()) {
        if got.name() != want.name() || got.data_type() != want.data_type() {
            return Err(CodecError::SchemaMismatch(format!(
                "column `{}` {} where `{}` {} was expected",
                got.name(),
                got.data_type(),
                want.name(),
                want.data_type()
            )));
        }
    }
    Ok(())
}

fn is_api_call_schema(schema: &Schema) -> bool {
    check_api_call_schema(schema, api_call_schema().as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::api_call::api_calls_to_batch;
    use crate::schema::api_call::Outcome;

    fn call(i: u32) -> ApiCall {
        ApiCall {
            event_time: 1_700_000_000_000_000 + i64::from(i),
            request_id: format!("r{i}"),
            model: Some("gpt-4o".into()),
            endpoint: Some("/v1/chat/completions".into()),
            status_code: Some(200),
            outcome: Outcome::Ok,
            latency_ms: 12.5 + f64::from(i),
            output_tokens: Some(i),
            ..Default::default()
        }
    }

    #[test]
    fn both_encodings_round_trip_api_calls() {
        let calls: Vec<ApiCall> = (0..5).map(call).collect();
        let batch = api_calls_to_batch(&calls);
        let json = encode(&batch, Encoding::Json).unwrap();
        assert_eq!(json.iter().filter(|&&b| b == b'\n').count(), 4);
        match decode_api_calls(&json, Some(JSON_CONTENT_TYPE)).unwrap() {
            DecodedCalls::Rows(rows) => assert_eq!(rows, calls),
            other => panic!("{other:?}"),
        }
        let arrow = encode(&batch, Encoding::Arrow).unwrap();
        match decode_api_calls(&arrow, None).unwrap() {
            DecodedCalls::Batches(batches) => {
                assert_eq!(batches.len(), 1);
                assert_eq!(batch_to_api_calls(&batches[0]).unwrap(), calls);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_json_array_and_a_single_object_decode() {
        let one = serde_json::to_vec(&call(1)).unwrap();
        assert_eq!(decode_api_calls(&one, None).unwrap().len(), 1);
        let array = serde_json::to_vec(&vec![call(1), call(2)]).unwrap();
        assert_eq!(
            decode_api_calls(&array, Some("application/json"))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        let error = |body: &[u8]| decode_api_calls(body, None).unwrap_err().to_string();
        assert_eq!(error(b""), "empty message body");
        assert_eq!(error(b" \n "), "empty message body");
        assert!(
            error(b"{not json").starts_with("line 1: "),
            "{}",
            error(b"{not json")
        );
        let good = serde_json::to_string(&call(1)).unwrap();
        let wrong_type = good.replace(
            "\"http.response.status_code\":200",
            "\"http.response.status_code\":\"ok\"",
        );
        let message = error(format!("{good}\n{wrong_type}").as_bytes());
        assert!(
            message.starts_with("line 2: field `http.response.status_code`: invalid type"),
            "{message}"
        );
        let mut invalid_utf8 = good.clone().into_bytes();
        let at = good.find("gpt-4o").unwrap();
        invalid_utf8[at] = 0xC3;
        invalid_utf8[at + 1] = 0x28;
        assert!(error(&invalid_utf8).contains("line 1"));
        let arrow = encode(&api_calls_to_batch(&[call(1)]), Encoding::Arrow).unwrap();
        let truncated = error(&arrow[..arrow.len() / 2]);
        assert!(
            truncated.starts_with("invalid Arrow IPC stream"),
            "{truncated}"
        );
        let trailing = format!("{good} 42");
        assert!(error(trailing.as_bytes()).contains("trailing"));
    }

    #[test]
    fn an_arrow_stream_of_another_schema_is_rejected() {
        let other = crate::schema::window_metrics::window_metrics_schema(&[], &[0.5]);
        let batch = RecordBatch::new_empty(other);
        let body = encode(&batch, Encoding::Arrow).unwrap();
        let message = decode_api_calls(&body, Some(ARROW_CONTENT_TYPE))
            .unwrap_err()
            .to_string();
        assert!(message.contains("not api_call's"), "{message}");
    }

    #[test]
    fn other_schemas_encode_as_json_lines() {
        let batch = api_calls_to_batch(&[call(1)]);
        let projected = batch.project(&[1, 2]).unwrap();
        let body = String::from_utf8(encode(&projected, Encoding::Json).unwrap()).unwrap();
        assert_eq!(
            body.trim(),
            r#"{"request_id":"r1","model":"gpt-4o"}"#,
            "{body}"
        );
    }
}
