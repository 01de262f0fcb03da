//! The trust store: Mozilla's roots plus a configuration's extra root files.
//!
//! Delivery, the MTA-STS fetcher and the report client each name their own extra
//! roots. A store is assembled once per distinct set of extra certificates and
//! shared: asking again for the same certificates (even through other paths)
//! gives the same `Arc` while any holder keeps it alive. The files are read on
//! every call, so a changed file is never hidden behind an older store.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use super::pem::{load_certs, PemError};

/// Why the extra roots cannot be trusted; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The file gave no certificates.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A certificate in the file cannot be a trust anchor.
    #[error("{}: unusable root certificate: {error}", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
}

/// Stores handed out and still alive, keyed by their extra certificates.
type Shared = Vec<(Vec<CertificateDer<'static>>, Weak<RootCertStore>)>;

static STORES: Mutex<Shared> = Mutex::new(Vec::new());

/// Mozilla's roots plus the certificates in the PEM files `extra_roots`.
pub fn trust_store(extra_roots: &[PathBuf]) -> Result<Arc<RootCertStore>, RootsError> {
    let mut extra = Vec::new();
    for path in extra_roots {
        extra.extend(load_certs(path)?.into_iter().map(|c| (path.as_path(), c)));
    }
    let key: Vec<CertificateDer<'static>> = extra.iter().map(|(_, c)| c.clone()).collect();
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.retain(|(_, store)| store.strong_count() > 0);
    if let Some(store) = stores
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, s)| s.upgrade())
    {
        return Ok(store);
    }
    let store = Arc::new(assemble(&extra)?);
    stores.push((key, Arc::downgrade(&store)));
    Ok(store)
}

fn assemble(extra: &[(&Path, CertificateDer<'static>)]) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (path, cert) in extra {
        roots
            .add(cert.clone())
            .map_err(|error| RootsError::Unusable {
                path: path.to_path_buf(),
                error,
            })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn one_store_per_distinct_set_of_roots() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_copy, b) = (
            dir.path().join("a.pem"),
            dir.path().join("a-copy.pem"),
            dir.path().join("b.pem"),
        );
        let pem_a = root_pem();
        std::fs::write(&a, &pem_a).unwrap();
        std::fs::write(&a_copy, &pem_a).unwrap();
        std::fs::write(&b, root_pem()).unwrap();
        let first = trust_store(std::slice::from_ref(&a)).unwrap();
        let mozilla = first.len() - 1;
        assert!(mozilla > 100, "Mozilla's roots are in the store");
        let cases: [(&[PathBuf], bool, usize); 4] = [
            (std::slice::from_ref(&a), true, 1),
            (std::slice::from_ref(&a_copy), true, 1),
            (std::slice::from_ref(&b), false, 1),
            (&[a.clone(), b.clone()], false, 2),
        ];
        for (paths, same, extra) in cases {
            let store = trust_store(paths).unwrap();
            assert_eq!(Arc::ptr_eq(&store, &first), same, "{paths:?}");
            assert_eq!(store.len(), mozilla + extra, "{paths:?}");
        }
        assert_eq!(trust_store(&[]).unwrap().len(), mozilla);
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.pem");
        std::fs::write(&path, root_pem()).unwrap();
        let before = trust_store(std::slice::from_ref(&path)).unwrap();
        std::fs::write(&path, root_pem()).unwrap();
        let after = trust_store(std::slice::from_ref(&path)).unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        std::fs::write(&path, "no certificate\n").unwrap();
        let err = trust_store(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("{}: no CERTIFICATE block found", path.display())
        );
    }
}
