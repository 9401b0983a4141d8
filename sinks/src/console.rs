//! `console`: prints batches to stdout as a readable table (default) or as JSON lines, optionally
//! only some fields. Timestamps print as RFC 3339; floats with three decimals in tables.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use async_trait::async_trait;
use engine::component::{ComponentError, ComponentResult, Sink};
use engine::config::ConfigError;
use engine::registry::BuildContext;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleConfig {
    #[serde(default)]
    format: ConsoleFormat,
    /// Only these fields, in this order (all when absent).
    fields: Option<Vec<String>>,
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    let config: ConsoleConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    let projection = match &config.fields {
        Some(fields) => {
            let mut indices = Vec::new();
            for field in fields {
                indices.push(schema.index_of(field).map_err(|_| {
                    ctx.spec.error_at_key(
                        "fields",
                        format!(
                            "field `{field}` is not in the input; it has: {}",
                            engine::schema::field_names(&schema)
                        ),
                    )
                })?);
            }
            Some(indices)
        }
        None => None,
    };
    Ok(Box::new(ConsoleSink {
        format: config.format,
        projection,
    }))
}

pub struct ConsoleSink {
    format: ConsoleFormat,
    projection: Option<Vec<usize>>,
}

/// Rounds every Float64 column to three decimals, for display.
fn rounded(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.data_type() == &DataType::Float64 {
            let values = column.as_primitive::<Float64Type>();
            let rounded = values.unary::<_, Float64Type>(|v| (v * 1000.0).round() / 1000.0);
            columns.push(Arc::new(rounded));
        } else {
            columns.push(column.clone());
        }
        fields.push(Field::clone(field));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

impl ConsoleSink {
    pub fn render(&self, batch: &RecordBatch) -> Result<String, ComponentError> {
        let batch = match &self.projection {
            Some(indices) => batch.project(indices)?,
            None => batch.clone(),
        };
        match self.format {
            ConsoleFormat::Table => {
                Ok(format!("{}\n", pretty_format_batches(&[rounded(&batch)?])?))
            }
            // api_call rows in their documented JSON form (OpenTelemetry names), as the
            // rabbitmq sink sends them; other rows (and a projection of fields) by column name.
            ConsoleFormat::Json => {
                let body = engine::codec::encode(&batch, engine::codec::Encoding::Json)
                    .map_err(ComponentError::other)?;
                let mut text = String::from_utf8(body).map_err(ComponentError::other)?;
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                Ok(text)
            }
        }
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        let text = self.render(&batch)?;
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. piped into `head`) is not a reason to stop the pipeline.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        Ok(())
    }

    async fn flush(&mut self) -> ComponentResult {
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::schema::api_call::{api_calls_to_batch, ApiCall};

    fn batch() -> RecordBatch {
        api_calls_to_batch(&[ApiCall {
            event_time: 1_700_000_000_000_000,
            request_id: "r1".into(),
            model: Some("gpt-4o".into()),
            latency_ms: 12.34567,
            ..Default::default()
        }])
    }

    #[test]
    fn renders_tables_with_rounded_floats_and_json_lines() {
        let schema = batch().schema();
        let table = ConsoleSink {
            format: ConsoleFormat::Table,
            projection: Some(vec![
                schema.index_of("model").unwrap(),
                schema.index_of("latency_ms").unwrap(),
            ]),
        };
        let text = table.render(&batch()).unwrap();
        assert!(text.contains("| gpt-4o | 12.346     |"), "{text}");
        let json = ConsoleSink {
            format: ConsoleFormat::Json,
            projection: None,
        };
        let line = json.render(&batch()).unwrap();
        assert!(line.contains("\"request_id\":\"r1\""), "{line}");
        assert!(
            line.contains("\"gen_ai.request.model\":\"gpt-4o\""),
            "{line}"
        );
        assert!(
            line.contains("\"timestamp\":\"2023-11-14T22:13:20.000000Z\""),
            "{line}"
        );
        assert!(line.ends_with('\n'));
    }
}
