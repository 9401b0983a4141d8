//! Routing-key templates: `"{model}.{endpoint}"` becomes each row's values joined by the
//! literal text between them. Rows of a batch are grouped by their routing key, so a message
//! never mixes keys (which keyed partitioning over a consistent-hash exchange relies on).

use arrow::array::{Array, AsArray};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use indexmap::IndexMap;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Column(usize),
}

/// A parsed routing-key template.
#[derive(Debug, Clone)]
pub struct RoutingTemplate {
    parts: Vec<Part>,
}

impl RoutingTemplate {
    /// Parses `template` against `schema`; the error names the unknown column or the syntax
    /// problem.
    pub fn parse(template: &str, schema: &Schema) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in routing key template {template:?}"))?;
            let name = after[..close].trim();
            let index = schema.index_of(name).map_err(|_| {
                let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!(
                    "routing key template {template:?} names `{name}`, which is not a column of the input (columns: {})",
                    columns.join(", ")
                )
            })?;
            parts.push(Part::Column(index));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!(
                "unmatched `}}` in routing key template {template:?}"
            ));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// The routing key when the template names no column.
    pub fn constant(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => Some(text.as_str()),
                Part::Column(_) => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|texts| texts.concat())
    }

    /// Splits `batch` into (routing key, rows) groups, in order of first appearance. A null
    /// value renders as an empty string.
    pub fn group(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>, ArrowError> {
        if let Some(key) = self.constant() {
            return Ok(vec![(key, batch.clone())]);
        }
        let options = FormatOptions::default();
        let formatters = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Column(index) => {
                    let column = batch.column(*index);
                    let formatter = match column.data_type() {
                        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => None,
                        _ => Some(ArrayFormatter::try_new(column.as_ref(), &options)?),
                    };
                    Ok(Some((column.clone(), formatter)))
                }
                Part::Literal(_) => Ok(None),
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        let mut groups: IndexMap<String, Vec<u32>> = IndexMap::new();
        let mut key = String::new();
        for row in 0..batch.num_rows() {
            key.clear();
            for (part, column) in self.parts.iter().zip(&formatters) {
                match (part, column) {
                    (Part::Literal(text), _) => key.push_str(text),
                    (Part::Column(_), Some((array, formatter))) => {
                        if array.is_null(row) {
                            continue;
                        }
                        match formatter {
                            Some(formatter) => {
                                use std::fmt::Write;
                                let _ = write!(key, "{}", formatter.value(row));
                            }
                            None => key.push_str(string_value(array.as_ref(), row)),
                        }
                    }
                    (Part::Column(_), None) => {}
                }
            }
            match groups.get_mut(key.as_str()) {
                Some(rows) => rows.push(row as u32),
                None => {
                    groups.insert(key.clone(), vec![row as u32]);
                }
            }
        }
        if groups.len() == 1 {
            let (key, _) = groups.into_iter().next().unwrap_or_default();
            return Ok(vec![(key, batch.clone())]);
        }
        groups
            .into_iter()
            .map(|(key, rows)| {
                let indices = arrow::array::UInt32Array::from(rows);
                Ok((key, take_record_batch(batch, &indices)?))
            })
            .collect()
    }
}

fn string_value(array: &dyn Array, row: usize) -> &str {
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row),
        DataType::Utf8View => array.as_string_view().value(row),
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall};

    fn call(model: Option<&str>, endpoint: &str, status: u16) -> ApiCall {
        ApiCall {
            request_id: "r".into(),
            model: model.map(str::to_string),
            endpoint: Some(endpoint.into()),
            status_code: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn rows_are_grouped_by_their_rendered_key() {
        let schema = api_call_schema();
        let template = RoutingTemplate::parse("calls.{model}.{http.response.status_code}", &schema);
        assert!(template.unwrap_err().contains("not a column"));
        let template = RoutingTemplate::parse("calls.{model}.{status_code}", &schema).unwrap();
        let batch = api_calls_to_batch(&[
            call(Some("a"), "/x", 200),
            call(Some("b"), "/x", 200),
            call(Some("a"), "/y", 200),
            call(None, "/x", 500),
        ]);
        let groups = template.group(&batch).unwrap();
        let summary: Vec<(String, usize)> = groups
            .iter()
            .map(|(k, b)| (k.clone(), b.num_rows()))
            .collect();
        assert_eq!(
            summary,
            [
                ("calls.a.200".to_string(), 2),
                ("calls.b.200".to_string(), 1),
                ("calls..500".to_string(), 1)
            ]
        );
    }

    #[test]
    fn a_constant_template_keeps_the_batch_whole_and_bad_syntax_is_named() {
        let schema = api_call_schema();
        let template = RoutingTemplate::parse("api_calls", &schema).unwrap();
        assert_eq!(template.constant().as_deref(), Some("api_calls"));
        assert!(RoutingTemplate::parse("{model", &schema)
            .unwrap_err()
            .contains("unclosed"));
        assert!(RoutingTemplate::parse("model}", &schema)
            .unwrap_err()
            .contains("unmatched"));
    }
}
