//! `tlsrelay policy check`: every local entry against what its domain publishes.

use chrono::NaiveDate;

use crate::model::domain::Domain;
use crate::ops::check::Sources;
use crate::policy::local::{ExceptionState, LocalPolicy};
use crate::policy::overrides::{self, Standing};

/// One line of the check: an entry and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Whether the entry is a problem (the check exits 1).
    pub problem: bool,
    /// `file:line: domain (level): words`.
    pub text: String,
}

/// Checks each entry: its expiry, and for an exact domain without a route, the
/// DANE and MTA-STS the domain publishes now (DNS and MTA-STS lookups).
pub async fn check_entries(src: &Sources<'_>, today: NaiveDate) -> Vec<Line> {
    let mut out = vec![];
    for p in src.policies.iter() {
        let head = format!("{}: {} ({})", p.source, p.domain, p.level.as_str());
        if let Some(words) = expiry(p, today) {
            out.push(Line {
                problem: false,
                text: format!("{head}: {words}"),
            });
            if matches!(p.exception.state(today), ExceptionState::Expired { .. }) {
                continue;
            }
        }
        let (problem, words) = standing_words(src, p).await;
        out.push(Line {
            problem,
            text: format!("{head}: {words}"),
        });
    }
    out
}

/// A warning about the entry's expiry, if one is due.
fn expiry(p: &LocalPolicy, today: NaiveDate) -> Option<String> {
    let last = p.exception.expires?;
    match p.exception.state(today) {
        ExceptionState::Expiring { days_left } => Some(format!(
            "warning: expires {last} ({days_left} day(s) left); renew or remove it"
        )),
        ExceptionState::Expired { days_ago } => Some(format!(
            "warning: expired {last} ({days_ago} day(s) ago) and no longer applies; remove it"
        )),
        _ => None,
    }
}

/// Whether the entry may stand against what its domain publishes, in words.
async fn standing_words(src: &Sources<'_>, p: &LocalPolicy) -> (bool, String) {
    if p.route.is_some() {
        return (
            false,
            "ok (a route: the domain's MX hosts are not contacted)".into(),
        );
    }
    let Some(domain) = (!p.domain.starts_with('.'))
        .then(|| Domain::parse(&p.domain).ok())
        .flatten()
    else {
        return (
            false,
            "ok (covers subdomains; their DANE and MTA-STS are checked as mail goes to them)"
                .into(),
        );
    };
    let (facts, _) = src.plan_for(&domain).await;
    match overrides::standing(&facts) {
        Standing::Ignored { missing } => (
            true,
            format!(
                "ERROR: the domain publishes {} that this entry would replace; \
                 it is ignored until the entry says {} = true",
                published(missing.dane, missing.mta_sts),
                missing.flags().join(" = true and ")
            ),
        ),
        Standing::Applies { replaced } if replaced.any() => (
            false,
            format!(
                "ok, overrides the {} the domain publishes ({})",
                published(replaced.dane, replaced.mta_sts),
                replaced.flags().join(", ")
            ),
        ),
        _ => (false, "ok".into()),
    }
}

/// "DANE", "an MTA-STS policy in enforce mode", or both.
fn published(dane: bool, sts: bool) -> &'static str {
    match (dane, sts) {
        (true, true) => "DANE (TLSA records) and an MTA-STS policy in enforce mode",
        (true, false) => "DANE (TLSA records)",
        _ => "an MTA-STS policy in enforce mode",
    }
}
