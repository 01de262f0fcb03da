//! The receipt record and its hash chain, without I/O.
//!
//! A receipt is one JSON line. Its `hash` is SHA-256 over the exact bytes of
//! the line without the hash (the record's JSON, which holds `prev`, the hash
//! of the record before it). So altering a record breaks its own hash,
//! deleting one breaks the `prev` of the next, and replacing one with a
//! recomputed hash breaks the `prev` of the next too. The first record ever
//! chains to [`GENESIS`]; the first of a day chains to the last of the day before.

use serde::{Deserialize, Serialize};

use crate::model::mechanism::Mechanism;
use crate::model::rcpt::AppliedPolicy;

/// The `prev` of the very first receipt.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is appended to a record's JSON: `,"hash":"` 64 hex digits `"}`.
const HASH_PREFIX: &str = ",\"hash\":\"";

/// One recipient delivered: what was sent where, over what, under which policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// When the recipient was accepted (Unix seconds).
    pub time: i64,
    /// The queue id.
    pub queue_id: String,
    /// The Message-ID header, if the message had one.
    pub message_id: Option<String>,
    /// The envelope sender (empty for the null sender).
    pub sender: String,
    /// The recipient.
    pub recipient: String,
    /// The recipient domain (A-label).
    pub domain: String,
    /// The MX host that accepted it.
    pub mx_host: String,
    /// The address connected to.
    pub addr: Option<String>,
    /// TLS version, e.g. `TLSv1.3`.
    pub tls_version: String,
    /// Negotiated cipher suite.
    pub cipher: String,
    /// Negotiated key exchange group, e.g. `X25519`.
    pub kx_group: String,
    /// How the host was authenticated.
    pub mechanism: Mechanism,
    /// SHA-256 of the peer certificate's SubjectPublicKeyInfo, hex.
    pub spki_sha256: String,
    /// The policy that applied.
    pub policy: AppliedPolicy,
    /// The hash of the record before this one.
    pub prev: String,
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The line of `receipt` (its `prev` already set, no newline) and its hash.
pub fn seal(receipt: &Receipt) -> (String, String) {
    let body = serde_json::to_string(receipt).expect("a receipt always serializes");
    let hash = sha256_hex(body.as_bytes());
    let open = &body[..body.len() - 1];
    (format!("{open}{HASH_PREFIX}{hash}\"}}"), hash)
}

/// Why a line is not an intact receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsealed {
    /// Not a sealed record at all (no hash where it belongs, or not JSON).
    Unreadable,
    /// The hash does not match the bytes: the record was altered.
    Altered,
}

/// A line's receipt and hash, when the hash matches the bytes.
pub fn unseal(line: &str) -> Result<(Receipt, String), Unsealed> {
    let tail = HASH_PREFIX.len() + 64 + 2;
    if line.len() < tail + 2 || !line.is_char_boundary(line.len() - tail) {
        return Err(Unsealed::Unreadable);
    }
    let (open, sealed) = line.split_at(line.len() - tail);
    let Some(hash) = sealed
        .strip_prefix(HASH_PREFIX)
        .and_then(|h| h.strip_suffix("\"}"))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Err(Unsealed::Unreadable);
    };
    let body = format!("{open}}}");
    let receipt: Receipt = serde_json::from_str(&body).map_err(|_| Unsealed::Unreadable)?;
    if sha256_hex(body.as_bytes()) != hash {
        return Err(Unsealed::Altered);
    }
    Ok((receipt, hash.to_string()))
}

/// Where in the receipts a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The file name (`YYYY-MM-DD.jsonl`).
    pub file: String,
    /// The 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The first place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// This record's hash does not match its bytes: it was altered.
    Altered(Place),
    /// This record does not chain to the record before it: a record between
    /// them was deleted, or the one before was replaced.
    Unchained(Place),
    /// This line is no receipt, and is not the torn end of an interrupted write.
    Unreadable(Place),
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Altered(p) => write!(f, "{p}: the record was altered (its hash does not match its content)"),
            Break::Unchained(p) => write!(f, "{p}: the record does not chain to the one before it (a record before it was deleted or replaced)"),
            Break::Unreadable(p) => write!(f, "{p}: the line is not a receipt"),
        }
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Intact records checked.
    pub records: usize,
    /// Files read.
    pub files: usize,
    /// The `prev` of the oldest record, when it is not [`GENESIS`]: older
    /// files were deleted by the retention, so the chain starts there.
    pub anchor: Option<String>,
    /// Lines left by an interrupted write (a crash mid-append), tolerated:
    /// the chain continues past them.
    pub torn: Vec<Place>,
    /// The first break, if any.
    pub broken: Option<Break>,
    /// The hash of the last intact record (what the next record will chain to).
    pub last: Option<String>,
}

/// Checks the chain over `files` (name, content), oldest first; stops at the
/// first break. A line that is no sealed record is torn (tolerated) when it is
/// the last line of the last file, or when the next record chains past it
/// (the writer closes a torn line with a newline when it starts again).
pub fn verify(files: &[(String, String)]) -> Verdict {
    let mut checker = Verifier::default();
    for (i, (name, text)) in files.iter().enumerate() {
        if !checker.file(name, text, i + 1 == files.len()) {
            break;
        }
    }
    checker.finish()
}

/// The chain check fed one file at a time (oldest first), so that a year of
/// receipts is never in memory at once.
#[derive(Debug, Default)]
pub struct Verifier {
    v: Verdict,
    /// An unreadable line waiting for the next record to say whether it is torn.
    pending_torn: Option<Place>,
}

impl Verifier {
    /// Checks one more file; `last` when no file follows. False once broken.
    pub fn file(&mut self, name: &str, text: &str, last: bool) -> bool {
        self.v.files += 1;
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        for (li, line) in lines.iter().enumerate() {
            let place = Place {
                file: name.to_string(),
                line: li + 1,
            };
            if let Some(b) = self.line(line, place, last && li + 1 == lines.len()) {
                self.v.broken = Some(b);
                return false;
            }
        }
        true
    }

    /// Checks one line; the break it reveals, if any.
    fn line(&mut self, line: &str, place: Place, last_line: bool) -> Option<Break> {
        let v = &mut self.v;
        match unseal(line) {
            Ok((r, hash)) => {
                match v.last.as_deref() {
                    Some(h) if r.prev != h => return Some(Break::Unchained(place)),
                    Some(_) => {}
                    None => v.anchor = (r.prev != GENESIS).then(|| r.prev.clone()),
                }
                v.torn.extend(self.pending_torn.take());
                v.records += 1;
                v.last = Some(hash);
                None
            }
            Err(Unsealed::Altered) => Some(Break::Altered(place)),
            // Two crashes in a row can leave two torn lines at the very end.
            Err(Unsealed::Unreadable) if last_line => {
                v.torn.extend(self.pending_torn.take());
                v.torn.push(place);
                None
            }
            Err(Unsealed::Unreadable) if self.pending_torn.is_some() => {
                self.pending_torn.take().map(Break::Unreadable)
            }
            Err(Unsealed::Unreadable) => {
                self.pending_torn = Some(place);
                None
            }
        }
    }

    /// The verdict.
    pub fn finish(self) -> Verdict {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(n: i64, prev: &str) -> Receipt {
        Receipt {
            time: 1_700_000_000 + n,
            queue_id: format!("q{n}"),
            message_id: Some(format!("<m{n}@example.org>")),
            sender: "a@example.org".into(),
            recipient: format!("r{n}@dest.test"),
            domain: "dest.test".into(),
            mx_host: "mx.dest.test".into(),
            addr: Some("192.0.2.1".into()),
            tls_version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            kx_group: "X25519".into(),
            mechanism: Mechanism::Dane,
            spki_sha256: "ab".repeat(32),
            policy: AppliedPolicy::default(),
            prev: prev.into(),
        }
    }

    /// Files of `per_file` records each, chained from genesis.
    fn chain(per_file: &[usize]) -> Vec<(String, Vec<String>)> {
        let mut prev = GENESIS.to_string();
        let mut n = 0;
        let mut out = Vec::new();
        for (d, &count) in per_file.iter().enumerate() {
            let mut lines = Vec::new();
            for _ in 0..count {
                let (line, hash) = seal(&receipt(n, &prev));
                lines.push(line);
                prev = hash;
                n += 1;
            }
            out.push((format!("2026-01-0{}.jsonl", d + 1), lines));
        }
        out
    }

    fn text(files: &[(String, Vec<String>)]) -> Vec<(String, String)> {
        let join = |l: &Vec<String>| l.iter().map(|x| format!("{x}\n")).collect();
        files.iter().map(|(n, l)| (n.clone(), join(l))).collect()
    }

    fn at(file: usize, line: usize) -> Place {
        Place {
            file: format!("2026-01-0{file}.jsonl"),
            line,
        }
    }

    #[test]
    fn seal_and_unseal_round_trip() {
        let r = receipt(1, GENESIS);
        let (line, hash) = seal(&r);
        assert!(line.ends_with(&format!("\"hash\":\"{hash}\"}}")), "{line}");
        assert_eq!(unseal(&line), Ok((r, hash)));
        let edited = line.replacen("r1@dest.test", "r2@dest.test", 1);
        assert_eq!(unseal(&edited), Err(Unsealed::Altered));
        assert_eq!(unseal("garbage"), Err(Unsealed::Unreadable));
        assert_eq!(unseal(&line[..line.len() - 10]), Err(Unsealed::Unreadable));
        let long = format!("{}é{}", "x".repeat(10), "y".repeat(80));
        assert_eq!(unseal(&long), Err(Unsealed::Unreadable));
    }

    #[test]
    fn verify_table() {
        type Edit = fn(&mut Vec<(String, Vec<String>)>);
        type Case = (
            &'static str,
            Vec<usize>,
            Edit,
            usize,
            Vec<Place>,
            Option<Break>,
            bool,
        );
        // (name, files, edit) → (records, torn, broken, anchored)
        let cases: Vec<Case> = vec![
            ("intact", vec![3, 2], |_| {}, 5, vec![], None, false),
            ("empty", vec![], |_| {}, 0, vec![], None, false),
            (
                "a middle record edited",
                vec![3, 2],
                |f| f[0].1[1] = f[0].1[1].replacen("r1@", "rX@", 1),
                1,
                vec![],
                Some(Break::Altered(at(1, 2))),
                false,
            ),
            (
                "a middle line deleted",
                vec![3, 2],
                |f| {
                    f[0].1.remove(1);
                },
                1,
                vec![],
                Some(Break::Unchained(at(1, 2))),
                false,
            ),
            (
                "the first line of a day deleted",
                vec![3, 2],
                |f| {
                    f[1].1.remove(0);
                },
                3,
                vec![],
                Some(Break::Unchained(at(2, 1))),
                false,
            ),
            (
                "a whole middle day deleted",
                vec![2, 2, 2],
                |f| {
                    f.remove(1);
                    f[1].0 = "2026-01-02.jsonl".into();
                },
                2,
                vec![],
                Some(Break::Unchained(at(2, 1))),
                false,
            ),
            (
                "a record replaced with a fresh hash",
                vec![3],
                |f| {
                    let (r, _) = unseal(&f[0].1[1]).unwrap();
                    let mut r = r;
                    r.recipient = "evil@dest.test".into();
                    f[0].1[1] = seal(&r).0;
                },
                2,
                vec![],
                Some(Break::Unchained(at(1, 3))),
                false,
            ),
            (
                "torn final line",
                vec![2, 2],
                |f| {
                    let l = f[1].1[1].clone();
                    f[1].1[1] = l[..l.len() / 2].to_string();
                },
                3,
                vec![at(2, 2)],
                None,
                false,
            ),
            (
                "torn line closed, chain continues past it",
                vec![2, 2],
                |f| {
                    let l = f[1].1[1].clone();
                    let (r, _) = unseal(&l).unwrap();
                    let mut next = r;
                    next.queue_id = "q-again".into();
                    f[1].1[1] = l[..l.len() / 2].to_string();
                    f[1].1.push(seal(&next).0);
                },
                4,
                vec![at(2, 2)],
                None,
                false,
            ),
            (
                "torn twice at the very end (two crashes)",
                vec![3],
                |f| {
                    f[0].1[2] = "{\"time\":1".into();
                    f[0].1.push("{\"ti".into());
                },
                2,
                vec![at(1, 3), at(1, 4)],
                None,
                false,
            ),
            (
                "two unreadable lines in a row",
                vec![3],
                |f| {
                    f[0].1.insert(1, "junk".into());
                    f[0].1.insert(1, "junk".into());
                },
                1,
                vec![],
                Some(Break::Unreadable(at(1, 2))),
                false,
            ),
            (
                "oldest day pruned by retention",
                vec![2, 2],
                |f| {
                    f.remove(0);
                },
                2,
                vec![],
                None,
                true,
            ),
        ];
        for (name, per_file, edit, records, torn, broken, anchored) in cases {
            let mut files = chain(&per_file);
            edit(&mut files);
            let mut t = text(&files);
            if name.starts_with("torn final") {
                t.last_mut().unwrap().1.pop();
            }
            let v = verify(&t);
            assert_eq!(v.records, records, "{name}: {v:?}");
            assert_eq!(v.torn, torn, "{name}");
            assert_eq!(v.broken, broken, "{name}");
            assert_eq!(v.anchor.is_some(), anchored, "{name}");
        }
    }
}
