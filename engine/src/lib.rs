//! The vocabulary every component of the pipeline shares: event schemas (Arrow), the
//! `Source` / `Operator` / `Sink` traits, in-band control messages (watermarks and checkpoint
//! barriers), the `pipelines.toml` model with located errors, graph building, the runtime that
//! drives a graph, and per-component internal metrics.

pub mod backoff;
pub mod codec;
pub mod component;
pub mod config;
pub mod graph;
pub mod message;
pub mod metrics;
pub mod pricing;
pub mod registry;
pub mod runtime;
pub mod schema;
pub mod state;
pub mod testing;
pub mod time;

pub use component::{Collector, Operator, Sink, Source, SourceContext};
pub use message::{Barrier, Message, Watermark};
