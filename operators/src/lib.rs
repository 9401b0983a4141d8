//! Operators: `filter` (a SQL boolean condition over any field) and `window` (event-time
//! tumbling or hopping windows with watermarks and allowed lateness, computing counts, error
//! rates, rates, latency statistics, DDSketch quantiles, TTFT quantiles and token sums in one
//! step), `anomaly` (robust, seasonal and multivariate detectors over window results), and
//! `alert` (threshold, anomaly and absence rules with Prometheus's alerting semantics), and
//! `price` (each call's `cost_usd` from a price table).
//! Each module registers itself in [`register`].

pub mod alert;
pub mod anomaly;
pub mod filter;
pub mod price;
pub mod series_key;
pub mod window;

use engine::registry::Registry;

/// Registers every operator type.
pub fn register(registry: &mut Registry) {
    registry.add_operator("alert", alert::build);
    registry.add_operator("anomaly", anomaly::build);
    registry.add_operator("filter", filter::build);
    registry.add_operator("price", price::build);
    registry.add_operator("window", window::build);
}
