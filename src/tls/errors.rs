//! What a failed outbound handshake means in RFC 8460 terms.

use crate::model::rfc8460::ResultType;

/// The RFC 8460 result type and plain words for a failed TLS handshake.
pub fn classify_tls_error(err: &std::io::Error) -> (ResultType, String) {
    use rustls::CertificateError as C;
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return (
            ResultType::ValidationFailure,
            format!("TLS handshake failed: {err}"),
        );
    };
    let kind = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => ResultType::CertificateExpired,
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                ResultType::CertificateHostMismatch
            }
            C::UnknownIssuer | C::BadSignature => ResultType::CertificateNotTrusted,
            _ => ResultType::ValidationFailure,
        },
        _ => ResultType::ValidationFailure,
    };
    let words = match tls {
        // The message of our own verifiers' errors, not their Debug form.
        rustls::Error::InvalidCertificate(C::Other(other)) => other.0.to_string(),
        other => other.to_string(),
    };
    (kind, format!("TLS handshake failed: {words}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError as C;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn result_types_and_words() {
        let cases = [
            (
                io(rustls::Error::InvalidCertificate(C::Expired)),
                ResultType::CertificateExpired,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::NotValidForName)),
                ResultType::CertificateHostMismatch,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
                ResultType::CertificateNotTrusted,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::BadSignature)),
                ResultType::CertificateNotTrusted,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::Revoked)),
                ResultType::ValidationFailure,
            ),
            (
                io(rustls::Error::HandshakeNotComplete),
                ResultType::ValidationFailure,
            ),
            (
                std::io::Error::other("reset"),
                ResultType::ValidationFailure,
            ),
        ];
        for (err, want) in cases {
            let (kind, words) = classify_tls_error(&err);
            assert_eq!(kind, want, "{words}");
            assert!(words.starts_with("TLS handshake failed: "), "{words}");
        }
        let (_, words) = classify_tls_error(&io(crate::tls::verify::refused(
            crate::tls::keys::WeakKey("RSA-1024".into()),
        )));
        assert_eq!(words, "TLS handshake failed: server key too weak: RSA-1024");
    }
}
