//! Wires every component crate into one registry: the single place a new component type is
//! registered.

use engine::registry::Registry;

/// The registry with every built-in source, operator and sink.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    sources::register(&mut registry);
    operators::register(&mut registry);
    sinks::register(&mut registry);
    registry
}
