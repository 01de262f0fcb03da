//! The `tlsrelay` binary itself: exit codes, messages, `report send [--now]`
//! against a DNS world and an HTTPS report receiver, and `queue` on an envelope
//! file in the spool's long-standing format.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::free_port;
use support::pki::TestCa;
use tlsrelay::spool::Spool;

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tlsrelay ARGS` (off the async runtime, which serves DNS and HTTPS meanwhile).
async fn tlsrelay(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One successful session with `domain` at `time`, as the relay records it.
fn outcome_line(domain: &str, time: i64) -> String {
    format!(
        r#"{{"time":{time},"queue_id":"AAAA0001","domain":"{domain}","mx_host":"mx.{domain}","addr":"192.0.2.25:25","policy":"no-policy-found","auth":"verify","tls_ok":true,"result":null,"report_mail":false,"detail":"delivered"}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn report_send_waits_for_the_randomized_delay_unless_now() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cli CA");
    let root = dir.path().join("ca.pem");
    ca.write_root_pem(&root);
    let port = free_port();
    let receiver = HttpsServer::start(
        ip("127.0.9.30"),
        port,
        ca.leaf(&["reports.rpt.test"]),
        Response {
            status: "200 OK".into(),
            headers: vec![],
            body: vec![],
            content_length: true,
        },
    )
    .await;
    let world = DnsWorld::builder()
        .zone("rpt.test", ZoneKind::Unsigned)
        .txt(
            "_smtp._tls.rpt.test",
            &[&format!(
                "v=TLSRPTv1; rua=https://reports.rpt.test:{port}/tlsrpt"
            )],
        )
        .a("reports.rpt.test", "127.0.9.30")
        .start()
        .await;
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(spool.join("outcomes")).unwrap();
    let now = chrono::Utc::now();
    let today = now.date_naive();
    let yesterday = today.pred_opt().unwrap();
    for (day, time) in [
        (today, now.timestamp()),
        (yesterday, now.timestamp() - 86400),
    ] {
        std::fs::write(
            spool.join(format!("outcomes/{day}.jsonl")),
            outcome_line("rpt.test", time) + "\n",
        )
        .unwrap();
    }
    // A one-second max_delay makes the per-domain delay zero: a finished day's
    // report is due 15 minutes after midnight, an unfinished day's never.
    let config = dir.path().join("tlsrelay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"relay.test\"\n[spool]\ndir = \"{}\"\n[dns]\nnameservers = [\"{}\"]\ntrust_anchor_file = \"{}\"\ntimeout = \"2s\"\nattempts = 1\n[tls_rpt]\nmax_delay = \"1s\"\nextra_roots = [\"{}\"]\n",
            spool.display(),
            world.addr(),
            world.anchor_path().display(),
            root.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let accepted = |day| {
        format!("{day} rpt.test: https://reports.rpt.test:{port}/tlsrpt: POST accepted (200 OK)\n")
    };

    // Today has not ended: with or without --now, a preview that sends and marks nothing.
    for args in [&["--day", "today"][..], &["--now", "--day", "today"][..]] {
        let r = tlsrelay(&[&["-c", cfg, "report", "send"][..], args].concat()).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout
                .starts_with(&format!("{today} has not ended (UTC): a preview")),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains(&format!(
                "{today} rpt.test: would POST to https://reports.rpt.test:{port}/tlsrpt: 1 successful, 0 failed sessions so far\n"
            )),
            "{}",
            r.stdout
        );
        assert_eq!(receiver.requests().len(), 0);
        assert!(!spool.join(format!("tlsrpt/sent/{today}")).exists());
    }

    // Yesterday's report is due (after 00:15 UTC): sent without --now.
    let minutes_into_day = now.timestamp().rem_euclid(86400) / 60;
    if !(14..=16).contains(&minutes_into_day) {
        let r = tlsrelay(&["-c", cfg, "report", "send"]).await;
        let want = if minutes_into_day > 16 {
            accepted(yesterday)
        } else {
            format!("{yesterday}: no report due\n")
        };
        assert_eq!((r.code, r.stdout), (0, want), "{}", r.stderr);
    }
    let day = yesterday.to_string();
    let before_now = receiver.requests().len();

    // --now sends a finished day's report at once if still unsent, and only once.
    let r = tlsrelay(&["-c", cfg, "report", "send", "--now", "--day", &day]).await;
    let want = match before_now {
        0 => accepted(yesterday),
        _ => format!("{yesterday}: no report due\n"),
    };
    assert_eq!((r.code, r.stdout), (0, want), "{}", r.stderr);
    assert_eq!(receiver.requests().len(), 1);
    assert!(receiver.requests()[0].starts_with("POST /tlsrpt "));
    let r = tlsrelay(&["-c", cfg, "report", "send", "--now", "--day", &day]).await;
    assert_eq!(r.stdout, format!("{yesterday}: no report due\n"));
    assert_eq!(receiver.requests().len(), 1);

    // Under a short host name, reports would come from tlsrpt-noreply@vm: refused.
    let short = dir.path().join("short.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &short,
        text.replace("hostname = \"relay.test\"", "hostname = \"vm\""),
    )
    .unwrap();
    let short = short.to_str().unwrap();
    let r = tlsrelay(&["-c", short, "report", "send", "--now", "--day", &day]).await;
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("server.hostname \"vm\" is not a fully qualified domain name"),
        "{}",
        r.stderr
    );
    let r = tlsrelay(&["config", "check", short]).await;
    assert!(
        r.stderr.contains("warning: TLS reports will not be sent"),
        "{}",
        r.stderr
    );
    assert_eq!(receiver.requests().len(), 1);

    let help = tlsrelay(&["report", "send", "--help"]).await;
    assert!(
        help.stdout
            .contains("without --now, reports that are not due yet are left for later"),
        "{}",
        help.stdout
    );
}

#[tokio::test]
async fn config_check_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&good, "[server]\nhostname = \"relay.test\"\n").unwrap();
    std::fs::write(&bad, "[server]\n\nmax_line_length = 100\n").unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    // (args, exit code, stdout, stderr)
    let cases: [(&[&str], i32, String, String); 4] = [
        (&["config", "check", good], 0, format!("{good}: ok\n"), String::new()),
        (
            &["config", "check", bad],
            2,
            String::new(),
            format!("tlsrelay: {bad}:3: server.max_line_length = 100 is below the 512 octets RFC 5321 requires; use 512 or more\n"),
        ),
        (
            &["config", "check", missing],
            2,
            String::new(),
            format!("tlsrelay: {missing}: cannot read the configuration file: No such file or directory (os error 2)\n"),
        ),
        (
            &["-c", bad, "queue", "list"],
            2,
            String::new(),
            format!("tlsrelay: {bad}:3: server.max_line_length = 100 is below the 512 octets RFC 5321 requires; use 512 or more\n"),
        ),
    ];
    for (args, code, stdout, stderr) in cases {
        let r = tlsrelay(args).await;
        assert_eq!(
            (r.code, r.stdout, r.stderr),
            (code, stdout, stderr),
            "{args:?}"
        );
    }
}

/// Each file a configuration names, missing: `config check` says which key and
/// file and exits 1, and `serve` with the same file refuses to start. A
/// configuration whose files all load is `ok`.
#[tokio::test]
async fn config_check_rejects_each_missing_file_that_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("config check CA");
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    ca.leaf(&["relay.test"]).write_pem(&cert, &key);
    let gone = d.join("gone");
    let gone = gone.display();
    let base = format!(
        "[server]\nhostname = \"relay.test\"\nlisten = [\"127.0.0.1:0\"]\n\
         tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[spool]\ndir = \"{}\"\n",
        cert.display(),
        key.display(),
        d.join("spool").display()
    );
    let ok = d.join("ok.toml");
    std::fs::write(&ok, &base).unwrap();
    let r = tlsrelay(&["config", "check", ok.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let cases = [
        (
            "server.tls_cert_file",
            base.replace(&cert.display().to_string(), &gone.to_string()),
        ),
        (
            "server.tls_cert_file",
            base.replace(&key.display().to_string(), &gone.to_string()),
        ),
        (
            "server.auth_users_file",
            base.replace("[spool]", &format!("auth_users_file = \"{gone}\"\n[spool]")),
        ),
        (
            "dns.trust_anchor_file",
            format!("{base}[dns]\ntrust_anchor_file = \"{gone}\"\n"),
        ),
        (
            "delivery.extra_roots",
            format!("{base}[delivery]\nextra_roots = [\"{gone}\"]\n"),
        ),
        (
            "mta_sts.extra_roots",
            format!("{base}[mta_sts]\nextra_roots = [\"{gone}\"]\n"),
        ),
        (
            "tls_rpt.extra_roots",
            format!("{base}[tls_rpt]\nextra_roots = [\"{gone}\"]\n"),
        ),
        (
            "policies.dir",
            format!("{base}[policies]\ndir = \"{gone}\"\n"),
        ),
        (
            "tls_rpt.dkim_key_file",
            format!("{base}[tls_rpt]\ndkim_key_file = \"{gone}\"\ndkim_selector = \"s\"\n"),
        ),
    ];
    for (i, (key, text)) in cases.iter().enumerate() {
        let path = d.join(format!("case{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let r = tlsrelay(&["config", "check", path]).await;
        assert_eq!(r.code, 1, "{key}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&format!("{path}: error: {key}: ")),
            "{key}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&gone.to_string()),
            "{key} names the file: {}",
            r.stderr
        );
        let serve = tokio::task::spawn_blocking({
            let path = path.to_string();
            move || {
                Command::new(env!("CARGO_BIN_EXE_tlsrelay"))
                    .args(["serve", "-c", &path])
                    // Tests run as root in CI; the refusal itself is tested in tests/service.rs.
                    .env("TLSRELAY_ALLOW_ROOT", "1")
                    .output()
                    .unwrap()
            }
        });
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), serve)
            .await
            .unwrap_or_else(|_| panic!("{key}: serve started with a missing file"))
            .unwrap();
        assert!(!out.status.success(), "{key}: serve exited 0");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&gone.to_string()),
            "{key}: serve names the file: {err}"
        );
    }
}

/// `--print` writes the effective configuration as TOML that loads again.
#[tokio::test]
async fn config_check_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nhostname = \"relay.test\"\n[delivery]\nqueue_lifetime = \"3d\"\n",
    )
    .unwrap();
    let r = tlsrelay(&["config", "check", "--print", path.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("queue_lifetime = \"3d\""), "{}", r.stdout);
    assert!(
        r.stdout.contains("max_line_length = "),
        "defaults are filled in: {}",
        r.stdout
    );
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &r.stdout).unwrap();
    let r2 = tlsrelay(&["config", "check", again.to_str().unwrap()]).await;
    assert_eq!(r2.code, 0, "the printed TOML loads: {}", r2.stderr);
}

/// Puts the fixture envelope (written by the spool before `Notify` existed) in a
/// spool under `dir`, with some fields changed, and returns the config path.
fn spool_with_fixture(dir: &Path, id: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let queue = dir.join("spool/queue");
    std::fs::create_dir_all(&queue).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envelope-v1.env");
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    env["id"] = id.into();
    edit(&mut env);
    std::fs::write(
        queue.join(format!("{id}.env")),
        serde_json::to_vec_pretty(&env).unwrap(),
    )
    .unwrap();
    std::fs::write(
        queue.join(format!("{id}.msg")),
        b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nbody\r\n",
    )
    .unwrap();
    let config = dir.join("tlsrelay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"relay.test\"\n[spool]\ndir = \"{}\"\n",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

#[tokio::test]
async fn queue_show_reads_the_old_envelope_format() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool_with_fixture(dir.path(), "6A1B2C3D0E0F1A2B", |_| {});
    let r = tlsrelay(&["-c", &cfg, "queue", "show", "6A1B2C3D0E0F1A2B"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in [
        "id:          6A1B2C3D0E0F1A2B",
        "received:    2026-01-01T00:00:00+00:00 from 192.0.2.10:50123 (helo mta1.example.org) over TLSv1.3 TLS13_AES_256_GCM_SHA384",
        "size:        1234 bytes, body EightBitMime, smtputf8 true, requiretls true",
        "dsn:         ret HDRS, envid \"QQ314159\"",
        "recipient:   <bob@example.net> Delivered notify=success,delay orcpt=bob@example.net",
        "recipient:   <carol@example.com> Queued",
        "recipient:   <dave@example.com> Failed notify=never",
        "recipient:   <erin@example.com> Queued notify=failure",
    ] {
        assert!(r.stdout.lines().any(|l| l == line), "{line}\n{}", r.stdout);
    }
    let r = tlsrelay(&["-c", &cfg, "queue", "show", "6A1B2C3D0E0F1A2B", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["envelope"]["recipients"][0]["notify"],
        serde_json::json!(["success", "delay"])
    );
    assert_eq!(
        v["envelope"]["recipients"][1]["notify"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn queue_bounce_sends_a_notice_only_where_notify_asks() {
    // The fixture's pending recipients are carol and erin, with the NOTIFY given here.
    /// (sender, carol's NOTIFY, erin's NOTIFY, end of the output, recipients in the DSN)
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a str,
        &'a [&'a str],
    );
    let cases: [Case; 4] = [
        (
            "alice@example.org",
            &[],
            &["failure"],
            "queued to <alice@example.org>\n",
            &["carol@example.com", "erin@example.com"],
        ),
        (
            "alice@example.org",
            &["never"],
            &["failure", "delay"],
            "queued to <alice@example.org>\n",
            &["erin@example.com"],
        ),
        (
            "alice@example.org",
            &["never"],
            &["success"],
            "2 recipient(s) bounced; no DSN (no NOTIFY asks for one)\n",
            &[],
        ),
        (
            "",
            &[],
            &[],
            "2 recipient(s) bounced; no DSN (null sender)\n",
            &[],
        ),
    ];
    for (sender, carol, erin, tail, in_dsn) in cases {
        let dir = tempfile::tempdir().unwrap();
        let id = "6A1B2C3D0E0F1A2B";
        let cfg = spool_with_fixture(dir.path(), id, |env| {
            env["sender"] = sender.into();
            env["recipients"][1]["notify"] = serde_json::json!(carol);
            env["recipients"][3]["notify"] = serde_json::json!(erin);
        });
        let r = tlsrelay(&["-c", &cfg, "queue", "bounce", id]).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout
                .starts_with(&format!("{id}: 2 recipient(s) bounced; ")),
            "{}",
            r.stdout
        );
        assert!(r.stdout.ends_with(tail), "{carol:?} {erin:?}: {}", r.stdout);
        // The fixture was imported from the earlier layout; the DSN is in the log.
        assert!(!dir.path().join("spool/queue").exists());
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        assert!(
            spool.load(id).is_err(),
            "the bounced message left the queue"
        );
        let dsns: Vec<String> = spool
            .list()
            .iter()
            .map(|e| String::from_utf8(spool.read_message(&e.id).unwrap()).unwrap())
            .collect();
        if in_dsn.is_empty() {
            assert!(dsns.is_empty(), "{carol:?} {erin:?}");
            continue;
        }
        assert_eq!(dsns.len(), 1);
        for who in ["carol@example.com", "erin@example.com"] {
            let listed = dsns[0].contains(&format!("Final-Recipient: rfc822; {who}\r\n"));
            assert_eq!(listed, in_dsn.contains(&who), "{who} {carol:?} {erin:?}");
        }
        assert!(dsns[0].contains("Status: 5.0.0\r\n"));
        assert!(dsns[0].contains("returned by the operator of relay.test; last attempt: "));
    }
}
