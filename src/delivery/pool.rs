//! Sessions kept open after a transaction, for the next message to the same domain.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::Session;
use crate::model::domain::Domain;
use crate::model::rcpt::AppliedPolicy;
use crate::policy::Requirement;

/// An open session, since when it waits, and the requirement it was authenticated under.
struct Idle {
    session: Session,
    since: Instant,
    req: Requirement,
    /// The policy its receipts name.
    applied: AppliedPolicy,
}

/// Idle sessions by recipient domain.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<Domain, Vec<Idle>>>,
}

impl Pool {
    /// Takes the most recently used idle session to `domain`.
    pub(super) fn take(&self, domain: &Domain) -> Option<(Session, Requirement, AppliedPolicy)> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(domain)?;
        let taken = list.pop().map(|i| (i.session, i.req, i.applied));
        if list.is_empty() {
            idle.remove(domain);
        }
        taken
    }

    /// Keeps a session for the next message to `domain`.
    pub(super) fn put(
        &self,
        domain: &Domain,
        session: Session,
        (req, applied): (Requirement, AppliedPolicy),
    ) {
        self.idle
            .lock()
            .expect("pool lock")
            .entry(domain.clone())
            .or_default()
            .push(Idle {
                session,
                since: Instant::now(),
                req,
                applied,
            });
    }

    /// Closes sessions idle for longer than `max_idle` (all of them for zero).
    pub(super) async fn close_idle(&self, max_idle: Duration) {
        let expired: Vec<Session> = {
            let mut idle = self.idle.lock().expect("pool lock");
            let mut out = Vec::new();
            for list in idle.values_mut() {
                let (old, keep): (Vec<Idle>, Vec<Idle>) =
                    list.drain(..).partition(|i| i.since.elapsed() >= max_idle);
                out.extend(old.into_iter().map(|i| i.session));
                *list = keep;
            }
            idle.retain(|_, l| !l.is_empty());
            out
        };
        for s in expired {
            s.quit().await;
        }
    }
}
