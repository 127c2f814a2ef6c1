//! Alert webhooks end to end: the daemon POSTs to a receiver started by the test
//! (plain HTTP, or HTTPS with a test CA made at test time), and each alert key
//! fires once per suppression window.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automation_framework::protocol::{AdmitReply, AdmitRequest, GuardKind, Outcome, ReportRequest};
use automation_framework_client::Client;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::util::{eventually, fail_five, Daemon, PROMPTLY};

/// A webhook receiver on 127.0.0.1: answers every request `200 OK` and keeps the
/// bodies of POSTs. With TLS, it counts the handshakes it failed.
struct Receiver {
    port: u16,
    https: bool,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    refused_handshakes: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::start_with(None).await
    }

    /// A receiver that speaks HTTPS with `tls`.
    async fn start_with(tls: Option<TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let refused_handshakes = Arc::new(AtomicUsize::new(0));
        let receiver = Receiver {
            port,
            https: tls.is_some(),
            bodies: Arc::clone(&bodies),
            refused_handshakes: Arc::clone(&refused_handshakes),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = Arc::clone(&bodies);
                let refused = Arc::clone(&refused_handshakes);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, kept).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => serve(stream, kept).await,
                            Err(_) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                                None
                            }
                        },
                    }
                });
            }
        });
        receiver
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/hook", self.port)
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` POSTs arrived, and returns them.
    async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        eventually(Duration::from_secs(10), || async {
            let bodies = self.bodies();
            (bodies.len() >= n).then_some(bodies)
        })
        .await
    }
}

/// Reads one request, keeps the body of a POST to /hook, then answers 200 (so the
/// daemon's next POST cannot be kept before this one).
async fn serve<S>(mut stream: S, kept: Arc<Mutex<Vec<serde_json::Value>>>) -> Option<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if head.starts_with("post /hook ") {
        if let Ok(body) = serde_json::from_slice(&buf[head_end..head_end + length]) {
            kept.lock().unwrap().push(body);
        }
    }
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    stream.shutdown().await.ok()
}

/// A test CA, made fresh for each test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
        TestCa { issuer }
    }

    /// A server that presents a certificate for localhost and 127.0.0.1 signed by
    /// this CA.
    fn acceptor(&self) -> TlsAcceptor {
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        TlsAcceptor::from(Arc::new(config))
    }
}

/// A daemon posting alerts to `receiver` and trusting `ca` through
/// `alerts.ca_file` (kept in the returned directory).
fn daemon_trusting(receiver: &Receiver, ca: &TestCa) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pem = dir.path().join("test-ca.pem");
    std::fs::write(&pem, ca.issuer.pem()).expect("write the CA");
    let daemon = Daemon::start(&format!(
        "[alerts]\nwebhook = \"{}\"\nca_file = \"{}\"\n",
        receiver.url(),
        pem.display()
    ));
    (daemon, dir)
}

/// `automation_framework_alerts_failed_total` on the daemon's `/metrics`.
fn alerts_failed(daemon: &Daemon) -> f64 {
    let (_, metrics) = daemon.http_get("/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("automation_framework_alerts_failed_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn admit(client: &mut Client, service: &str, cost: Option<f64>) -> AdmitReply {
    client
        .admit(AdmitRequest {
            service: service.into(),
            cost,
            ..Default::default()
        })
        .await
        .expect("admit answered")
}

async fn report(client: &mut Client, reservation: u64, outcome: Outcome, cost: Option<f64>) {
    client
        .report(ReportRequest {
            reservation: Some(reservation),
            outcome,
            cost,
            ..Default::default()
        })
        .await
        .expect("report answered");
}

/// Polls admit until the open period ends and a trial is let through.
async fn trial(client: &mut Client, service: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = admit(client, service, None).await;
        if let Some(id) = reply.reservation {
            return id;
        }
        assert_eq!(reply.guard, Some(GuardKind::Breaker), "{reply:?}");
        assert!(std::time::Instant::now() < deadline, "no trial let through");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kinds(bodies: &[serde_json::Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| {
            b["attachments"][0]["fields"][0]["value"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_flapping_breaker_alerts_once_per_window() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(&format!(
        "[breaker]\nopen_for = \"200ms\"\nhalf_open_trials = 1\n[alerts]\nwebhook = \"{}\"\n",
        receiver.url()
    ));
    let mut client = daemon.client("a").await;
    fail_five(&mut client, "flaky").await;
    for _ in 0..2 {
        let id = trial(&mut client, "flaky").await;
        report(&mut client, id, Outcome::Failure, None).await;
    }
    // Opened three times. Another service's opening goes through the same queue
    // after them: once it arrived, everything raised before it was delivered.
    fail_five(&mut client, "sentinel").await;
    let bodies = receiver.wait_for(2).await;
    assert_eq!(
        kinds(&bodies),
        ["breaker_opened", "breaker_opened"],
        "{bodies:?}"
    );
    let text = bodies[0]["text"].as_str().expect("text");
    assert!(text.contains("\"flaky\""), "{text}");
    assert!(bodies[1]["text"]
        .as_str()
        .expect("text")
        .contains("\"sentinel\""));
    assert_eq!(receiver.bodies().len(), 2);
}

#[tokio::test]
async fn each_budget_threshold_alerts_once() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(&format!(
        "[budget]\nlimit = 10.0\n[alerts]\nwebhook = \"{}\"\n",
        receiver.url()
    ));
    let mut client = daemon.client("a").await;
    // 6 of 10 (50 %), then 9 of 10 (80 %), then 9.5 (still 80 %: no new alert).
    for cost in [6.0, 3.0, 0.5] {
        let reply = admit(&mut client, "svc", Some(cost)).await;
        let id = reply.reservation.expect("within budget");
        report(&mut client, id, Outcome::Success, Some(cost)).await;
    }
    fail_five(&mut client, "sentinel").await;
    let bodies = receiver.wait_for(3).await;
    assert_eq!(
        kinds(&bodies),
        ["budget_threshold", "budget_threshold", "breaker_opened"],
        "{bodies:?}"
    );
    assert!(bodies[0]["text"].as_str().expect("text").contains("50%"));
    assert!(bodies[1]["text"].as_str().expect("text").contains("80%"));
    assert_eq!(receiver.bodies().len(), 3);
    daemon.assert_memory_matches_ledger().await;
}

#[tokio::test]
async fn an_exhausted_quota_and_a_closed_breaker_alert() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(&format!(
        "[breaker]\nopen_for = \"200ms\"\nhalf_open_trials = 1\nsuccess_threshold = 1\n\
         [[quotas]]\nname = \"searches\"\nservices = [\"search\"]\nscope = \"agent\"\nlimit = 1\nwindow = \"day\"\n\
         [alerts]\nwebhook = \"{}\"\n",
        receiver.url()
    ));
    let mut client = daemon.client("a").await;
    assert!(admit(&mut client, "search", None).await.allowed);
    for _ in 0..3 {
        let denied = admit(&mut client, "search", None).await;
        assert_eq!(denied.guard, Some(GuardKind::Quota), "{denied:?}");
    }
    let bodies = receiver.wait_for(1).await;
    assert_eq!(kinds(&bodies), ["quota_exhausted"], "{bodies:?}");
    let text = bodies[0]["text"].as_str().expect("text");
    assert!(text.contains("searches") && text.contains(" a;"), "{text}");

    fail_five(&mut client, "flaky").await;
    let id = trial(&mut client, "flaky").await;
    report(&mut client, id, Outcome::Success, None).await;
    let bodies = receiver.wait_for(3).await;
    assert_eq!(
        kinds(&bodies),
        ["quota_exhausted", "breaker_opened", "breaker_closed"],
        "{bodies:?}"
    );
}

/// A refused reload is an operator's problem worth a page: it raises an alert
/// with the reason, and the old configuration stays in force.
#[tokio::test]
async fn a_failed_reload_alerts_with_the_reason() {
    let receiver = Receiver::start().await;
    let config = format!("[alerts]\nwebhook = \"{}\"\n", receiver.url());
    let daemon = Daemon::start(&config);
    daemon.write_config(&format!("{config}[breaker]\nfailure_treshold = 3\n"));
    daemon.sighup_and_wait();
    let bodies = receiver.wait_for(1).await;
    assert_eq!(kinds(&bodies), ["reload_failed"], "{bodies:?}");
    let text = serde_json::to_string(&bodies[0]).unwrap();
    assert!(
        text.contains("failure_treshold"),
        "the reason names the key: {text}"
    );
}

/// An `https://` webhook whose certificate comes from a CA given in
/// `alerts.ca_file`: the alert is delivered over TLS.
#[tokio::test]
async fn an_alert_is_delivered_over_https_to_a_webhook_the_ca_file_vouches_for() {
    let ca = TestCa::new();
    let receiver = Receiver::start_with(Some(ca.acceptor())).await;
    let (daemon, _ca_dir) = daemon_trusting(&receiver, &ca);
    let mut client = daemon.client("a").await;
    fail_five(&mut client, "flaky").await;
    let bodies = receiver.wait_for(1).await;
    assert_eq!(kinds(&bodies), ["breaker_opened"], "{bodies:?}");
    assert!(bodies[0]["text"]
        .as_str()
        .expect("text")
        .contains("\"flaky\""));
    assert_eq!(receiver.refused_handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(alerts_failed(&daemon), 0.0);
}

/// A webhook whose certificate no trusted CA vouches for (another CA signed it;
/// `alerts.ca_file` names a different one) is refused at the handshake, every
/// attempt, and the alert is counted as failed: nothing is posted to it.
#[tokio::test]
async fn a_webhook_whose_certificate_no_trusted_ca_vouches_for_is_refused_and_counted() {
    let trusted = TestCa::new();
    let stranger = TestCa::new();
    let receiver = Receiver::start_with(Some(stranger.acceptor())).await;
    let (daemon, _ca_dir) = daemon_trusting(&receiver, &trusted);
    let mut client = daemon.client("a").await;
    fail_five(&mut client, "flaky").await;
    eventually(PROMPTLY, || async {
        (alerts_failed(&daemon) >= 1.0).then_some(())
    })
    .await;
    // The receiver notes the last refusal a moment after the daemon gave up.
    let refused = || receiver.refused_handshakes.load(Ordering::SeqCst);
    eventually(PROMPTLY, || async { (refused() >= 3).then_some(()) }).await;
    assert_eq!(
        refused(),
        3,
        "each of the three attempts was refused at the handshake"
    );
    assert_eq!(alerts_failed(&daemon), 1.0);
    assert!(
        receiver.bodies().is_empty(),
        "nothing is posted over an untrusted connection"
    );
    let log = daemon.log();
    assert!(
        log.contains("alert not delivered") && log.contains("alerts.ca_file"),
        "the warning says what to do:\n{log}"
    );
}
