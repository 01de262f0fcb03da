//! Which queued messages a `queue` command acts on: `--domain`, `--sender`,
//! `--recipient`, `--older-than`, `--reason`, combined with AND. Pure: a
//! filter and an envelope (and the time) decide, nothing else.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::HumanDuration;
use crate::model::address::Mailbox;
use crate::model::domain::Domain;
use crate::model::visible::visible;
use crate::spool::Envelope;

/// An address to match: `local@domain`, compared ignoring ASCII case; the
/// empty address is the null sender `<>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address(String);

impl Address {
    /// Reads an address as an operator types it: `a@b.example`, `<a@b.example>`,
    /// or `<>` / an empty string for the null sender.
    pub fn parse(text: &str) -> Result<Address, String> {
        let t = text.trim();
        let t = t
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(t);
        if t.is_empty() {
            return Ok(Address(String::new()));
        }
        Mailbox::from_stored(t).map_err(|e| {
            format!(
                "`{text}` is not an address ({e}); write local@domain, or <> for the null sender"
            )
        })?;
        Ok(Address(t.to_ascii_lowercase()))
    }

    /// Whether a stored address (`local@domain`, or empty) is this one.
    pub fn is(&self, stored: &str) -> bool {
        self.0.eq_ignore_ascii_case(stored)
    }
}

impl TryFrom<String> for Address {
    type Error = String;
    fn try_from(s: String) -> Result<Address, String> {
        Address::parse(&s)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// The conditions a message must meet, all of them; the empty filter takes every message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// A pending recipient in this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    /// The envelope sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Address>,
    /// A pending recipient with this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<Address>,
    /// Arrived at least this many seconds ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<u64>,
    /// A pending recipient's last reason contains this text (ASCII case ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Reads `--older-than` with the configuration's duration syntax (`30s`, `2h`, `1h30m`).
pub fn parse_age(text: &str) -> Result<u64, String> {
    text.parse::<HumanDuration>()
        .map(|d| d.get().as_secs())
        .map_err(|e| e.to_string())
}

/// Reads `--domain` (any case, U-labels allowed).
pub fn parse_domain(text: &str) -> Result<Domain, String> {
    Domain::parse(text).map_err(|e| e.to_string())
}

impl Filter {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `env` meets every condition at time `now` (Unix seconds).
    pub fn matches(&self, env: &Envelope, now: i64) -> bool {
        let pending: Vec<_> = env.pending().collect();
        let domain_ok = self.domain.as_ref().is_none_or(|d| {
            (pending.iter()).any(|r| Domain::of_address(&r.address).is_ok_and(|x| x == *d))
        });
        let sender_ok = (self.sender.as_ref()).is_none_or(|a| a.is(&env.sender));
        let rcpt_ok =
            (self.recipient.as_ref()).is_none_or(|a| pending.iter().any(|r| a.is(&r.address)));
        let age = now.saturating_sub(env.received_at);
        let age_ok = (self.older_than).is_none_or(|s| age >= i64::try_from(s).unwrap_or(i64::MAX));
        let reason_ok = self.reason.as_ref().is_none_or(|text| {
            let text = text.to_lowercase();
            (pending.iter())
                .filter_map(|r| r.last_reason.as_deref())
                .any(|why| why.to_lowercase().contains(&text))
        });
        domain_ok && sender_ok && rcpt_ok && age_ok && reason_ok
    }

    /// The filter in command-line words, for messages and logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.domain {
            parts.push(format!("--domain {d}"));
        }
        if let Some(a) = &self.sender {
            parts.push(format!("--sender {a}"));
        }
        if let Some(a) = &self.recipient {
            parts.push(format!("--recipient {a}"));
        }
        if let Some(s) = self.older_than {
            let d = HumanDuration(std::time::Duration::from_secs(s));
            parts.push(format!("--older-than {d}"));
        }
        if let Some(r) = &self.reason {
            parts.push(format!("--reason '{}'", visible(r)));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{RcptState, Recipient};

    const NOW: i64 = 1_767_225_600;

    fn rcpt(address: &str, state: RcptState, reason: Option<&str>) -> Recipient {
        Recipient {
            address: address.into(),
            notify: Default::default(),
            orcpt: None,
            state,
            last_reason: reason.map(str::to_string),
            status: None,
        }
    }

    /// From a@org.test, 3 hours old, to one pending and one delivered recipient.
    fn env() -> Envelope {
        let mut e = crate::spool::Envelope::generated(
            "relay.test",
            "A@Org.test",
            "x@y.test",
            Default::default(),
            1,
        );
        e.received_at = NOW - 3 * 3600;
        e.recipients = vec![
            rcpt(
                "Bob@Example.NET",
                RcptState::Queued,
                Some("mx.example.net: 421 4.7.0 Try Later"),
            ),
            rcpt(
                "c@done.test",
                RcptState::Delivered,
                Some("delivered to mx.done.test"),
            ),
        ];
        e
    }

    fn f() -> Filter {
        Filter::default()
    }

    #[test]
    fn each_condition_and_their_conjunction() {
        let addr = |s: &str| Some(Address::parse(s).unwrap());
        let dom = |s: &str| Some(Domain::parse(s).unwrap());
        let cases = [
            (f(), true),
            (
                Filter {
                    domain: dom("example.net"),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    domain: dom("EXAMPLE.net."),
                    ..f()
                },
                true,
            ),
            // Only pending recipients count.
            (
                Filter {
                    domain: dom("done.test"),
                    ..f()
                },
                false,
            ),
            (
                Filter {
                    domain: dom("other.test"),
                    ..f()
                },
                false,
            ),
            (
                Filter {
                    sender: addr("a@org.test"),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    sender: addr("<a@ORG.test>"),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    sender: addr("<>"),
                    ..f()
                },
                false,
            ),
            (
                Filter {
                    sender: addr("b@org.test"),
                    ..f()
                },
                false,
            ),
            (
                Filter {
                    recipient: addr("bob@example.net"),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    recipient: addr("c@done.test"),
                    ..f()
                },
                false,
            ),
            (
                Filter {
                    older_than: Some(3 * 3600),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    older_than: Some(3 * 3600 + 1),
                    ..f()
                },
                false,
            ),
            (
                Filter {
                    reason: Some("try later".into()),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    reason: Some("4.7.0".into()),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    reason: Some("delivered".into()),
                    ..f()
                },
                false,
            ),
            (
                Filter {
                    domain: dom("example.net"),
                    sender: addr("a@org.test"),
                    older_than: Some(60),
                    reason: Some("TRY".into()),
                    ..f()
                },
                true,
            ),
            (
                Filter {
                    domain: dom("example.net"),
                    sender: addr("z@org.test"),
                    ..f()
                },
                false,
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(filter.matches(&env(), NOW), want, "{}", filter.describe());
        }
    }

    #[test]
    fn the_null_sender_and_a_message_never_tried() {
        let mut e = env();
        e.sender.clear();
        e.recipients[0].last_reason = None;
        let null = Filter {
            sender: Some(Address::parse("").unwrap()),
            ..f()
        };
        assert!(null.matches(&e, NOW));
        let reason = Filter {
            reason: Some("later".into()),
            ..f()
        };
        assert!(!reason.matches(&e, NOW));
    }

    #[test]
    fn operator_input_is_checked_with_the_fix() {
        let cases: [(&str, Result<&str, &str>); 4] = [
            ("a@b.test", Ok("a@b.test")),
            (" <A@B.test> ", Ok("a@b.test")),
            ("<>", Ok("")),
            ("nobody", Err("`nobody` is not an address (address syntax error); write local@domain, or <> for the null sender")),
        ];
        for (text, want) in cases {
            let got = Address::parse(text).map(String::from);
            assert_eq!(got.as_deref().map_err(String::as_str), want, "{text}");
        }
        assert_eq!(parse_age("2h"), Ok(7200));
        assert_eq!(parse_age("1h30m"), Ok(5400));
        assert!(parse_age("2 hours").unwrap_err().contains("e.g. \"30s\""));
        assert!(parse_domain("a..b").is_err());
    }

    #[test]
    fn the_empty_filter_keeps_its_wire_form_small() {
        assert!(f().is_empty());
        assert_eq!(serde_json::to_string(&f()).unwrap(), "{}");
        let filter = Filter {
            domain: Some(Domain::parse("Example.NET").unwrap()),
            sender: Some(Address::parse("<>").unwrap()),
            older_than: Some(7200),
            ..f()
        };
        let wire = r#"{"domain":"example.net","sender":"","older_than":7200}"#;
        assert_eq!(serde_json::to_string(&filter).unwrap(), wire);
        assert_eq!(serde_json::from_str::<Filter>(wire).unwrap(), filter);
        assert_eq!(
            filter.describe(),
            "--domain example.net --sender <> --older-than 2h"
        );
    }
}
