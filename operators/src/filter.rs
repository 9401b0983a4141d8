//! `filter`: keeps the rows for which a SQL boolean condition holds, e.g.
//! `condition = "status_code >= 500 AND model IN ('gpt-4o', 'llama-3') AND NOT (endpoint = '/health')"`.
//! The condition is parsed and type-checked against the input schema when the config is
//! validated, then evaluated a batch at a time by DataFusion's vectorised physical expressions.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use engine::component::{Collector, ComponentError, ComponentResult, Operator};
use engine::config::ConfigError;
use engine::registry::{BuildContext, BuiltOperator, OutputPort};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    /// A SQL boolean expression over the input's fields.
    condition: String,
}

pub struct Filter {
    predicate: Arc<dyn PhysicalExpr>,
}

/// Compiles `condition` against `schema`; the error text is DataFusion's, made readable.
pub fn compile(condition: &str, schema: &SchemaRef) -> Result<Filter, String> {
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
    let context = SessionContext::new();
    let expr = context
        .parse_sql_expr(condition, &df_schema)
        .map_err(|e| format!("invalid condition: {e}"))?;
    let predicate = context
        .create_physical_expr(expr, &df_schema)
        .map_err(|e| format!("invalid condition: {e}"))?;
    let data_type = predicate
        .data_type(schema.as_ref())
        .map_err(|e| format!("invalid condition: {e}"))?;
    if data_type != DataType::Boolean {
        return Err(format!(
            "the condition must be true or false for each row, but it gives {data_type}"
        ));
    }
    Ok(Filter { predicate })
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltOperator, ConfigError> {
    let config: FilterConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    let filter = compile(&config.condition, &schema)
        .map_err(|message| ctx.spec.error_at_key("condition", message))?;
    Ok(BuiltOperator {
        operator: Box::new(filter),
        outputs: vec![OutputPort::default_port(schema)],
    })
}

impl Filter {
    /// Whether the condition holds for each row of `batch` (null where it is unknown).
    pub fn mask(&self, batch: &RecordBatch) -> Result<BooleanArray, ComponentError> {
        let value = self
            .predicate
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| ComponentError::other(format!("evaluating the condition: {e}")))?;
        value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| ComponentError::other("the condition did not give booleans"))
    }

    /// The rows of `batch` for which the condition is true (null counts as false).
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, ComponentError> {
        let mask = self.mask(batch)?;
        let mask = &mask;
        if mask.null_count() == 0 && mask.true_count() == batch.num_rows() {
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, mask)?)
    }
}

impl Operator for Filter {
    fn process(
        &mut self,
        _input: usize,
        batch: &RecordBatch,
        out: &mut Collector,
    ) -> ComponentResult {
        out.emit(self.apply(batch)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::schema::api_call::{
        api_call_schema, api_calls_to_batch, batch_to_api_calls, ApiCall,
    };

    fn call(model: &str, status: u16, latency: f64) -> ApiCall {
        ApiCall {
            event_time: 1,
            request_id: format!("{model}-{status}"),
            model: Some(model.into()),
            endpoint: Some("/v1/chat/completions".into()),
            status_code: Some(status),
            latency_ms: latency,
            ..Default::default()
        }
    }

    fn kept(condition: &str) -> Vec<String> {
        let batch = api_calls_to_batch(&[
            call("a", 200, 10.0),
            call("b", 500, 900.0),
            call("c", 503, 50.0),
            call("a", 429, 5.0),
        ]);
        let filter = compile(condition, &api_call_schema()).unwrap();
        batch_to_api_calls(&filter.apply(&batch).unwrap())
            .unwrap()
            .into_iter()
            .map(|c| c.request_id)
            .collect()
    }

    #[test]
    fn comparisons_boolean_logic_and_in_lists() {
        assert_eq!(kept("status_code >= 500"), ["b-500", "c-503"]);
        assert_eq!(kept("status_code >= 500 AND latency_ms > 100"), ["b-500"]);
        assert_eq!(
            kept("model = 'a' OR latency_ms > 800"),
            ["a-200", "b-500", "a-429"]
        );
        assert_eq!(kept("NOT (model IN ('a', 'b'))"), ["c-503"]);
        assert_eq!(kept("model NOT IN ('a') AND status_code <> 500"), ["c-503"]);
    }

    #[test]
    fn null_fields_do_not_match() {
        // ttft_ms is null in every row: comparisons with null are not true.
        assert!(kept("ttft_ms > 0").is_empty());
        assert_eq!(kept("ttft_ms IS NULL").len(), 4);
    }

    #[test]
    fn unknown_fields_and_non_boolean_conditions_are_rejected() {
        let schema = api_call_schema();
        let error = compile("latncy_ms > 3", &schema).err().unwrap();
        assert!(error.contains("latncy_ms"), "{error}");
        let error = compile("latency_ms + 1", &schema).err().unwrap();
        assert!(error.contains("must be true or false"), "{error}");
        let error = compile("latency_ms >", &schema).err().unwrap();
        assert!(
            error.contains("invalid condition") && error.contains("SQL error"),
            "{error}"
        );
    }
}
