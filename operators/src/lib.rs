//! Operators: `filter` (a SQL boolean condition over any field) and `window` (event-time
//! tumbling or hopping windows with watermarks and allowed lateness, computing counts, error
//! rates, rates, latency statistics, DDSketch quantiles, TTFT quantiles and token sums in one
//! step). Each module registers itself in [`register`].

pub mod filter;
pub mod window;

use engine::registry::Registry;

/// Registers every operator type.
pub fn register(registry: &mut Registry) {
    registry.add_operator("filter", filter::build);
    registry.add_operator("window", window::build);
}
