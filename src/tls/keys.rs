//! The key-strength rule every verifier applies first, and the small DER reader
//! it (and the DANE CA check) walks certificates with.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;

/// A server key below the strength tlsrelay requires (RSA-2048, P-256/P-384, Ed25519).
#[derive(Debug, thiserror::Error)]
#[error("server key too weak: {0}")]
pub struct WeakKey(pub String);

/// The kinds of server key tlsrelay recognises.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with this many modulus bits.
    Rsa(usize),
    /// ECDSA on P-256 or P-384.
    Ec,
    /// Ed25519.
    Ed25519,
}

/// Refuses leaf keys below RSA-2048; accepts ECDSA P-256/P-384 and Ed25519.
pub fn check_key_strength(leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let weak = |s: String| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(WeakKey(s)),
        )))
    };
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    match key_description(&cert.subject_public_key_info()) {
        Some(KeyKind::Rsa(bits)) if bits >= 2048 => Ok(()),
        Some(KeyKind::Rsa(bits)) => Err(weak(format!("RSA-{bits}, at least RSA-2048 is required"))),
        Some(KeyKind::Ec) | Some(KeyKind::Ed25519) => Ok(()),
        None => Err(weak("unknown key type".into())),
    }
}

/// Reads the key type (and RSA size) from a DER SubjectPublicKeyInfo.
pub fn key_description(spki: &[u8]) -> Option<KeyKind> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let (0x30, spki) = Der(spki).next()? else {
        return None;
    };
    let mut outer = Der(spki);
    let (0x30, alg) = outer.next()? else {
        return None;
    };
    let (0x03, key_bits) = outer.next()? else {
        return None;
    };
    let mut alg = Der(alg);
    let (0x06, oid) = alg.next()? else {
        return None;
    };
    if oid == RSA {
        rsa_modulus_bits(key_bits).map(KeyKind::Rsa)
    } else if oid == EC {
        let (0x06, curve) = alg.next()? else {
            return None;
        };
        (curve == P256 || curve == P384).then_some(KeyKind::Ec)
    } else if oid == ED25519 {
        Some(KeyKind::Ed25519)
    } else {
        None
    }
}

/// The size of an RSA modulus, from the BIT STRING body of an RSA SubjectPublicKeyInfo.
fn rsa_modulus_bits(key_bits: &[u8]) -> Option<usize> {
    let key = key_bits.get(1..)?; // skip the unused-bits byte
    let (0x30, rsa) = Der(key).next()? else {
        return None;
    };
    let (0x02, modulus) = Der(rsa).next()? else {
        return None;
    };
    // Leading zero bytes (the INTEGER's sign padding) carry no bits.
    let significant = modulus.iter().skip_while(|&&b| b == 0).count();
    let top = modulus.iter().find(|&&b| b != 0).copied().unwrap_or(0);
    Some(significant.saturating_sub(1) * 8 + (8 - top.leading_zeros() as usize))
}

/// A minimal DER TLV reader, enough for SubjectPublicKeyInfo and basicConstraints.
#[derive(Clone)]
pub(crate) struct Der<'a>(pub(crate) &'a [u8]);

impl<'a> Iterator for Der<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let tag = *self.0.first()?;
        let first = *self.0.get(1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            // More than four length bytes would describe more than any certificate holds.
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *self.0.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let body = self.0.get(hdr..hdr + len)?;
        self.0 = &self.0[hdr + len..];
        Some((tag, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_kinds_from_generated_certificates() {
        let cases: &[(&rcgen::SignatureAlgorithm, KeyKind)] = &[
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::Ec),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::Ec),
            (&rcgen::PKCS_ED25519, KeyKind::Ed25519),
        ];
        for (alg, want) in cases {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let ee = webpki::EndEntityCert::try_from(cert.der()).unwrap();
            assert_eq!(
                key_description(&ee.subject_public_key_info()).as_ref(),
                Some(want)
            );
            assert!(check_key_strength(cert.der()).is_ok());
        }
    }

    /// A BIT STRING body holding an RSA public key with this modulus (exponent 65537).
    fn rsa_key_bits(modulus: &[u8]) -> Vec<u8> {
        let mut int = vec![0x02, modulus.len() as u8];
        int.extend_from_slice(modulus);
        int.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut seq = vec![0x30, int.len() as u8];
        seq.extend(int);
        let mut bits = vec![0x00];
        bits.extend(seq);
        bits
    }

    #[test]
    fn rsa_modulus_sizes() {
        let cases: &[(&[u8], usize)] = &[
            (&[0x00, 0x80, 0x01], 16),
            (&[0x80, 0x01], 16),
            (&[0x01, 0xff], 9),
            (&[0x7f], 7),
            (&[0x00], 0),
        ];
        for (modulus, want) in cases {
            assert_eq!(
                rsa_modulus_bits(&rsa_key_bits(modulus)),
                Some(*want),
                "{modulus:02x?}"
            );
        }
        assert_eq!(rsa_modulus_bits(&[]), None);
        assert_eq!(rsa_modulus_bits(&[0x00, 0x04, 0x00]), None);
    }

    #[test]
    fn der_reader_handles_long_lengths() {
        let mut v = vec![0x04, 0x82, 0x01, 0x00];
        v.extend(std::iter::repeat_n(7u8, 256));
        let (tag, body) = Der(&v).next().unwrap();
        assert_eq!((tag, body.len()), (0x04, 256));
        assert!(Der(&[0x04, 0x85, 0, 0, 0, 0, 1]).next().is_none());
        assert!(Der(&[0x04, 0x05, 0]).next().is_none());
    }
}
