//! Wires every component crate into one registry: the single place a new component type is
//! registered. The `api` sink lives here, with the HTTP server whose live state it feeds.

use std::sync::Arc;

use engine::registry::Registry;

use crate::api::live::LiveState;

/// The registry with every built-in source, operator and sink; `api` sinks feed a live state
/// no server reads (for validation and tests).
pub fn registry() -> Registry {
    registry_with(LiveState::new(16))
}

/// The registry whose `api` sinks feed `live`, and whose `alert` operators take rule changes
/// from `live.alert_rules`.
pub fn registry_with(live: Arc<LiveState>) -> Registry {
    let mut registry = Registry::new();
    sources::register(&mut registry);
    operators::register(&mut registry);
    sinks::register(&mut registry);
    let control = live.alert_rules.clone();
    registry.add_operator("alert", move |ctx| {
        operators::alert::control::build_with_control(ctx, control.clone())
    });
    registry.add_sink("api", move |ctx| crate::api::sink::build(ctx, live.clone()));
    registry
}
