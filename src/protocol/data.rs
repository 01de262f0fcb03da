//! Message data as it arrives after DATA (RFC 5321 §4.1.1.4, §4.5.2) and after
//! BDAT (RFC 3030), turned into what the spool keeps: lines ending in CRLF only.
//!
//! RFC 5321 §2.3.8 forbids sending a bare CR or a bare LF, and receivers disagree
//! about what such a byte means, which is what SMTP smuggling exploits: a body
//! holding `\r.\r\n` or `\n.\n` ends the message at one server and not at the
//! next. tlsrelay normalises instead of refusing (as Postfix's
//! `smtpd_forbid_bare_newline = normalize` does for LF): each bare CR and each
//! bare LF becomes CRLF, so the stored message and every byte sent on carry only
//! CRLF line ends and such a line is dot-stuffed like any other. Refusing would
//! bounce mail from the internal MTA whose only fault is a sloppy generator;
//! normalising removes the ambiguity without losing it. End of data is only
//! CRLF `.` CRLF, where the start of the data counts as following a CRLF.

/// Where the receiver stands between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `crlf` when the previous line ended in a real
    /// CRLF (or the data just began), the only case where `.` CRLF ends the data.
    Start { crlf: bool },
    /// The line so far is one `.`.
    Dot { crlf: bool },
    /// The line so far is `.` CR.
    DotCr { crlf: bool },
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR (line end, bare or not, decided by the next byte).
    Cr,
}

/// Receives DATA: unstuffs dots, normalises line ends, finds the end of data.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
}

impl Default for DataReceiver {
    fn default() -> Self {
        DataReceiver::new()
    }
}

impl DataReceiver {
    /// A receiver for data that starts right after the 354 reply.
    pub fn new() -> DataReceiver {
        DataReceiver {
            state: State::Start { crlf: true },
        }
    }

    /// Appends the message bytes of `input` to `out`. Returns how many bytes of
    /// `input` were used when the end-of-data line was among them (what follows
    /// is the next command), None when all were used and more data is due.
    pub fn ingest(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        for (i, &b) in input.iter().enumerate() {
            if self.step(b, out) {
                return Some(i + 1);
            }
        }
        None
    }

    /// One byte; true when it completed the end-of-data line.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        use State::*;
        self.state = match (self.state, b) {
            (DotCr { crlf: true }, b'\n') => return true,
            (Start { crlf }, b'.') => Dot { crlf },
            (Dot { crlf }, b'\r') => DotCr { crlf },
            // A lone `.` line that does not end the data is kept as a `.` line.
            (Dot { .. }, b'\n') => {
                out.extend_from_slice(b".\r\n");
                Start { crlf: false }
            }
            (DotCr { .. }, b'\n') => {
                out.extend_from_slice(b".\r\n");
                Start { crlf: true }
            }
            (DotCr { .. }, next) => {
                out.extend_from_slice(b".\r\n");
                after_line_end(next, out)
            }
            // The first dot of a longer line is transparency stuffing: dropped.
            (Dot { .. }, next) | (Start { .. }, next) | (Text, next) => in_line(next, out),
            (Cr, b'\n') => {
                out.extend_from_slice(b"\r\n");
                Start { crlf: true }
            }
            (Cr, next) => {
                out.extend_from_slice(b"\r\n");
                after_line_end(next, out)
            }
        };
        false
    }
}

/// A byte inside a line (or starting one that is not a dot).
fn in_line(b: u8, out: &mut Vec<u8>) -> State {
    match b {
        b'\r' => State::Cr,
        b'\n' => {
            out.extend_from_slice(b"\r\n");
            State::Start { crlf: false }
        }
        _ => {
            out.push(b);
            State::Text
        }
    }
}

/// The first byte after a line that ended in a bare CR.
fn after_line_end(b: u8, out: &mut Vec<u8>) -> State {
    if b == b'.' {
        State::Dot { crlf: false }
    } else {
        in_line(b, out)
    }
}

/// BDAT data (no dot-stuffing) with every bare CR and bare LF made CRLF.
pub fn normalize_line_ends(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Whether `data` holds a CR not followed by LF or an LF not preceded by CR.
pub fn has_bare_line_end(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => data.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || data[i - 1] != b'\r',
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` whole and byte by byte; both must agree.
    fn receive(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut whole = Vec::new();
        let used = DataReceiver::new().ingest(input, &mut whole);
        let mut r = DataReceiver::new();
        let mut split = Vec::new();
        let mut used_split = None;
        for (i, b) in input.iter().enumerate() {
            if r.ingest(std::slice::from_ref(b), &mut split).is_some() {
                used_split = Some(i + 1);
                break;
            }
        }
        assert_eq!((&whole, used), (&split, used_split), "{input:?}");
        (whole, used)
    }

    #[test]
    fn data_table() {
        // (input, stored message, bytes used up to the end-of-data line)
        let cases: &[(&[u8], &[u8], Option<usize>)] = &[
            (b".\r\nQUIT\r\n", b"", Some(3)),
            (b"..x\r\n.\r\n", b".x\r\n", Some(8)),
            (b"a\r\n..\r\n.\r\nRSET", b"a\r\n.\r\n", Some(10)),
            (b"a\r\nb\r\n.\r\n", b"a\r\nb\r\n", Some(9)),
            (b"a\nb\rc\r\n.\r\n", b"a\r\nb\r\nc\r\n", Some(10)),
            // Smuggling shapes: never the end, stored as plain `.` lines.
            (b"a\r.\r\nMAIL", b"a\r\n.\r\nMAIL", None),
            (b"a\n.\r\nMAIL", b"a\r\n.\r\nMAIL", None),
            (b"a\r\n.\nMAIL", b"a\r\n.\r\nMAIL", None),
            (b"a\r\n.\rMAIL", b"a\r\n.\r\nMAIL", None),
            (b"a\r.\rMAIL", b"a\r\n.\r\nMAIL", None),
            (b"a\n.\n\r\n.\r\n", b"a\r\n.\r\n\r\n", Some(9)),
            (b"a\r\r\n", b"a\r\n\r\n", None),
            (b"a\r\n.x\r.\r\n", b"a\r\nx\r\n.\r\n", None),
        ];
        for (input, want, used) in cases {
            let (got, n) = receive(input);
            assert_eq!(
                (String::from_utf8_lossy(&got), n),
                (String::from_utf8_lossy(want), *used),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert!(!has_bare_line_end(&got), "{got:?}");
        }
    }

    #[test]
    fn bdat_line_ends() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb", b"a\r\nb"),
            (b"a\nb\rc\r\r\n", b"a\r\nb\r\nc\r\n\r\n"),
            (b"\r.\r\n", b"\r\n.\r\n"),
            (b"x\r", b"x\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_line_ends(input), *want, "{input:?}");
        }
        assert!(has_bare_line_end(b"a\rb") && has_bare_line_end(b"\n"));
        assert!(!has_bare_line_end(b"a\r\nb\r\n"));
    }
}
