//! TLS on the gateway's own listener: rustls with the ring provider,
//! `server.tls_cert` (PEM: the certificate, then its chain) and
//! `server.tls_key` (PEM). TLS 1.2 and 1.3 only, HTTP/1.1 by ALPN.
//!
//! The pair is re-read on SIGHUP and when either file changes (certbot
//! renewing a Let's Encrypt certificate): new handshakes get the new pair,
//! connections already open keep theirs. A pair that cannot be loaded
//! (missing, unreadable, not PEM, a key of another certificate) is logged
//! and the old one keeps serving; at start-up it stops the gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How often the files are checked for a change.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Why a certificate and key could not be loaded; says which file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {}: {problem}", path.display())]
    Cert { path: PathBuf, problem: String },
    #[error("server.tls_key {}: {problem}", path.display())]
    Key { path: PathBuf, problem: String },
    #[error("server.tls_key {} is not the key of the certificate in server.tls_cert {}: {problem}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
    #[error("TLS settings: {0}")]
    Settings(rustls::Error),
}

/// The pair new handshakes get; swapped whole on a reload.
#[derive(Debug)]
struct CurrentPair(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentPair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The listener's TLS, built once at start-up.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentPair>,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl Tls {
    /// Loads the pair; an error names the file at fault.
    pub fn new(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load(cert, key, &provider)?;
        let current = Arc::new(CurrentPair(ArcSwap::from_pointee(pair)));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again; on success new handshakes get the new pair,
    /// on failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load(&self.cert, &self.key, &self.provider)?;
        self.current.0.store(Arc::new(pair));
        Ok(())
    }

    /// Until `stop`: reloads on each `reload` signal (SIGHUP) and when the
    /// files change; a failure is logged and the old pair kept.
    pub async fn watch(
        self: Arc<Self>,
        mut reload: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut seen = self.fingerprint();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                changed = reload.changed() => {
                    if changed.is_err() { return; }
                    "SIGHUP"
                }
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    let now = self.fingerprint();
                    if now == seen { continue; }
                    seen = now;
                    "the files changed"
                }
            };
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.cert.display(), why, "TLS certificate reloaded: new connections get it")
                }
                Err(e) => {
                    tracing::error!(error = %e, why, "TLS certificate not reloaded; the previous one keeps serving")
                }
            }
        }
    }

    /// What tells a file changed: size, modification time and inode of
    /// each (through symlinks, as certbot's live/ folder has them).
    fn fingerprint(&self) -> [Option<(u64, Option<SystemTime>, u64)>; 2] {
        use std::os::unix::fs::MetadataExt;
        [&self.cert, &self.key].map(|path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.modified().ok(), m.ino()))
        })
    }
}

/// The pair in `cert` and `key`, checked to belong together.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_error = |problem: String| TlsError::Cert {
        path: cert.to_owned(),
        problem,
    };
    let key_error = |problem: String| TlsError::Key {
        path: key.to_owned(),
        problem,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| cert_error(format!("cannot be read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("is not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error(
            "holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)".into(),
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| key_error(format!("cannot be read: {e}")))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_error(format!("holds no PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        problem: e.to_string(),
    })
}
