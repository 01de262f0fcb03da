//! The Postfix `smtp_tls_policy_maps` importer: a table's source text to policy TOML.

use std::collections::HashMap;
use std::fmt;

use super::parse::{match_name, policy_key, FieldError};
use super::{decode_hex, Fingerprint, Level, MinTls};

/// A line of a Postfix table that [`import_postfix`] did not carry over, or carried without an attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The 1-based line where the table entry starts.
    pub line: usize,
    /// The entry's text (continuation lines joined with a space).
    pub text: String,
    /// Why; starts with "carried" when the line was carried and only part of it was not.
    pub reason: String,
}

/// Advice given wherever a digest other than SHA-256 is dropped.
const DIGEST_ADVICE: &str = "tlsrelay pins SHA-256 only; compute the SHA-256 fingerprint of the \
                             certificate or its public key";

/// Why a table entry is not carried over at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportSkip {
    /// A continuation line at the top of the table.
    #[error("continuation line (leading whitespace) without an entry before it")]
    Orphan,
    /// A `[host]`, `[host]:port` or `host:port` key.
    #[error(
        "route-specific nexthop ([host], [host]:port or host:port) names a relay host, not a \
         recipient domain; tlsrelay policies are per recipient domain"
    )]
    Route,
    /// An address key.
    #[error("not a domain key; TLS policies are looked up by domain")]
    Address,
    /// A key or `match` name that is not a name.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A key without a level.
    #[error("no security level after the key")]
    NoLevel,
    /// `none` or `may`.
    #[error(
        "level {0}: tlsrelay never sends without TLS; the domain gets the relay's floor instead"
    )]
    Plaintext(String),
    /// A word that is no level.
    #[error("unknown level \"{0}\"")]
    UnknownLevel(String),
    /// `{ name = value }` attributes.
    #[error(
        "braced attribute values ({{ name = value }}) are not supported by the converter; convert this line by hand"
    )]
    Braced,
    /// `protocols=` that leaves neither TLS 1.2 nor 1.3.
    #[error("protocols={0} allows neither TLS 1.2 nor TLS 1.3, the only versions tlsrelay uses")]
    NoUsableProtocol(String),
    /// Level fingerprint without digests.
    #[error("fingerprint level without match= digests")]
    NoDigests,
    /// Level fingerprint whose digests are all unusable.
    #[error("no SHA-256 fingerprint to carry ({}); {DIGEST_ADVICE}", join(.0, "; "))]
    NoSha256(Vec<DroppedDigest>),
    /// `nexthop` / `dot-nexthop` names on a `.parent` key.
    #[error(
        "match=nexthop/dot-nexthop on the parent-domain key {0} depends on the \
         recipient domain and cannot be mixed with other names in tlsrelay; write a \
         policy per domain"
    )]
    ParentNexthop(String),
    /// A key seen before; Postfix uses the first.
    #[error("duplicate key; Postfix uses the first entry, line {0}")]
    Duplicate(usize),
}

/// A `fingerprint` digest that cannot be pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{digest}` is {why}")]
pub struct DroppedDigest {
    /// The digest as written.
    digest: String,
    /// What it is instead of SHA-256.
    why: NotSha256,
}

/// What a Postfix fingerprint digest is, when it is not SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotSha256 {
    /// 16 bytes.
    #[error("an MD5 digest")]
    Md5,
    /// 20 bytes.
    #[error("a SHA-1 digest")]
    Sha1,
    /// Any other length.
    #[error("not a SHA-256 digest (wrong length)")]
    WrongLength,
    /// Not hex digits.
    #[error("not hex")]
    NotHex,
}

/// The items joined by `sep`.
fn join<T: fmt::Display>(items: &[T], sep: &str) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(sep)
}

/// Part of an entry that was carried over differently, or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    /// An attribute (or a word that is not one) that was dropped.
    Without { attr: String, why: &'static str },
    /// `protocols=` carried as `min_tls`, with what could not be expressed.
    Protocols {
        attr: String,
        min: MinTls,
        why: String,
    },
    /// A digest that is not SHA-256, dropped beside usable ones.
    Digest(DroppedDigest),
    /// `match=` at a level without match names.
    UnusedMatch { value: String, level: Level },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Without { attr, why } => write!(f, "carried without `{attr}`: {why}"),
            Note::Protocols { attr, min, why } => {
                write!(
                    f,
                    "carried `{attr}` as min_tls = \"{}\": {why}",
                    min.as_str()
                )
            }
            Note::Digest(d) => write!(f, "carried without digest {d}; {DIGEST_ADVICE}"),
            Note::UnusedMatch { value, level } => write!(
                f,
                "carried without `match={value}`: tlsrelay uses no match names at level {level}"
            ),
        }
    }
}

/// Why each dropped attribute does not weaken the level.
const NOT_AN_ATTRIBUTE: &str = "not an attribute (name=value)";
const CIPHERS: &str = "tlsrelay's cipher suites are fixed (forward-secret AEAD suites of TLS \
                       1.2 and 1.3 only) and not set per domain";
const TAFILE: &str = "trust-anchor files are not supported yet (they could become DANE-TA \
                      style anchors later); until then the certificate must chain to Mozilla's \
                      roots — if the file holds CA certificates, set ca_file to it by hand";
const CONNECTION_REUSE: &str = "connection reuse is relay-wide (delivery.connection_reuse_time)";
const SERVERNAME: &str = "tlsrelay sends the MX host name as SNI";
const UNKNOWN_ATTRIBUTE: &str = "unknown attribute";

/// One entry carried over from a Postfix table.
struct Imported {
    line: usize,
    text: String,
    domain: String,
    level: Level,
    match_names: Vec<String>,
    fingerprints: Vec<Fingerprint>,
    min_tls: MinTls,
    comments: Vec<String>,
}

/// Converts a Postfix smtp_tls_policy_maps table (text of a hash/texthash source file) to tlsrelay policy TOML,
/// returning the TOML and every line it could not carry over with the reason.
///
/// Decisions: a line is not carried when its key is a route (`[host]`, `[host]:port`,
/// `host:port`), its level is `none`, `may` or unknown, it repeats an earlier key
/// (Postfix uses the first), it is a `fingerprint` line without a SHA-256 digest, or
/// its `protocols=` allow neither TLS 1.2 nor 1.3. `ciphers=`, `exclude=`, `tafile=`,
/// `connection_reuse=`, `servername=` and unknown attributes are reported and
/// dropped while the line's level is carried: dropping them never lets tlsrelay
/// accept less than the level demands (a missing `tafile=` means Mozilla's roots
/// must vouch for the host instead, so delivery fails closed rather than open).
/// Fingerprints are assumed to be SHA-256 (Postfix's `smtp_tls_fingerprint_digest`
/// default since 3.6) and are pinned both as certificate and public-key digests,
/// as Postfix compares either.
pub fn import_postfix(text: &str) -> (String, Vec<Skipped>) {
    let (entries, mut skipped) = logical_lines(text);
    let imported = carry_over(entries, &mut skipped);
    skipped.sort_by_key(|s| s.line);
    (render(&imported), skipped)
}

/// The table's entries with their first lines, continuation lines joined; and orphaned continuations.
fn logical_lines(text: &str) -> (Vec<(usize, String)>, Vec<Skipped>) {
    let mut entries: Vec<(usize, String)> = vec![];
    let mut skipped = vec![];
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim_end_matches('\r');
        let trimmed = l.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !l.starts_with(char::is_whitespace) {
            entries.push((i + 1, trimmed.to_string()));
        } else if let Some((_, t)) = entries.last_mut() {
            t.push(' ');
            t.push_str(trimmed);
        } else {
            skipped.push(Skipped {
                line: i + 1,
                text: trimmed.into(),
                reason: ImportSkip::Orphan.to_string(),
            });
        }
    }
    (entries, skipped)
}

/// Converts each entry, keeping the first of repeated keys; what is not carried goes to `skipped`.
fn carry_over(entries: Vec<(usize, String)>, skipped: &mut Vec<Skipped>) -> Vec<Imported> {
    let mut imported = vec![];
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (line, text) in entries {
        let mut notes = vec![];
        let entry =
            import_entry(line, &text, &mut notes).and_then(|e| match first_line.get(&e.domain) {
                Some(&first) => Err(ImportSkip::Duplicate(first)),
                None => Ok(e),
            });
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(reason) => {
                let reason = reason.to_string();
                skipped.push(Skipped { line, text, reason });
                continue;
            }
        };
        first_line.insert(entry.domain.clone(), line);
        entry
            .comments
            .extend(notes.iter().map(|n| format!("note: {n}")));
        skipped.extend(notes.iter().map(|n| Skipped {
            line,
            text: text.clone(),
            reason: n.to_string(),
        }));
        imported.push(entry);
    }
    imported
}

/// The policy file for the carried entries, each under a comment naming its line.
fn render(imported: &[Imported]) -> String {
    let mut out = String::from(
        "# tlsrelay local policies converted from a Postfix smtp_tls_policy_maps table.\n\
         # Review before use: lines that were not carried over are listed by the converter.\n",
    );
    for e in imported {
        e.write_toml(&mut out);
    }
    out
}

impl Imported {
    /// Appends this entry as a commented `[[policy]]` table.
    fn write_toml(&self, out: &mut String) {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        // The line's text and the notes quote the table, which may hold control
        // characters; a TOML comment may not (found by fuzzing).
        let visible = crate::model::visible::visible;
        out.push_str(&format!(
            "\n# line {}: {}\n",
            self.line,
            visible(&self.text)
        ));
        for c in &self.comments {
            out.push_str(&format!("# {}\n", visible(c)));
        }
        out.push_str("[[policy]]\n");
        out.push_str(&format!("domain = {}\n", q(&self.domain)));
        out.push_str(&format!("level = {}\n", q(self.level.as_str())));
        if !self.match_names.is_empty() {
            let names: Vec<String> = self.match_names.iter().map(|n| q(n)).collect();
            out.push_str(&format!("match = [{}]\n", names.join(", ")));
        }
        if !self.fingerprints.is_empty() {
            out.push_str("fingerprints = [\n");
            for f in &self.fingerprints {
                out.push_str(&format!("    {},\n", q(&f.to_string())));
            }
            out.push_str("]\n");
        }
        if self.min_tls != MinTls::Tls12 {
            out.push_str(&format!("min_tls = {}\n", q(self.min_tls.as_str())));
        }
    }
}

/// Converts one logical line; `Err` = not carried, `notes` = what was carried differently.
fn import_entry(line: usize, text: &str, notes: &mut Vec<Note>) -> Result<Imported, ImportSkip> {
    let mut tokens = text.split_whitespace();
    let domain = entry_key(tokens.next().unwrap_or_default())?;
    let level = entry_level(tokens.next())?;
    if text.contains('{') {
        return Err(ImportSkip::Braced);
    }
    let attrs = attributes(tokens, notes)?;
    let mut comments = vec![];
    let (level, match_names, fingerprints) = match level {
        Level::Fingerprint => {
            let pins = pins(&attrs.matches, notes)?;
            comments.push(BOTH_PINNED.into());
            (level, vec![], pins)
        }
        Level::Verify | Level::Secure => {
            let (level, names) = names(level, &domain, &attrs.matches, &mut comments)?;
            (level, names, vec![])
        }
        Level::Dane | Level::DaneOnly | Level::Encrypt => {
            notes.extend(attrs.matches.iter().map(|v| Note::UnusedMatch {
                value: v.to_string(),
                level,
            }));
            (level, vec![], vec![])
        }
    };
    if level == Level::Dane {
        comments.push("tlsrelay's dane falls back to the relay's floor (WebPKI), not to opportunistic TLS as Postfix's does".into());
    }
    Ok(Imported {
        line,
        text: text.to_string(),
        domain,
        level,
        match_names,
        fingerprints,
        min_tls: attrs.min_tls,
        comments,
    })
}

/// The policy key of an entry: a domain or `.domain`, never a route or an address.
fn entry_key(key: &str) -> Result<String, ImportSkip> {
    if key.starts_with('[') || key.contains(':') {
        return Err(ImportSkip::Route);
    }
    if key.contains('@') {
        return Err(ImportSkip::Address);
    }
    Ok(policy_key(key)?)
}

/// The level word after the key (any case), refusing `none` and `may`.
fn entry_level(word: Option<&str>) -> Result<Level, ImportSkip> {
    let word = word.ok_or(ImportSkip::NoLevel)?.to_ascii_lowercase();
    match word.as_str() {
        "none" | "may" => Err(ImportSkip::Plaintext(word)),
        w => Level::from_name(w).ok_or(ImportSkip::UnknownLevel(word)),
    }
}

/// What an entry's attributes say that tlsrelay can carry.
struct Attributes<'a> {
    /// Every `match=` value, in order.
    matches: Vec<&'a str>,
    /// From `protocols=`.
    min_tls: MinTls,
}

/// Reads the attributes after the level; the ones tlsrelay has no use for become notes.
fn attributes<'a>(
    tokens: impl Iterator<Item = &'a str>,
    notes: &mut Vec<Note>,
) -> Result<Attributes<'a>, ImportSkip> {
    let mut out = Attributes {
        matches: vec![],
        min_tls: MinTls::Tls12,
    };
    for attr in tokens {
        let without = |why| Note::Without {
            attr: attr.to_string(),
            why,
        };
        let Some((name, value)) = attr.split_once('=') else {
            notes.push(without(NOT_AN_ATTRIBUTE));
            continue;
        };
        let why = match name.to_ascii_lowercase().as_str() {
            "match" => {
                out.matches.push(value);
                continue;
            }
            "protocols" => {
                let (min, why) = postfix_protocols(value)?;
                out.min_tls = min;
                notes.extend(why.map(|why| Note::Protocols {
                    attr: attr.to_string(),
                    min,
                    why,
                }));
                continue;
            }
            "ciphers" | "exclude" => CIPHERS,
            "tafile" => TAFILE,
            "connection_reuse" => CONNECTION_REUSE,
            "servername" => SERVERNAME,
            _ => UNKNOWN_ATTRIBUTE,
        };
        notes.push(without(why));
    }
    Ok(out)
}

/// Why a fingerprint entry pins each digest twice.
const BOTH_PINNED: &str = "Postfix compares its fingerprints with the certificate and with its \
                           public key: both are pinned (SHA-256 assumed, Postfix's default \
                           digest since 3.6)";

/// The pins of a fingerprint entry: each SHA-256 digest as certificate and as key digest.
fn pins(values: &[&str], notes: &mut Vec<Note>) -> Result<Vec<Fingerprint>, ImportSkip> {
    if values.is_empty() {
        return Err(ImportSkip::NoDigests);
    }
    let mut pins = vec![];
    let mut dropped = vec![];
    for digest in values.iter().flat_map(|v| v.split('|')) {
        if digest.is_empty() {
            continue;
        }
        match sha256(digest) {
            Ok(d) => {
                for f in [Fingerprint::Cert(d), Fingerprint::PublicKey(d)] {
                    if !pins.contains(&f) {
                        pins.push(f);
                    }
                }
            }
            Err(why) => dropped.push(DroppedDigest {
                digest: digest.to_string(),
                why,
            }),
        }
    }
    if pins.is_empty() {
        return Err(ImportSkip::NoSha256(dropped));
    }
    notes.extend(dropped.into_iter().map(Note::Digest));
    Ok(pins)
}

/// A SHA-256 digest in hex, or what the digits are instead.
fn sha256(digest: &str) -> Result<[u8; 32], NotSha256> {
    let bytes = decode_hex(digest).map_err(|_| NotSha256::NotHex)?;
    match bytes.len() {
        32 => Ok(bytes.try_into().expect("32 bytes")),
        16 => Err(NotSha256::Md5),
        20 => Err(NotSha256::Sha1),
        _ => Err(NotSha256::WrongLength),
    }
}

/// The match names of a verify or secure entry, and its level (secure with only
/// `match=hostname` checks what tlsrelay's verify does).
fn names(
    level: Level,
    domain: &str,
    values: &[&str],
    comments: &mut Vec<String>,
) -> Result<(Level, Vec<String>), ImportSkip> {
    let mut words: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(':'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    words.dedup();
    let has = |w: &str| words.iter().any(|x| x == w);
    let only = |set: &[&str]| !words.is_empty() && words.iter().all(|w| set.contains(&w.as_str()));
    let secure = level == Level::Secure;
    let comment = if words.is_empty() {
        secure.then_some(
            "Postfix's default match=nexthop:dot-nexthop is tlsrelay's default at level secure",
        )
    } else if secure && only(&["nexthop", "dot-nexthop"]) && has("nexthop") && has("dot-nexthop") {
        Some("match=nexthop:dot-nexthop is tlsrelay's default at level secure")
    } else if only(&["hostname"]) && secure {
        comments.push("Postfix secure with match=hostname checks only the MX host name: that is tlsrelay's level verify".into());
        return Ok((Level::Verify, vec![]));
    } else if only(&["hostname"]) {
        Some("match=hostname (the MX host name) is tlsrelay's default at level verify")
    } else {
        return Ok((level, explicit_names(domain, &words, comments)?));
    };
    comments.extend(comment.map(String::from));
    Ok((level, vec![]))
}

/// Match names listed explicitly; `nexthop` and `dot-nexthop` become the domain and `.domain`.
fn explicit_names(
    domain: &str,
    words: &[String],
    comments: &mut Vec<String>,
) -> Result<Vec<String>, ImportSkip> {
    if domain.starts_with('.') && words.iter().any(|w| w == "nexthop" || w == "dot-nexthop") {
        return Err(ImportSkip::ParentNexthop(domain.to_string()));
    }
    let mut names: Vec<String> = vec![];
    for w in words {
        let name = match w.as_str() {
            "nexthop" => domain.to_string(),
            "dot-nexthop" => format!(".{domain}"),
            "hostname" => {
                comments.push("match=hostname is not listed: with explicit match names tlsrelay checks only those (Postfix also accepted the MX host name)".into());
                continue;
            }
            w => match_name(w)?,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads Postfix's `protocols=` value: the lowest TLS version tlsrelay should accept, and a note if the value
/// says something tlsrelay cannot express; `Err` when it allows neither TLS 1.2 nor 1.3.
fn postfix_protocols(value: &str) -> Result<(MinTls, Option<String>), ImportSkip> {
    const NAMES: [&str; 6] = ["sslv2", "sslv3", "tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3"];
    let idx = |s: &str| NAMES.iter().position(|n| n.eq_ignore_ascii_case(s));
    let mut include = [false; 6];
    let mut any_include = false;
    let mut exclude = [false; 6];
    let (mut lo, mut hi) = (0, 5);
    let mut unknown = vec![];
    for item in value.split([':', ',', ' ']).filter(|s| !s.is_empty()) {
        let (op, name) = if let Some(n) = item.strip_prefix(">=") {
            (">=", n)
        } else if let Some(n) = item.strip_prefix("<=") {
            ("<=", n)
        } else if let Some(n) = item.strip_prefix('!') {
            ("!", n)
        } else {
            ("", item)
        };
        let Some(i) = idx(name) else {
            unknown.push(item);
            continue;
        };
        match op {
            ">=" => lo = lo.max(i),
            "<=" => hi = hi.min(i),
            "!" => exclude[i] = true,
            _ => {
                include[i] = true;
                any_include = true;
            }
        }
    }
    let on = |i: usize| (!any_include || include[i]) && !exclude[i] && lo <= i && i <= hi;
    let mut notes = vec![];
    if !unknown.is_empty() {
        notes.push(format!("unknown protocol names {}", unknown.join(", ")));
    }
    if (0..4).any(on) {
        notes.push("it allows versions below TLS 1.2, which tlsrelay never uses".to_string());
    }
    let min = match (on(4), on(5)) {
        (true, _) => MinTls::Tls12,
        (false, true) => MinTls::Tls13,
        (false, false) => return Err(ImportSkip::NoUsableProtocol(value.to_string())),
    };
    if !on(5) {
        notes.push(
            "it excludes TLS 1.3; tlsrelay does not cap the version, TLS 1.3 stays allowed".into(),
        );
    }
    Ok((min, (!notes.is_empty()).then(|| notes.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{digest, A};
    use super::super::PolicySet;
    use super::*;
    use std::path::Path;

    fn colon_hex(hex: &str) -> String {
        hex.to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn import_realistic_postfix_table() {
        let b = "0011223344556677889900aabbccddeeff0011223344556677889900aabbccdd";
        let md5 = colon_hex("00112233445566778899aabbccddeeff");
        let sha1 = colon_hex("00112233445566778899aabbccddeeff00112233");
        let table = format!(
            "# /etc/postfix/tls_policy
\r
example.com             secure
.example.com            secure match=nexthop:dot-nexthop
bank.example            secure match=bank.example:.mail.bank.example protocols=>=TLSv1.3 ciphers=high
partner.example         verify match=hostname:MX.partner.example
hostonly.example        secure match=hostname
dane.example            dane-only
opportunistic.example   dane
[relay.example.net]:587 encrypt
[10.0.0.1]              verify
legacy.example          may
internal.example        NONE
pinned.example          fingerprint
    match={}|{md5}
\tmatch={b}
oldpin.example          fingerprint match={sha1}
proto.example           encrypt protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1 connection_reuse=yes
old-proto.example       encrypt protocols=!SSLv2:!SSLv3 exclude=3DES
tafile.example          secure tafile=/etc/postfix/ta.pem
weird.example           maybe
EXAMPLE.COM.            encrypt
bücher.example          verify match=nexthop:dot-nexthop
only12.example          Encrypt protocols=TLSv1.2
none13.example          encrypt protocols=<=TLSv1.1
",
            colon_hex(A)
        );
        let (toml_text, skipped) = import_postfix(&table);
        let got: Vec<(usize, &str)> = skipped
            .iter()
            .map(|s| (s.line, s.reason.as_str()))
            .collect();
        let want: Vec<(usize, String)> = vec![
            (5, "carried without `ciphers=high`: tlsrelay's cipher suites are fixed (forward-secret AEAD suites of TLS 1.2 and 1.3 only) and not set per domain".into()),
            (10, "route-specific nexthop ([host], [host]:port or host:port) names a relay host, not a recipient domain; tlsrelay policies are per recipient domain".into()),
            (11, "route-specific nexthop ([host], [host]:port or host:port) names a relay host, not a recipient domain; tlsrelay policies are per recipient domain".into()),
            (12, "level may: tlsrelay never sends without TLS; the domain gets the relay's floor instead".into()),
            (13, "level none: tlsrelay never sends without TLS; the domain gets the relay's floor instead".into()),
            (14, format!("carried without digest `{md5}` is an MD5 digest; tlsrelay pins SHA-256 only; compute the SHA-256 fingerprint of the certificate or its public key")),
            (17, format!("no SHA-256 fingerprint to carry (`{sha1}` is a SHA-1 digest); tlsrelay pins SHA-256 only; compute the SHA-256 fingerprint of the certificate or its public key")),
            (18, "carried without `connection_reuse=yes`: connection reuse is relay-wide (delivery.connection_reuse_time)".into()),
            (19, "carried `protocols=!SSLv2:!SSLv3` as min_tls = \"1.2\": it allows versions below TLS 1.2, which tlsrelay never uses".into()),
            (19, "carried without `exclude=3DES`: tlsrelay's cipher suites are fixed (forward-secret AEAD suites of TLS 1.2 and 1.3 only) and not set per domain".into()),
            (20, "carried without `tafile=/etc/postfix/ta.pem`: trust-anchor files are not supported yet (they could become DANE-TA style anchors later); until then the certificate must chain to Mozilla's roots — if the file holds CA certificates, set ca_file to it by hand".into()),
            (21, "unknown level \"maybe\"".into()),
            (22, "duplicate key; Postfix uses the first entry, line 3".into()),
            (24, "carried `protocols=TLSv1.2` as min_tls = \"1.2\": it excludes TLS 1.3; tlsrelay does not cap the version, TLS 1.3 stays allowed".into()),
            (25, "protocols=<=TLSv1.1 allows neither TLS 1.2 nor TLS 1.3, the only versions tlsrelay uses".into()),
        ];
        let want: Vec<(usize, &str)> = want.iter().map(|(l, r)| (*l, r.as_str())).collect();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        assert_eq!(
            skipped[5].text,
            "pinned.example          fingerprint match=".to_string()
                + &colon_hex(A)
                + "|"
                + &md5
                + " match="
                + b
        );

        // The round trip: the generated TOML parses back to exactly these policies.
        let back = PolicySet::parse_file(&toml_text, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
        let summary: Vec<(&str, Level, Vec<&str>, MinTls)> = back
            .iter()
            .map(|p| {
                (
                    p.domain.as_str(),
                    p.level,
                    p.match_names.iter().map(String::as_str).collect(),
                    p.min_tls,
                )
            })
            .collect();
        use Level::*;
        use MinTls::*;
        assert_eq!(
            summary,
            vec![
                ("example.com", Secure, vec![], Tls12),
                (".example.com", Secure, vec![], Tls12),
                (
                    "bank.example",
                    Secure,
                    vec!["bank.example", ".mail.bank.example"],
                    Tls13
                ),
                ("partner.example", Verify, vec!["mx.partner.example"], Tls12),
                ("hostonly.example", Verify, vec![], Tls12),
                ("dane.example", DaneOnly, vec![], Tls12),
                ("opportunistic.example", Dane, vec![], Tls12),
                ("pinned.example", Fingerprint, vec![], Tls12),
                ("proto.example", Encrypt, vec![], Tls12),
                ("old-proto.example", Encrypt, vec![], Tls12),
                ("tafile.example", Secure, vec![], Tls12),
                (
                    "xn--bcher-kva.example",
                    Verify,
                    vec!["xn--bcher-kva.example", ".xn--bcher-kva.example"],
                    Tls12
                ),
                ("only12.example", Encrypt, vec![], Tls12),
            ]
        );
        let pinned = &back[7];
        assert_eq!(
            pinned.fingerprints,
            vec![
                super::Fingerprint::Cert(digest(A)),
                super::Fingerprint::PublicKey(digest(A)),
                super::Fingerprint::Cert(digest(b)),
                super::Fingerprint::PublicKey(digest(b)),
            ]
        );
        // Every policy says where it came from, and the comments explain the translation.
        assert!(toml_text.contains("# line 7: hostonly.example        secure match=hostname\n# Postfix secure with match=hostname checks only the MX host name"), "{toml_text}");
        assert!(
            toml_text.contains("not to opportunistic TLS"),
            "{toml_text}"
        );
        assert!(
            toml_text.contains("match=hostname is not listed"),
            "{toml_text}"
        );
        assert!(
            toml_text.contains("# note: carried without `ciphers=high`"),
            "{toml_text}"
        );
    }

    /// fuzz/postfix_import: a NUL inside a carried line made the output unloadable.
    #[test]
    fn control_characters_in_a_line_stay_out_of_the_comments() {
        let table =
            "verify.example verify match\0hostname:nexthop\nenc.example encrypt \x1b[2J=1\n";
        let (out, _) = import_postfix(table);
        let set = PolicySet::parse_file(&out, std::path::Path::new("imported.toml"));
        assert_eq!(set.map(|s| s.len()), Ok(2), "{out}");
        assert!(out.contains("match\\x00hostname"), "{out}");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out}");
    }

    #[test]
    fn import_edge_cases() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   leading.example secure\n", &["continuation line"]),
            ("example.com\n", &["no security level"]),
            ("user@example.com secure\n", &["not a domain key"]),
            ("example.com:25 secure\n", &["route-specific"]),
            ("bad_domain.example secure\n", &["only letters, digits, hyphens"]),
            ("example.com secure { match = a:b }\n", &["braced attribute values"]),
            ("example.com fingerprint\n", &["fingerprint level without match= digests"]),
            ("example.com fingerprint match=zz\n", &["`zz` is not hex"]),
            (".example.com secure match=nexthop:mx.example.net\n", &["depends on the recipient domain"]),
            ("example.com secure match=*.example.net\n", &["no wildcards"]),
            ("example.com encrypt match=x.example junk servername=x.example foo=bar\n", &[
                "carried without `junk`: not an attribute",
                "carried without `servername=x.example`: tlsrelay sends the MX host name as SNI",
                "carried without `foo=bar`: unknown attribute",
                "carried without `match=x.example`: tlsrelay uses no match names at level encrypt",
            ]),
            ("example.com encrypt protocols=>=TLSv1.2:!TLSv1.3:bogus\n", &[
                "unknown protocol names bogus; it excludes TLS 1.3",
            ]),
        ];
        for (table, reasons) in cases {
            let (text, skipped) = import_postfix(table);
            assert_eq!(skipped.len(), reasons.len(), "{table}: {skipped:#?}");
            for (s, want) in skipped.iter().zip(*reasons) {
                assert!(s.reason.contains(want), "{table}: {} / {want}", s.reason);
                assert_eq!(s.line, 1);
            }
            PolicySet::parse_file(&text, Path::new("t.toml")).unwrap();
        }
        // exact keys translate nexthop / dot-nexthop next to other names.
        let (text, skipped) = import_postfix(
            "example.com secure match=nexthop:dot-nexthop:mx.example.net:hostname\n",
        );
        assert!(skipped.is_empty());
        let p = PolicySet::parse_file(&text, Path::new("t.toml")).unwrap();
        assert_eq!(
            p[0].match_names,
            ["example.com", ".example.com", "mx.example.net"]
        );
    }

    #[test]
    fn postfix_protocols_to_min_tls() {
        let cases: &[(&str, Option<MinTls>, bool)] = &[
            (">=TLSv1.2", Some(MinTls::Tls12), false),
            (">=TLSv1.3", Some(MinTls::Tls13), false),
            ("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1", Some(MinTls::Tls12), false),
            (
                "!SSLv2,!SSLv3,!TLSv1,!TLSv1.1,!TLSv1.2",
                Some(MinTls::Tls13),
                false,
            ),
            ("TLSv1.2:TLSv1.3", Some(MinTls::Tls12), false),
            ("tlsv1.3", Some(MinTls::Tls13), false),
            (">=TLSv1", Some(MinTls::Tls12), true),
            ("!SSLv2:!SSLv3", Some(MinTls::Tls12), true),
            ("", Some(MinTls::Tls12), true),
            ("<=TLSv1.1", None, true),
            ("TLSv1", None, true),
            (">=TLSv1.3:!TLSv1.3", None, true),
        ];
        for (value, want, note) in cases {
            match postfix_protocols(value) {
                Ok((min, n)) => {
                    assert_eq!(Some(min), *want, "{value}");
                    assert_eq!(n.is_some(), *note, "{value}: {n:?}");
                }
                Err(e) => assert_eq!(None, *want, "{value}: {e}"),
            }
        }
    }
}
