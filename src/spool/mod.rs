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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// An open spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// The envelope of one queued message and the state of each recipient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// Queue id (also the file name).
    pub id: String,
    /// When the message was accepted (Unix seconds).
    pub received_at: i64,
    /// Who handed the message to us.
    pub client: ClientInfo,
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// Size of the stored message in bytes (with our Received header).
    pub size: u64,
    /// The BODY parameter given with MAIL.
    pub body: BodyType,
    /// Whether MAIL carried SMTPUTF8.
    pub smtputf8: bool,
    /// Whether MAIL carried REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// Whether the header section has `TLS-Required: No` (RFC 8689 §5).
    #[serde(default)]
    pub tls_required_no: bool,
    /// Whether this is a TLS report of ours (RFC 8460): not reported on, and sent
    /// with TLS but relaxed authentication.
    #[serde(default)]
    pub tls_report: bool,
    /// DSN RET parameter (RFC 3461).
    pub ret: Option<DsnRet>,
    /// DSN ENVID parameter, decoded from xtext.
    pub envid: Option<String>,
    /// The recipients, each with its own delivery state.
    pub recipients: Vec<Recipient>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (Unix seconds).
    pub next_attempt: i64,
    /// Whether a delay notice has been sent.
    pub delay_notice_sent: bool,
}

/// Facts about the SMTP client that submitted a message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ClientInfo {
    /// Client IP address and port.
    pub addr: String,
    /// The name given in EHLO/HELO.
    pub helo: String,
    /// TLS version and cipher, when the session was encrypted.
    pub tls: Option<String>,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
}

/// BODY parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    /// No BODY parameter, or BODY=7BIT.
    #[default]
    SevenBit,
    /// BODY=8BITMIME.
    EightBitMime,
}

/// RET parameter of MAIL (RFC 3461): how much of the message a DSN returns.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DsnRet {
    /// Return the whole message.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// One recipient and where its delivery stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recipient {
    /// The forward-path.
    pub address: String,
    /// DSN NOTIFY conditions (`success`, `failure`, `delay`, or `never`); empty when not given.
    pub notify: Vec<String>,
    /// DSN ORCPT address (the `rfc822;` type is implied).
    pub orcpt: Option<String>,
    /// Delivery state.
    pub state: RcptState,
    /// The last reason this recipient is not yet delivered (or why it failed).
    pub last_reason: Option<String>,
    /// The SMTP reply or status that settled the recipient, if any.
    pub status: Option<String>,
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    /// Waiting for (another) delivery attempt.
    Queued,
    /// Accepted by the receiving server.
    Delivered,
    /// Permanently failed; a DSN was or will be sent.
    Failed,
}

impl Envelope {
    /// Recipients still waiting for delivery.
    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Queued)
    }

    /// Whether no recipient is waiting any more.
    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }
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
    pub fn open(dir: &Path) -> io::Result<Spool> {
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
    /// The lock lasts as long as the returned file is open.
    pub fn lock(&self) -> io::Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        // SAFETY: flock on a valid open descriptor.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the spool {} is in use by another tlsrelay process",
                    self.dir.display()
                ),
            ));
        }
        Ok(f)
    }

    /// Cleans up after a crash and returns every queued envelope, oldest first.
    pub fn recover(&self) -> io::Result<Recovery> {
        let mut rec = Recovery::default();
        for entry in fs::read_dir(self.dir.join("tmp"))? {
            fs::remove_file(entry?.path())?;
            rec.discarded_partial += 1;
        }
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.queue_dir())? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(id) = name.strip_suffix(".msg") {
                if !self.env_path(id).exists() {
                    fs::remove_file(&path)?;
                    rec.discarded_partial += 1;
                }
            } else if let Some(id) = name.strip_suffix(".env") {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        for id in ids {
            match self.load(&id) {
                Ok(env) if self.msg_path(&id).exists() => rec.queued.push(env),
                Ok(_) | Err(_) => {
                    for ext in ["env", "msg"] {
                        let from = self.queue_dir().join(format!("{id}.{ext}"));
                        if from.exists() {
                            fs::rename(
                                &from,
                                self.dir.join("corrupt").join(format!("{id}.{ext}")),
                            )?;
                        }
                    }
                    rec.corrupt.push(id);
                }
            }
        }
        sync_dir(&self.queue_dir())?;
        Ok(rec)
    }

    /// Stores a new message durably. When this returns Ok, a crash cannot lose it.
    pub fn store(&self, env: &Envelope, message: &[u8]) -> io::Result<()> {
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
        result
    }

    /// Replaces a message's envelope atomically (state changes after an attempt).
    pub fn update(&self, env: &Envelope) -> io::Result<()> {
        if !self.env_path(&env.id).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("message {} is no longer in the queue", env.id),
            ));
        }
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.env.{}", env.id, new_queue_id()));
        write_synced(&tmp, &serde_json::to_vec_pretty(env)?)?;
        fs::rename(&tmp, self.env_path(&env.id))?;
        sync_dir(&self.queue_dir())
    }

    /// Removes a message from the queue (delivered, bounced or deleted).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        fs::remove_file(self.env_path(id))?;
        sync_dir(&self.queue_dir())?;
        match fs::remove_file(self.msg_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads one envelope.
    pub fn load(&self, id: &str) -> io::Result<Envelope> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{id}` is not a queue id"),
            ));
        }
        let bytes = fs::read(self.env_path(id)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no message {id} in the queue"),
                )
            } else {
                e
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("envelope of {id} is damaged: {e}"),
            )
        })
    }

    /// Reads a message's stored bytes.
    pub fn read_message(&self, id: &str) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        File::open(self.msg_path(id))?.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Every queued envelope, oldest first (read-only: safe while a server runs).
    pub fn list(&self) -> io::Result<Vec<Envelope>> {
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

/// Writes a new file and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(data)?;
    f.sync_all()
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
                notify: vec![],
                orcpt: None,
                state: RcptState::Queued,
                last_reason: None,
                status: None,
            }],
            attempts: 0,
            next_attempt: 0,
            delay_notice_sent: false,
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

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let _held = spool.lock().unwrap();
        assert!(spool.lock().is_err());
    }
}
