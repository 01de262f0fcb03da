//! The fleet's reports (`[cluster]`): one report per policy domain and day for
//! all nodes, sent by whichever node holds the lease, from the summed counts
//! (the protocol is in `crate::cluster::reports`). Without Redis nothing is sent:
//! a report of one node's half would be wrong, and the day's report can wait.

use super::*;
use crate::cluster::reports::StoredReport;
use crate::cluster::Cluster;

impl Reporter {
    /// Sends the fleet's reports of `day` for the domains `keep` lets through.
    pub(super) async fn fleet_send_day(
        &self,
        cluster: &Cluster,
        day: NaiveDate,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<Sent> {
        let wait = |e: crate::cluster::ClusterError| {
            tracing::warn!(%day, error = %e, "fleet TLS reports wait for Redis");
            Vec::new()
        };
        // This node's counts first, so that the sum has them; then every domain
        // some node pushed for the day (this node's too).
        if let Err(e) = cluster.push_day(&self.outcomes, day).await {
            return wait(e);
        }
        let domains = match cluster.fleet_reports_of(day).await {
            Ok(d) => d,
            Err(e) => return wait(e),
        };
        let mut out = Vec::new();
        for domain in domains {
            if keep(domain.as_str()) {
                out.push(self.fleet_send_one(cluster, day, &domain).await);
            }
        }
        out
    }

    /// Sends the fleet's reports whose time has come by `now`.
    pub(super) async fn fleet_send_due(
        &self,
        cluster: &Cluster,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let finished = (now - chrono::Duration::minutes(15)).date_naive();
        // Only days with a report still unsent: a finished day is not read again.
        let Ok(pending) = cluster.unsent_reports().await else {
            return;
        };
        let days: BTreeSet<NaiveDate> = pending
            .iter()
            .map(|(d, _)| *d)
            .filter(|d| *d < finished)
            .collect();
        for day in days {
            self.fleet_send_day(cluster, day, |d| now.timestamp() >= self.due_at(day, d))
                .await;
        }
    }

    /// One (day, domain) report: skipped when sent, else sent under the lease.
    async fn fleet_send_one(&self, cluster: &Cluster, day: NaiveDate, domain: &Domain) -> Sent {
        let key = PolicyDomain::Valid(domain.clone());
        let mut sent = Sent::new(day, &key);
        let state = match cluster.fleet_report(day, domain).await {
            Ok(s) => s,
            Err(e) => {
                sent.results
                    .push(format!("fleet state unreadable, will retry: {e}"));
                return sent;
            }
        };
        if let Some(note) = state.sent {
            let words = format!("done by the fleet: {note}");
            return self.finish(sent, day, &key, words.clone(), &words);
        }
        let ruas = match self.destinations(domain).await {
            Destinations::Send(ruas) => ruas,
            Destinations::Nowhere { result, note } => {
                let _ = cluster.mark_report_sent(day, domain, &note).await;
                return self.finish(sent, day, &key, result, &note);
            }
            Destinations::Retry(words) => {
                sent.results.push(words);
                return sent;
            }
        };
        match cluster.take_report_lease(day, domain).await {
            Ok(true) => {}
            Ok(false) => {
                sent.results.push("another node is sending it".into());
                return sent;
            }
            Err(e) => {
                sent.results.push(format!("no lease, will retry: {e}"));
                return sent;
            }
        }
        let sent = self
            .fleet_deliver(cluster, day, domain, state.stored, &ruas, sent)
            .await;
        let _ = cluster.release_report_lease(day, domain).await;
        sent
    }

    /// Under the lease: the stored report (built and stored first when there is
    /// none), sent to every destination, then marked sent in the fleet.
    async fn fleet_deliver(
        &self,
        cluster: &Cluster,
        day: NaiveDate,
        domain: &Domain,
        stored: Option<StoredReport>,
        ruas: &[Rua],
        mut sent: Sent,
    ) -> Sent {
        let key = PolicyDomain::Valid(domain.clone());
        let submitter = self.submitter();
        let stored = match stored {
            Some(s) => s,
            None => match self.fleet_store(cluster, day, domain, &submitter).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    let _ = cluster.mark_report_sent(day, domain, "no sessions").await;
                    return self.finish(
                        sent,
                        day,
                        &key,
                        "no sessions: no report".into(),
                        "no sessions",
                    );
                }
                Err(words) => {
                    sent.results.push(words);
                    return sent;
                }
            },
        };
        let report = match TlsReport::parse_json(stored.json.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                sent.results
                    .push(format!("stored report {} unreadable: {e:?}", stored.id));
                return sent;
            }
        };
        let Ok(gz) = tlsrpt::gzip(stored.json.as_bytes()) else {
            sent.results.push("cannot compress the report".into());
            return sent;
        };
        let all_ok = self
            .deliver(ruas, &report, domain, &submitter, &gz, &mut sent)
            .await;
        if all_ok {
            let note = format!("report {}", stored.id);
            if let Err(e) = cluster.mark_report_sent(day, domain, &note).await {
                // The lease runs out and the same bytes go again: the same report.
                tracing::warn!(%day, %domain, error = %e, "fleet report sent but not marked");
            }
        }
        self.count_and_mark(sent, day, &key, all_ok)
    }

    /// Builds the fleet's report from the summed counts and stores it before
    /// anything is sent; `None` when no node had a session.
    async fn fleet_store(
        &self,
        cluster: &Cluster,
        day: NaiveDate,
        domain: &Domain,
        submitter: &str,
    ) -> Result<Option<StoredReport>, String> {
        let retry =
            |e: crate::cluster::ClusterError| format!("fleet report not built, will retry: {e}");
        let Some(agg) = cluster.fleet_counts(day, domain).await.map_err(retry)? else {
            return Ok(None);
        };
        let id = cluster
            .fleet_report_id(day, domain, submitter)
            .await
            .map_err(retry)?;
        let json = tlsrpt::report_json(&self.build_report_with_id(&agg, &id));
        let stored = cluster
            .store_report(day, domain, &StoredReport { id, json })
            .await
            .map_err(retry)?;
        Ok(Some(stored))
    }
}
