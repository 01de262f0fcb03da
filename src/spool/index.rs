//! The spool's memory: every queued envelope and where its body lies, plus
//! how much of each segment is still needed. Rebuilt at start by replaying
//! the segments in order; pure (the caller reads the files).

use std::collections::{BTreeMap, HashMap};

use super::envelope::Envelope;
use super::record::{self, Found, Kind, SEGMENT_HEADER};
use super::valid_id;

/// Where a message's body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// The segment.
    pub seg: u64,
    /// The body's first byte in the segment.
    pub offset: u64,
    /// The body's length.
    pub len: u64,
}

/// A queued message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its current envelope.
    pub env: Envelope,
    /// Its body.
    pub body: Loc,
}

/// What one segment holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SegStat {
    /// Bytes in the file.
    pub size: u64,
    /// Queued messages whose body is here.
    pub live: usize,
    /// Bytes of those bodies.
    pub live_bytes: u64,
}

/// Every queued message and every segment.
#[derive(Debug, Default)]
pub struct Index {
    /// Queued messages by id.
    pub entries: HashMap<String, Entry>,
    /// Segments by number, oldest first.
    pub segs: BTreeMap<u64, SegStat>,
    /// Stores in flight, by the active segment when they were queued: no
    /// segment from there on may be deleted before they are in `entries`.
    pending: BTreeMap<u64, usize>,
}

/// A stretch of a segment that recovery could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The segment.
    pub seg: u64,
    /// The first byte dropped.
    pub offset: u64,
    /// How many bytes.
    pub bytes: u64,
    /// Why.
    pub why: DropReason,
}

/// Why recovery dropped part of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The file ends inside a record: a write never acknowledged.
    TornTail,
    /// Bytes that are no intact record (checksum or layout wrong).
    Damaged,
    /// An intact record whose envelope cannot be read or names another id.
    BadEnvelope(String),
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::TornTail => f.write_str("incomplete last write (never acknowledged)"),
            DropReason::Damaged => f.write_str("damaged bytes (checksum or layout)"),
            DropReason::BadEnvelope(id) => write!(f, "unreadable envelope of message {id}"),
        }
    }
}

/// What replaying one segment found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Where the intact part ends (appends may continue here).
    pub end: usize,
    /// What was dropped.
    pub dropped: Vec<Dropped>,
}

impl Index {
    /// Adds or moves a message's body (a store, or compaction).
    pub fn put(&mut self, env: Envelope, body: Loc) {
        self.live(body, 1);
        if let Some(old) = self.entries.insert(env.id.clone(), Entry { env, body }) {
            self.live(old.body, -1);
        }
    }

    /// Replaces an envelope; false when the message is not queued.
    pub fn set_env(&mut self, env: &Envelope) -> bool {
        match self.entries.get_mut(&env.id) {
            Some(e) => {
                e.env = env.clone();
                true
            }
            None => false,
        }
    }

    /// Forgets a message.
    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let old = self.entries.remove(id)?;
        self.live(old.body, -1);
        Some(old)
    }

    /// Notes that a segment now holds `size` bytes.
    pub fn grow(&mut self, seg: u64, size: u64) {
        let s = self.segs.entry(seg).or_default();
        s.size = s.size.max(size);
    }

    fn live(&mut self, body: Loc, delta: i64) {
        let s = self.segs.entry(body.seg).or_default();
        s.live = (s.live as i64 + delta) as usize;
        s.live_bytes = (s.live_bytes as i64 + delta * body.len as i64) as u64;
    }

    /// A store is about to be queued while `active` is the active segment.
    pub fn pending_add(&mut self, active: u64) {
        *self.pending.entry(active).or_default() += 1;
    }

    /// A store queued under `active` has finished (stored or not).
    pub fn pending_done(&mut self, active: u64) {
        if let Some(n) = self.pending.get_mut(&active) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&active);
            }
        }
    }

    /// Whether segment `seg` may be deleted: no store in flight may land in it.
    pub fn deletable(&self, seg: u64) -> bool {
        self.pending.keys().next().is_none_or(|&floor| seg < floor)
            && self.segs.get(&seg).is_some_and(|s| s.live == 0)
    }

    /// Points a message at a copy of its body, unless it changed meanwhile.
    pub fn move_body(&mut self, id: &str, from: Loc, to: Loc) {
        let Some(entry) = self.entries.get_mut(id).filter(|e| e.body == from) else {
            return;
        };
        entry.body = to;
        self.live(from, -1);
        self.live(to, 1);
    }

    /// The queued messages whose body is in segment `seg`.
    pub fn bodies_in(&self, seg: u64) -> Vec<(String, Loc)> {
        (self.entries.iter())
            .filter(|(_, e)| e.body.seg == seg)
            .map(|(id, e)| (id.clone(), e.body))
            .collect()
    }

    /// Whether copying segment `seg`'s queued messages forward pays: they
    /// fill at most half a segment, or the segments hold over twice what is
    /// queued (then old segments pin dead ones behind them).
    pub fn worth_compacting(&self, seg: u64, segment_bytes: u64) -> bool {
        let Some(s) = self.segs.get(&seg) else {
            return false;
        };
        let total: u64 = self.segs.values().map(|s| s.size).sum();
        let live: u64 = self.segs.values().map(|s| s.live_bytes).sum();
        s.live_bytes.saturating_mul(2) <= segment_bytes
            || total > live.saturating_mul(2) + segment_bytes.saturating_mul(2)
    }

    /// Applies every intact record of segment `seg` (its whole file in `buf`).
    /// `last` says whether it is the newest segment, whose damaged or torn
    /// tail is a write that never completed.
    pub fn replay(&mut self, seg: u64, buf: &[u8], last: bool) -> Replayed {
        let mut dropped = Vec::new();
        let mut at = SEGMENT_HEADER.len().min(buf.len());
        while at < buf.len() {
            match record::decode(&buf[at..]) {
                Found::Record(r, len) => {
                    if let Err(why) = self.apply(seg, at, &r) {
                        dropped.push(drop(seg, at, len, why));
                    }
                    at += len;
                }
                found => {
                    let next = record::resync(buf, at + 1);
                    let why = match (next, last && found == Found::Torn) {
                        (None, true) => DropReason::TornTail,
                        _ => DropReason::Damaged,
                    };
                    let to = next.unwrap_or(buf.len());
                    dropped.push(drop(seg, at, to - at, why));
                    at = to;
                }
            }
        }
        let end = match dropped.last() {
            Some(d)
                if d.offset + d.bytes == buf.len() as u64
                    && !matches!(d.why, DropReason::BadEnvelope(_)) =>
            {
                d.offset as usize
            }
            _ => buf.len(),
        };
        let out = Replayed { end, dropped };
        self.grow(seg, out.end as u64);
        out
    }

    /// Applies one intact record found at `at` in segment `seg`.
    fn apply(&mut self, seg: u64, at: usize, r: &record::Record<'_>) -> Result<(), DropReason> {
        let bad = || DropReason::BadEnvelope(r.id.escape_debug().to_string());
        if !valid_id(r.id) {
            return Err(bad());
        }
        match r.kind {
            Kind::Remove => {
                self.remove(r.id);
            }
            Kind::Update | Kind::Message => {
                let env: Envelope = serde_json::from_slice(r.envelope).map_err(|_| bad())?;
                if env.id != r.id {
                    return Err(bad());
                }
                if r.kind == Kind::Update {
                    // An update of a message already gone (or moved forward by
                    // compaction, whose record comes later) changes nothing.
                    self.set_env(&env);
                } else {
                    let body = Loc {
                        seg,
                        offset: (at + r.body_start) as u64,
                        len: r.body.len() as u64,
                    };
                    self.put(env, body);
                }
            }
        }
        Ok(())
    }
}

fn drop(seg: u64, at: usize, bytes: usize, why: DropReason) -> Dropped {
    Dropped {
        seg,
        offset: at as u64,
        bytes: bytes as u64,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::super::envelope::tests_support::envelope;
    use super::*;
    use crate::spool::record::encode;

    fn msg(id: &str, body: &[u8]) -> Vec<u8> {
        let env = serde_json::to_vec(&envelope(id)).unwrap();
        encode(Kind::Message, id, &env, body)
    }

    fn update(id: &str, attempts: u32) -> Vec<u8> {
        let mut e = envelope(id);
        e.attempts = attempts;
        encode(Kind::Update, id, &serde_json::to_vec(&e).unwrap(), b"")
    }

    fn remove(id: &str) -> Vec<u8> {
        encode(Kind::Remove, id, b"", b"")
    }

    fn segment(records: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = SEGMENT_HEADER.to_vec();
        for r in records {
            buf.extend_from_slice(r);
        }
        buf
    }

    #[test]
    fn replay_applies_records_in_order() {
        let buf = segment(&[
            msg("A", b"aa"),
            msg("B", b"bbb"),
            update("A", 3),
            remove("B"),
        ]);
        let mut idx = Index::default();
        let r = idx.replay(1, &buf, true);
        assert_eq!(
            r,
            Replayed {
                end: buf.len(),
                dropped: vec![]
            }
        );
        assert_eq!(idx.entries.len(), 1);
        let a = &idx.entries["A"];
        assert_eq!(a.env.attempts, 3);
        let body = &buf[a.body.offset as usize..][..a.body.len as usize];
        assert_eq!(body, b"aa");
        assert_eq!(
            idx.segs[&1],
            SegStat {
                size: buf.len() as u64,
                live: 1,
                live_bytes: 2
            }
        );
    }

    #[test]
    fn damage_table() {
        let (a, b, c) = (msg("A", b"one"), msg("B", b"two"), msg("C", b"three"));
        let whole = segment(&[a.clone(), b.clone(), c.clone()]);
        let h = SEGMENT_HEADER.len();
        let (b_at, c_at) = (h + a.len(), h + a.len() + b.len());
        let mut torn = whole.clone();
        torn.truncate(whole.len() - 2);
        let mut middle = whole.clone();
        middle[b_at + 20] ^= 0x40;
        let mut tail = whole.clone();
        tail[c_at + 20] ^= 0x40;
        let mut bad_env = segment(std::slice::from_ref(&a));
        bad_env.extend(encode(Kind::Message, "D", b"{not json", b"x"));
        bad_env.extend(encode(
            Kind::Message,
            "E",
            &serde_json::to_vec(&envelope("F")).unwrap(),
            b"x",
        ));
        type Case<'a> = (
            &'a str,
            &'a [u8],
            bool,
            &'a [&'a str],
            Vec<DropReason>,
            usize,
        );
        let cases: [Case; 6] = [
            (
                "intact",
                &whole,
                true,
                &["A", "B", "C"],
                vec![],
                whole.len(),
            ),
            (
                "torn tail",
                &torn,
                true,
                &["A", "B"],
                vec![DropReason::TornTail],
                c_at,
            ),
            (
                "torn tail of an older segment",
                &torn,
                false,
                &["A", "B"],
                vec![DropReason::Damaged],
                c_at,
            ),
            (
                "damaged middle record",
                &middle,
                true,
                &["A", "C"],
                vec![DropReason::Damaged],
                whole.len(),
            ),
            (
                "damaged last record",
                &tail,
                true,
                &["A", "B"],
                vec![DropReason::Damaged],
                c_at,
            ),
            (
                "bad envelopes",
                &bad_env,
                true,
                &["A"],
                vec![
                    DropReason::BadEnvelope("D".into()),
                    DropReason::BadEnvelope("E".into()),
                ],
                bad_env.len(),
            ),
        ];
        for (what, buf, last, ids, whys, end) in cases {
            let mut idx = Index::default();
            let r = idx.replay(1, buf, last);
            let mut got: Vec<&str> = idx.entries.keys().map(String::as_str).collect();
            got.sort();
            assert_eq!(got, ids, "{what}");
            let got_whys: Vec<DropReason> = r.dropped.iter().map(|d| d.why.clone()).collect();
            assert_eq!(got_whys, whys, "{what}");
            assert_eq!(r.end, end, "{what}");
        }
    }

    #[test]
    fn records_across_segments_and_deletion_rules() {
        let mut idx = Index::default();
        idx.replay(1, &segment(&[msg("A", b"a"), msg("B", b"b")]), false);
        // Compaction moved A forward; B was removed; an update of A before the move is stale.
        idx.replay(
            2,
            &segment(&[update("A", 1), remove("B"), msg("A", b"a"), update("A", 2)]),
            true,
        );
        assert_eq!(idx.entries["A"].body.seg, 2);
        assert_eq!(idx.entries["A"].env.attempts, 2);
        assert!(idx.deletable(1));
        assert!(!idx.deletable(2));
        idx.pending_add(1);
        assert!(!idx.deletable(1), "a store in flight may land in segment 1");
        idx.pending_done(1);
        assert!(idx.deletable(1));
    }
}
