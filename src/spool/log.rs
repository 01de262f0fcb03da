//! The append-only segment files and the committer that makes them durable.
//!
//! One thread owns the active segment. It takes every record waiting for it,
//! writes them one after another, calls `fdatasync` once, and only then tells
//! each waiting caller where its record landed: one disk flush covers every
//! message whose data ended while the previous flush was running. A failed
//! write or flush cuts the file back to where the batch began and fails the
//! whole batch, so nothing later is appended after bytes nobody vouched for.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use super::record::SEGMENT_HEADER;
use crate::model::metric as names;

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// The segment's number.
    pub seg: u64,
    /// The record's first byte within the segment.
    pub offset: u64,
}

/// Where the answer about a queued record arrives.
pub type Waiting = mpsc::Receiver<io::Result<Pos>>;

/// A record waiting to be written, and who waits for it.
struct Job {
    chunks: Vec<Vec<u8>>,
    done: mpsc::SyncSender<io::Result<Pos>>,
}

/// The handle through which records are appended.
#[derive(Debug)]
pub struct Log {
    tx: mpsc::Sender<Job>,
    active: Arc<AtomicU64>,
    commits: Arc<AtomicU64>,
}

/// Bytes of records one flush takes at most, so one huge batch does not
/// hold back the callers queued behind it for long.
const BATCH_BYTES: usize = 8 << 20;

impl Log {
    /// Starts the committer on `active` (already created, its length known).
    pub fn start(dir: &Path, active: u64, len: u64, segment_bytes: u64) -> io::Result<Log> {
        let file = open_segment(&segment_path(dir, active), false)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(AtomicU64::new(active));
        let commits = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            seg: active,
            file,
            len,
            segment_bytes,
            active: shared.clone(),
            commits: commits.clone(),
        };
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || writer.run(rx))?;
        Ok(Log {
            tx,
            active: shared,
            commits,
        })
    }

    /// Appends a record and waits until it is on stable storage.
    #[cfg(test)]
    pub fn append(&self, bytes: Vec<u8>) -> io::Result<Pos> {
        self.enqueue(vec![bytes])?
            .recv()
            .map_err(|_| io::Error::other("the spool committer stopped"))?
    }

    /// Queues a record; the receiver yields its position once it is durable.
    /// Records are written in the order they are queued.
    pub fn enqueue(&self, chunks: Vec<Vec<u8>>) -> io::Result<Waiting> {
        let (done, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Job { chunks, done })
            .map_err(|_| io::Error::other("the spool committer stopped"))?;
        Ok(rx)
    }

    /// The segment new records go to.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Flushes so far (each covers a whole batch).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Job {
    fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }
}

/// The committer's state: the active segment and how long it is.
struct Writer {
    dir: PathBuf,
    seg: u64,
    file: File,
    len: u64,
    segment_bytes: u64,
    active: Arc<AtomicU64>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Takes batches until every `Log` handle is gone.
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut size = first.len();
            let mut batch = vec![first];
            while size < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(job) => {
                        size += job.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Writes one batch, flushes once, answers everyone in it.
    fn commit(&mut self, batch: Vec<Job>) {
        let result = self.rotate_if_full().and_then(|()| self.write(&batch));
        match result {
            Ok(positions) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::SPOOL_FLUSHES).increment(1);
                metrics::counter!(names::SPOOL_RECORDS).increment(batch.len() as u64);
                for (job, pos) in batch.into_iter().zip(positions) {
                    let _ = job.done.send(Ok(pos));
                }
            }
            Err(e) => {
                tracing::error!(segment = self.seg, error = %e, "spool write failed; the batch is refused");
                for job in batch {
                    let _ = job.done.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }

    /// Writes the batch after the last good byte and flushes; on failure the
    /// file is cut back so the next batch follows intact records only.
    fn write(&mut self, batch: &[Job]) -> io::Result<Vec<Pos>> {
        let start = self.len;
        let mut at = start;
        let mut positions = Vec::with_capacity(batch.len());
        let written = (|| {
            for job in batch {
                positions.push(Pos {
                    seg: self.seg,
                    offset: at,
                });
                for chunk in &job.chunks {
                    self.file.write_all_at(chunk, at)?;
                    at += chunk.len() as u64;
                }
            }
            self.file.sync_data()
        })();
        match written {
            Ok(()) => {
                self.len = at;
                Ok(positions)
            }
            Err(e) => {
                let _ = self
                    .file
                    .set_len(start)
                    .and_then(|()| self.file.sync_data());
                Err(e)
            }
        }
    }

    /// Starts the next segment once the active one is full.
    fn rotate_if_full(&mut self) -> io::Result<()> {
        if self.len < self.segment_bytes {
            return Ok(());
        }
        let next = self.seg + 1;
        let file = create_segment(&self.dir, next)?;
        self.file = file;
        self.seg = next;
        self.len = SEGMENT_HEADER.len() as u64;
        self.active.store(next, Ordering::Release);
        Ok(())
    }
}

/// The file name of segment `seg`.
pub fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.seg"))
}

/// The segment number a file name stands for.
pub fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Creates an empty segment durably: its header flushed, its name in the directory.
pub fn create_segment(dir: &Path, seg: u64) -> io::Result<File> {
    let path = segment_path(dir, seg);
    let file = open_segment(&path, true)?;
    let made = file
        .write_all_at(SEGMENT_HEADER, 0)
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// Opens a segment for writing, readable by the owner only.
fn open_segment(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .open(path)
}

/// Fsyncs a directory so that a new or removed name in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_table() {
        let cases = [
            ("0000000000000007.seg", Some(7)),
            ("0000000000000000.seg", Some(0)),
            ("7.seg", None),
            ("000000000000000x.seg", None),
            ("0000000000000007.seg.tmp", None),
            ("+000000000000007.seg", None),
        ];
        for (name, want) in cases {
            assert_eq!(segment_number(name), want, "{name}");
        }
        assert_eq!(
            segment_number(
                segment_path(Path::new("/s"), 42)
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
            ),
            Some(42)
        );
    }

    #[test]
    fn concurrent_appends_share_flushes_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        create_segment(dir.path(), 1).unwrap();
        let log = Arc::new(Log::start(dir.path(), 1, SEGMENT_HEADER.len() as u64, 4096).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| log.append(vec![t as u8; 100 + i]).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Pos> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by_key(|p| (p.seg, p.offset));
        all.dedup();
        assert_eq!(all.len(), 400);
        assert!(log.active() > 1, "4 KiB segments must have rotated");
        assert!(log.commits() <= 400);
        for seg in 1..=log.active() {
            let bytes = fs::read(segment_path(dir.path(), seg)).unwrap();
            assert_eq!(&bytes[..16], SEGMENT_HEADER);
        }
    }
}
