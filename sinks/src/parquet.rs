//! `parquet`: writes batches as Parquet files through object_store — a local directory by
//! default, or an S3-compatible bucket (`s3://bucket/prefix`, credentials and endpoint from the
//! standard `AWS_*` environment variables). Files are laid out Hive-style as
//! `<table>/date=YYYY-MM-DD/hour=HH/part-<uuid v7>.parquet` so that time filters prune whole
//! directories, and each file is written with a single atomic put (a local put writes a
//! staging file and renames it), so a reader never sees a half-written file. Open files roll
//! at `max_file_bytes` (encoded size) or `max_file_age`, and at every checkpoint barrier, which
//! is what makes them durable before the barrier is acknowledged.
//!
//! When the pipeline saves state at checkpoints (`checkpoint_dir`), output is exactly-once:
//! files are first put under `_staging/<checkpoint>/…` and moved into the table only when
//! that checkpoint completes. A restart publishes what was staged for the restored checkpoint
//! and deletes what was staged after it, which the replay writes again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{CommitPlan, ComponentError, ComponentResult, Sink};
use engine::config::ConfigError;
use engine::message::Barrier;
use engine::registry::BuildContext;
use engine::schema::api_call::{timestamp_type, EVENT_TIME, REQUEST_ID};
use engine::schema::window_metrics::WINDOW_START;
use engine::time::ConfigDuration;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;

const MICROS_PER_HOUR: i64 = 3_600_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    #[default]
    Zstd,
    Snappy,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// A local directory, `file:///abs/dir`, or `s3://bucket/prefix`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Table (top-level directory). Default: `api_calls` for api_call rows, `window_metrics`
    /// for window results.
    pub table: Option<String>,
    /// The timestamp field that picks the date/hour partition. Default: `event_time` or
    /// `window_start`.
    pub time_field: Option<String>,
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
    #[serde(default = "default_max_file_age")]
    pub max_file_age: ConfigDuration,
    #[serde(default)]
    pub compression: ParquetCompression,
}

fn default_path() -> String {
    "./data".to_string()
}
fn default_max_file_bytes() -> usize {
    128 * 1024 * 1024
}
fn default_max_file_age() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

/// Opens the object store and the prefix inside it for a `path` setting.
pub use engine::state::open_store;

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    let config: ParquetConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    let table = match &config.table {
        Some(table) => table.clone(),
        None if schema.index_of(REQUEST_ID).is_ok() => "api_calls".to_string(),
        None if schema.index_of(WINDOW_START).is_ok() => "window_metrics".to_string(),
        None => {
            return Err(ctx.spec.error_at_key(
                "table",
                "cannot tell which table these rows belong to; set `table`",
            ))
        }
    };
    if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ctx
            .spec
            .error_at_key("table", "`table` may only contain letters, digits and `_`"));
    }
    let time_field = match &config.time_field {
        Some(field) => field.clone(),
        None if schema.index_of(EVENT_TIME).is_ok() => EVENT_TIME.to_string(),
        None => WINDOW_START.to_string(),
    };
    let time_index = match schema.index_of(&time_field) {
        Ok(index) if schema.field(index).data_type() == &timestamp_type() => index,
        _ => {
            return Err(ctx.spec.error_at_key(
                "time_field",
                format!(
                    "the input has no timestamp field `{time_field}` (µs, UTC) to partition by"
                ),
            ))
        }
    };
    if config.max_file_bytes < 1024 {
        return Err(ctx
            .spec
            .error_at_key("max_file_bytes", "`max_file_bytes` must be at least 1024"));
    }
    if config.path.starts_with("s3://") && url::Url::parse(&config.path).is_err() {
        return Err(ctx
            .spec
            .error_at_key("path", format!("invalid URL {:?}", config.path)));
    }
    Ok(Box::new(ParquetSink {
        config,
        table,
        time_index,
        schema,
        store: None,
        open: BTreeMap::new(),
        files_written: 0,
        staging: None,
    }))
}

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    opened: Instant,
    rows: usize,
}

pub struct ParquetSink {
    config: ParquetConfig,
    table: String,
    time_index: usize,
    schema: SchemaRef,
    store: Option<(Arc<dyn ObjectStore>, ObjectPath)>,
    /// Hour bucket (µs since epoch / hour) → the file being written for it.
    open: BTreeMap<i64, OpenFile>,
    files_written: u64,
    /// Set when output is exactly-once: files wait under `_staging` for their checkpoint.
    staging: Option<Staging>,
}

const STAGING: &str = "_staging";

struct Staging {
    /// The checkpoint that files rolled now belong to.
    tag: u64,
    /// Checkpoint → (staged location, final location) of the files waiting for it.
    waiting: BTreeMap<u64, Vec<(ObjectPath, ObjectPath)>>,
}

fn staged_location(prefix: &ObjectPath, tag: u64, relative: &str) -> ObjectPath {
    let mut location = prefix.clone().join(STAGING).join(format!("{tag:020}"));
    for part in relative.split('/') {
        location = location.join(part);
    }
    location
}

impl ParquetSink {
    fn properties(&self) -> WriterProperties {
        let compression = match self.config.compression {
            ParquetCompression::Zstd => {
                Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default())
            }
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::None => Compression::UNCOMPRESSED,
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(128 * 1024))
            .build()
    }

    fn store(&mut self) -> ComponentResult<(Arc<dyn ObjectStore>, ObjectPath)> {
        if self.store.is_none() {
            self.store = Some(open_store(&self.config.path).map_err(ComponentError::other)?);
        }
        Ok(self.store.clone().expect("opened above"))
    }

    fn append(&mut self, hour: i64, batch: &RecordBatch) -> ComponentResult {
        if !self.open.contains_key(&hour) {
            let writer =
                ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(self.properties()))
                    .map_err(|e| ComponentError::other(format!("parquet: {e}")))?;
            self.open.insert(
                hour,
                OpenFile {
                    writer,
                    opened: Instant::now(),
                    rows: 0,
                },
            );
        }
        let file = self.open.get_mut(&hour).expect("inserted above");
        file.writer
            .write(batch)
            .map_err(|e| ComponentError::other(format!("parquet: {e}")))?;
        file.rows += batch.num_rows();
        Ok(())
    }

    /// Closes the file of `hour` and puts it in the store.
    async fn roll(&mut self, hour: i64) -> ComponentResult {
        let Some(file) = self.open.remove(&hour) else {
            return Ok(());
        };
        if file.rows == 0 {
            return Ok(());
        }
        let bytes = file
            .writer
            .into_inner()
            .map_err(|e| ComponentError::other(format!("parquet: {e}")))?;
        let (store, prefix) = self.store()?;
        let start = chrono::DateTime::from_timestamp_micros(hour * MICROS_PER_HOUR)
            .ok_or_else(|| ComponentError::other(format!("hour bucket {hour} is out of range")))?;
        let relative = format!(
            "{}/date={}/hour={}/part-{}.parquet",
            self.table,
            start.format("%Y-%m-%d"),
            start.format("%H"),
            uuid::Uuid::now_v7()
        );
        let mut location = prefix.clone();
        for part in relative.split('/') {
            location = location.join(part);
        }
        let destination = location.clone();
        if let Some(staging) = &self.staging {
            location = staged_location(&prefix, staging.tag, &relative);
        }
        let size = bytes.len();
        let mut attempt = 0;
        loop {
            match store.put(&location, PutPayload::from(bytes.clone())).await {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    let backoff = Duration::from_millis(100 * (1 << attempt));
                    tracing::warn!(%location, error = %e, attempt, "writing a parquet file failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    return Err(ComponentError::other(format!(
                        "cannot write {location}: {e}"
                    )))
                }
            }
        }
        if let Some(staging) = &mut self.staging {
            staging
                .waiting
                .entry(staging.tag)
                .or_default()
                .push((location.clone(), destination));
        } else {
            self.files_written += 1;
        }
        tracing::debug!(%location, rows = file.rows, bytes = size, "parquet file written");
        Ok(())
    }

    /// Moves the files staged for checkpoints up to `checkpoint` into the table.
    async fn publish(&mut self, checkpoint: u64) -> ComponentResult {
        let Some(staging) = &mut self.staging else {
            return Ok(());
        };
        let later = staging.waiting.split_off(&(checkpoint.saturating_add(1)));
        let ready = std::mem::replace(&mut staging.waiting, later);
        let (store, _) = self.store()?;
        for (staged, destination) in ready.into_values().flatten() {
            store.rename(&staged, &destination).await.map_err(|e| {
                ComponentError::other(format!("cannot move {staged} to {destination}: {e}"))
            })?;
            self.files_written += 1;
        }
        Ok(())
    }

    /// After a restart: publishes what was staged for checkpoints up to the restored one and
    /// deletes what was staged after it.
    async fn recover_staged(&mut self, restored: u64) -> ComponentResult {
        let (store, prefix) = self.store()?;
        let staging_root = prefix.clone().join(STAGING);
        let files: Vec<ObjectPath> = store
            .list(Some(&staging_root))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| ComponentError::other(format!("cannot list {staging_root}: {e}")))?;
        let (mut published, mut discarded) = (0, 0);
        for staged in files {
            let parts: Vec<String> = staged
                .prefix_match(&staging_root)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            let Some((tag, relative)) = parts.split_first() else {
                continue;
            };
            // Only this sink's table: several sinks may share a path.
            if relative.first().map(String::as_str) != Some(self.table.as_str()) {
                continue;
            }
            let Ok(tag) = tag.parse::<u64>() else {
                continue;
            };
            if tag <= restored {
                let mut destination = prefix.clone();
                for part in relative {
                    destination = destination.join(part.as_str());
                }
                store.rename(&staged, &destination).await.map_err(|e| {
                    ComponentError::other(format!("cannot move {staged} to {destination}: {e}"))
                })?;
                published += 1;
            } else {
                match store.delete(&staged).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(ComponentError::other(format!(
                            "cannot delete {staged}: {e}"
                        )))
                    }
                }
                discarded += 1;
            }
        }
        if published + discarded > 0 {
            tracing::info!(table = %self.table, published, discarded, restored, "parquet: staged files of the previous run settled");
        }
        Ok(())
    }

    async fn roll_all(&mut self) -> ComponentResult {
        let hours: Vec<i64> = self.open.keys().copied().collect();
        for hour in hours {
            self.roll(hour).await?;
        }
        Ok(())
    }

    pub fn files_written(&self) -> u64 {
        self.files_written
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        let times = batch
            .column(self.time_index)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| ComponentError::other("the time field is not a µs timestamp"))?;
        let hour_of = |row: usize| times.value(row).div_euclid(MICROS_PER_HOUR);
        let first = if batch.num_rows() > 0 {
            hour_of(0)
        } else {
            return Ok(());
        };
        if (0..batch.num_rows()).all(|row| times.is_valid(row) && hour_of(row) == first) {
            self.append(first, &batch)?;
        } else {
            // Rows spanning hours (or without a time, filed under the epoch): split by hour.
            let mut by_hour: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for row in 0..batch.num_rows() {
                let hour = if times.is_valid(row) { hour_of(row) } else { 0 };
                by_hour.entry(hour).or_default().push(row as u32);
            }
            for (hour, rows) in by_hour {
                let part = take_record_batch(&batch, &UInt32Array::from(rows))?;
                self.append(hour, &part)?;
            }
        }
        let full: Vec<i64> = self
            .open
            .iter()
            .filter(|(_, f)| {
                f.writer.bytes_written() + f.writer.in_progress_size() >= self.config.max_file_bytes
            })
            .map(|(hour, _)| *hour)
            .collect();
        for hour in full {
            self.roll(hour).await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> ComponentResult {
        let max_age = self.config.max_file_age.0;
        let old: Vec<i64> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= max_age)
            .map(|(hour, _)| *hour)
            .collect();
        for hour in old {
            self.roll(hour).await?;
        }
        Ok(())
    }

    async fn begin(&mut self, plan: Option<CommitPlan>) -> ComponentResult {
        let Some(plan) = plan else {
            return Ok(());
        };
        self.recover_staged(plan.restored).await?;
        self.staging = Some(Staging {
            tag: plan.next,
            waiting: BTreeMap::new(),
        });
        Ok(())
    }

    async fn checkpoint(&mut self, barrier: Barrier) -> ComponentResult {
        if let Some(staging) = &mut self.staging {
            staging.tag = barrier.checkpoint_id;
        }
        self.roll_all().await?;
        if let Some(staging) = &mut self.staging {
            staging.tag = barrier.checkpoint_id + 1;
        }
        Ok(())
    }

    async fn commit(&mut self, checkpoint: u64) -> ComponentResult {
        self.publish(checkpoint).await
    }

    async fn flush(&mut self) -> ComponentResult {
        self.roll_all().await
    }

    /// The inputs ended (a clean stop, after the sources' final checkpoint): everything
    /// written is published.
    async fn close(&mut self) -> ComponentResult {
        self.roll_all().await?;
        self.publish(u64::MAX).await
    }
}
