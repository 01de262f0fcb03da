//! The MTA-STS policy body (RFC 8461 §3.2).

use super::{is_ext_name, is_wsp, MxPattern, StsError, MAX_AGE_LIMIT};

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

    /// The mode with exactly this name (case-sensitive, as the ABNF's `%s` strings).
    fn from_name(name: &str) -> Option<Mode> {
        [Mode::Enforce, Mode::Testing, Mode::None]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
}

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

/// An error about line `n` of the policy.
fn line_err(n: usize, msg: impl std::fmt::Display) -> StsError {
    StsError(format!("MTA-STS policy line {n}: {msg}"))
}

/// Parses a policy body (RFC 8461 §3.2).
///
/// Lines end in LF or CRLF. Fields are `name: value`, the name case-sensitive
/// and at the start of the line. `version: STSv1`, `mode` and `max_age` are
/// required in any order (the first of duplicates counts); `mx` at least once
/// unless the mode is `none`. Unknown fields are ignored if well-formed.
/// Blank lines are ignored; `max_age` above one year is clamped to one year.
pub fn parse_policy(body: &str) -> Result<StsPolicy, StsError> {
    let lines = policy_lines(body);
    let mut fields = PolicyFields::default();
    for (i, line) in lines.iter().enumerate() {
        if let Some((name, value)) = field_of(i + 1, line)? {
            fields.take(i + 1, name, value)?;
        }
    }
    if lines.iter().all(|l| l.chars().all(is_wsp)) {
        return Err(StsError("MTA-STS policy: empty policy".into()));
    }
    let (mode, mx, max_age) = fields.finish()?;
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

/// The body's lines without their LF or CRLF (a final line end starts no line).
fn policy_lines(body: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = body.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

/// Line `n`'s field name and value; `None` for a blank line.
fn field_of(n: usize, line: &str) -> Result<Option<(&str, &str)>, StsError> {
    if let Some(c) = line.chars().find(|&c| c.is_control() && c != '\t') {
        return Err(line_err(
            n,
            format!("control character U+{:04X} is not allowed", c as u32),
        ));
    }
    // Blank lines are outside the ABNF but carry nothing; ignoring them
    // keeps a policy with, say, a doubled final newline valid.
    if line.chars().all(is_wsp) {
        return Ok(None);
    }
    if line.starts_with(is_wsp) {
        return Err(line_err(
            n,
            "leading whitespace (a folded continuation line?) is not allowed",
        ));
    }
    if line.starts_with('\u{feff}') {
        return Err(line_err(n, "byte-order mark is not allowed"));
    }
    let Some((name, rest)) = line.split_once(':') else {
        return Err(line_err(
            n,
            format!("no \":\" in {line:?}; expected \"name: value\""),
        ));
    };
    if !is_ext_name(name) {
        return Err(line_err(n, bad_name(name)));
    }
    let value = rest.trim_matches(is_wsp);
    if value.is_empty() {
        return Err(line_err(n, format!("field {name:?} has an empty value")));
    }
    Ok(Some((name, value)))
}

/// What is wrong with a field name that is not an `sts-policy-ext-name`.
fn bad_name(name: &str) -> String {
    if name.ends_with(is_wsp) {
        format!(
            "whitespace before \":\" after field name {:?}",
            name.trim_end_matches(is_wsp)
        )
    } else if !name.is_ascii() {
        format!("non-ASCII field name {name:?}")
    } else {
        format!("invalid field name {name:?}")
    }
}

/// What the fields of a policy have given so far.
#[derive(Default)]
struct PolicyFields {
    version: bool,
    mode: Option<Mode>,
    max_age: Option<u64>,
    mx: Vec<MxPattern>,
    /// `mx` lines that are not host patterns, each with its line and reason.
    /// They are ignored rather than rejecting the whole policy: rejecting would
    /// leave an enforce domain unprotected, the weaker outcome.
    bad_mx: Vec<StsError>,
    /// Field names that differ from a known one only in case, with their
    /// lines, for the hint in "missing required field".
    case_hints: Vec<(usize, String)>,
}

impl PolicyFields {
    /// Takes the field on line `n`.
    fn take(&mut self, n: usize, name: &str, value: &str) -> Result<(), StsError> {
        match name {
            "version" if !self.version => {
                if value != "STSv1" {
                    return Err(line_err(
                        n,
                        format!("unsupported version {value:?}; expected \"STSv1\""),
                    ));
                }
                self.version = true;
            }
            "mode" if self.mode.is_none() => {
                self.mode = Some(Mode::from_name(value).ok_or_else(|| {
                    line_err(n, format!("invalid mode {value:?}; expected \"enforce\", \"testing\" or \"none\" (case-sensitive)"))
                })?);
            }
            "max_age" if self.max_age.is_none() => {
                self.max_age = Some(max_age(n, value)?);
            }
            "mx" => match MxPattern::parse(value) {
                Ok(p) => self.mx.push(p),
                Err(e) => {
                    let err = line_err(n, format!("mx pattern {value:?}: {}", e.why));
                    tracing::warn!(error = %err, "MTA-STS policy: mx line ignored");
                    self.bad_mx.push(err);
                }
            },
            // An extension, or a later duplicate of version, mode or max_age
            // (ignored, RFC 8461 §3.2).
            _ => self.take_other(n, name, value)?,
        }
        Ok(())
    }

    /// An extension or an ignored duplicate: it must still be a well-formed
    /// sts-policy-ext-value (visible characters, UTF-8 included, and inner spaces).
    fn take_other(&mut self, n: usize, name: &str, value: &str) -> Result<(), StsError> {
        if let Some(c) = value.chars().find(|&c| c == '\t') {
            return Err(line_err(
                n,
                format!("field {name:?}: character {c:?} is not allowed in a value"),
            ));
        }
        if ["version", "mode", "max_age", "mx"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(name) && *k != name)
        {
            self.case_hints.push((n, name.to_string()));
        }
        Ok(())
    }

    /// Mode, mx patterns and max_age, once every required field was seen.
    fn finish(self) -> Result<(Mode, Vec<MxPattern>, u64), StsError> {
        let missing = |field: &str| {
            let hint = self
                .case_hints
                .iter()
                .find(|(_, h)| h.eq_ignore_ascii_case(field))
                .map(|(n, h)| format!(" (field names are case-sensitive; line {n} has {h:?})"))
                .unwrap_or_default();
            format!("MTA-STS policy: missing required field {field:?}{hint}")
        };
        if !self.version {
            return Err(StsError(missing("version")));
        }
        let mode = self.mode.ok_or_else(|| StsError(missing("mode")))?;
        let max_age = self.max_age.ok_or_else(|| StsError(missing("max_age")))?;
        if self.mx.is_empty() && mode != Mode::None && !self.bad_mx.is_empty() {
            let why: Vec<String> = self.bad_mx.iter().map(|e| e.0.clone()).collect();
            return Err(StsError(format!(
                "{}; no valid mx pattern remains (at least one is required in mode {})",
                why.join("; "),
                mode.as_str()
            )));
        }
        if self.mx.is_empty() && mode != Mode::None {
            return Err(StsError(format!(
                "{} (at least one is required in mode {})",
                missing("mx"),
                mode.as_str()
            )));
        }
        Ok((mode, self.mx, max_age))
    }
}

/// The `max_age` value on line `n`: at most ten digits, clamped to one year.
fn max_age(n: usize, value: &str) -> Result<u64, StsError> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(line_err(
            n,
            format!("max_age {value:?} is not a non-negative integer"),
        ));
    }
    if value.len() > 10 {
        return Err(line_err(
            n,
            format!("max_age {value:?} has more than 10 digits"),
        ));
    }
    let v: u64 = value.parse().expect("at most 10 digits");
    Ok(v.min(MAX_AGE_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            // An mx line that is not a host pattern is ignored, the policy kept (rejecting it would leave the domain unprotected).
            ("invalid mx line ignored", "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmx: mail.example.com\nmax_age: 86400\n".into(), P::Ok(Mode::Enforce, MX1, 86400)),
            ("only invalid mx lines", "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 86400\n".into(), P::Err("no valid mx pattern remains")),
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
}
