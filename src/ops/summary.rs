//! `queue summary`: the shape of the queue, like Postfix's qshape — messages
//! and recipients per destination domain, messages by age bucket, a TOTAL row.
//! Pure: envelopes, the time and the suspensions in, a table out.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::delivery::suspend::Suspensions;
use crate::model::domain::Domain;
use crate::model::visible::visible;
use crate::spool::Envelope;

/// Upper bounds of the age buckets in minutes; the last bucket is open.
const BUCKETS: [i64; 7] = [5, 10, 20, 40, 80, 160, 320];

/// The bucket labels, `0-5m` … `320m+`.
pub fn labels() -> Vec<String> {
    let mut out = Vec::new();
    let mut low = 0;
    for high in BUCKETS {
        out.push(format!("{low}-{high}m"));
        low = high;
    }
    out.push(format!("{low}m+"));
    out
}

/// Which bucket a message of `age` seconds falls in.
fn bucket(age: i64) -> usize {
    (BUCKETS.iter())
        .position(|&high| age < high * 60)
        .unwrap_or(BUCKETS.len())
}

/// One row: a destination domain (or the total).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The recipient domain (A-label), or `TOTAL`; a recipient whose domain
    /// is no domain name is counted under its text after the `@`.
    pub domain: String,
    /// Messages with a pending recipient there.
    pub messages: usize,
    /// Pending recipients there.
    pub recipients: usize,
    /// Of the messages, those on hold.
    pub held: usize,
    /// Messages per age bucket (see [`labels`]).
    pub ages: Vec<usize>,
    /// When a suspension of the domain ends (Unix seconds), if one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_until: Option<i64>,
}

/// The whole summary, also its JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// The age bucket labels, in the order of each row's `ages`.
    pub buckets: Vec<String>,
    /// One row per domain, most messages first (then by name).
    pub rows: Vec<Row>,
    /// Every message counted once, however many domains it waits for.
    pub total: Row,
}

/// Counts `envs` at time `now`.
pub fn shape(envs: &[Envelope], now: i64, suspended: &Suspensions) -> Shape {
    let n = BUCKETS.len() + 1;
    let empty = |domain: &str| Row {
        domain: domain.to_string(),
        ages: vec![0; n],
        ..Row::default()
    };
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut total = empty("TOTAL");
    for env in envs {
        let age = bucket(now.saturating_sub(env.received_at));
        let mut seen = HashSet::new();
        for r in env.pending() {
            let name = Domain::of_address(&r.address).map_or_else(
                |_| r.address.rsplit_once('@').map_or("", |x| x.1).to_string(),
                |d| d.as_str().to_string(),
            );
            let row = rows.entry(name.clone()).or_insert_with(|| empty(&name));
            row.recipients += 1;
            total.recipients += 1;
            if seen.insert(name) {
                row.messages += 1;
                row.ages[age] += 1;
                row.held += usize::from(env.held);
            }
        }
        if !seen.is_empty() {
            total.messages += 1;
            total.ages[age] += 1;
            total.held += usize::from(env.held);
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    for row in &mut rows {
        row.suspended_until =
            (Domain::parse(&row.domain).ok()).and_then(|d| suspended.until(&d, now));
    }
    rows.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.domain.cmp(&b.domain)));
    Shape {
        buckets: labels(),
        rows,
        total,
    }
}

/// The summary as a table for people.
pub fn render(shape: &Shape) -> String {
    let mut out = String::new();
    let width = (shape.rows.iter().map(|r| r.domain.len()))
        .chain([5])
        .max()
        .unwrap_or(5)
        .min(40);
    let _ = write!(
        out,
        "{:<width$} {:>8} {:>8} {:>6}",
        "domain", "messages", "rcpts", "held"
    );
    for label in &shape.buckets {
        let _ = write!(out, " {label:>8}");
    }
    out.push('\n');
    for row in std::iter::once(&shape.total).chain(&shape.rows) {
        let name = visible(&row.domain);
        let _ = write!(
            out,
            "{name:<width$} {:>8} {:>8} {:>6}",
            row.messages, row.recipients, row.held
        );
        for n in &row.ages {
            let _ = write!(out, " {n:>8}");
        }
        if row.suspended_until.is_some() {
            out.push_str("  (suspended)");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RcptState;

    const NOW: i64 = 1_767_225_600;

    fn env(age_secs: i64, to: &[&str], held: bool) -> Envelope {
        let mut e = Envelope::generated(
            "relay.test",
            "a@org.test",
            "x@y.test",
            Default::default(),
            1,
        );
        let proto = e.recipients[0].clone();
        e.recipients = (to.iter())
            .map(|a| {
                let mut r = proto.clone();
                r.address = a.to_string();
                r
            })
            .collect();
        e.received_at = NOW - age_secs;
        e.held = held;
        e
    }

    #[test]
    fn buckets_are_half_open_and_the_last_is_open() {
        let cases = [
            (0, 0),
            (299, 0),
            (300, 1),
            (599, 1),
            (600, 2),
            (1199, 2),
            (1200, 3),
            (2400, 4),
            (4800, 5),
            (9600, 6),
            (19199, 6),
            (19200, 7),
            (10 * 86400, 7),
        ];
        for (age, want) in cases {
            assert_eq!(bucket(age), want, "{age}s");
        }
        assert_eq!(
            labels(),
            ["0-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", "160-320m", "320m+"]
        );
    }

    #[test]
    fn rows_per_domain_and_a_total_counting_each_message_once() {
        let mut delivered = env(60, &["p@b.test", "q@c.test"], false);
        delivered.recipients[1].state = RcptState::Delivered;
        let envs = [
            env(60, &["x@a.test", "y@A.test", "z@b.test"], false),
            env(400, &["x@a.test"], true),
            env(20000, &["x@b.test"], false),
            delivered,
            env(30, &["bad@ex ample"], false),
        ];
        let mut s = Suspensions::default();
        s.suspend(Domain::parse("b.test").unwrap(), NOW + 60);
        let got = shape(&envs, NOW, &s);
        // (domain, messages, recipients, held, ages, suspended)
        let want = [
            ("b.test", 3, 3, 0, [2, 0, 0, 0, 0, 0, 0, 1], true),
            ("a.test", 2, 3, 1, [1, 1, 0, 0, 0, 0, 0, 0], false),
            ("ex ample", 1, 1, 0, [1, 0, 0, 0, 0, 0, 0, 0], false),
        ];
        assert_eq!(got.rows.len(), want.len(), "{got:?}");
        for (row, (domain, m, r, h, ages, susp)) in got.rows.iter().zip(want) {
            assert_eq!(row.domain, domain);
            assert_eq!(
                (row.messages, row.recipients, row.held),
                (m, r, h),
                "{domain}"
            );
            assert_eq!(row.ages, ages, "{domain}");
            assert_eq!(row.suspended_until.is_some(), susp, "{domain}");
        }
        let t = &got.total;
        assert_eq!((t.messages, t.recipients, t.held), (5, 7, 1));
        assert_eq!(t.ages, [3, 1, 0, 0, 0, 0, 0, 1]);
        let text = render(&got);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("TOTAL") && lines[2].starts_with("b.test"),
            "{text}"
        );
        assert!(lines[2].ends_with("(suspended)"), "{text}");
    }

    #[test]
    fn an_empty_queue_has_a_zero_total() {
        let got = shape(&[], NOW, &Suspensions::default());
        assert!(got.rows.is_empty());
        assert_eq!(
            (got.total.messages, got.total.ages.iter().sum::<usize>()),
            (0, 0)
        );
    }
}
