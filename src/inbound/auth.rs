//! SMTP AUTH (PLAIN and LOGIN) against a users file of argon2 password hashes.
//!
//! The file has one `name:$argon2id$...` entry per line; `#` starts a comment.
//! After the hash, separated by spaces, may follow the envelope senders the user
//! owns besides its own name (`alice@example.com`, `@example.org` for a whole
//! domain), which `server.sender_login_match` enforces.
//! AUTH is offered only after STARTTLS, so passwords never cross the wire in clear.

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;

/// The largest argon2 memory cost (KiB) a users file may name: one check needs
/// this much memory, and several run at once.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// Stands in for unknown users, so their timing and memory are like those of
/// known ones (argon2id, m=19456, t=2, p=1).
const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3nT8bEJtNgFdm1Cq9hkCAkMOdIBYr9eMRQ2AS5lBQ8o";

/// A users file that cannot be used: the file, the line and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file cannot be read.
    #[error("{}: cannot read the users file: {error}", path.display())]
    Read {
        /// The users file.
        path: std::path::PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// A line is not `name:$argon2id$...`.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The users file.
        path: std::path::PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong and what would be valid.
        message: String,
    },
}

/// Users allowed to authenticate, by name, with their argon2 PHC hash strings.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// The senders each user owns besides its own name.
    senders: HashMap<String, Vec<OwnedSender>>,
}

/// An envelope sender a user may use besides its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedSender {
    /// One address (`local@domain`), compared without regard to ASCII case.
    Address(String),
    /// Every address in a domain (`@example.org`), compared without regard to ASCII case.
    Domain(String),
}

impl OwnedSender {
    /// An entry after the hash: `local@domain` or `@domain`.
    fn parse(word: &str) -> Option<OwnedSender> {
        match word.strip_prefix('@') {
            Some(d) if !d.is_empty() && !d.contains('@') => Some(OwnedSender::Domain(d.into())),
            Some(_) => None,
            None => word
                .rsplit_once('@')
                .filter(|(l, d)| !l.is_empty() && !d.is_empty())
                .map(|_| OwnedSender::Address(word.into())),
        }
    }

    /// Whether `sender` (stored form, `local@domain`) is this entry.
    fn covers(&self, sender: &str) -> bool {
        match self {
            OwnedSender::Address(a) => a.eq_ignore_ascii_case(sender),
            OwnedSender::Domain(d) => sender
                .rsplit_once('@')
                .is_some_and(|(_, sd)| sd.eq_ignore_ascii_case(d)),
        }
    }
}

impl Users {
    /// Reads a users file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|error| UsersError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Users::parse(&text).map_err(|(line, message)| UsersError::Line {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses users-file text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut users = Users::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            users.add_line(line).map_err(|e| (i + 1, e))?;
        }
        Ok(users)
    }

    /// One `name:HASH [sender ...]` line.
    fn add_line(&mut self, line: &str) -> Result<(), String> {
        let Some((name, rest)) = line.split_once(':') else {
            return Err("expected `name:$argon2id$...`".into());
        };
        let mut words = rest.split_whitespace();
        let hash = words.next().unwrap_or("");
        let owned = words
            .map(|w| {
                OwnedSender::parse(w).ok_or_else(|| {
                    format!("`{w}` after the hash of `{name}` is neither an address nor `@domain`")
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let params = PasswordHash::new(hash)
            .ok()
            .filter(|_| hash.starts_with("$argon2"))
            .and_then(|h| Params::try_from(&h).ok());
        let Some(params) = params else {
            return Err(format!(
                "the hash for `{name}` is not an argon2 PHC string (`$argon2id$v=19$...`)"
            ));
        };
        if params.m_cost() > MAX_MEMORY_KIB {
            return Err(format!(
                    "the hash for `{name}` needs m={} KiB per check; the limit is m={MAX_MEMORY_KIB} (m=19456 is recommended)",
                    params.m_cost()
                ));
        }
        if self
            .hashes
            .insert(name.to_string(), hash.to_string())
            .is_some()
        {
            return Err(format!("user `{name}` is listed twice"));
        }
        self.senders.insert(name.to_string(), owned);
        Ok(())
    }

    /// Whether `user` may use envelope sender `sender` (stored form; empty for
    /// the null sender, which anyone may use): its own name, or one it owns.
    pub fn may_send_as(&self, user: &str, sender: &str) -> bool {
        sender.is_empty()
            || sender.eq_ignore_ascii_case(user)
            || self
                .senders
                .get(user)
                .is_some_and(|owned| owned.iter().any(|o| o.covers(sender)))
    }

    /// Whether `user` is listed in the file.
    pub fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// Whether `password` is right for `user`. Unknown users cost the same work as known ones.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.verify_with(user, password, &mut Vec::new())
    }

    /// Like `verify`, with argon2's working memory in `memory` (grown as needed), so
    /// a caller can reuse a few buffers instead of allocating one per check.
    pub fn verify_with(&self, user: &str, password: &str, memory: &mut Vec<Block>) -> bool {
        let stored = self.hashes.get(user).map(String::as_str).unwrap_or(DUMMY);
        let ok =
            PasswordHash::new(stored).is_ok_and(|h| matches_hash(&h, password.as_bytes(), memory));
        ok && self.hashes.contains_key(user)
    }
}

/// Recomputes `hash` for `password` in `memory`; compares in constant time.
fn matches_hash(hash: &PasswordHash<'_>, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(hash.algorithm), Params::try_from(hash))
    else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
        .is_ok()
        && Output::new(&out).is_ok_and(|o| o == expected)
}

/// Decodes an AUTH PLAIN response (`authzid NUL authcid NUL password`, base64).
/// Returns the user and password; an authzid different from the user is refused.
pub fn decode_plain(b64: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let mut parts = raw.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let pass = String::from_utf8(parts.next()?.to_vec()).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some((user, pass))
}

/// Decodes one base64 line of AUTH LOGIN.
pub fn decode_line(b64: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    String::from_utf8(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    fn hash(pw: &str) -> String {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        Argon2::default()
            .hash_password(pw.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn users_file() {
        let text = format!("# comment\n\nalice:{}\n", hash("s3cret"));
        let users = Users::parse(&text).unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
        assert_eq!(Users::parse("alice\n").unwrap_err().0, 1);
        assert_eq!(Users::parse("\nalice:plaintext\n").unwrap_err().0, 2);
        let dup = format!("a:{0}\na:{0}\n", hash("x"));
        assert!(Users::parse(&dup).unwrap_err().1.contains("twice"));
        let greedy = "a:$argon2id$v=19$m=1048576,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3nT8bEJtNgFdm1Cq9hkCAkMOdIBYr9eMRQ2AS5lBQ8o\n";
        assert!(Users::parse(greedy).unwrap_err().1.contains("m=1048576"));
    }

    #[test]
    fn owned_senders() {
        let text = format!(
            "alice:{0} alice@example.com @example.org\nbob@example.net:{0}\n",
            hash("pw")
        );
        let users = Users::parse(&text).unwrap();
        let cases = [
            ("alice", "alice@example.com", true),
            ("alice", "ALICE@Example.COM", true),
            ("alice", "anyone@example.org", true),
            ("alice", "x@sub.example.org", false),
            ("alice", "bob@example.net", false),
            ("alice", "", true),
            ("bob@example.net", "bob@example.net", true),
            ("bob@example.net", "Bob@EXAMPLE.net", true),
            ("bob@example.net", "alice@example.com", false),
            ("carol", "carol@example.com", false),
        ];
        for (user, sender, ok) in cases {
            assert_eq!(users.may_send_as(user, sender), ok, "{user} as {sender:?}");
        }
        let bad = format!("alice:{} example.com\n", hash("pw"));
        let (line, msg) = Users::parse(&bad).unwrap_err();
        assert_eq!(line, 1);
        assert!(msg.contains("`example.com`"), "{msg}");
    }

    #[test]
    fn reused_memory_gives_the_same_answers() {
        let users = Users::parse(&format!("alice:{}\n", hash("s3cret"))).unwrap();
        let mut memory = Vec::new();
        for _ in 0..2 {
            assert!(users.verify_with("alice", "s3cret", &mut memory));
            assert!(!users.verify_with("alice", "s3creT", &mut memory));
            assert!(!users.verify_with("bob", "s3cret", &mut memory));
        }
        assert_eq!(memory.len(), 19456);
    }

    #[test]
    fn plain_decoding() {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        type Case<'a> = (&'a [u8], Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (b"\0alice\0pw", Some(("alice", "pw"))),
            (b"alice\0alice\0pw", Some(("alice", "pw"))),
            (b"bob\0alice\0pw", None),
            (b"\0\0pw", None),
            (b"alice\0pw", None),
        ];
        for (raw, want) in cases {
            let got = decode_plain(&b64(raw));
            let want = want.map(|(u, p)| (u.to_string(), p.to_string()));
            assert_eq!(got, want, "{raw:?}");
        }
        assert_eq!(decode_plain("!!!"), None);
    }
}
