//! Reading PEM certificate files.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::CertificateDer;

/// Why a PEM certificate file gave no certificates; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be opened.
    #[error("{}: cannot read certificates: {error}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: pem::Error,
    },
    /// A block in the file is not a valid PEM certificate.
    #[error("{}: bad PEM certificate: {error}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: pem::Error,
    },
    /// The file holds no certificate at all.
    #[error("{}: no CERTIFICATE block found", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a PEM certificate chain (at least one certificate).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|error| PemError::Unreadable {
            path: path.to_path_buf(),
            error,
        })?
        .collect::<Result<_, _>>()
        .map_err(|error| PemError::BadPem {
            path: path.to_path_buf(),
            error,
        })?;
    if certs.is_empty() {
        return Err(PemError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let good = dir.path().join("good.pem");
        std::fs::write(&good, cert.pem()).unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");
        assert_eq!(load_certs(&good).unwrap(), vec![cert.der().clone()]);
        let cases = [
            (&empty, "no CERTIFICATE block found"),
            (&bad, "bad PEM certificate"),
            (&missing, "cannot read certificates"),
        ];
        for (path, words) in cases {
            let message = load_certs(path).unwrap_err().to_string();
            assert!(
                message.starts_with(&path.display().to_string()),
                "{message}"
            );
            assert!(message.contains(words), "{message}");
        }
    }
}
