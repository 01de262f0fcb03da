//! Destination sites: the set of MX hosts a plan would contact. Thousands of
//! recipient domains hosted by one provider share one site, so connection
//! limits, message rates and back-off after a storm of temporary failures are
//! kept per site, not per domain (what KumoMTA calls MX rollup).
//!
//! The decisions (which limits apply, how back-off grows and shrinks) are pure;
//! [`Sites`] holds the state of each site the relay talks to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{DeliveryConfig, Rate, ShapingRule};
use crate::model::domain::Domain;
use crate::policy::HostStep;

/// A destination site: the MX host names of a plan, sorted, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Site(Vec<String>);

impl Site {
    /// The site of a plan's host steps.
    pub fn of(steps: &[HostStep]) -> Site {
        let mut hosts: Vec<String> = steps
            .iter()
            .map(|s| match s {
                HostStep::Connect(t) => t.req.host.clone(),
                HostStep::Skip(s) => s.host.clone(),
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        Site(hosts)
    }

    /// The host names.
    pub fn hosts(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// The limits that hold for one domain's mail to its site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Simultaneous connections to the site.
    pub max_connections: usize,
    /// Messages sent over one connection before it is closed (0: no limit).
    pub max_messages_per_connection: usize,
    /// Messages per interval to the site, if limited.
    pub rate: Option<Rate>,
}

/// The limits for `domain` at `site`: `[delivery]`'s, then the first `[[shaping]]`
/// rule naming one of the site's MX hosts, then the first naming the domain
/// (a domain rule is the more specific, so it wins key by key).
pub fn limits_for(d: &DeliveryConfig, domain: &Domain, site: &Site) -> Limits {
    let mut limits = Limits {
        max_connections: d.max_connections_per_site,
        max_messages_per_connection: d.max_messages_per_connection,
        rate: None,
    };
    let by_site = d.shaping.iter().find(|r| {
        r.mx_pattern().is_some_and(|p| {
            site.hosts()
                .iter()
                .any(|h| Domain::parse(h).is_ok_and(|h| p.matches_domain(&h)))
        })
    });
    let by_domain = d.shaping.iter().find(|r| r.names_domain(domain));
    for rule in by_site.into_iter().chain(by_domain) {
        apply(&mut limits, rule);
    }
    limits
}

/// Overrides `limits` with what `rule` states.
fn apply(limits: &mut Limits, rule: &ShapingRule) {
    if let Some(n) = rule.max_connections {
        limits.max_connections = n;
    }
    if let Some(n) = rule.max_messages_per_connection {
        limits.max_messages_per_connection = n;
    }
    if let Some(r) = rule.rate {
        limits.rate = Some(r);
    }
}

/// Consecutive temporary failures from a site that start a back-off.
pub const STORM: u32 = 5;
/// The first back-off; it doubles per level up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How a site has been answering: the back-off state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Temporary failures (421, 4xx) in a row since the last success.
    pub failures: u32,
    /// 0: normal; each level halves the connections and doubles the pause.
    pub level: u32,
    /// No attempt before this.
    pub until: Option<Instant>,
}

impl Backoff {
    /// A 4xx reply: after [`STORM`] in a row, one level more and a pause.
    pub fn tempfail(&mut self, now: Instant) {
        self.failures += 1;
        if self.failures >= STORM {
            self.failures = 0;
            self.level = (self.level + 1).min(7);
            let pause = FIRST_BACKOFF * 2u32.pow(self.level - 1);
            self.until = Some(now + pause.min(MAX_BACKOFF));
        }
    }

    /// A delivery (or a permanent answer: the site is up): one level less.
    pub fn success(&mut self) {
        self.failures = 0;
        self.level = self.level.saturating_sub(1);
    }

    /// How long attempts must still wait, if they must.
    pub fn paused(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// The connections allowed under `base`: halved per level, at least one.
    pub fn connections(&self, base: usize) -> usize {
        (base >> self.level.min(16)).max(1)
    }
}

/// What one site's traffic is doing now.
struct State {
    active: usize,
    backoff: Backoff,
    /// When the next message may start under the rate limit.
    next_slot: Option<Instant>,
}

/// One site's shared state.
struct Entry {
    state: Mutex<State>,
    freed: Notify,
}

/// Every site's state.
#[derive(Default)]
pub struct Sites {
    map: Mutex<HashMap<Site, Arc<Entry>>>,
}

/// A connection slot at a site, given back when dropped.
pub struct SiteSlot {
    entry: Arc<Entry>,
}

impl Drop for SiteSlot {
    fn drop(&mut self) {
        self.entry.state.lock().expect("site lock").active -= 1;
        // One slot freed, one waiter woken: thousands of messages may wait for a
        // busy site, and waking them all on every release costs more than delivery.
        self.entry.freed.notify_one();
    }
}

/// Why a site takes no attempt now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    /// How long it still pauses.
    pub remaining: Duration,
    /// Its back-off level.
    pub level: u32,
}

impl Sites {
    fn entry(&self, site: &Site) -> Arc<Entry> {
        let mut map = self.map.lock().expect("sites lock");
        map.entry(site.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    state: Mutex::new(State {
                        active: 0,
                        backoff: Backoff::default(),
                        next_slot: None,
                    }),
                    freed: Notify::new(),
                })
            })
            .clone()
    }

    /// Waits for a connection slot at `site` under `limits` (fewer while backing
    /// off); refuses at once while the site pauses.
    pub async fn acquire(&self, site: &Site, limits: &Limits) -> Result<SiteSlot, Paused> {
        let entry = self.entry(site);
        loop {
            let freed = entry.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = entry.state.lock().expect("site lock");
                if let Some(remaining) = s.backoff.paused(Instant::now()) {
                    let level = s.backoff.level;
                    // Pass the wake-up on: the next waiter learns of the pause too.
                    entry.freed.notify_one();
                    return Err(Paused { remaining, level });
                }
                if s.active < s.backoff.connections(limits.max_connections) {
                    s.active += 1;
                    return Ok(SiteSlot {
                        entry: entry.clone(),
                    });
                }
            }
            freed.await;
        }
    }

    /// How long to wait before the next message to `site` under `rate`.
    pub fn rate_wait(&self, site: &Site, rate: Option<Rate>) -> Duration {
        let Some(rate) = rate else {
            return Duration::ZERO;
        };
        let entry = self.entry(site);
        let mut s = entry.state.lock().expect("site lock");
        let now = Instant::now();
        let slot = s.next_slot.map_or(now, |t| t.max(now));
        s.next_slot = Some(slot + rate.interval());
        slot - now
    }

    /// Records how the site answered: `Some(true)` a delivery or a permanent
    /// answer, `Some(false)` a 4xx, `None` nothing said about the site.
    pub fn answered(&self, site: &Site, ok: Option<bool>) {
        let Some(ok) = ok else { return };
        let entry = self.entry(site);
        let mut s = entry.state.lock().expect("site lock");
        let before = s.backoff.level;
        if ok {
            s.backoff.success();
        } else {
            s.backoff.tempfail(Instant::now());
        }
        if s.backoff.level > before {
            tracing::warn!(%site, level = s.backoff.level, pause_s = s.backoff.paused(Instant::now()).map_or(0, |d| d.as_secs()), "site answers with temporary failures: backing off (fewer connections, a pause)");
        } else if s.backoff.level < before {
            tracing::info!(%site, level = s.backoff.level, "site recovering: back-off level lowered");
        }
        drop(s);
        entry.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_after_a_storm_and_shrinks_on_success() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        for _ in 0..STORM - 1 {
            b.tempfail(t0);
        }
        assert_eq!((b.level, b.paused(t0)), (0, None));
        b.tempfail(t0);
        assert_eq!(b.level, 1);
        assert_eq!(b.paused(t0), Some(FIRST_BACKOFF));
        assert_eq!(b.connections(10), 5);
        for _ in 0..STORM {
            b.tempfail(t0);
        }
        assert_eq!((b.level, b.paused(t0)), (2, Some(FIRST_BACKOFF * 2)));
        assert_eq!(b.paused(t0 + FIRST_BACKOFF * 2), None);
        assert_eq!(b.connections(10), 2);
        assert_eq!(b.connections(1), 1);
        b.success();
        assert_eq!((b.level, b.failures), (1, 0));
        for _ in 0..STORM * 20 {
            b.tempfail(t0);
        }
        assert_eq!(b.paused(t0), Some(MAX_BACKOFF));
    }
}
