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
use std::sync::{Arc, Mutex, PoisonError};
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

/// What `/readyz` says of TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsReport {
    /// The serving certificate's `notAfter`, if it could be read.
    pub expires: Option<SystemTime>,
    /// Why the last reload failed, until one succeeds.
    pub reload_error: Option<String>,
}

/// The listener's TLS, built once at start-up.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentPair>,
    report: Mutex<TlsReport>,
    /// `cti_tls_certificate_expiry_timestamp_seconds`.
    expiry: prometheus::Gauge,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl Tls {
    /// Loads the pair; an error names the file at fault. The serving
    /// certificate's expiry goes to `expiry` (unix seconds).
    pub fn new(cert: &Path, key: &Path, expiry: prometheus::Gauge) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load(cert, key, &provider)?;
        let expires = not_after_of(&pair);
        set_expiry(&expiry, expires);
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
            report: Mutex::new(TlsReport {
                expires,
                reload_error: None,
            }),
            expiry,
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
        let pair = match load(&self.cert, &self.key, &self.provider) {
            Ok(pair) => pair,
            Err(e) => {
                self.report_mut().reload_error = Some(e.to_string());
                return Err(e);
            }
        };
        let expires = not_after_of(&pair);
        self.current.0.store(Arc::new(pair));
        set_expiry(&self.expiry, expires);
        *self.report_mut() = TlsReport {
            expires,
            reload_error: None,
        };
        Ok(())
    }

    /// The serving certificate's expiry and the last reload's failure.
    pub fn report(&self) -> TlsReport {
        self.report_mut().clone()
    }

    fn report_mut(&self) -> std::sync::MutexGuard<'_, TlsReport> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
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

/// The expiry gauge: unix seconds, 0 when the certificate's could not be read.
fn set_expiry(gauge: &prometheus::Gauge, expires: Option<SystemTime>) {
    let seconds = expires
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    gauge.set(seconds);
}

/// The `notAfter` of the pair's end-entity certificate.
fn not_after_of(pair: &CertifiedKey) -> Option<SystemTime> {
    pair.cert.first().and_then(|cert| not_after(cert.as_ref()))
}

/// One DER element at the start of `der`: its tag, its contents and what
/// follows it.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A certificate's `notAfter` (RFC 5280: Certificate → tbsCertificate →
/// [version], serialNumber, signature, issuer, validity → notAfter), read
/// from its DER without a parser of the whole certificate.
fn not_after(cert: &[u8]) -> Option<SystemTime> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // [0] EXPLICIT version, when present.
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs = der_element(tbs)?.2;
    }
    let (tag, validity, _) = der_element(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, rest) = der_element(validity).map(|(_, _, rest)| ((), rest))?;
    let (tag, time, _) = der_element(rest)?;
    let text = std::str::from_utf8(time).ok()?;
    // UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime YYYYMMDDHHMMSSZ.
    let full = match tag {
        0x17 if text.len() == 13 => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{text}")
        }
        0x18 if text.len() == 15 => text.to_owned(),
        _ => return None,
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    );
    humantime::parse_rfc3339(&rfc3339).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_reads_nothing_from_what_is_no_certificate() {
        for bad in [
            &b""[..],
            &[0x30],
            &[0x30, 0x82, 0xff],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x03, 0x30, 0x01, 0x00],
            &[0x04, 0x00],
        ] {
            assert_eq!(not_after(bad), None, "{bad:?}");
        }
    }
}
