//! Series keys for the per-key operators (`anomaly`, `alert`): which input fields form the key
//! (the configured ones, or every text field), and each row's key as one string.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;

/// A configuration error: the path of the offending setting and the message.
pub type BuildError = (Vec<String>, String);

/// `["rules", "0", "name"]` from string slices.
pub fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The index of field `name`; the error, reported at `at`, lists the fields there are.
pub fn field_index(input: &Schema, name: &str, at: Vec<String>) -> Result<usize, BuildError> {
    input.index_of(name).map_err(|_| {
        (
            at,
            format!(
                "no field `{name}` in the input; it has: {}",
                engine::schema::field_names(input)
            ),
        )
    })
}

/// The key columns: the fields named in the `key` setting, or every text field.
pub fn key_columns(names: Option<&[String]>, input: &Schema) -> Result<Vec<usize>, BuildError> {
    match names {
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(i, name)| field_index(input, name, path(&["key", &i.to_string()])))
            .collect(),
        None => Ok(input
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
            })
            .map(|(i, _)| i)
            .collect()),
    }
}

/// The key columns of one batch, as text.
pub struct RowKeys {
    columns: Vec<ArrayRef>,
}

impl RowKeys {
    pub fn new(batch: &RecordBatch, key_columns: &[usize]) -> Result<Self, ArrowError> {
        let columns = key_columns
            .iter()
            .map(|&i| cast(batch.column(i), &DataType::Utf8))
            .collect::<Result<_, _>>()?;
        Ok(Self { columns })
    }

    /// Writes row `row`'s key into `key` (cleared first): the values joined by U+001F, a null
    /// as empty.
    pub fn write(&self, row: usize, key: &mut String) {
        key.clear();
        for column in &self.columns {
            let text = column.as_string::<i32>();
            if text.is_valid(row) {
                key.push_str(text.value(row));
            }
            key.push('\u{1f}');
        }
    }

    /// The value of key column `index` at `row` (empty when null).
    pub fn value(&self, index: usize, row: usize) -> String {
        let text = self.columns[index].as_string::<i32>();
        if text.is_valid(row) {
            text.value(row).to_string()
        } else {
            String::new()
        }
    }
}
