//! TLS for both listeners (rustls): the certificate chain and key from PEM files named in
//! `[server.tls]`, optionally client certificates checked against a CA bundle, ALPN (`h2` and
//! `http/1.1` for HTTP, `h2` for gRPC), and reloading of all three files on SIGHUP without a
//! restart (a reload that fails keeps the old configuration and says why).

use arc_swap::ArcSwap;
use invariant_serving::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// A TLS configuration that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("server.tls: {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("server.tls: {0}")]
    Rustls(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The rustls configuration of `settings`, offering `alpn` (most preferred first).
pub fn server_config(settings: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| file_error(&settings.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| file_error(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("cert and key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// ALPN of the HTTP listener.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN of the gRPC listener.
pub const GRPC_ALPN: [&[u8]; 1] = [b"h2"];

/// A listener's TLS configuration, replaced whole on reload.
#[derive(Debug)]
pub struct Reloadable {
    settings: TlsConfig,
    alpn: &'static [&'static [u8]],
    current: ArcSwap<rustls::ServerConfig>,
}

impl Reloadable {
    /// Loads `settings` for a listener offering `alpn`.
    pub fn new(settings: TlsConfig, alpn: &'static [&'static [u8]]) -> Result<Arc<Self>, TlsError> {
        let current = ArcSwap::new(server_config(&settings, alpn)?);
        Ok(Arc::new(Self {
            settings,
            alpn,
            current,
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the files; on failure the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(server_config(&self.settings, self.alpn)?);
        Ok(())
    }
}

/// Reloads every listener's TLS files on each SIGHUP.
pub fn reload_on_sighup(listeners: Vec<Arc<Reloadable>>) {
    if listeners.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::error!("cannot watch SIGHUP: TLS certificates will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            for l in &listeners {
                match l.reload() {
                    Ok(()) => tracing::info!(cert = %l.settings.cert.display(), "TLS certificate reloaded"),
                    Err(e) => tracing::error!("TLS reload failed, the previous certificate stays in use: {e}"),
                }
            }
        }
    });
}
