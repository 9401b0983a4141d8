//! The `api` sink: hands window results and alert changes to the HTTP server of the same
//! process (its live state and WebSocket feed), or raw api_call events to its Prometheus
//! metrics. Takes the output of a window, anomaly or alert operator, or a source of calls; has
//! no settings.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentResult, Sink};
use engine::config::ConfigError;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::alert::{alert_schema, batch_to_notifications};
use engine::schema::api_call_schema;
use engine::schema::row_json::{key_text, row_object, window_key_columns};
use engine::schema::window_metrics::{WINDOW, WINDOW_START};
use serde::Deserialize;

use super::live::LiveState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSinkConfig {}

pub fn build(
    ctx: &BuildContext<'_, '_>,
    live: Arc<LiveState>,
) -> Result<Box<dyn Sink>, ConfigError> {
    let _: ApiSinkConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    let rows = if schema.fields() == alert_schema().fields() {
        Rows::Alerts
    } else if schema.fields() == api_call_schema().fields() {
        Rows::Calls
    } else if schema.index_of(WINDOW).is_ok() && schema.index_of(WINDOW_START).is_ok() {
        Rows::Windows
    } else {
        return Err(ctx.spec.error_at_input(
            0,
            "the api sink serves window results, alerts and api_call events: connect it to a window, anomaly or alert operator, or to a source of calls",
        ));
    };
    Ok(Box::new(ApiSink {
        live,
        rows,
        keys: window_key_columns(&schema),
        metrics: ctx.metrics.clone(),
    }))
}

/// What the sink's input carries.
enum Rows {
    Windows,
    Alerts,
    Calls,
}

pub struct ApiSink {
    live: Arc<LiveState>,
    rows: Rows,
    keys: Vec<usize>,
    metrics: Arc<ComponentMetrics>,
}

#[async_trait]
impl Sink for ApiSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        match self.rows {
            Rows::Alerts => {
                for notification in batch_to_notifications(&batch)? {
                    self.live.record_alert(&notification);
                }
            }
            Rows::Calls => self.live.calls.record(&batch),
            Rows::Windows => {
                for row in 0..batch.num_rows() {
                    let key = key_text(&batch, &self.keys, row);
                    self.live.record_window(key, row_object(&batch, row));
                }
            }
        }
        self.metrics.record_out(batch.num_rows());
        Ok(())
    }

    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }
}
