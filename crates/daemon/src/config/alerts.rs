//! `[alerts]`, validated: where alerts are posted, which extra CAs vouch for an
//! HTTPS webhook, and how alerts are suppressed and queued.
//!
//! These are configuration types, so they live with the configuration rather than
//! in `alerts`: the config layer imports nothing above it, and `alerts` (which
//! re-exports them) builds its delivery from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// `[alerts]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Where alerts are posted; `None`: alerts are only logged (at debug).
    pub webhook: Option<WebhookUrl>,
    /// `alerts.ca_file`: CAs trusted for an `https://` webhook besides the
    /// built-in (Mozilla) roots, for internal webhooks behind a private CA.
    pub ca: Option<CaBundle>,
    /// How long an alert key stays quiet after it fired.
    pub suppress: Duration,
    /// Alerts waiting for delivery; more are dropped and counted.
    pub queue: usize,
}

/// An `http://` or `https://` webhook address. Its `Debug` leaves out the path
/// and query: a Slack webhook's path is its secret, and configs get printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// As configured. Not logged: the path of a Slack webhook is its secret.
    pub url: String,
    uri: http::Uri,
    /// For `https://`: the name (or address) the server's certificate must carry.
    server_name: Option<ServerName<'static>>,
    /// Host name or address, without IPv6 brackets: what is connected to, and the
    /// name the server's certificate must carry.
    host: String,
    port: u16,
}

/// Certificates read from `alerts.ca_file` when the config was loaded, so a missing
/// or garbled file is a config error, not a failed alert hours later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    /// Each one checked to be usable as a trust anchor.
    pub certs: Vec<CertificateDer<'static>>,
}

// === impl AlertsConfig ===

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook: None,
            ca: None,
            suppress: Duration::from_secs(300),
            queue: 256,
        }
    }
}

// === impl WebhookUrl ===

impl WebhookUrl {
    /// Parses `http[s]://host[:port][/path][?query]`.
    ///
    /// # Errors
    /// What is wrong with `text`, for the config error.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        const LIKE: &str = "a URL like \"https://hooks.example.com/services/T0/B0/x\" or \"http://127.0.0.1:9000/hook\"";
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not {LIKE}: {e}"))?;
        let https = match uri.scheme_str() {
            Some(scheme) if scheme.eq_ignore_ascii_case("https") => true,
            Some(scheme) if scheme.eq_ignore_ascii_case("http") => false,
            Some(scheme) => {
                return Err(format!(
                    "{text:?}: the scheme {scheme:?} is not supported; use http:// or https://"
                ))
            }
            None => return Err(format!("{text:?} is not {LIKE}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host; write {LIKE}"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?} carries credentials before the host, which are not supported; put a token in the path or query"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host; write {LIKE}"));
        }
        let server_name = https
            .then(|| {
                ServerName::try_from(host.to_owned()).map_err(|e| {
                    format!(
                        "{text:?}: {host:?} is not a host name a certificate can vouch for: {e}"
                    )
                })
            })
            .transpose()?;
        let port = match authority.port_u16() {
            Some(port) if port > 0 => port,
            // `http::Uri` reads "h:99999" as the host "h" with no usable port.
            _ if authority.as_str() != authority.host() => {
                return Err(format!(
                    "{text:?}: the port is not a number from 1 to 65535"
                ))
            }
            _ if https => 443,
            _ => 80,
        };
        Ok(WebhookUrl {
            url: text.to_owned(),
            host: host.to_owned(),
            uri,
            server_name,
            port,
        })
    }

    /// Whether the webhook is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.server_name.is_some()
    }

    /// For `https://`: what the server's certificate is checked against.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    /// Host name or address, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host[:port]` as written: the `Host` header, and what logs may show.
    pub fn authority(&self) -> &str {
        self.uri.authority().map_or("", |a| a.as_str())
    }

    /// Path and query, at least `/`: the request target.
    pub fn target(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.is_https() { "https" } else { "http" };
        write!(f, "WebhookUrl({scheme}://{}/…)", self.authority())
    }
}

// === impl CaBundle ===

impl CaBundle {
    /// Reads a PEM bundle and checks that each certificate can be a trust anchor.
    ///
    /// # Errors
    /// What is wrong with the file, for the config error.
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let shown = path.display();
        if !path.is_absolute() {
            return Err(format!("{shown} is relative; give an absolute path"));
        }
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown} is not a PEM certificate bundle: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{shown} holds no certificate; give a PEM file with \"-----BEGIN CERTIFICATE-----\" blocks"
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (idx, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "certificate {} of {shown} cannot be a trust anchor: {e}",
                    idx + 1
                )
            })?;
        }
        Ok(CaBundle {
            path: path.to_owned(),
            certs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/hook?x=1").expect("valid");
        assert_eq!(
            (url.host(), url.port(), url.target(), url.is_https()),
            ("127.0.0.1", 9000, "/hook?x=1", false)
        );
        assert_eq!(url.authority(), "127.0.0.1:9000");
        let url = WebhookUrl::parse("http://relay.local").expect("valid");
        assert_eq!(
            (url.host(), url.port(), url.target()),
            ("relay.local", 80, "/")
        );
        let url = WebhookUrl::parse("http://[::1]:8080/h").expect("valid");
        assert_eq!(
            (url.host(), url.port(), url.authority()),
            ("::1", 8080, "[::1]:8080")
        );
        let url = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/x").expect("tls");
        assert_eq!(
            (url.host(), url.port(), url.target(), url.is_https()),
            ("hooks.slack.com", 443, "/services/T0/B0/x", true)
        );
        assert_eq!(
            WebhookUrl::parse("HTTPS://h:8443").expect("valid").port(),
            8443
        );
        for bad in [
            "hooks.slack.com/x",
            "/hook",
            "http://",
            "http://u:p@h/x",
            "http://h:99999/",
            "http://h:0/",
            "http://h:/",
            "http://h/a b",
            "ftp://h/x",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
        let url = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/secret").expect("ok");
        assert_eq!(format!("{url:?}"), "WebhookUrl(https://hooks.slack.com/…)");
        let err = WebhookUrl::parse("ftp://h/x").expect_err("scheme");
        assert!(err.contains("use http:// or https://"), "{err}");
    }

    #[test]
    fn a_ca_bundle_is_checked_when_loaded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        let err = CaBundle::load(&path).expect_err("missing");
        assert!(err.starts_with("cannot read "), "{err}");
        assert!(CaBundle::load(Path::new("ca.pem"))
            .expect_err("relative")
            .contains("relative"));
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = CaBundle::load(&path).expect_err("empty");
        assert!(err.contains("holds no certificate"), "{err}");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = CaBundle::load(&path).expect_err("garbage");
        assert!(err.contains("certificate 1 of"), "{err}");
    }
}
