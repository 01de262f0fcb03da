//! Delivery status notifications (RFC 3464 in a RFC 6522 multipart/report):
//! failure notices and delay notices that say, per recipient and per host, why.
//!
//! Values from the envelope (ENVID, ORCPT, addresses, replies) are written into
//! fields only through [`field_value`], so no line break or other control
//! character from them reaches the notice: whatever the spool holds cannot add
//! fields, blank lines or MIME boundaries.

use std::borrow::Cow;

use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

use crate::model::notify::Notify;
use crate::spool::{DsnRet, Envelope};

pub use crate::model::dsn::{wanted, Kind, RecipientStatus};

/// Builds the DSN message (headers and body, CRLF) to the envelope sender.
/// `retry_until` (Unix seconds) is when retries stop: a delay notice states it
/// as `Will-Retry-Until` (RFC 3464 §2.3.9).
pub fn build(
    reporting_mta: &str,
    env: &Envelope,
    original: &[u8],
    kind: Kind,
    recipients: &[RecipientStatus],
    retry_until: i64,
) -> Vec<u8> {
    let subject = match kind {
        Kind::Failure => "Undelivered Mail Returned to Sender",
        Kind::Delay => "Delayed Mail (still being retried)",
    };
    let status = delivery_status(reporting_mta, env, kind, recipients, retry_until);
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human_part(reporting_mta, kind, recipients)),
            MimePart::new("message/delivery-status", status.into_bytes()).transfer_encoding("7bit"),
            returned_part(env, original),
        ],
    );
    MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{reporting_mta}"),
        ))
        .to(field_value(&env.sender).into_owned())
        .subject(subject)
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        // Writing into a Vec cannot fail.
        .unwrap_or_default()
}

/// The text/plain part: what happened, in words, per recipient.
fn human_part(reporting_mta: &str, kind: Kind, recipients: &[RecipientStatus]) -> String {
    let mut human = match kind {
        Kind::Failure => format!(
            "This is the mail relay at {reporting_mta}.\r\n\r\nYour message could not be delivered to the recipients below.\r\ntlsrelay delivers only over authenticated TLS; it never falls back to plaintext\r\nor to an unauthenticated connection.\r\n\r\n"
        ),
        Kind::Delay => format!(
            "This is the mail relay at {reporting_mta}.\r\n\r\nYour message has not yet been delivered to the recipients below.\r\nIt stays queued and will be retried; no action is needed from you.\r\n\r\n"
        ),
    };
    for r in recipients {
        let reason: Vec<Cow<str>> = r.reason.lines().map(field_value).collect();
        human.push_str(&format!(
            "<{}>: {}\r\n",
            field_value(&r.address),
            reason.join("\r\n    ")
        ));
        if let Some(d) = &r.diagnostic {
            human.push_str(&format!("    The server said: {}\r\n", single_line(d)));
        }
        human.push_str("\r\n");
    }
    human
}

/// The message/delivery-status part (RFC 3464 §2): per-message fields, then
/// one block per recipient.
fn delivery_status(
    reporting_mta: &str,
    env: &Envelope,
    kind: Kind,
    recipients: &[RecipientStatus],
    retry_until: i64,
) -> String {
    let mut status = format!("Reporting-MTA: dns; {}\r\n", field_value(reporting_mta));
    if let Some(envid) = &env.envid {
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", field_value(envid)));
    }
    status.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(env.received_at)
    ));
    let now = chrono::Utc::now().to_rfc2822();
    for r in recipients {
        status.push_str("\r\n");
        status.push_str(&recipient_fields(r, kind, &now, retry_until));
    }
    status
}

/// The per-recipient fields of the delivery-status part.
fn recipient_fields(r: &RecipientStatus, kind: Kind, now: &str, retry_until: i64) -> String {
    let mut f = String::new();
    if let Some(o) = &r.orcpt {
        f.push_str(&format!(
            "Original-Recipient: rfc822; {}\r\n",
            field_value(o)
        ));
    }
    let action = match kind {
        Kind::Failure => "failed",
        Kind::Delay => "delayed",
    };
    f.push_str(&format!(
        "Final-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\n",
        field_value(&r.address),
        field_value(&r.status)
    ));
    if let Some(m) = &r.remote_mta {
        f.push_str(&format!("Remote-MTA: dns; {}\r\n", field_value(m)));
    }
    match &r.diagnostic {
        Some(d) => f.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", single_line(d))),
        None => f.push_str(&format!(
            "Diagnostic-Code: X-tlsrelay; {}\r\n",
            single_line(&r.reason)
        )),
    }
    f.push_str(&format!("Last-Attempt-Date: {now}\r\n"));
    if kind == Kind::Delay {
        f.push_str(&format!(
            "Will-Retry-Until: {}\r\n",
            rfc5322_date(retry_until)
        ));
    }
    f
}

/// The returned message: RFC 8689 §4.4 has a REQUIRETLS message come back as headers only.
fn returned_part<'x>(env: &Envelope, original: &'x [u8]) -> MimePart<'x> {
    match env.ret {
        Some(DsnRet::Full) if !env.requiretls => MimePart::new("message/rfc822", original),
        _ => MimePart::new("text/rfc822-headers", header_section(original)),
    }
}

/// A Unix time as an RFC 5322 date-time.
fn rfc5322_date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

/// Folds a reply onto one line (whitespace runs become one space), then makes
/// it a safe field value.
fn single_line(s: &str) -> String {
    field_value(&s.split_whitespace().collect::<Vec<_>>().join(" ")).into_owned()
}

/// A value as it may appear in a header field: each control character
/// (CR and LF above all) is written as xtext's `+HH` for each of its bytes, so
/// the value stays readable and can never end the field or the header section.
pub fn field_value(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("+{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
    Envelope {
        body: crate::spool::BodyType::EightBitMime,
        // The notice needs SMTPUTF8 only to reach a non-ASCII sender address.
        smtputf8: !env.sender.is_ascii(),
        // RFC 8689 §4.4: a notice about a REQUIRETLS message is sent with REQUIRETLS.
        requiretls: env.requiretls,
        ..Envelope::generated(hostname, "", &env.sender, Notify::default(), size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules() {
        let none = Notify::default();
        let cases = [
            (none, Kind::Failure, true),
            (none, Kind::Delay, true),
            (Notify::NEVER, Kind::Failure, false),
            (Notify::SUCCESS, Kind::Failure, false),
            (Notify::FAILURE, Kind::Failure, true),
            (Notify::FAILURE, Kind::Delay, false),
            (Notify::DELAY | Notify::SUCCESS, Kind::Delay, true),
        ];
        for (notify, kind, want) in cases {
            assert_eq!(wanted(&notify, kind), want, "{notify:?} {kind:?}");
        }
    }

    fn envelope(received_at: i64, next_attempt: i64) -> Envelope {
        use crate::spool::{BodyType, ClientInfo};
        Envelope {
            id: "AAAA0001".into(),
            received_at,
            client: ClientInfo::default(),
            sender: "alice@example.org".into(),
            size: 30,
            body: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
            tls_report: false,
            ret: None,
            envid: None,
            message_id: None,
            recipients: vec![],
            attempts: 3,
            next_attempt,
            delay_notice_sent: false,
            pending_dsns: vec![],
            held: false,
        }
    }

    fn line(reason: &str) -> RecipientStatus {
        RecipientStatus {
            address: "bob@example.net".into(),
            orcpt: None,
            status: "4.4.7".into(),
            remote_mta: None,
            diagnostic: None,
            reason: reason.into(),
        }
    }

    /// The value of the first `name:` field of the delivery-status part.
    fn field(dsn: &[u8], name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(dsn);
        text.split("\r\n")
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    }

    #[test]
    fn will_retry_until_is_arrival_plus_queue_lifetime() {
        let t0 = 1_767_225_600; // Thu, 1 Jan 2026 00:00:00 UTC
        let day = 86_400;
        // (queue lifetime, Will-Retry-Until); the next attempt is an hour away each time.
        let cases = [
            (5 * day, "Tue, 6 Jan 2026 00:00:00 +0000"),
            (day + 90 * 60, "Fri, 2 Jan 2026 01:30:00 +0000"),
            (40 * day, "Tue, 10 Feb 2026 00:00:00 +0000"),
        ];
        for (lifetime, want) in cases {
            let env = envelope(t0, t0 + 7 * day + 3600);
            let until = env.retry_until(std::time::Duration::from_secs(lifetime as u64));
            let dsn = build(
                "relay.test",
                &env,
                b"Subject: x\r\n\r\nbody\r\n",
                Kind::Delay,
                &[line("no STARTTLS")],
                until,
            );
            assert_eq!(
                field(&dsn, "Will-Retry-Until").as_deref(),
                Some(want),
                "{lifetime}"
            );
            assert_eq!(
                field(&dsn, "Arrival-Date").as_deref(),
                Some("Thu, 1 Jan 2026 00:00:00 +0000")
            );
            assert_eq!(field(&dsn, "Action").as_deref(), Some("delayed"));
        }
    }

    #[test]
    fn envelope_values_cannot_add_lines_to_the_notice() {
        let mut env = envelope(1_767_225_600, 0);
        env.envid = Some("ENV\r\nX-Injected: yes\r\n\r\n--fake".into());
        let mut l = line("no\r\nX-Reason-Injected: yes");
        l.address = "bob@example.net\nX-Addr-Injected: yes".into();
        l.orcpt = Some("bob\r\nX-Orcpt-Injected: yes".into());
        l.remote_mta = Some("mx\rX-Mta-Injected: yes".into());
        let dsn = build(
            "relay.test",
            &env,
            b"Subject: x\r\n\r\n",
            Kind::Failure,
            &[l],
            0,
        );
        let text = String::from_utf8(dsn).unwrap();
        for line in text.split(['\r', '\n']) {
            assert!(
                !line.starts_with("X-") && !line.starts_with("--fake"),
                "{line:?} in\n{text}"
            );
        }
        assert_eq!(
            field(text.as_bytes(), "Original-Envelope-Id").as_deref(),
            Some("ENV+0D+0AX-Injected: yes+0D+0A+0D+0A--fake")
        );
        assert_eq!(field_value("plain <a@b>"), "plain <a@b>");
        assert_eq!(field_value("a\u{1b}[2J\u{85}"), "a+1B[2J+C2+85");
    }

    #[test]
    fn failure_notice_has_no_retry_time_and_returns_headers_unless_full() {
        // RFC 8689 §4.4: REQUIRETLS messages come back as headers even with RET=FULL.
        let mut env = envelope(1_767_225_600, 0);
        let original = b"Subject: x\r\n\r\nsecret body\r\n";
        let cases = [
            (None, false, false),
            (Some(DsnRet::Hdrs), false, false),
            (Some(DsnRet::Full), false, true),
            (Some(DsnRet::Full), true, false),
        ];
        for (ret, requiretls, body_returned) in cases {
            env.ret = ret;
            env.requiretls = requiretls;
            let mut l = line("mx.example.net said 550");
            l.status = "5.1.1".into();
            l.diagnostic = Some("550 5.1.1 no\r\n such user".into());
            let dsn = build("relay.test", &env, original, Kind::Failure, &[l], 0);
            assert_eq!(field(&dsn, "Will-Retry-Until"), None);
            assert_eq!(field(&dsn, "Action").as_deref(), Some("failed"));
            assert_eq!(field(&dsn, "Status").as_deref(), Some("5.1.1"));
            assert_eq!(
                field(&dsn, "Diagnostic-Code").as_deref(),
                Some("smtp; 550 5.1.1 no such user")
            );
            let text = String::from_utf8_lossy(&dsn);
            let (whole, headers) = (
                text.contains("Content-Type: message/rfc822\r\n"),
                text.contains("Content-Type: text/rfc822-headers\r\n"),
            );
            assert_eq!(
                (whole, headers),
                (body_returned, !body_returned),
                "{ret:?} {requiretls}"
            );
        }
    }
}
