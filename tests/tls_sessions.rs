//! Outbound client configurations over real TLS handshakes: the same requirement
//! resumes its sessions, and a session verified under one requirement is never
//! resumed under another (a different requirement verifies from scratch).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::pki::{CertChain, TestCa};
use tlsrelay::model::dns::Tlsa;
use tlsrelay::policy::PeerCheck;
use tlsrelay::tls::{classify_tls_error, ClientTls};

/// A TLS server (no SMTP) that greets each client with "hello" after the handshake,
/// so that the client reads the session tickets sent before it.
async fn server(chain: &CertChain, tls13_only: bool) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    };
    let config = builder
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.certs.clone(), chain.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = tls.write_all(b"hello").await;
                let _ = tls.flush().await;
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

/// One session with `config`: how the handshake went, or the handshake error in the words delivery logs.
async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<HandshakeKind, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("mx.sessions.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| classify_tls_error(&e).1)?;
    let mut hello = [0u8; 5];
    tls.read_exact(&mut hello)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(&hello, b"hello");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.shutdown().await.unwrap();
    Ok(kind)
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn sha512(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA512, b)
        .as_ref()
        .to_vec()
}

fn dane(records: &[(u8, Vec<u8>)]) -> PeerCheck {
    PeerCheck::Dane {
        records: records
            .iter()
            .map(|(matching, data)| Tlsa {
                usage: 3,
                selector: 1,
                matching: *matching,
                data: data.clone(),
            })
            .collect(),
        names: vec!["mx.sessions.test".into()],
    }
}

fn names_under(ca: &TestCa) -> PeerCheck {
    PeerCheck::Names {
        names: vec![".sessions.test".into()],
        ca: Some(Arc::from(vec![ca.root_der()])),
    }
}

#[tokio::test]
async fn sessions_resume_only_under_the_requirement_that_verified_them() {
    let ca = TestCa::new("sessions CA");
    let other_ca = TestCa::new("another CA");
    let leaf = ca.leaf(&["mx.sessions.test"]);
    let addr = server(&leaf, true).await;
    let tls = ClientTls::new(&[]).unwrap();
    let spki = &leaf.spki_der;
    let ee = dane(&[(1, sha256(spki))]);
    let ee_too = dane(&[(1, sha256(spki)), (2, sha512(spki))]);
    let wrong = dane(&[(1, vec![0; 32])]);
    use HandshakeKind::{Full, Resumed};
    // (requirement, TLS 1.3 only, expected handshake or refusal words), in order.
    let steps: Vec<(&str, PeerCheck, bool, Result<HandshakeKind, &str>)> = vec![
        ("DANE-EE, first", ee.clone(), false, Ok(Full)),
        ("DANE-EE, again", ee.clone(), false, Ok(Resumed)),
        (
            "other records, also matching",
            ee_too.clone(),
            false,
            Ok(Full),
        ),
        ("other records, again", ee_too, false, Ok(Resumed)),
        (
            "non-matching records",
            wrong.clone(),
            false,
            Err("DANE: no TLSA record matches"),
        ),
        (
            "non-matching records, again",
            wrong,
            false,
            Err("DANE: no TLSA record matches"),
        ),
        ("DANE-EE, TLS 1.3 only", ee.clone(), true, Ok(Full)),
        (
            "DANE-EE, TLS 1.3 only, again",
            ee.clone(),
            true,
            Ok(Resumed),
        ),
        ("names under the CA", names_under(&ca), false, Ok(Full)),
        (
            "names under the CA, again",
            names_under(&ca),
            false,
            Ok(Resumed),
        ),
        (
            "names under another CA",
            names_under(&other_ca),
            false,
            Err("unknown issuer"),
        ),
        (
            "WebPKI floor (test CA not a root)",
            PeerCheck::WebPki,
            false,
            Err("unknown issuer"),
        ),
        ("encrypt floor", PeerCheck::EncryptOnly, false, Ok(Full)),
        (
            "encrypt floor, again",
            PeerCheck::EncryptOnly,
            false,
            Ok(Resumed),
        ),
        ("DANE-EE, still resumed", ee, false, Ok(Resumed)),
    ];
    for (what, check, tls13, want) in steps {
        let config = if tls13 {
            tls.config_tls13(&check)
        } else {
            tls.config(&check)
        };
        let got = connect(config, addr).await;
        println!("{what}: {got:?}");
        match (want, got) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "{what}"),
            (Err(words), Err(got)) => assert!(got.contains(words), "{what}: {got}"),
            (want, got) => panic!("{what}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn tls13_only_configs_refuse_a_tls12_server() {
    let ca = TestCa::new("sessions CA");
    let leaf = ca.leaf(&["mx.sessions.test"]);
    let addr = server(&leaf, false).await;
    let tls = ClientTls::new(&[]).unwrap();
    let ee = dane(&[(1, sha256(&leaf.spki_der))]);
    assert_eq!(
        connect(tls.config(&ee), addr).await,
        Ok(HandshakeKind::Full)
    );
    let err = connect(tls.config_tls13(&ee), addr).await.unwrap_err();
    println!("TLS 1.3 only against TLS 1.2: {err}");
    assert!(err.contains("ProtocolVersion"), "{err}");
}
