//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy body and MX host
//! pattern matching. Pure functions, no I/O.
//!
//! Where RFC 8461 leaves room, the choices are these (each one is pinned by a
//! case in the tests below):
//!
//! * Duplicated non-`mx` fields, in the record and in the policy: the first
//!   one counts and later ones are ignored, as §3.2 says ("all entries except
//!   for the first SHALL be ignored"). A duplicate must still be a well-formed
//!   `name=value` / `name: value` field.
//! * A TXT record is an STS record only if it begins with exactly `v=STSv1`
//!   followed by `;`, whitespace or its end (§3.1). `v=STSv10;…`, `V=STSv1;…`
//!   and ` v=STSv1;…` are other records and are ignored.
//! * Apart from that, both parsers follow the ABNF strictly (case-sensitive
//!   field names and values, no whitespace around `=`, `:` directly after the
//!   field name), with three tolerances that cannot change what a field
//!   means: whitespace at the end of a TXT record, blank lines in a policy,
//!   and a trailing dot on an `mx` pattern.
//! * `max_age` above 31557600 (one year) but within the ABNF's ten digits is
//!   clamped to 31557600 instead of rejecting the whole policy.
//! * `mx` patterns may be given as U-labels; they are converted to A-labels.
//!   IP addresses and address literals are refused.
//!
//! Rejecting a policy makes a sender act as though the domain had no policy
//! (§3.3, §5.1), which is the weaker outcome; the tolerances above are cases
//! where rejecting would gain nothing. Callers must keep a cached, unexpired
//! policy when a fresh record or policy does not parse.

/// The largest `max_age` RFC 8461 §3.2 allows: 31557600 seconds (one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// Why a record or policy was rejected: a precise message naming the line or field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsError(pub String);

impl std::fmt::Display for StsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StsError {}

/// The `_mta-sts` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy instance id: 1 to 32 ASCII letters and digits.
    pub id: String,
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn txt_err(msg: impl std::fmt::Display) -> StsError {
    StsError(format!("MTA-STS TXT record: {msg}"))
}

/// Whether `name` is an `sts-ext-name` / `sts-policy-ext-name`:
/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`.
fn is_ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// Parses the TXT records found at `_mta-sts.<domain>`: each element is one record with its strings already concatenated.
///
/// Records that do not begin with `v=STSv1` (followed by `;`, whitespace or
/// the end) are ignored; none left gives `Ok(None)`, more than one is an
/// error, and the one left must match the RFC 8461 §3.1 grammar.
pub fn parse_txt(records: &[Vec<u8>]) -> Result<Option<StsRecord>, StsError> {
    let candidates: Vec<&[u8]> = records
        .iter()
        .map(Vec::as_slice)
        .filter(|r| {
            r.strip_prefix(b"v=STSv1")
                .is_some_and(|rest| matches!(rest.first(), None | Some(b';' | b' ' | b'\t')))
        })
        .collect();
    match candidates.len() {
        0 => Ok(None),
        1 => parse_one_txt(candidates[0]).map(Some),
        n => Err(txt_err(format!(
            "{n} records begin with v=STSv1; exactly one is allowed"
        ))),
    }
}

fn parse_one_txt(raw: &[u8]) -> Result<StsRecord, StsError> {
    if let Some(i) = raw.iter().position(|&b| !b.is_ascii()) {
        return Err(txt_err(format!(
            "non-ASCII byte 0x{:02x} at offset {i}",
            raw[i]
        )));
    }
    if let Some(i) = raw
        .iter()
        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(txt_err(format!(
            "control character 0x{:02x} at offset {i}",
            raw[i]
        )));
    }
    let text = std::str::from_utf8(raw).expect("checked ASCII");
    // Whitespace at the very end is outside the ABNF unless a ";" precedes
    // it; it changes nothing, so it is tolerated.
    let rest = text["v=STSv1".len()..].trim_end_matches(is_wsp);
    let mut segments = rest.split(';');
    let first = segments.next().unwrap_or("");
    if !first.chars().all(is_wsp) {
        return Err(txt_err(format!(
            "expected \";\" after v=STSv1, found {:?}",
            first.trim_matches(is_wsp)
        )));
    }
    let fields: Vec<&str> = segments.collect();
    let mut id: Option<String> = None;
    let mut case_hint: Option<String> = None;
    for (i, seg) in fields.iter().enumerate() {
        let field = seg.trim_matches(is_wsp);
        if field.is_empty() {
            if i + 1 == fields.len() {
                continue; // the optional trailing ";"
            }
            return Err(txt_err("empty field (two \";\" in a row)"));
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(txt_err(format!("field {field:?} has no \"=\"")));
        };
        if name.ends_with(is_wsp) || value.starts_with(is_wsp) {
            return Err(txt_err(format!(
                "field {field:?}: whitespace around \"=\" is not allowed"
            )));
        }
        if !is_ext_name(name) {
            return Err(txt_err(format!("invalid field name {name:?}")));
        }
        if name == "id" && id.is_none() {
            if value.is_empty() {
                return Err(txt_err("id is empty"));
            }
            if let Some(c) = value.chars().find(|c| !c.is_ascii_alphanumeric()) {
                return Err(txt_err(format!(
                    "id {value:?} contains {c:?}; only letters and digits are allowed"
                )));
            }
            if value.len() > 32 {
                return Err(txt_err(format!(
                    "id {value:?} is {} characters long; at most 32 are allowed",
                    value.len()
                )));
            }
            id = Some(value.to_string());
            continue;
        }
        // An extension, or a later duplicate of v or id (ignored, RFC 8461
        // §3.2): it must still be a well-formed sts-extension.
        if value.is_empty() {
            return Err(txt_err(format!("field {name:?} has an empty value")));
        }
        if let Some(c) = value
            .chars()
            .find(|&c| !matches!(c, '\x21'..='\x3a' | '\x3c' | '\x3e'..='\x7e'))
        {
            return Err(txt_err(format!(
                "field {name:?}: character {c:?} is not allowed in a value"
            )));
        }
        if name.eq_ignore_ascii_case("id") && name != "id" && case_hint.is_none() {
            case_hint = Some(name.to_string());
        }
    }
    match id {
        Some(id) => Ok(StsRecord { id }),
        None => Err(txt_err(match case_hint {
            Some(n) => {
                format!("missing required field id (field names are case-sensitive; found {n:?})")
            }
            None => "missing required field id".to_string(),
        })),
    }
}

/// Policy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts with valid certificates.
    Enforce,
    /// Report failures but deliver anyway.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

impl Mode {
    /// The mode as written in a policy: `enforce`, `testing` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

pub use crate::model::domain::MxPattern;

/// A parsed policy (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsPolicy {
    /// The policy mode.
    pub mode: Mode,
    /// The allowed MX patterns, in policy order (may be empty only in mode `none`).
    pub mx: Vec<MxPattern>,
    /// How long the policy may be cached, in seconds (at most [`MAX_AGE_LIMIT`]).
    pub max_age: u64,
    /// The policy as fetched, every line ended by CRLF, for TLS-RPT's "policy-string".
    pub text: String,
}

impl StsPolicy {
    /// Whether the policy lets `host` be contacted (mode none → always; otherwise some pattern matches).
    pub fn allows(&self, host: &str) -> bool {
        self.mode == Mode::None || self.mx.iter().any(|p| p.matches(host))
    }

    /// The normalised `mx` patterns, in policy order.
    pub fn mx_strings(&self) -> Vec<String> {
        self.mx.iter().map(|p| p.as_str().to_string()).collect()
    }
}

/// Parses a policy body (RFC 8461 §3.2).
///
/// Lines end in LF or CRLF. Fields are `name: value`, the name case-sensitive
/// and at the start of the line. `version: STSv1`, `mode` and `max_age` are
/// required in any order (the first of duplicates counts); `mx` at least once
/// unless the mode is `none`. Unknown fields are ignored if well-formed.
/// Blank lines are ignored; `max_age` above one year is clamped to one year.
pub fn parse_policy(body: &str) -> Result<StsPolicy, StsError> {
    let mut lines: Vec<&str> = body.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let lines: Vec<&str> = lines
        .into_iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();

    let mut version: Option<()> = None;
    let mut mode: Option<Mode> = None;
    let mut max_age: Option<u64> = None;
    let mut mx: Vec<MxPattern> = Vec::new();
    // Field names that differ from a known one only in case, for the hint in
    // "missing required field".
    let mut case_hints: Vec<(usize, String)> = Vec::new();

    for (i, line) in lines.iter().enumerate() {
        let n = i + 1;
        let err = |msg: String| StsError(format!("MTA-STS policy line {n}: {msg}"));
        if let Some(c) = line.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(err(format!(
                "control character U+{:04X} is not allowed",
                c as u32
            )));
        }
        // Blank lines are outside the ABNF but carry nothing; ignoring them
        // keeps a policy with, say, a doubled final newline valid.
        if line.chars().all(is_wsp) {
            continue;
        }
        if line.starts_with(is_wsp) {
            return Err(err(
                "leading whitespace (a folded continuation line?) is not allowed".into(),
            ));
        }
        if line.starts_with('\u{feff}') {
            return Err(err("byte-order mark is not allowed".into()));
        }
        let Some((name, rest)) = line.split_once(':') else {
            return Err(err(format!(
                "no \":\" in {line:?}; expected \"name: value\""
            )));
        };
        if !is_ext_name(name) {
            return Err(err(if name.ends_with(is_wsp) {
                format!(
                    "whitespace before \":\" after field name {:?}",
                    name.trim_end_matches(is_wsp)
                )
            } else if !name.is_ascii() {
                format!("non-ASCII field name {name:?}")
            } else {
                format!("invalid field name {name:?}")
            }));
        }
        let value = rest.trim_matches(is_wsp);
        if value.is_empty() {
            return Err(err(format!("field {name:?} has an empty value")));
        }
        match name {
            "version" if version.is_none() => {
                if value != "STSv1" {
                    return Err(err(format!(
                        "unsupported version {value:?}; expected \"STSv1\""
                    )));
                }
                version = Some(());
            }
            "mode" if mode.is_none() => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => {
                        return Err(err(format!(
                            "invalid mode {value:?}; expected \"enforce\", \"testing\" or \"none\" (case-sensitive)"
                        )))
                    }
                });
            }
            "max_age" if max_age.is_none() => {
                if !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(format!(
                        "max_age {value:?} is not a non-negative integer"
                    )));
                }
                if value.len() > 10 {
                    return Err(err(format!("max_age {value:?} has more than 10 digits")));
                }
                let v: u64 = value.parse().expect("at most 10 digits");
                max_age = Some(v.min(MAX_AGE_LIMIT));
            }
            "mx" => mx.push(
                MxPattern::parse(value)
                    .map_err(|e| err(format!("mx pattern {value:?}: {}", e.why)))?,
            ),
            _ => {
                // An extension, or a later duplicate of version, mode or
                // max_age (ignored, RFC 8461 §3.2). Either way it must be a
                // well-formed sts-policy-ext-value: visible characters
                // (UTF-8 included) and inner spaces.
                if let Some(c) = value.chars().find(|&c| c == '\t') {
                    return Err(err(format!(
                        "field {name:?}: character {c:?} is not allowed in a value"
                    )));
                }
                if ["version", "mode", "max_age", "mx"]
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(name) && *k != name)
                {
                    case_hints.push((n, name.to_string()));
                }
            }
        }
    }

    let missing = |field: &str| {
        let hint = case_hints
            .iter()
            .find(|(_, h)| h.eq_ignore_ascii_case(field))
            .map(|(n, h)| format!(" (field names are case-sensitive; line {n} has {h:?})"))
            .unwrap_or_default();
        StsError(format!(
            "MTA-STS policy: missing required field {field:?}{hint}"
        ))
    };
    if lines.iter().all(|l| l.chars().all(is_wsp)) {
        return Err(StsError("MTA-STS policy: empty policy".into()));
    }
    version.ok_or_else(|| missing("version"))?;
    let mode = mode.ok_or_else(|| missing("mode"))?;
    let max_age = max_age.ok_or_else(|| missing("max_age"))?;
    if mx.is_empty() && mode != Mode::None {
        let e = missing("mx");
        return Err(StsError(format!(
            "{} (at least one is required in mode {})",
            e.0,
            mode.as_str()
        )));
    }
    let mut text = String::with_capacity(body.len() + lines.len());
    for l in &lines {
        text.push_str(l);
        text.push_str("\r\n");
    }
    Ok(StsPolicy {
        mode,
        mx,
        max_age,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a TXT case should give.
    #[derive(Debug)]
    enum T {
        /// `Ok(Some(record))` with this id.
        Id(&'static str),
        /// `Ok(None)`: no STS record among the records.
        NoRecord,
        /// An error whose message contains this.
        Err(&'static str),
    }

    #[test]
    fn txt_table() {
        let id32 = "a".repeat(32);
        let id33 = format!("v=STSv1; id={}", "b".repeat(33));
        let rec32 = format!("v=STSv1; id={id32}");
        let ext33 = format!("v=STSv1; id=1; {}=x", "e".repeat(33));
        let ext32 = format!("v=STSv1; id=1; {}=x", "e".repeat(32));
        let cases: Vec<(&str, Vec<Vec<u8>>, T)> = vec![
            // --- valid ---
            (
                "rfc example",
                vec![b"v=STSv1; id=20160831085700Z;".to_vec()],
                T::Id("20160831085700Z"),
            ),
            (
                "no trailing ;",
                vec![b"v=STSv1; id=20160831085700Z".to_vec()],
                T::Id("20160831085700Z"),
            ),
            ("no spaces", vec![b"v=STSv1;id=1".to_vec()], T::Id("1")),
            // sts-field-delim = *WSP ";" *WSP allows space before ";", although
            // the prose says records not beginning with "v=STSv1;" are
            // discarded (erratum 6285). We follow the ABNF: it is an STS record.
            (
                "space before ;",
                vec![b"v=STSv1 ; id=1".to_vec()],
                T::Id("1"),
            ),
            ("tabs", vec![b"v=STSv1;\tid=abc;\t".to_vec()], T::Id("abc")),
            (
                "trailing ; and spaces",
                vec![b"v=STSv1; id=1;  ".to_vec()],
                T::Id("1"),
            ),
            // Choice: trailing whitespace without a ";" is outside the ABNF;
            // tolerated because it cannot change the record's meaning.
            (
                "trailing spaces, no ;",
                vec![b"v=STSv1; id=1  ".to_vec()],
                T::Id("1"),
            ),
            // Split TXT strings are concatenated by the caller without spaces (§3.1).
            (
                "split inside id",
                vec![[&b"v=STSv1; id=2019"[..], b"0101"].concat()],
                T::Id("20190101"),
            ),
            (
                "split inside v",
                vec![[&b"v=ST"[..], b"Sv1; id=abc"].concat()],
                T::Id("abc"),
            ),
            (
                "split after ;",
                vec![[&b"v=STSv1;"[..], b" id=abc;"].concat()],
                T::Id("abc"),
            ),
            (
                "id 32 chars",
                vec![rec32.clone().into_bytes()],
                T::Id("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            ),
            (
                "mixed-case id",
                vec![b"v=STSv1; id=AbC123".to_vec()],
                T::Id("AbC123"),
            ),
            (
                "extension after id",
                vec![b"v=STSv1; id=1; ext=val".to_vec()],
                T::Id("1"),
            ),
            (
                "extension before id",
                vec![b"v=STSv1; ext=val; id=1".to_vec()],
                T::Id("1"),
            ),
            (
                "extension name chars",
                vec![b"v=STSv1; id=1; x-e.v2_a=some:thing/<>".to_vec()],
                T::Id("1"),
            ),
            (
                "extension name 32 chars",
                vec![ext32.into_bytes()],
                T::Id("1"),
            ),
            // Duplicates: §3.2 "all entries except for the first SHALL be ignored".
            (
                "duplicate id: first wins",
                vec![b"v=STSv1; id=a; id=b".to_vec()],
                T::Id("a"),
            ),
            (
                "duplicate v ignored",
                vec![b"v=STSv1; v=STSv2; id=a".to_vec()],
                T::Id("a"),
            ),
            (
                "ignored duplicate id need not be an id",
                vec![b"v=STSv1; id=abc; id=x-y".to_vec()],
                T::Id("abc"),
            ),
            // --- other records ignored ---
            ("no records", vec![], T::NoRecord),
            ("spf only", vec![b"v=spf1 -all".to_vec()], T::NoRecord),
            ("empty record", vec![b"".to_vec()], T::NoRecord),
            (
                "spf and sts",
                vec![b"v=spf1 -all".to_vec(), b"v=STSv1; id=abc".to_vec()],
                T::Id("abc"),
            ),
            (
                "binary junk ignored",
                vec![vec![0xff, 0x00, 0xfe], b"v=STSv1; id=abc".to_vec()],
                T::Id("abc"),
            ),
            // §3.1: the record MUST begin with v=STSv1; others are discarded.
            ("v not first", vec![b"id=1; v=STSv1".to_vec()], T::NoRecord),
            (
                "leading space",
                vec![b" v=STSv1; id=1".to_vec()],
                T::NoRecord,
            ),
            // %s"v=STSv1" is case-sensitive.
            ("upper-case V", vec![b"V=STSv1; id=1".to_vec()], T::NoRecord),
            (
                "lower-case version",
                vec![b"v=stsv1; id=1".to_vec()],
                T::NoRecord,
            ),
            // Choice: "v=STSv10" begins with the bytes "v=STSv1" but is another
            // version; treating it as ours would make a future record an error.
            ("v=STSv10", vec![b"v=STSv10; id=1".to_vec()], T::NoRecord),
            (
                "v=STSv2 beside v=STSv1",
                vec![b"v=STSv2; id=1".to_vec(), b"v=STSv1; id=a".to_vec()],
                T::Id("a"),
            ),
            // --- invalid ---
            (
                "two sts records",
                vec![b"v=STSv1; id=a".to_vec(), b"v=STSv1; id=b".to_vec()],
                T::Err("2 records begin with v=STSv1"),
            ),
            (
                "two identical sts records",
                vec![b"v=STSv1; id=a".to_vec(), b"v=STSv1; id=a".to_vec()],
                T::Err("2 records begin with v=STSv1"),
            ),
            (
                "invalid one still counts",
                vec![b"v=STSv1; id=a".to_vec(), b"v=STSv1; bogus".to_vec()],
                T::Err("2 records"),
            ),
            (
                "only version",
                vec![b"v=STSv1".to_vec()],
                T::Err("missing required field id"),
            ),
            (
                "only version and ;",
                vec![b"v=STSv1;".to_vec()],
                T::Err("missing required field id"),
            ),
            (
                "only extension",
                vec![b"v=STSv1; foo=bar".to_vec()],
                T::Err("missing required field id"),
            ),
            (
                "ID upper case",
                vec![b"v=STSv1; ID=abc".to_vec()],
                T::Err("missing required field id (field names are case-sensitive; found \"ID\")"),
            ),
            (
                "id 33 chars",
                vec![id33.into_bytes()],
                T::Err("is 33 characters long; at most 32"),
            ),
            (
                "id with dashes",
                vec![b"v=STSv1; id=2019-01-01".to_vec()],
                T::Err("id \"2019-01-01\" contains '-'"),
            ),
            (
                "id with dot",
                vec![b"v=STSv1; id=1.2".to_vec()],
                T::Err("contains '.'"),
            ),
            (
                "id empty",
                vec![b"v=STSv1; id=".to_vec()],
                T::Err("id is empty"),
            ),
            (
                "id with space",
                vec![b"v=STSv1; id=abc def".to_vec()],
                T::Err("contains ' '"),
            ),
            (
                "id non-ASCII",
                vec!["v=STSv1; id=ä".as_bytes().to_vec()],
                T::Err("non-ASCII byte 0xc3 at offset 12"),
            ),
            (
                "NUL",
                vec![b"v=STSv1; id=1\x00".to_vec()],
                T::Err("control character 0x00 at offset 13"),
            ),
            (
                "DEL",
                vec![b"v=STSv1; id=1\x7f".to_vec()],
                T::Err("control character 0x7f"),
            ),
            (
                "space around =",
                vec![b"v=STSv1; id = 1".to_vec()],
                T::Err("whitespace around \"=\""),
            ),
            (
                "space after =",
                vec![b"v=STSv1; id= 1".to_vec()],
                T::Err("whitespace around \"=\""),
            ),
            (
                "no ; after version",
                vec![b"v=STSv1 id=1".to_vec()],
                T::Err("expected \";\" after v=STSv1, found \"id=1\""),
            ),
            (
                "empty field",
                vec![b"v=STSv1;; id=1".to_vec()],
                T::Err("empty field"),
            ),
            (
                "two trailing ;",
                vec![b"v=STSv1; id=1;;".to_vec()],
                T::Err("empty field"),
            ),
            (
                "field without =",
                vec![b"v=STSv1; id=1; flag".to_vec()],
                T::Err("field \"flag\" has no \"=\""),
            ),
            (
                "extension value with =",
                vec![b"v=STSv1; id=1; e=a=b".to_vec()],
                T::Err("field \"e\": character '=' is not allowed"),
            ),
            (
                "extension value with space",
                vec![b"v=STSv1; id=1; e=a b".to_vec()],
                T::Err("character ' ' is not allowed"),
            ),
            (
                "extension empty value",
                vec![b"v=STSv1; id=1; e=".to_vec()],
                T::Err("field \"e\" has an empty value"),
            ),
            (
                "extension name with _ first",
                vec![b"v=STSv1; id=1; _e=1".to_vec()],
                T::Err("invalid field name \"_e\""),
            ),
            (
                "extension name 33 chars",
                vec![ext33.into_bytes()],
                T::Err("invalid field name"),
            ),
            (
                "empty field name",
                vec![b"v=STSv1; id=1; =x".to_vec()],
                T::Err("invalid field name \"\""),
            ),
            // An ignored duplicate must still be a well-formed field.
            (
                "malformed duplicate id",
                vec![b"v=STSv1; id=a; id=".to_vec()],
                T::Err("field \"id\" has an empty value"),
            ),
        ];
        for (name, records, want) in cases {
            let got = parse_txt(&records);
            match (&want, &got) {
                (T::Id(id), Ok(Some(r))) => assert_eq!(r.id, *id, "{name}"),
                (T::NoRecord, Ok(None)) => {}
                (T::Err(sub), Err(e)) => {
                    assert!(e.0.contains(sub), "{name}: error {:?} lacks {sub:?}", e.0);
                    assert!(e.0.starts_with("MTA-STS TXT record: "), "{name}: {}", e.0);
                }
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    /// What a policy case should give.
    #[derive(Debug)]
    enum P {
        /// Parsed, with this mode, these normalised mx patterns and max_age.
        Ok(Mode, &'static [&'static str], u64),
        /// An error whose message contains this.
        Err(&'static str),
    }

    const RFC_EXAMPLE: &str = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n";
    const RFC_MX: &[&str] = &["mail.example.com", "*.example.net", "backupmx.example.com"];
    const MX1: &[&str] = &["mail.example.com"];

    /// A policy with `version`, `mode: enforce`, `max_age: 86400` and `line` as its third line.
    fn with_line(line: &str) -> String {
        format!("version: STSv1\nmode: enforce\n{line}\nmax_age: 86400\n")
    }

    fn with_mx(mx: &str) -> String {
        with_line(&format!("mx: {mx}"))
    }

    #[test]
    fn policy_table() {
        let long_label = "a".repeat(64);
        let label63 = "a".repeat(63);
        let cases: Vec<(&str, String, P)> = vec![
            // --- valid ---
            ("rfc example, LF", RFC_EXAMPLE.into(), P::Ok(Mode::Enforce, RFC_MX, 604800)),
            ("rfc example, CRLF", RFC_EXAMPLE.replace('\n', "\r\n"), P::Ok(Mode::Enforce, RFC_MX, 604800)),
            ("mixed CRLF and LF", "version: STSv1\r\nmode: enforce\nmx: mail.example.com\r\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("no final newline", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("no final CRLF", "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 86400".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            // The RFC sets no field order for the policy (unlike the TXT
            // record's v=); version need not be first.
            ("version last", "mode: enforce\nmx: mail.example.com\nmax_age: 86400\nversion: STSv1\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("no space after colon", "version:STSv1\nmode:enforce\nmx:mail.example.com\nmax_age:86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("tabs after colon", "version:\tSTSv1\nmode:\t enforce\nmx:\tmail.example.com\nmax_age:\t86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("trailing whitespace", "version: STSv1 \nmode: enforce\t\r\nmx: mail.example.com  \nmax_age: 86400 \t\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("testing", "version: STSv1\nmode: testing\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Testing, MX1, 86400)),
            ("none without mx", "version: STSv1\nmode: none\nmax_age: 86400\n".into(), P::Ok(Mode::None, &[], 86400)),
            ("none with mx", "version: STSv1\nmode: none\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::None, MX1, 86400)),
            ("max_age 0", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 0\n".into(), P::Ok(Mode::Enforce, MX1, 0)),
            ("max_age limit", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 31557600\n".into(), P::Ok(Mode::Enforce, MX1, 31557600)),
            // Choice: above the RFC's maximum but within its 10 digits (e.g.
            // the two years common in HSTS headers): clamped to one year.
            // Rejecting would leave the domain unprotected.
            ("max_age limit + 1 clamped", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 31557601\n".into(), P::Ok(Mode::Enforce, MX1, 31557600)),
            ("max_age two years clamped", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 63072000\n".into(), P::Ok(Mode::Enforce, MX1, 31557600)),
            ("max_age 10 nines clamped", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 9999999999\n".into(), P::Ok(Mode::Enforce, MX1, 31557600)),
            ("max_age leading zeros", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 0000086400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            // Unknown fields are ignored (§3.2). sts-policy-ext-value allows
            // any visible character (";" and "=" too), inner spaces and UTF-8.
            ("extension", with_line("foo: bar baz\nmx: mail.example.com"), P::Ok(Mode::Enforce, MX1, 86400)),
            ("extension with ; and =", with_line("x-e.v2_a: a;b=c:d\nmx: mail.example.com"), P::Ok(Mode::Enforce, MX1, 86400)),
            ("extension with UTF-8 value", with_line("comment: café ☕\nmx: mail.example.com"), P::Ok(Mode::Enforce, MX1, 86400)),
            ("extension with digit first", with_line("2fa: yes\nmx: mail.example.com"), P::Ok(Mode::Enforce, MX1, 86400)),
            // Duplicates: §3.2 "all entries except for the first SHALL be
            // ignored" (mx excepted). Not an error, as the RFC requires.
            ("duplicate mode: first wins", "version: STSv1\nmode: testing\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Testing, MX1, 86400)),
            ("duplicate max_age: first wins", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\nmax_age: 1\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("duplicate version ignored", "version: STSv1\nversion: STSv2\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("ignored duplicate mode with bad value", "version: STSv1\nmode: enforce\nmode: bogus\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("repeated mx kept", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, &["mail.example.com", "mail.example.com"], 86400)),
            // Choice: blank lines are outside the ABNF (implementations differ:
            // Go's mtasts rejects them, others skip them). They carry no field,
            // so they are ignored; rejecting would disable the policy over a
            // doubled newline.
            ("blank line inside", "version: STSv1\nmode: enforce\n\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("blank CRLF line inside", "version: STSv1\r\nmode: enforce\r\n\r\nmx: mail.example.com\r\nmax_age: 86400\r\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("whitespace-only line", "version: STSv1\nmode: enforce\n \t \nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("leading blank line", "\nversion: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("trailing blank lines", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n\n\r\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            // mx normalisation.
            ("mx upper case", with_mx("MAIL.Example.COM"), P::Ok(Mode::Enforce, MX1, 86400)),
            // Choice: a trailing dot is outside RFC 5321's Domain but names
            // the same host; accepted and dropped.
            ("mx trailing dot", with_mx("mail.example.com."), P::Ok(Mode::Enforce, MX1, 86400)),
            ("mx wildcard", with_mx("*.example.com"), P::Ok(Mode::Enforce, &["*.example.com"], 86400)),
            // The RFC says mx MUST be an A-label; choice: a U-label is converted
            // rather than rejected (rejecting would drop the whole policy).
            ("mx U-label", with_mx("mail.bücher.example"), P::Ok(Mode::Enforce, &["mail.xn--bcher-kva.example"], 86400)),
            ("mx A-label", with_mx("mail.xn--bcher-kva.example"), P::Ok(Mode::Enforce, &["mail.xn--bcher-kva.example"], 86400)),
            ("mx wildcard U-label", with_mx("*.Bücher.example"), P::Ok(Mode::Enforce, &["*.xn--bcher-kva.example"], 86400)),
            ("mx single label", with_mx("localhost"), P::Ok(Mode::Enforce, &["localhost"], 86400)),
            ("mx *.tld", with_mx("*.com"), P::Ok(Mode::Enforce, &["*.com"], 86400)),
            ("mx 63-octet label", with_mx(&format!("{label63}.example")), P::Ok(Mode::Enforce, &["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example"], 86400)),
            ("mx digits and hyphens", with_mx("mx-1.123.example"), P::Ok(Mode::Enforce, &["mx-1.123.example"], 86400)),
            // --- invalid ---
            ("empty body", "".into(), P::Err("MTA-STS policy: empty policy")),
            ("only blank lines", "\n\r\n \n".into(), P::Err("empty policy")),
            ("mode without colon", "version: STSv1\nmode enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: no \":\" in \"mode enforce\"")),
            ("unknown mode", "version: STSv1\nmode: strict\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: invalid mode \"strict\"")),
            // %s"enforce": values are case-sensitive.
            ("mode Enforce", "version: STSv1\nmode: Enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: invalid mode \"Enforce\"")),
            ("mode with trailing junk", "version: STSv1\nmode: enforce now\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("invalid mode \"enforce now\"")),
            ("mode empty", "version: STSv1\nmode:\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: field \"mode\" has an empty value")),
            // Field names are case-sensitive (%s"mode"): "Mode" is an unknown
            // extension, so mode is missing.
            ("Mode field name", "version: STSv1\nMode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("missing required field \"mode\" (field names are case-sensitive; line 2 has \"Mode\")")),
            ("space before colon", "version: STSv1\nmode : enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: whitespace before \":\" after field name \"mode\"")),
            // Leading whitespace was removed from the ABNF because it reads as
            // an RFC 5322 continuation line; ambiguous, so rejected.
            ("leading whitespace", "version: STSv1\n mode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: leading whitespace")),
            ("leading tab", "version: STSv1\nmode: enforce\n\tmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 3: leading whitespace")),
            ("version STSv2", "version: STSv2\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 1: unsupported version \"STSv2\"")),
            ("version lower case", "version: stsv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("unsupported version \"stsv1\"")),
            ("missing version", "mode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("missing required field \"version\"")),
            ("missing mode", "version: STSv1\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("missing required field \"mode\"")),
            ("missing max_age", "version: STSv1\nmode: enforce\nmx: mail.example.com\n".into(), P::Err("missing required field \"max_age\"")),
            ("max-age spelling", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax-age: 86400\n".into(), P::Err("missing required field \"max_age\"")),
            ("enforce without mx", "version: STSv1\nmode: enforce\nmax_age: 86400\n".into(), P::Err("missing required field \"mx\" (at least one is required in mode enforce)")),
            ("testing without mx", "version: STSv1\nmode: testing\nmax_age: 86400\n".into(), P::Err("at least one is required in mode testing")),
            ("max_age negative", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: -1\n".into(), P::Err("line 4: max_age \"-1\" is not a non-negative integer")),
            ("max_age plus sign", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: +1\n".into(), P::Err("max_age \"+1\" is not a non-negative integer")),
            ("max_age non-numeric", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: one week\n".into(), P::Err("max_age \"one week\" is not a non-negative integer")),
            ("max_age exponent", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 1e6\n".into(), P::Err("max_age \"1e6\" is not")),
            ("max_age with unit", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400s\n".into(), P::Err("max_age \"86400s\" is not")),
            ("max_age with comment", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400 # a day\n".into(), P::Err("max_age \"86400 # a day\" is not")),
            ("max_age 11 digits", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 00000086400\n".into(), P::Err("max_age \"00000086400\" has more than 10 digits")),
            ("max_age huge", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 18446744073709551616\n".into(), P::Err("has more than 10 digits")),
            ("max_age empty", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: \n".into(), P::Err("line 4: field \"max_age\" has an empty value")),
            ("mx empty", with_mx(""), P::Err("line 3: field \"mx\" has an empty value")),
            ("mx IPv4", with_mx("192.0.2.1"), P::Err("line 3: mx pattern \"192.0.2.1\": IP addresses are not allowed")),
            ("mx IPv4 bracketed", with_mx("[192.0.2.1]"), P::Err("mx pattern \"[192.0.2.1]\": address literals are not allowed")),
            ("mx IPv6", with_mx("2001:db8::1"), P::Err("mx pattern \"2001:db8::1\": IP addresses are not allowed")),
            ("mx IPv6 bracketed", with_mx("[2001:db8::1]"), P::Err("address literals are not allowed")),
            ("mx IPv6 tagged literal", with_mx("[IPv6:2001:db8::1]"), P::Err("address literals are not allowed")),
            ("mx IPv6: prefix", with_mx("IPv6:2001:db8::1"), P::Err("character ':' is not allowed")),
            ("mx wildcard IPv4", with_mx("*.192.0.2.1"), P::Err("IP addresses are not allowed")),
            ("mx numeric tld", with_mx("10.0.0"), P::Err("all-numeric top-level label \"0\"")),
            ("mx double wildcard", with_mx("*.*.example.com"), P::Err("mx pattern \"*.*.example.com\": \"*\" is only allowed as the whole leftmost label")),
            ("mx partial wildcard", with_mx("*example.com"), P::Err("mx pattern \"*example.com\": \"*\" is only allowed as the whole leftmost label")),
            ("mx inner wildcard", with_mx("mail.*.example.com"), P::Err("\"*\" is only allowed")),
            ("mx bare *", with_mx("*"), P::Err("\"*\" is only allowed")),
            ("mx *. only", with_mx("*."), P::Err("mx pattern \"*.\": empty name")),
            ("mx trailing garbage", with_mx("mail.example.com extra"), P::Err("character ' ' is not allowed")),
            ("mx with port", with_mx("mail.example.com:25"), P::Err("character ':' is not allowed in label \"com:25\"")),
            ("mx two trailing dots", with_mx("mail.example.com.."), P::Err("empty label")),
            ("mx empty label", with_mx("mail..example.com"), P::Err("empty label")),
            ("mx leading dot", with_mx(".example.com"), P::Err("empty label")),
            ("mx leading hyphen", with_mx("-mail.example.com"), P::Err("label \"-mail\" begins or ends with \"-\"")),
            ("mx trailing hyphen", with_mx("mail-.example.com"), P::Err("begins or ends with \"-\"")),
            ("mx underscore", with_mx("mail_1.example.com"), P::Err("character '_' is not allowed")),
            ("mx label too long", with_mx(&format!("{long_label}.example")), P::Err("longer than 63 octets")),
            ("mx invalid IDN", with_mx("mail.\u{301}bücher.example"), P::Err("is not a valid IDN")),
            ("mx URL", with_mx("smtp://mail.example.com"), P::Err("character ':' is not allowed")),
            // Non-ASCII outside extension values and mx U-labels, and control
            // characters anywhere, are refused.
            ("non-ASCII field name", "version: STSv1\nmodé: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: non-ASCII field name \"modé\"")),
            ("non-ASCII mode", "version: STSv1\nmode: enforcé\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("invalid mode \"enforcé\"")),
            ("non-ASCII max_age digits", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: ８６４００\n".into(), P::Err("is not a non-negative integer")),
            ("byte-order mark", "\u{feff}version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 1: byte-order mark")),
            ("NUL", "version: STSv1\nmode: enforce\0\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: control character U+0000")),
            ("bare CR", "version: STSv1\rmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 1: control character U+000D")),
            ("CR CR LF", "version: STSv1\r\r\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 1: control character U+000D")),
            ("vertical tab", with_mx("mail.example.com\x0b"), P::Err("line 3: control character U+000B")),
            ("DEL", with_line("foo: a\x7fb\nmx: mail.example.com"), P::Err("control character U+007F")),
            ("C1 control", with_line("foo: a\u{85}b\nmx: mail.example.com"), P::Err("control character U+0085")),
            ("form feed in blank line", "version: STSv1\n\x0c\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Err("line 2: control character U+000C")),
            ("tab inside extension value", with_line("foo: a\tb\nmx: mail.example.com"), P::Err("line 3: field \"foo\": character '\\t' is not allowed")),
            ("extension name with _ first", with_line("_foo: x\nmx: mail.example.com"), P::Err("line 3: invalid field name \"_foo\"")),
            ("extension name 33 chars", with_line(&format!("{}: x\nmx: mail.example.com", "e".repeat(33))), P::Err("invalid field name")),
            ("extension empty value", with_line("foo:\nmx: mail.example.com"), P::Err("field \"foo\" has an empty value")),
            ("line without name", with_line(": x\nmx: mail.example.com"), P::Err("line 3: invalid field name \"\"")),
            ("html", "<html><body>Not found</body></html>\n".into(), P::Err("line 1: no \":\"")),
        ];
        for (name, body, want) in cases {
            let got = parse_policy(&body);
            match (&want, &got) {
                (P::Ok(mode, mx, max_age), Ok(p)) => {
                    assert_eq!(p.mode, *mode, "{name}");
                    assert_eq!(p.mx_strings(), *mx, "{name}");
                    assert_eq!(p.max_age, *max_age, "{name}");
                }
                (P::Err(sub), Err(e)) => {
                    assert!(e.0.contains(sub), "{name}: error {:?} lacks {sub:?}", e.0);
                    assert!(e.0.starts_with("MTA-STS policy"), "{name}: {}", e.0);
                }
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn policy_text_is_crlf_normalised() {
        let cases = [
            (RFC_EXAMPLE, RFC_EXAMPLE.replace('\n', "\r\n")),
            (
                "version: STSv1\r\nmode: none\nmax_age: 1",
                "version: STSv1\r\nmode: none\r\nmax_age: 1\r\n".to_string(),
            ),
            // Blank lines and trailing whitespace are kept: the text is the
            // policy as fetched, only line ends change.
            (
                "version: STSv1\n\nmode: none \nmax_age: 1\n",
                "version: STSv1\r\n\r\nmode: none \r\nmax_age: 1\r\n".to_string(),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse_policy(body).unwrap().text, want, "{body:?}");
        }
    }

    #[test]
    fn mx_pattern_parse_table() {
        let ok = [
            ("mail.example.com", "mail.example.com"),
            ("Mail.Example.COM.", "mail.example.com"),
            ("*.example.com", "*.example.com"),
            ("*.EXAMPLE.com.", "*.example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("*.münchen.de", "*.xn--mnchen-3ya.de"),
            ("localhost", "localhost"),
        ];
        for (input, want) in ok {
            let p = MxPattern::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.as_str(), want, "{input}");
            assert_eq!(p.to_string(), want, "{input}");
        }
        let bad = [
            ("", "mx pattern \"\": empty name"),
            (".", "empty name"),
            ("*", "\"*\" is only allowed"),
            ("**.example.com", "\"*\" is only allowed"),
            ("*.*.example.com", "\"*\" is only allowed"),
            ("*example.com", "\"*\" is only allowed"),
            ("a*.example.com", "\"*\" is only allowed"),
            ("192.0.2.1", "IP addresses are not allowed"),
            ("192.0.2.1.", "IP addresses are not allowed"),
            ("::1", "IP addresses are not allowed"),
            ("[::1]", "address literals are not allowed"),
            ("mail example.com", "character ' ' is not allowed"),
            ("mail.example.com\\.", "character '\\\\' is not allowed"),
            ("mail\t.example.com", "character '\\t' is not allowed"),
            (
                &format!("{}.example", "a".repeat(64)),
                "longer than 63 octets",
            ),
            (
                &format!(
                    "{}.com",
                    [
                        "a".repeat(63),
                        "b".repeat(63),
                        "c".repeat(63),
                        "d".repeat(63)
                    ]
                    .join(".")
                ),
                "longer than 253 octets",
            ),
        ];
        for (input, sub) in bad {
            let e = MxPattern::parse(input).expect_err(input);
            let shown = format!("mx pattern {input:?}: {}", e.why);
            assert!(
                shown.contains(sub),
                "{input}: error {shown:?} lacks {sub:?}"
            );
        }
    }

    #[test]
    fn mx_match_table() {
        let cases = [
            ("mail.example.com", "mail.example.com", true),
            ("mail.example.com", "MAIL.EXAMPLE.COM", true),
            ("MAIL.example.com", "mail.Example.com", true),
            ("mail.example.com", "mail.example.com.", true),
            ("mail.example.com.", "mail.example.com", true),
            ("mail.example.com.", "mail.example.com.", true),
            ("mail.example.com", "mail.example.com..", false),
            ("mail.example.com", "mx.example.com", false),
            ("mail.example.com", "example.com", false),
            ("mail.example.com", "a.mail.example.com", false),
            ("mail.example.com", "mail.example.com.evil", false),
            ("mail.example.com", "mailexample.com", false),
            ("mail.example.com", "", false),
            ("*.example.com", "mx1.example.com", true),
            ("*.example.com", "MX1.Example.Com.", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "example.com.", false),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "mx1.example.org", false),
            ("*.example.com", "mx1example.com", false),
            ("*.example.com", "mx1.notexample.com", false),
            ("*.example.com", "*.example.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "", false),
            ("*.example.com", "mx_1.example.com", false),
            ("*.com", "example.com", true),
            ("*.com", "a.example.com", false),
            ("*.com", "com", false),
            ("localhost", "localhost.", true),
            ("mail.example.com", "192.0.2.1", false),
            // Internationalised names are compared as A-labels, whichever
            // form either side uses.
            ("*.example.com", "xn--bcher-kva.example.com", true),
            ("*.example.com", "bücher.example.com", true),
            ("mail.bücher.example", "mail.xn--bcher-kva.example", true),
            ("mail.xn--bcher-kva.example", "mail.bücher.example", true),
            ("mail.xn--bcher-kva.example", "MAIL.BÜCHER.EXAMPLE.", true),
            ("mail.XN--BCHER-KVA.example", "mail.bücher.example", true),
            ("*.bücher.example", "mx.xn--bcher-kva.example.", true),
            ("*.bücher.example", "xn--bcher-kva.example", false),
            ("mail.xn--bcher-kva.example", "mail.bucher.example", false),
        ];
        for (pattern, host, want) in cases {
            let p = MxPattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(p.matches(host), want, "{pattern} vs {host:?}");
        }
    }

    #[test]
    fn policy_allows_table() {
        let policy = |mode: &str, mx: &[&str]| {
            let mut body = format!("version: STSv1\nmode: {mode}\nmax_age: 86400\n");
            for m in mx {
                body.push_str(&format!("mx: {m}\n"));
            }
            parse_policy(&body).unwrap()
        };
        let cases = [
            (
                "enforce",
                &["mail.example.com", "*.example.net"][..],
                "mail.example.com",
                true,
            ),
            (
                "enforce",
                &["mail.example.com", "*.example.net"][..],
                "mx2.example.net.",
                true,
            ),
            (
                "enforce",
                &["mail.example.com", "*.example.net"][..],
                "example.net",
                false,
            ),
            (
                "enforce",
                &["mail.example.com", "*.example.net"][..],
                "evil.example.org",
                false,
            ),
            (
                "testing",
                &["mail.example.com"][..],
                "mail.example.com",
                true,
            ),
            (
                "testing",
                &["mail.example.com"][..],
                "evil.example.org",
                false,
            ),
            ("none", &[][..], "anything.example", true),
            ("none", &["mail.example.com"][..], "evil.example.org", true),
        ];
        for (mode, mx, host, want) in cases {
            assert_eq!(policy(mode, mx).allows(host), want, "{mode} {mx:?} {host}");
        }
    }

    #[test]
    fn mode_names_and_error_display() {
        for (m, s) in [
            (Mode::Enforce, "enforce"),
            (Mode::Testing, "testing"),
            (Mode::None, "none"),
        ] {
            assert_eq!(m.as_str(), s);
        }
        let e = parse_txt(&[b"v=STSv1;".to_vec()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MTA-STS TXT record: missing required field id"
        );
        let _: &dyn std::error::Error = &e;
    }
}
