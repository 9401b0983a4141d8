//! Sources: `proxy` (an intercepting reverse proxy in front of a model API), `generator`
//! (synthetic api_call traffic with injected incidents), `file` (replay of JSON Lines or
//! Parquet), `rabbitmq` (a queue fed by edge proxies, acknowledged after checkpoints), and
//! `channel` (events handed over in-process). Each module registers itself in
//! [`register`].

pub mod channel;
pub mod file;
pub mod generator;
pub mod proxy;
pub mod rabbitmq;

use engine::registry::Registry;

/// Registers every source type that needs no outside wiring.
pub fn register(registry: &mut Registry) {
    registry.add_source("generator", generator::build);
    registry.add_source("file", file::build);
    registry.add_source("proxy", proxy::build);
    registry.add_source("rabbitmq", rabbitmq::build);
}
