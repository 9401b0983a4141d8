//! Sources: `generator` (synthetic api_call traffic with injected incidents), `file` (replay
//! of JSON Lines or Parquet), and `channel` (events handed over in-process, used by the
//! embedded demo). Each module registers itself in [`register`].

pub mod channel;
pub mod file;
pub mod generator;

use engine::registry::Registry;

/// Registers every source type that needs no outside wiring.
pub fn register(registry: &mut Registry) {
    registry.add_source("generator", generator::build);
    registry.add_source("file", file::build);
}
