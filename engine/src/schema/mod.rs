//! The schemas that matter most, defined once: `api_call` (one row per intercepted call),
//! `window_metrics` (one row per window and key) and `alert` (one row per alert state change).

pub mod alert;
pub mod api_call;
pub mod row_json;
pub mod window_metrics;

pub use api_call::{api_call_schema, ApiCall, ApiCallBatchBuilder, Outcome};

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;

use crate::component::{ComponentError, ComponentResult};

/// Column `index` of `batch` as its concrete array type (checked against the schema when the
/// component was built; an error here means a batch that breaks it).
pub fn typed_column<T: 'static>(batch: &RecordBatch, index: usize) -> ComponentResult<&T> {
    batch
        .column(index)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ComponentError::other(format!("column {index} has an unexpected type")))
}

/// The schema's field names, comma-separated, for error messages.
pub fn field_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `schema` has a field `name` of type `expected`; the error says what was found.
pub fn require_field(schema: &Schema, name: &str, expected: &DataType) -> Result<(), String> {
    match schema.field_with_name(name) {
        Ok(field) if field.data_type() == expected => Ok(()),
        Ok(field) => Err(format!(
            "field `{name}` has type {} but {expected} is needed",
            field.data_type()
        )),
        Err(_) => Err(format!(
            "no field `{name}` ({expected}) in the input; it has: {}",
            field_names(schema)
        )),
    }
}
