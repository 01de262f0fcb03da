//! Several tlsrelay nodes sharing state in a real `redis-server`: the MTA-STS
//! cache, one TLS report per domain and day for the fleet, fleet-wide connection
//! limits, and Redis going away and coming back.
//!
//! Without `redis-server` installed these tests say so and pass, unless `CI` is
//! set: then they fail.

mod support;

use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use support::dns_world::{DnsWorld, ZoneKind};
use support::https::{HttpsServer, Response};
use support::mx::{free_port, MxOptions, MxServer};
use support::pki::TrustedCa;
use support::redis::{available, RedisServer};
use support::relay::TestRelay;
use tlsrelay::cluster::Cluster;
use tlsrelay::config::Config;
use tlsrelay::reporting::reporter::Reporter;

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.sts.test\r\nmax_age: 86400\r\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `[delivery]` extras, then `[cluster]` for `node` (fast beats and pushes, short leases).
fn clustered(redis: &RedisServer, node: &str, delivery: &str) -> String {
    format!(
        "{delivery}\n[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nprefix = \"t\"\n\
         heartbeat_interval = \"1s\"\npush_interval = \"1s\"\nslot_ttl = \"5s\"\n\
         report_lease = \"2s\"\ntimeout = \"1s\"\n",
        redis.url()
    )
}

async fn submit_n(relay: &TestRelay, domain: &str, n: usize) {
    for i in 0..n {
        let to = format!("user{i}@{domain}");
        relay
            .submit(
                "sender@org.test",
                &[&to],
                b"Subject: fleet\r\n\r\nhello\r\n",
            )
            .await;
    }
}

/// The fleet handle and a reporter of `relay`, as `tlsrelay report send` on that node.
fn reporter_of(relay: &TestRelay, world: &DnsWorld) -> (Arc<Cluster>, Arc<Reporter>) {
    let config = Arc::new(Config::parse(relay.config_text(), None).unwrap());
    let cluster = Cluster::open(&config).unwrap().expect("[cluster] set");
    let reporter = Reporter::new(config, relay.spool.clone(), world.dns(), None)
        .unwrap()
        .in_cluster(Some(cluster.clone()));
    (cluster, Arc::new(reporter))
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    mail_auth::flate2::read::GzDecoder::new(b)
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// (report-id, successful, failed) of a report's JSON, summed over its policies.
fn counts(json: &str) -> (String, u64, u64) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let sum = |k: &str| {
        v["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["summary"][k].as_u64().unwrap())
            .sum()
    };
    (
        v["report-id"].as_str().unwrap().to_string(),
        sum("total-successful-session-count"),
        sum("total-failure-session-count"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_fetched_by_one_node_is_enforced_by_another_whose_fetch_fails() {
    if !available("a_policy_fetched_by_one_node_is_enforced_by_another_whose_fetch_fails") {
        return;
    }
    let redis = RedisServer::start();
    let s = TrustedCa::new("cluster sts CA");
    let port = free_port();
    let _https = HttpsServer::start(
        ip("127.0.12.30"),
        port,
        s.ca.leaf(&["mta-sts.sts.test"]),
        Response::policy(ENFORCE),
    )
    .await;
    // The preferred MX is outside the policy, with a WebPKI-valid certificate for
    // its own name: without the policy the floor would take it.
    let forged = MxServer::start_on(
        ip("127.0.12.10"),
        port,
        MxOptions::with_cert(s.ca.leaf(&["evil.attacker.test"])),
    )
    .await
    .unwrap();
    let good = MxServer::start_on(
        ip("127.0.12.11"),
        port,
        MxOptions::with_cert(s.ca.leaf(&["mx1.sts.test"])),
    )
    .await
    .unwrap();
    let w = DnsWorld::builder()
        .zone("sts.test", ZoneKind::Unsigned)
        .txt("_mta-sts.sts.test", &["v=STSv1; id=1"])
        .a("mta-sts.sts.test", "127.0.12.30")
        .mx("sts.test", 5, "evil.attacker.test")
        .mx("sts.test", 10, "mx1.sts.test")
        .a("evil.attacker.test", "127.0.12.10")
        .a("mx1.sts.test", "127.0.12.11")
        .start()
        .await;
    let root = s.root.display();
    let fetching = format!(
        "retry_schedule = [\"1h\"]\n[mta_sts]\nhttps_port = {port}\nextra_roots = [\"{root}\"]"
    );
    // Node B's fetch is blocked: nothing listens on its policy port.
    let blocked = format!(
        "retry_schedule = [\"1h\"]\n[mta_sts]\nhttps_port = {}\nfetch_timeout = \"2s\"",
        free_port()
    );
    let a = TestRelay::start(&w, &s.root, port, &clustered(&redis, "a", &fetching)).await;
    submit_n(&a, "sts.test", 1).await;
    assert!(good.wait_for_messages(1, Duration::from_secs(15)).await);

    let b = TestRelay::start(&w, &s.root, port, &clustered(&redis, "b", &blocked)).await;
    submit_n(&b, "sts.test", 1).await;
    assert!(
        good.wait_for_messages(2, Duration::from_secs(15)).await,
        "{:?}",
        b.queue()
    );
    assert_eq!(
        forged.stats().connections,
        0,
        "B refused the MX outside the policy"
    );
    let o = b.outcomes();
    assert!(
        o.iter()
            .any(|o| o.mx_host == "mx1.sts.test" && o.auth.as_deref() == Some("mta-sts")),
        "{o:?}"
    );
    assert!(
        std::fs::read_to_string(b.spool_dir().join("mta-sts/sts.test.json"))
            .unwrap()
            .contains("mode: enforce"),
        "B keeps the fleet's policy in its own cache too"
    );

    // The control: a node alone, its fetch blocked the same way, takes the forged MX.
    let alone = TestRelay::start(&w, &s.root, port, &blocked).await;
    submit_n(&alone, "sts.test", 1).await;
    assert!(
        forged.wait_for_messages(1, Duration::from_secs(15)).await,
        "without the fleet's policy the forged MX gets the mail: the test bites"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_limit_holds_for_the_fleet() {
    if !available("a_connection_limit_holds_for_the_fleet") {
        return;
    }
    let redis = RedisServer::start();
    let s = TrustedCa::new("cluster limit CA");
    let port = free_port();
    let mx = MxServer::start_on(
        ip("127.0.13.10"),
        port,
        MxOptions::with_cert(s.ca.leaf(&["mx.lim.test"])),
    )
    .await
    .unwrap();
    // Each session stays busy for a while, so that the nodes contend.
    mx.set_data_delay(Duration::from_millis(400));
    let w = DnsWorld::builder()
        .zone("lim.test", ZoneKind::Unsigned)
        .mx("lim.test", 10, "mx.lim.test")
        .a("mx.lim.test", "127.0.13.10")
        .start()
        .await;
    let extra =
        "retry_schedule = [\"1s\"]\nmax_connections_per_domain = 4\nconnection_reuse_time = \"0s\"";
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(TestRelay::start(&w, &s.root, port, &clustered(&redis, name, extra)).await);
    }
    for n in &nodes {
        submit_n(n, "lim.test", 8).await;
    }
    assert!(
        mx.wait_for_messages(24, Duration::from_secs(60)).await,
        "{:?}",
        mx.stats()
    );
    let stats = mx.stats();
    // Alone, each node would open 4: up to 12 at once.
    assert!(
        (2..=4).contains(&stats.max_open),
        "never more than 4 at once for the fleet: {stats:?}"
    );

    // `cluster status`: three nodes beating, their queues empty.
    let (cluster, _) = reporter_of(&nodes[0], &w);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = cluster.status().await;
    assert_eq!(st.redis_state, "up");
    let seen: Vec<(String, bool, Option<u64>)> = st
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.alive, n.queue))
        .collect();
    let want = |n: &str| (n.to_string(), true, Some(0));
    assert_eq!(seen, [want("a"), want("b"), want("c")]);
    let text = tlsrelay::cluster::status::render(&st);
    assert!(text.contains("node b up, seen"), "{text}");
}

/// A domain with a failing MX (wrong name) before a good one, reporting by HTTPS.
struct ReportWorld {
    ca: TrustedCa,
    port: u16,
    good: MxServer,
    _bad: MxServer,
    receiver: HttpsServer,
    world: DnsWorld,
}

async fn report_world(net: &str) -> ReportWorld {
    let ca = TrustedCa::new("cluster rpt CA");
    let port = free_port();
    let at = |last: u8| ip(&format!("{net}.{last}"));
    let good = MxServer::start_on(
        at(11),
        port,
        MxOptions::with_cert(ca.ca.leaf(&["mx.rpt.test"])),
    )
    .await
    .unwrap();
    let bad = MxServer::start_on(
        at(10),
        port,
        MxOptions::with_cert(ca.ca.leaf(&["wrong.name.test"])),
    )
    .await
    .unwrap();
    let receiver = HttpsServer::start(
        at(30),
        port,
        ca.ca.leaf(&["reports.rpt.test"]),
        Response::policy(""),
    )
    .await;
    let world = DnsWorld::builder()
        .zone("rpt.test", ZoneKind::Unsigned)
        .mx("rpt.test", 5, "mx0.rpt.test")
        .mx("rpt.test", 10, "mx.rpt.test")
        .a("mx0.rpt.test", &format!("{net}.10"))
        .a("mx.rpt.test", &format!("{net}.11"))
        .txt(
            "_smtp._tls.rpt.test",
            &[&format!(
                "v=TLSRPTv1; rua=https://reports.rpt.test:{port}/tlsrpt"
            )],
        )
        .a("reports.rpt.test", &format!("{net}.30"))
        .start()
        .await;
    ReportWorld {
        ca,
        port,
        good,
        _bad: bad,
        receiver,
        world,
    }
}

impl ReportWorld {
    fn extra(&self) -> String {
        format!(
            "retry_schedule = [\"1h\"]\nconnection_reuse_time = \"0s\"\n[tls_rpt]\nextra_roots = [\"{}\"]",
            self.ca.root.display()
        )
    }

    async fn node(&self, redis: &RedisServer, name: &str) -> TestRelay {
        let text = clustered(redis, name, &self.extra());
        TestRelay::start(&self.world, &self.ca.root, self.port, &text).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_report_per_domain_for_the_fleet_even_when_the_sender_dies_mid_send() {
    if !available("one_report_per_domain_for_the_fleet_even_when_the_sender_dies_mid_send") {
        return;
    }
    let redis = RedisServer::start();
    let rw = report_world("127.0.14").await;
    let mut nodes = Vec::new();
    for (name, n) in [("a", 1), ("b", 2), ("c", 3)] {
        let node = rw.node(&redis, name).await;
        submit_n(&node, "rpt.test", n).await;
        nodes.push(node);
    }
    assert!(rw.good.wait_for_messages(6, Duration::from_secs(30)).await);
    // Every node pushes its counts within a second.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let today = chrono::Utc::now().date_naive();
    let (_, a) = reporter_of(&nodes[0], &rw.world);
    let (_, b) = reporter_of(&nodes[1], &rw.world);
    let (_, c) = reporter_of(&nodes[2], &rw.world);
    // Node A sends, and dies while the receiver holds its POST.
    rw.receiver.set_stall(Duration::from_secs(60));
    let sending = tokio::spawn(async move { a.send_day(today).await });
    for _ in 0..200 {
        if !rw.receiver.full_requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rw.receiver.full_requests().len(), 1, "A's POST arrived");
    sending.abort();
    rw.receiver.set_stall(Duration::ZERO);
    // While A's lease lasts nobody else sends.
    let early = b.send_day(today).await;
    assert!(
        early[0].results[0].contains("another node is sending"),
        "{early:?}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resent = b.send_day(today).await;
    assert!(resent[0].done, "{resent:?}");
    let after = c.send_day(today).await;
    assert!(
        after[0].results[0].contains("done by the fleet"),
        "{after:?}"
    );

    let posts = rw.receiver.full_requests();
    assert_eq!(
        posts.len(),
        2,
        "A's cut-off POST and B's resend, nothing more"
    );
    let (first, second) = (gunzip(&posts[0].body), gunzip(&posts[1].body));
    assert_eq!(first, second, "the very same report, sent again");
    let (id, ok, failed) = counts(&first);
    assert!(
        id.starts_with(&format!("{}.rpt.test.", today.format("%Y%m%d"))),
        "{id}"
    );
    // Six messages over three nodes, each a failed session (wrong name) then a good one.
    assert_eq!((ok, failed), (6, 6), "{first}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopped_and_started_loses_no_mail_and_no_count() {
    if !available("redis_stopped_and_started_loses_no_mail_and_no_count") {
        return;
    }
    let mut redis = RedisServer::start();
    let rw = report_world("127.0.15").await;
    let a = rw.node(&redis, "a").await;
    let b = rw.node(&redis, "b").await;
    submit_n(&a, "rpt.test", 2).await;
    submit_n(&b, "rpt.test", 2).await;
    assert!(rw.good.wait_for_messages(4, Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cluster, reporter) = reporter_of(&a, &rw.world);
    let today = chrono::Utc::now().date_naive();
    assert!(cluster
        .fleet_counts(
            today,
            &tlsrelay::model::domain::Domain::parse("rpt.test").unwrap()
        )
        .await
        .unwrap()
        .is_some());

    // Redis goes away (with all its data): mail is accepted and delivered on.
    redis.stop();
    submit_n(&a, "rpt.test", 3).await;
    submit_n(&b, "rpt.test", 3).await;
    assert!(
        rw.good.wait_for_messages(10, Duration::from_secs(30)).await,
        "{:?} {:?}",
        a.queue(),
        b.queue()
    );
    assert!(cluster.status().await.redis_state.starts_with("down"));
    for node in [&a, &b] {
        assert!(
            node.wait_queue(Duration::from_secs(10), |q| q.is_empty())
                .await
        );
    }

    // Back, empty: the nodes push their whole tallies again, nothing twice.
    redis.start_again();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = reporter.send_day(today).await;
    assert!(sent.iter().all(|s| s.done), "{sent:?}");
    let posts = rw.receiver.full_requests();
    assert_eq!(posts.len(), 1);
    let (_, ok, failed) = counts(&gunzip(&posts[0].body));
    assert_eq!((ok, failed), (10, 10));
}

/// One session of yesterday with rpt.test, as delivery records it.
fn outcome(day: chrono::NaiveDate, tls_ok: bool) -> tlsrelay::reporting::outcome::Outcome {
    use tlsrelay::reporting::outcome::{Outcome, PolicyType, ResultType};
    Outcome {
        time: day.and_hms_opt(12, 0, 0).unwrap().and_utc().timestamp(),
        queue_id: "q".into(),
        domain: "rpt.test".into(),
        mx_host: "mx.rpt.test".into(),
        addr: Some("127.0.16.11".into()),
        policy: PolicyType::NoPolicyFound,
        auth: tls_ok.then(|| "verify".into()),
        tls_ok,
        result: (!tls_ok).then_some(ResultType::CertificateHostMismatch),
        report_mail: false,
        detail: String::new(),
        sending_ip: Some("127.0.0.1".into()),
        policy_strings: vec![],
        mx_patterns: vec![],
        route: None,
    }
}

/// A child node killed when the test ends, also when it fails.
struct Node(Option<support::child::Relay>);

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.kill();
        }
    }
}

/// The real binary: three `tlsrelay serve` nodes; `report send --now` reaches node A
/// through its control socket, and node A is SIGKILLed while its POST is held.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_sending_node_mid_send_still_gives_one_report() {
    if !available("sigkill_of_the_sending_node_mid_send_still_gives_one_report") {
        return;
    }
    let redis = RedisServer::start();
    let rw = report_world("127.0.16").await;
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let mut nodes = Vec::new();
    for (name, sessions) in [("a", 2), ("b", 3), ("c", 4)] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let text = support::relay::config_text(
            dir.path(),
            &rw.world,
            &rw.ca.root,
            rw.port,
            // No automatic sending: the test decides which node sends.
            &clustered(&redis, name, &format!("{}\nenabled = false", rw.extra())),
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        let path = dir.path().join("tlsrelay.toml");
        std::fs::write(&path, text).unwrap();
        let relay = support::child::start_relay(&path, port).await;
        // Written after start-up, so that no node's reporter sees them on its first round.
        let log =
            tlsrelay::reporting::outcome::OutcomeLog::open(&dir.path().join("spool/outcomes"))
                .unwrap();
        for _ in 0..sessions {
            log.append(&outcome(yesterday, true)).unwrap();
            log.append(&outcome(yesterday, false)).unwrap();
        }
        nodes.push((dir, path, Node(Some(relay))));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    rw.receiver.set_stall(Duration::from_secs(60));
    let day = yesterday.to_string();
    let a_path = nodes[0].1.clone();
    let d = day.clone();
    let cli = std::thread::spawn(move || {
        support::child::run_cli(&a_path, &["report", "send", "--now", "--day", &d])
    });
    for _ in 0..300 {
        if !rw.receiver.full_requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rw.receiver.full_requests().len(),
        1,
        "node A's POST arrived"
    );
    nodes[0].2 .0.take().unwrap().kill();
    let _ = cli.join();
    rw.receiver.set_stall(Duration::ZERO);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let send = |i: usize| {
        support::child::run_cli(
            &nodes[i].1,
            &["report", "--json", "send", "--now", "--day", &day],
        )
    };
    let (code, out) = send(1);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"done\": true"), "{out}");
    let (code, out) = send(2);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("done by the fleet"), "{out}");

    let posts = rw.receiver.full_requests();
    assert_eq!(
        posts.len(),
        2,
        "A's cut-off POST and B's resend, nothing more"
    );
    let (first, second) = (gunzip(&posts[0].body), gunzip(&posts[1].body));
    assert_eq!(first, second, "the very same report, sent again");
    let (id, ok, failed) = counts(&first);
    assert!(
        id.starts_with(&format!("{}.rpt.test.", yesterday.format("%Y%m%d"))),
        "{id}"
    );
    assert_eq!((ok, failed), (9, 9), "{first}");
}

/// `rediss://`: the node reaches a TLS-only Redis that its `tls_ca_file` vouches
/// for; without that root the same server is refused (down, not trusted).
#[tokio::test(flavor = "multi_thread")]
async fn rediss_with_the_configured_root() {
    if !available("rediss_with_the_configured_root") {
        return;
    }
    let ca = TrustedCa::new("cluster redis CA");
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = (dir.path().join("redis.pem"), dir.path().join("redis.key"));
    ca.ca.leaf(&["127.0.0.1"]).write_pem(&chain, &key);
    let redis = RedisServer::start_tls(&chain, &key);
    let text = |ca_line: &str| {
        format!(
            "[cluster]\nredis = \"rediss://127.0.0.1:{}/0\"\nnode = \"tls1\"\n{ca_line}",
            redis.port
        )
    };
    let trusted = text(&format!("tls_ca_file = \"{}\"\n", ca.root.display()));
    let config = Config::parse(&trusted, None).unwrap();
    let cluster = Cluster::open(&config).unwrap().unwrap();
    let spool = tlsrelay::spool::Spool::open(&dir.path().join("spool")).unwrap();
    cluster.heartbeat(&spool).await;
    let st = cluster.status().await;
    assert_eq!(st.redis_state, "up", "{st:?}");
    assert_eq!(st.nodes.len(), 1, "{st:?}");
    assert!(st.nodes[0].alive && st.nodes[0].node == "tls1", "{st:?}");

    let untrusted = Cluster::open(&Config::parse(&text(""), None).unwrap())
        .unwrap()
        .unwrap();
    let st = untrusted.status().await;
    assert!(st.redis_state.starts_with("down"), "{st:?}");
}
