//! Whether a local policy entry may replace what the domain publishes.
//!
//! A local entry replaces the DANE, MTA-STS and floor rules for its domain. When
//! the domain publishes DANE, or an MTA-STS policy in enforce mode, an entry that
//! would accept certificates the published policy refuses (`encrypt`, `verify` or
//! `secure`, and for MTA-STS also `dane` where DANE is absent) applies only if it says so with `override_dane = true` or
//! `override_mta_sts = true`. Without the flag the entry is ignored and the
//! published policy decides: a forgotten exception never quietly weakens a
//! domain that started publishing DANE after it was written.

use serde::Serialize;

use crate::model::dns::{Answer, Tlsa};
use crate::policy::facts::DomainFacts;
use crate::policy::local::{Level, LocalPolicy};
use crate::protocol::sts::Mode;

/// The published policies an entry would replace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Replaced {
    /// The domain publishes DANE (or its TLSA lookup is in doubt) and the entry accepts more than it.
    pub dane: bool,
    /// The domain has an MTA-STS policy in enforce mode the entry would not carry out.
    pub mta_sts: bool,
}

impl Replaced {
    /// Whether it replaces anything.
    pub fn any(self) -> bool {
        self.dane || self.mta_sts
    }

    /// The flag names, for messages: `override_dane`, `override_mta_sts`.
    pub fn flags(self) -> Vec<&'static str> {
        let mut out = vec![];
        if self.dane {
            out.push("override_dane");
        }
        if self.mta_sts {
            out.push("override_mta_sts");
        }
        out
    }
}

/// How the local entry of a domain stands against what the domain publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "standing")]
pub enum Standing {
    /// No local entry applies.
    NoEntry,
    /// A route: the domain's MX hosts are not contacted, so their policies do not apply.
    Route,
    /// The entry applies; `replaced` is what it overrides, by its own flags.
    Applies {
        /// What it replaces (empty when it replaces nothing published).
        replaced: Replaced,
    },
    /// The entry would replace a published policy without the flag saying so: ignored.
    Ignored {
        /// The flags the entry lacks.
        missing: Replaced,
    },
}

/// Where the local entry of `facts` stands.
pub fn standing(facts: &DomainFacts) -> Standing {
    let Some(lp) = &facts.local else {
        return Standing::NoEntry;
    };
    if lp.route.is_some() {
        return Standing::Route;
    }
    let replaced = replaced(facts, lp);
    let missing = Replaced {
        dane: replaced.dane && !lp.overrides.dane,
        mta_sts: replaced.mta_sts && !lp.overrides.mta_sts,
    };
    if missing.any() {
        Standing::Ignored { missing }
    } else {
        Standing::Applies { replaced }
    }
}

/// The local entry that decides for the domain: none when it is ignored.
pub fn effective_local(facts: &DomainFacts) -> Option<&LocalPolicy> {
    match standing(facts) {
        Standing::Route | Standing::Applies { .. } => facts.local.as_ref(),
        Standing::NoEntry | Standing::Ignored { .. } => None,
    }
}

/// What `lp` replaces of what the domain publishes.
fn replaced(facts: &DomainFacts, lp: &LocalPolicy) -> Replaced {
    let dane = publishes_dane(facts);
    let sts_enforced = facts
        .sts
        .policy
        .as_ref()
        .is_some_and(|p| p.mode == Mode::Enforce);
    // `fingerprint` accepts only the keys it pins, and `dane`/`dane-only` carry
    // DANE out: none accepts a certificate the published policy would refuse.
    let accepts_more = matches!(lp.level, Level::Encrypt | Level::Verify | Level::Secure);
    Replaced {
        dane: dane && accepts_more,
        mta_sts: sts_enforced && (accepts_more || (lp.level == Level::Dane && !dane)),
    }
}

/// Whether some host has usable DNSSEC-secure TLSA records, or a TLSA lookup in
/// doubt (bogus, failed): doubt counts as DANE, so it never lets an entry through.
fn publishes_dane(facts: &DomainFacts) -> bool {
    facts
        .hosts
        .iter()
        .any(|h| match h.tlsa.as_ref().map(|t| &t.answer) {
            Some(Answer::Records {
                records, security, ..
            }) => security.is_secure() && records.iter().any(Tlsa::is_usable),
            Some(Answer::Bogus(_) | Answer::TempFail(_)) => true,
            _ => false,
        })
}
