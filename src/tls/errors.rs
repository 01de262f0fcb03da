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
    (kind, format!("TLS handshake failed: {}", tls_words(tls)))
}

/// A TLS error in plain words: rustls and webpki show many of their errors
/// only in their Debug form (`UnknownIssuer`, `Other(OtherError(CaUsedAsEndEntity))`).
pub fn tls_words(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(c) => certificate_words(c),
        other => camel_to_words(&other.to_string()),
    }
}

/// `text` with rustls's Debug names of certificate errors (as a wrapped error
/// chain prints them, `invalid peer certificate: UnknownIssuer`) put in words.
pub fn plain_certificate_words(text: &str) -> String {
    use rustls::CertificateError as C;
    let names = [
        ("UnknownIssuer", C::UnknownIssuer),
        ("NotValidForName", C::NotValidForName),
        ("Expired", C::Expired),
        ("NotValidYet", C::NotValidYet),
        ("BadEncoding", C::BadEncoding),
        ("BadSignature", C::BadSignature),
        ("Revoked", C::Revoked),
        ("InvalidPurpose", C::InvalidPurpose),
        ("UnhandledCriticalExtension", C::UnhandledCriticalExtension),
    ];
    let mut out = text.to_string();
    for (name, err) in names {
        let debug = format!("invalid peer certificate: {name}");
        let end =
            |rest: &str| rest.is_empty() || rest.starts_with(|c: char| !c.is_ascii_alphanumeric());
        if let Some(at) = out.find(&debug).filter(|&at| end(&out[at + debug.len()..])) {
            let words = format!("invalid peer certificate: {}", certificate_words(&err));
            out.replace_range(at..at + debug.len(), &words);
        }
    }
    out
}

/// Why a certificate was refused, in plain words.
fn certificate_words(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    let fixed = match c {
        C::BadEncoding => "the certificate is malformed",
        C::Expired => "the certificate has expired",
        C::NotValidYet => "the certificate is not valid yet",
        C::Revoked => "the certificate is revoked",
        C::UnhandledCriticalExtension => {
            "the certificate has a critical extension that is not understood"
        }
        C::UnknownIssuer => "the chain does not lead to a trusted root (unknown issuer)",
        C::BadSignature => "a signature in the chain does not verify",
        C::NotValidForName => "the certificate does not name the host",
        C::InvalidPurpose => "the certificate is not for TLS server use",
        C::ApplicationVerificationFailure => "the certificate failed a check of tlsrelay's",
        C::Other(other) => return other_words(other),
        // The *Context variants of rustls write plain sentences with their details.
        other => return other.to_string(),
    };
    fixed.to_string()
}

/// Our verifiers' errors carry their own sentence; webpki's only a variant name.
fn other_words(other: &rustls::OtherError) -> String {
    match other.0.downcast_ref::<webpki::Error>() {
        Some(w) => webpki_words(w),
        None => other.0.to_string(),
    }
}

/// A webpki error in plain words.
pub fn webpki_words(w: &webpki::Error) -> String {
    match w {
        webpki::Error::CaUsedAsEndEntity => {
            "the server presented a CA certificate as its own".into()
        }
        webpki::Error::EndEntityUsedAsCa => {
            "an end-entity certificate is used as a CA in the chain".into()
        }
        webpki::Error::CertExpired { .. } => "the certificate has expired".into(),
        webpki::Error::CertNotValidYet { .. } => "the certificate is not valid yet".into(),
        webpki::Error::UnknownIssuer => {
            "the chain does not lead to a trusted root (unknown issuer)".into()
        }
        other => camel_to_words(&format!("{other:?}")),
    }
}

/// `CaUsedAsEndEntity { .. }` as `ca used as end entity`: the last resort for
/// an error that has no words of its own.
fn camel_to_words(s: &str) -> String {
    let end = s
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    let debug_shaped = rest.is_empty() || rest.starts_with(" {") || rest.starts_with('(');
    let camel = name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.contains(|c: char| c.is_ascii_lowercase());
    if !debug_shaped || !camel {
        return s.to_string();
    }
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError as C;

    #[test]
    fn tls_errors_in_plain_words() {
        let other = |e: webpki::Error| {
            rustls::Error::InvalidCertificate(C::Other(rustls::OtherError(std::sync::Arc::new(e))))
        };
        let cases = [
            (
                rustls::Error::InvalidCertificate(C::UnknownIssuer),
                "the chain does not lead to a trusted root (unknown issuer)",
            ),
            (
                rustls::Error::InvalidCertificate(C::NotValidForName),
                "the certificate does not name the host",
            ),
            (
                other(webpki::Error::CaUsedAsEndEntity),
                "the server presented a CA certificate as its own",
            ),
            (
                other(webpki::Error::UnsupportedCriticalExtension),
                "unsupported critical extension",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(tls_words(&err), want);
        }
        let words = tls_words(&rustls::Error::InvalidCertificate(C::Expired));
        assert!(!words.contains("Expired"), "{words}");
        let chain = "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer";
        assert_eq!(
            plain_certificate_words(chain),
            "error sending request: client error (Connect): invalid peer certificate: the chain does not lead to a trusted root (unknown issuer)"
        );
        let other = "invalid peer certificate: ExpiredContext { time: 1 }";
        assert_eq!(
            plain_certificate_words(other),
            other,
            "only whole names are replaced"
        );
    }

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
