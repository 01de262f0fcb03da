//! Fleet-wide TLS reports: one report per receiving domain and day, with the
//! counts of every node.
//!
//! **Counts.** Each node pushes, per (UTC day, policy domain), the whole tally of
//! its own outcome records for that day (`HSET prefix:rpt:DAY:DOMAIN:counts NODE
//! JSON`). A push replaces the node's previous one, so pushing again is harmless:
//! nothing is counted twice, and the outcome files on disk are the buffer — after
//! an outage (or a Redis that lost its data) the next push restores the exact
//! counts. The report sums the nodes' tallies ([`merge`]).
//!
//! **Sending.** The node that sends takes a lease (`SET …:lease NODE NX PX`),
//! builds the report from the summed counts with a fleet-unique report-id (an
//! `INCR`), stores the JSON in Redis *before* sending, sends, and marks it sent.
//! A node that finds a stored, unsent report once the lease has run out (the
//! sender died) sends the very same bytes again: same report-id, same counts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use chrono::NaiveDate;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError};
use crate::model::domain::Domain;
use crate::model::rfc8460::{PolicyType, ResultType};
use crate::reporting::outcome::OutcomeLog;
use crate::reporting::tlsrpt::{self, Aggregate, FailureAggregate, PolicyAggregate, PolicyDomain};

/// How many UTC days back (today included) the periodic push covers.
const PUSH_DAYS: i64 = 3;
/// How long fleet report data is kept in Redis.
const KEEP_SECS: i64 = 40 * 86_400;

/// One node's tally of one policy, as pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePolicy {
    /// The policy type.
    pub policy_type: PolicyType,
    /// `policy-string`.
    pub policy_strings: Vec<String>,
    /// `mx-host`.
    pub mx_patterns: Vec<String>,
    /// Successful sessions.
    pub successful: u32,
    /// Failed sessions by details.
    pub failures: Vec<WireFailure>,
}

/// One node's count of failures with the same details, as pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFailure {
    /// `result-type`.
    pub result: ResultType,
    /// `sending-mta-ip`.
    pub sending_ip: Option<IpAddr>,
    /// `receiving-mx-hostname`.
    pub receiving_mx_host: Option<String>,
    /// `receiving-ip`.
    pub receiving_ip: Option<IpAddr>,
    /// `failed-session-count`.
    pub count: u32,
}

/// The pushed form of one node's aggregate.
pub fn to_wire(agg: &Aggregate) -> Vec<WirePolicy> {
    agg.policies
        .iter()
        .map(|p| WirePolicy {
            policy_type: p.policy_type,
            policy_strings: p.policy_strings.clone(),
            mx_patterns: p.mx_patterns.clone(),
            successful: p.successful,
            failures: p
                .failures
                .iter()
                .map(|f| WireFailure {
                    result: f.result,
                    sending_ip: f.sending_ip,
                    receiving_mx_host: f.receiving_mx_host.clone(),
                    receiving_ip: f.receiving_ip,
                    count: f.count,
                })
                .collect(),
        })
        .collect()
}

fn type_rank(p: PolicyType) -> &'static str {
    // The order `tlsrpt::aggregate` gives: by the RFC 8460 name.
    match p {
        PolicyType::Tlsa => "tlsa",
        PolicyType::Sts => "sts",
        PolicyType::NoPolicyFound => "no-policy-found",
    }
}

type PolicyKey = (&'static str, Vec<String>, Vec<String>);
type FailureKey = (&'static str, Option<IpAddr>, Option<String>, Option<IpAddr>);
type Tally = (PolicyType, u32, BTreeMap<FailureKey, (ResultType, u32)>);

/// The fleet's aggregate: the nodes' tallies summed, ordered as one node's would be.
pub fn merge(domain: &Domain, day: NaiveDate, nodes: &[Vec<WirePolicy>]) -> Option<Aggregate> {
    let mut sum: BTreeMap<PolicyKey, Tally> = BTreeMap::new();
    for p in nodes.iter().flatten() {
        let key = (
            type_rank(p.policy_type),
            p.policy_strings.clone(),
            p.mx_patterns.clone(),
        );
        let t = sum
            .entry(key)
            .or_insert((p.policy_type, 0, BTreeMap::new()));
        t.1 = t.1.saturating_add(p.successful);
        for f in &p.failures {
            let fk = (
                f.result.as_str(),
                f.sending_ip,
                f.receiving_mx_host.clone(),
                f.receiving_ip,
            );
            let c = &mut t.2.entry(fk).or_insert((f.result, 0)).1;
            *c = c.saturating_add(f.count);
        }
    }
    let policies: Vec<PolicyAggregate> = sum
        .into_iter()
        .map(
            |((_, policy_strings, mx_patterns), (policy_type, ok, fails))| {
                let failures: Vec<FailureAggregate> = fails
                    .into_iter()
                    .map(|((_, sip, host, rip), (result, count))| FailureAggregate {
                        result,
                        sending_ip: sip,
                        receiving_mx_host: host,
                        receiving_ip: rip,
                        count,
                    })
                    .collect();
                PolicyAggregate {
                    policy_type,
                    policy_strings,
                    mx_patterns,
                    successful: ok,
                    failed: failures.iter().map(|f| f.count).sum(),
                    failures,
                }
            },
        )
        .filter(|p| p.successful > 0 || p.failed > 0)
        .collect();
    (!policies.is_empty()).then(|| Aggregate {
        policy_domain: domain.clone(),
        day,
        policies,
    })
}

/// A fleet report as stored before sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// The report-id.
    pub id: String,
    /// The report JSON, sent as is (again, after a sender died).
    pub json: String,
}

/// Where a (day, domain) report stands in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetReport {
    /// Some node sent it (or found nothing to send), with its note.
    pub sent: Option<String>,
    /// The report stored for sending, if built.
    pub stored: Option<StoredReport>,
}

/// Stores the report unless one is stored already; returns the stored one.
const STORE: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'json') == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'json', ARGV[2], 'node', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return redis.call('HMGET', KEYS[1], 'id', 'json')
"#;

/// Deletes the lease only if this node holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

impl Cluster {
    fn rpt_key(&self, day: NaiveDate, domain: &Domain, what: &str) -> String {
        self.key(&["rpt", &day.to_string(), domain.as_str(), what])
    }

    /// Pushes this node's tallies of `day` for every policy domain it has records for.
    pub async fn push_day(
        &self,
        outcomes: &OutcomeLog,
        day: NaiveDate,
    ) -> Result<usize, ClusterError> {
        let records = outcomes.read_day(&day.to_string()).unwrap_or_default();
        let mut pipe = redis::pipe();
        let days = self.key(&["rpt", "days"]);
        let domains = self.key(&["rpt", &day.to_string(), "domains"]);
        let mut n = 0;
        for (domain, sessions) in tlsrpt::sessions_by_domain(&records, day) {
            let PolicyDomain::Valid(d) = domain else {
                continue;
            };
            let Some(agg) = tlsrpt::aggregate(&d, day, &sessions) else {
                continue;
            };
            let json = serde_json::to_string(&to_wire(&agg)).expect("plain data serializes");
            let counts = self.rpt_key(day, &d, "counts");
            pipe.hset(&counts, self.node(), json).ignore();
            pipe.expire(&counts, KEEP_SECS).ignore();
            pipe.sadd(&domains, d.as_str()).ignore();
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        pipe.expire(&domains, KEEP_SECS).ignore();
        pipe.sadd(&days, day.to_string()).ignore();
        self.redis.pipe::<()>(pipe.atomic()).await?;
        Ok(n)
    }

    /// Pushes the tallies of the last few days (the periodic task).
    pub async fn push_recent(&self, outcomes_dir: &Path) {
        let Ok(log) = OutcomeLog::open(outcomes_dir) else {
            return;
        };
        let today = chrono::Utc::now().date_naive();
        for back in 0..PUSH_DAYS {
            let day = today - chrono::Duration::days(back);
            if let Err(e) = self.push_day(&log, day).await {
                metrics::counter!(crate::model::metric::CLUSTER_LOCAL_FALLBACKS, "what" => "counts").increment(1);
                tracing::debug!(%day, error = %e, "TLS-RPT counts not pushed; kept on disk for the next push");
                return;
            }
        }
    }

    /// The domains some node pushed counts for on `day`, sorted.
    pub async fn fleet_reports_of(&self, day: NaiveDate) -> Result<Vec<Domain>, ClusterError> {
        let key = self.key(&["rpt", &day.to_string(), "domains"]);
        let domains: Vec<String> = self.redis.run(redis::cmd("SMEMBERS").arg(key)).await?;
        let mut out: Vec<Domain> = domains
            .iter()
            .filter_map(|s| Domain::parse(s).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// The (day, domain) reports some node pushed counts for and no node sent yet,
    /// oldest first; a day whose reports are all sent leaves the list of days.
    pub async fn unsent_reports(&self) -> Result<Vec<(NaiveDate, Domain)>, ClusterError> {
        let days_key = self.key(&["rpt", "days"]);
        let days: Vec<String> = self
            .redis
            .run(redis::cmd("SMEMBERS").arg(&days_key))
            .await?;
        let today = chrono::Utc::now().date_naive();
        let mut out = Vec::new();
        for day in days {
            let Ok(d) = NaiveDate::parse_from_str(&day, "%Y-%m-%d") else {
                continue;
            };
            let mut unsent = Vec::new();
            for domain in self.fleet_reports_of(d).await? {
                if self.fleet_report(d, &domain).await?.sent.is_none() {
                    unsent.push((d, domain));
                }
            }
            // Pushes of the last days add a day back; older ones are done for good.
            if unsent.is_empty() && (today - d).num_days() >= PUSH_DAYS {
                self.redis
                    .run::<i64>(redis::cmd("SREM").arg(&days_key).arg(&day))
                    .await?;
            }
            out.extend(unsent);
        }
        out.sort();
        Ok(out)
    }

    /// The summed counts of every node for (day, domain).
    pub async fn fleet_counts(
        &self,
        day: NaiveDate,
        domain: &Domain,
    ) -> Result<Option<Aggregate>, ClusterError> {
        let key = self.rpt_key(day, domain, "counts");
        let all: BTreeMap<String, String> = self.redis.run(redis::cmd("HGETALL").arg(&key)).await?;
        let mut nodes = Vec::new();
        for json in all.values() {
            nodes.push(serde_json::from_str(json).map_err(|e| ClusterError::Value {
                key: key.clone(),
                why: e.to_string(),
            })?);
        }
        Ok(merge(domain, day, &nodes))
    }

    /// Where the (day, domain) report stands.
    pub async fn fleet_report(
        &self,
        day: NaiveDate,
        domain: &Domain,
    ) -> Result<FleetReport, ClusterError> {
        let key = self.rpt_key(day, domain, "report");
        let (id, json, sent): (Option<String>, Option<String>, Option<String>) = self
            .redis
            .run(
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("id")
                    .arg("json")
                    .arg("sent"),
            )
            .await?;
        Ok(FleetReport {
            sent,
            stored: id.zip(json).map(|(id, json)| StoredReport { id, json }),
        })
    }

    /// Takes the sending lease of (day, domain); false while another node holds it.
    pub async fn take_report_lease(
        &self,
        day: NaiveDate,
        domain: &Domain,
    ) -> Result<bool, ClusterError> {
        let key = self.rpt_key(day, domain, "lease");
        let ms = self.config.report_lease.get().as_millis() as u64;
        let set: Option<String> = self
            .redis
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(self.node())
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Gives the sending lease back, if this node holds it.
    pub async fn release_report_lease(
        &self,
        day: NaiveDate,
        domain: &Domain,
    ) -> Result<(), ClusterError> {
        let key = self.rpt_key(day, domain, "lease");
        let args = [self.node().to_string()];
        self.redis
            .script::<i64>(&Script::new(RELEASE), &[&key], &args)
            .await?;
        Ok(())
    }

    /// A report-id no other report of the fleet carries.
    pub async fn fleet_report_id(
        &self,
        day: NaiveDate,
        domain: &Domain,
        submitter: &str,
    ) -> Result<String, ClusterError> {
        let n: u64 = self
            .redis
            .run(redis::cmd("INCR").arg(self.key(&["rpt", "seq"])))
            .await?;
        Ok(format!("{}.{domain}.{n}@{submitter}", day.format("%Y%m%d")))
    }

    /// Stores the report before it is sent; a report stored earlier wins and is returned.
    pub async fn store_report(
        &self,
        day: NaiveDate,
        domain: &Domain,
        report: &StoredReport,
    ) -> Result<StoredReport, ClusterError> {
        let key = self.rpt_key(day, domain, "report");
        let args = [
            report.id.clone(),
            report.json.clone(),
            self.node().to_string(),
            KEEP_SECS.to_string(),
        ];
        let (id, json): (String, String) = self
            .redis
            .script(&Script::new(STORE), &[&key], &args)
            .await?;
        Ok(StoredReport { id, json })
    }

    /// Marks the (day, domain) report sent (or needing no sending), with a note.
    pub async fn mark_report_sent(
        &self,
        day: NaiveDate,
        domain: &Domain,
        note: &str,
    ) -> Result<(), ClusterError> {
        let key = self.rpt_key(day, domain, "report");
        let mut pipe = redis::pipe();
        pipe.hset(&key, "sent", format!("{} by {}", note, self.node()))
            .ignore()
            .expire(&key, KEEP_SECS)
            .ignore();
        self.redis.pipe::<()>(pipe.atomic()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        t: PolicyType,
        strings: &[&str],
        ok: u32,
        fails: &[(ResultType, &str, u32)],
    ) -> WirePolicy {
        WirePolicy {
            policy_type: t,
            policy_strings: strings.iter().map(|s| s.to_string()).collect(),
            mx_patterns: vec![],
            successful: ok,
            failures: fails
                .iter()
                .map(|(r, host, count)| WireFailure {
                    result: *r,
                    sending_ip: None,
                    receiving_mx_host: Some(host.to_string()),
                    receiving_ip: Some("192.0.2.1".parse().unwrap()),
                    count: *count,
                })
                .collect(),
        }
    }

    /// (policy type, policy strings, successes, failures, failures by result type)
    type Row<'a> = (&'a str, Vec<String>, u32, u32, Vec<(&'a str, u32)>);

    #[test]
    fn merged_counts_are_the_sums_of_the_nodes() {
        use PolicyType::{Sts, Tlsa};
        use ResultType::{CertificateExpired as Expired, ValidationFailure as Untyped};
        let d = Domain::parse("example.com").unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 5, 1).unwrap();
        let a = vec![
            policy(
                Sts,
                &["mode: enforce"],
                3,
                &[(Expired, "mx1.example.com", 1)],
            ),
            policy(Tlsa, &["3 1 1 AA"], 2, &[]),
        ];
        let b = vec![policy(
            Sts,
            &["mode: enforce"],
            4,
            &[
                (Expired, "mx1.example.com", 2),
                (Untyped, "mx2.example.com", 1),
            ],
        )];
        let c = vec![policy(
            Sts,
            &["mode: testing"],
            0,
            &[(Untyped, "mx2.example.com", 5)],
        )];
        let agg = merge(&d, day, &[a.clone(), b, c]).unwrap();
        let got: Vec<Row> = agg
            .policies
            .iter()
            .map(|p| {
                (
                    type_rank(p.policy_type),
                    p.policy_strings.clone(),
                    p.successful,
                    p.failed,
                    p.failures
                        .iter()
                        .map(|f| (f.result.as_str(), f.count))
                        .collect(),
                )
            })
            .collect();
        let s = |x: &str| vec![x.to_string()];
        assert_eq!(
            got,
            [
                (
                    "sts",
                    s("mode: enforce"),
                    7,
                    4,
                    vec![("certificate-expired", 3), ("validation-failure", 1)]
                ),
                (
                    "sts",
                    s("mode: testing"),
                    0,
                    5,
                    vec![("validation-failure", 5)]
                ),
                ("tlsa", s("3 1 1 AA"), 2, 0, vec![]),
            ]
        );
        // One node's own tally comes back unchanged; nothing at all is no report.
        let one = merge(&d, day, std::slice::from_ref(&a)).unwrap();
        assert_eq!(to_wire(&one), a);
        assert_eq!(merge(&d, day, &[]), None);
        assert_eq!(merge(&d, day, &[vec![policy(Sts, &[], 0, &[])]]), None);
    }
}
