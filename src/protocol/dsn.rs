//! Delivery status notifications (RFC 3464 in a RFC 6522 multipart/report):
//! failure notices and delay notices that say, per recipient and per host, why.

use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

use crate::spool::{DsnRet, Envelope};

/// Whether the DSN reports failures or delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The recipients failed permanently.
    Failure,
    /// The recipients are still queued.
    Delay,
}

/// One recipient's line in a DSN.
#[derive(Debug, Clone)]
pub struct RecipientStatus {
    /// The recipient address.
    pub address: String,
    /// ORCPT, if the client gave one.
    pub orcpt: Option<String>,
    /// Enhanced status code, e.g. `5.7.10` or `4.4.1`.
    pub status: String,
    /// The MX host whose reply decided it, if any.
    pub remote_mta: Option<String>,
    /// The server's reply (`smtp;` diagnostic), if any.
    pub diagnostic: Option<String>,
    /// Plain words: what happened on each host.
    pub reason: String,
}

/// Whether a recipient's NOTIFY asks for this kind of DSN (RFC 3461 §4.1;
/// no NOTIFY means failures and delays).
pub fn wanted(notify: &[String], kind: Kind) -> bool {
    if notify.iter().any(|n| n == "never") {
        return false;
    }
    if notify.is_empty() {
        return true;
    }
    let word = match kind {
        Kind::Failure => "failure",
        Kind::Delay => "delay",
    };
    notify.iter().any(|n| n == word)
}

/// Builds the DSN message (headers and body, CRLF) to the envelope sender.
pub fn build(
    reporting_mta: &str,
    env: &Envelope,
    original: &[u8],
    kind: Kind,
    recipients: &[RecipientStatus],
) -> Vec<u8> {
    let subject = match kind {
        Kind::Failure => "Undelivered Mail Returned to Sender",
        Kind::Delay => "Delayed Mail (still being retried)",
    };
    let arrival = chrono::DateTime::from_timestamp(env.received_at, 0)
        .unwrap_or_default()
        .to_rfc2822();
    let now = chrono::Utc::now().to_rfc2822();

    let mut human = String::new();
    match kind {
        Kind::Failure => human.push_str(&format!(
            "This is the mail relay at {reporting_mta}.\r\n\r\nYour message could not be delivered to the recipients below.\r\ntlsrelay delivers only over authenticated TLS; it never falls back to plaintext\r\nor to an unauthenticated connection.\r\n\r\n"
        )),
        Kind::Delay => human.push_str(&format!(
            "This is the mail relay at {reporting_mta}.\r\n\r\nYour message has not yet been delivered to the recipients below.\r\nIt stays queued and will be retried; no action is needed from you.\r\n\r\n"
        )),
    }
    for r in recipients {
        human.push_str(&format!(
            "<{}>: {}\r\n",
            r.address,
            r.reason.replace('\n', "\r\n    ")
        ));
        if let Some(d) = &r.diagnostic {
            human.push_str(&format!("    The server said: {d}\r\n"));
        }
        human.push_str("\r\n");
    }

    let mut status = format!("Reporting-MTA: dns; {reporting_mta}\r\n");
    if let Some(envid) = &env.envid {
        status.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    status.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for r in recipients {
        status.push_str("\r\n");
        if let Some(o) = &r.orcpt {
            status.push_str(&format!("Original-Recipient: rfc822; {o}\r\n"));
        }
        let action = match kind {
            Kind::Failure => "failed",
            Kind::Delay => "delayed",
        };
        status.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\n",
            r.address, r.status
        ));
        if let Some(m) = &r.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {m}\r\n"));
        }
        match &r.diagnostic {
            Some(d) => status.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", single_line(d))),
            None => status.push_str(&format!(
                "Diagnostic-Code: X-tlsrelay; {}\r\n",
                single_line(&r.reason)
            )),
        }
        status.push_str(&format!("Last-Attempt-Date: {now}\r\n"));
        if kind == Kind::Delay {
            status.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                chrono::DateTime::from_timestamp(env.next_attempt.max(env.received_at), 0)
                    .unwrap_or_default()
                    .to_rfc2822()
            ));
        }
    }

    // RFC 8689 §4.4: a REQUIRETLS message comes back as headers only.
    let returned = match env.ret {
        Some(DsnRet::Full) if !env.requiretls => MimePart::new("message/rfc822", original.to_vec()),
        _ => MimePart::new("text/rfc822-headers", header_section(original).to_vec()),
    };
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new("message/delivery-status", status.into_bytes()).transfer_encoding("7bit"),
            returned,
        ],
    );
    MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{reporting_mta}"),
        ))
        .to(env.sender.clone())
        .subject(subject)
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

fn single_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The message's header section (up to and including the blank line).
fn header_section(msg: &[u8]) -> &[u8] {
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &msg[..p + 4],
        None => msg,
    }
}

/// The envelope of a DSN about `env`: from the null sender to `env`'s sender.
pub fn notice_envelope(env: &Envelope, hostname: &str, size: u64) -> Envelope {
    use crate::spool::{BodyType, ClientInfo, RcptState, Recipient};
    let now = crate::spool::now_unix();
    Envelope {
        id: crate::spool::new_queue_id(),
        received_at: now,
        client: ClientInfo {
            addr: "local".into(),
            helo: hostname.to_string(),
            tls: None,
            auth_user: None,
        },
        sender: String::new(),
        size,
        body: BodyType::EightBitMime,
        // The notice needs SMTPUTF8 only to reach a non-ASCII sender address.
        smtputf8: !env.sender.is_ascii(),
        // RFC 8689 §4.4: a notice about a REQUIRETLS message is sent with REQUIRETLS.
        requiretls: env.requiretls,
        tls_required_no: false,
        tls_report: false,
        ret: None,
        envid: None,
        recipients: vec![Recipient {
            address: env.sender.clone(),
            notify: vec![],
            orcpt: None,
            state: RcptState::Queued,
            last_reason: None,
            status: None,
        }],
        attempts: 0,
        next_attempt: now,
        delay_notice_sent: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases = [
            (s(&[]), Kind::Failure, true),
            (s(&[]), Kind::Delay, true),
            (s(&["never"]), Kind::Failure, false),
            (s(&["success"]), Kind::Failure, false),
            (s(&["failure"]), Kind::Failure, true),
            (s(&["failure"]), Kind::Delay, false),
            (s(&["delay", "success"]), Kind::Delay, true),
        ];
        for (notify, kind, want) in cases {
            assert_eq!(wanted(&notify, kind), want, "{notify:?} {kind:?}");
        }
    }
}
