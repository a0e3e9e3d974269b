//! Outbound HTTP to the application's backend: the subscribe and connect
//! proxies and the webhooks. One client per node, so connections to the
//! backend are pooled and reused.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// Makes rustls + ring the process's TLS provider. reqwest is built without
/// a provider of its own (it uses the same rustls + ring the server's TLS
/// uses), and Cargo unifies that feature for every crate of the workspace:
/// any `reqwest::Client` built in this process (the CLI's `herald publish`
/// too) panics unless this ran first. Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// A client that never follows redirects (a backend answering 3xx is
/// answering wrongly, and following would send the secret elsewhere),
/// with `timeout` over the whole request.
pub fn client(timeout: Duration) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|e| {
            // Only a broken TLS setup fails here; fall back to the defaults
            // rather than refuse to start, and let requests report it.
            tracing::error!(error = %e, "cannot build the outbound HTTP client");
            reqwest::Client::new()
        })
}

/// Why reading an answer failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is larger than the caller accepts.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed or timed out mid-body.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// The body of `response`, refusing (without reading on) one larger than
/// `max` bytes: a backend answer is small, and a huge one must not be held.
pub async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Bytes, ReadError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge(max));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(ReadError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
