//! Per-component internal metrics: events and batches in and out, errors, dropped and late
//! events, and the depth of the component's input queues. Counters are relaxed atomics,
//! updated once per batch, so they cost nothing measurable on the data path. A component can
//! also register its own named counters and gauges (a broker source's deliveries, acks and
//! reconnects, say), reported beside the common ones.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use serde::Serialize;

/// Which section of the config a component comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Source,
    Operator,
    Sink,
}

impl ComponentKind {
    pub fn section(&self) -> &'static str {
        match self {
            ComponentKind::Source => "sources",
            ComponentKind::Operator => "operators",
            ComponentKind::Sink => "sinks",
        }
    }
}

/// Live counters of one component.
#[derive(Debug, Default)]
pub struct ComponentMetrics {
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub batches_in: AtomicU64,
    pub batches_out: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub late: AtomicU64,
    /// Messages waiting in this component's input channels.
    pub queue_depth: AtomicI64,
    /// The component's current watermark (µs), or `i64::MIN` before the first one.
    pub watermark: AtomicI64,
    pub checkpoints_acked: AtomicU64,
    /// Its connection to an outside system: 0 none or not yet known, 1 up, 2 down.
    connection: AtomicU8,
    /// Counters and gauges specific to the component type, in registration order (`true`:
    /// a gauge).
    named: Mutex<Vec<(&'static str, Arc<AtomicU64>, bool)>>,
}

impl ComponentMetrics {
    /// The component's own counter called `name` (it only grows), created at zero on first use.
    pub fn named(&self, name: &'static str) -> Arc<AtomicU64> {
        self.register_named(name, false)
    }

    /// The component's own gauge called `name` (a level: unacknowledged deliveries, keys
    /// held), created at zero on first use.
    pub fn gauge(&self, name: &'static str) -> Arc<AtomicU64> {
        self.register_named(name, true)
    }

    fn register_named(&self, name: &'static str, gauge: bool) -> Arc<AtomicU64> {
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter, _)) = named.iter().find(|(n, _, _)| *n == name) {
            return counter.clone();
        }
        let counter = Arc::new(AtomicU64::new(0));
        named.push((name, counter.clone(), gauge));
        counter
    }

    /// The current values of the component's own counters and gauges.
    pub fn named_values(&self) -> IndexMap<String, u64> {
        let named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        named
            .iter()
            .map(|(name, counter, _)| (name.to_string(), counter.load(Ordering::Relaxed)))
            .collect()
    }

    /// The names of the component's own gauges.
    pub fn gauge_names(&self) -> Vec<String> {
        let named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        named
            .iter()
            .filter(|(_, _, gauge)| *gauge)
            .map(|(name, _, _)| name.to_string())
            .collect()
    }

    pub fn new() -> Arc<Self> {
        let metrics = Self::default();
        metrics.watermark.store(i64::MIN, Ordering::Relaxed);
        Arc::new(metrics)
    }

    pub fn record_in(&self, rows: usize) {
        self.events_in.fetch_add(rows as u64, Ordering::Relaxed);
        self.batches_in.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_out(&self, rows: usize) {
        self.events_out.fetch_add(rows as u64, Ordering::Relaxed);
        self.batches_out.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_errors(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Records whether the component's connection to its outside system works (a broker, a
    /// database, a receiver): set on each success and failure that shows it.
    pub fn set_connected(&self, up: bool) {
        self.connection
            .store(if up { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// `None` for a component without an outside connection (or before its first attempt).
    pub fn connected(&self) -> Option<bool> {
        match self.connection.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    pub fn add_late(&self, n: u64) {
        self.late.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let watermark = self.watermark.load(Ordering::Relaxed);
        MetricsSnapshot {
            events_in: self.events_in.load(Ordering::Relaxed),
            events_out: self.events_out.load(Ordering::Relaxed),
            batches_in: self.batches_in.load(Ordering::Relaxed),
            batches_out: self.batches_out.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed).max(0) as u64,
            watermark_micros: (watermark != i64::MIN).then_some(watermark),
            checkpoints_acked: self.checkpoints_acked.load(Ordering::Relaxed),
            connected: self.connected(),
        }
    }
}

/// A point-in-time copy of one component's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct MetricsSnapshot {
    pub events_in: u64,
    pub events_out: u64,
    pub batches_in: u64,
    pub batches_out: u64,
    pub errors: u64,
    pub dropped: u64,
    pub late: u64,
    pub queue_depth: u64,
    pub watermark_micros: Option<i64>,
    pub checkpoints_acked: u64,
    /// Whether its outside connection works; `None` when it has none (or none yet).
    pub connected: Option<bool>,
}

/// One component's identity and counters, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    pub id: String,
    pub kind: ComponentKind,
    pub component_type: String,
    #[serde(flatten)]
    pub metrics: MetricsSnapshot,
    /// Counters and gauges specific to the component type.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub counters: IndexMap<String, u64>,
    /// Which of `counters` are gauges (levels, not totals).
    #[serde(skip)]
    pub gauges: Vec<String>,
}

/// A registered component: its kind, its type name, and its counters.
type Registered = (ComponentKind, String, Arc<ComponentMetrics>);

/// All components' metrics of a running pipeline, in config order.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    components: Mutex<IndexMap<String, Registered>>,
    /// The pipeline's checkpoints, as they happen.
    pub checkpoints: CheckpointMetrics,
}

/// Live checkpoint counters of one pipeline.
#[derive(Debug, Default)]
pub struct CheckpointMetrics {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    /// From barrier injection to the last sink's acknowledgement, of the newest checkpoint.
    pub last_duration_micros: AtomicU64,
    /// Checkpoints abandoned because a state could not be written.
    pub failed: AtomicU64,
    /// Bytes of operator and source state in the newest checkpoint.
    pub last_state_bytes: AtomicU64,
    /// The checkpoint the pipeline restored at start (0: none).
    pub restored: AtomicU64,
}

impl MetricsRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a component and returns its counters (the same ones on a second call).
    pub fn register(
        &self,
        id: &str,
        kind: ComponentKind,
        component_type: &str,
    ) -> Arc<ComponentMetrics> {
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        components
            .entry(id.to_string())
            .or_insert_with(|| (kind, component_type.to_string(), ComponentMetrics::new()))
            .2
            .clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<ComponentMetrics>> {
        let components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        components.get(id).map(|(_, _, m)| m.clone())
    }

    pub fn report(&self) -> Vec<ComponentReport> {
        let components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        components
            .iter()
            .map(|(id, (kind, component_type, metrics))| ComponentReport {
                id: id.clone(),
                kind: *kind,
                component_type: component_type.clone(),
                metrics: metrics.snapshot(),
                counters: metrics.named_values(),
                gauges: metrics.gauge_names(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_and_report_in_registration_order() {
        let registry = MetricsRegistry::new();
        let a = registry.register("a", ComponentKind::Source, "generator");
        let b = registry.register("b", ComponentKind::Sink, "console");
        a.record_out(10);
        a.record_out(5);
        b.record_in(15);
        b.add_dropped(2);
        a.named("reconnects").fetch_add(3, Ordering::Relaxed);
        a.named("reconnects").fetch_add(1, Ordering::Relaxed);
        let report = registry.report();
        assert_eq!(report[0].id, "a");
        assert_eq!(report[0].metrics.events_out, 15);
        assert_eq!(report[0].metrics.batches_out, 2);
        assert_eq!(report[1].metrics.dropped, 2);
        assert_eq!(report[1].metrics.watermark_micros, None);
        assert_eq!(report[0].counters.get("reconnects"), Some(&4));
        assert!(report[1].counters.is_empty());
        assert!(Arc::ptr_eq(
            &a,
            &registry.register("a", ComponentKind::Source, "generator")
        ));
    }
}
