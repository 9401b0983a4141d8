//! The email sink against a real SMTP server process (aiosmtpd, from PyPI; `.ci/run` installs
//! it), with certificates from a throwaway CA made by `openssl`: STARTTLS with authentication
//! through a server that answers 451 twice (every change delivered once, in order, encrypted);
//! implicit TLS; a 550 not retried; and no mail at all, not even in plaintext, to a server
//! that does not offer the STARTTLS the sink requires.
//! Under CI=true a missing aiosmtpd fails the tests; elsewhere they are skipped with a message.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{notification, wait_for};
use engine::component::Sink;
use engine::metrics::ComponentMetrics;
use engine::schema::alert::{notifications_to_batch, AlertState};
use sinks::email::{EmailConfig, EmailSink};

const USER: &str = "pipeline";
const PASSWORD: &str = "hunter2";

fn aiosmtpd_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        engine::testing::missing(
            "the aiosmtpd SMTP test server",
            "python3 -m pip install aiosmtpd",
        );
    }
    found
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn certificates(dir: &Path) -> Certificates {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Pipeline Test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// The SMTP server process; stopped when dropped.
struct SmtpServer {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl SmtpServer {
    fn start(dir: &Path, certificates: &Certificates, mode: &str, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = dir.join(format!("received-{mode}-{port}.jsonl"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--mode", mode])
            .arg("--out")
            .arg(&out)
            .arg("--cert")
            .arg(&certificates.cert)
            .arg("--key")
            .arg(&certificates.key)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the SMTP server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read from the SMTP server");
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Self { child, port, out }
    }

    fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sink(
    server: &SmtpServer,
    certificates: &Certificates,
    queue_dir: &Path,
    settings: &str,
) -> (EmailSink, Arc<ComponentMetrics>) {
    let settings = format!(
        "host = \"localhost\"\nport = {}\nfrom = \"Model API alerts <alerts@pipeline.test>\"\nto = [\"oncall@team.test\", \"Lead <lead@team.test>\"]\nca_file = \"{}\"\nqueue_dir = \"{}\"\nretry_initial = \"20ms\"\nretry_max = \"100ms\"\ntimeout = \"5s\"\n{settings}",
        server.port,
        certificates.ca.display(),
        queue_dir.display()
    );
    let config: EmailConfig = toml::from_str(&settings).expect("settings");
    let metrics = ComponentMetrics::new();
    let sink = EmailSink::new(config, "oncall_mail", metrics.clone()).expect("valid settings");
    (sink, metrics)
}

fn header<'a>(message: &'a serde_json::Value, name: &str) -> &'a str {
    let content = message["content"].as_str().unwrap_or_default();
    content
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .unwrap_or_default()
}

#[tokio::test]
async fn starttls_with_login_delivers_each_change_once_in_order_through_451s() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = certificates(dir.path());
    let server = SmtpServer::start(
        dir.path(),
        &certificates,
        "starttls",
        &["--user", USER, "--password", PASSWORD, "--fail-first", "2"],
    );
    let (mut sink, metrics) = sink(
        &server,
        &certificates,
        &dir.path().join("queue"),
        &format!("tls = \"starttls\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\nsubject_prefix = \"[prod]\""),
    );
    let changes = vec![
        notification("a", AlertState::Pending, 0),
        notification("a", AlertState::Firing, 1),
        notification("b", AlertState::Firing, 1),
        notification("a", AlertState::Resolved, 5),
    ];
    sink.write(notifications_to_batch(&changes))
        .await
        .expect("queued");
    wait_for("three messages", || server.messages().len() == 3).await;
    sink.close().await.expect("closes");

    let messages = server.messages();
    let subjects: Vec<&str> = messages.iter().map(|m| header(m, "Subject")).collect();
    assert_eq!(
        subjects,
        vec![
            "[prod] [FIRING:critical] HighP99Latency model=a",
            "[prod] [FIRING:critical] HighP99Latency model=b",
            "[prod] [RESOLVED:critical] HighP99Latency model=a",
        ],
        "pending is not sent; the rest in order, once each"
    );
    for message in &messages {
        assert_eq!(message["tls"], true, "sent over STARTTLS: {message}");
        assert_eq!(message["authenticated"], true, "logged in: {message}");
        assert_eq!(message["mail_from"], "alerts@pipeline.test");
        assert_eq!(
            message["rcpt_tos"],
            serde_json::json!(["oncall@team.test", "lead@team.test"])
        );
        assert!(
            message["content"]
                .as_str()
                .is_some_and(|c| c.contains("Value:     1500")),
            "{message}"
        );
    }
    assert_eq!(
        header(&messages[0], "Message-ID"),
        "<a-firing-1@pipeline.test>"
    );
    assert_eq!(
        header(&messages[0], "References"),
        header(&messages[2], "References"),
        "firing and resolved of one alert share a thread"
    );
    assert_eq!(metrics.named("retries").load(Ordering::Relaxed), 2);
    assert_eq!(metrics.snapshot().events_out, 3);
}

#[tokio::test]
async fn implicit_tls_delivers() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = certificates(dir.path());
    let server = SmtpServer::start(
        dir.path(),
        &certificates,
        "tls",
        &["--user", USER, "--password", PASSWORD],
    );
    let (mut sink, _) = sink(
        &server,
        &certificates,
        &dir.path().join("queue"),
        &format!("tls = \"tls\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\""),
    );
    sink.write(notifications_to_batch(&[notification(
        "a",
        AlertState::Firing,
        1,
    )]))
    .await
    .expect("queued");
    wait_for("one message", || server.messages().len() == 1).await;
    sink.close().await.expect("closes");
    let messages = server.messages();
    assert_eq!(messages[0]["tls"], true);
    assert_eq!(messages[0]["authenticated"], true);
}

#[tokio::test]
async fn a_550_is_not_retried_and_the_next_change_still_goes() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = certificates(dir.path());
    let server = SmtpServer::start(
        dir.path(),
        &certificates,
        "starttls",
        &["--reject-containing", "model=poison"],
    );
    let (mut sink, metrics) = sink(
        &server,
        &certificates,
        &dir.path().join("queue"),
        "tls = \"starttls\"",
    );
    sink.write(notifications_to_batch(&[
        notification("poison", AlertState::Firing, 1),
        notification("a", AlertState::Firing, 1),
    ]))
    .await
    .expect("queued");
    wait_for("the second message", || server.messages().len() == 1).await;
    sink.close().await.expect("closes");
    assert!(header(&server.messages()[0], "Subject").ends_with("model=a"));
    assert_eq!(metrics.named("rejected").load(Ordering::Relaxed), 1);
    assert_eq!(metrics.named("retries").load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn required_starttls_sends_nothing_to_a_server_without_it() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = certificates(dir.path());
    let server = SmtpServer::start(dir.path(), &certificates, "plain", &[]);
    let queue = dir.path().join("queue");
    let (mut sink, metrics) = sink(&server, &certificates, &queue, "tls = \"starttls\"");
    sink.write(notifications_to_batch(&[notification(
        "a",
        AlertState::Firing,
        1,
    )]))
    .await
    .expect("queued");
    wait_for("a few refused attempts", || {
        metrics.named("retries").load(Ordering::Relaxed) >= 3
    })
    .await;
    sink.close().await.expect("closes");
    assert!(server.messages().is_empty(), "nothing sent in plaintext");
    assert_eq!(sink.queued(), 1, "the notification waits on disk");
}

#[test]
fn settings_errors_name_the_setting() {
    let base = "host = \"smtp.example.com\"\nfrom = \"alerts@example.com\"\nto = [\"oncall@example.com\"]\n";
    let cases = [
        ("to = []", "to"),
        ("to = [\"not an address\"]", "to"),
        ("username = \"u\"", "username"),
        ("tls = \"none\"\nusername = \"u\"\npassword = \"p\"", "tls"),
        ("ca_file = \"/nonexistent/ca.pem\"", "ca_file"),
    ];
    for (extra, key) in cases {
        let text = if extra.starts_with("to =") {
            format!("host = \"smtp.example.com\"\nfrom = \"alerts@example.com\"\n{extra}\n")
        } else {
            format!("{base}{extra}\n")
        };
        let config: EmailConfig = toml::from_str(&text).expect("parses");
        match EmailSink::new(config, "mail", ComponentMetrics::new()) {
            Err((named, message)) => assert_eq!(named, key, "{extra}: {message}"),
            Ok(_) => panic!("{extra} was accepted"),
        }
    }
}
