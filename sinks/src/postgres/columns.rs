//! Arrow columns as PostgreSQL values: the SQL type of each Arrow type (timestamptz, text,
//! double precision, bigint, integer, boolean, jsonb for maps) and typed vectors of one
//! batch's values, borrowed where Arrow allows, for binary COPY rows and UNNEST arrays.

use arrow::array::{Array, AsArray, MapArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};

/// The PostgreSQL type that holds an Arrow type, or `None` when unsupported.
pub fn pg_type(data_type: &DataType) -> Option<Type> {
    Some(match data_type {
        DataType::Timestamp(_, _) => Type::TIMESTAMPTZ,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Float64 | DataType::Float32 => Type::FLOAT8,
        DataType::Int64 | DataType::UInt64 | DataType::UInt32 => Type::INT8,
        DataType::Int32 | DataType::UInt16 | DataType::Int16 | DataType::UInt8 | DataType::Int8 => {
            Type::INT4
        }
        DataType::Boolean => Type::BOOL,
        DataType::Map(_, _) => Type::JSONB,
        _ => return None,
    })
}

/// The type's name as `information_schema.columns.data_type` and DDL spell it.
pub fn sql_name(pg: &Type) -> &'static str {
    match *pg {
        Type::TIMESTAMPTZ => "timestamp with time zone",
        Type::TEXT => "text",
        Type::FLOAT8 => "double precision",
        Type::INT8 => "bigint",
        Type::INT4 => "integer",
        Type::BOOL => "boolean",
        _ => "jsonb",
    }
}

/// The array type for UNNEST parameters.
pub fn array_type(pg: &Type) -> Type {
    match *pg {
        Type::TIMESTAMPTZ => Type::TIMESTAMPTZ_ARRAY,
        Type::TEXT => Type::TEXT_ARRAY,
        Type::FLOAT8 => Type::FLOAT8_ARRAY,
        Type::INT8 => Type::INT8_ARRAY,
        Type::INT4 => Type::INT4_ARRAY,
        Type::BOOL => Type::BOOL_ARRAY,
        _ => Type::JSONB_ARRAY,
    }
}

/// One column's values.
pub enum Values<'a> {
    Time(Vec<Option<DateTime<Utc>>>),
    Text(Vec<Option<&'a str>>),
    Float(Vec<Option<f64>>),
    BigInt(Vec<Option<i64>>),
    Int(Vec<Option<i32>>),
    Bool(Vec<Option<bool>>),
    Json(Vec<Option<serde_json::Value>>),
}

impl Values<'_> {
    /// Row `row`'s value, for a binary COPY row.
    pub fn value(&self, row: usize) -> &(dyn ToSql + Sync) {
        match self {
            Values::Time(v) => &v[row],
            Values::Text(v) => &v[row],
            Values::Float(v) => &v[row],
            Values::BigInt(v) => &v[row],
            Values::Int(v) => &v[row],
            Values::Bool(v) => &v[row],
            Values::Json(v) => &v[row],
        }
    }

    /// The whole column, as an array parameter.
    pub fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Values::Time(v) => v,
            Values::Text(v) => v,
            Values::Float(v) => v,
            Values::BigInt(v) => v,
            Values::Int(v) => v,
            Values::Bool(v) => v,
            Values::Json(v) => v,
        }
    }
}

fn collect<T, U>(
    array: &dyn Array,
    value: impl Fn(usize) -> T,
    convert: impl Fn(T) -> U,
) -> Vec<Option<U>> {
    (0..array.len())
        .map(|i| (!array.is_null(i)).then(|| convert(value(i))))
        .collect()
}

/// Converts every column of `batch`; an unsupported type or a u64 beyond bigint is an error
/// naming the column.
pub fn batch_values(batch: &RecordBatch) -> Result<Vec<Values<'_>>, String> {
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| column_values(field.name(), column.as_ref()))
        .collect()
}

fn column_values<'a>(name: &str, array: &'a dyn Array) -> Result<Values<'a>, String> {
    Ok(match array.data_type() {
        DataType::Timestamp(unit, _) => {
            let micros_per = |v: i64| match unit {
                TimeUnit::Second => v.saturating_mul(1_000_000),
                TimeUnit::Millisecond => v.saturating_mul(1_000),
                TimeUnit::Microsecond => v,
                TimeUnit::Nanosecond => v / 1_000,
            };
            let raw = arrow::compute::cast(array, &DataType::Int64)
                .map_err(|e| format!("column `{name}`: {e}"))?;
            let raw = raw.as_primitive::<Int64Type>();
            let mut values = Vec::with_capacity(raw.len());
            for i in 0..raw.len() {
                values.push(if raw.is_null(i) {
                    None
                } else {
                    Some(
                        DateTime::from_timestamp_micros(micros_per(raw.value(i))).ok_or_else(
                            || {
                                format!(
                                    "column `{name}`: timestamp {} is out of range",
                                    raw.value(i)
                                )
                            },
                        )?,
                    )
                });
            }
            Values::Time(values)
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            Values::Text(collect(array, |i| a.value(i), std::convert::identity))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Values::Text(collect(array, |i| a.value(i), std::convert::identity))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            Values::Text(collect(array, |i| a.value(i), std::convert::identity))
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            Values::Float(collect(array, |i| a.value(i), std::convert::identity))
        }
        DataType::Float32 => {
            let a = array.as_primitive::<Float32Type>();
            Values::Float(collect(array, |i| a.value(i), f64::from))
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            Values::BigInt(collect(array, |i| a.value(i), std::convert::identity))
        }
        DataType::UInt64 => {
            let a = array.as_primitive::<UInt64Type>();
            let mut values = Vec::with_capacity(a.len());
            for i in 0..a.len() {
                values.push(if a.is_null(i) {
                    None
                } else {
                    Some(i64::try_from(a.value(i)).map_err(|_| {
                        format!("column `{name}`: {} does not fit in bigint", a.value(i))
                    })?)
                });
            }
            Values::BigInt(values)
        }
        DataType::UInt32 => {
            let a = array.as_primitive::<UInt32Type>();
            Values::BigInt(collect(array, |i| a.value(i), i64::from))
        }
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            Values::Int(collect(array, |i| a.value(i), std::convert::identity))
        }
        DataType::UInt16 => {
            let a = array.as_primitive::<UInt16Type>();
            Values::Int(collect(array, |i| a.value(i), i32::from))
        }
        DataType::Int16 => {
            let a = array.as_primitive::<Int16Type>();
            Values::Int(collect(array, |i| a.value(i), i32::from))
        }
        DataType::UInt8 => {
            let a = array.as_primitive::<UInt8Type>();
            Values::Int(collect(array, |i| a.value(i), i32::from))
        }
        DataType::Int8 => {
            let a = array.as_primitive::<Int8Type>();
            Values::Int(collect(array, |i| a.value(i), i32::from))
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            Values::Bool(collect(array, |i| a.value(i), std::convert::identity))
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            Values::Json(collect(array, |i| i, |i| map_to_json(map, i)))
        }
        other => {
            return Err(format!(
                "column `{name}`: type {other} has no PostgreSQL mapping"
            ))
        }
    })
}

/// One map entry as a JSON object (keys and values rendered as strings).
fn map_to_json(map: &MapArray, row: usize) -> serde_json::Value {
    let entries = map.value(row);
    let options = arrow::util::display::FormatOptions::default();
    let (Ok(keys), Ok(values)) = (
        arrow::util::display::ArrayFormatter::try_new(entries.column(0).as_ref(), &options),
        arrow::util::display::ArrayFormatter::try_new(entries.column(1).as_ref(), &options),
    ) else {
        return serde_json::Value::Null;
    };
    let mut object = serde_json::Map::new();
    for i in 0..entries.len() {
        let value = if entries.column(1).is_null(i) {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(values.value(i).to_string())
        };
        object.insert(keys.value(i).to_string(), value);
    }
    serde_json::Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::schema::api_call::{api_call_schema, api_calls_to_batch, ApiCall};

    #[test]
    fn every_api_call_column_has_a_natural_sql_type() {
        let schema = api_call_schema();
        let types: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| sql_name(&pg_type(f.data_type()).unwrap()))
            .collect();
        assert_eq!(types[0], "timestamp with time zone");
        assert_eq!(types[1], "text");
        assert!(types.contains(&"jsonb"));
        let mut call = ApiCall {
            event_time: 1_700_000_000_123_456,
            request_id: "r".into(),
            status_code: Some(503),
            ..Default::default()
        };
        call.labels.insert("team".into(), "search".into());
        let batch = api_calls_to_batch(&[call]);
        let values = batch_values(&batch).unwrap();
        match &values[0] {
            Values::Time(v) => assert_eq!(v[0].unwrap().timestamp_micros(), 1_700_000_000_123_456),
            _ => panic!("event_time"),
        }
        let labels = schema.index_of("labels").unwrap();
        match &values[labels] {
            Values::Json(v) => assert_eq!(v[0].as_ref().unwrap()["team"], "search"),
            _ => panic!("labels"),
        }
        let status = schema.index_of("status_code").unwrap();
        assert!(matches!(&values[status], Values::Int(v) if v[0] == Some(503)));
    }
}
