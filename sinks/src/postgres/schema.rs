//! The sink's table: its columns from the input's Arrow schema, the DDL that creates it on plain
//! PostgreSQL (a BRIN index on time, retention by a periodic DELETE) or with TimescaleDB (a
//! hypertable, compression and retention policies, and an hourly continuous aggregate of window
//! results), and the check of an existing table's columns.

use arrow::datatypes::Schema;
use engine::schema::api_call::EVENT_TIME;
use engine::schema::window_metrics::{
    COUNT, ERRORS, MAX_LATENCY_MS, REVISION, WINDOW, WINDOW_END, WINDOW_START,
};
use tokio_postgres::types::Type;

use super::columns::{array_type, pg_type, sql_name};
use engine::schema::alert;

/// How rows are written.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteMode {
    /// Raw events: appended with binary COPY.
    Append,
    /// Window results: upserted on (window, window_start, window_end, key columns...), a later
    /// revision replacing an earlier one, so replaying the same input changes nothing.
    Upsert { conflict: Vec<String> },
}

/// Everything the sink knows about its table.
#[derive(Debug, Clone)]
pub struct TableLayout {
    pub schema: String,
    pub table: String,
    /// (column, PostgreSQL type, nullable), in the input's order.
    pub columns: Vec<(String, Type, bool)>,
    pub time_column: String,
    pub mode: WriteMode,
    /// Text columns holding JSON documents, stored as jsonb (alert labels and annotations).
    pub json_text: Vec<String>,
}

pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The columns that tag appended rows with the run and checkpoint that wrote them.
pub const WRITER: &str = "_pipeline_writer";
pub const CHECKPOINT: &str = "_pipeline_checkpoint";

impl TableLayout {
    /// Appended rows carry their writer and checkpoint (the layout's last two columns).
    pub fn is_tagged(&self) -> bool {
        matches!(self.mode, WriteMode::Append) && self.has_column(CHECKPOINT)
    }

    /// Deletes the rows `$1` (a writer) wrote for checkpoints after `$2`.
    pub fn untagged_delete(&self) -> String {
        format!(
            "DELETE FROM {} WHERE {} = $1 AND {} > $2",
            self.qualified(),
            quote(WRITER),
            quote(CHECKPOINT)
        )
    }

    /// The layout for rows of `input`: api_call rows are appended to `api_calls`, window
    /// results upserted into `window_metrics` (either name overridable).
    pub fn new(input: &Schema, schema: &str, table: Option<&str>) -> Result<Self, String> {
        let is_alerts = input.index_of(alert::NOTIFICATION_ID).is_ok();
        let json_text: Vec<String> = if is_alerts {
            vec![alert::LABELS.to_string(), alert::ANNOTATIONS.to_string()]
        } else {
            Vec::new()
        };
        let mut columns = Vec::new();
        for field in input.fields() {
            let pg = pg_type(field.data_type()).ok_or_else(|| {
                format!(
                    "column `{}` has type {}, which has no PostgreSQL mapping",
                    field.name(),
                    field.data_type()
                )
            })?;
            let pg = if json_text.contains(field.name()) {
                Type::JSONB
            } else {
                pg
            };
            columns.push((field.name().clone(), pg, field.is_nullable()));
        }
        let is_windows = [WINDOW, WINDOW_START, WINDOW_END]
            .iter()
            .all(|c| input.index_of(c).is_ok());
        let (mode, time_column, default_table) = if is_alerts {
            // A change is immutable: a replay writes the same row again.
            let conflict = vec![
                alert::NOTIFICATION_ID.to_string(),
                alert::EVENT_TIME.to_string(),
            ];
            (
                WriteMode::Upsert { conflict },
                alert::EVENT_TIME.to_string(),
                "alerts",
            )
        } else if is_windows {
            let start = input.index_of(WINDOW_END).map(|i| i + 1).unwrap_or(0);
            let end = input.index_of(COUNT).unwrap_or(start);
            let mut conflict: Vec<String> = [WINDOW, WINDOW_START, WINDOW_END]
                .map(String::from)
                .to_vec();
            conflict.extend((start..end).map(|i| input.field(i).name().clone()));
            (
                WriteMode::Upsert { conflict },
                WINDOW_START.to_string(),
                "window_metrics",
            )
        } else if input.index_of(EVENT_TIME).is_ok() {
            // Which run wrote each row, so a restart can take back what a crash left of an
            // unfinished checkpoint (see the sink): null without checkpoints.
            columns.push((WRITER.to_string(), Type::INT8, true));
            columns.push((CHECKPOINT.to_string(), Type::INT8, true));
            (WriteMode::Append, EVENT_TIME.to_string(), "api_calls")
        } else {
            return Err(format!(
                "the input has neither `{EVENT_TIME}` (api_call rows) nor `{WINDOW_START}` (window results)"
            ));
        };
        Ok(Self {
            schema: schema.to_string(),
            table: table.unwrap_or(default_table).to_string(),
            columns,
            time_column,
            mode,
            json_text,
        })
    }

    /// Window results (as opposed to raw events or alerts).
    fn is_windows(&self) -> bool {
        self.time_column == WINDOW_START
    }

    /// The parameter type of each column's UNNEST array: JSON held in text is sent as text
    /// and cast on the server.
    pub fn param_types(&self) -> Vec<Type> {
        self.columns
            .iter()
            .map(|(name, pg, _)| {
                if self.json_text.contains(name) {
                    Type::TEXT_ARRAY
                } else {
                    array_type(pg)
                }
            })
            .collect()
    }

    pub fn qualified(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.table))
    }

    fn index_name(&self, suffix: &str) -> String {
        quote(&format!("{}_{suffix}", self.table))
    }

    fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|(c, _, _)| c == name)
    }

    /// CREATE SCHEMA / TABLE (and the upsert key's unique index) — the same on both paths.
    pub fn create_table(&self, nulls_not_distinct: bool) -> Vec<String> {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|(name, pg, nullable)| {
                format!(
                    "{} {}{}",
                    quote(name),
                    sql_name(pg),
                    if *nullable { "" } else { " NOT NULL" }
                )
            })
            .collect();
        let mut statements = Vec::new();
        if self.schema != "public" {
            statements.push(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote(&self.schema)
            ));
        }
        statements.push(format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.qualified(),
            columns.join(", ")
        ));
        if let WriteMode::Upsert { conflict } = &self.mode {
            let keys: Vec<String> = conflict.iter().map(|c| quote(c)).collect();
            statements.push(format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({}){}",
                self.index_name("window_key"),
                self.qualified(),
                keys.join(", "),
                if nulls_not_distinct {
                    " NULLS NOT DISTINCT"
                } else {
                    ""
                }
            ));
        }
        statements
    }

    /// Plain PostgreSQL: a BRIN index on the time column (tiny, and right for append-mostly
    /// time-ordered rows).
    pub fn plain_indexes(&self) -> Vec<String> {
        let mut indexes = vec![format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} USING brin ({})",
            self.index_name("time_brin"),
            self.qualified(),
            quote(&self.time_column)
        )];
        indexes.extend(self.checkpoint_index());
        indexes
    }

    /// A BRIN index on the checkpoint tag (rows are appended in checkpoint order, so it stays
    /// tiny), for the restart's delete.
    pub fn checkpoint_index(&self) -> Option<String> {
        self.is_tagged().then(|| {
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} USING brin ({})",
                self.index_name("checkpoint_brin"),
                self.qualified(),
                quote(CHECKPOINT)
            )
        })
    }

    /// Plain PostgreSQL retention: run periodically by the sink.
    pub fn plain_retention(&self, seconds: u64) -> String {
        format!(
            "DELETE FROM {} WHERE {} < now() - INTERVAL '{seconds} seconds'",
            self.qualified(),
            quote(&self.time_column)
        )
    }

    /// TimescaleDB: hypertable, compression, retention, and for window results an hourly
    /// continuous aggregate with its refresh policy.
    pub fn timescale_statements(
        &self,
        retention_seconds: Option<u64>,
        compress_after_seconds: u64,
        hourly_aggregate: bool,
    ) -> Vec<String> {
        let table = self.qualified();
        let literal = format!("'{}'", table.replace('\'', "''"));
        let mut statements = vec![format!(
            "SELECT create_hypertable({literal}, {}, chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE, migrate_data => TRUE)",
            format_args!("'{}'", self.time_column.replace('\'', "''"))
        )];
        statements.extend(self.checkpoint_index());
        let segment_by: Vec<&str> = match &self.mode {
            WriteMode::Upsert { .. } if !self.is_windows() => vec![alert::RULE],
            WriteMode::Upsert { conflict } => conflict
                .iter()
                .filter(|c| ![WINDOW_START, WINDOW_END].contains(&c.as_str()))
                .map(String::as_str)
                .collect(),
            WriteMode::Append => ["model", "endpoint"]
                .into_iter()
                .filter(|c| self.has_column(c))
                .collect(),
        };
        statements.push(format!(
            "ALTER TABLE {table} SET (timescaledb.compress = true, timescaledb.compress_segmentby = '{}', timescaledb.compress_orderby = '{} DESC')",
            segment_by.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ").replace('\'', "''"),
            quote(&self.time_column).replace('\'', "''")
        ));
        statements.push(format!(
            "SELECT add_compression_policy({literal}, INTERVAL '{compress_after_seconds} seconds', if_not_exists => TRUE)"
        ));
        if let Some(seconds) = retention_seconds {
            statements.push(format!(
                "SELECT add_retention_policy({literal}, INTERVAL '{seconds} seconds', if_not_exists => TRUE)"
            ));
        }
        if let (WriteMode::Upsert { conflict }, true) =
            (&self.mode, hourly_aggregate && self.is_windows())
        {
            let groups: Vec<String> = conflict
                .iter()
                .filter(|c| ![WINDOW_START, WINDOW_END].contains(&c.as_str()))
                .map(|c| quote(c))
                .collect();
            let mut measures = vec![
                format!("sum({0}) AS {0}", quote(COUNT)),
                format!("sum({0}) AS {0}", quote(ERRORS)),
                format!(
                    "sum({})::double precision / NULLIF(sum({}), 0) AS error_rate",
                    quote(ERRORS),
                    quote(COUNT)
                ),
            ];
            if self.has_column(MAX_LATENCY_MS) {
                measures.push(format!("max({0}) AS {0}", quote(MAX_LATENCY_MS)));
            }
            for (column, _, _) in &self.columns {
                if column.starts_with('p') && column.ends_with("_latency_ms") {
                    measures.push(format!(
                        "max({}) AS {}",
                        quote(column),
                        quote(&format!("max_{column}"))
                    ));
                }
            }
            let view = format!(
                "{}.{}",
                quote(&self.schema),
                quote(&format!("{}_hourly", self.table))
            );
            statements.push(format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {view} WITH (timescaledb.continuous = true) AS SELECT time_bucket(INTERVAL '1 hour', {}) AS bucket, {}, {} FROM {table} GROUP BY bucket, {} WITH NO DATA",
                quote(WINDOW_START),
                groups.join(", "),
                measures.join(", "),
                groups.join(", ")
            ));
            statements.push(format!(
                "SELECT add_continuous_aggregate_policy('{}', start_offset => INTERVAL '1 day', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE)",
                view.replace('\'', "''")
            ));
        }
        statements
    }

    /// The upsert: UNNEST of one array parameter per column, ON CONFLICT on the window key; a
    /// row only replaces one of the same or an older revision.
    pub fn upsert_statement(&self) -> Option<String> {
        let WriteMode::Upsert { conflict } = &self.mode else {
            return None;
        };
        let names: Vec<String> = self.columns.iter().map(|(c, _, _)| quote(c)).collect();
        let arrays: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (name, pg, _))| {
                let element = if self.json_text.contains(name) {
                    "text"
                } else {
                    sql_name(pg)
                };
                format!("${}::{element}[]", i + 1)
            })
            .collect();
        // Columns come out of UNNEST as c1, c2, ...; JSON held in text is cast to jsonb.
        let selected: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| {
                if self.json_text.contains(name) {
                    format!("c{}::jsonb", i + 1)
                } else {
                    format!("c{}", i + 1)
                }
            })
            .collect();
        let aliases: Vec<String> = (1..=self.columns.len()).map(|i| format!("c{i}")).collect();
        let updates: Vec<String> = self
            .columns
            .iter()
            .filter(|(c, _, _)| !conflict.contains(c))
            .map(|(c, _, _)| format!("{0} = EXCLUDED.{0}", quote(c)))
            .collect();
        let guard = if self.has_column(REVISION) {
            format!(
                " WHERE {}.{} <= EXCLUDED.{}",
                self.qualified(),
                quote(REVISION),
                quote(REVISION)
            )
        } else {
            String::new()
        };
        Some(format!(
            "INSERT INTO {} ({}) SELECT {} FROM UNNEST({}) AS u({}) ON CONFLICT ({}) DO UPDATE SET {}{guard}",
            self.qualified(),
            names.join(", "),
            selected.join(", "),
            arrays.join(", "),
            aliases.join(", "),
            conflict
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            updates.join(", ")
        ))
    }

    pub fn copy_statement(&self) -> String {
        let names: Vec<String> = self.columns.iter().map(|(c, _, _)| quote(c)).collect();
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.qualified(),
            names.join(", ")
        )
    }

    /// `ALTER TABLE ... ADD COLUMN` for each column of the layout an existing table lacks
    /// (a table created by an earlier version, before the column existed). The columns are
    /// added nullable: rows written before have no value for them.
    pub fn add_missing_columns(&self, existing: &[(String, String)]) -> Vec<String> {
        self.columns
            .iter()
            .filter(|(name, _, _)| !existing.iter().any(|(c, _)| c == name))
            .map(|(name, pg, _)| {
                format!(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                    self.qualified(),
                    quote(name),
                    sql_name(pg)
                )
            })
            .collect()
    }

    /// Compares an existing table's columns (`(name, information_schema data_type)`) with
    /// the layout; the error lists every difference.
    pub fn check_columns(&self, existing: &[(String, String)]) -> Result<(), String> {
        if existing.is_empty() {
            return Err(format!("table {} does not exist", self.qualified()));
        }
        let mut problems = Vec::new();
        for (name, pg, _) in &self.columns {
            match existing.iter().find(|(c, _)| c == name) {
                None => problems.push(format!("no column `{name}` ({})", sql_name(pg))),
                Some((_, actual)) if actual != sql_name(pg) => problems.push(format!(
                    "column `{name}` is {actual}, expected {}",
                    sql_name(pg)
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "table {} does not match the input: {}",
                self.qualified(),
                problems.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};
    use engine::schema::api_call::api_call_schema;
    use engine::schema::window_metrics::window_metrics_schema;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    use std::sync::Arc;

    #[test]
    fn alert_rows_go_to_an_alerts_table_with_jsonb_labels() {
        let layout = TableLayout::new(&engine::schema::alert::alert_schema(), "public", None)
            .expect("a layout");
        assert_eq!(layout.table, "alerts");
        let labels = layout.columns.iter().find(|(c, _, _)| c == "labels");
        assert_eq!(labels.map(|(_, pg, _)| pg.clone()), Some(Type::JSONB));
        let upsert = layout.upsert_statement().expect("an upsert");
        assert!(upsert.contains("c6::jsonb"), "{upsert}");
        Parser::parse_sql(&PostgreSqlDialect {}, &upsert).expect("valid SQL");
        let timescale = layout.timescale_statements(None, 86_400, true);
        assert!(
            timescale.iter().all(|s| !s.contains("MATERIALIZED VIEW")),
            "no hourly aggregate of alerts"
        );
    }

    fn windows() -> TableLayout {
        let keys = [
            Arc::new(Field::new("model", DataType::Utf8, true)),
            Arc::new(Field::new("endpoint", DataType::Utf8, true)),
        ];
        let schema = window_metrics_schema(&keys, &[0.5, 0.95, 0.99]);
        TableLayout::new(&schema, "public", None).unwrap()
    }

    fn parses(statement: &str) {
        // sqlparser does not know namespaced storage parameters (`timescaledb.compress = true`)
        // nor `CREATE MATERIALIZED VIEW ... WITH NO DATA`, both PostgreSQL syntax; the rest of
        // such a statement is still checked.
        let statement = statement
            .replace("timescaledb.", "timescaledb_")
            .replace(" WITH NO DATA", "");
        Parser::parse_sql(&PostgreSqlDialect {}, &statement)
            .unwrap_or_else(|e| panic!("{statement}\n{e}"));
    }

    #[test]
    fn every_statement_of_both_paths_parses_as_postgresql() {
        let raw = TableLayout::new(&api_call_schema(), "monitoring", None).unwrap();
        assert_eq!(raw.table, "api_calls");
        assert_eq!(raw.mode, WriteMode::Append);
        let windows = windows();
        assert_eq!(
            windows.mode,
            WriteMode::Upsert {
                conflict: ["window", "window_start", "window_end", "model", "endpoint"]
                    .map(String::from)
                    .to_vec()
            }
        );
        for layout in [&raw, &windows] {
            for statement in layout
                .create_table(true)
                .into_iter()
                .chain(layout.plain_indexes())
                .chain([layout.plain_retention(86_400)])
                .chain(layout.timescale_statements(Some(30 * 86_400), 7 * 86_400, true))
                .chain(layout.upsert_statement())
            {
                parses(&statement);
            }
        }
        let timescale = windows.timescale_statements(Some(60), 120, true);
        assert!(timescale[0].starts_with(
            "SELECT create_hypertable('\"public\".\"window_metrics\"', 'window_start'"
        ));
        assert!(timescale
            .iter()
            .any(|s| s.contains("WITH (timescaledb.continuous = true)")
                && s.contains("max(\"p99_latency_ms\") AS \"max_p99_latency_ms\"")));
        assert!(timescale.iter().any(|s| s.contains("add_retention_policy")));
    }

    #[test]
    fn an_older_table_gets_the_columns_it_lacks() {
        let layout = windows();
        let mut existing: Vec<(String, String)> = layout
            .columns
            .iter()
            .map(|(c, pg, _)| (c.clone(), sql_name(pg).to_string()))
            .collect();
        existing.retain(|(c, _)| c != "cost_usd" && c != "unpriced_calls");
        let statements = layout.add_missing_columns(&existing);
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert!(statements[0].contains("ADD COLUMN IF NOT EXISTS \"cost_usd\" double precision"));
        for statement in &statements {
            parses(statement);
        }
    }

    #[test]
    fn the_upsert_keeps_the_newest_revision_and_the_check_lists_differences() {
        let layout = windows();
        let upsert = layout.upsert_statement().unwrap();
        assert!(upsert.contains(
            "ON CONFLICT (\"window\", \"window_start\", \"window_end\", \"model\", \"endpoint\")"
        ));
        assert!(upsert.ends_with(
            "WHERE \"public\".\"window_metrics\".\"revision\" <= EXCLUDED.\"revision\""
        ));
        assert!(upsert.contains("$1::text[]"));
        let mut existing: Vec<(String, String)> = layout
            .columns
            .iter()
            .map(|(c, pg, _)| (c.clone(), sql_name(pg).to_string()))
            .collect();
        layout.check_columns(&existing).unwrap();
        existing.retain(|(c, _)| c != "errors");
        existing[0].1 = "integer".into();
        let error = layout.check_columns(&existing).unwrap_err();
        assert!(
            error.contains("column `window` is integer, expected text"),
            "{error}"
        );
        assert!(error.contains("no column `errors` (bigint)"), "{error}");
        assert!(layout
            .check_columns(&[])
            .unwrap_err()
            .contains("does not exist"));
    }
}
