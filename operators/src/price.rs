//! `price`: gives api_call rows their `cost_usd` from a price table (see `engine::pricing`), for
//! calls recorded without one — events from an edge proxy without prices, the HTTP ingest
//! endpoint, replayed history — or, with `overwrite = true`, for every row (a central price
//! table that replaces the edges'). A row whose model has no price keeps a null cost and is
//! counted in the `unpriced_calls` metric; a row without usage has no cost to compute.
//!
//! ```toml
//! [operators.priced]
//! type = "price"
//! inputs = ["calls"]
//! prices_file = "prices.toml"
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use engine::component::{Collector, ComponentResult, Operator};
use engine::config::ConfigError;
use engine::pricing::{Price, PriceTable};
use engine::registry::{BuildContext, BuiltOperator, OutputPort};
use engine::schema::api_call::{
    timestamp_type, CACHED_INPUT_TOKENS, COST_USD, EVENT_TIME, INPUT_TOKENS, MODEL, OUTPUT_TOKENS,
};
use engine::schema::{require_field, typed_column};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceConfig {
    /// A TOML file of `[[prices]]`, relative to the config file.
    prices_file: Option<PathBuf>,
    /// Prices given inline, before those of `prices_file`.
    #[serde(default)]
    prices: Vec<Price>,
    /// Price every row, replacing a cost it carries; by default only rows without one.
    #[serde(default)]
    overwrite: bool,
}

struct Columns {
    time: usize,
    model: usize,
    input: usize,
    cached: Option<usize>,
    output: usize,
    cost: usize,
}

pub struct PriceOperator {
    table: PriceTable,
    overwrite: bool,
    columns: Columns,
    schema: SchemaRef,
    unpriced: Arc<AtomicU64>,
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltOperator, ConfigError> {
    let config: PriceConfig = ctx.spec.settings()?;
    let inline = PriceTable::new(config.prices).map_err(|e| ctx.spec.error_at_key("prices", e))?;
    let table = match &config.prices_file {
        Some(path) => inline.extended(
            PriceTable::from_file(&ctx.spec.resolve_path(path))
                .map_err(|e| ctx.spec.error_at_key("prices_file", e))?,
        ),
        None => inline,
    };
    if table.is_empty() {
        return Err(ctx
            .spec
            .error("a price operator needs `prices_file` or `prices`"));
    }
    let schema = ctx.input_schema()?;
    let input_error = |message: String| {
        ctx.spec.error_at_input(
            0,
            format!("the input cannot be priced: {message} (price needs api_call rows)"),
        )
    };
    let index = |name: &str, data_type: DataType| {
        require_field(&schema, name, &data_type)
            .map_err(input_error)
            .and_then(|()| {
                schema
                    .index_of(name)
                    .map_err(|e| input_error(e.to_string()))
            })
    };
    let columns = Columns {
        time: index(EVENT_TIME, timestamp_type())?,
        model: index(MODEL, DataType::Utf8)?,
        input: index(INPUT_TOKENS, DataType::UInt32)?,
        cached: schema.index_of(CACHED_INPUT_TOKENS).ok(),
        output: index(OUTPUT_TOKENS, DataType::UInt32)?,
        cost: index(COST_USD, DataType::Float64)?,
    };
    Ok(BuiltOperator {
        operator: Box::new(PriceOperator {
            table,
            overwrite: config.overwrite,
            columns,
            schema: schema.clone(),
            unpriced: ctx.metrics.named("unpriced_calls"),
        }),
        outputs: vec![OutputPort::default_port(schema)],
    })
}

impl PriceOperator {
    fn priced(&self, batch: &RecordBatch) -> ComponentResult<RecordBatch> {
        let times: &TimestampMicrosecondArray = typed_column(batch, self.columns.time)?;
        let models: &StringArray = typed_column(batch, self.columns.model)?;
        let input: &UInt32Array = typed_column(batch, self.columns.input)?;
        let output: &UInt32Array = typed_column(batch, self.columns.output)?;
        let cached: Option<&UInt32Array> = self
            .columns
            .cached
            .map(|i| typed_column(batch, i))
            .transpose()?;
        let cost: &Float64Array = typed_column(batch, self.columns.cost)?;
        let value = |array: &UInt32Array, row: usize| array.is_valid(row).then(|| array.value(row));
        let mut priced = Float64Builder::with_capacity(batch.num_rows());
        let mut unpriced = 0;
        for row in 0..batch.num_rows() {
            if cost.is_valid(row) && !self.overwrite {
                priced.append_value(cost.value(row));
                continue;
            }
            let (input_tokens, output_tokens) = (value(input, row), value(output, row));
            if input_tokens.is_none() && output_tokens.is_none() {
                priced.append_null();
                continue;
            }
            let price = models
                .is_valid(row)
                .then(|| self.table.price(models.value(row), times.value(row)))
                .flatten();
            match price {
                Some(price) => priced.append_value(price.cost(
                    input_tokens.unwrap_or(0),
                    cached.and_then(|c| value(c, row)).unwrap_or(0),
                    output_tokens.unwrap_or(0),
                )),
                None => {
                    unpriced += 1;
                    priced.append_null();
                }
            }
        }
        if unpriced > 0 {
            self.unpriced.fetch_add(unpriced, Ordering::Relaxed);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[self.columns.cost] = Arc::new(priced.finish());
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl Operator for PriceOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> ComponentResult {
        out.emit(self.priced(batch)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::schema::api_call::{api_calls_to_batch, batch_to_api_calls, ApiCall};

    fn operator(overwrite: bool) -> PriceOperator {
        let schema = engine::schema::api_call::api_call_schema();
        let index = |name| schema.index_of(name).unwrap();
        PriceOperator {
            table: PriceTable::new(vec![Price {
                model: "gpt-4o*".into(),
                input: 2.5,
                output: 10.0,
                cached_input: Some(1.25),
                from: None,
            }])
            .unwrap(),
            overwrite,
            columns: Columns {
                time: index(EVENT_TIME),
                model: index(MODEL),
                input: index(INPUT_TOKENS),
                cached: Some(index(CACHED_INPUT_TOKENS)),
                output: index(OUTPUT_TOKENS),
                cost: index(COST_USD),
            },
            schema: schema.clone(),
            unpriced: Arc::default(),
        }
    }

    fn call(model: &str, tokens: Option<(u32, u32)>, cost: Option<f64>) -> ApiCall {
        ApiCall {
            request_id: model.into(),
            model: Some(model.into()),
            input_tokens: tokens.map(|t| t.0),
            output_tokens: tokens.map(|t| t.1),
            cost_usd: cost,
            ..Default::default()
        }
    }

    #[test]
    fn rows_without_a_cost_are_priced_and_unknown_models_counted() {
        let price = operator(false);
        let batch = api_calls_to_batch(&[
            call("gpt-4o", Some((1_000_000, 100_000)), None),
            call("gpt-4o-mini", Some((0, 0)), Some(0.5)),
            call("mystery", Some((10, 10)), None),
            call("gpt-4o", None, None),
        ]);
        let rows = batch_to_api_calls(&price.priced(&batch).unwrap()).unwrap();
        let costs: Vec<Option<f64>> = rows.iter().map(|r| r.cost_usd).collect();
        assert_eq!(costs, vec![Some(3.5), Some(0.5), None, None]);
        assert_eq!(price.unpriced.load(Ordering::Relaxed), 1);
        let overwriting = operator(true);
        let rows = batch_to_api_calls(&overwriting.priced(&batch).unwrap()).unwrap();
        assert_eq!(rows[1].cost_usd, Some(0.0));
    }
}
