//! Entry points for the cargo-fuzz targets in `fuzz/`, not an API.
//!
//! Each function takes the fuzzer's bytes, runs one parser the way the relay
//! runs it, and panics when an invariant the rest of the code relies on breaks
//! (a round trip that changes the value, a control character that survives a
//! check, whole and split input that disagree). Living in the crate, they reach
//! `pub(crate)` parsers without widening the public API.

use std::path::Path;

use smtp_proto::Request;

use crate::model::address::{parse_path, Mailbox};
use crate::model::visible::{visible, visible_lines};
use crate::protocol::data::{has_bare_line_end, normalize_line_ends, DataReceiver};

/// The text of `data`, or None when it is not UTF-8 (most parsers take `&str`).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Asserts that the escaped forms of `s` hold no control character.
fn assert_visible(s: &str) {
    assert!(!visible(s).chars().any(char::is_control), "{s:?}");
    let lines = visible_lines(s);
    assert!(
        !lines
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{s:?}"
    );
}

/// A mailbox that was accepted must be writable and must read back the same.
fn assert_round_trip(m: &Mailbox) {
    assert!(!m.local().chars().any(char::is_control), "{m:?}");
    assert!(!m.domain().chars().any(char::is_control), "{m:?}");
    let wire = format!("<{}>", m.to_smtp());
    let (back, rest) = parse_path(&wire).expect("written path parses");
    assert_eq!(back.as_ref(), Some(m), "{wire:?}");
    assert_eq!(rest, "");
    assert_eq!(Mailbox::from_stored(&m.to_string()).as_ref(), Ok(m));
}

/// One inbound command line, parsed as `inbound::session` parses it.
pub fn smtp_command(data: &[u8]) {
    let raw = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if let Some(s) = text(raw) {
        assert_visible(s);
        if let Ok((Some(m), _)) = parse_path(s) {
            assert_round_trip(&m);
        }
    }
    let mut line = raw.to_vec();
    line.extend_from_slice(b"\r\n");
    let (address, envid) = match Request::parse(&mut line.iter()).map(Request::into_owned) {
        Ok(Request::Mail { from }) => (from.address, from.env_id),
        Ok(Request::Rcpt { to }) => (to.address, to.orcpt),
        _ => return,
    };
    if let Ok(Some(m)) = crate::inbound::session::checked_path(raw, &address) {
        assert_round_trip(&m);
    }
    if let Some(v) = envid {
        let refused = crate::protocol::xtext::check_decoded("ENVID", &v).is_err();
        assert_eq!(refused, v.chars().any(char::is_control), "{v:?}");
    }
}

/// Server replies as the delivery client reads them, and what it makes of them.
pub fn smtp_reply(data: &[u8]) {
    use crate::delivery::client::{Capabilities, ReplyReader};
    let mut reader = ReplyReader::default();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match reader.line(line) {
            Ok(Some(reply)) => {
                assert!(reply.code <= 999);
                let one = reply.one_line();
                assert_visible(&one);
                if let Some(e) = reply.enhanced() {
                    assert!(
                        crate::model::status::EnhancedStatus::parse(&e).is_some(),
                        "{e}"
                    );
                }
                let _ = Capabilities::from_ehlo(&reply);
                crate::delivery::transaction::fuzz_interpret(&reply);
                reader = ReplyReader::default();
            }
            Ok(None) => {}
            Err(_) => reader = ReplyReader::default(),
        }
    }
}

/// DATA and BDAT bodies: whole and split input agree, nothing bare is stored,
/// and what delivery sends reads back as what was stored.
pub fn data(data: &[u8]) {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let mut whole = Vec::new();
    let used = DataReceiver::new().ingest(input, &mut whole);
    let cut = usize::from(cut).min(input.len());
    let mut r = DataReceiver::new();
    let mut split = Vec::new();
    let first = r.ingest(&input[..cut], &mut split);
    let split_used = match first {
        Some(n) => Some(n),
        None => r.ingest(&input[cut..], &mut split).map(|n| n + cut),
    };
    assert_eq!(used, split_used);
    assert_eq!(whole, split);
    assert!(!has_bare_line_end(&whole));
    // What delivery sends (stuffed, ended) must come back as the stored message.
    let sent = crate::delivery::client::dot_stuff(&whole);
    let mut back = Vec::new();
    assert_eq!(
        DataReceiver::new().ingest(&sent, &mut back),
        Some(sent.len())
    );
    let mut want = whole.clone();
    if !want.ends_with(b"\r\n") {
        want.extend_from_slice(b"\r\n");
    }
    assert_eq!(back, want);
    // BDAT: normalising is idempotent and leaves nothing bare.
    let bdat = normalize_line_ends(input);
    assert!(!has_bare_line_end(&bdat));
    assert_eq!(normalize_line_ends(&bdat), bdat);
}

/// Splits fuzz input into TXT records at NUL bytes.
fn records(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

/// `_mta-sts` TXT records.
pub fn sts_txt(data: &[u8]) {
    if let Ok(Some(record)) = crate::protocol::sts::parse_txt(&records(data)) {
        let id = record.id.as_str();
        assert!((1..=32).contains(&id.len()), "{id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id:?}");
    }
}

/// MTA-STS policy bodies.
pub fn sts_policy(data: &[u8]) {
    let Some(body) = text(data) else { return };
    if let Ok(p) = crate::protocol::sts::parse_policy(body) {
        assert!(p.max_age <= crate::protocol::sts::MAX_AGE_LIMIT);
        for mx in p.mx_strings() {
            assert!(!mx.chars().any(char::is_control), "{mx:?}");
            let host = mx.trim_start_matches("*.");
            let _ = p.allows(host);
            let _ = p.allows(&format!("x.{host}"));
        }
    }
}

/// `_smtp._tls` TXT records.
pub fn tlsrpt_record(data: &[u8]) {
    use crate::reporting::tlsrpt::{parse_rua, Rua};
    if let Ok(Some(ruas)) = parse_rua(&records(data)) {
        assert!(!ruas.is_empty());
        for rua in ruas {
            let s = match &rua {
                Rua::Mailto(a) => a.clone(),
                Rua::Https(u) => u.clone(),
            };
            assert!(!s.chars().any(char::is_control), "{rua:?}");
        }
    }
}

/// TLSA records against presented certificates: never a panic, and a record
/// only matches the bytes it names.
pub fn tlsa(data: &[u8]) {
    use crate::model::dns::Tlsa;
    use rustls_pki_types::CertificateDer;
    let [usage, selector, matching, len, rest @ ..] = data else {
        return;
    };
    let len = usize::from(*len).min(rest.len());
    let (assoc, cert) = rest.split_at(len);
    let t = Tlsa {
        usage: *usage,
        selector: *selector,
        matching: *matching,
        data: assoc.to_vec(),
    };
    let cert = CertificateDer::from(cert);
    if crate::tls::dane::matches(&t, &cert) && t.selector == 0 && t.matching == 0 {
        assert_eq!(assoc, cert.as_ref());
    }
    let _ = t.is_usable();
    let _ = crate::tls::dane::is_ca(&cert);
    let _ = crate::tls::keys::check_key_strength(&cert);
}

/// Local policy files (without reading `ca_file`s).
pub fn local_policy(data: &[u8]) {
    use crate::policy::local::PolicySet;
    let Some(text) = text(data) else { return };
    if let Ok(policies) = PolicySet::parse_file(text, Path::new("fuzz.toml")) {
        for p in &policies {
            assert!(!p.domain.chars().any(char::is_control), "{:?}", p.domain);
        }
    }
}

/// The Postfix importer: it never panics and what it writes is a policy file
/// tlsrelay reads.
pub fn postfix_import(data: &[u8]) {
    use crate::policy::local::{import_postfix, PolicySet};
    let Some(text) = text(data) else { return };
    let (out, _skipped) = import_postfix(text);
    if let Err(e) = PolicySet::parse_file(&out, Path::new("imported.toml")) {
        panic!("importer output does not load: {e}\n{out}");
    }
}

/// xtext: delivery's encoder and the parser's decoder agree, and the check
/// refuses exactly the values with control characters.
pub fn xtext(data: &[u8]) {
    let Some(value) = text(data) else { return };
    let refused = crate::protocol::xtext::check_decoded("ENVID", value).is_err();
    assert_eq!(refused, value.chars().any(char::is_control));
    if value.is_empty() || value.len() > 100 || !value.is_ascii() {
        return;
    }
    let encoded = crate::delivery::transaction::xtext(value);
    assert!(
        encoded.bytes().all(|b| (33..=126).contains(&b)),
        "{encoded}"
    );
    if encoded.len() > 100 {
        // RFC 3461 §4.4: an ENVID is at most 100 characters, encoded.
        return;
    }
    let line = format!("MAIL FROM:<a@b.example> ENVID={encoded}\r\n");
    match Request::parse(&mut line.as_bytes().iter()).map(Request::into_owned) {
        Ok(Request::Mail { from }) => assert_eq!(from.env_id.as_deref(), Some(value)),
        other => panic!("{line:?} parsed as {other:?}"),
    }
}

/// Envelope JSON from the spool, which is not trusted: reading it, rendering it
/// and running its life-cycle methods must not panic.
pub fn envelope_json(data: &[u8]) {
    use crate::spool::Envelope;
    use std::time::Duration;
    let Ok(mut env) = serde_json::from_slice::<Envelope>(data) else {
        return;
    };
    let again = serde_json::to_vec(&env).expect("an envelope serialises");
    let back: Envelope = serde_json::from_slice(&again).expect("and reads back");
    assert_eq!(back, env);
    let _ = crate::ops::queue::summary(&env);
    assert_visible(&env.sender);
    let now = env.received_at;
    let _ = env.retry_until(Duration::from_secs(5 * 86400));
    let _ = env.delay_notice_due(now, Duration::from_secs(4 * 3600));
    let _ = env.expire(now, Duration::from_secs(5 * 86400));
    env.schedule_next(now, &[Duration::from_secs(60), Duration::from_secs(3600)]);
}
