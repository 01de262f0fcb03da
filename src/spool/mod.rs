//! The spool: accepted messages on disk, durable before the client hears 250.
//!
//! Layout under the spool directory (directories 0700, files 0600):
//! - `VERSION`: the spool format (2); a newer one is refused, never guessed at.
//! - `segments/N.seg`: append-only logs of CRC-checked records — a new message
//!   (envelope and body), a new envelope state, a removal. Many messages share
//!   one `fdatasync` (`log.rs`); no file is created or renamed per message.
//! - `corrupt/`: whatever recovery set aside.
//!
//! Only one process opens a spool ([`Spool::open`] takes an exclusive lock and
//! keeps every envelope in memory); other commands reach the running server
//! through its control socket. At start the segments are replayed in order
//! (`index.rs`): a torn tail (a write that was never acknowledged) is cut off,
//! damaged records are skipped and reported. A segment is deleted once no
//! queued message's body is in it and every older segment is gone; a
//! message that stays queued is copied forward so it never pins old
//! segments. A spool in the earlier one-file-per-message layout is imported
//! at start (`legacy.rs`).
//!
//! Nothing read from the spool is trusted: ids are checked (letters and digits)
//! before they are used, and an envelope must name the id its record carries.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod envelope;
mod index;
mod legacy;
mod log;
mod record;

pub use envelope::{BodyType, ClientInfo, DsnRet, Envelope, PendingDsn, RcptState, Recipient};
pub use index::{DropReason, Dropped};
pub use legacy::Imported;

use index::{Index, Loc};
use record::{Kind, SEGMENT_HEADER};

/// The spool format this release writes and reads.
pub const FORMAT: u32 = 2;

/// An open spool, shared by every part of the server.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segments: PathBuf,
    index: Mutex<Index>,
    log: log::Log,
    segment_bytes: u64,
    recovery: Mutex<Recovery>,
    _lock: SpoolLock,
}

/// How a spool is opened.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A segment is closed and the next begun once it holds this many bytes.
    pub segment_bytes: u64,
    /// How often old segments are checked for deletion or compaction.
    pub compact_every: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: 64 << 20,
            compact_every: Duration::from_secs(2),
        }
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
    /// An envelope (of the earlier layout) does not hold an envelope.
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
    /// The spool was written by a newer release.
    #[error("the spool {} has format {found}; this release reads format {FORMAT} and earlier: run the newer release, or move the spool aside", .dir.display())]
    NewerFormat {
        /// The spool directory.
        dir: PathBuf,
        /// The format its `VERSION` file names.
        found: u32,
    },
    /// The `VERSION` file holds no format number.
    #[error("{} does not hold a spool format number (expected `{FORMAT}`); restore it or move the spool aside", .0.display())]
    BadVersion(PathBuf),
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
            SpoolError::Damaged { .. }
            | SpoolError::IdMismatch { .. }
            | SpoolError::NewerFormat { .. }
            | SpoolError::BadVersion(_) => io::ErrorKind::InvalidData,
            SpoolError::Locked(_) => io::ErrorKind::WouldBlock,
            SpoolError::Io(e) => e.kind(),
        }
    }
}

/// What opening the spool found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// Messages queued after recovery.
    pub queued: usize,
    /// Segments replayed.
    pub segments: usize,
    /// Parts of segments that could not be used.
    pub dropped: Vec<Dropped>,
    /// What importing an earlier layout did.
    pub imported: Imported,
}

impl Spool {
    /// Opens a spool with the default options: locks it, imports an earlier
    /// layout, replays the segments and starts the committer.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, Options::default())
    }

    /// Opens a spool (see [`Spool::open`]).
    pub fn open_with(dir: &Path, opts: Options) -> Result<Spool, SpoolError> {
        for sub in ["", "segments", "corrupt"] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join(sub))?;
        }
        let lock = lock(dir)?;
        check_version(dir)?;
        let segments = dir.join("segments");
        let mut index = Index::default();
        let mut recovery = Recovery::default();
        let (active, len) = replay_all(&segments, &mut index, &mut recovery)?;
        let log = log::Log::start(&segments, active, len, opts.segment_bytes)?;
        let spool = Spool {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                segments,
                index: Mutex::new(index),
                log,
                segment_bytes: opts.segment_bytes,
                recovery: Mutex::new(Recovery::default()),
                _lock: lock,
            }),
        };
        recovery.imported = legacy::import(&spool, dir)?;
        write_version(dir)?;
        recovery.queued = spool.index().entries.len();
        *spool.inner.recovery.lock().unwrap() = recovery;
        spawn_compactor(Arc::downgrade(&spool.inner), opts.compact_every);
        Ok(spool)
    }

    /// What opening the spool found.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery.lock().unwrap().clone()
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.inner.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a new message durably. When this returns Ok, a crash cannot lose it.
    pub fn store(&self, env: &Envelope, message: &[u8]) -> Result<(), SpoolError> {
        self.store_parts(env, vec![message.to_vec()])
    }

    /// Stores a new message whose bytes come in pieces (e.g. our Received
    /// header and the client's data), taking them instead of copying.
    pub fn store_parts(&self, env: &Envelope, message: Vec<Vec<u8>>) -> Result<(), SpoolError> {
        check_id(&env.id)?;
        let json = serde_json::to_vec(env).map_err(io::Error::from)?;
        let rec = record::encode_parts(Kind::Message, &env.id, &json, message);
        let (floor, len, body_start, body_len) = (
            self.inner.log.active(),
            rec.len(),
            rec.body_start,
            rec.body_len,
        );
        let waiting = {
            let mut idx = self.index();
            idx.pending_add(floor);
            self.inner.log.enqueue(rec.chunks)
        };
        let result = waiting.and_then(|rx| wait(&rx));
        let mut idx = self.index();
        idx.pending_done(floor);
        let pos = result?;
        idx.grow(pos.seg, pos.offset + len as u64);
        let body = Loc {
            seg: pos.seg,
            offset: pos.offset + body_start as u64,
            len: body_len as u64,
        };
        idx.put(env.clone(), body);
        Ok(())
    }

    /// Records a message's new envelope (state changes after an attempt).
    pub fn update(&self, env: &Envelope) -> Result<(), SpoolError> {
        check_id(&env.id)?;
        let json = serde_json::to_vec(env).map_err(io::Error::from)?;
        let rec = record::encode(Kind::Update, &env.id, &json, b"");
        let rx = {
            let mut idx = self.index();
            if !idx.set_env(env) {
                return Err(SpoolError::Gone(env.id.clone()));
            }
            self.inner.log.enqueue(vec![rec])?
        };
        self.committed(&rx)
    }

    /// Removes a message from the queue (delivered, bounced or deleted).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        check_id(id)?;
        let rec = record::encode(Kind::Remove, id, b"", b"");
        let (rx, old) = {
            let mut idx = self.index();
            let Some(old) = idx.remove(id) else {
                return Err(SpoolError::NotFound(id.to_string()));
            };
            (self.inner.log.enqueue(vec![rec])?, old)
        };
        let result = self.committed(&rx);
        if result.is_err() {
            // Still on disk, so still queued: put it back (unless compaction
            // deleted its segment meanwhile; then it is gone from disk too).
            let mut idx = self.index();
            if idx.segs.contains_key(&old.body.seg) && !idx.entries.contains_key(id) {
                idx.put(old.env, old.body);
            }
        }
        result
    }

    /// Waits for a queued record and notes how far its segment now reaches.
    fn committed(&self, rx: &log::Waiting) -> Result<(), SpoolError> {
        let pos = wait(rx)?;
        self.index().grow(pos.seg, pos.offset + 1);
        Ok(())
    }

    /// One queued message's envelope.
    pub fn load(&self, id: &str) -> Result<Envelope, SpoolError> {
        check_id(id)?;
        (self.index().entries.get(id))
            .map(|e| e.env.clone())
            .ok_or_else(|| SpoolError::NotFound(id.to_string()))
    }

    /// Reads a message's stored bytes.
    pub fn read_message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        check_id(id)?;
        // Opened under the lock: compaction may delete the segment right
        // after, but an open file stays readable.
        let (file, loc) = {
            let idx = self.index();
            let loc = (idx.entries.get(id).map(|e| e.body))
                .ok_or_else(|| SpoolError::NotFound(id.to_string()))?;
            (
                File::open(log::segment_path(&self.inner.segments, loc.seg))?,
                loc,
            )
        };
        let mut buf = vec![0; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }

    /// Every queued envelope, oldest first.
    pub fn list(&self) -> Vec<Envelope> {
        let mut envs: Vec<Envelope> = (self.index().entries.values())
            .map(|e| e.env.clone())
            .collect();
        envs.sort_by(|a, b| a.id.cmp(&b.id));
        envs
    }

    /// How many messages are queued.
    pub fn len(&self) -> usize {
        self.index().entries.len()
    }

    /// How many messages are queued, and the arrival time of the oldest (one
    /// pass over the in-memory index, no envelope copied).
    pub fn size_and_oldest(&self) -> (usize, Option<i64>) {
        let index = self.index();
        let oldest = index.entries.values().map(|e| e.env.received_at).min();
        (index.entries.len(), oldest)
    }

    /// Whether no message is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Disk flushes of the log so far (one per batch of records).
    pub fn flushes(&self) -> u64 {
        self.inner.log.commits()
    }

    /// Bytes free for an unprivileged writer on the spool's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.inner.dir)
    }

    /// Segment numbers and sizes, oldest first (for tests and `queue` tools).
    pub fn segments(&self) -> BTreeMap<u64, u64> {
        (self.index().segs.iter())
            .map(|(&n, s)| (n, s.size))
            .collect()
    }

    /// Deletes or compacts old segments until nothing more is worth doing.
    pub fn compact(&self) -> Result<(), SpoolError> {
        while self.compact_step()? {}
        Ok(())
    }

    /// One step: delete the oldest segment if nothing needs it, else copy
    /// its queued messages forward when that frees enough.
    fn compact_step(&self) -> Result<bool, SpoolError> {
        let movers = {
            let mut idx = self.index();
            let active = self.inner.log.active();
            let Some((&oldest, _)) = idx.segs.first_key_value() else {
                return Ok(false);
            };
            if oldest >= active {
                return Ok(false);
            }
            if idx.deletable(oldest) {
                fs::remove_file(log::segment_path(&self.inner.segments, oldest))?;
                idx.segs.remove(&oldest);
                return Ok(true);
            }
            if !idx.worth_compacting(oldest, self.inner.segment_bytes) {
                return Ok(false);
            }
            idx.bodies_in(oldest)
        };
        let moved = self.move_forward(movers)?;
        Ok(moved > 0)
    }

    /// Appends each message again (current envelope, same body) and points
    /// the index at the copy once it is durable.
    fn move_forward(&self, movers: Vec<(String, Loc)>) -> Result<usize, SpoolError> {
        let mut waiting = Vec::new();
        for (id, from) in movers {
            let body = self.read_at(from)?;
            let idx = self.index();
            let Some(entry) = idx.entries.get(&id).filter(|e| e.body == from) else {
                continue;
            };
            let json = serde_json::to_vec(&entry.env).map_err(io::Error::from)?;
            let rec = record::encode_parts(Kind::Message, &id, &json, vec![body]);
            let (len, body_start) = (rec.len() as u64, rec.body_start as u64);
            let rx = self.inner.log.enqueue(rec.chunks)?;
            waiting.push((id, from, body_start, len, rx));
            drop(idx);
        }
        let moved = waiting.len();
        for (id, from, body_start, len, rx) in waiting {
            let pos = wait(&rx)?;
            let mut idx = self.index();
            idx.grow(pos.seg, pos.offset + len);
            let to = Loc {
                seg: pos.seg,
                offset: pos.offset + body_start,
                len: from.len,
            };
            idx.move_body(&id, from, to);
        }
        Ok(moved)
    }

    fn read_at(&self, loc: Loc) -> io::Result<Vec<u8>> {
        let file = File::open(log::segment_path(&self.inner.segments, loc.seg))?;
        let mut buf = vec![0; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }
}

/// Waits for the committer's answer about one record.
fn wait(rx: &log::Waiting) -> io::Result<log::Pos> {
    rx.recv()
        .map_err(|_| io::Error::other("the spool committer stopped"))?
}

/// Checks old segments in the background for as long as the spool is open.
fn spawn_compactor(inner: Weak<Inner>, every: Duration) {
    let _ = std::thread::Builder::new()
        .name("spool-compact".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(inner) = inner.upgrade() else { return };
            if let Err(e) = (Spool { inner }).compact() {
                tracing::warn!(error = %e, "spool compaction failed; it is tried again later");
            }
        });
}

/// Replays every segment in order; returns the active segment and its length
/// (a new first segment for an empty spool). The newest segment's unusable
/// tail is cut off, so appends continue after intact records.
fn replay_all(
    segments: &Path,
    index: &mut Index,
    rec: &mut Recovery,
) -> Result<(u64, u64), SpoolError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(segments)? {
        let entry = entry?;
        match entry.file_name().to_str().and_then(log::segment_number) {
            Some(n) if entry.file_type()?.is_file() => numbers.push(n),
            _ => legacy::set_aside(
                segments.parent().unwrap_or(segments),
                &entry.path(),
                "not a segment",
            ),
        }
    }
    numbers.sort_unstable();
    let Some(&newest) = numbers.last() else {
        log::create_segment(segments, 1)?;
        index.grow(1, SEGMENT_HEADER.len() as u64);
        return Ok((1, SEGMENT_HEADER.len() as u64));
    };
    for &n in &numbers {
        let path = log::segment_path(segments, n);
        let buf = fs::read(&path)?;
        check_segment_header(segments, &buf)?;
        let replayed = index.replay(n, &buf, n == newest);
        let short = buf.len() < SEGMENT_HEADER.len();
        if n == newest && (replayed.end < buf.len() || short) {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(replayed.end.max(SEGMENT_HEADER.len()) as u64)?;
            if short {
                // A crash while the segment was being created.
                f.write_all_at(SEGMENT_HEADER, 0)?;
            }
            f.sync_all()?;
        }
        rec.dropped.extend(replayed.dropped);
        rec.segments += 1;
    }
    let len = index.segs.get(&newest).map_or(0, |s| s.size);
    Ok((newest, len.max(SEGMENT_HEADER.len() as u64)))
}

/// A segment must start with this release's header (a short file is the
/// torn start of a new segment and is repaired by the caller).
fn check_segment_header(segments: &Path, buf: &[u8]) -> Result<(), SpoolError> {
    let n = buf.len().min(SEGMENT_HEADER.len());
    if buf[..n] == SEGMENT_HEADER[..n] {
        return Ok(());
    }
    let version = SEGMENT_HEADER.len() - 1;
    if n == SEGMENT_HEADER.len() && buf[..version] == SEGMENT_HEADER[..version] {
        let dir = segments.parent().unwrap_or(segments).to_path_buf();
        return Err(SpoolError::NewerFormat {
            dir,
            found: u32::from(buf[version]),
        });
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "a segment in {} is not a tlsrelay spool segment",
            segments.display()
        ),
    )
    .into())
}

/// Refuses a spool whose `VERSION` names a newer format.
fn check_version(dir: &Path) -> Result<(), SpoolError> {
    let path = dir.join("VERSION");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let found: u32 = (text.trim().parse()).map_err(|_| SpoolError::BadVersion(path))?;
    if found > FORMAT {
        return Err(SpoolError::NewerFormat {
            dir: dir.to_path_buf(),
            found,
        });
    }
    Ok(())
}

/// Records the format, once, durably.
fn write_version(dir: &Path) -> io::Result<()> {
    let path = dir.join("VERSION");
    if fs::read_to_string(&path).is_ok_and(|t| t.trim() == FORMAT.to_string()) {
        return Ok(());
    }
    let tmp = dir.join("VERSION.tmp");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all_at(format!("{FORMAT}\n").as_bytes(), 0)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    log::sync_dir(dir)
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The exclusive lock on a spool, held while the spool is open.
#[derive(Debug)]
pub struct SpoolLock {
    _dir: File,
    _file: File,
}

/// Takes an exclusive lock so that two servers never share one spool.
///
/// The lock is held on the spool directory itself, which cannot be removed
/// while it holds the queue, and on the `lock` file that earlier versions use.
fn lock(dir: &Path) -> Result<SpoolLock, SpoolError> {
    let d = File::open(dir)?;
    flock_exclusive(&d).map_err(|_| SpoolError::Locked(dir.to_path_buf()))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("lock"))?;
    flock_exclusive(&file).map_err(|_| SpoolError::Locked(dir.to_path_buf()))?;
    Ok(SpoolLock {
        _dir: d,
        _file: file,
    })
}

/// Whether a spool directory is locked by a running process.
pub fn is_locked(dir: &Path) -> bool {
    File::open(dir).is_ok_and(|d| {
        let held = flock_exclusive(&d).is_err();
        // Dropping `d` releases the lock we may just have taken.
        held
    })
}

/// Whether `id` may be a queue id: ASCII letters and digits, 1 to 64 of them.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_alphanumeric())
}

/// A queue id is checked before use.
fn check_id(id: &str) -> Result<(), SpoolError> {
    if !valid_id(id) {
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

#[cfg(test)]
mod tests;
