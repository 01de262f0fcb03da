//! Files written by earlier versions stay readable: outcome records (which TLS
//! reports are built from) and cached MTA-STS policies, as the first release
//! wrote them (`tests/fixtures/`). The envelope fixture is read by a unit test in
//! `spool`.

use std::path::Path;
use std::time::Duration;

use tlsrelay::model::rfc8460::{PolicyType, ResultType};
use tlsrelay::reporting::outcome::{OutcomeLog, SessionResult};
use tlsrelay::resolve::dns::{Dns, DnsSettings};
use tlsrelay::resolve::mta_sts::{FetchSettings, MtaSts};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn outcome_records_of_the_first_release_read_and_count() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("tests/fixtures/outcomes-v1"), dir.path());
    let log = OutcomeLog::open(dir.path()).unwrap();
    let records = log.read_day("2026-12-01").unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[0].policy, PolicyType::Tlsa);
    assert_eq!(records[0].policy_strings.len(), 1);
    assert_eq!(records[1].result, Some(ResultType::StarttlsNotSupported));
    assert_eq!(records[2].policy, PolicyType::Sts);
    // Older records lack the RFC 8460 detail fields; they default to empty.
    assert!(records[3].sending_ip.is_none() && records[3].policy_strings.is_empty());
    let sessions: Vec<SessionResult> = records.iter().map(|o| o.session()).collect();
    assert_eq!(sessions[0], SessionResult::Success);
    assert_eq!(
        sessions[1],
        SessionResult::Failure(ResultType::StarttlsNotSupported)
    );
    // A record stored under the Unicode spelling reports under the A-label.
    assert_eq!(
        records[3].policy_domain().unwrap().as_str(),
        "xn--bcher-kva.test"
    );
}

#[tokio::test]
async fn cached_mta_sts_policy_of_the_first_release_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("tests/fixtures/mta-sts-v1"), dir.path());
    let dns = Dns::new(&DnsSettings::default()).unwrap();
    let settings = FetchSettings {
        port: 443,
        extra_roots: vec![],
        timeout: Duration::from_secs(1),
    };
    let sts = MtaSts::new(dns, settings, dir.path()).unwrap();
    let cached = sts.cached();
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].domain, "sts.test");
    assert_eq!(cached[0].id, "20261128");
    let policy = cached[0].parsed().unwrap();
    assert_eq!(policy.mode.as_str(), "enforce");
    assert!(policy.allows("mx.sts.test"));
}
