//! Sinks: `console` (a readable table or JSON lines), `parquet` (partitioned files on a local
//! directory or S3-compatible object storage), `redis` (live window state, series and pub/sub),
//! `rabbitmq` (events or results to an exchange, confirmed), `timescaledb` / `postgres` (history
//! in PostgreSQL, with TimescaleDB when present), `webhook`, `slack` and `email` (alert
//! notifications, retried, through a durable queue), and `null` (discards, for benchmarks). Each
//! module registers itself in [`register`].

pub mod console;
pub mod email;
pub mod notify;
pub mod null;
pub mod parquet;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod webhook;

use engine::registry::Registry;

/// Registers every sink type.
pub fn register(registry: &mut Registry) {
    registry.add_sink("console", console::build);
    registry.add_sink("parquet", parquet::build);
    registry.add_sink("null", null::build);
    registry.add_sink("redis", redis::build);
    registry.add_sink("rabbitmq", rabbitmq::build);
    registry.add_sink("timescaledb", postgres::build);
    registry.add_sink("postgres", postgres::build);
    registry.add_sink("webhook", webhook::build);
    registry.add_sink("slack", webhook::build_slack);
    registry.add_sink("email", email::build);
}
