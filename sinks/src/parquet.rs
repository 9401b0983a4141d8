//! `parquet`: writes batches as Parquet files through object_store — a local directory by
//! default, or an S3-compatible bucket (`s3://bucket/prefix`, credentials and endpoint from the
//! standard `AWS_*` environment variables). Files are laid out Hive-style as
//! `<table>/date=YYYY-MM-DD/hour=HH/part-<uuid v7>.parquet` so that time filters prune whole
//! directories, and each file is written with a single atomic put (a local put writes a
//! staging file and renames it), so a reader never sees a half-written file. Open files roll
//! at `max_file_bytes` (encoded size) or `max_file_age`, and at every checkpoint barrier, which
//! is what makes them durable before the barrier is acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::component::{ComponentError, ComponentResult, Sink};
use engine::config::ConfigError;
use engine::message::Barrier;
use engine::registry::BuildContext;
use engine::schema::api_call::{timestamp_type, EVENT_TIME, REQUEST_ID};
use engine::schema::window_metrics::WINDOW_START;
use engine::time::ConfigDuration;
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
pub fn open_store(path: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    if path.starts_with("s3://") {
        let url = url::Url::parse(path).map_err(|e| format!("invalid URL {path:?}: {e}"))?;
        let bucket = url
            .host_str()
            .ok_or_else(|| format!("{path:?} names no bucket"))?;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| format!("cannot open {path}: {e}"))?;
        let prefix = ObjectPath::from(url.path().trim_start_matches('/'));
        return Ok((Arc::new(store), prefix));
    }
    let local = path.strip_prefix("file://").unwrap_or(path);
    if local.contains("://") {
        return Err(format!(
            "unsupported storage URL {path:?}: use a directory or s3://bucket/prefix"
        ));
    }
    std::fs::create_dir_all(local).map_err(|e| format!("cannot create directory {local}: {e}"))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(local)
        .map_err(|e| format!("cannot open directory {local}: {e}"))?;
    Ok((Arc::new(store), ObjectPath::from("")))
}

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
        let location = prefix
            .clone()
            .join(self.table.as_str())
            .join(format!("date={}", start.format("%Y-%m-%d")))
            .join(format!("hour={}", start.format("%H")))
            .join(format!("part-{}.parquet", uuid::Uuid::now_v7()));
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
        self.files_written += 1;
        tracing::debug!(%location, rows = file.rows, bytes = size, "parquet file written");
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

    async fn checkpoint(&mut self, _barrier: Barrier) -> ComponentResult {
        self.roll_all().await
    }

    async fn flush(&mut self) -> ComponentResult {
        self.roll_all().await
    }
}
