//! The inbound server's TLS configuration.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::PrivateKeyDer;

use super::pem::{load_certs, PemError};
use super::provider;

/// Why the inbound TLS configuration cannot be built; the message names the files.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// The certificate file gave no certificates.
    #[error(transparent)]
    Certificates(#[from] PemError),
    /// The key file holds no usable private key.
    #[error("{}: cannot read a private key: {error}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        error: pem::Error,
    },
    /// The provider refused the protocol versions (never with ring).
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
    /// The key does not belong to the certificate, or is of an unsupported kind.
    #[error("{} and {} do not make a usable certificate and key: {error}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
}

/// The rustls server configuration for inbound STARTTLS.
pub fn server_config(cert: &Path, key_file: &Path) -> Result<rustls::ServerConfig, ServerTlsError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| ServerTlsError::Key {
        path: key_file.to_path_buf(),
        error,
    })?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ServerTlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| ServerTlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key_file.to_path_buf(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_and_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["relay.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(path("other.pem"), other.serialize_pem()).unwrap();
        std::fs::write(path("empty.pem"), "").unwrap();
        assert!(server_config(&path("cert.pem"), &path("key.pem")).is_ok());
        let cases = [
            (
                "empty.pem",
                "key.pem",
                "empty.pem: no CERTIFICATE block found",
            ),
            (
                "cert.pem",
                "empty.pem",
                "empty.pem: cannot read a private key",
            ),
            (
                "cert.pem",
                "other.pem",
                "do not make a usable certificate and key",
            ),
        ];
        for (c, k, words) in cases {
            let message = server_config(&path(c), &path(k)).unwrap_err().to_string();
            assert!(message.contains(words), "{c} {k}: {message}");
        }
    }
}
