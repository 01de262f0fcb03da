//! The envelope of a queued message and its life cycle: each recipient's
//! result, expiry, delay notices and the next attempt, as pure methods.
//!
//! The serde form of these types is the spool's on-disk format: fields may be
//! added with `#[serde(default)]`, never renamed or retyped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::HumanDuration;
use crate::model::dsn::{self, RecipientStatus};
use crate::model::notify::Notify;
use crate::model::rcpt::RcptResult;
use crate::model::status::EnhancedStatus;

/// The envelope of one queued message and the state of each recipient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// Queue id (also the file name).
    pub id: String,
    /// When the message was accepted (Unix seconds).
    pub received_at: i64,
    /// Who handed the message to us.
    pub client: ClientInfo,
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// Size of the stored message in bytes (with our Received header).
    pub size: u64,
    /// The BODY parameter given with MAIL.
    pub body: BodyType,
    /// Whether MAIL carried SMTPUTF8.
    pub smtputf8: bool,
    /// Whether MAIL carried REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// Whether the header section has `TLS-Required: No` (RFC 8689 §5).
    #[serde(default)]
    pub tls_required_no: bool,
    /// Whether this is a TLS report of ours (RFC 8460): not reported on, and sent
    /// with TLS but relaxed authentication.
    #[serde(default)]
    pub tls_report: bool,
    /// DSN RET parameter (RFC 3461).
    pub ret: Option<DsnRet>,
    /// DSN ENVID parameter, decoded from xtext.
    pub envid: Option<String>,
    /// The message's Message-ID (without angle brackets), so that log lines and
    /// queue tools can name it as the sender's helpdesk knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The recipients, each with its own delivery state.
    pub recipients: Vec<Recipient>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (Unix seconds).
    pub next_attempt: i64,
    /// Whether a delay notice has been sent.
    pub delay_notice_sent: bool,
    /// Notices owed to the sender and not yet stored (the spool could not be
    /// written): the message stays queued until they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_dsns: Vec<PendingDsn>,
    /// Put on hold by the operator (`queue hold`): never attempted, and so never
    /// expired, until released. Absent in envelopes written before holds existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// A DSN that is owed to the sender but not yet stored as a message of its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingDsn {
    /// Failure or delay.
    pub kind: dsn::Kind,
    /// The recipients it reports on.
    pub recipients: Vec<RecipientStatus>,
}

/// Facts about the SMTP client that submitted a message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ClientInfo {
    /// Client IP address and port.
    pub addr: String,
    /// The name given in EHLO/HELO.
    pub helo: String,
    /// TLS version and cipher, when the session was encrypted.
    pub tls: Option<String>,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
}

/// BODY parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    /// No BODY parameter, or BODY=7BIT.
    #[default]
    SevenBit,
    /// BODY=8BITMIME.
    EightBitMime,
}

/// RET parameter of MAIL (RFC 3461): how much of the message a DSN returns.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DsnRet {
    /// Return the whole message.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// One recipient and where its delivery stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recipient {
    /// The forward-path.
    pub address: String,
    /// DSN NOTIFY conditions; empty when not given.
    pub notify: Notify,
    /// DSN ORCPT address (the `rfc822;` type is implied).
    pub orcpt: Option<String>,
    /// Delivery state.
    pub state: RcptState,
    /// The last reason this recipient is not yet delivered (or why it failed).
    pub last_reason: Option<String>,
    /// The SMTP reply or status that settled the recipient, if any.
    pub status: Option<String>,
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    /// Waiting for (another) delivery attempt.
    Queued,
    /// Accepted by the receiving server.
    Delivered,
    /// Permanently failed; a DSN was or will be sent.
    Failed,
}

/// Seconds as the signed Unix times of an envelope use them.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Envelope {
    /// A message tlsrelay writes itself (a DSN, a TLS report) to one recipient,
    /// due at once; the caller sets the flags that differ.
    pub fn generated(
        hostname: &str,
        sender: &str,
        to: &str,
        notify: Notify,
        size: u64,
    ) -> Envelope {
        let now = super::now_unix();
        Envelope {
            id: super::new_queue_id(),
            received_at: now,
            client: ClientInfo {
                addr: "local".into(),
                helo: hostname.to_string(),
                tls: None,
                auth_user: None,
            },
            sender: sender.to_string(),
            size,
            body: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
            tls_report: false,
            ret: None,
            envid: None,
            message_id: None,
            recipients: vec![Recipient {
                address: to.to_string(),
                notify,
                orcpt: None,
                state: RcptState::Queued,
                last_reason: None,
                status: None,
            }],
            attempts: 0,
            next_attempt: now,
            delay_notice_sent: false,
            pending_dsns: vec![],
            held: false,
        }
    }

    /// Recipients still waiting for delivery.
    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Queued)
    }

    /// Whether no recipient is waiting any more.
    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }

    /// Whether the message can leave the queue: no recipient waits and every
    /// notice owed to the sender is stored.
    pub fn is_done(&self) -> bool {
        self.is_finished() && self.pending_dsns.is_empty()
    }

    /// Records that a notice of `kind` about `lines` is owed to the sender
    /// (never to the null sender), joining an owed notice of the same kind.
    pub fn owe(&mut self, kind: dsn::Kind, lines: Vec<RecipientStatus>) {
        if lines.is_empty() || self.sender.is_empty() {
            return;
        }
        match self.pending_dsns.iter_mut().find(|p| p.kind == kind) {
            Some(p) => p.recipients.extend(lines),
            None => self.pending_dsns.push(PendingDsn {
                kind,
                recipients: lines,
            }),
        }
    }

    /// When retries stop (Unix seconds): arrival plus the queue lifetime.
    pub fn retry_until(&self, lifetime: Duration) -> i64 {
        self.received_at.saturating_add(secs(lifetime))
    }

    /// Records recipient `i`'s result of one attempt; returns its DSN line when
    /// it failed and its NOTIFY asks for failure notices.
    pub fn apply(&mut self, i: usize, result: &RcptResult) -> Option<RecipientStatus> {
        match result {
            RcptResult::Delivered { host, reply, .. } => {
                let r = &mut self.recipients[i];
                r.state = RcptState::Delivered;
                r.status = Some(reply.clone());
                r.last_reason = Some(format!("delivered to {host}"));
                None
            }
            RcptResult::Failed {
                status,
                reason,
                remote,
                diagnostic,
            } => self.fail(
                i,
                *status,
                reason.clone(),
                remote.clone(),
                diagnostic.clone(),
            ),
            RcptResult::Deferred { reason } => {
                self.recipients[i].last_reason = Some(reason.clone());
                None
            }
        }
    }

    /// Fails recipient `i` for good; returns its DSN line when its NOTIFY asks
    /// for failure notices.
    pub fn fail(
        &mut self,
        i: usize,
        status: EnhancedStatus,
        reason: String,
        remote: Option<String>,
        diagnostic: Option<String>,
    ) -> Option<RecipientStatus> {
        let r = &mut self.recipients[i];
        r.state = RcptState::Failed;
        r.status = Some(status.to_string());
        r.last_reason = Some(reason.clone());
        dsn::wanted(&r.notify, dsn::Kind::Failure).then(|| RecipientStatus {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            status: status.to_string(),
            remote_mta: remote,
            diagnostic,
            reason,
        })
    }

    /// Once the message has been queued for `lifetime`, fails every pending
    /// recipient (5.4.7); returns the DSN lines their NOTIFY asks for.
    pub fn expire(&mut self, now: i64, lifetime: Duration) -> Vec<RecipientStatus> {
        if now.saturating_sub(self.received_at) < secs(lifetime) {
            return vec![];
        }
        let pending: Vec<usize> = (0..self.recipients.len())
            .filter(|&i| self.recipients[i].state == RcptState::Queued)
            .collect();
        let mut lines = Vec::new();
        for i in pending {
            let reason = format!(
                "gave up after {} in the queue ({} attempts); last attempt: {}",
                HumanDuration(lifetime),
                self.attempts,
                self.recipients[i]
                    .last_reason
                    .as_deref()
                    .unwrap_or("no attempt completed")
            );
            lines.extend(self.fail(i, EnhancedStatus::EXPIRED, reason, None, None));
        }
        lines
    }

    /// When a delay notice is due (recipients pending, none sent yet, `after`
    /// above zero and elapsed since arrival), marks it sent and returns the
    /// 4.4.7 lines of the recipients whose NOTIFY asks for delay notices.
    pub fn delay_notice_due(&mut self, now: i64, after: Duration) -> Vec<RecipientStatus> {
        if self.is_finished()
            || self.delay_notice_sent
            || after.is_zero()
            || now.saturating_sub(self.received_at) < secs(after)
        {
            return vec![];
        }
        self.delay_notice_sent = true;
        self.pending()
            .filter(|r| dsn::wanted(&r.notify, dsn::Kind::Delay))
            .map(|r| RecipientStatus {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                status: EnhancedStatus::DELAYED.to_string(),
                remote_mta: None,
                diagnostic: None,
                reason: r.last_reason.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// Sets the next attempt after `attempts` attempts: the schedule's step for
    /// that many (its last step repeats), counted from `now`.
    pub fn schedule_next(&mut self, now: i64, schedule: &[Duration]) {
        let last = schedule.len().saturating_sub(1);
        let step = (self.attempts as usize).saturating_sub(1).min(last);
        let delay = schedule.get(step).copied().unwrap_or_default();
        self.next_attempt = now.saturating_add(secs(delay));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mechanism::Mechanism;

    const T0: i64 = 1_767_225_600; // 2026-01-01 00:00:00 UTC

    fn rcpt(address: &str, notify: Notify, state: RcptState, last: Option<&str>) -> Recipient {
        Recipient {
            address: address.into(),
            notify,
            orcpt: Some(format!("orig-{address}")),
            state,
            last_reason: last.map(str::to_string),
            status: None,
        }
    }

    fn envelope(recipients: Vec<Recipient>) -> Envelope {
        Envelope {
            id: "AAAA0001".into(),
            received_at: T0,
            client: ClientInfo::default(),
            sender: "a@example.org".into(),
            size: 5,
            body: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
            tls_report: false,
            ret: None,
            envid: None,
            message_id: None,
            recipients,
            attempts: 0,
            next_attempt: T0,
            delay_notice_sent: false,
            pending_dsns: vec![],
            held: false,
        }
    }

    fn one(notify: Notify) -> Envelope {
        envelope(vec![rcpt("b@example.net", notify, RcptState::Queued, None)])
    }

    fn failed(status: EnhancedStatus) -> RcptResult {
        RcptResult::Failed {
            status,
            reason: "mx.example.net said no".into(),
            remote: Some("mx.example.net".into()),
            diagnostic: Some("550 5.1.1 no such user".into()),
        }
    }

    #[test]
    fn apply_records_each_result() {
        let delivered = RcptResult::Delivered {
            host: "mx.example.net".into(),
            mechanism: Mechanism::Dane,
            reply: "250 2.0.0 Ok".into(),
            channel: Default::default(),
        };
        let deferred = RcptResult::Deferred {
            reason: "mx.example.net: no STARTTLS".into(),
        };
        let nf = Notify::NEVER;
        // (result, NOTIFY, state, status, last reason, DSN line expected)
        let cases = [
            (
                &delivered,
                Notify::default(),
                RcptState::Delivered,
                Some("250 2.0.0 Ok"),
                "delivered to mx.example.net",
                false,
            ),
            (
                &deferred,
                Notify::default(),
                RcptState::Queued,
                None,
                "mx.example.net: no STARTTLS",
                false,
            ),
            (
                &failed(EnhancedStatus::new(5, 1, 1)),
                Notify::default(),
                RcptState::Failed,
                Some("5.1.1"),
                "mx.example.net said no",
                true,
            ),
            (
                &failed(EnhancedStatus::new(5, 1, 1)),
                Notify::FAILURE | Notify::DELAY,
                RcptState::Failed,
                Some("5.1.1"),
                "mx.example.net said no",
                true,
            ),
            (
                &failed(EnhancedStatus::new(5, 7, 30)),
                nf,
                RcptState::Failed,
                Some("5.7.30"),
                "mx.example.net said no",
                false,
            ),
            (
                &failed(EnhancedStatus::new(5, 7, 30)),
                Notify::SUCCESS | Notify::DELAY,
                RcptState::Failed,
                Some("5.7.30"),
                "mx.example.net said no",
                false,
            ),
        ];
        for (result, notify, state, status, reason, dsn) in cases {
            let mut env = one(notify);
            let line = env.apply(0, result);
            let r = &env.recipients[0];
            assert_eq!(r.state, state, "{result:?} {notify}");
            assert_eq!(r.status.as_deref(), status, "{result:?}");
            assert_eq!(r.last_reason.as_deref(), Some(reason), "{result:?}");
            assert_eq!(line.is_some(), dsn, "{result:?} {notify}");
        }
    }

    #[test]
    fn failure_line_carries_the_facts() {
        let mut env = one(Notify::default());
        let line = env.apply(0, &failed(EnhancedStatus::new(5, 1, 1))).unwrap();
        assert_eq!(line.address, "b@example.net");
        assert_eq!(line.orcpt.as_deref(), Some("orig-b@example.net"));
        assert_eq!(line.status, "5.1.1");
        assert_eq!(line.remote_mta.as_deref(), Some("mx.example.net"));
        assert_eq!(line.diagnostic.as_deref(), Some("550 5.1.1 no such user"));
        assert_eq!(line.reason, "mx.example.net said no");
    }

    #[test]
    fn expire_fails_pending_recipients_after_the_lifetime() {
        let lifetime = Duration::from_secs(5 * 86400);
        let lt = secs(lifetime);
        // (seconds since arrival, recipients failed with 5.4.7, DSN lines)
        let cases = [(lt - 1, 0, 0), (lt, 2, 1), (lt + 3600, 2, 1)];
        for (age, failed_n, lines_n) in cases {
            let mut env = envelope(vec![
                rcpt(
                    "a@x.test",
                    Notify::default(),
                    RcptState::Queued,
                    Some("no MX"),
                ),
                rcpt("b@x.test", Notify::NEVER, RcptState::Queued, None),
                rcpt("c@x.test", Notify::default(), RcptState::Delivered, None),
            ]);
            env.attempts = 7;
            let lines = env.expire(T0 + age, lifetime);
            let expired = env
                .recipients
                .iter()
                .filter(|r| r.status.as_deref() == Some("5.4.7"))
                .count();
            assert_eq!((expired, lines.len()), (failed_n, lines_n), "age {age}");
            if failed_n > 0 {
                assert_eq!(env.recipients[2].state, RcptState::Delivered);
                assert!(env.is_finished());
                assert_eq!(
                    lines[0].reason,
                    "gave up after 5d in the queue (7 attempts); last attempt: no MX"
                );
                assert_eq!(lines[0].status, "5.4.7");
                assert_eq!(
                    env.recipients[1].last_reason.as_deref(),
                    Some("gave up after 5d in the queue (7 attempts); last attempt: no attempt completed")
                );
            }
        }
    }

    #[test]
    fn delay_notice_is_due_once() {
        let after = Duration::from_secs(4 * 3600);
        let a = secs(after);
        // (NOTIFY, age, already sent, after, finished, lines, marked sent)
        let cases = [
            (Notify::default(), a - 1, false, after, false, 0, false),
            (Notify::default(), a, false, after, false, 1, true),
            (Notify::DELAY, a + 5, false, after, false, 1, true),
            (Notify::FAILURE, a, false, after, false, 0, true),
            (Notify::NEVER, a, false, after, false, 0, true),
            (Notify::default(), a, true, after, false, 0, true),
            (
                Notify::default(),
                a * 9,
                false,
                Duration::ZERO,
                false,
                0,
                false,
            ),
            (Notify::default(), a, false, after, true, 0, false),
        ];
        for (notify, age, sent, after, finished, n, marked) in cases {
            let state = if finished {
                RcptState::Delivered
            } else {
                RcptState::Queued
            };
            let mut env = envelope(vec![rcpt("b@x.test", notify, state, Some("no STARTTLS"))]);
            env.delay_notice_sent = sent;
            let lines = env.delay_notice_due(T0 + age, after);
            assert_eq!(lines.len(), n, "{notify} age {age} sent {sent}");
            assert_eq!(
                env.delay_notice_sent, marked,
                "{notify} age {age} sent {sent}"
            );
            if let Some(l) = lines.first() {
                assert_eq!(l.status, "4.4.7");
                assert_eq!(l.reason, "no STARTTLS");
                assert_eq!(l.orcpt.as_deref(), Some("orig-b@x.test"));
            }
        }
    }

    #[test]
    fn schedule_next_follows_the_schedule_and_repeats_its_last_step() {
        let schedule: Vec<Duration> = [300, 900, 3600]
            .into_iter()
            .map(Duration::from_secs)
            .collect();
        let cases = [
            (0, 300),
            (1, 300),
            (2, 900),
            (3, 3600),
            (4, 3600),
            (40, 3600),
        ];
        for (attempts, step) in cases {
            let mut env = one(Notify::default());
            env.attempts = attempts;
            env.schedule_next(T0 + 10, &schedule);
            assert_eq!(
                env.next_attempt,
                T0 + 10 + step,
                "after {attempts} attempts"
            );
            assert_eq!(env.attempts, attempts);
        }
    }

    #[test]
    fn owed_notices_keep_a_finished_message_queued() {
        let mut env = one(Notify::default());
        let line = env.apply(0, &failed(EnhancedStatus::new(5, 1, 1))).unwrap();
        assert!(env.is_finished() && env.is_done());
        env.owe(dsn::Kind::Failure, vec![line.clone()]);
        env.owe(dsn::Kind::Failure, vec![line.clone()]);
        env.owe(dsn::Kind::Delay, vec![]);
        assert_eq!(env.pending_dsns.len(), 1);
        assert_eq!(env.pending_dsns[0].recipients, [line.clone(), line.clone()]);
        assert!(!env.is_done());
        // Written and read back, the owed notice is still there.
        let text = serde_json::to_string(&env).unwrap();
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back, env);
        // Nothing is owed to the null sender.
        let mut null = one(Notify::default());
        null.sender.clear();
        null.owe(dsn::Kind::Failure, vec![line]);
        assert!(null.pending_dsns.is_empty());
    }

    #[test]
    fn held_is_written_only_when_set_and_old_envelopes_read_as_not_held() {
        let mut env = one(Notify::default());
        let text = serde_json::to_string(&env).unwrap();
        assert!(!text.contains("held"), "{text}");
        assert!(!serde_json::from_str::<Envelope>(&text).unwrap().held);
        env.held = true;
        let text = serde_json::to_string(&env).unwrap();
        assert!(text.contains("\"held\":true"), "{text}");
        assert!(serde_json::from_str::<Envelope>(&text).unwrap().held);
    }

    #[test]
    fn retry_until_is_arrival_plus_lifetime() {
        let env = one(Notify::default());
        assert_eq!(env.retry_until(Duration::from_secs(86400)), T0 + 86400);
    }
}

/// Envelopes for the spool's own unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A queued message with one recipient.
    pub fn envelope(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            received_at: 1,
            client: ClientInfo::default(),
            sender: "a@example.org".into(),
            size: 5,
            body: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
            tls_report: false,
            ret: None,
            envid: None,
            message_id: None,
            recipients: vec![Recipient {
                address: "b@example.net".into(),
                notify: Default::default(),
                orcpt: None,
                state: RcptState::Queued,
                last_reason: None,
                status: None,
            }],
            attempts: 0,
            next_attempt: 0,
            delay_notice_sent: false,
            pending_dsns: vec![],
            held: false,
        }
    }
}
