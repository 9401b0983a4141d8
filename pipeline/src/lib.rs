//! Library side of the `pipeline` binary, so integration tests and benches can drive it.

pub mod api;
pub mod commands;
pub mod components;
pub mod demo;
pub mod logging;
pub mod query;
pub mod receiver;
pub mod shutdown;
pub mod status;
