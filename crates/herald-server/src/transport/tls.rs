//! TLS built in (`[tls] cert` and `key`): rustls with the ring provider, TLS 1.2 and 1.3,
//! HTTP/1.1 over it (WebSocket `wss://` included). The certificate and key are read at start
//! and again on SIGHUP; a reload that fails keeps the previous pair and says why in the log,
//! so a bad renewal never takes the listener down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::shutdown::ShutdownSignal;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("tls.cert {path}: {why}")]
    Cert { path: String, why: String },
    #[error("tls.key {path}: {why}")]
    Key { path: String, why: String },
    #[error("tls.cert and tls.key do not make a usable pair: {0}")]
    Config(String),
}

/// The acceptor in use; swapped on reload.
#[derive(Clone)]
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<RwLock<TlsAcceptor>>,
}

fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            why: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            why: "holds no CERTIFICATE block".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Tls {
    /// Loads the pair; an error stops the server at start.
    pub(crate) fn new(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let acceptor = load(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Arc::new(RwLock::new(acceptor)),
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again; on success new connections use the new pair.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let acceptor = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        Ok(())
    }

    /// Reloads on every SIGHUP until shutdown.
    #[cfg(unix)]
    pub(crate) async fn reload_on_sighup(self, mut stop: ShutdownSignal) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(err) => {
                warn!(%err, "cannot listen for SIGHUP; the TLS certificate is not reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    match self.reload() {
                        Ok(()) => info!(cert = %self.cert.display(), "SIGHUP: TLS certificate reloaded"),
                        Err(err) => warn!(%err, "SIGHUP: TLS certificate not reloaded; keeping the previous one"),
                    }
                }
                _ = stop.wait() => return,
            }
        }
    }

    #[cfg(not(unix))]
    pub(crate) async fn reload_on_sighup(self, _stop: ShutdownSignal) {}
}
