//! `null`: accepts and discards every batch (its metrics still count them). For benchmarks and
//! for trying a pipeline out.

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentResult, Sink};
use engine::config::ConfigError;
use engine::registry::BuildContext;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NullConfig {}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    let _: NullConfig = ctx.spec.settings()?;
    Ok(Box::new(NullSink))
}

pub struct NullSink;

#[async_trait]
impl Sink for NullSink {
    async fn write(&mut self, _batch: RecordBatch) -> ComponentResult {
        Ok(())
    }

    async fn flush(&mut self) -> ComponentResult {
        Ok(())
    }
}
