//! Mailbox addresses as values: parsed from an SMTP path with the RFC 5321 §4.1.2
//! grammar, kept as their meaning (local part and domain, quoting removed), and
//! written back with quoting where the local part needs it.
//!
//! Keeping the meaning and re-quoting on output is what stops a quoted local part
//! such as `"x> ORCPT=rfc822;y"@a.example` from turning into parameters at the
//! next hop. A local part holding NUL or another control character has no
//! representation in RFC 5321 (not even quoted), so it is refused at the door.

use std::fmt;

/// A mailbox: a local part (unquoted meaning) and a domain (or address literal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    local: String,
    domain: String,
}

/// Why an address was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The text does not follow the path grammar of RFC 5321 §4.1.2.
    #[error("address syntax error")]
    Syntax,
    /// The local part holds a byte RFC 5321 cannot carry, even quoted (NUL, CR, LF, other controls).
    #[error("the address contains a control character, which SMTP cannot carry")]
    Unrepresentable,
}

impl Mailbox {
    /// A mailbox from its meaning; checks that both halves can be written in SMTP.
    pub fn new(local: &str, domain: &str) -> Result<Mailbox, AddressError> {
        if local.chars().any(|c| c.is_control()) {
            return Err(AddressError::Unrepresentable);
        }
        if local.is_empty() || !is_domain(domain) {
            return Err(AddressError::Syntax);
        }
        Ok(Mailbox {
            local: local.to_string(),
            domain: domain.to_string(),
        })
    }

    /// The mailbox from its stored form `local@domain` (quoting removed); the
    /// domain cannot hold `@`, so the last `@` separates the halves.
    pub fn from_stored(s: &str) -> Result<Mailbox, AddressError> {
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::Syntax)?;
        Mailbox::new(local, domain)
    }

    /// The local part, unquoted.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain, as given (or an address literal with its brackets).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The mailbox as written in MAIL FROM / RCPT TO: the local part as a
    /// dot-string when it is one, else as a quoted-string with `"` and `\` escaped.
    pub fn to_smtp(&self) -> String {
        let mut out = String::with_capacity(self.local.len() + self.domain.len() + 3);
        if is_dot_string(&self.local) {
            out.push_str(&self.local);
        } else {
            out.push('"');
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        out.push('@');
        out.push_str(&self.domain);
        out
    }
}

/// The stored form: `local@domain` with the quoting removed (what the spool keeps).
impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Parses the path at the start of `s` (`<>`, `<mailbox>` or `<@route:mailbox>`,
/// RFC 5321 §4.1.2); returns the mailbox (None for `<>`) and the text after `>`.
pub fn parse_path(s: &str) -> Result<(Option<Mailbox>, &str), AddressError> {
    let inner = s.strip_prefix('<').ok_or(AddressError::Syntax)?;
    if let Some(rest) = inner.strip_prefix('>') {
        return Ok((None, rest));
    }
    let inner = skip_source_route(inner)?;
    let (local, rest) = parse_local(inner)?;
    let rest = rest.strip_prefix('@').ok_or(AddressError::Syntax)?;
    let end = rest.find('>').ok_or(AddressError::Syntax)?;
    let mailbox = Mailbox::new(&local, &rest[..end])?;
    Ok((Some(mailbox), &rest[end + 1..]))
}

/// Skips an obsolete source route (`@a,@b:`), which RFC 5321 says to ignore.
fn skip_source_route(s: &str) -> Result<&str, AddressError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let (route, rest) = s.split_once(':').ok_or(AddressError::Syntax)?;
    let hops_ok = route
        .split(',')
        .all(|hop| hop.strip_prefix('@').is_some_and(is_domain));
    if hops_ok {
        Ok(rest)
    } else {
        Err(AddressError::Syntax)
    }
}

/// A local part (dot-string or quoted-string): its meaning and the rest of the text.
fn parse_local(s: &str) -> Result<(String, &str), AddressError> {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s
            .find(|c: char| c != '.' && !is_atext(c))
            .unwrap_or(s.len());
        let local = &s[..end];
        if !is_dot_string(local) {
            return Err(AddressError::Syntax);
        }
        return Ok((local.to_string(), &s[end..]));
    };
    let mut local = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((local, &quoted[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) if (' '..='~').contains(&e) => local.push(e),
                Some((_, e)) if e.is_control() => return Err(AddressError::Unrepresentable),
                _ => return Err(AddressError::Syntax),
            },
            c if c.is_control() => return Err(AddressError::Unrepresentable),
            c => local.push(c),
        }
    }
    Err(AddressError::Syntax)
}

/// RFC 5322 atext, widened by RFC 6531 to every non-ASCII character.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Atom *("." Atom): what may stand unquoted as a local part.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

/// A domain (dot-separated labels of atext, so never `@`, `>`, quotes or spaces;
/// whether it is a DNS name is decided later by `Domain`) or an address literal.
/// Non-ASCII atext admits the C1 controls (U+0080–U+009F), which no domain holds
/// and which a terminal may obey (U+009B is CSI): refused (found by fuzzing).
fn is_domain(s: &str) -> bool {
    if s.chars().any(char::is_control) {
        return false;
    }
    if let Some(lit) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return is_address_literal(lit);
    }
    is_dot_string(s)
}

/// RFC 5321 §4.1.3 IPv4 and IPv6 address literals (without the brackets).
/// General address literals (`tag:content`) are refused: no tag is in use, and
/// their content may hold `@`, which would make the stored form ambiguous
/// (found by fuzzing).
fn is_address_literal(lit: &str) -> bool {
    match lit.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            lit[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => lit.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_to_their_meaning() {
        // (path and rest, local, domain, rest, serialised)
        let cases = [
            ("<a@b.example>", "a", "b.example", "", "a@b.example"),
            (
                "<a.b+c@x.test> SIZE=1",
                "a.b+c",
                "x.test",
                " SIZE=1",
                "a.b+c@x.test",
            ),
            (
                "<\"victim@other.test> ORCPT=rfc822;x\"@a.example>",
                "victim@other.test> ORCPT=rfc822;x",
                "a.example",
                "",
                "\"victim@other.test> ORCPT=rfc822;x\"@a.example",
            ),
            ("<\"a b\"@x>", "a b", "x", "", "\"a b\"@x"),
            (
                "<\"a\\\"b\\\\c\"@x>",
                "a\"b\\c",
                "x",
                "",
                "\"a\\\"b\\\\c\"@x",
            ),
            ("<\"plain\"@x>", "plain", "x", "", "plain@x"),
            ("<\"a..b\"@x>", "a..b", "x", "", "\"a..b\"@x"),
            ("<@r1.test,@r2.test:u@x>", "u", "x", "", "u@x"),
            ("<u@[192.0.2.1]>", "u", "[192.0.2.1]", "", "u@[192.0.2.1]"),
            (
                "<u@[IPv6:2001:db8::1]>",
                "u",
                "[IPv6:2001:db8::1]",
                "",
                "u@[IPv6:2001:db8::1]",
            ),
            (
                "<jürgen@bücher.test>",
                "jürgen",
                "bücher.test",
                "",
                "jürgen@bücher.test",
            ),
        ];
        for (path, local, domain, rest, smtp) in cases {
            let (m, r) = parse_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let m = m.unwrap();
            assert_eq!((m.local(), m.domain(), r), (local, domain, rest), "{path}");
            assert_eq!(m.to_smtp(), smtp, "{path}");
            assert_eq!(Mailbox::from_stored(&m.to_string()).unwrap(), m, "{path}");
            assert_eq!(parse_path(&format!("<{smtp}>")).unwrap().0.unwrap(), m);
        }
        assert_eq!(parse_path("<> RET=FULL").unwrap(), (None, " RET=FULL"));
    }

    #[test]
    fn bad_paths_are_refused_with_their_reason() {
        use AddressError::*;
        let cases = [
            ("<\"a\0b\"@x>", Unrepresentable),
            ("<\"a\x01b\"@x>", Unrepresentable),
            ("<\"a\\\rb\"@x>", Unrepresentable),
            ("<\"a\x7fb\"@x>", Unrepresentable),
            ("<a\0b@x>", Syntax),
            ("a@x", Syntax),
            ("<a@x", Syntax),
            ("<\"a@x>", Syntax),
            ("<@x>", Syntax),
            ("<a.@x>", Syntax),
            ("<a b@x>", Syntax),
            ("<a@b@x>", Syntax),
            ("<a@\"x y\">", Syntax),
            ("<a@>", Syntax),
            ("<postmaster>", Syntax),
            ("<@r:>", Syntax),
            // fuzz/smtp_command: a C1 control (CSI) in the domain.
            ("<\"victim@othe\"@a.\u{9b}example>", Syntax),
            ("<a@b\u{85}.example>", Syntax),
            ("<@r\u{9b}.example:a@b.example>", Syntax),
            // fuzz/smtp_command: an address literal holding `@` did not read back.
            ("<rMA@[bIENHA@WWC^hx]>", Syntax),
            ("<a@[x:y]>", Syntax),
            ("<a@[300.1.1.1]>", Syntax),
            ("<a@[IPv6:zz::1]>", Syntax),
            ("<a@[]>", Syntax),
        ];
        for (path, want) in cases {
            assert_eq!(parse_path(path).map(|_| ()), Err(want), "{path:?}");
        }
        assert_eq!(Mailbox::from_stored("a\0b@x"), Err(Unrepresentable));
        assert_eq!(Mailbox::from_stored("nodomain"), Err(Syntax));
        assert_eq!(Mailbox::from_stored("a@x y"), Err(Syntax));
    }
}
