//! `email`: deliver alert state changes by SMTP, through the same durable, ordered, retried
//! queue as the webhook (see [`crate::notify`]). TLS is `starttls` (required: the session is
//! upgraded before credentials or mail are sent, and a server that does not offer STARTTLS
//! gets nothing), `tls` (implicit TLS, SMTPS) or `none` (a trusted local relay only; refused
//! with credentials). Server certificates are checked against the Mozilla roots, plus a
//! private CA from `ca_file`. An SMTP 4xx answer, a timeout or a lost connection is retried;
//! a 5xx answer is given up on (logged and counted). Each message has a Message-ID made of the
//! notification id, and messages about one alert share a thread (`References`).

pub mod message;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use engine::component::Sink;
use engine::config::ConfigError;
use engine::metrics::ComponentMetrics;
use engine::registry::BuildContext;
use engine::schema::alert::{alert_schema, AlertNotification};
use engine::time::ConfigDuration;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use crate::notify::queue::Entry;
use crate::notify::{NotifySink, Outcome, QueueSettings, Transport};
pub use message::{render, RenderedEmail};

/// How the SMTP session is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption (port 25): only for a trusted relay on the same host or network.
    None,
}

impl TlsMode {
    fn default_port(self) -> u16 {
        match self {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server's host name (checked against its certificate).
    pub host: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender, e.g. `Model API alerts <alerts@example.com>`.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Put in front of every subject, e.g. `[prod]`.
    #[serde(default)]
    pub subject_prefix: String,
    /// A PEM file with a CA certificate to trust besides the public roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Per delivery attempt, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Where the durable queue lives; default `data/email/<sink id>`.
    pub queue_dir: Option<PathBuf>,
    #[serde(default = "crate::notify::default_queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "crate::notify::default_retry_initial")]
    pub retry_initial: ConfigDuration,
    #[serde(default = "crate::notify::default_retry_max")]
    pub retry_max: ConfigDuration,
    /// Also send `pending` changes and the `resolved` of alerts that never fired.
    #[serde(default)]
    pub send_pending: bool,
    #[serde(default = "crate::notify::default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

pub fn build(ctx: &BuildContext<'_, '_>) -> Result<Box<dyn Sink>, ConfigError> {
    let config: EmailConfig = ctx.spec.settings()?;
    let schema = ctx.input_schema()?;
    if schema.fields() != alert_schema().fields() {
        return Err(ctx.spec.error_at_input(
            0,
            "this sink delivers alerts: connect it to an `alert` operator",
        ));
    }
    let sink = EmailSink::new(config, &ctx.spec.id, ctx.metrics.clone())
        .map_err(|(key, message)| ctx.spec.error_at_key(key, message))?;
    Ok(Box::new(sink))
}

/// Sends rendered notifications through an SMTP server.
pub struct SmtpTransport {
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject_prefix: String,
    /// The right-hand side of Message-IDs.
    id_domain: String,
}

impl SmtpTransport {
    fn message(&self, entry: &Entry, email: &RenderedEmail) -> Result<Message, String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(email.subject.clone())
            .message_id(Some(format!(
                "<{}@{}>",
                entry.notification_id, self.id_domain
            )))
            .references(format!("<{}@{}>", email.alert_id, self.id_domain))
            .header(ContentType::TEXT_PLAIN);
        for recipient in &self.to {
            builder = builder.to(recipient.clone());
        }
        builder.body(email.text.clone()).map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Transport for SmtpTransport {
    fn render(&self, notification: &AlertNotification) -> String {
        let email = render(notification, &self.subject_prefix);
        serde_json::to_string(&email).unwrap_or_default()
    }

    async fn attempt(&self, entry: &Entry) -> Outcome {
        let email: RenderedEmail = match serde_json::from_str(&entry.body) {
            Ok(email) => email,
            Err(e) => return Outcome::Rejected(format!("unreadable queued email: {e}")),
        };
        let message = match self.message(entry, &email) {
            Ok(message) => message,
            Err(e) => return Outcome::Rejected(format!("could not build the message: {e}")),
        };
        match self.mailer.send(message).await {
            Ok(_) => Outcome::Delivered,
            Err(e) if e.is_permanent() => Outcome::Rejected(e.to_string()),
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}

/// The `email` sink.
pub type EmailSink = NotifySink<SmtpTransport>;

fn mailbox(key: &'static str, text: &str) -> Result<Mailbox, (&'static str, String)> {
    text.parse()
        .map_err(|e| (key, format!("{text:?} is not an email address: {e}")))
}

impl NotifySink<SmtpTransport> {
    /// Checks the settings; the error names the setting.
    pub fn new(
        config: EmailConfig,
        id: &str,
        metrics: Arc<ComponentMetrics>,
    ) -> Result<Self, (&'static str, String)> {
        if config.host.trim().is_empty() {
            return Err(("host", "the SMTP server's host name is empty".into()));
        }
        let from = mailbox("from", &config.from)?;
        if config.to.is_empty() {
            return Err(("to", "no recipients: give at least one address".into()));
        }
        let to = config
            .to
            .iter()
            .map(|address| mailbox("to", address))
            .collect::<Result<Vec<_>, _>>()?;
        if config.queue_capacity == 0 {
            return Err(("queue_capacity", "must be at least 1".into()));
        }
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.clone())),
            (None, None) => None,
            (Some(_), None) => return Err(("username", "a username needs a `password`".into())),
            (None, Some(_)) => return Err(("password", "a password needs a `username`".into())),
        };
        if credentials.is_some() && config.tls == TlsMode::None {
            return Err((
                "tls",
                "credentials would be sent unencrypted: use `starttls` or `tls`".into(),
            ));
        }
        let tls = match config.tls {
            TlsMode::None => Tls::None,
            mode => {
                let mut parameters = TlsParameters::builder(config.host.clone());
                if let Some(path) = &config.ca_file {
                    let pem = std::fs::read(path)
                        .map_err(|e| ("ca_file", format!("cannot read {}: {e}", path.display())))?;
                    let certificate = Certificate::from_pem(&pem).map_err(|e| {
                        (
                            "ca_file",
                            format!("{} is not a PEM certificate: {e}", path.display()),
                        )
                    })?;
                    parameters = parameters.add_root_certificate(certificate);
                }
                let parameters = parameters
                    .build_rustls()
                    .map_err(|e| ("tls", format!("TLS settings: {e}")))?;
                if mode == TlsMode::Tls {
                    Tls::Wrapper(parameters)
                } else {
                    Tls::Required(parameters)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port.unwrap_or(config.tls.default_port()))
            .tls(tls)
            .timeout(Some(config.timeout.0));
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        let id_domain = from.email.domain().to_string();
        let transport = SmtpTransport {
            mailer: builder.build(),
            from,
            to,
            subject_prefix: config.subject_prefix.clone(),
            id_domain,
        };
        let settings = QueueSettings {
            dir: config
                .queue_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("data").join("email").join(id)),
            capacity: config.queue_capacity,
            retry_initial: config.retry_initial.0,
            retry_max: config.retry_max.0,
            send_pending: config.send_pending,
            drain_timeout: config.drain_timeout.0,
        };
        Ok(Self::with_transport(transport, settings, id, metrics))
    }
}
