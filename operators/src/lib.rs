//! Operators: `filter` (a SQL boolean condition over any field) and `window` (event-time
//! tumbling or hopping windows with watermarks and allowed lateness, computing counts, error
//! rates, rates, latency statistics, DDSketch quantiles, TTFT quantiles and token sums in one
//! step), and `anomaly` (robust, seasonal and multivariate detectors over window results).
//! Each module registers itself in [`register`].

pub mod anomaly;
pub mod filter;
pub mod window;

use engine::registry::Registry;

/// Registers every operator type.
pub fn register(registry: &mut Registry) {
    registry.add_operator("anomaly", anomaly::build);
    registry.add_operator("filter", filter::build);
    registry.add_operator("window", window::build);
}
