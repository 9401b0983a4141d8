//! `timescaledb` sink (also registered as `postgres`): history in PostgreSQL, using TimescaleDB
//! when the extension is installed and plain tables otherwise.
//!
//! Raw api_call rows are appended with binary COPY; window results are upserted on their window
//! and key, and alert changes on their notification id, so replaying the same input leaves the
//! same rows. Raw rows are exactly once too: in a pipeline with checkpoints each row carries its
//! writer (the sink in its line of checkpoints) and the checkpoint that will cover it, and on a
//! restart the sink first deletes what it wrote for checkpoints after the one restored — the
//! rows whose input the broker is about to deliver again. Rows are buffered and written in
//! one transaction per batch (by size, by `flush_interval`, and at every checkpoint barrier,
//! which is acknowledged only after COMMIT — so a RabbitMQ source acknowledges only rows that
//! are safe). A failed batch is retried with backoff until it succeeds; meanwhile the sink does
//! not take new rows, so a slow or restarting database pushes back on the pipeline instead of
//! losing data. Connections come from a pool and are replaced when broken.

mod columns;
mod config;
mod schema;

use std::pin::pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::UInt32Array;
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use engine::backoff::Backoff;
use engine::component::{CommitPlan, ComponentError, ComponentResult, Sink};
use engine::config::ConfigError;
use engine::message::Barrier;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

pub use config::{PostgresConfig, SchemaMode};
pub use schema::{TableLayout, WriteMode};

use columns::batch_values;

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    let config: PostgresConfig = ctx.spec.settings()?;
    let input = ctx.input_schema()?;
    let layout = TableLayout::new(&input, &config.schema, config.table.as_deref())
        .map_err(|message| ctx.spec.error_at_input(0, message))?;
    let pg_config = tokio_postgres::Config::from_str(&config.url).map_err(|e| {
        ctx.spec
            .error_at_key("url", format!("not a PostgreSQL connection string: {e}"))
    })?;
    if config.batch_size == 0 {
        return Err(ctx.spec.error_at_key("batch_size", "must be at least 1"));
    }
    if config.pool_size == 0 {
        return Err(ctx.spec.error_at_key("pool_size", "must be at least 1"));
    }
    let manager = Manager::from_config(
        pg_config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(config.pool_size)
        .build()
        .map_err(|e| ctx.spec.error(format!("connection pool: {e}")))?;
    let metrics = &ctx.metrics;
    Ok(Box::new(PostgresSink {
        component: ctx.spec.id.clone(),
        input,
        layout,
        pool,
        pending: Vec::new(),
        pending_rows: 0,
        oldest: None,
        ready: false,
        timescale: false,
        last_retention: None,
        tag: None,
        counters: Counters {
            rows_written: metrics.named("rows_written"),
            transactions: metrics.named("transactions"),
            retries: metrics.named("retries"),
            buffered_rows: metrics.gauge("buffered_rows"),
        },
        metrics: metrics.clone(),
        config,
    }))
}

struct Counters {
    rows_written: Arc<AtomicU64>,
    transactions: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    /// Rows taken in and not yet committed: with the input queue, the backlog while the
    /// database is down.
    buffered_rows: Arc<AtomicU64>,
}

struct PostgresSink {
    component: String,
    config: PostgresConfig,
    input: SchemaRef,
    layout: TableLayout,
    pool: Pool,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    oldest: Option<Instant>,
    /// The schema was created or checked.
    ready: bool,
    timescale: bool,
    last_retention: Option<Instant>,
    /// (writer, checkpoint) of the rows being appended, with checkpoints.
    tag: Option<(i64, i64)>,
    counters: Counters,
    #[allow(dead_code)]
    metrics: Arc<ComponentMetrics>,
}

/// A failure worth retrying (connection, server restart) or not (the table does not match).
enum Failure {
    Retry(String),
    Fatal(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Retry(describe(&error))
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Failure::Retry(format!("connecting: {error}"))
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

impl PostgresSink {
    /// Runs `attempt` until it succeeds, backing off between failures; a fatal failure ends
    /// the pipeline with its message.
    async fn with_retries<T, F, Fut>(&mut self, what: &str, mut attempt: F) -> ComponentResult<T>
    where
        F: FnMut(Pool) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut backoff = Backoff::new(self.config.retry_initial.0, self.config.retry_max.0);
        loop {
            match attempt(self.pool.clone()).await {
                Ok(value) => {
                    self.metrics.set_connected(true);
                    return Ok(value);
                }
                Err(Failure::Fatal(message)) => return Err(ComponentError::other(message)),
                Err(Failure::Retry(message)) => {
                    self.metrics.set_connected(false);
                    let delay = backoff.next_delay();
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = %self.component, error = %message, retry_in = ?delay, attempt = backoff.attempts(), "postgres: {what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Creates or checks the table once, on first use.
    async fn ensure_ready(&mut self) -> ComponentResult {
        if self.ready {
            return Ok(());
        }
        let layout = self.layout.clone();
        let config = self.config.clone();
        let timescale = self
            .with_retries("preparing the table", |pool| {
                let layout = layout.clone();
                let config = config.clone();
                async move { prepare(&pool, &layout, &config).await }
            })
            .await?;
        self.timescale = timescale;
        self.ready = true;
        tracing::info!(sink = %self.component, table = %self.layout.qualified(), timescaledb = timescale, "postgres: table ready");
        Ok(())
    }

    /// Writes everything buffered in one transaction, retrying until it commits.
    async fn write_pending(&mut self) -> ComponentResult {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.ensure_ready().await?;
        let batch = concat_batches(&self.input, &self.pending)?;
        let batch = match &self.layout.mode {
            WriteMode::Upsert { conflict } => newest_per_key(&batch, conflict)?,
            WriteMode::Append => batch,
        };
        let layout = self.layout.clone();
        let rows = batch.num_rows();
        let tag = self.tag;
        self.with_retries("writing a batch", |pool| {
            let layout = layout.clone();
            let batch = batch.clone();
            async move { write_batch(&pool, &layout, &batch, tag).await }
        })
        .await?;
        self.counters
            .rows_written
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.pending.clear();
        self.pending_rows = 0;
        self.counters.buffered_rows.store(0, Ordering::Relaxed);
        self.oldest = None;
        Ok(())
    }

    /// Plain PostgreSQL retention: an hourly DELETE of rows older than `retention`.
    async fn apply_retention(&mut self) {
        let Some(retention) = self.config.retention else {
            return;
        };
        if self.timescale || !self.ready {
            return;
        }
        if self
            .last_retention
            .is_some_and(|at| at.elapsed() < Duration::from_secs(3600))
        {
            return;
        }
        self.last_retention = Some(Instant::now());
        let statement = self.layout.plain_retention(retention.0.as_secs());
        let result = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute(statement.as_str(), &[])
                .await
                .map_err(|e| describe(&e))
        }
        .await;
        match result {
            Ok(deleted) => {
                tracing::info!(sink = %self.component, deleted, "postgres: retention applied")
            }
            Err(error) => {
                tracing::warn!(sink = %self.component, %error, "postgres: retention failed; will retry in an hour")
            }
        }
    }
}

/// Serialises schema changes of every sink (and every pipeline process) on one database, so
/// concurrent `CREATE ... IF NOT EXISTS` do not collide.
const DDL_LOCK: i64 = 0x7069_7065_6c69_6e65; // "pipeline"

/// Creates (or checks) the table; returns whether TimescaleDB is in use.
async fn prepare(
    pool: &Pool,
    layout: &TableLayout,
    config: &PostgresConfig,
) -> Result<bool, Failure> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    let timescale = transaction
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await?
        .is_some();
    let version: i32 = transaction
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let mut existing = existing_columns(&transaction, layout).await?;
    if config.schema_mode != SchemaMode::Check && !existing.is_empty() {
        // A table an earlier version created: add the columns it lacks (new api_call and
        // window fields), then check the rest as usual.
        for statement in layout.add_missing_columns(&existing) {
            tracing::info!(table = %layout.qualified(), %statement, "postgres: adding a column the table lacks");
            transaction
                .batch_execute(&statement)
                .await
                .map_err(|e| Failure::Fatal(format!("{}: {statement}", describe(&e))))?;
        }
        existing = existing_columns(&transaction, layout).await?;
    }
    if config.schema_mode == SchemaMode::Check || !existing.is_empty() {
        layout.check_columns(&existing).map_err(Failure::Fatal)?;
        transaction.commit().await?;
        return Ok(timescale);
    }
    if matches!(layout.mode, WriteMode::Upsert { .. }) && version < 150_000 {
        return Err(Failure::Fatal(format!(
            "window results are upserted on keys that may be null, which needs PostgreSQL 15 or later (NULLS NOT DISTINCT); this server is {version}"
        )));
    }
    let mut statements = layout.create_table(true);
    if timescale {
        statements.extend(layout.timescale_statements(
            config.retention.map(|r| r.0.as_secs()),
            config.compress_after.0.as_secs(),
            config.hourly_aggregate,
        ));
    } else {
        statements.extend(layout.plain_indexes());
    }
    for statement in statements {
        transaction
            .batch_execute(&statement)
            .await
            .map_err(|e| Failure::Fatal(format!("{}: {statement}", describe(&e))))?;
    }
    transaction.commit().await?;
    Ok(timescale)
}

async fn existing_columns(
    transaction: &tokio_postgres::Transaction<'_>,
    layout: &TableLayout,
) -> Result<Vec<(String, String)>, Failure> {
    let rows = transaction
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&layout.schema, &layout.table],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One transaction: binary COPY (append, tagged with `tag` when the layout is) or the UNNEST
/// upsert, then COMMIT.
async fn write_batch(
    pool: &Pool,
    layout: &TableLayout,
    batch: &RecordBatch,
    tag: Option<(i64, i64)>,
) -> Result<(), Failure> {
    let mut values = batch_values(batch).map_err(Failure::Fatal)?;
    if layout.is_tagged() {
        let rows = batch.num_rows();
        values.push(columns::Values::BigInt(vec![tag.map(|t| t.0); rows]));
        values.push(columns::Values::BigInt(vec![tag.map(|t| t.1); rows]));
    }
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    match layout.upsert_statement() {
        None => {
            let types: Vec<_> = layout.columns.iter().map(|(_, pg, _)| pg.clone()).collect();
            let sink = transaction.copy_in(&layout.copy_statement()).await?;
            let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
            let mut row_values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(values.len());
            for row in 0..batch.num_rows() {
                row_values.clear();
                for column in &values {
                    row_values.push(column.value(row));
                }
                writer.as_mut().write(&row_values).await?;
            }
            writer.finish().await?;
        }
        Some(upsert) => {
            let types = layout.param_types();
            let statement = transaction.prepare_typed(&upsert, &types).await?;
            let params: Vec<_> = values.iter().map(|v| v.as_param()).collect();
            transaction.execute(&statement, &params).await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Keeps one row per key — the highest revision, the later row on a tie — because one
/// statement cannot update a row twice.
fn newest_per_key(batch: &RecordBatch, conflict: &[String]) -> Result<RecordBatch, ComponentError> {
    let options = FormatOptions::default();
    let schema = batch.schema();
    let key_columns = conflict
        .iter()
        .map(|c| {
            let column = batch.column(schema.index_of(c)?);
            Ok((column, ArrayFormatter::try_new(column.as_ref(), &options)?))
        })
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    let revisions = schema
        .index_of(engine::schema::window_metrics::REVISION)
        .ok()
        .and_then(|i| {
            arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::UInt64).ok()
        });
    let revision = |row: usize| {
        revisions.as_ref().map_or(0, |r| {
            arrow::array::AsArray::as_primitive::<arrow::datatypes::UInt64Type>(r).value(row)
        })
    };
    let mut newest: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for row in 0..batch.num_rows() {
        let key: Vec<String> = key_columns
            .iter()
            .map(|(column, formatter)| {
                if arrow::array::Array::is_null(column, row) {
                    "\u{0}".to_string()
                } else {
                    formatter.value(row).to_string()
                }
            })
            .collect();
        let slot = newest.entry(key.join("\u{1}")).or_insert(row as u32);
        if revision(row) >= revision(*slot as usize) {
            *slot = row as u32;
        }
    }
    if newest.len() == batch.num_rows() {
        return Ok(batch.clone());
    }
    let mut keep: Vec<u32> = newest.into_values().collect();
    keep.sort_unstable();
    Ok(take_record_batch(batch, &UInt32Array::from(keep))?)
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&mut self, batch: RecordBatch) -> ComponentResult {
        self.ensure_ready().await?;
        self.pending_rows += batch.num_rows();
        self.counters
            .buffered_rows
            .store(self.pending_rows as u64, Ordering::Relaxed);
        self.pending.push(batch);
        self.oldest.get_or_insert_with(Instant::now);
        if self.pending_rows >= self.config.batch_size {
            self.write_pending().await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> ComponentResult {
        if self
            .oldest
            .is_some_and(|at| at.elapsed() >= self.config.flush_interval.0)
        {
            self.write_pending().await?;
        }
        self.apply_retention().await;
        Ok(())
    }

    /// With checkpoints, tags the rows it appends and takes back those a crash left of
    /// checkpoints after the one restored (their input is about to be delivered again).
    async fn begin(&mut self, plan: Option<CommitPlan>) -> ComponentResult {
        let Some(plan) = plan else {
            return Ok(());
        };
        if !self.layout.is_tagged() {
            return Ok(());
        }
        self.ensure_ready().await?;
        let writer = writer_id(plan.lineage, &self.component);
        let restored = plan.restored as i64;
        let statement = self.layout.untagged_delete();
        let deleted = self
            .with_retries("taking back rows of unfinished checkpoints", |pool| {
                let statement = statement.clone();
                async move {
                    let client = pool.get().await?;
                    Ok(client.execute(&statement, &[&writer, &restored]).await?)
                }
            })
            .await?;
        if deleted > 0 {
            tracing::info!(sink = %self.component, table = %self.layout.qualified(), deleted, restored, "postgres: took back rows written after the restored checkpoint; they are written again as their input is replayed");
        }
        self.tag = Some((writer, plan.next as i64));
        Ok(())
    }

    async fn checkpoint(&mut self, barrier: Barrier) -> ComponentResult {
        self.write_pending().await?;
        if let Some((_, checkpoint)) = &mut self.tag {
            *checkpoint = barrier.checkpoint_id as i64 + 1;
        }
        Ok(())
    }

    async fn flush(&mut self) -> ComponentResult {
        self.write_pending().await
    }
}

/// The writer id of sink `component` in the line of checkpoints `lineage`.
fn writer_id(lineage: u64, component: &str) -> i64 {
    let hash = crc32fast::hash(component.as_bytes());
    ((lineage << 32) | u64::from(hash)) as i64
}
