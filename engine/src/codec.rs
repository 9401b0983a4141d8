//! Wire encodings of event batches in broker messages. `json`: newline-delimited JSON objects
//! (api_call rows in their documented JSON form, any other schema through arrow-json); a
//! single-event message is therefore one plain JSON object. `arrow`: an Arrow IPC stream (schema
//! then record batches), compact and cheap to decode. Decoding is strict: a body that is not
//! entirely valid yields an error naming the line and field, and nothing from it is used. That
//! includes values no call can have: a negative or non-finite latency, TTFB, TTFT, tokens per
//! second or cost, and a status code outside 100–599. An Arrow stream from an earlier version,
//! without the columns added since, is read with those columns null.

use arrow::buffer::Buffer;
use arrow::datatypes::Schema;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, TimestampMicrosecondArray, UInt16Array,
};

use crate::schema::api_call::{
    api_call_schema, batch_to_api_calls, ApiCall, COST_USD, LATENCY_MS, OUTPUT_TOKENS_PER_SECOND,
    STATUS_CODE, TTFB_MS, TTFT_MS,
};

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
    #[error("event {event}: field `{field}` {problem}")]
    Invalid {
        /// 1-based position of the event in the message.
        event: usize,
        field: &'static str,
        problem: String,
    },
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
    let decoded = if arrow {
        decode_arrow(body).map(DecodedCalls::Batches)
    } else if first == b'[' {
        decode_json_array(body).map(DecodedCalls::Rows)
    } else {
        decode_json_lines(body).map(DecodedCalls::Rows)
    }?;
    validate(&decoded)?;
    Ok(decoded)
}

/// Checks every event of `decoded` for values no call can have.
pub fn validate(decoded: &DecodedCalls) -> Result<(), CodecError> {
    match decoded {
        DecodedCalls::Rows(rows) => {
            for (index, call) in rows.iter().enumerate() {
                check_call(
                    index + 1,
                    &[
                        (LATENCY_MS, Some(call.latency_ms)),
                        (TTFB_MS, call.ttfb_ms),
                        (TTFT_MS, call.ttft_ms),
                        (OUTPUT_TOKENS_PER_SECOND, call.output_tokens_per_second),
                        (COST_USD, call.cost_usd),
                    ],
                    call.status_code,
                )?;
            }
        }
        DecodedCalls::Batches(batches) => {
            let mut offset = 0;
            for batch in batches {
                let floats: Vec<(&'static str, Option<&Float64Array>)> = [
                    LATENCY_MS,
                    TTFB_MS,
                    TTFT_MS,
                    OUTPUT_TOKENS_PER_SECOND,
                    COST_USD,
                ]
                .into_iter()
                .map(|name| {
                    (
                        name,
                        batch
                            .column_by_name(name)
                            .and_then(|c| c.as_any().downcast_ref::<Float64Array>()),
                    )
                })
                .collect();
                let status = batch
                    .column_by_name(STATUS_CODE)
                    .and_then(|c| c.as_any().downcast_ref::<UInt16Array>());
                for row in 0..batch.num_rows() {
                    let value = |array: Option<&Float64Array>| {
                        array.filter(|a| a.is_valid(row)).map(|a| a.value(row))
                    };
                    let values: Vec<(&'static str, Option<f64>)> = floats
                        .iter()
                        .map(|(name, array)| (*name, value(*array)))
                        .collect();
                    let status = status.filter(|s| s.is_valid(row)).map(|s| s.value(row));
                    check_call(offset + row + 1, &values, status)?;
                }
                offset += batch.num_rows();
            }
        }
    }
    Ok(())
}

fn check_call(
    event: usize,
    durations: &[(&'static str, Option<f64>)],
    status: Option<u16>,
) -> Result<(), CodecError> {
    for (field, value) in durations {
        if let Some(value) = value {
            if !value.is_finite() || *value < 0.0 {
                return Err(CodecError::Invalid {
                    event,
                    field,
                    problem: format!("is {value}; it must be a finite number, at least 0"),
                });
            }
        }
    }
    if let Some(status) = status.filter(|s| !(100..=599).contains(s)) {
        return Err(CodecError::Invalid {
            event,
            field: STATUS_CODE,
            problem: format!("is {status}; an HTTP status code is 100 to 599"),
        });
    }
    Ok(())
}

/// The events of `decoded` stamped after `limit` (µs since the epoch), taken out of it: what
/// is left, and what was taken, in order.
pub fn take_future(
    decoded: DecodedCalls,
    limit: i64,
) -> Result<(DecodedCalls, Vec<ApiCall>), CodecError> {
    match decoded {
        DecodedCalls::Rows(rows) => {
            let (future, kept): (Vec<ApiCall>, Vec<ApiCall>) =
                rows.into_iter().partition(|call| call.event_time > limit);
            Ok((DecodedCalls::Rows(kept), future))
        }
        DecodedCalls::Batches(batches) => {
            let mut kept = Vec::with_capacity(batches.len());
            let mut future = Vec::new();
            for batch in batches {
                let times = batch
                    .column_by_name(crate::schema::api_call::EVENT_TIME)
                    .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                    .ok_or_else(|| CodecError::SchemaMismatch("no event_time column".into()))?;
                if !times.iter().any(|t| t.is_some_and(|t| t > limit)) {
                    kept.push(batch);
                    continue;
                }
                let late: BooleanArray = times
                    .iter()
                    .map(|t| Some(t.is_some_and(|t| t > limit)))
                    .collect();
                let on_time =
                    arrow::compute::not(&late).map_err(|e| CodecError::Arrow(e.to_string()))?;
                let taken = arrow::compute::filter_record_batch(&batch, &late)
                    .map_err(|e| CodecError::Arrow(e.to_string()))?;
                future.extend(
                    batch_to_api_calls(&taken).map_err(|e| CodecError::Arrow(e.to_string()))?,
                );
                let rest = arrow::compute::filter_record_batch(&batch, &on_time)
                    .map_err(|e| CodecError::Arrow(e.to_string()))?;
                if rest.num_rows() > 0 {
                    kept.push(rest);
                }
            }
            Ok((DecodedCalls::Batches(kept), future))
        }
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
    // The push decoder only ever holds bytes the body has: the pull reader allocates each
    // message's declared length up front, so 200 bytes claiming 2 GB cost 2 GB (found by
    // the `broker-message` fuzz target).
    // arrow's IPC reader panics on some malformed streams (an unknown type, a buffer past
    // the body's end): a message that makes it panic is refused like any other malformed one.
    std::panic::catch_unwind(|| decode_arrow_unguarded(body)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("the decoder panicked");
        Err(CodecError::Arrow(format!("malformed stream ({why})")))
    })
}

fn decode_arrow_unguarded(body: &[u8]) -> Result<Vec<RecordBatch>, CodecError> {
    let arrow_error = |e: arrow::error::ArrowError| CodecError::Arrow(e.to_string());
    let mut decoder = StreamDecoder::new();
    let mut buffer = Buffer::from_slice_ref(body);
    let mut decoded = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer).map_err(arrow_error)? {
            decoded.push(batch);
        }
    }
    decoder.finish().map_err(arrow_error)?;
    let schema = decoder
        .schema()
        .ok_or_else(|| CodecError::Arrow("the stream has no schema".into()))?;
    let expected = api_call_schema();
    let present = check_api_call_schema(schema.as_ref(), expected.as_ref())?;
    let mut batches = Vec::new();
    for batch in decoded {
        // An earlier version's stream lacks the columns added since: they are null.
        let mut columns = batch.columns().to_vec();
        for field in &expected.fields()[present..] {
            columns.push(
                arrow::array::new_null_array(field.data_type(), batch.num_rows()) as ArrayRef,
            );
        }
        // Re-label with the canonical schema (metadata differences are not errors).
        let batch = RecordBatch::try_new(expected.clone(), columns)
            .map_err(|e| CodecError::SchemaMismatch(e.to_string()))?;
        batches.push(batch);
    }
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Err(CodecError::Empty);
    }
    Ok(batches)
}

/// Checks that `actual` is api_call's schema, or one of its earlier versions (a prefix of it
/// whose missing columns are nullable); returns how many of its columns are present.
fn check_api_call_schema(actual: &Schema, expected: &Schema) -> Result<usize, CodecError> {
    let missing_nullable = expected
        .fields()
        .iter()
        .skip(actual.fields().len())
        .all(|field| field.is_nullable());
    if actual.fields().len() > expected.fields().len() || !missing_nullable {
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
    Ok(actual.fields().len())
}

fn is_api_call_schema(schema: &Schema) -> bool {
    let expected = api_call_schema();
    check_api_call_schema(schema, expected.as_ref()).is_ok_and(|n| n == expected.fields().len())
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
    fn an_arrow_message_claiming_gigabytes_is_refused_without_allocating_them() {
        // A continuation marker and a metadata length of 2 GiB, then a few bytes.
        let mut body = vec![0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x80];
        body.extend_from_slice(b"not a flatbuffer");
        let message = decode_api_calls(&body, Some(ARROW_CONTENT_TYPE))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("invalid Arrow IPC stream"), "{message}");
        // JSON sent as Arrow: its first four bytes read as a length near 2 GB.
        let json = br#"[{"timestamp": "2026-05-01T10:00:00Z", "request_id": "r1"}]"#;
        assert!(decode_api_calls(json, Some(ARROW_CONTENT_TYPE)).is_err());
    }

    #[test]
    fn arrow_streams_that_make_the_ipc_reader_panic_are_refused() {
        // Found by the `broker-message` fuzz target; the first byte is the target's flag.
        for input in [
            include_bytes!("../../benches/fuzz/corpus/broker-message/regression-arrow-panic-1")
                .as_slice(),
            include_bytes!("../../benches/fuzz/corpus/broker-message/regression-arrow-panic-2"),
            include_bytes!("../../benches/fuzz/corpus/broker-message/regression-arrow-panic-3"),
            include_bytes!("../../benches/fuzz/corpus/broker-message/regression-arrow-panic-4"),
        ] {
            let message = decode_api_calls(&input[1..], Some(ARROW_CONTENT_TYPE))
                .unwrap_err()
                .to_string();
            assert!(message.starts_with("invalid Arrow IPC stream"), "{message}");
        }
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

    #[test]
    fn values_no_call_can_have_are_refused_with_the_field_named() {
        let encoded =
            |calls: &[ApiCall], encoding| encode(&api_calls_to_batch(calls), encoding).unwrap();
        for encoding in [Encoding::Json, Encoding::Arrow] {
            let mut negative = call(2);
            negative.latency_ms = -5.0;
            let error = decode_api_calls(&encoded(&[call(1), negative], encoding), None)
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("event 2: field `latency_ms` is -5"),
                "{encoding:?}: {error}"
            );
            let mut status = call(1);
            status.status_code = Some(42);
            let error = decode_api_calls(&encoded(&[status], encoding), None)
                .unwrap_err()
                .to_string();
            assert!(error.contains("`status_code` is 42"), "{error}");
            let mut cost = call(1);
            cost.cost_usd = Some(-0.5);
            assert!(decode_api_calls(&encoded(&[cost], encoding), None).is_err());
        }
        // Arrow can carry what JSON cannot: NaN and infinity.
        let mut nan = call(1);
        nan.ttft_ms = Some(f64::NAN);
        let error = decode_api_calls(&encoded(&[nan], Encoding::Arrow), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("field `ttft_ms` is NaN"), "{error}");
    }

    #[test]
    fn an_arrow_stream_of_the_earlier_schema_is_read_with_the_new_columns_null() {
        let batch = api_calls_to_batch(&[call(1), call(2)]);
        let old_fields = 19;
        let old_schema =
            std::sync::Arc::new(Schema::new(batch.schema().fields()[..old_fields].to_vec()));
        let old = RecordBatch::try_new(old_schema, batch.columns()[..old_fields].to_vec()).unwrap();
        let body = encode(&old, Encoding::Arrow).unwrap();
        let DecodedCalls::Batches(batches) = decode_api_calls(&body, None).unwrap() else {
            panic!("batches");
        };
        let rows = batch_to_api_calls(&batches[0]).unwrap();
        assert_eq!(rows, vec![call(1), call(2)]);
    }

    #[test]
    fn events_in_the_future_are_taken_out_of_either_form() {
        let mut future = call(3);
        future.event_time = 4_102_444_800_000_000; // 2100
        let limit = 1_800_000_000_000_000;
        let rows = DecodedCalls::Rows(vec![call(1), future.clone(), call(2)]);
        let (kept, taken) = take_future(rows, limit).unwrap();
        assert_eq!((kept.len(), taken.clone()), (2, vec![future.clone()]));
        let batches = DecodedCalls::Batches(vec![api_calls_to_batch(&[
            call(1),
            future.clone(),
            call(2),
        ])]);
        let (kept, taken) = take_future(batches, limit).unwrap();
        assert_eq!((kept.len(), taken), (2, vec![future]));
    }
}
