//! Settings of the `rabbitmq` sink.

use engine::codec::Encoding;
use engine::time::ConfigDuration;
use serde::Deserialize;

/// What the sink does about the exchange (and the optional queue) it publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Declare {
    /// Declare them (durable), creating them if missing.
    #[default]
    Create,
    /// Only check that they exist (passive declare); a missing one is an error.
    Check,
    /// Touch nothing.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSinkConfig {
    #[serde(default = "default_url")]
    pub url: String,
    /// The exchange to publish to; `""` is the default exchange (routing key = queue name).
    pub exchange: String,
    /// `direct`, `fanout`, `topic`, `headers`, or a plugin type such as `x-consistent-hash`.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Template of each message's routing key: `{column}` is replaced by the row's value.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    #[serde(default)]
    pub encoding: Encoding,
    /// Events per message; 1 publishes one event per message.
    #[serde(default = "default_max_events_per_message")]
    pub max_events_per_message: usize,
    #[serde(default)]
    pub declare: Declare,
    /// A queue to declare and bind to the exchange, so nothing published before the consumers
    /// start is lost.
    #[serde(default)]
    pub queue: Option<String>,
    /// The binding key of `queue` (`#` suits a topic exchange; a weight such as `"1"` a
    /// consistent-hash exchange).
    #[serde(default = "default_binding_key")]
    pub binding_key: String,
    /// Events held (queued or awaiting the broker's confirm) before new ones are dropped.
    #[serde(default = "default_buffer_max_events")]
    pub buffer_max_events: usize,
    /// Messages published and not yet confirmed, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial: ConfigDuration,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: ConfigDuration,
    /// How long shutdown waits for buffered events to be confirmed.
    #[serde(default = "default_close_timeout")]
    pub close_timeout: ConfigDuration,
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".to_string()
}
fn default_exchange_type() -> String {
    "topic".to_string()
}
fn default_routing_key() -> String {
    "{model}.{endpoint}".to_string()
}
fn default_max_events_per_message() -> usize {
    100
}
fn default_binding_key() -> String {
    "#".to_string()
}
fn default_buffer_max_events() -> usize {
    1_000_000
}
fn default_max_in_flight() -> usize {
    256
}
fn default_reconnect_initial() -> ConfigDuration {
    ConfigDuration::from_millis(100)
}
fn default_reconnect_max() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_close_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
