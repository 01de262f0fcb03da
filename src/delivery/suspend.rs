//! Destination domains the operator suspended (`queue suspend DOMAIN --for 2h`):
//! no attempt goes to them until the time given. Kept in `SPOOL/suspended.json`
//! (domain → end, Unix seconds), written atomically with mode 0600, so a
//! restart keeps them; an ended suspension is simply ignored, then dropped at
//! the next write.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::model::domain::Domain;
use crate::spool::Envelope;

/// The file in the spool directory.
pub const FILE: &str = "suspended.json";

/// Why the suspensions file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// Reading or writing failed.
    #[error("{}: {err}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        err: std::io::Error,
    },
    /// The file is not what tlsrelay writes; nothing is delivered to a domain
    /// that might be suspended, so the fix is the operator's.
    #[error("{}: not a suspensions file ({err}); repair it (a JSON object of domain to Unix time) or remove it to end every suspension", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What does not parse.
        err: serde_json::Error,
    },
}

/// Suspended domains and when each suspension ends (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suspensions(BTreeMap<Domain, i64>);

impl Suspensions {
    /// Reads the suspensions of the spool at `dir`; none when the file does not exist.
    pub fn load(dir: &Path) -> Result<Suspensions, SuspendError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Suspensions)
                .map_err(|err| SuspendError::Parse { path, err }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Suspensions::default()),
            Err(err) => Err(SuspendError::Io { path, err }),
        }
    }

    /// Writes the suspensions still running at `now` to the spool at `dir`:
    /// a new file, flushed, renamed over the old one, the directory flushed.
    pub fn save(&self, dir: &Path, now: i64) -> Result<(), SuspendError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io = |err| SuspendError::Io {
            path: path.clone(),
            err,
        };
        let running: BTreeMap<&Domain, &i64> =
            self.0.iter().filter(|(_, &end)| end > now).collect();
        let text = serde_json::to_vec_pretty(&running).map_err(|e| io(e.into()))?;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = (std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true))
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
        file.write_all(&text)
            .and_then(|_| file.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// Suspends `domain` until `end`, replacing an earlier end.
    pub fn suspend(&mut self, domain: Domain, end: i64) {
        self.0.insert(domain, end);
    }

    /// Ends the suspension of `domain`; whether one was running at `now`.
    pub fn resume(&mut self, domain: &Domain, now: i64) -> bool {
        self.0.remove(domain).is_some_and(|end| end > now)
    }

    /// Forgets the suspensions that ended by `now`; returns their domains.
    pub fn prune(&mut self, now: i64) -> Vec<Domain> {
        let ended: Vec<Domain> = (self.0.iter())
            .filter(|(_, &end)| end <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for d in &ended {
            self.0.remove(d);
        }
        ended
    }

    /// When the suspension of `domain` ends, if it runs at `now`.
    pub fn until(&self, domain: &Domain, now: i64) -> Option<i64> {
        self.0.get(domain).copied().filter(|&end| end > now)
    }

    /// The suspensions running at `now`, by domain.
    pub fn running(&self, now: i64) -> impl Iterator<Item = (&Domain, i64)> {
        (self.0.iter()).filter_map(move |(d, &end)| (end > now).then_some((d, end)))
    }

    /// The earliest end of a suspension running at `now`: when messages may become due.
    pub fn next_end(&self, now: i64) -> Option<i64> {
        self.running(now).map(|(_, end)| end).min()
    }

    /// Whether every pending recipient of `env` is in a domain suspended at
    /// `now` (a message with one deliverable domain is attempted, for that domain).
    pub fn blocks(&self, env: &Envelope, now: i64) -> bool {
        let mut pending = env.pending().peekable();
        pending.peek().is_some()
            && pending.all(|r| {
                Domain::of_address(&r.address).is_ok_and(|d| self.until(&d, now).is_some())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RcptState;

    const NOW: i64 = 1_767_225_600;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    fn to(addresses: &[&str]) -> Envelope {
        let mut e = Envelope::generated(
            "relay.test",
            "a@org.test",
            "x@y.test",
            Default::default(),
            1,
        );
        e.recipients = (addresses.iter())
            .map(|a| {
                let mut r = e.recipients[0].clone();
                r.address = a.to_string();
                r
            })
            .collect();
        e
    }

    #[test]
    fn a_message_is_blocked_only_when_every_pending_domain_is_suspended() {
        let mut s = Suspensions::default();
        s.suspend(d("a.test"), NOW + 60);
        s.suspend(d("old.test"), NOW - 1);
        let mut delivered = to(&["x@a.test", "y@b.test"]);
        delivered.recipients[1].state = RcptState::Delivered;
        let cases = [
            (to(&["x@a.test"]), true),
            (to(&["x@A.TEST", "y@a.test"]), true),
            (to(&["x@a.test", "y@b.test"]), false),
            (delivered, true),
            (to(&["x@b.test"]), false),
            // An ended suspension no longer blocks.
            (to(&["x@old.test"]), false),
            (to(&[]), false),
        ];
        for (env, want) in cases {
            let rcpts: Vec<_> = env.recipients.iter().map(|r| r.address.clone()).collect();
            assert_eq!(s.blocks(&env, NOW), want, "{rcpts:?}");
        }
        assert_eq!(s.next_end(NOW), Some(NOW + 60));
        assert_eq!(s.running(NOW).count(), 1);
        assert_eq!(s.clone().prune(NOW), [d("old.test")]);
        assert_eq!(s.clone().prune(NOW + 60), [d("a.test"), d("old.test")]);
        assert!(!s.resume(&d("old.test"), NOW), "it had ended");
        assert!(s.resume(&d("a.test"), NOW));
        assert_eq!(s.next_end(NOW), None);
    }

    #[test]
    fn saved_atomically_private_and_read_back_without_ended_ones() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Suspensions::load(dir.path()).unwrap(),
            Suspensions::default()
        );
        let mut s = Suspensions::default();
        s.suspend(d("a.test"), NOW + 7200);
        s.suspend(d("ended.test"), NOW);
        s.save(dir.path(), NOW).unwrap();
        let path = dir.path().join(FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        let back = Suspensions::load(dir.path()).unwrap();
        assert_eq!(back.until(&d("a.test"), NOW), Some(NOW + 7200));
        assert_eq!(back.running(0).count(), 1, "the ended one was not written");
        std::fs::write(&path, "not json").unwrap();
        let err = Suspensions::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("suspended.json: not a suspensions file"),
            "{err}"
        );
        assert!(err.contains("remove it to end every suspension"), "{err}");
    }
}
