//! SQL over the Parquet history with DataFusion: every table directory under the history root
//! (`api_calls`, `window_metrics`, and any `table = ...` a parquet sink writes), with the
//! `date` and `hour` partition columns, so time filters on them skip whole directories.
//! Read-only: DDL, DML and COPY are refused.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// A session with every history table that has at least one file registered.
pub async fn session(data: &str) -> anyhow::Result<(SessionContext, Vec<String>)> {
    let context =
        SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    let registered = register_history(&context, data).await?;
    Ok((context, registered))
}

/// Registers in `context` every history table under `data` that has at least one file; returns
/// their names.
pub async fn register_history(context: &SessionContext, data: &str) -> anyhow::Result<Vec<String>> {
    let (store, prefix, base_url) = if data.starts_with("s3://") {
        let (store, prefix) = sinks::parquet::open_store(data).map_err(anyhow::Error::msg)?;
        let url = url_of(data)?;
        context.register_object_store(&url, store.clone());
        (store, prefix, data.trim_end_matches('/').to_string())
    } else {
        let local = data.strip_prefix("file://").unwrap_or(data);
        let absolute = std::path::absolute(local).with_context(|| format!("bad path {local}"))?;
        let (store, prefix) = sinks::parquet::open_store(&absolute.display().to_string())
            .map_err(anyhow::Error::msg)?;
        (store, prefix, format!("file://{}", absolute.display()))
    };
    let mut registered = Vec::new();
    let listing = store
        .list_with_delimiter(Some(&prefix))
        .await
        .with_context(|| format!("cannot list {data}"))?;
    let mut tables: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .filter(|name| {
            // `_staging` (files waiting for their checkpoint) and other `_` names are not tables.
            !name.is_empty()
                && !name.starts_with('_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .collect();
    tables.sort();
    for table in tables {
        let table = table.as_str();
        let table_prefix = prefix.clone().join(table);
        let has_files = store
            .list(Some(&table_prefix))
            .try_any(|meta| std::future::ready(meta.location.as_ref().ends_with(".parquet")))
            .await
            .unwrap_or(false);
        if !has_files {
            continue;
        }
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("date".to_string(), DataType::Utf8),
                ("hour".to_string(), DataType::Utf8),
            ]);
        context
            .register_listing_table(table, format!("{base_url}/{table}/"), options, None, None)
            .await
            .with_context(|| format!("cannot open table {table}"))?;
        registered.push(table.to_string());
    }
    Ok(registered)
}

fn url_of(data: &str) -> anyhow::Result<url::Url> {
    let parsed = url::Url::parse(data).with_context(|| format!("invalid URL {data}"))?;
    let base = format!(
        "{}://{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or_default()
    );
    url::Url::parse(&base).with_context(|| format!("invalid URL {data}"))
}

/// What a history query may do: read. DDL (CREATE EXTERNAL TABLE, ...), DML (INSERT, COPY)
/// and statements (SET, ...) are refused.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs one read-only query.
pub async fn query(
    context: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    context
        .sql_with_options(sql, read_only())
        .await?
        .collect()
        .await
}

pub fn render(batches: &[RecordBatch], format: OutputFormat) -> anyhow::Result<String> {
    match format {
        OutputFormat::Table => Ok(pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            for batch in batches {
                writer.write(&flat_for_csv(batch)?)?;
            }
            let mut text = String::from_utf8(writer.into_inner())?;
            // One line per row and nothing after the last, so no empty line ends the output.
            if text.ends_with('\n') {
                text.pop();
            }
            Ok(text)
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            writer.write_batches(&refs)?;
            writer.finish()?;
            let mut text = String::from_utf8(writer.into_inner())?;
            if text.is_empty() {
                text.push_str("[]");
            }
            Ok(text)
        }
    }
}

/// `batch` with every nested column (a map of labels, a list) as its text, which CSV can hold.
fn flat_for_csv(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    use arrow::array::{ArrayRef, StringBuilder};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| f.data_type().is_nested())
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
        let mut text = StringBuilder::with_capacity(column.len(), column.len() * 16);
        for row in 0..column.len() {
            if column.is_null(row) {
                text.append_null();
            } else {
                text.append_value(formatter.value(row).to_string());
            }
        }
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(std::sync::Arc::new(text.finish()));
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

pub async fn run_cli(sql: &str, data: &str, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let (context, tables) = session(data).await?;
    if tables.is_empty() {
        tracing::warn!(
            data,
            "no history found: tables appear once a pipeline has written Parquet files there"
        );
    }
    match query(&context, sql).await {
        Ok(batches) => {
            let text = render(&batches, format)?;
            if text.ends_with('\n') {
                print!("{text}");
            } else {
                println!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {error}");
            if !tables.is_empty() {
                eprintln!("tables available: {}", tables.join(", "));
            }
            Ok(ExitCode::from(1))
        }
    }
}
