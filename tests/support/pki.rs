//! A test PKI built with rcgen: a root CA (ECDSA P-256), intermediates (good,
//! expired, or not a CA at all), and leaf certificates with ECDSA P-256,
//! Ed25519, RSA-1024 or RSA-2048 keys.
//!
//! Every `CertChain` carries a rustls signing key, so an `MxServer` can present
//! it. RSA keys come from the pure-Rust `rsa` crate, because neither rcgen nor
//! ring generates RSA keys, and ring refuses RSA keys under 2048 bits: the
//! RSA-1024 leaf therefore signs TLS handshakes with the `rsa` crate (a real
//! signature, RSA-PSS or PKCS#1 v1.5 with SHA-256).
#![allow(dead_code)]

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::EncodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm as TlsSigAlg, SignatureScheme};

const DAY: Duration = Duration::from_secs(86_400);

/// The key type of a leaf certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyKind {
    #[default]
    EcdsaP256,
    Ed25519,
    /// Too small: the relay must refuse a server presenting it.
    Rsa1024,
    Rsa2048,
}

/// How to build the intermediate CA that issues a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntermediateOptions {
    /// The intermediate's validity ended yesterday.
    pub expired: bool,
    /// false: the "intermediate" has no basicConstraints extension at all (it is
    /// not a CA), though it still carries keyCertSign.
    pub is_ca: bool,
}

impl Default for IntermediateOptions {
    fn default() -> Self {
        IntermediateOptions {
            expired: false,
            is_ca: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LeafOptions {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key: KeyKind,
    /// Issue the leaf through a fresh intermediate; the chain is then
    /// `[leaf, intermediate]`.
    pub via_intermediate: Option<IntermediateOptions>,
}

impl Default for LeafOptions {
    /// Valid from an hour ago for 30 days, ECDSA P-256, issued by the root.
    fn default() -> Self {
        let now = SystemTime::now();
        LeafOptions {
            not_before: now - Duration::from_secs(3600),
            not_after: now + 30 * DAY,
            key: KeyKind::EcdsaP256,
            via_intermediate: None,
        }
    }
}

impl LeafOptions {
    /// Valid from 30 days ago until yesterday.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        LeafOptions {
            not_before: now - 30 * DAY,
            not_after: now - DAY,
            ..Default::default()
        }
    }

    /// Valid from tomorrow on.
    pub fn not_yet_valid() -> Self {
        let now = SystemTime::now();
        LeafOptions {
            not_before: now + DAY,
            not_after: now + 30 * DAY,
            ..Default::default()
        }
    }

    pub fn key(mut self, key: KeyKind) -> Self {
        self.key = key;
        self
    }

    pub fn via_intermediate(mut self, opts: IntermediateOptions) -> Self {
        self.via_intermediate = Some(opts);
        self
    }
}

/// A certificate chain (leaf first, root not included) with its private key.
pub struct CertChain {
    pub certs: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER. For `KeyKind::Rsa1024` ring cannot load it: use `signing_key`.
    pub key: PrivateKeyDer<'static>,
    /// The rustls signing key for `key` (works for every `KeyKind`).
    pub signing_key: Arc<dyn rustls::sign::SigningKey>,
    /// The leaf's SubjectPublicKeyInfo, DER (what TLSA selector 1 hashes).
    pub spki_der: Vec<u8>,
    pub key_kind: KeyKind,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The DNS names (or IP addresses) in the leaf's subjectAltName.
    pub names: Vec<String>,
}

impl Clone for CertChain {
    fn clone(&self) -> Self {
        CertChain {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            signing_key: self.signing_key.clone(),
            spki_der: self.spki_der.clone(),
            key_kind: self.key_kind,
            not_before: self.not_before,
            not_after: self.not_after,
            names: self.names.clone(),
        }
    }
}

impl fmt::Debug for CertChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertChain")
            .field("names", &self.names)
            .field("key_kind", &self.key_kind)
            .field("certs", &self.certs.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl CertChain {
    pub fn leaf_der(&self) -> &CertificateDer<'static> {
        &self.certs[0]
    }

    /// The chain with its own key, for a rustls `ResolvesServerCert`.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(
            self.certs.clone(),
            self.signing_key.clone(),
        ))
    }

    /// This chain's certificates, signed in the handshake with `other`'s key:
    /// a server that replays a real certificate without its private key.
    pub fn certified_key_with_key_of(&self, other: &CertChain) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(
            self.certs.clone(),
            other.signing_key.clone(),
        ))
    }

    /// All certificates of the chain, PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.certs
            .iter()
            .map(|c| pem("CERTIFICATE", c.as_ref()))
            .collect()
    }

    /// The private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_der())
    }

    /// Writes `chain_pem()` and `key_pem()` to two files.
    pub fn write_pem(&self, chain_path: impl AsRef<Path>, key_path: impl AsRef<Path>) {
        std::fs::write(chain_path, self.chain_pem()).expect("write chain PEM");
        std::fs::write(key_path, self.key_pem()).expect("write key PEM");
    }
}

/// A test certification authority: a self-signed root with an ECDSA P-256 key.
pub struct TestCa {
    name: String,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - DAY).into();
        params.not_after = (now + 3650 * DAY).into();
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let root = params.self_signed(&key).expect("self-sign root");
        TestCa {
            name: name.to_string(),
            issuer: Issuer::new(params, key),
            root: root.der().clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    pub fn root_pem(&self) -> String {
        pem("CERTIFICATE", self.root.as_ref())
    }

    pub fn write_root_pem(&self, path: impl AsRef<Path>) {
        std::fs::write(path, self.root_pem()).expect("write root PEM");
    }

    /// A rustls root store holding only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root_der()).expect("add test root");
        roots
    }

    /// An ECDSA P-256 leaf for `names`, valid now, serverAuth, issued by the root.
    pub fn leaf(&self, names: &[&str]) -> CertChain {
        self.leaf_with(names, LeafOptions::default())
    }

    pub fn leaf_with(&self, names: &[&str], opts: LeafOptions) -> CertChain {
        match opts.via_intermediate {
            None => issue_leaf(&self.issuer, &[], names, &opts),
            Some(io) => self.intermediate(io).leaf_with(names, opts),
        }
    }

    /// A new intermediate CA (ECDSA P-256) under this root.
    pub fn intermediate(&self, opts: IntermediateOptions) -> Intermediate {
        let now = SystemTime::now();
        let name = format!(
            "{} intermediate{}{}",
            self.name,
            if opts.expired { " (expired)" } else { "" },
            if opts.is_ca { "" } else { " (not a CA)" }
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&name);
        params.is_ca = if opts.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::NoCa
        };
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        if opts.expired {
            params.not_before = (now - 60 * DAY).into();
            params.not_after = (now - DAY).into();
        } else {
            params.not_before = (now - DAY).into();
            params.not_after = (now + 365 * DAY).into();
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        Intermediate {
            options: opts,
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
        }
    }
}

/// An intermediate CA issued by a `TestCa`.
pub struct Intermediate {
    pub options: IntermediateOptions,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl Intermediate {
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// A leaf issued by this intermediate; chain `[leaf, intermediate]`.
    pub fn leaf(&self, names: &[&str]) -> CertChain {
        self.leaf_with(names, LeafOptions::default())
    }

    /// `opts.via_intermediate` is ignored here.
    pub fn leaf_with(&self, names: &[&str], opts: LeafOptions) -> CertChain {
        issue_leaf(&self.issuer, std::slice::from_ref(&self.cert), names, &opts)
    }
}

/// A self-signed ECDSA P-256 certificate for `names` (serverAuth, valid now).
pub fn self_signed(names: &[&str]) -> CertChain {
    let now = SystemTime::now();
    let mut params = leaf_params(names);
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + 30 * DAY).into();
    let subject = LeafKey::generate(KeyKind::EcdsaP256);
    let cert = match &subject {
        LeafKey::Ring(kp) => params.self_signed(kp).expect("self-sign"),
        LeafKey::Rsa { .. } => unreachable!(),
    };
    subject.into_chain(
        vec![cert.der().clone()],
        KeyKind::EcdsaP256,
        now - Duration::from_secs(3600),
        now + 30 * DAY,
        names,
    )
}

fn issue_leaf(
    issuer: &Issuer<'static, KeyPair>,
    chain_tail: &[CertificateDer<'static>],
    names: &[&str],
    opts: &LeafOptions,
) -> CertChain {
    let mut params = leaf_params(names);
    params.not_before = opts.not_before.into();
    params.not_after = opts.not_after.into();
    params.use_authority_key_identifier_extension = true;
    if matches!(opts.key, KeyKind::Rsa1024 | KeyKind::Rsa2048) {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    let subject = LeafKey::generate(opts.key);
    let cert = match &subject {
        LeafKey::Ring(kp) => params.signed_by(kp, issuer),
        LeafKey::Rsa { public, .. } => params.signed_by(public, issuer),
    }
    .expect("sign leaf");
    let mut certs = vec![cert.der().clone()];
    certs.extend(chain_tail.iter().cloned());
    subject.into_chain(certs, opts.key, opts.not_before, opts.not_after, names)
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let owned: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(owned).expect("leaf names");
    params.distinguished_name = dn(names.first().copied().unwrap_or("test leaf"));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.serial_number = Some(random_serial());
    params
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tlsrelay tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The subject key of a leaf being issued.
enum LeafKey {
    Ring(KeyPair),
    Rsa {
        public: RsaPublicKeyData,
        private: rsa::RsaPrivateKey,
    },
}

impl LeafKey {
    fn generate(kind: KeyKind) -> LeafKey {
        match kind {
            KeyKind::EcdsaP256 => LeafKey::Ring(
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key"),
            ),
            KeyKind::Ed25519 => {
                LeafKey::Ring(KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key"))
            }
            KeyKind::Rsa1024 | KeyKind::Rsa2048 => {
                let private = rsa_key(if kind == KeyKind::Rsa1024 { 1024 } else { 2048 });
                let pkcs1 = private
                    .to_public_key()
                    .to_pkcs1_der()
                    .expect("RSA public key DER");
                LeafKey::Rsa {
                    public: RsaPublicKeyData {
                        pkcs1: pkcs1.as_bytes().to_vec(),
                    },
                    private,
                }
            }
        }
    }

    fn into_chain(
        self,
        certs: Vec<CertificateDer<'static>>,
        key_kind: KeyKind,
        not_before: SystemTime,
        not_after: SystemTime,
        names: &[&str],
    ) -> CertChain {
        let (key, signing_key, spki_der): (PrivateKeyDer<'static>, _, _) = match self {
            LeafKey::Ring(kp) => {
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
                let signing = rustls::crypto::ring::sign::any_supported_type(&key)
                    .expect("ring loads the leaf key");
                (key, signing, kp.subject_public_key_info())
            }
            LeafKey::Rsa { public, private } => {
                let der = private.to_pkcs8_der().expect("RSA PKCS#8");
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_bytes().to_vec()));
                let signing: Arc<dyn rustls::sign::SigningKey> = if key_kind == KeyKind::Rsa1024 {
                    // ring rejects RSA keys under 2048 bits.
                    Arc::new(RsaCrateSigningKey(Arc::new(private)))
                } else {
                    rustls::crypto::ring::sign::any_supported_type(&key)
                        .expect("ring loads the RSA-2048 key")
                };
                (key, signing, public.subject_public_key_info())
            }
        };
        CertChain {
            certs,
            key,
            signing_key,
            spki_der,
            key_kind,
            not_before,
            not_after,
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// RSA keys are slow to generate in debug builds: each size is generated once
/// per test process and shared by every certificate of that size.
fn rsa_key(bits: usize) -> rsa::RsaPrivateKey {
    static K1024: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    static K2048: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    let cell = if bits == 1024 { &K1024 } else { &K2048 };
    cell.get_or_init(|| {
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).expect("RSA key generation")
    })
    .clone()
}

/// An RSA public key as rcgen wants it for `signed_by`.
struct RsaPublicKeyData {
    /// RSAPublicKey (PKCS#1) DER: the BIT STRING content of the SPKI.
    pkcs1: Vec<u8>,
}

impl PublicKeyData for RsaPublicKeyData {
    fn der_bytes(&self) -> &[u8] {
        &self.pkcs1
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// A rustls signing key backed by the `rsa` crate, for key sizes ring refuses.
struct RsaCrateSigningKey(Arc<rsa::RsaPrivateKey>);

impl fmt::Debug for RsaCrateSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RsaCrateSigningKey({} bits)",
            rsa::traits::PublicKeyParts::size(&*self.0) * 8
        )
    }
}

impl rustls::sign::SigningKey for RsaCrateSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        [
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
        .into_iter()
        .find(|s| offered.contains(s))
        .map(|scheme| {
            Box::new(RsaCrateSigner {
                key: self.0.clone(),
                scheme,
            }) as Box<dyn rustls::sign::Signer>
        })
    }

    fn algorithm(&self) -> TlsSigAlg {
        TlsSigAlg::RSA
    }
}

#[derive(Debug)]
struct RsaCrateSigner {
    key: Arc<rsa::RsaPrivateKey>,
    scheme: SignatureScheme,
}

impl rustls::sign::Signer for RsaCrateSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let key = (*self.key).clone();
        match self.scheme {
            SignatureScheme::RSA_PSS_SHA256 => {
                let signer = rsa::pss::BlindedSigningKey::<rsa::sha2::Sha256>::new(key);
                let sig = signer
                    .try_sign_with_rng(&mut rsa::rand_core::OsRng, message)
                    .map_err(|e| rustls::Error::General(format!("RSA-PSS: {e}")))?;
                Ok(sig.to_vec())
            }
            _ => {
                let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(key);
                let sig = signer
                    .try_sign(message)
                    .map_err(|e| rustls::Error::General(format!("RSA PKCS#1: {e}")))?;
                Ok(sig.to_vec())
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// A test CA whose root is also written to a PEM file, for configurations that trust it.
pub struct TrustedCa {
    /// The CA.
    pub ca: TestCa,
    /// The root certificate's PEM file.
    pub root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TrustedCa {
    /// A new CA named `name`, its root written to a temporary file.
    pub fn new(name: &str) -> TrustedCa {
        let ca = TestCa::new(name);
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("ca.pem");
        ca.write_root_pem(&root);
        TrustedCa {
            ca,
            root,
            _dir: dir,
        }
    }
}
