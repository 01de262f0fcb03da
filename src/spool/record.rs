//! The spool's on-disk records: pure encoding and decoding, no I/O.
//!
//! A segment file is a header followed by records. Each record is
//! `magic | length | crc32(length ‖ payload) | payload`, so a reader can tell a
//! complete record from a torn or damaged one, and find the next record after
//! damage by looking for the magic again.
//!
//! Payload: `kind | id length | id | …` where a message carries its envelope
//! (JSON, with a length) and then its body, an update carries an envelope, and
//! a removal carries nothing more.

/// Bytes at the start of every segment file; the last byte is the format version.
pub const SEGMENT_HEADER: &[u8; 16] = b"tlsrelay-spool\x00\x02";

/// Bytes at the start of every record.
const MAGIC: [u8; 4] = *b"TRec";

/// Magic, length and checksum.
pub const RECORD_HEADER: usize = 12;

/// The largest payload a record may have (a message body is bounded far below).
const MAX_PAYLOAD: u32 = 1 << 30;

/// What a record says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new message (or one moved forward by compaction): envelope and body.
    Message = 1,
    /// A new state of the envelope.
    Update = 2,
    /// The message left the queue.
    Remove = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Message),
            2 => Some(Kind::Update),
            3 => Some(Kind::Remove),
            _ => None,
        }
    }
}

/// A decoded record, borrowing from the segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the record says.
    pub kind: Kind,
    /// The queue id.
    pub id: &'a str,
    /// The envelope as JSON (empty for a removal).
    pub envelope: &'a [u8],
    /// Where the body starts, counted from the record's first byte.
    pub body_start: usize,
    /// The body (empty unless `kind` is `Message`).
    pub body: &'a [u8],
}

/// Encodes a record. The id must be short ASCII (the spool checks it first).
pub fn encode(kind: Kind, id: &str, envelope: &[u8], body: &[u8]) -> Vec<u8> {
    encode_parts(kind, id, envelope, vec![body.to_vec()])
        .chunks
        .concat()
}

/// A record as chunks to write one after another: the head, then the body's
/// pieces as they were handed over (a large body is never copied).
#[derive(Debug)]
pub struct Parts {
    /// The record's bytes, in order.
    pub chunks: Vec<Vec<u8>>,
    /// Offset of the body within the record.
    pub body_start: usize,
    /// The body's length.
    pub body_len: usize,
}

impl Parts {
    /// The record's length.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }
}

/// Encodes a record whose body comes in pieces (taken, not copied).
pub fn encode_parts(kind: Kind, id: &str, envelope: &[u8], body: Vec<Vec<u8>>) -> Parts {
    let id_len = u8::try_from(id.len()).expect("queue ids are short");
    let mut head = Vec::with_capacity(RECORD_HEADER + 6 + id.len() + envelope.len());
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&[0; 8]);
    head.push(kind as u8);
    head.push(id_len);
    head.extend_from_slice(id.as_bytes());
    if kind != Kind::Remove {
        head.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
        head.extend_from_slice(envelope);
    }
    let body_start = head.len();
    let body_len: usize = body.iter().map(Vec::len).sum();
    let len = ((body_start - RECORD_HEADER + body_len) as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&head[RECORD_HEADER..]);
    body.iter().for_each(|p| crc.update(p));
    head[4..8].copy_from_slice(&len);
    head[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    let mut chunks = Vec::with_capacity(1 + body.len());
    chunks.push(head);
    chunks.extend(body.into_iter().filter(|p| !p.is_empty()));
    Parts {
        chunks,
        body_start,
        body_len,
    }
}

/// What is found at one position of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// A complete, intact record of `len` bytes.
    Record(Record<'a>, usize),
    /// The bytes end inside a record: a write that never completed.
    Torn,
    /// No record here (bad magic, checksum or layout).
    Damaged,
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Found<'_> {
    if buf.len() < RECORD_HEADER {
        return if MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            Found::Torn
        } else {
            Found::Damaged
        };
    }
    if buf[..4] != MAGIC {
        return Found::Damaged;
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if len > MAX_PAYLOAD {
        return Found::Damaged;
    }
    let end = RECORD_HEADER + len as usize;
    if buf.len() < end {
        return Found::Torn;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[4..8]);
    crc.update(&buf[RECORD_HEADER..end]);
    if crc.finalize().to_le_bytes() != buf[8..12] {
        return Found::Damaged;
    }
    match parse_payload(&buf[RECORD_HEADER..end]) {
        Some(record) => Found::Record(record, end),
        None => Found::Damaged,
    }
}

/// Splits a checked payload into its fields.
fn parse_payload(p: &[u8]) -> Option<Record<'_>> {
    let kind = Kind::from_byte(*p.first()?)?;
    let id_len = *p.get(1)? as usize;
    let id = std::str::from_utf8(p.get(2..2 + id_len)?).ok()?;
    let mut at = 2 + id_len;
    let mut envelope: &[u8] = &[];
    if kind != Kind::Remove {
        let n = u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?) as usize;
        envelope = p.get(at + 4..at + 4 + n)?;
        at += 4 + n;
    }
    let body = &p[at..];
    if kind != Kind::Message && !body.is_empty() {
        return None;
    }
    Some(Record {
        kind,
        id,
        envelope,
        body_start: RECORD_HEADER + at,
        body,
    })
}

/// The next position after `from` where an intact record starts, if any.
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(3))
        .filter(|&i| buf[i..i + 4] == MAGIC)
        .find(|&i| matches!(decode(&buf[i..]), Found::Record(..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_table() {
        let cases: [(Kind, &str, &[u8], &[u8]); 4] = [
            (
                Kind::Message,
                "AAAA0001",
                b"{\"id\":1}",
                b"Subject: x\r\n\r\nhi\r\n",
            ),
            (Kind::Message, "B", b"{}", b""),
            (Kind::Update, "AAAA0001", b"{\"id\":2}", b""),
            (Kind::Remove, "AAAA0001", b"", b""),
        ];
        for (kind, id, env, body) in cases {
            let halves = vec![
                body[..body.len() / 2].to_vec(),
                body[body.len() / 2..].to_vec(),
            ];
            let parts = encode_parts(kind, id, env, halves);
            let bytes = encode(kind, id, env, body);
            assert_eq!(parts.chunks.concat(), bytes, "pieces encode as one body");
            let Found::Record(r, len) = decode(&bytes) else {
                panic!("{kind:?} did not decode");
            };
            assert_eq!(len, bytes.len());
            assert_eq!((r.kind, r.id, r.envelope, r.body), (kind, id, env, body));
            assert_eq!(r.body_start, parts.body_start);
            assert_eq!(&bytes[parts.body_start..], body);
        }
    }

    #[test]
    fn torn_and_damaged_table() {
        let good = encode(Kind::Message, "AAAA0001", b"{}", b"body");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut big_len = good.clone();
        big_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut bad_kind = encode(Kind::Update, "A", b"{}", b"");
        bad_kind[RECORD_HEADER] = 9;
        let cases: [(&str, &[u8], Found); 7] = [
            ("empty", &[], Found::Torn),
            ("magic cut", &good[..2], Found::Torn),
            ("header cut", &good[..10], Found::Torn),
            ("payload cut", &good[..good.len() - 1], Found::Torn),
            ("flipped bit", &flipped, Found::Damaged),
            ("absurd length", &big_len, Found::Damaged),
            ("zeros", &[0u8; 40], Found::Damaged),
        ];
        for (what, bytes, want) in cases {
            assert_eq!(decode(bytes), want, "{what}");
        }
        // The checksum covers the kind, so a bad kind is caught as damage.
        assert_eq!(decode(&bad_kind), Found::Damaged);
    }

    #[test]
    fn resync_finds_the_next_intact_record() {
        let a = encode(Kind::Message, "A", b"{}", b"one");
        let b = encode(Kind::Remove, "A", b"", b"");
        let mut buf = a.clone();
        buf[RECORD_HEADER + 3] ^= 0xff;
        buf.extend_from_slice(b"TRecgarbage");
        let at = buf.len();
        buf.extend_from_slice(&b);
        assert_eq!(decode(&buf), Found::Damaged);
        assert_eq!(resync(&buf, 1), Some(at));
        assert_eq!(resync(&buf, at + 1), None);
    }
}
