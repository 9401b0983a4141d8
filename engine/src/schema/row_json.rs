//! Rows of any schema as JSON, the way every JSON-speaking output shows them: timestamps as
//! RFC 3339 text, non-finite floats as null, nulls as null. Also where a window result's key
//! columns are.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use super::window_metrics::WINDOW_END;
use crate::time::format_micros;

/// One cell as JSON (timestamps as RFC 3339, floats as numbers, nulls as null).
pub fn cell(column: &dyn Array, row: usize) -> Value {
    if column.is_null(row) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Utf8 => Value::from(column.as_string::<i32>().value(row)),
        DataType::Utf8View => Value::from(column.as_string_view().value(row)),
        DataType::Boolean => Value::from(column.as_boolean().value(row)),
        DataType::Float64 => {
            let v = column
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row);
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
        DataType::UInt64 => Value::from(
            column
                .as_primitive::<arrow::datatypes::UInt64Type>()
                .value(row),
        ),
        DataType::UInt32 => Value::from(
            column
                .as_primitive::<arrow::datatypes::UInt32Type>()
                .value(row),
        ),
        DataType::Int64 => Value::from(
            column
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(row),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Value::from(format_micros(
            column
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row),
        )),
        other => Value::from(format!("<{other}>")),
    }
}

/// Row `row` of `batch` as a JSON object, one member per column in schema order.
pub fn row_object(batch: &RecordBatch, row: usize) -> Map<String, Value> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| (field.name().clone(), cell(column.as_ref(), row)))
        .collect()
}

/// The columns that form a row's key: everything between `window_end` and `count`
/// (a window result's key fields).
pub fn window_key_columns(schema: &SchemaRef) -> Vec<usize> {
    let start = schema.index_of(WINDOW_END).map(|i| i + 1).unwrap_or(0);
    let end = schema.index_of("count").unwrap_or(start);
    (start..end).collect()
}

/// The key columns `keys` of row `row` as one text: values joined with `|`, an absent value
/// empty, a string as itself.
pub fn key_text(batch: &RecordBatch, keys: &[usize], row: usize) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(|&i| match cell(batch.column(i).as_ref(), row) {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .collect();
    parts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Float64Array};
    use serde_json::json;

    #[test]
    fn cells_become_json_values() {
        let flags = BooleanArray::from(vec![Some(true), None]);
        assert_eq!(cell(&flags, 0), Value::Bool(true));
        assert_eq!(cell(&flags, 1), Value::Null);
        let numbers = Float64Array::from(vec![f64::NAN, 1.5]);
        assert_eq!(cell(&numbers, 0), Value::Null);
        assert_eq!(cell(&numbers, 1), json!(1.5));
    }
}
