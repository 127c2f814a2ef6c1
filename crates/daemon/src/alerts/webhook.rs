//! One POST of an alert body to the webhook, over plain HTTP or HTTPS.
//!
//! HTTPS is rustls on the ring provider (no OpenSSL; ring needs only a C
//! compiler), trusting Mozilla's roots (compiled in from `webpki-roots`, so the
//! daemon does not depend on the host's bundle) plus the CAs of `alerts.ca_file`.
//! Certificates are always verified; there is no switch to turn that off, because
//! a webhook URL carries a secret. One timeout bounds connect, handshake, request
//! and answer. No connection is kept between alerts: they are rare, and a fresh
//! connection is never a stale one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::{CaBundle, WebhookUrl};

/// How long one POST (connect, TLS handshake, send, answer) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where alerts are posted, and how to reach it.
pub(super) struct Webhook {
    url: WebhookUrl,
    /// `Some` for an `https://` webhook.
    tls: Option<TlsConnector>,
}

/// Why a webhook could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {authority}: {source} (a webhook whose certificate comes from a private CA needs that CA in alerts.ca_file)")]
    Tls {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("the webhook answered {0}")]
    Status(http::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

// === impl Webhook ===

impl Webhook {
    /// Builds the TLS client for an `https://` URL, trusting the built-in roots and
    /// `ca` (checked when the config was loaded).
    pub(super) fn new(url: WebhookUrl, ca: Option<&CaBundle>) -> Webhook {
        let tls = url.is_https().then(|| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            if let Some(ca) = ca {
                roots.add_parsable_certificates(ca.certs.iter().cloned());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports rustls' default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(config))
        });
        Webhook { url, tls }
    }

    /// `host[:port]`: what logs may say of the webhook (its path may be a secret).
    pub(super) fn authority(&self) -> &str {
        self.url.authority()
    }

    /// One POST of `body`, within [`REQUEST_TIMEOUT`]; success is a 2xx answer.
    pub(super) async fn post(&self, body: Bytes) -> Result<(), DeliveryError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.post_once(body))
            .await
            .map_err(|_| DeliveryError::Timeout(REQUEST_TIMEOUT))?
    }

    async fn post_once(&self, body: Bytes) -> Result<(), DeliveryError> {
        let authority = || self.url.authority().to_owned();
        let stream = tokio::net::TcpStream::connect((self.url.host(), self.url.port()))
            .await
            .map_err(|source| DeliveryError::Connect {
                authority: authority(),
                source,
            })?;
        match (&self.tls, self.url.server_name()) {
            (Some(tls), Some(name)) => {
                let stream = tls.connect(name.clone(), stream).await.map_err(|source| {
                    DeliveryError::Tls {
                        authority: authority(),
                        source,
                    }
                })?;
                exchange(stream, &self.url, body).await
            }
            _ => exchange(stream, &self.url, body).await,
        }
    }
}

/// The HTTP/1.1 request and its answer on an open connection.
async fn exchange<T>(io: T, url: &WebhookUrl, body: Bytes) -> Result<(), DeliveryError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    // The connection is driven here, beside the request, and dropped with it (no
    // task outlives a stuck webhook).
    let request = hyper::Request::post(url.target())
        .header(http::header::HOST, url.authority())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("automation-framework/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))?;
    let send = sender.send_request(request);
    tokio::pin!(send, connection);
    let response = tokio::select! {
        biased;
        response = &mut send => response?,
        // The server may answer and close at once (`connection: close`): the
        // answer is then already on its way to `send`.
        closed = &mut connection => {
            closed?;
            send.await?
        }
    };
    if response.status().is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Status(response.status()))
    }
}
