//! The TLS material of the listeners: certificate chains, private keys and client CAs read from
//! PEM files into rustls server configurations (the `ring` provider; TLS 1.2 and 1.3). Loaded at
//! start and on every SIGHUP through [`super::Config::load_tls`]; a file that cannot be read or
//! parsed fails the load, so a reload keeps the configuration that works.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::{ListenerConfig, TlsVersion};

/// One listener's loaded TLS settings.
#[derive(Clone)]
pub struct LoadedTls {
    /// A hash of the files' bytes and the settings (to tell a reload that changed them).
    pub fingerprint: u64,
    /// The rustls configuration every new connection of the listener starts from.
    pub server: Arc<ServerConfig>,
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoadedTls({:016x})", self.fingerprint)
    }
}

impl PartialEq for LoadedTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for LoadedTls {}

/// The loaded TLS settings of every listener, by listener index (`None`: plain TCP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Indexed like [`super::Config::listeners`].
    pub by_listener: Vec<Option<LoadedTls>>,
}

fn read(path: &Path, what: &str, hasher: &mut DefaultHasher) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|error| format!("cannot read {what} {}: {error}", path.display()))?;
    bytes.hash(hasher);
    Ok(bytes)
}

fn certificates(
    path: &Path,
    what: &str,
    hasher: &mut DefaultHasher,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, what, hasher)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{what} {}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certificates)
}

/// Builds the rustls server configuration of a TLS listener (one with `certfile`).
pub fn load(listener: &ListenerConfig) -> Result<LoadedTls, String> {
    let (Some(certfile), Some(keyfile)) = (&listener.certfile, &listener.keyfile) else {
        return Err(format!(
            "listener {}: TLS needs both certfile and keyfile",
            listener.address
        ));
    };
    let mut hasher = DefaultHasher::new();
    let chain = certificates(certfile, "certfile", &mut hasher)?;
    let key_pem = read(keyfile, "keyfile", &mut hasher)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| format!("keyfile {}: {error}", keyfile.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match listener.tls_version {
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        Some(TlsVersion::Tls12) | None => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|error| format!("listener {}: {error}", listener.address))?;
    let verifier = match &listener.cafile {
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(cafile, "cafile", &mut hasher)? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("cafile {}: {error}", cafile.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if listener.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            verifier
                .build()
                .map_err(|error| format!("cafile {}: {error}", cafile.display()))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut server = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| {
            format!(
                "certfile {} / keyfile {}: {error}",
                certfile.display(),
                keyfile.display()
            )
        })?;
    server.alpn_protocols = listener
        .alpn
        .iter()
        .map(|protocol| protocol.as_bytes().to_vec())
        .collect();
    // Resumption by stateless tickets: no session cache shared (and locked) across shards.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|error| format!("listener {}: {error}", listener.address))?;
    server.send_tls13_tickets = 1;
    (
        listener.require_certificate,
        listener.tls_version,
        &listener.alpn,
    )
        .hash(&mut hasher);
    Ok(LoadedTls {
        fingerprint: hasher.finish(),
        server: Arc::new(server),
    })
}
