//! The `api` sink: hands window results and alert changes to the HTTP server of the same
//! process (its live state and WebSocket feed). Takes the output of a window, anomaly or alert
//! operator; has no settings.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentResult, Sink};
use engine::config::ConfigError;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::alert::{alert_schema, batch_to_notifications};
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
    let alerts = schema.fields() == alert_schema().fields();
    if !alerts && (schema.index_of(WINDOW).is_err() || schema.index_of(WINDOW_START).is_err()) {
        return Err(ctx.spec.error_at_input(
            0,
            "the api sink serves window results and alerts: connect it to a window, anomaly or alert operator",
        ));
    }
    Ok(Box::new(ApiSink {
        live,
        alerts,
        keys: window_key_columns(&schema),
        metrics: ctx.metrics.clone(),
    }))
}

pub struct ApiSink {
    live: Arc<LiveState>,
    alerts: bool,
    keys: Vec<usize>,
    metrics: Arc<ComponentMetrics>,
}

#[async_trait]
impl Sink for ApiSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        self.metrics.record_in(batch.num_rows());
        if self.alerts {
            for notification in batch_to_notifications(&batch)? {
                self.live.record_alert(&notification);
            }
        } else {
            for row in 0..batch.num_rows() {
                let key = key_text(&batch, &self.keys, row);
                self.live.record_window(key, row_object(&batch, row));
            }
        }
        self.metrics.record_out(batch.num_rows());
        Ok(())
    }

    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }
}
