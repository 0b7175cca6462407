//! Test certificates made with the `openssl` command (a third party's TLS stack, not ours):
//! a CA, a server certificate for `localhost` / 127.0.0.1 signed by it, client certificates,
//! and a second, untrusted CA. ECDSA P-256 keeps handshakes cheap.
//!
//! Also rustls client configurations for rumqttc (the ring provider, as in the broker).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::process::TempDir;

/// A directory of PEM files: `<name>.pem` (certificate) and `<name>.key` (key).
pub struct Certs {
    pub dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command runs (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Certs {
    /// A CA `ca`, a server certificate `server` for localhost/127.0.0.1, and a client
    /// certificate per entry of `clients` (its CN); `rogue-ca` and `rogue-client` are another
    /// CA and a client certificate it signed.
    pub fn new(tag: &str, clients: &[&str]) -> Certs {
        let certs = Certs {
            dir: TempDir::new(tag),
        };
        certs.ca("ca");
        certs.ca("rogue-ca");
        certs.leaf("server", "localhost", "ca", true);
        for client in clients {
            certs.leaf(client, client, "ca", false);
        }
        certs.leaf("rogue-client", "rogue", "rogue-ca", false);
        certs
    }

    /// Writes `<name>.pem` / `<name>.key`: a self-signed CA.
    pub fn ca(&self, name: &str) {
        openssl(
            &self.dir.0,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    /// Writes `<name>.pem` / `<name>.key`: a certificate with CN `cn` signed by CA `ca`
    /// (`server`: with subjectAltName localhost and 127.0.0.1).
    pub fn leaf(&self, name: &str, cn: &str, ca: &str, server: bool) {
        let dir = &self.dir.0;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let extensions = if server {
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        } else {
            "extendedKeyUsage=clientAuth\n"
        };
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    /// The path of `<name>.pem`.
    pub fn pem(&self, name: &str) -> PathBuf {
        self.dir.0.join(format!("{name}.pem"))
    }

    /// The path of `<name>.key`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.0.join(format!("{name}.key"))
    }

    /// A rustls client configuration trusting CA `ca`, presenting client certificate
    /// `client` when given.
    pub fn client_config(&self, ca: &str, client: Option<&str>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.pem(ca)).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match client {
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.pem(name))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let key = PrivateKeyDer::from_pem_file(self.key(name)).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

/// rumqttc (MQTT 3.1.1) options for a TLS client of `addr` with `config` (server name
/// `localhost`, which the server certificate carries).
pub fn tls_options(
    addr: std::net::SocketAddr,
    client_id: &str,
    config: Arc<rustls::ClientConfig>,
) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, "localhost", addr.port());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ));
    options
}
