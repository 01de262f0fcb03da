//! Delivery receipts: one hash-chained JSON line per recipient delivered, in
//! `<spool>/receipts/YYYY-MM-DD.jsonl` (UTC day of the delivery).
//!
//! Durability: a batch (the recipients one transaction delivered) is written
//! with one `write` on a file opened with `O_APPEND`, then `fdatasync`, before
//! the envelope update that marks them delivered is stored. A crash can so
//! leave a receipt for a delivery the spool does not know of (delivered again:
//! a second receipt) or a torn last line, never a delivered recipient without
//! a chance at a receipt. At start the writer closes a torn last line with a
//! newline (kept as evidence; `audit verify` names it) and chains on from the
//! last intact record.

pub mod chain;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::NaiveDate;

pub use chain::{Receipt, Verdict};

/// Appends receipts, keeping the hash of the last one.
#[derive(Debug)]
pub struct ReceiptLog {
    dir: PathBuf,
    retention: Duration,
    state: Mutex<State>,
}

/// The writer's memory of the chain.
#[derive(Debug)]
struct State {
    /// The hash the next record chains to.
    last: String,
    /// The day of the last write (`YYYY-MM-DD`), to prune once per day.
    day: String,
    /// A write failed part-way: the file may end in a torn line.
    dirty: bool,
}

/// The UTC day (`YYYY-MM-DD`) of a Unix time.
pub fn day_of(time: i64) -> String {
    chrono::DateTime::from_timestamp(time, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

impl ReceiptLog {
    /// Opens (creating) `dir`: finds the last hash and closes a torn last line.
    pub fn open(dir: &Path, retention: Duration) -> io::Result<ReceiptLog> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let last = recover(dir)?;
        Ok(ReceiptLog {
            dir: dir.to_path_buf(),
            retention,
            state: Mutex::new(State {
                last,
                day: String::new(),
                dirty: false,
            }),
        })
    }

    /// Chains, writes and flushes `receipts` (their `prev` is set here).
    pub fn append(&self, receipts: Vec<Receipt>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.dirty {
            // A failed write may have left whole records or a torn line: chain
            // on from what the files hold.
            st.last = recover(&self.dir)?;
            st.dirty = false;
        }
        // Per day: the lines, and the hash of the day's last record.
        let mut by_day: Vec<(String, Vec<u8>, String)> = Vec::new();
        let mut last = st.last.clone();
        let mut latest = st.day.clone();
        for mut r in receipts {
            r.prev = last;
            let (line, hash) = chain::seal(&r);
            last = hash.clone();
            // Never back into an earlier file: a batch timed just before midnight
            // but written after one timed just after it goes into the later day,
            // so the files stay in chain order.
            let day = day_of(r.time).max(latest);
            latest = day.clone();
            if by_day.last().is_none_or(|(d, _, _)| *d != day) {
                by_day.push((day, Vec::new(), String::new()));
            }
            let group = by_day.last_mut().expect("just pushed");
            group.1.extend_from_slice(line.as_bytes());
            group.1.push(b'\n');
            group.2 = hash;
        }
        let mut to_flush = Vec::with_capacity(by_day.len());
        for (day, buf, day_last) in by_day {
            if day != st.day {
                st.day = day.clone();
                self.prune(&day);
            }
            let written = append_unflushed(&self.dir.join(format!("{day}.jsonl")), &buf);
            match written {
                Ok(f) => to_flush.push(f),
                Err(e) => {
                    st.dirty = true;
                    return Err(e);
                }
            }
            st.last = day_last;
        }
        // The flush runs outside the lock: transactions that finish together
        // share the file system's commit (a group commit), and each caller still
        // returns only once its own lines are on stable storage.
        drop(st);
        let flushed = to_flush.into_iter().try_for_each(Written::flush);
        if flushed.is_err() {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
        }
        flushed
    }

    /// Deletes files older than the retention on `today`.
    fn prune(&self, today: &str) {
        let Ok(today) = NaiveDate::parse_from_str(today, "%Y-%m-%d") else {
            return;
        };
        let Ok(days) = days(&self.dir) else { return };
        let dates: Vec<NaiveDate> = (days.iter())
            .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .collect();
        for day in super::upkeep::expired_days(&dates, today, self.retention) {
            let path = self.dir.join(format!("{}.jsonl", day.format("%Y-%m-%d")));
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "receipts past their retention deleted")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete expired receipts")
                }
            }
        }
    }
}

/// The hash the next record in `dir` chains to, after closing a torn last
/// line of the newest file.
fn recover(dir: &Path) -> io::Result<String> {
    for (i, day) in days(dir)?.iter().rev().enumerate() {
        let path = dir.join(format!("{day}.jsonl"));
        if i == 0 {
            close_torn(&path)?;
        }
        if let Some(h) = last_hash(&fs::read_to_string(&path)?) {
            return Ok(h);
        }
    }
    Ok(chain::GENESIS.to_string())
}

/// Appends `buf` with `O_APPEND` (one write); [`Written::flush`] then puts the
/// data and a new file's directory entry on stable storage, so a day's file cannot vanish.
fn append_unflushed(path: &Path, buf: &[u8]) -> io::Result<Written> {
    use std::os::unix::fs::OpenOptionsExt;
    let new = !path.exists();
    let mut file = (OpenOptions::new().create(true).append(true))
        .mode(0o600)
        .open(path)?;
    file.write_all(buf)?;
    let dir = new.then(|| path.parent().map(Path::to_path_buf)).flatten();
    Ok(Written { file, dir })
}

/// Lines written to a day file, not yet flushed.
struct Written {
    file: File,
    /// The directory, when the file is new (its entry must be flushed too).
    dir: Option<std::path::PathBuf>,
}

impl Written {
    /// Puts the lines (and a new file's directory entry) on stable storage.
    fn flush(self) -> io::Result<()> {
        self.file.sync_data()?;
        if let Some(dir) = self.dir {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Ends the file with a newline when its last line is torn, so that the next
/// record starts a line of its own; the torn line stays as evidence.
fn close_torn(path: &Path) -> io::Result<()> {
    let mut f = match OpenOptions::new().read(true).append(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8];
    f.read_exact(&mut last)?;
    if last[0] != b'\n' {
        tracing::warn!(path = %path.display(), "receipt file ends in a torn record (interrupted write); closed with a newline and kept");
        f.write_all(b"\n")?;
        f.sync_data()?;
    }
    Ok(())
}

/// The hash of the last intact record of a file's text.
fn last_hash(text: &str) -> Option<String> {
    (text.lines().rev()).find_map(|l| chain::unseal(l).ok().map(|(_, h)| h))
}

/// The days (`YYYY-MM-DD`) that have a receipt file in `dir`, oldest first.
pub fn days(dir: &Path) -> io::Result<Vec<String>> {
    let mut days = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(days),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(day) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok() {
            days.push(day.to_string());
        }
    }
    days.sort();
    Ok(days)
}

/// The text of a receipt file; bytes that are not UTF-8 (damage, tampering)
/// become U+FFFD, so the line fails its hash instead of the read failing.
fn read_text(path: &Path) -> io::Result<String> {
    Ok(String::from_utf8_lossy(&fs::read(path)?).into_owned())
}

/// Every file of `dir` as (name, text), oldest first.
pub fn read_files(dir: &Path) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for day in days(dir)? {
        let name = format!("{day}.jsonl");
        out.push((name.clone(), read_text(&dir.join(&name))?));
    }
    Ok(out)
}

/// Checks the whole chain in `dir`, one file in memory at a time.
pub fn verify_dir(dir: &Path) -> io::Result<Verdict> {
    let days = days(dir)?;
    let mut checker = chain::Verifier::default();
    for (i, day) in days.iter().enumerate() {
        let name = format!("{day}.jsonl");
        let text = read_text(&dir.join(&name))?;
        if !checker.file(&name, &text, i + 1 == days.len()) {
            break;
        }
    }
    Ok(checker.finish())
}

/// The intact receipts of the days from `since` on (all days without it)
/// that `keep` accepts, one file in memory at a time.
pub fn read_since(
    dir: &Path,
    since: Option<NaiveDate>,
    keep: impl Fn(&Receipt) -> bool,
) -> io::Result<Vec<Receipt>> {
    let mut out = Vec::new();
    for day in days(dir)? {
        let date = NaiveDate::parse_from_str(&day, "%Y-%m-%d").ok();
        if since.is_some_and(|s| date.is_some_and(|d| d < s)) {
            continue;
        }
        let text = read_text(&dir.join(format!("{day}.jsonl")))?;
        let intact = text.lines().filter_map(|l| chain::unseal(l).ok());
        out.extend(intact.map(|(r, _)| r).filter(|r| keep(r)));
    }
    Ok(out)
}

/// What `audit find` looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// A Message-ID, with or without its angle brackets.
    MessageId(String),
    /// A recipient address (ASCII case ignored).
    Recipient(String),
}

impl Query {
    /// Whether `r` answers the query.
    pub fn matches(&self, r: &Receipt) -> bool {
        let bare = |s: &str| {
            s.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        };
        match self {
            Query::MessageId(id) => r.message_id.as_deref().is_some_and(|m| bare(m) == bare(id)),
            Query::Recipient(a) => r.recipient.eq_ignore_ascii_case(bare(a).as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mechanism::Mechanism;

    fn receipt(time: i64, rcpt: &str) -> Receipt {
        Receipt {
            time,
            queue_id: "q".into(),
            message_id: Some("<m1@example.org>".into()),
            sender: "s@example.org".into(),
            recipient: rcpt.into(),
            domain: "dest.test".into(),
            mx_host: "mx.dest.test".into(),
            addr: None,
            tls_version: "TLSv1.3".into(),
            cipher: "c".into(),
            kx_group: "X25519".into(),
            mechanism: Mechanism::Verify,
            spki_sha256: String::new(),
            policy: Default::default(),
            prev: String::new(),
        }
    }

    #[test]
    fn queries() {
        let r = receipt(0, "Bob@Dest.test");
        let cases = [
            (Query::MessageId("m1@example.org".into()), true),
            (Query::MessageId("<m1@example.org>".into()), true),
            (Query::MessageId("m2@example.org".into()), false),
            (Query::Recipient("bob@dest.test".into()), true),
            (Query::Recipient("<bob@dest.test>".into()), true),
            (Query::Recipient("alice@dest.test".into()), false),
        ];
        for (q, want) in cases {
            assert_eq!(q.matches(&r), want, "{q:?}");
        }
    }

    #[test]
    fn chain_spans_days_restarts_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400;
        let t0 = 1_767_225_600; // 2026-01-01
        let log = ReceiptLog::open(dir.path(), Duration::from_secs(400 * day as u64)).unwrap();
        log.append(vec![receipt(t0, "a@d.test"), receipt(t0 + day, "b@d.test")])
            .unwrap();
        drop(log);
        // A torn write at the end, then a restart and one more day.
        let last = dir.path().join("2026-01-02.jsonl");
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(b"{\"time\":17672").unwrap();
        let log = ReceiptLog::open(dir.path(), Duration::from_secs(400 * day as u64)).unwrap();
        log.append(vec![receipt(t0 + 2 * day, "c@d.test")]).unwrap();
        let v = verify_dir(dir.path()).unwrap();
        assert_eq!(
            (v.records, v.files, v.broken.clone()),
            (3, 3, None),
            "{v:?}"
        );
        assert_eq!(v.torn.len(), 1, "{v:?}");
        assert_eq!(v.torn[0].to_string(), "2026-01-02.jsonl:2");
        let found = read_since(dir.path(), NaiveDate::from_ymd_opt(2026, 1, 2), |_| true).unwrap();
        let rcpts: Vec<&str> = found.iter().map(|r| r.recipient.as_str()).collect();
        assert_eq!(rcpts, ["b@d.test", "c@d.test"]);
        // A byte that is not UTF-8 in a record: that record is named, the read does not fail.
        let first = dir.path().join("2026-01-01.jsonl");
        let mut bytes = fs::read(&first).unwrap();
        let at = bytes.iter().position(|&b| b == b'@').unwrap();
        bytes[at] = 0xff;
        fs::write(&first, bytes).unwrap();
        let v = verify_dir(dir.path()).unwrap();
        let broken = v.broken.map(|b| b.to_string()).unwrap_or_default();
        assert!(
            broken.starts_with("2026-01-01.jsonl:1: the record was altered"),
            "{broken}"
        );
    }

    #[test]
    fn a_failed_write_is_recovered_and_days_never_go_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("receipts");
        let t0 = 1_767_225_600; // 2026-01-01
        let log = ReceiptLog::open(dir.as_path(), Duration::from_secs(400 * 86_400)).unwrap();
        log.append(vec![receipt(t0, "a@d.test")]).unwrap();
        // The next day's file cannot be written (a directory stands in its place).
        let blocker = dir.as_path().join("2026-01-02.jsonl");
        fs::create_dir(&blocker).unwrap();
        assert!(log.append(vec![receipt(t0 + 86_400, "b@d.test")]).is_err());
        fs::remove_dir(&blocker).unwrap();
        log.append(vec![receipt(t0 + 86_400, "c@d.test")]).unwrap();
        // Timed a second before the last write's day: written to the later file.
        log.append(vec![receipt(t0 + 86_399, "d@d.test")]).unwrap();
        let v = verify_dir(dir.as_path()).unwrap();
        assert_eq!(
            (v.records, v.broken.clone(), v.torn.len()),
            (3, None, 0),
            "{v:?}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(dir.as_path()), mode(&blocker)), (0o700, 0o600));
        let second = fs::read_to_string(&blocker).unwrap();
        assert_eq!(second.lines().count(), 2, "{second}");
    }

    #[test]
    fn retention_prunes_old_days() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_767_225_600; // 2026-01-01
        let log = ReceiptLog::open(dir.path(), Duration::from_secs(2 * 86_400)).unwrap();
        for d in 0..5 {
            log.append(vec![receipt(t0 + d * 86_400, "a@d.test")])
                .unwrap();
        }
        let left = days(dir.path()).unwrap();
        assert_eq!(left, ["2026-01-03", "2026-01-04", "2026-01-05"]);
        let v = verify_dir(dir.path()).unwrap();
        assert_eq!(
            (v.records, v.broken.is_none(), v.anchor.is_some()),
            (3, true, true)
        );
    }
}
