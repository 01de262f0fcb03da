//! What `tlsrelay check` shows of a domain's local entry: the route and its
//! hop, the exception's state, and whether the entry may override what the
//! domain publishes.

use std::fmt::Write as _;

use chrono::NaiveDate;
use serde::Serialize;

use crate::model::egress::{Egress, NextHop};
use crate::policy::facts::DomainFacts;
use crate::policy::local::{ExceptionState, LocalPolicy};
use crate::policy::overrides::{self, Standing};

/// One local entry as `check` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LocalReport {
    /// Where it is written, `file:line`.
    pub entry: String,
    /// Its key (`example.com` or `.example.com`).
    pub domain: String,
    /// Its level.
    pub level: String,
    /// The route's next hop, when the entry is a `[[route]]`.
    pub route: Option<NextHop>,
    /// Its state on the day of the check.
    pub exception: ExceptionState,
    /// Its last day, if it has one.
    pub expires: Option<NaiveDate>,
    /// Owner, reason and ticket, as written.
    pub about: String,
}

impl LocalReport {
    /// The report of `p` on `today`.
    pub fn of(p: &LocalPolicy, today: NaiveDate) -> LocalReport {
        LocalReport {
            entry: p.source.clone(),
            domain: p.domain.clone(),
            level: p.level.as_str().to_string(),
            route: p.route.clone(),
            exception: p.exception.state(today),
            expires: p.exception.expires,
            about: p.exception.describe(),
        }
    }
}

/// The local part of a check report.
#[derive(Debug, Clone, Serialize)]
pub struct LocalSection {
    /// The entry in force, if any.
    pub entry: Option<LocalReport>,
    /// How it stands against the DANE or MTA-STS the domain publishes.
    pub standing: Standing,
    /// The nearest entry that no longer applies because it expired.
    pub expired: Option<LocalReport>,
    /// The source addresses and families delivery uses for the domain.
    pub egress: Egress,
}

/// The local section for `facts`; `global` is `[delivery]`'s egress.
pub fn local_section(facts: &DomainFacts, global: Egress, today: NaiveDate) -> LocalSection {
    let effective = overrides::effective_local(facts);
    LocalSection {
        entry: facts.local.as_ref().map(|p| LocalReport::of(p, today)),
        standing: overrides::standing(facts),
        expired: facts.expired.as_ref().map(|p| LocalReport::of(p, today)),
        egress: effective.map_or(global, |p| global.with(&p.egress)),
    }
}

/// The section in words, one line per fact.
pub fn render_local(out: &mut String, s: &LocalSection) {
    if let Some(e) = &s.entry {
        let _ = writeln!(
            out,
            "local policy:  {} (level {}, from {})",
            e.domain, e.level, e.entry
        );
        if let Some(hop) = &e.route {
            let _ = writeln!(out, "route:         via {hop}: the domain's MX hosts are not contacted; the hosts below are the hop's");
        }
        let _ = writeln!(out, "               {}", exception_words(e));
    } else {
        let _ = writeln!(out, "local policy:  none");
    }
    match s.standing {
        Standing::Ignored { missing } => {
            let _ = writeln!(out, "               IGNORED: the domain publishes a policy this entry would replace; add {} to the entry if that is intended", missing.flags().join(" and "));
        }
        Standing::Applies { replaced } if replaced.any() => {
            let _ = writeln!(
                out,
                "               overrides the domain's published policy ({})",
                replaced.flags().join(", ")
            );
        }
        _ => {}
    }
    if let Some(x) = &s.expired {
        let _ = writeln!(
            out,
            "               expired entry {} ({}): {}",
            x.domain,
            x.entry,
            exception_words(x)
        );
    }
    let _ = writeln!(
        out,
        "egress:        address family {}, source IPv4 {}, source IPv6 {}",
        s.egress.family,
        s.egress.source_ipv4.map_or("any".into(), |a| a.to_string()),
        s.egress.source_ipv6.map_or("any".into(), |a| a.to_string())
    );
}

/// The exception's state in words.
fn exception_words(e: &LocalReport) -> String {
    let about = if e.about.is_empty() {
        String::new()
    } else {
        format!(" ({})", e.about)
    };
    let last = e.expires.map(|d| d.to_string()).unwrap_or_default();
    match e.exception {
        ExceptionState::Permanent => format!("no expiry date{about}"),
        ExceptionState::Active { days_left } => {
            format!("applies through {last}, {days_left} day(s) left{about}")
        }
        ExceptionState::Expiring { days_left } => {
            format!("EXPIRES SOON: applies through {last}, {days_left} day(s) left{about}")
        }
        ExceptionState::Expired { days_ago } => {
            format!("EXPIRED {days_ago} day(s) ago (last day {last}): no longer applied{about}")
        }
    }
}
