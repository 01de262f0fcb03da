//! Sessions kept open after a transaction, for the next message to the same
//! place: the same MX host and address, from the same source, under the same
//! proof. Recipient domains do not matter, so the many domains one provider
//! hosts share its sessions (MX rollup); the proof does, so a session verified
//! under one requirement never carries mail owed another.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::Session;
use crate::model::domain::Domain;
use crate::policy::{PeerCheck, Requirement};

/// Where a session goes, from where, and what its handshake proved.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SessionKey {
    /// The MX host (or route hop) name.
    pub host: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// The source address bound, if one was.
    pub source: Option<IpAddr>,
    /// The check the handshake passed.
    pub check: PeerCheck,
    /// The name sent as SNI and checked.
    pub sni: String,
    /// Whether only TLS 1.3 was offered.
    pub tls13_only: bool,
}

impl SessionKey {
    /// The key of a session to `addr` authenticated under `req`.
    pub(super) fn of(req: &Requirement, addr: SocketAddr, source: Option<IpAddr>) -> SessionKey {
        SessionKey {
            host: req.host.clone(),
            addr,
            source,
            check: req.check.clone(),
            sni: req.sni.clone(),
            tls13_only: req.tls13_only,
        }
    }
}

/// A session lent to one transaction: where it goes, what it carried, and
/// how many messages it may carry.
pub(super) struct Lease {
    /// Its key, to put it back under.
    pub key: SessionKey,
    /// Messages it carried before this one.
    pub messages: usize,
    /// Whether it came from the pool.
    pub reused: bool,
    /// Messages it may carry in all (0: no limit).
    pub max_messages: usize,
}

impl Lease {
    /// A new session's lease.
    pub(super) fn new(key: SessionKey, limits: &super::sites::Limits) -> Lease {
        Lease {
            key,
            messages: 0,
            reused: false,
            max_messages: limits.max_messages_per_connection,
        }
    }

    /// A pooled session's lease, after `messages`.
    pub(super) fn reused(key: SessionKey, messages: usize, limits: &super::sites::Limits) -> Lease {
        Lease {
            messages,
            reused: true,
            ..Lease::new(key, limits)
        }
    }

    /// Whether the session may go back to the pool after this message.
    pub(super) fn may_carry_more(&self) -> bool {
        self.max_messages == 0 || self.messages + 1 < self.max_messages
    }
}

/// An open session, since when it waits, and how many messages it carried.
struct Idle {
    key: SessionKey,
    /// The recipient domain of its last message.
    domain: Domain,
    session: Session,
    since: Instant,
    messages: usize,
}

/// Idle sessions by host and address; the rest of the key is compared in full.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<(String, SocketAddr), Vec<Idle>>>,
}

impl Pool {
    /// Takes the most recently used idle session with exactly this key, how
    /// many messages it carried, and the domain of the last.
    pub(super) fn take(&self, key: &SessionKey) -> Option<(Session, usize, Domain)> {
        let mut idle = self.idle.lock().expect("pool lock");
        let slot = (key.host.clone(), key.addr);
        let list = idle.get_mut(&slot)?;
        let at = list.iter().rposition(|i| &i.key == key)?;
        let taken = list.remove(at);
        if list.is_empty() {
            idle.remove(&slot);
        }
        Some((taken.session, taken.messages, taken.domain))
    }

    /// Keeps a session that has carried `messages` for the next message to the same place.
    pub(super) fn put(&self, key: SessionKey, session: Session, messages: usize, domain: &Domain) {
        let slot = (key.host.clone(), key.addr);
        self.idle
            .lock()
            .expect("pool lock")
            .entry(slot)
            .or_default()
            .push(Idle {
                key,
                domain: domain.clone(),
                session,
                since: Instant::now(),
                messages,
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
