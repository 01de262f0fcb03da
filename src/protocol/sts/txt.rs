//! The `_mta-sts` TXT record (RFC 8461 §3.1).

use super::{is_ext_name, is_wsp, StsError};

/// The `_mta-sts` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy instance id: 1 to 32 ASCII letters and digits.
    pub id: String,
}

/// An error about the TXT record.
fn txt_err(msg: impl std::fmt::Display) -> StsError {
    StsError(format!("MTA-STS TXT record: {msg}"))
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

/// Parses the one record that begins with `v=STSv1`.
fn parse_one_txt(raw: &[u8]) -> Result<StsRecord, StsError> {
    let fields = fields_after_version(printable_ascii(raw)?)?;
    let mut found = TxtFields::default();
    for (i, seg) in fields.iter().enumerate() {
        let field = seg.trim_matches(is_wsp);
        if field.is_empty() {
            if i + 1 == fields.len() {
                continue; // the optional trailing ";"
            }
            return Err(txt_err("empty field (two \";\" in a row)"));
        }
        found.take(field)?;
    }
    found.finish()
}

/// The record as text, once it holds only printable ASCII and tabs.
fn printable_ascii(raw: &[u8]) -> Result<&str, StsError> {
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
    Ok(std::str::from_utf8(raw).expect("checked ASCII"))
}

/// The `;`-separated fields after `v=STSv1` (the last may be empty).
fn fields_after_version(text: &str) -> Result<Vec<&str>, StsError> {
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
    Ok(segments.collect())
}

/// What the fields of a record have given so far.
#[derive(Default)]
struct TxtFields {
    /// The first `id`.
    id: Option<String>,
    /// A field named like `id` in another case, for the "missing id" message.
    case_hint: Option<String>,
}

impl TxtFields {
    /// Takes one `name=value` field.
    fn take(&mut self, field: &str) -> Result<(), StsError> {
        let (name, value) = split_field(field)?;
        if name == "id" && self.id.is_none() {
            self.id = Some(check_id(value)?.to_string());
            return Ok(());
        }
        // An extension, or a later duplicate of v or id (ignored, RFC 8461
        // §3.2): it must still be a well-formed sts-extension.
        check_extension_value(name, value)?;
        if name.eq_ignore_ascii_case("id") && name != "id" && self.case_hint.is_none() {
            self.case_hint = Some(name.to_string());
        }
        Ok(())
    }

    /// The record, if an `id` was found.
    fn finish(self) -> Result<StsRecord, StsError> {
        match (self.id, self.case_hint) {
            (Some(id), _) => Ok(StsRecord { id }),
            (None, Some(n)) => Err(txt_err(format!(
                "missing required field id (field names are case-sensitive; found {n:?})"
            ))),
            (None, None) => Err(txt_err("missing required field id")),
        }
    }
}

/// A field's name and value: `=` without whitespace around it, a valid name.
fn split_field(field: &str) -> Result<(&str, &str), StsError> {
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
    Ok((name, value))
}

/// An `sts-id`: 1 to 32 letters and digits.
fn check_id(value: &str) -> Result<&str, StsError> {
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
    Ok(value)
}

/// An `sts-ext-value`: visible ASCII except `=` and `;`, at least one.
fn check_extension_value(name: &str, value: &str) -> Result<(), StsError> {
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
    Ok(())
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
}
