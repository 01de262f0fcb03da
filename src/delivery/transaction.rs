//! One mail transaction on an open, authenticated session: the commands sent
//! and what the replies mean for each recipient.

use super::client::{Reply, Session, TransactionReplies};
use super::execute::Job;
use super::pool::Lease;
use super::Context;
use crate::model::address::Mailbox;
use crate::model::mechanism::TlsDemand;
use crate::model::rcpt::{AppliedPolicy, Channel, RcptResult};
use crate::model::status::EnhancedStatus;
use crate::policy::Requirement;
use crate::spool::{BodyType, DsnRet, Envelope};

/// Runs the transaction on an open session. None when the session broke before
/// any recipient was settled (the caller tries elsewhere). The session goes
/// back to the pool, or is closed.
pub(super) async fn transact(
    ctx: &Context,
    job: &Job<'_>,
    mut session: Session,
    (req, applied): (&Requirement, &AppliedPolicy),
    lease: Lease,
) -> Option<Vec<(usize, RcptResult)>> {
    let reused = lease.reused;
    let where_ = format!("{}[{}]", session.host, session.addr.ip());
    if let Some((status, why)) = refuse_before_mail(job.env, &session) {
        let result = RcptResult::Failed {
            status,
            reason: format!("{where_} {why}"),
            remote: Some(session.host.clone()),
            diagnostic: None,
        };
        session.quit().await;
        return Some(job.all(result));
    }
    let Some(sender) = smtp_path(&job.env.sender) else {
        session.quit().await;
        return Some(job.all(RcptResult::failed(
            EnhancedStatus::BAD_SENDER_SYNTAX,
            "the sender address cannot be written in SMTP",
        )));
    };
    let (idxs, mut unwritable) = writable_recipients(job.env, job.idxs);
    if idxs.is_empty() {
        session.quit().await;
        return Some(unwritable);
    }
    let mail = mail_command(job.env, &sender, &session, job.demand);
    let rcpts = rcpt_commands(job.env, &idxs, session.caps.dsn);
    let message = match job.message.get().await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(id = %job.env.id, error = %e, "cannot read the queued message");
            session.quit().await;
            let reason = format!("the queued message cannot be read: {e}");
            return Some(job.all(RcptResult::Deferred { reason }));
        }
    };
    let started = std::time::Instant::now();
    let replies = session.transaction(&mail, &rcpts, &message).await;
    crate::reporting::metrics::transaction_time(started.elapsed(), replies.is_ok());
    let replies = match replies {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(id = %job.env.id, domain = %job.domain, host = %session.host, error = %e, reused, "session failed during the transaction");
            return None;
        }
    };
    let channel = Channel {
        addr: Some(session.addr),
        source: session.local_addr,
        tls_version: session.tls_version.clone(),
        cipher: session.tls_cipher.clone(),
        kx_group: session.tls_kx_group.clone(),
        spki_sha256: (session.peer_certificates.first())
            .and_then(spki_sha256)
            .unwrap_or_default(),
        policy: std::sync::Arc::new(applied.clone()),
    };
    let mut results = interpret(&replies, &idxs, (&session.host, &where_), &channel, req);
    log_transaction(job, &session, req, reused, &replies, &results);
    results.append(&mut unwritable);
    if ctx.config.delivery.connection_reuse_time.get().is_zero() || !lease.may_carry_more() {
        session.quit().await;
    } else {
        ctx.pool
            .put(lease.key, session, lease.messages + 1, job.domain);
    }
    Some(results)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, hex (what TLSA `3 1 1` and
/// a local `fingerprint` SPKI pin hash); None when the certificate does not parse.
fn spki_sha256(cert: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = ee.subject_public_key_info();
    Some(crate::reporting::receipts::chain::sha256_hex(spki.as_ref()))
}

/// A reason to fail the recipients without sending MAIL: the host cannot take this message.
fn refuse_before_mail(env: &Envelope, session: &Session) -> Option<(EnhancedStatus, String)> {
    if env.smtputf8 && !session.caps.smtputf8 {
        return Some((
            EnhancedStatus::NO_SMTPUTF8,
            "does not support SMTPUTF8, which this message needs".into(),
        ));
    }
    let limit = session.caps.size.filter(|&l| l > 0 && env.size > l)?;
    Some((
        EnhancedStatus::TOO_BIG,
        format!(
            "accepts at most {limit} bytes; the message has {}",
            env.size
        ),
    ))
}

/// A stored address as written in a command, quoted where its local part needs
/// it (so a quoted local part never turns into parameters at the next hop);
/// the empty reverse-path stays empty. None when SMTP cannot carry it.
fn smtp_path(stored: &str) -> Option<String> {
    if stored.is_empty() {
        return Some(String::new());
    }
    Mailbox::from_stored(stored).ok().map(|m| m.to_smtp())
}

/// The recipients that can be written in SMTP, and a failure for each other
/// one (an envelope stored before addresses were checked at the door).
fn writable_recipients(env: &Envelope, idxs: &[usize]) -> (Vec<usize>, Vec<(usize, RcptResult)>) {
    let (ok, bad): (Vec<usize>, Vec<usize>) = idxs
        .iter()
        .partition(|&&i| smtp_path(&env.recipients[i].address).is_some());
    let failed = RcptResult::failed(
        EnhancedStatus::BAD_MAILBOX_SYNTAX,
        "the recipient address cannot be written in SMTP",
    );
    (ok, bad.into_iter().map(|i| (i, failed.clone())).collect())
}

/// MAIL FROM with the parameters the host offers and the message carries.
fn mail_command(env: &Envelope, sender: &str, session: &Session, demand: TlsDemand) -> String {
    let caps = &session.caps;
    let mut mail = format!("MAIL FROM:<{sender}>");
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", env.size));
    }
    if env.body == BodyType::EightBitMime && caps.eightbitmime {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if demand == TlsDemand::RequireTls {
        mail.push_str(" REQUIRETLS");
    }
    if caps.dsn {
        match env.ret {
            Some(DsnRet::Full) => mail.push_str(" RET=FULL"),
            Some(DsnRet::Hdrs) => mail.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &env.envid {
            mail.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    mail
}

/// RCPT TO for each recipient, with NOTIFY and ORCPT when the host offers DSN.
fn rcpt_commands(env: &Envelope, idxs: &[usize], dsn: bool) -> Vec<String> {
    idxs.iter()
        .map(|&i| {
            let r = &env.recipients[i];
            let path = smtp_path(&r.address).unwrap_or_default();
            let mut c = format!("RCPT TO:<{path}>");
            if dsn {
                if !r.notify.is_empty() {
                    c.push_str(&format!(" NOTIFY={}", r.notify.to_string().to_uppercase()));
                }
                if let Some(o) = &r.orcpt {
                    c.push_str(&format!(" ORCPT=rfc822;{}", xtext(o)));
                }
            }
            c
        })
        .collect()
}

/// xtext (RFC 3461 §4): `+HH` for `+`, `=`, and bytes outside 33..=126.
pub(crate) fn xtext(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// What the replies mean for each recipient `idxs[k]`.
fn interpret(
    replies: &TransactionReplies,
    idxs: &[usize],
    (host, where_): (&str, &str),
    channel: &Channel,
    req: &Requirement,
) -> Vec<(usize, RcptResult)> {
    let judge = |r: &Reply, what: &str| -> Option<RcptResult> {
        if r.is_ok() {
            None
        } else if r.is_permanent() {
            Some(RcptResult::Failed {
                status: r
                    .enhanced()
                    .and_then(|s| EnhancedStatus::parse(&s))
                    .unwrap_or(EnhancedStatus::PERMANENT),
                reason: format!("{where_} refused the {what}: {}", r.one_line()),
                remote: Some(host.to_string()),
                diagnostic: Some(r.one_line()),
            })
        } else {
            Some(RcptResult::Deferred {
                reason: format!("{where_} deferred the {what}: {}", r.one_line()),
            })
        }
    };
    let mail = replies.mail.as_ref().expect("MAIL always has a reply");
    if let Some(o) = judge(mail, "sender") {
        return idxs.iter().map(|&i| (i, o.clone())).collect();
    }
    let mut results = Vec::new();
    let mut accepted = Vec::new();
    for (&i, r) in idxs.iter().zip(&replies.rcpts) {
        match judge(r, "recipient") {
            Some(o) => results.push((i, o)),
            None => accepted.push(i),
        }
    }
    if !accepted.is_empty() {
        let o = match &replies.data {
            Some(r) if r.is_ok() && replies.data_sent => RcptResult::Delivered {
                host: host.to_string(),
                mechanism: req.mechanism,
                reply: r.one_line(),
                channel: channel.clone(),
            },
            Some(r) => judge(r, "message").unwrap_or_else(|| RcptResult::Deferred {
                reason: format!("{where_} accepted DATA but the message was not sent"),
            }),
            None => RcptResult::Deferred {
                reason: format!("{where_} gave no reply to the message"),
            },
        };
        results.extend(accepted.into_iter().map(|i| (i, o.clone())));
    }
    results
}

/// For `crate::fuzzing`: `reply` as the answer to MAIL, one RCPT and the data.
pub(crate) fn fuzz_interpret(reply: &Reply) {
    let replies = TransactionReplies {
        mail: Some(reply.clone()),
        rcpts: vec![reply.clone()],
        data: Some(reply.clone()),
        data_sent: true,
    };
    let req = Requirement {
        host: "mx.fuzz.example".into(),
        sni: "mx.fuzz.example".into(),
        check: crate::policy::PeerCheck::WebPki,
        mechanism: crate::model::mechanism::Mechanism::Verify,
        waiver: None,
        policy: crate::model::rfc8460::PolicyType::NoPolicyFound,
        tls13_only: false,
    };
    let results = interpret(
        &replies,
        &[0],
        (&req.host, "mx.fuzz.example"),
        &Channel::default(),
        &req,
    );
    assert_eq!(results.len(), 1);
}

/// The log line of a transaction.
fn log_transaction(
    job: &Job<'_>,
    session: &Session,
    req: &Requirement,
    reused: bool,
    replies: &TransactionReplies,
    results: &[(usize, RcptResult)],
) {
    let delivered = results
        .iter()
        .filter(|(_, o)| matches!(o, RcptResult::Delivered { .. }))
        .count();
    tracing::info!(
        id = %job.env.id,
        domain = %job.domain,
        host = %session.host,
        addr = %session.addr,
        tls = %req.auth_label(),
        version = %session.tls_version,
        cipher = %session.tls_cipher,
        reused,
        delivered,
        of = job.idxs.len(),
        result = %replies.data.as_ref().or(replies.mail.as_ref()).map(Reply::one_line).unwrap_or_default(),
        "attempt"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mechanism::Mechanism;
    use crate::model::rfc8460::PolicyType;
    use crate::policy::PeerCheck;

    fn reply(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.to_string()],
        }
    }

    fn req() -> Requirement {
        Requirement {
            host: "mx.test".into(),
            sni: "mx.test".into(),
            check: PeerCheck::WebPki,
            mechanism: Mechanism::Verify,
            waiver: None,
            policy: PolicyType::NoPolicyFound,
            tls13_only: false,
        }
    }

    #[test]
    fn paths_are_quoted_or_refused() {
        let cases = [
            ("", Some("")),
            ("a@b.test", Some("a@b.test")),
            (
                "x> ORCPT=rfc822;y@a.test",
                Some("\"x> ORCPT=rfc822;y\"@a.test"),
            ),
            ("a\"b@c.test", Some("\"a\\\"b\"@c.test")),
            ("a\0b@c.test", None),
            ("a\r\nRSET@c.test", None),
            ("nodomain", None),
        ];
        for (stored, want) in cases {
            assert_eq!(smtp_path(stored).as_deref(), want, "{stored:?}");
        }
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("a+b=c d@x"), "a+2Bb+3Dc+20d@x");
        assert_eq!(xtext("plain"), "plain");
    }

    /// Short names for the results: D delivered, F<status> failed, T deferred.
    fn short(results: &[(usize, RcptResult)]) -> String {
        let one = |(i, r): &(usize, RcptResult)| match r {
            RcptResult::Delivered { .. } => format!("{i}:D"),
            RcptResult::Failed { status, .. } => format!("{i}:F{status}"),
            RcptResult::Deferred { .. } => format!("{i}:T"),
        };
        results.iter().map(one).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn replies_table() {
        let ok = reply(250, "2.0.0 ok");
        // (MAIL reply, RCPT replies, DATA reply, data sent, results)
        type Case = (Reply, Vec<Reply>, Option<Reply>, bool, &'static str);
        let cases: Vec<Case> = vec![
            (
                ok.clone(),
                vec![ok.clone(), ok.clone()],
                Some(ok.clone()),
                true,
                "0:D 1:D",
            ),
            (
                reply(550, "5.7.1 no"),
                vec![],
                None,
                false,
                "0:F5.7.1 1:F5.7.1",
            ),
            (reply(451, "later"), vec![], None, false, "0:T 1:T"),
            (
                ok.clone(),
                vec![reply(550, "5.1.1 unknown"), ok.clone()],
                Some(ok.clone()),
                true,
                "0:F5.1.1 1:D",
            ),
            (
                ok.clone(),
                vec![reply(452, "4.2.2 full"), ok.clone()],
                Some(reply(554, "no")),
                true,
                "0:T 1:F5.0.0",
            ),
            (
                ok.clone(),
                vec![ok.clone(), ok.clone()],
                Some(reply(451, "4.3.0 try")),
                true,
                "0:T 1:T",
            ),
            (
                ok.clone(),
                vec![ok.clone(), ok.clone()],
                None,
                true,
                "0:T 1:T",
            ),
            (
                ok.clone(),
                vec![reply(550, "x"), reply(550, "y")],
                None,
                false,
                "0:F5.0.0 1:F5.0.0",
            ),
        ];
        for (mail, rcpts, data, data_sent, want) in cases {
            let replies = TransactionReplies {
                mail: Some(mail),
                rcpts,
                data,
                data_sent,
            };
            let got = interpret(
                &replies,
                &[0, 1],
                ("mx.test", "mx.test[192.0.2.1]"),
                &Channel::default(),
                &req(),
            );
            assert_eq!(short(&got), want);
        }
    }
}
