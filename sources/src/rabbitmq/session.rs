//! One connection of the rabbitmq source: connects, declares (or checks) the queue, its binding
//! and the dead-letter exchange and queue, sets the prefetch, starts consuming, and publishes
//! undecodable messages to the dead-letter exchange with the reason in headers.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Consumer, ExchangeKind};

use super::config::{Declare, RabbitMqSourceConfig};

/// An open connection with a consuming channel and a confirming dead-letter channel.
pub struct Session {
    connection: Connection,
    channel: Channel,
    dead_letters: Channel,
    pub consumer: Consumer,
}

/// Why a message was dead-lettered.
pub struct DeadLetter<'a> {
    pub reason: &'static str,
    pub error: String,
    pub delivery: &'a Delivery,
    /// What to publish instead of the delivery's body (some of its events), and its type.
    pub body: Option<(Vec<u8>, &'static str)>,
}

impl Session {
    pub async fn open(component: &str, config: &RabbitMqSourceConfig) -> Result<Self, String> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("pipeline source {component}").into());
        let connection = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&config.url, properties),
        )
        .await
        .map_err(|_| "connecting took longer than 10 s".to_string())?
        .map_err(|e| format!("connecting: {e}"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        declare(&channel, config)
            .await
            .map_err(|e| format!("declaring the topology: {e}"))?;
        let dead_letters = connection
            .create_channel()
            .await
            .map_err(|e| format!("opening the dead-letter channel: {e}"))?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("enabling publisher confirms: {e}"))?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("setting the prefetch: {e}"))?;
        let consumer = channel
            .basic_consume(
                config.queue.as_str().into(),
                format!("pipeline-{component}-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming queue `{}`: {e}", config.queue))?;
        Ok(Self {
            connection,
            channel,
            dead_letters,
            consumer,
        })
    }

    /// Messages ready in the queue (not counting those delivered and not yet acknowledged),
    /// from a passive declare.
    pub async fn ready_messages(&self, queue: &str) -> Result<u32, lapin::Error> {
        let queue = self
            .channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }

    /// Acknowledges every delivery up to and including `tag`.
    pub async fn ack_up_to(&self, tag: u64) -> Result<(), lapin::Error> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
    }

    /// Publishes the delivery, unchanged, to the dead-letter exchange with headers naming the
    /// reason, and waits for the broker's confirm.
    pub async fn dead_letter(
        &self,
        exchange: &str,
        component: &str,
        queue: &str,
        letter: DeadLetter<'_>,
    ) -> Result<(), String> {
        let delivery = letter.delivery;
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |value: &str| AMQPValue::LongString(value.into());
        headers.insert("x-pipeline-reason".into(), text(letter.reason));
        headers.insert("x-pipeline-error".into(), text(&letter.error));
        headers.insert(
            "x-original-exchange".into(),
            text(delivery.exchange.as_str()),
        );
        headers.insert(
            "x-original-routing-key".into(),
            text(delivery.routing_key.as_str()),
        );
        headers.insert("x-original-queue".into(), text(queue));
        headers.insert("x-pipeline-source".into(), text(component));
        let mut properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let body = match &letter.body {
            Some((body, content_type)) => {
                properties = properties.with_content_type((*content_type).into());
                body.as_slice()
            }
            None => &delivery.data,
        };
        let confirm = self
            .dead_letters
            .basic_publish(
                exchange.into(),
                delivery.routing_key.clone(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(|e| format!("publishing to the dead-letter exchange: {e}"))?
            .await
            .map_err(|e| format!("confirming the dead letter: {e}"))?;
        match confirm {
            Confirmation::Nack(_) => Err("the broker refused the dead letter".to_string()),
            _ => Ok(()),
        }
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "closing".into()).await;
        let _ = self.connection.close(200, "closing".into()).await;
    }
}

async fn declare(channel: &Channel, config: &RabbitMqSourceConfig) -> Result<(), lapin::Error> {
    if config.declare == Declare::None {
        return Ok(());
    }
    let passive = config.declare == Declare::Check;
    let queue = |name: String| async move {
        let options = QueueDeclareOptions {
            passive,
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await
            .map(|_| ())
    };
    let exchange = |name: String, kind: ExchangeKind| async move {
        let options = ExchangeDeclareOptions {
            passive,
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(name.as_str().into(), kind, options, FieldTable::default())
            .await
    };
    let bind = |queue: String, exchange: String, key: String| async move {
        if passive {
            return Ok(());
        }
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    queue(config.queue.clone()).await?;
    let dead_letter_exchange = config.dead_letter_exchange();
    if !dead_letter_exchange.is_empty() {
        exchange(dead_letter_exchange.clone(), ExchangeKind::Fanout).await?;
        let dead_letter_queue = config.dead_letter_queue();
        if !dead_letter_queue.is_empty() {
            queue(dead_letter_queue.clone()).await?;
            bind(dead_letter_queue, dead_letter_exchange, "#".into()).await?;
        }
    }
    if let Some(name) = config.exchange.clone().filter(|e| !e.is_empty()) {
        exchange(name.clone(), exchange_kind(&config.exchange_type)).await?;
        bind(config.queue.clone(), name, config.binding_key.clone()).await?;
    }
    Ok(())
}

fn exchange_kind(name: &str) -> ExchangeKind {
    match name {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}
