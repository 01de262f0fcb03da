//! The spool: accepted messages on disk, durable before the client hears 250.
//!
//! Layout under the spool directory:
//! - `tmp/`: files being written; anything here after a crash was never acknowledged.
//! - `queue/ID.msg`: the message as it will be sent (our Received header, then the
//!   client's bytes), written once.
//! - `queue/ID.env`: the envelope and per-recipient state (JSON), replaced atomically.
//!
//! A message exists once `queue/ID.env` exists. `ID.msg` is renamed into place and
//! the directory fsynced *before* `ID.env` is, so an envelope never points at a
//! missing body. Recovery deletes `tmp/*` and any `ID.msg` without an envelope.
//!
//! Nothing read from the spool is trusted: ids are checked (letters and digits,
//! and an envelope's `id` must be its file name) before they become paths, and
//! entries recovery does not expect are set aside in `corrupt/`, never fatal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

mod envelope;

pub use envelope::{BodyType, ClientInfo, DsnRet, Envelope, PendingDsn, RcptState, Recipient};

/// An open spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// The current time in Unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A new queue id: 8 hex digits of the time, 8 random ones; sortable by arrival.
pub fn new_queue_id() -> String {
    let mut rnd = [0u8; 4];
    getrandom::fill(&mut rnd).expect("the OS random source failed");
    format!("{:08X}{:08X}", now_unix() as u32, u32::from_be_bytes(rnd))
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The id has characters other than ASCII letters and digits.
    #[error("`{0}` is not a queue id")]
    BadId(String),
    /// No message with this id is queued.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// The message was removed (delivered, bounced or deleted) while in use.
    #[error("message {0} is no longer in the queue")]
    Gone(String),
    /// The envelope file does not hold an envelope.
    #[error("envelope of {id} is damaged: {reason}")]
    Damaged {
        /// The queue id.
        id: String,
        /// What the JSON reader found.
        reason: serde_json::Error,
    },
    /// An envelope file names another message than its file name says.
    #[error("envelope file {file}.env names message `{field}`")]
    IdMismatch {
        /// The id in the file name.
        file: String,
        /// The id the envelope holds.
        field: String,
    },
    /// Another process holds the spool's lock.
    #[error("the spool {} is in use by another tlsrelay process", .0.display())]
    Locked(PathBuf),
    /// The file system refused.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl SpoolError {
    /// The I/O error kind this corresponds to, for callers that only tell a
    /// vanished message (`NotFound`) from other failures.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            SpoolError::BadId(_) => io::ErrorKind::InvalidInput,
            SpoolError::NotFound(_) | SpoolError::Gone(_) => io::ErrorKind::NotFound,
            SpoolError::Damaged { .. } | SpoolError::IdMismatch { .. } => {
                io::ErrorKind::InvalidData
            }
            SpoolError::Locked(_) => io::ErrorKind::WouldBlock,
            SpoolError::Io(e) => e.kind(),
        }
    }
}

/// What recovery found when the spool was opened.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Envelopes of the queued messages.
    pub queued: Vec<Envelope>,
    /// Partial files removed (never acknowledged).
    pub discarded_partial: usize,
    /// Envelopes that could not be read, moved to `corrupt/`.
    pub corrupt: Vec<String>,
}

impl Spool {
    /// Opens (creating if needed) a spool directory without recovering it.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        for sub in ["tmp", "queue", "corrupt"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// Path of a message's body file.
    pub fn msg_path(&self, id: &str) -> PathBuf {
        self.queue_dir().join(format!("{id}.msg"))
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.queue_dir().join(format!("{id}.env"))
    }

    /// Takes an exclusive lock so that two servers never share one spool.
    /// The lock lasts as long as the returned value lives.
    ///
    /// The lock is held on the spool directory itself, which cannot be removed
    /// while it holds the queue, and on the `lock` file that earlier versions use.
    pub fn lock(&self) -> Result<SpoolLock, SpoolError> {
        let dir = File::open(&self.dir)?;
        flock_exclusive(&dir).map_err(|_| SpoolError::Locked(self.dir.clone()))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        flock_exclusive(&file).map_err(|_| SpoolError::Locked(self.dir.clone()))?;
        Ok(SpoolLock {
            _dir: dir,
            _file: file,
        })
    }

    /// Cleans up after a crash and returns every queued envelope, oldest first.
    /// Entries it does not expect are set aside or removed with a log line;
    /// only an unreadable `tmp/` or `queue/` directory stops it.
    pub fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        for entry in fs::read_dir(self.dir.join("tmp"))? {
            self.discard(&entry?.path());
            rec.discarded_partial += 1;
        }
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.queue_dir())? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(id) = name.strip_suffix(".msg") {
                if !self.env_path(id).exists() {
                    self.discard(&path);
                    rec.discarded_partial += 1;
                }
            } else if let Some(id) = name.strip_suffix(".env") {
                ids.push(id.to_string());
            } else {
                self.set_aside(&path, "not a queue file");
            }
        }
        ids.sort();
        for id in ids {
            match self.load(&id) {
                Ok(env) if self.msg_path(&id).exists() => rec.queued.push(env),
                Ok(_) | Err(_) => {
                    for ext in ["env", "msg"] {
                        let from = self.queue_dir().join(format!("{id}.{ext}"));
                        if fs::symlink_metadata(&from).is_ok() {
                            self.set_aside(&from, "damaged envelope");
                        }
                    }
                    rec.corrupt.push(id);
                }
            }
        }
        sync_dir(&self.queue_dir())?;
        Ok(rec)
    }

    /// Removes a leftover file (an entry that is no file is set aside); a
    /// failure is logged, never fatal.
    fn discard(&self, path: &Path) {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_file() || m.is_symlink() => {}
            _ => return self.set_aside(path, "not a file"),
        }
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover spool file");
        }
    }

    /// Moves an unexpected entry into `corrupt/` (under its own name when that
    /// is free), or removes it when it cannot be moved; logs either way.
    fn set_aside(&self, path: &Path, why: &str) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut to = self.dir.join("corrupt").join(name.unwrap_or_default());
        if fs::symlink_metadata(&to).is_ok() {
            to.as_mut_os_string().push(format!(".{}", new_queue_id()));
        }
        match fs::rename(path, &to) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), to = %to.display(), why, "unexpected spool entry set aside");
            }
            Err(e) => {
                let removed = match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(path),
                    _ => fs::remove_file(path),
                };
                tracing::warn!(path = %path.display(), why, error = %e, removed = removed.is_ok(), "unexpected spool entry could not be moved aside");
            }
        }
    }

    /// Stores a new message durably. When this returns Ok, a crash cannot lose it.
    pub fn store(&self, env: &Envelope, message: &[u8]) -> Result<(), SpoolError> {
        check_id(&env.id)?;
        let tmp = self.dir.join("tmp");
        let tmp_msg = tmp.join(format!("{}.msg", env.id));
        let tmp_env = tmp.join(format!("{}.env", env.id));
        let result = (|| {
            write_synced(&tmp_msg, message)?;
            write_synced(&tmp_env, &serde_json::to_vec_pretty(env)?)?;
            fs::rename(&tmp_msg, self.msg_path(&env.id))?;
            sync_dir(&self.queue_dir())?;
            fs::rename(&tmp_env, self.env_path(&env.id))?;
            sync_dir(&self.queue_dir())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_msg);
            let _ = fs::remove_file(&tmp_env);
            let _ = fs::remove_file(self.msg_path(&env.id));
        }
        Ok(result?)
    }

    /// Replaces a message's envelope atomically (state changes after an attempt).
    pub fn update(&self, env: &Envelope) -> Result<(), SpoolError> {
        check_id(&env.id)?;
        if !self.env_path(&env.id).exists() {
            return Err(SpoolError::Gone(env.id.clone()));
        }
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.env.{}", env.id, new_queue_id()));
        write_synced(
            &tmp,
            &serde_json::to_vec_pretty(env).map_err(io::Error::from)?,
        )?;
        if let Err(e) = fs::rename(&tmp, self.env_path(&env.id)) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(sync_dir(&self.queue_dir())?)
    }

    /// Removes a message from the queue (delivered, bounced or deleted).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        check_id(id)?;
        fs::remove_file(self.env_path(id))?;
        sync_dir(&self.queue_dir())?;
        match fs::remove_file(self.msg_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Reads one envelope; its `id` field must be `id`, the file's name.
    pub fn load(&self, id: &str) -> Result<Envelope, SpoolError> {
        check_id(id)?;
        let bytes = fs::read(self.env_path(id)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NotFound(id.to_string()),
            _ => SpoolError::Io(e),
        })?;
        let env: Envelope =
            serde_json::from_slice(&bytes).map_err(|reason| SpoolError::Damaged {
                id: id.to_string(),
                reason,
            })?;
        if env.id != id {
            return Err(SpoolError::IdMismatch {
                file: id.to_string(),
                field: env.id,
            });
        }
        Ok(env)
    }

    /// Reads a message's stored bytes.
    pub fn read_message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        check_id(id)?;
        let mut buf = Vec::new();
        File::open(self.msg_path(id))?.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Every queued envelope, oldest first (read-only: safe while a server runs).
    pub fn list(&self) -> Result<Vec<Envelope>, SpoolError> {
        let mut ids: Vec<String> = fs::read_dir(self.queue_dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".env"))
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids.iter().filter_map(|id| self.load(id).ok()).collect())
    }
}

/// The exclusive lock on a spool, held while this value lives.
#[derive(Debug)]
pub struct SpoolLock {
    _dir: File,
    _file: File,
}

/// A queue id becomes a file name: only ASCII letters and digits.
fn check_id(id: &str) -> Result<(), SpoolError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(SpoolError::BadId(id.to_string()));
    }
    Ok(())
}

/// Takes a non-blocking exclusive flock on an open file or directory.
fn flock_exclusive(f: &File) -> io::Result<()> {
    // SAFETY: flock on a valid open descriptor.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a new file and fsyncs it; on failure the file is removed again, so a
/// full disk leaves no empty files behind.
fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    let written = f.write_all(data).and_then(|()| f.sync_all());
    if written.is_err() {
        drop(f);
        let _ = fs::remove_file(path);
    }
    written
}

/// Fsyncs a directory so that renames and removals in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            received_at: 1,
            client: ClientInfo::default(),
            sender: "a@example.org".into(),
            size: 5,
            body: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
            tls_report: false,
            ret: None,
            envid: None,
            recipients: vec![Recipient {
                address: "b@example.net".into(),
                notify: Default::default(),
                orcpt: None,
                state: RcptState::Queued,
                last_reason: None,
                status: None,
            }],
            attempts: 0,
            next_attempt: 0,
            delay_notice_sent: false,
            pending_dsns: vec![],
        }
    }

    #[test]
    fn store_recover_update_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let env = envelope("AAAA0001");
        spool.store(&env, b"hello").unwrap();
        // Leftovers of an interrupted write: never acknowledged, so discarded.
        fs::write(dir.path().join("tmp/AAAA0002.msg"), b"partial").unwrap();
        fs::write(dir.path().join("queue/AAAA0003.msg"), b"no envelope").unwrap();
        let rec = spool.recover().unwrap();
        assert_eq!(rec.queued, vec![env.clone()]);
        assert_eq!(rec.discarded_partial, 2);
        assert_eq!(spool.read_message("AAAA0001").unwrap(), b"hello");

        let mut changed = env.clone();
        changed.recipients[0].state = RcptState::Delivered;
        spool.update(&changed).unwrap();
        assert_eq!(spool.load("AAAA0001").unwrap(), changed);
        spool.remove("AAAA0001").unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(spool.update(&changed).is_err());
        assert!(spool.load("../etc").is_err());
    }

    #[test]
    fn damaged_envelope_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::write(dir.path().join("queue/BAD1.env"), b"{not json").unwrap();
        fs::write(dir.path().join("queue/BAD1.msg"), b"x").unwrap();
        let rec = spool.recover().unwrap();
        assert_eq!(rec.corrupt, vec!["BAD1".to_string()]);
        assert!(dir.path().join("corrupt/BAD1.env").exists());
    }

    /// An envelope file as written before `Notify` and `envelope.rs` existed.
    const OLD_ENVELOPE: &str = include_str!("../../tests/fixtures/envelope-v1.env");

    #[test]
    fn envelope_written_by_earlier_versions_reads_field_by_field() {
        use crate::model::notify::Notify;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = "6A1B2C3D0E0F1A2B";
        fs::write(dir.path().join(format!("queue/{id}.env")), OLD_ENVELOPE).unwrap();
        let env = spool.load(id).unwrap();
        assert_eq!(env.id, id);
        assert_eq!(env.received_at, 1767225600);
        assert_eq!(
            env.client,
            ClientInfo {
                addr: "192.0.2.10:50123".into(),
                helo: "mta1.example.org".into(),
                tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
                auth_user: Some("alice".into()),
            }
        );
        assert_eq!(env.sender, "alice@example.org");
        assert_eq!(env.size, 1234);
        assert_eq!(env.body, BodyType::EightBitMime);
        assert!(env.smtputf8 && env.requiretls && env.tls_required_no);
        assert!(!env.tls_report);
        assert_eq!(env.ret, Some(DsnRet::Hdrs));
        assert_eq!(env.envid.as_deref(), Some("QQ314159"));
        assert_eq!(env.attempts, 3);
        assert_eq!(env.next_attempt, 1767229200);
        assert!(env.delay_notice_sent);
        let rcpt = |address: &str,
                    notify,
                    orcpt: Option<&str>,
                    state,
                    last: Option<&str>,
                    status: Option<&str>| Recipient {
            address: address.into(),
            notify,
            orcpt: orcpt.map(Into::into),
            state,
            last_reason: last.map(Into::into),
            status: status.map(Into::into),
        };
        assert_eq!(
            env.recipients,
            [
                rcpt(
                    "bob@example.net",
                    Notify::SUCCESS | Notify::DELAY,
                    Some("bob@example.net"),
                    RcptState::Delivered,
                    Some("delivered to mx1.example.net"),
                    Some("250 2.0.0 Ok: queued as 4F2A"),
                ),
                rcpt(
                    "carol@example.com",
                    Notify::default(),
                    None,
                    RcptState::Queued,
                    Some("mx.example.com: no STARTTLS"),
                    None,
                ),
                rcpt(
                    "dave@example.com",
                    Notify::NEVER,
                    None,
                    RcptState::Failed,
                    Some("mx.example.com said 550 no such user"),
                    Some("5.1.1"),
                ),
                rcpt(
                    "erin@example.com",
                    Notify::FAILURE,
                    None,
                    RcptState::Queued,
                    None,
                    None
                ),
            ]
        );
        // Written back, the envelope is byte for byte what was read.
        assert_eq!(
            String::from_utf8(serde_json::to_vec_pretty(&env).unwrap()).unwrap(),
            OLD_ENVELOPE.trim_end()
        );
    }

    #[test]
    fn errors_name_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::write(dir.path().join("queue/BAD1.env"), b"{not json").unwrap();
        let cases = [
            (
                "../etc",
                "`../etc` is not a queue id",
                io::ErrorKind::InvalidInput,
            ),
            ("", "`` is not a queue id", io::ErrorKind::InvalidInput),
            (
                "NOPE",
                "no message NOPE in the queue",
                io::ErrorKind::NotFound,
            ),
            (
                "BAD1",
                "envelope of BAD1 is damaged: ",
                io::ErrorKind::InvalidData,
            ),
        ];
        for (id, words, kind) in cases {
            let e = spool.load(id).unwrap_err();
            assert!(e.to_string().starts_with(words), "{id}: {e}");
            assert_eq!(e.kind(), kind, "{id}");
        }
        let e = spool.update(&envelope("GONE1")).unwrap_err();
        assert_eq!(e.to_string(), "message GONE1 is no longer in the queue");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn envelope_naming_another_id_is_set_aside_and_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let evil = serde_json::to_vec(&envelope("../../x")).unwrap();
        fs::write(dir.path().join("queue/AAAA0001.env"), evil).unwrap();
        fs::write(dir.path().join("queue/AAAA0001.msg"), b"x").unwrap();
        let e = spool.load("AAAA0001").unwrap_err();
        assert_eq!(
            e.to_string(),
            "envelope file AAAA0001.env names message `../../x`"
        );
        assert!(spool.list().unwrap().is_empty());
        let rec = spool.recover().unwrap();
        assert!(rec.queued.is_empty());
        assert_eq!(rec.corrupt, ["AAAA0001"]);
        assert!(dir.path().join("corrupt/AAAA0001.env").exists());
        // Paths are never built from a bad id.
        for id in ["../../x", "a/b", ""] {
            let env = envelope(id);
            assert_eq!(
                spool.store(&env, b"x").unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            assert_eq!(
                spool.update(&env).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            assert_eq!(
                spool.remove(id).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            assert_eq!(
                spool.read_message(id).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn odd_entries_in_tmp_and_queue_do_not_stop_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("tmp/sub/deeper")).unwrap();
        fs::write(d.join("tmp/sub/deeper/f"), b"x").unwrap();
        fs::write(d.join("tmp/AAAA0002.env"), b"partial").unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.join("tmp/dangling")).unwrap();
        fs::create_dir(d.join("queue/AAAA0003.msg")).unwrap();
        fs::create_dir(d.join("queue/stray")).unwrap();
        let env = envelope("AAAA0001");
        spool.store(&env, b"hello").unwrap();
        let rec = spool.recover().unwrap();
        assert_eq!(rec.queued, vec![env]);
        assert_eq!(fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        assert!(d.join("corrupt/sub/deeper/f").exists());
        let queue: Vec<String> = fs::read_dir(d.join("queue"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(queue.len(), 2, "{queue:?}");
    }

    #[test]
    fn lock_holds_when_the_lock_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let held = spool.lock().unwrap();
        fs::remove_file(dir.path().join("lock")).unwrap();
        assert_eq!(spool.lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        spool.lock().unwrap();
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let _held = spool.lock().unwrap();
        let e = spool.lock().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the spool {} is in use by another tlsrelay process",
                dir.path().display()
            )
        );
    }
}
