//! TLS, and mutual TLS, for the gRPC transports: payd's `payment.v1` and `ChannelEvents` port,
//! the adapters' `channel.v1.ChannelAdapter` port, and the clients of both. One place turns PEM
//! files into tonic's rustls (aws-lc-rs) configurations, so payd and the three adapters read
//! their certificates the same way and refuse the same mistakes (a key without a certificate).
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The PEM files of one TLS endpoint: its own certificate chain and key, and the CA it trusts
/// for the other side (a server: the client CA that makes TLS mutual; a client: the server's CA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// A TLS setting that cannot work, naming the file or the variable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: cannot read {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Incomplete(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl TlsFiles {
    /// Reads `<prefix>CERT_FILE`, `<prefix>KEY_FILE` and `<prefix>CA_FILE` (`ca_var` names the
    /// last, since a server calls it the client CA) from the environment.
    pub fn from_env(prefix: &str, ca_var: &str) -> Self {
        let path = |v: String| {
            std::env::var_os(v)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        Self {
            cert: path(format!("{prefix}CERT_FILE")),
            key: path(format!("{prefix}KEY_FILE")),
            ca: path(format!("{prefix}{ca_var}")),
        }
    }

    fn identity(&self, name: &str) -> Result<Option<Identity>, TlsError> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some(Identity::from_pem(
                read("certificate", c)?,
                read("private key", k)?,
            ))),
            (None, None) => Ok(None),
            _ => Err(TlsError::Incomplete(format!(
                "{name}: a certificate needs its key and a key its certificate (set both or neither)"
            ))),
        }
    }

    /// The server side: `None` when no certificate is configured (plain HTTP/2). With a CA,
    /// every client must present a certificate issued by it (mutual TLS).
    ///
    /// # Errors
    /// A file cannot be read, or a CA is set without the server's own certificate.
    pub fn server(&self, name: &str) -> Result<Option<ServerTlsConfig>, TlsError> {
        let Some(identity) = self.identity(name)? else {
            if self.ca.is_some() {
                return Err(TlsError::Incomplete(format!(
                    "{name}: a client CA needs the server's own certificate and key"
                )));
            }
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.ca {
            config = config
                .client_ca_root(Certificate::from_pem(read("client CA", ca)?))
                .client_auth_optional(false);
        }
        Ok(Some(config))
    }

    /// The client side for an `https://` endpoint: the server's CA (else the system's roots are
    /// not used: a private deployment names its CA) and this client's certificate, if the server
    /// asks for one. `None` when nothing is configured.
    ///
    /// # Errors
    /// A file cannot be read, or a certificate lacks its key.
    pub fn client(&self, name: &str) -> Result<Option<ClientTlsConfig>, TlsError> {
        let identity = self.identity(name)?;
        if identity.is_none() && self.ca.is_none() {
            return Ok(None);
        }
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(Certificate::from_pem(read("server CA", ca)?));
        }
        if let Some(identity) = identity {
            config = config.identity(identity);
        }
        Ok(Some(config))
    }
}

/// Applies `tls` to an endpoint whose URL is `https://…`; refuses TLS settings for a plain
/// `http://` URL (they would be silently ignored) and an `https://` URL without a CA.
///
/// # Errors
/// The mismatch, naming `name`; or tonic's refusal of the configuration.
pub fn client_endpoint(
    endpoint: tonic::transport::Endpoint,
    tls: Option<ClientTlsConfig>,
    name: &str,
) -> Result<tonic::transport::Endpoint, TlsError> {
    let https = endpoint.uri().scheme_str() == Some("https");
    match (https, tls) {
        (true, Some(tls)) => endpoint
            .tls_config(tls)
            .map_err(|e| TlsError::Incomplete(format!("{name}: {e}"))),
        (true, None) => Err(TlsError::Incomplete(format!(
            "{name}: an https:// endpoint needs its CA file"
        ))),
        (false, Some(_)) => Err(TlsError::Incomplete(format!(
            "{name}: TLS files are set but the endpoint is not https://"
        ))),
        (false, None) => Ok(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_configured_tls_is_refused_naming_the_endpoint() {
        let key_only = TlsFiles {
            key: Some("k.pem".into()),
            ..TlsFiles::default()
        };
        assert!(
            key_only
                .server("payd")
                .unwrap_err()
                .to_string()
                .contains("payd")
        );
        let ca_only = TlsFiles {
            ca: Some("ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(ca_only.server("payd").is_err());
        assert!(TlsFiles::default().server("payd").unwrap().is_none());
        assert!(TlsFiles::default().client("core").unwrap().is_none());
        let missing = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let e = missing.client("core").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let plain = tonic::transport::Endpoint::from_static("http://127.0.0.1:1");
        assert!(client_endpoint(plain.clone(), None, "x").is_ok());
        assert!(
            client_endpoint(plain, Some(ClientTlsConfig::new()), "x")
                .unwrap_err()
                .to_string()
                .contains("not https")
        );
        let tls = tonic::transport::Endpoint::from_static("https://127.0.0.1:1");
        assert!(client_endpoint(tls, None, "x").is_err());
    }
}
