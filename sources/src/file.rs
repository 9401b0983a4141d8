//! `file`: replays api_call events from a JSON Lines file (the JSON form of an event, one per
//! line) or a Parquet file (columns by api_call name; other types are cast, absent nullable
//! columns are null). As fast as possible (`speed = 0`, the default) or paced by event time
//! (`speed = 1.0` is recorded speed, `2.0` twice as fast). A progress bar is drawn when stderr
//! is a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{new_null_array, Array, ArrayRef, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentError, ComponentResult, Source, SourceContext};
use engine::config::ConfigError;
use engine::message::Message;
use engine::registry::{BuildContext, BuiltSource};
use engine::schema::api_call::{api_call_schema, ApiCall, ApiCallBatchBuilder, EVENT_TIME};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the pipeline at the first bad line, naming file and line.
    #[default]
    Fail,
    /// Log the bad line (file, line, reason), count it as an error, and go on.
    Skip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Default: from the extension (`.jsonl`, `.json`, `.ndjson` → jsonl; `.parquet`).
    pub format: Option<FileFormat>,
    /// 0 replays as fast as possible; 1.0 at recorded speed; 2.0 twice as fast.
    #[serde(default)]
    pub speed: f64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub on_error: OnError,
    /// Draw a progress bar: default when stderr is a terminal.
    pub progress: Option<bool>,
}

fn default_batch_size() -> usize {
    1024
}

impl FileConfig {
    pub fn resolved_format(&self) -> Result<FileFormat, String> {
        if let Some(format) = self.format {
            return Ok(format);
        }
        match self.path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "json" | "ndjson") => Ok(FileFormat::Jsonl),
            Some("parquet") => Ok(FileFormat::Parquet),
            _ => Err(format!(
                "cannot tell the format of {} from its extension; set format = \"jsonl\" or \"parquet\"",
                self.path.display()
            )),
        }
    }
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<BuiltSource, ConfigError> {
    let config: FileConfig = ctx.spec.settings()?;
    let format = config
        .resolved_format()
        .map_err(|m| ctx.spec.error_at_key("path", m))?;
    if !(config.speed >= 0.0 && config.speed.is_finite()) {
        return Err(ctx.spec.error_at_key(
            "speed",
            "`speed` must be 0 (as fast as possible) or a positive multiple of recorded speed",
        ));
    }
    if config.batch_size == 0 {
        return Err(ctx
            .spec
            .error_at_key("batch_size", "`batch_size` must be at least 1"));
    }
    Ok(BuiltSource {
        source: Box::new(FileSource { config, format }),
        schema: api_call_schema(),
    })
}

pub struct FileSource {
    config: FileConfig,
    format: FileFormat,
}

/// Paces batches by event time when a speed is set.
struct Pacer {
    speed: f64,
    first_event: Option<i64>,
    wall_start: tokio::time::Instant,
}

impl Pacer {
    async fn wait_for(&mut self, batch: &RecordBatch) {
        if self.speed <= 0.0 {
            return;
        }
        let Some(times) = batch
            .column_by_name(EVENT_TIME)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        else {
            return;
        };
        if times.is_empty() {
            return;
        }
        let time = times.value(0);
        let first = *self.first_event.get_or_insert(time);
        let offset = ((time - first).max(0) as f64 / self.speed) as u64;
        tokio::time::sleep_until(self.wall_start + Duration::from_micros(offset)).await;
    }
}

/// Reorders and casts a Parquet batch's columns into the api_call schema.
pub fn conform_to_api_call(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let schema = api_call_schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => columns.push(column.clone()),
            Some(column) => columns.push(cast(column, field.data_type()).map_err(|e| {
                format!(
                    "column `{}` ({}) cannot be read as {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                )
            })?),
            None if field.is_nullable() => {
                columns.push(new_null_array(field.data_type(), batch.num_rows()))
            }
            None => return Err(format!("required column `{}` is missing", field.name())),
        }
    }
    RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
}

fn progress_bar(enabled: bool, total: u64, unit: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{spinner}} replay [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl FileSource {
    async fn send(
        &self,
        ctx: &mut SourceContext,
        pacer: &mut Pacer,
        batch: RecordBatch,
    ) -> ComponentResult {
        pacer.wait_for(&batch).await;
        while let Ok(barrier) = ctx.barriers.try_recv() {
            ctx.output.send_control(Message::Barrier(barrier)).await?;
        }
        ctx.output.send_batch(0, batch).await
    }

    async fn run_jsonl(
        &self,
        ctx: &mut SourceContext,
        pacer: &mut Pacer,
        bar: &ProgressBar,
    ) -> ComponentResult {
        let file = tokio::fs::File::open(&self.config.path)
            .await
            .map_err(|e| {
                ComponentError::other(format!("cannot open {}: {e}", self.config.path.display()))
            })?;
        let mut lines = BufReader::with_capacity(1 << 20, file).lines();
        let mut builder = ApiCallBatchBuilder::with_capacity(self.config.batch_size);
        let mut line_number = 0u64;
        loop {
            if ctx.shutdown.is_cancelled() {
                break;
            }
            let line = lines.next_line().await.map_err(|e| {
                ComponentError::other(format!(
                    "{}:{}: cannot read: {e}",
                    self.config.path.display(),
                    line_number + 1
                ))
            })?;
            let Some(line) = line else { break };
            line_number += 1;
            bar.inc(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<ApiCall>(&line) {
                Ok(call) => builder.push(&call),
                Err(e) => {
                    let message = format!(
                        "{}:{line_number}: not an api_call event: {e}",
                        self.config.path.display()
                    );
                    match self.config.on_error {
                        OnError::Fail => return Err(ComponentError::other(message)),
                        OnError::Skip => {
                            ctx.metrics.add_errors(1);
                            tracing::warn!(source = %ctx.id, "{message}; skipped");
                        }
                    }
                }
            }
            if builder.len() >= self.config.batch_size {
                self.send(ctx, pacer, builder.finish()).await?;
            }
        }
        if !builder.is_empty() {
            self.send(ctx, pacer, builder.finish()).await?;
        }
        Ok(())
    }

    async fn run_parquet(
        &self,
        ctx: &mut SourceContext,
        pacer: &mut Pacer,
        bar: &ProgressBar,
    ) -> ComponentResult {
        let path = self.config.path.display().to_string();
        let file = tokio::fs::File::open(&self.config.path)
            .await
            .map_err(|e| ComponentError::other(format!("cannot open {path}: {e}")))?;
        let builder = ParquetRecordBatchStreamBuilder::new(file)
            .await
            .map_err(|e| {
                ComponentError::other(format!("{path}: not a readable Parquet file: {e}"))
            })?;
        bar.set_length(builder.metadata().file_metadata().num_rows().max(0) as u64);
        let mut stream = builder
            .with_batch_size(self.config.batch_size)
            .build()
            .map_err(|e| ComponentError::other(format!("{path}: {e}")))?;
        while let Some(batch) = stream.next().await {
            if ctx.shutdown.is_cancelled() {
                break;
            }
            let batch = batch.map_err(|e| ComponentError::other(format!("{path}: {e}")))?;
            bar.inc(batch.num_rows() as u64);
            let batch = conform_to_api_call(&batch)
                .map_err(|e| ComponentError::other(format!("{path}: {e}")))?;
            self.send(ctx, pacer, batch).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> ComponentResult {
        let show = self
            .config
            .progress
            .unwrap_or_else(|| std::io::stderr().is_terminal());
        let mut pacer = Pacer {
            speed: self.config.speed,
            first_event: None,
            wall_start: tokio::time::Instant::now(),
        };
        let result = match self.format {
            FileFormat::Jsonl => {
                let size = tokio::fs::metadata(&self.config.path)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                let bar = progress_bar(show, size, "bytes");
                let result = self.run_jsonl(&mut ctx, &mut pacer, &bar).await;
                bar.finish_and_clear();
                result
            }
            FileFormat::Parquet => {
                let bar = progress_bar(show, 0, "rows");
                let result = self.run_parquet(&mut ctx, &mut pacer, &bar).await;
                bar.finish_and_clear();
                result
            }
        };
        tracing::info!(source = %ctx.id, path = %self.config.path.display(), events = ctx.metrics.snapshot().events_out, "replay finished");
        result
    }
}

/// The schema every file source produces.
pub fn schema() -> Arc<arrow::datatypes::Schema> {
    api_call_schema()
}
