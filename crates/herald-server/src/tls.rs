//! TLS termination (`[tls] cert_file/key_file`): the same router served as
//! `https://` and `wss://` with rustls. The ring provider is named explicitly
//! so no process-wide default has to be installed and no other crypto backend
//! is pulled in.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsConfig};

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message,
    }
}

/// Reads the certificate chain and key and builds the acceptor. Every failure
/// names the config key, so `herald serve` stops before binding anything.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            invalid(
                "tls.cert_file",
                format!("{}: {e}", config.cert_file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "tls.cert_file",
            format!("{}: no PEM certificate found", config.cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        invalid(
            "tls.key_file",
            format!("{}: no PEM private key ({e})", config.key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(
                "tls.key_file",
                format!("does not match tls.cert_file or is unusable: {e}"),
            )
        })?;
    // HTTP/1.1 only: the WebSocket upgrade is an HTTP/1.1 mechanism and the
    // server speaks nothing else.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
