//! Tests of the test support code itself: the PKI and the MX host, driven by a
//! small SMTP client over real sockets and real rustls.

mod support;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use support::mx::{free_port, Mitm, MxOptions, MxServer, TlsVersions};
use support::pki::{self, CertChain, IntermediateOptions, KeyKind, LeafOptions, TestCa};

const WAIT: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca: &TestCa) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(ca.root_store())
            .with_no_client_auth(),
    )
}

fn webpki_verifier(ca: &TestCa) -> Arc<WebPkiServerVerifier> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(ca.root_store()), provider())
        .build()
        .unwrap()
}

/// Verifies a chain the way a WebPKI client would, at the current time.
fn verify_chain(ca: &TestCa, chain: &CertChain, name: &str) -> Result<(), rustls::Error> {
    webpki_verifier(ca)
        .verify_server_cert(
            &chain.certs[0],
            &chain.certs[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

/// Accepts any certificate; checks RSA handshake signatures with the `rsa`
/// crate (so that keys ring refuses can be exercised) and counts them.
#[derive(Debug, Default)]
struct AcceptAnything {
    rsa_signatures_verified: AtomicUsize,
}

impl AcceptAnything {
    fn check(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let ee = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let spki = ee.subject_public_key_info();
        let Ok(key) = rsa::RsaPublicKey::from_public_key_der(spki.as_ref()) else {
            return Ok(HandshakeSignatureValid::assertion()); // not RSA: accepted unchecked
        };
        let sig = dss.signature();
        let ok = match dss.scheme {
            SignatureScheme::RSA_PSS_SHA256 => {
                rsa::pss::VerifyingKey::<rsa::sha2::Sha256>::new(key)
                    .verify(message, &rsa::pss::Signature::try_from(sig).unwrap())
                    .is_ok()
            }
            SignatureScheme::RSA_PKCS1_SHA256 => {
                rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(key)
                    .verify(message, &rsa::pkcs1v15::Signature::try_from(sig).unwrap())
                    .is_ok()
            }
            other => {
                return Err(rustls::Error::General(format!(
                    "unexpected scheme {other:?}"
                )))
            }
        };
        if !ok {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature,
            ));
        }
        self.rsa_signatures_verified.fetch_add(1, Ordering::SeqCst);
        Ok(HandshakeSignatureValid::assertion())
    }
}

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A minimal SMTP client.
struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// One reply, all its lines.
    async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.io.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read reply");
            assert!(n > 0, "server closed; got {lines:?} so far");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    async fn send(&mut self, raw: &str) {
        self.io.write_all(raw.as_bytes()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> Vec<String> {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    /// The reply code of one reply.
    async fn code(&mut self) -> u16 {
        self.reply().await[0][..3].parse().unwrap()
    }
}

async fn connect(addr: std::net::SocketAddr) -> Client<TcpStream> {
    let mut c = Client {
        io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
    };
    let greeting = c.reply().await;
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    c
}

async fn starttls(
    mut c: Client<TcpStream>,
    config: Arc<ClientConfig>,
    sni: &str,
) -> io::Result<Client<TlsStream<TcpStream>>> {
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.iter().any(|l| l[4..].eq_ignore_ascii_case("STARTTLS")),
        "{ehlo:?}"
    );
    assert_eq!(c.cmd("STARTTLS").await[0][..3], *"220");
    assert!(c.io.buffer().is_empty());
    let tcp = c.io.into_inner();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await?;
    Ok(Client {
        io: BufReader::new(tls),
    })
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test]
async fn ehlo_lists_starttls_and_extensions() {
    let ca = TestCa::new("Test CA");
    let opts = MxOptions {
        size: Some(1000),
        dsn: true,
        chunking: true,
        smtputf8: true,
        requiretls: true,
        ..MxOptions::with_cert(ca.leaf(&["mx.example.test"]))
    };
    let server = MxServer::start(opts).await.unwrap();
    let mut c = connect(server.addr()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert_eq!(ehlo[0], "250-mx.example.test greets you");
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "DSN",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(
            ehlo.iter().any(|l| &l[4..] == ext),
            "{ext} missing in {ehlo:?}"
        );
    }
    assert_eq!(ehlo.last().unwrap(), "250 STARTTLS");
    assert!(
        !ehlo.iter().any(|l| l.contains("REQUIRETLS")),
        "REQUIRETLS only after TLS"
    );
    assert_eq!(c.cmd("QUIT").await[0][..3], *"221");

    let plain = MxServer::start(MxOptions::plaintext()).await.unwrap();
    let mut c = connect(plain.addr()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert_eq!(c.cmd("STARTTLS").await[0][..3], *"502");
}

#[tokio::test]
async fn tls_transaction_is_recorded_exactly() {
    let ca = TestCa::new("Test CA");
    let opts = MxOptions {
        requiretls: true,
        ..MxOptions::with_cert(ca.leaf(&["mx.example.test"]))
    }
    .rcpt_reply("reject", "550 5.1.1 no such user")
    .rcpt_reply("Tempfail@Example.Org", "450 4.2.0 try later");
    let server = MxServer::start(opts).await.unwrap();
    let c = connect(server.addr()).await;
    let mut c = starttls(c, client_config(&ca), "mx.example.test")
        .await
        .unwrap();
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.iter().any(|l| &l[4..] == "REQUIRETLS"), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");

    // Pipelined: one write, replies in order.
    c.send(concat!(
        "MAIL FROM:<sender@example.com> REQUIRETLS BODY=8BITMIME\r\n",
        "RCPT TO:<alice@example.org>\r\n",
        "RCPT TO:<reject@example.org>\r\n",
        "RCPT TO:<tempfail@example.org>\r\n",
        "RCPT TO:<bob@example.org>\r\n",
        "DATA\r\n",
    ))
    .await;
    let codes = [
        c.code().await,
        c.code().await,
        c.code().await,
        c.code().await,
        c.code().await,
        c.code().await,
    ];
    assert_eq!(codes, [250, 250, 550, 450, 250, 354]);
    // Dot-stuffed lines, a bare LF and a bare CR inside lines, 8-bit bytes.
    c.send("Subject: dots\r\n\r\n..leading dot\r\n..\r\n...\r\nbare\nlf and bare\rcr\r\nh\u{e9}\r\n.\r\n").await;
    assert_eq!(c.code().await, 250);
    assert_eq!(c.cmd("QUIT").await[0][..3], *"221");

    assert!(server.wait_for_messages(1, WAIT).await);
    let got = server.received();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(
        m.data,
        "Subject: dots\r\n\r\n.leading dot\r\n.\r\n..\r\nbare\nlf and bare\rcr\r\nh\u{e9}\r\n"
            .as_bytes()
    );
    assert_eq!(m.mail_from, "sender@example.com");
    assert_eq!(m.mail_params, ["REQUIRETLS", "BODY=8BITMIME"]);
    assert!(m.has_mail_param("requiretls"));
    assert_eq!(m.rcpt_addresses(), ["alice@example.org", "bob@example.org"]);
    assert_eq!(m.ehlo, "client.test");
    let tls = m.tls.as_ref().expect("over TLS");
    assert_eq!(tls.version, ProtocolVersion::TLSv1_3);
    assert_eq!(tls.sni.as_deref(), Some("mx.example.test"));
    let stats = server.stats();
    assert_eq!(
        stats.plaintext_transactions,
        0,
        "{}",
        server.transcript_text()
    );
    assert_eq!(
        (stats.connections, stats.tls_handshakes, stats.messages),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn tls12_only_server_and_empty_message() {
    let ca = TestCa::new("Test CA");
    let opts = MxOptions {
        tls_versions: TlsVersions::Tls12Only,
        ..MxOptions::with_cert(ca.leaf(&["mx.example.test"]))
    };
    let server = MxServer::start(opts).await.unwrap();
    let c = connect(server.addr()).await;
    let mut c = starttls(c, client_config(&ca), "mx.example.test")
        .await
        .unwrap();
    assert_eq!(
        c.io.get_ref().get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    // After STARTTLS the old EHLO is forgotten.
    assert_eq!(c.cmd("MAIL FROM:<>").await[0][..3], *"503");
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<>").await[0][..3], *"250");
    assert_eq!(
        c.cmd("RCPT TO:<x@example.org> NOTIFY=NEVER").await[0][..3],
        *"555",
        "DSN not offered"
    );
    assert_eq!(c.cmd("RCPT TO:<x@example.org>").await[0][..3], *"250");
    assert_eq!(c.cmd("DATA").await[0][..3], *"354");
    assert_eq!(c.cmd(".").await[0][..3], *"250");
    assert!(server.wait_for_messages(1, WAIT).await);
    let m = &server.received()[0];
    assert_eq!(m.data, b"");
    assert_eq!(m.mail_from, "");
    assert_eq!(m.tls.as_ref().unwrap().version, ProtocolVersion::TLSv1_2);
    assert_eq!(server.stats().plaintext_transactions, 0);
}

#[tokio::test]
async fn plaintext_commands_are_counted() {
    let server = MxServer::start(MxOptions::default()).await.unwrap();
    let mut c = connect(server.addr()).await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com>").await[0][..3],
        *"503",
        "no EHLO yet"
    );
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await[0][..3], *"250");
    assert_eq!(c.cmd("RCPT TO:<b@example.org>").await[0][..3], *"250");
    assert_eq!(c.cmd("RSET").await[0][..3], *"250");
    c.cmd("QUIT").await;
    assert!(
        server
            .wait_for(WAIT, |s| s.plaintext_transactions == 3)
            .await,
        "{:?}",
        server.stats()
    );
    assert_eq!(server.stats().messages, 0);
    let t = &server.transcripts()[0];
    assert!(
        t.contains(&"C: RCPT TO:<b@example.org>".to_string()),
        "{t:?}"
    );

    // Commands pipelined behind STARTTLS arrive in plaintext: counted, never executed.
    let mut c = connect(server.addr()).await;
    c.cmd("EHLO client.test").await;
    c.send("STARTTLS\r\nMAIL FROM:<a@example.com>\r\n").await;
    assert_eq!(c.code().await, 220);
    assert!(
        server
            .wait_for(WAIT, |s| s.plaintext_transactions == 4)
            .await,
        "{:?}",
        server.stats()
    );
}

#[tokio::test]
async fn chunking_scripted_replies_and_drop() {
    let opts = MxOptions {
        chunking: true,
        drop_after_messages: Some(1),
        ..MxOptions::default()
    };
    let server = MxServer::start(opts).await.unwrap();
    let c = connect(server.addr()).await;
    let mut c = starttls(
        c,
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything::default()))
                .with_no_client_auth(),
        ),
        "mx.test",
    )
    .await
    .unwrap();
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.com>").await;
    c.cmd("RCPT TO:<b@example.org>").await;
    c.send("BDAT 5\r\nhello").await;
    assert_eq!(c.code().await, 250);
    c.send("BDAT 10 LAST\r\n\r\n.\r\nend\r\n").await;
    assert_eq!(c.code().await, 250);
    // Dropped after one message.
    c.send("MAIL FROM:<a@example.com>\r\n").await;
    let mut rest = String::new();
    let n = c.io.read_line(&mut rest).await.unwrap_or(0);
    assert_eq!(n, 0, "connection should be closed, got {rest:?}");
    let m = &server.received()[0];
    assert!(m.via_bdat);
    assert_eq!(m.data, b"hello\r\n.\r\nend\r\n");

    // A 554 greeting refuses everything.
    let server = MxServer::start(MxOptions {
        greeting: Some("554 5.3.2 not now".into()),
        ..MxOptions::default()
    })
    .await
    .unwrap();
    let mut c = Client {
        io: BufReader::new(TcpStream::connect(server.addr()).await.unwrap()),
    };
    assert_eq!(c.code().await, 554);
    assert_eq!(c.cmd("EHLO client.test").await[0][..3], *"503");
    assert_eq!(c.cmd("QUIT").await[0][..3], *"221");

    // Scripted MAIL and DATA replies.
    let server = MxServer::start(MxOptions {
        starttls: false,
        data_reply: Some("451 4.3.0 disk full".into()),
        ..MxOptions::default()
    })
    .await
    .unwrap();
    let mut c = connect(server.addr()).await;
    c.cmd("HELO client.test").await;
    c.cmd("MAIL FROM:<a@example.com>").await;
    c.cmd("RCPT TO:<b@example.org>").await;
    c.cmd("DATA").await;
    assert_eq!(c.cmd("x\r\n.").await[0], "451 4.3.0 disk full");
    assert!(server.received().is_empty());
    server.update_options(|o| o.mail_reply = Some("452 4.3.1 full".into()));
    let mut c = connect(server.addr()).await;
    c.cmd("HELO client.test").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com>").await[0],
        "452 4.3.1 full"
    );
}

#[tokio::test]
async fn same_port_on_several_addresses() {
    let servers = MxServer::start_on_all(&[ip(10), ip(11), ip(12)], |i| MxOptions {
        hostname: format!("mx{i}.test"),
        ..MxOptions::default()
    })
    .await
    .unwrap();
    let port = servers[0].port();
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(s.port(), port);
        assert_eq!(s.ip(), ip(10 + i as u8));
        let mut c = connect(s.addr()).await;
        assert_eq!(
            c.cmd("EHLO c.test").await[0],
            format!("250-mx{i}.test greets you")
        );
    }
    let port = free_port();
    let s = MxServer::start_on(ip(20), port, MxOptions::default())
        .await
        .unwrap();
    assert_eq!(s.addr(), std::net::SocketAddr::new(ip(20), port));
}

#[tokio::test]
async fn mitm_strips_starttls() {
    let ca = TestCa::new("Test CA");
    let server = MxServer::start_on(
        ip(30),
        0,
        MxOptions::with_cert(ca.leaf(&["mx.example.test"])),
    )
    .await
    .unwrap();
    let mitm = Mitm::start(ip(31), 0, server.addr()).await.unwrap();

    let mut c = connect(mitm.addr()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert!(ehlo.last().unwrap().starts_with("250 "), "{ehlo:?}");
    assert!(
        ehlo[..ehlo.len() - 1].iter().all(|l| l.starts_with("250-")),
        "{ehlo:?}"
    );
    assert_eq!(mitm.stripped(), 1);
    // A client that tries anyway is refused by the proxy.
    assert_eq!(c.cmd("STARTTLS").await[0][..3], *"454");
    assert_eq!(mitm.starttls_refused(), 1);
    // A client that goes on leaks its envelope.
    assert!(mitm.plaintext_commands().is_empty());
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await[0][..3], *"250");
    assert_eq!(mitm.plaintext_commands(), ["MAIL FROM:<a@example.com>"]);
    assert!(
        server
            .wait_for(WAIT, |s| s.plaintext_transactions == 1)
            .await
    );
    c.cmd("QUIT").await;
    assert_eq!(server.stats().tls_handshakes, 0);
}

#[tokio::test]
async fn wrong_key_server_fails_the_handshake() {
    let ca = TestCa::new("Test CA");
    let real = ca.leaf(&["mx.example.test"]);
    let impostor = ca.leaf(&["impostor.example.test"]);
    for versions in [TlsVersions::Tls13Only, TlsVersions::Tls12Only] {
        let opts = MxOptions {
            tls_versions: versions,
            sign_with_key_of: Some(impostor.clone()),
            ..MxOptions::with_cert(real.clone())
        };
        let server = MxServer::start(opts).await.unwrap();
        let c = connect(server.addr()).await;
        let err = match starttls(c, client_config(&ca), "mx.example.test").await {
            Ok(_) => panic!("handshake with the wrong key succeeded ({versions:?})"),
            Err(e) => e,
        };
        assert_eq!(
            rustls_error(&err),
            Some(&rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            )),
            "{versions:?}: {err}"
        );
        assert!(
            server
                .wait_for(WAIT, |s| s.tls_handshake_failures == 1)
                .await
        );
        assert_eq!(server.stats().tls_handshakes, 0);
        assert_eq!(server.tls_errors().len(), 1);

        // Control: the same chain with its own key is fine.
        let server = MxServer::start(MxOptions {
            tls_versions: versions,
            ..MxOptions::with_cert(real.clone())
        })
        .await
        .unwrap();
        let c = connect(server.addr()).await;
        starttls(c, client_config(&ca), "mx.example.test")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn expired_and_intermediate_chains() {
    let ca = TestCa::new("Test CA");
    let name = "mx.example.test";
    let expired = ca.leaf_with(&[name], LeafOptions::expired());
    assert!(expired.not_after < SystemTime::now());
    let err = verify_chain(&ca, &expired, name).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
    // And a real client refuses it in the handshake.
    let server = MxServer::start(MxOptions::with_cert(expired))
        .await
        .unwrap();
    let err = starttls(connect(server.addr()).await, client_config(&ca), name)
        .await
        .err()
        .expect("expired leaf refused");
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{err}"
    );

    let future = ca.leaf_with(&[name], LeafOptions::not_yet_valid());
    assert!(verify_chain(&ca, &future, name).is_err());

    // Good leaf, wrong name.
    let good = ca.leaf(&[name]);
    assert_eq!(good.certs.len(), 1);
    verify_chain(&ca, &good, name).unwrap();
    assert!(verify_chain(&ca, &good, "other.example.test").is_err());
    assert!(verify_chain(&TestCa::new("Other CA"), &good, name).is_err());

    // Intermediates.
    let via = ca.leaf_with(
        &[name],
        LeafOptions::default().via_intermediate(IntermediateOptions::default()),
    );
    assert_eq!(via.certs.len(), 2);
    verify_chain(&ca, &via, name).unwrap();
    let inter = ca.intermediate(IntermediateOptions::default());
    let a = inter.leaf(&["a.example.test"]);
    let b = inter.leaf(&["b.example.test"]);
    assert_eq!(a.certs[1], b.certs[1]);
    assert_eq!(a.certs[1], inter.der());
    verify_chain(&ca, &b, "b.example.test").unwrap();
    let expired_inter = ca.leaf_with(
        &[name],
        LeafOptions::default().via_intermediate(IntermediateOptions {
            expired: true,
            is_ca: true,
        }),
    );
    let err = verify_chain(&ca, &expired_inter, name).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
    let not_ca = ca.leaf_with(
        &[name],
        LeafOptions::default().via_intermediate(IntermediateOptions {
            expired: false,
            is_ca: false,
        }),
    );
    let err = verify_chain(&ca, &not_ca, name).unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );

    // Self-signed: not trusted by the CA, SPKI matches what webpki sees.
    let ss = pki::self_signed(&[name]);
    assert!(verify_chain(&ca, &ss, name).is_err());
    for chain in [&good, &via, &ss] {
        let ee = webpki::EndEntityCert::try_from(chain.leaf_der()).unwrap();
        assert_eq!(
            ee.subject_public_key_info().as_ref(),
            chain.spki_der.as_slice()
        );
    }

    // PEM output round-trips through a file.
    let dir = tempfile::tempdir().unwrap();
    ca.write_root_pem(dir.path().join("root.pem"));
    let pem = std::fs::read_to_string(dir.path().join("root.pem")).unwrap();
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----\n")
            && pem.ends_with("-----END CERTIFICATE-----\n")
    );
    assert_eq!(via.chain_pem().matches("BEGIN CERTIFICATE").count(), 2);
    assert!(via.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
}

#[tokio::test]
async fn rsa1024_leaf_is_presented_and_signs() {
    let ca = TestCa::new("Test CA");
    let started = Instant::now();
    let weak = ca.leaf_with(
        &["mx.example.test"],
        LeafOptions::default().key(KeyKind::Rsa1024),
    );
    eprintln!("RSA-1024 leaf: {:?}", started.elapsed());
    let key = rsa::RsaPublicKey::from_public_key_der(&weak.spki_der).unwrap();
    assert_eq!(key.size() * 8, 1024);
    let ee = webpki::EndEntityCert::try_from(weak.leaf_der()).unwrap();
    assert_eq!(
        ee.subject_public_key_info().as_ref(),
        weak.spki_der.as_slice()
    );
    // The chain itself is fine by WebPKI rules: only a key-size check refuses it.
    verify_chain(&ca, &weak, "mx.example.test").unwrap();

    for versions in [TlsVersions::Tls13Only, TlsVersions::Tls12Only] {
        let server = MxServer::start(MxOptions {
            tls_versions: versions,
            ..MxOptions::with_cert(weak.clone())
        })
        .await
        .unwrap();
        let verifier = Arc::new(AcceptAnything::default());
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        let c = starttls(
            connect(server.addr()).await,
            Arc::new(config),
            "mx.example.test",
        )
        .await
        .unwrap();
        let (_, conn) = c.io.get_ref().get_ref();
        assert_eq!(conn.peer_certificates().unwrap()[0], *weak.leaf_der());
        assert_eq!(
            verifier.rsa_signatures_verified.load(Ordering::SeqCst),
            1,
            "{versions:?}: the RSA-1024 handshake signature is real"
        );

        // A stock WebPKI client trusting the CA fails (ring refuses the key at signature time).
        let c = connect(server.addr()).await;
        let err = starttls(c, client_config(&ca), "mx.example.test")
            .await
            .err()
            .expect("stock client refuses RSA-1024");
        eprintln!("{versions:?}: stock rustls client on RSA-1024: {err}");
    }
}

#[tokio::test]
async fn rsa2048_and_ed25519_leaves_work_with_a_stock_client() {
    let ca = TestCa::new("Test CA");
    for kind in [KeyKind::Rsa2048, KeyKind::Ed25519, KeyKind::EcdsaP256] {
        let started = Instant::now();
        let chain = ca.leaf_with(&["mx.example.test"], LeafOptions::default().key(kind));
        eprintln!("{kind:?} leaf: {:?}", started.elapsed());
        if kind == KeyKind::Rsa2048 {
            assert_eq!(
                rsa::RsaPublicKey::from_public_key_der(&chain.spki_der)
                    .unwrap()
                    .size()
                    * 8,
                2048
            );
        }
        for versions in [TlsVersions::Tls13Only, TlsVersions::Tls12Only] {
            let server = MxServer::start(MxOptions {
                tls_versions: versions,
                ..MxOptions::with_cert(chain.clone())
            })
            .await
            .unwrap();
            let mut c = starttls(
                connect(server.addr()).await,
                client_config(&ca),
                "mx.example.test",
            )
            .await
            .unwrap();
            c.cmd("EHLO client.test").await;
            assert!(
                server.wait_for(WAIT, |s| s.tls_handshakes == 1).await,
                "{kind:?} {versions:?}"
            );
        }
    }
}
