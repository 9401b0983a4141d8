//! Settings of the `rabbitmq` source.

use engine::time::ConfigDuration;
use serde::Deserialize;

/// What the source does about its queue, the exchange binding and the dead-letter topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Declare {
    /// Declare everything (durable), creating what is missing.
    #[default]
    Create,
    /// Only check that the queue and the dead-letter exchange exist (passive declares).
    Check,
    /// Touch nothing.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSourceConfig {
    #[serde(default = "default_url")]
    pub url: String,
    pub queue: String,
    #[serde(default)]
    pub declare: Declare,
    /// An exchange to bind the queue to (declared durable when `declare = "create"`).
    #[serde(default)]
    pub exchange: Option<String>,
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// The binding key (`#` for a topic exchange; a weight such as `"1"` for a
    /// consistent-hash exchange).
    #[serde(default = "default_binding_key")]
    pub binding_key: String,
    /// Unacknowledged messages the broker may send ahead.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Events per batch sent downstream, at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch may wait.
    #[serde(default = "default_linger")]
    pub linger: ConfigDuration,
    /// Where messages that cannot be decoded go; `""` turns dead-lettering off (such messages
    /// are then acknowledged and only counted). Defaults to `{queue}.dead`.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// A queue bound to the dead-letter exchange, declared with it. Defaults to `{queue}.dead`.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// Larger messages are dead-lettered unread.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial: ConfigDuration,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: ConfigDuration,
    /// How long shutdown waits for a final checkpoint, so what was processed is acknowledged.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
    /// Events stamped further ahead of this machine's clock than this are not taken as they
    /// are (a producer's clock bug would move event time years ahead): see `future_events`.
    #[serde(default = "default_max_future_skew")]
    pub max_future_skew: ConfigDuration,
    #[serde(default)]
    pub future_events: FutureEvents,
}

/// What the source does with an event stamped beyond `max_future_skew`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FutureEvents {
    /// Published to the dead-letter exchange (as JSON lines, reason `event_time_in_future`);
    /// the message's other events go on.
    #[default]
    DeadLetter,
    /// Stamped with the time it was received instead, and counted.
    Clamp,
}

impl RabbitMqSourceConfig {
    pub fn dead_letter_exchange(&self) -> String {
        self.dead_letter_exchange
            .clone()
            .unwrap_or_else(|| format!("{}.dead", self.queue))
    }

    pub fn dead_letter_queue(&self) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{}.dead", self.queue))
    }
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".to_string()
}
fn default_exchange_type() -> String {
    "topic".to_string()
}
fn default_binding_key() -> String {
    "#".to_string()
}
fn default_prefetch() -> u16 {
    512
}
fn default_batch_size() -> usize {
    4096
}
fn default_linger() -> ConfigDuration {
    ConfigDuration::from_millis(100)
}
fn default_max_message_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_reconnect_initial() -> ConfigDuration {
    ConfigDuration::from_millis(100)
}
fn default_reconnect_max() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_shutdown_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_max_future_skew() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
