//! Local policy entries that expire: the daily warning before their last day,
//! the notice once they stop applying, and the gauge of both.

use std::time::Duration;

use chrono::NaiveDate;

use crate::delivery::PolicySlot;
use crate::policy::local::{ExceptionState, LocalPolicy, PolicySet};
use crate::reporting::metrics as names;

/// An entry that needs the operator's attention on a given day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding<'a> {
    /// The entry.
    pub policy: &'a LocalPolicy,
    /// Its state: expiring or expired.
    pub state: ExceptionState,
}

/// Every entry expiring within the warning window or expired, in file order.
pub fn findings(set: &PolicySet, today: NaiveDate) -> Vec<Finding<'_>> {
    set.iter()
        .filter_map(|policy| {
            let state = policy.exception.state(today);
            matches!(
                state,
                ExceptionState::Expiring { .. } | ExceptionState::Expired { .. }
            )
            .then_some(Finding { policy, state })
        })
        .collect()
}

/// Logs each finding as a warning and sets the gauge; returns (expiring, expired).
pub fn report(set: &PolicySet, today: NaiveDate) -> (usize, usize) {
    let (mut expiring, mut expired) = (0, 0);
    for f in findings(set, today) {
        let p = f.policy;
        let last = p
            .exception
            .expires
            .map(|d| d.to_string())
            .unwrap_or_default();
        let about = p.exception.describe();
        match f.state {
            ExceptionState::Expiring { days_left } => {
                expiring += 1;
                tracing::warn!(domain = %p.domain, entry = %p.source, expires = %last, days_left, about = %about, "local policy entry expires soon: renew it (a later expires) or remove it; after its last day the domain gets DANE, MTA-STS or the floor");
            }
            ExceptionState::Expired { days_ago } => {
                expired += 1;
                tracing::warn!(domain = %p.domain, entry = %p.source, expires = %last, days_ago, about = %about, "local policy entry expired and no longer applies: remove it from the file");
            }
            _ => {}
        }
    }
    metrics::gauge!(names::LOCAL_EXCEPTIONS, "state" => "expiring").set(expiring as f64);
    metrics::gauge!(names::LOCAL_EXCEPTIONS, "state" => "expired").set(expired as f64);
    (expiring, expired)
}

/// Reports at start and then every `every` (a day in service), with the policies in force.
pub async fn watch(slot: PolicySlot, every: Duration) {
    loop {
        let set = slot.read().expect("policy lock").clone();
        report(&set, chrono::Utc::now().date_naive());
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_the_expiring_and_expired_entries() {
        let text = r#"
[[policy]]
domain = "soon.example"
level = "encrypt"
expires = 2027-03-10
[[policy]]
domain = "gone.example"
level = "encrypt"
expires = 2027-02-01
[[policy]]
domain = "later.example"
level = "encrypt"
expires = 2027-12-31
[[policy]]
domain = "always.example"
level = "encrypt"
"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        let set = PolicySet::load_dir(dir.path()).unwrap();
        let today = NaiveDate::from_ymd_opt(2027, 3, 1).unwrap();
        let got: Vec<(String, ExceptionState)> = findings(&set, today)
            .into_iter()
            .map(|f| (f.policy.domain.clone(), f.state))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "soon.example".into(),
                    ExceptionState::Expiring { days_left: 9 }
                ),
                (
                    "gone.example".into(),
                    ExceptionState::Expired { days_ago: 28 }
                ),
            ]
        );
        assert_eq!(report(&set, today), (1, 1));
    }
}
