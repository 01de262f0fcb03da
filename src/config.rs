//! The relay's configuration: one TOML file, every key optional, every default safe.
//!
//! Unknown keys and bad values are errors that name the file, the line and what
//! would be valid; `tlsrelay config check FILE` prints them without starting.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod files;
mod shaping;
mod warnings;

pub use files::FileProblem;
pub use shaping::{Rate, RateError, ShapingRule};
pub use warnings::ConfigWarning;

/// The whole configuration, as read from the TOML file (or the built-in defaults).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The inbound SMTP server that the organization's MTAs relay through.
    pub server: ServerConfig,
    /// Where accepted messages are kept until they are delivered or bounced.
    pub spool: SpoolConfig,
    /// Logging.
    pub log: LogConfig,
    /// Outbound delivery to the recipient domains' MX hosts.
    pub delivery: DeliveryConfig,
    /// DNS resolution and DNSSEC validation.
    pub dns: DnsConfig,
    /// MTA-STS (RFC 8461).
    pub mta_sts: MtaStsConfig,
    /// Local per-domain policies.
    pub policies: PoliciesConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// SMTP TLS Reporting (RFC 8460).
    pub tls_rpt: TlsRptConfig,
    /// Early warnings: a periodic probe of the most frequent destination domains.
    pub warnings: WarningsConfig,
    /// Delivery receipts (hash-chained, one per recipient delivered).
    pub receipts: ReceiptsConfig,
    /// Several nodes sharing MTA-STS policies, TLS reports and limits in Redis; unset: one node.
    pub cluster: Option<ClusterConfig>,
}

/// The `[cluster]` section: this node's place in a fleet that shares state in Redis.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Redis (or Valkey) server: `redis://host:port/db`, or `rediss://` for TLS.
    pub redis: String,
    /// PEM root(s) to trust for `rediss://` instead of the system's; unset: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// This node's name in the fleet; default: the machine's host name.
    pub node: String,
    /// Prefix of every key, so that several fleets can share one Redis.
    pub prefix: String,
    /// Longest wait for one Redis command; past it the node goes on alone.
    pub timeout: HumanDuration,
    /// How often this node writes its heartbeat (queue size, oldest message).
    pub heartbeat_interval: HumanDuration,
    /// How often this node pushes its TLS-RPT counts of the open days.
    pub push_interval: HumanDuration,
    /// How long a connection slot lives unless renewed (a dead node's slots come back after it).
    pub slot_ttl: HumanDuration,
    /// How long the node sending a fleet report holds the sending lease.
    pub report_lease: HumanDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: String::new(),
            tls_ca_file: None,
            node: default_hostname(),
            prefix: "tlsrelay".into(),
            timeout: HumanDuration(Duration::from_secs(2)),
            heartbeat_interval: HumanDuration(Duration::from_secs(5)),
            push_interval: HumanDuration(Duration::from_secs(60)),
            slot_ttl: HumanDuration(Duration::from_secs(60)),
            report_lease: HumanDuration(Duration::from_secs(600)),
        }
    }
}

impl ClusterConfig {
    /// The `[cluster]` rules: a Redis URL, a node name, working intervals.
    fn check(&self) -> Result<(), Violation> {
        let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| self.redis.starts_with(s));
        if !scheme_ok {
            return Err(violation(
                "redis",
                "cluster.redis must be a Redis URL, e.g. \"redis://10.0.0.5:6379/0\" or \"rediss://redis.example.org:6380\"",
            ));
        }
        if self.tls_ca_file.is_some() && !self.redis.starts_with("rediss://") {
            return Err(violation(
                "tls_ca_file",
                "cluster.tls_ca_file is for TLS: write cluster.redis as \"rediss://host:port\"",
            ));
        }
        let node_ok = !self.node.is_empty()
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !node_ok {
            return Err(violation(
                "node",
                "cluster.node must be a name of letters, digits, '-', '.', '_', unique in the fleet, e.g. \"relay1\"",
            ));
        }
        for (key, d) in [
            ("timeout", &self.timeout),
            ("heartbeat_interval", &self.heartbeat_interval),
            ("push_interval", &self.push_interval),
            ("slot_ttl", &self.slot_ttl),
            ("report_lease", &self.report_lease),
        ] {
            if d.0.is_zero() {
                return Err(violation(
                    key,
                    "cluster durations must be longer than 0s, e.g. \"5s\"",
                ));
            }
        }
        Ok(())
    }
}

/// The `[warnings]` section: early warnings about the busiest destinations.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarningsConfig {
    /// Probe the most frequent destination domains periodically (needs delivery on).
    pub enabled: bool,
    /// How many of the most frequent destination domains (by messages of the last 7 days) are probed.
    pub top_domains: usize,
    /// How often they are probed; the first probe runs a minute after start (or after
    /// `interval`, when shorter) unless the last one, kept in the spool, is more recent.
    pub interval: HumanDuration,
    /// Warn when an MX host's certificate expires within this many days.
    pub cert_expiry_days: u32,
}

impl Default for WarningsConfig {
    fn default() -> Self {
        WarningsConfig {
            enabled: true,
            top_domains: 50,
            interval: HumanDuration(Duration::from_secs(86400)),
            cert_expiry_days: 14,
        }
    }
}

impl WarningsConfig {
    /// The `[warnings]` rules: something to probe, now and then.
    fn check(&self) -> Result<(), Violation> {
        if self.top_domains == 0 {
            return Err(violation(
                "top_domains",
                "warnings.top_domains must be at least 1 (or set warnings.enabled = false)",
            ));
        }
        if self.interval.0.is_zero() {
            return Err(violation(
                "interval",
                "warnings.interval must be longer than 0s, e.g. \"1d\"",
            ));
        }
        Ok(())
    }
}

/// The `[receipts]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptsConfig {
    /// Write a receipt for every recipient delivered (`<spool>/receipts/`).
    pub enabled: bool,
    /// How long receipt files are kept.
    pub retention: HumanDuration,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        ReceiptsConfig {
            enabled: true,
            retention: HumanDuration(Duration::from_secs(400 * 86400)),
        }
    }
}

/// The `[tls_rpt]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsRptConfig {
    /// Send daily TLS reports to receiving domains that ask for them.
    pub enabled: bool,
    /// `organization-name` in the reports.
    pub organization_name: String,
    /// `contact-info`; default `postmaster@<server.hostname>`.
    pub contact_info: Option<String>,
    /// The submitter (`TLS-Report-Submitter`); default `server.hostname`.
    pub submitter: Option<String>,
    /// Sender of report mail; default `tlsrpt-noreply@<server.hostname>`.
    pub from: Option<String>,
    /// Reports are sent at a per-domain random time within this long after the UTC day ends.
    pub max_delay: HumanDuration,
    /// Extra trusted roots (PEM) for https report receivers (labs and tests).
    pub extra_roots: Vec<PathBuf>,
    /// PEM private key (RSA or Ed25519) to DKIM-sign report mail; unset: unsigned.
    pub dkim_key_file: Option<PathBuf>,
    /// DKIM selector (`s=`); required with `dkim_key_file`.
    pub dkim_selector: Option<String>,
    /// DKIM signing domain (`d=`); default: the domain of `from`.
    pub dkim_domain: Option<String>,
    /// How long outcome records and sent-report markers are kept.
    pub retention: HumanDuration,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig {
            enabled: true,
            organization_name: "tlsrelay".into(),
            contact_info: None,
            submitter: None,
            from: None,
            max_delay: HumanDuration(Duration::from_secs(4 * 3600)),
            extra_roots: vec![],
            dkim_key_file: None,
            retention: HumanDuration(Duration::from_secs(30 * 86400)),
            dkim_selector: None,
            dkim_domain: None,
        }
    }
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`/metrics`); unset means no endpoint.
    pub listen: Option<SocketAddr>,
    /// Also serve the posture report (`/posture`, HTML) on that endpoint.
    pub posture: bool,
}

/// The `[mta_sts]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaStsConfig {
    /// Look up and enforce MTA-STS policies.
    pub enabled: bool,
    /// Port of `mta-sts.<domain>` (443; other values for labs and tests).
    pub https_port: u16,
    /// Extra trusted roots (PEM files) for policy hosts, added to Mozilla's.
    pub extra_roots: Vec<PathBuf>,
    /// Time allowed for one policy fetch.
    pub fetch_timeout: HumanDuration,
    /// How often cached policies close to expiry are refreshed.
    pub refresh_interval: HumanDuration,
    /// Most policy refreshes at once.
    pub refresh_parallel: usize,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            enabled: true,
            https_port: 443,
            extra_roots: vec![],
            fetch_timeout: HumanDuration(Duration::from_secs(30)),
            refresh_interval: HumanDuration(Duration::from_secs(3600)),
            refresh_parallel: 4,
        }
    }
}

/// The `[policies]` section.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Directory of local policy files (`*.toml`); unset means none. Reloaded on SIGHUP.
    pub dir: Option<PathBuf>,
}

/// The `[server]` section: listener, who may relay, TLS and limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// The name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// Client networks allowed to relay without authentication.
    pub relay_networks: Vec<Network>,
    /// PEM certificate chain for inbound STARTTLS; STARTTLS is offered only when set.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for inbound STARTTLS.
    pub tls_key_file: Option<PathBuf>,
    /// Users file (`name:$argon2id$...` per line) enabling AUTH PLAIN/LOGIN after STARTTLS.
    pub auth_users_file: Option<PathBuf>,
    /// Largest message accepted, in bytes (advertised with SIZE).
    pub max_message_size: u64,
    /// Most recipients accepted in one transaction.
    pub max_recipients: usize,
    /// Longest command line accepted, in bytes including CRLF.
    pub max_line_length: usize,
    /// How long to wait for the next command.
    pub command_timeout: HumanDuration,
    /// How long to wait for the next piece of a message during DATA or BDAT.
    pub data_timeout: HumanDuration,
    /// Total time allowed to receive one command line, however the bytes trickle in.
    pub command_deadline: HumanDuration,
    /// Total time allowed to receive one message (DATA, or all BDAT chunks of a transaction).
    pub data_deadline: HumanDuration,
    /// Most simultaneous sessions.
    pub max_sessions: usize,
    /// Sessions beyond `max_sessions` that only clients in `relay_networks` may use.
    pub reserved_sessions: usize,
    /// Most simultaneous sessions from one client address.
    pub max_sessions_per_client: usize,
    /// Errors a client may make before the session is closed.
    pub max_errors: u32,
    /// How long sessions in flight may take to finish after SIGTERM.
    pub shutdown_grace: HumanDuration,
    /// Password checks run at once; unset means the number of CPU cores.
    pub auth_parallel_checks: Option<usize>,
    /// Password checks that may wait for a free slot; beyond, AUTH gets 454 4.7.0.
    pub auth_queue_limit: usize,
    /// Delay before a failed AUTH is answered, times the recent failures of the address or user.
    pub auth_failure_delay: HumanDuration,
    /// Failed AUTHs from one client address before that address is locked out.
    pub auth_max_failures_per_client: u32,
    /// Failed AUTHs for one user before that user is locked out.
    pub auth_max_failures_per_user: u32,
    /// How long a lockout lasts, and how long a failure is remembered.
    pub auth_lockout: HumanDuration,
    /// An authenticated client may use only envelope senders its user owns: the
    /// user name itself, or the addresses and `@domain`s listed after its hash in
    /// `auth_users_file`; others get `553 5.7.1`. Clients relaying by
    /// `relay_networks` without AUTH are not affected.
    pub sender_login_match: bool,
    /// Started as root, `serve` binds its listeners and then runs as this user;
    /// unset, it refuses to run as root.
    pub user: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 10025))],
            hostname: default_hostname(),
            relay_networks: vec![
                Network("127.0.0.0/8".parse().unwrap()),
                Network("::1/128".parse().unwrap()),
            ],
            tls_cert_file: None,
            tls_key_file: None,
            auth_users_file: None,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_line_length: 4096,
            command_timeout: HumanDuration(Duration::from_secs(300)),
            data_timeout: HumanDuration(Duration::from_secs(180)),
            command_deadline: HumanDuration(Duration::from_secs(300)),
            data_deadline: HumanDuration(Duration::from_secs(600)),
            max_sessions: 500,
            reserved_sessions: 50,
            max_sessions_per_client: 100,
            max_errors: 20,
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            auth_parallel_checks: None,
            auth_queue_limit: 32,
            auth_failure_delay: HumanDuration(Duration::from_secs(1)),
            auth_max_failures_per_client: 5,
            auth_max_failures_per_user: 20,
            auth_lockout: HumanDuration(Duration::from_secs(900)),
            sender_login_match: false,
            user: None,
        }
    }
}

impl ServerConfig {
    /// Whether `ip` is in `relay_networks` (may relay without AUTH, may use reserved sessions).
    pub fn is_relay_client(&self, ip: IpAddr) -> bool {
        self.relay_networks.iter().any(|n| n.contains(ip))
    }

    /// Password checks run at once: `auth_parallel_checks`, or the number of CPU cores.
    pub fn auth_parallel_checks(&self) -> usize {
        self.auth_parallel_checks.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The `[server]` rules: TLS and AUTH go together, limits are usable.
    fn check(&self) -> Result<(), Violation> {
        if self.listen.is_empty() {
            return Err(violation(
                "listen",
                "server.listen is empty; give at least one address, e.g. [\"127.0.0.1:10025\"]",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(violation(
                "tls_cert_file",
                "server.tls_cert_file and server.tls_key_file go together; set both or neither",
            ));
        }
        if self.auth_users_file.is_some() && self.tls_cert_file.is_none() {
            return Err(violation(
                "auth_users_file",
                "server.auth_users_file needs STARTTLS (AUTH is only offered after STARTTLS); set server.tls_cert_file and server.tls_key_file",
            ));
        }
        self.check_limits()?;
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(violation(
                "hostname",
                "server.hostname must be a host name without spaces, e.g. \"relay.example.com\"",
            ));
        }
        self.check_user()
    }

    /// `user` must name an account that is not root (uid 0 under another name is caught at start).
    fn check_user(&self) -> Result<(), Violation> {
        match self.user.as_deref() {
            Some("root") => Err(violation(
                "user",
                "server.user = \"root\" would keep every privilege; name an unprivileged account such as \"tlsrelay\"",
            )),
            Some(u) if u.is_empty() || u.contains(|c: char| c.is_whitespace() || c == ':' || c == '\0') => Err(violation(
                "user",
                "server.user must be a user name from /etc/passwd, e.g. \"tlsrelay\"",
            )),
            _ => Ok(()),
        }
    }

    /// Line length, counts and sizes that would make the server unusable.
    fn check_limits(&self) -> Result<(), Violation> {
        if self.max_line_length < 512 {
            return Err(violation(
                "max_line_length",
                format!("server.max_line_length = {} is below the 512 octets RFC 5321 requires; use 512 or more", self.max_line_length),
            ));
        }
        for (key, v) in [
            ("max_recipients", self.max_recipients),
            ("max_sessions", self.max_sessions),
            ("max_sessions_per_client", self.max_sessions_per_client),
            (
                "auth_parallel_checks",
                self.auth_parallel_checks.unwrap_or(1),
            ),
            (
                "auth_max_failures_per_client",
                self.auth_max_failures_per_client as usize,
            ),
            (
                "auth_max_failures_per_user",
                self.auth_max_failures_per_user as usize,
            ),
        ] {
            if v == 0 {
                return Err(violation(key, format!("server.{key} must be at least 1")));
            }
        }
        for (key, d) in [
            ("command_deadline", self.command_deadline),
            ("data_deadline", self.data_deadline),
        ] {
            if d.get().is_zero() {
                return Err(violation(
                    key,
                    format!("server.{key} must be longer than 0s, e.g. \"5m\""),
                ));
            }
        }
        if self.max_message_size == 0 {
            return Err(violation(
                "max_message_size",
                "server.max_message_size must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The `[spool]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool directory; created if missing. Relative paths are relative to the working directory.
    pub dir: PathBuf,
    /// Bytes that must stay free on the spool's file system: below this (plus
    /// the size a client declares), MAIL gets 452 4.3.1 while delivery goes on
    /// (like Postfix's `queue_minfree`).
    pub min_free: u64,
    /// Bytes after which a spool segment is closed and the next begun; space
    /// comes back a whole segment at a time.
    pub segment_size: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("spool"),
            min_free: 100 * 1024 * 1024,
            segment_size: 64 * 1024 * 1024,
        }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter);
    /// the `RUST_LOG` environment variable overrides it.
    pub level: String,
    /// How each line is written.
    pub format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// logfmt: `time=… level=info target=… msg="…" key=value …`.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The `[delivery]` section: how tlsrelay reaches receiving MX hosts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Turn outbound delivery on or off (off: messages stay queued).
    pub enabled: bool,
    /// TCP port of the MX hosts (25 in production; other values for labs and tests).
    pub port: u16,
    /// Name sent in EHLO; defaults to `server.hostname`.
    pub helo_name: Option<String>,
    /// The authentication floor when no DANE, MTA-STS or local policy applies:
    /// `verify` (WebPKI-valid certificate for the MX name) or `encrypt` (TLS, certificate not checked).
    pub floor: Floor,
    /// PEM files with extra trusted root certificates, added to Mozilla's roots.
    pub extra_roots: Vec<PathBuf>,
    /// Most MX hosts tried in one delivery attempt.
    pub max_hosts_per_attempt: usize,
    /// TCP connect timeout.
    pub connect_timeout: HumanDuration,
    /// Timeout for each SMTP reply (greeting, EHLO, STARTTLS, MAIL, RCPT).
    pub command_timeout: HumanDuration,
    /// Timeout for the reply after the message data.
    pub data_timeout: HumanDuration,
    /// Delays between delivery attempts; the last one repeats.
    pub retry_schedule: Vec<HumanDuration>,
    /// How long a message may stay queued before it is bounced.
    pub queue_lifetime: HumanDuration,
    /// Send a delay notice once a message has waited this long (`0s` turns notices off).
    pub delay_notice_after: HumanDuration,
    /// Most simultaneous outbound connections.
    pub max_connections: usize,
    /// Most simultaneous outbound connections per recipient domain.
    pub max_connections_per_domain: usize,
    /// How long an idle connection stays open for the next message to the same destination.
    pub connection_reuse_time: HumanDuration,
    /// How often the queue gauges are refreshed and idle connections closed (the
    /// scheduler itself wakes when a message is due, from a timer index).
    pub queue_scan_interval: HumanDuration,
    /// Honour the `TLS-Required: No` header (RFC 8689 §5): such a message is sent
    /// with TLS but without certificate checks. TLS itself stays mandatory.
    pub honor_tls_required_no: bool,
    /// Deliver to loopback, unspecified and link-local addresses (127.0.0.0/8,
    /// ::1, 0.0.0.0, ::, 169.254.0.0/16, fe80::/10). Off in production: an MX
    /// record pointing there would make tlsrelay deliver to this machine. For
    /// labs and tests whose MX hosts listen on 127.0.0.x.
    pub allow_loopback_destinations: bool,
    /// Bind outgoing IPv4 connections to this address (e.g. the one SPF lists); unset: the kernel chooses.
    pub source_ipv4: Option<std::net::Ipv4Addr>,
    /// Bind outgoing IPv6 connections to this address; unset: the kernel chooses.
    pub source_ipv6: Option<std::net::Ipv6Addr>,
    /// Address families to connect over: `any`, `ipv4`, `ipv6`, `prefer-ipv6`, `prefer-ipv4`.
    pub address_family: crate::model::egress::AddressFamily,
    /// Most simultaneous connections to one destination site (the MX host set
    /// that many domains may share).
    pub max_connections_per_site: usize,
    /// Messages sent over one connection before it is closed (0: no limit).
    pub max_messages_per_connection: usize,
    /// Limits and rates for particular domains or sites.
    pub shaping: Vec<ShapingRule>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let secs = |s| HumanDuration(Duration::from_secs(s));
        DeliveryConfig {
            enabled: true,
            port: 25,
            helo_name: None,
            floor: Floor::Verify,
            extra_roots: vec![],
            max_hosts_per_attempt: 5,
            connect_timeout: secs(30),
            command_timeout: secs(300),
            data_timeout: secs(600),
            retry_schedule: vec![secs(300), secs(900), secs(1800), secs(3600), secs(4 * 3600)],
            queue_lifetime: secs(5 * 86400),
            delay_notice_after: secs(4 * 3600),
            max_connections: 100,
            max_connections_per_domain: 10,
            connection_reuse_time: secs(5),
            queue_scan_interval: secs(10),
            honor_tls_required_no: false,
            allow_loopback_destinations: false,
            source_ipv4: None,
            source_ipv6: None,
            address_family: crate::model::egress::AddressFamily::Any,
            max_connections_per_site: 10,
            max_messages_per_connection: 100,
            shaping: vec![],
        }
    }
}

impl DeliveryConfig {
    /// The source addresses and families of `[delivery]`, before any route's own.
    pub fn egress(&self) -> crate::model::egress::Egress {
        crate::model::egress::Egress {
            source_ipv4: self.source_ipv4,
            source_ipv6: self.source_ipv6,
            family: self.address_family,
        }
    }

    /// The `[delivery]` rules: a usable retry schedule, limits and lifetime.
    fn check(&self) -> Result<(), Violation> {
        if self.retry_schedule.is_empty() || self.retry_schedule.iter().any(|r| r.0.is_zero()) {
            return Err(violation(
                "retry_schedule",
                "delivery.retry_schedule needs at least one delay above zero, e.g. [\"5m\", \"15m\", \"1h\"]",
            ));
        }
        if self.max_hosts_per_attempt == 0
            || self.max_connections == 0
            || self.max_connections_per_domain == 0
        {
            return Err(violation(
                "max_connections",
                "delivery.max_hosts_per_attempt, max_connections and max_connections_per_domain must be at least 1",
            ));
        }
        if self.max_connections_per_site == 0 {
            return Err(violation(
                "max_connections_per_site",
                "delivery.max_connections_per_site must be at least 1",
            ));
        }
        if let Some((key, message)) = self.shaping.iter().find_map(ShapingRule::problem) {
            return Err(violation(key, message));
        }
        if self.queue_lifetime.0.is_zero() {
            return Err(violation(
                "queue_lifetime",
                "delivery.queue_lifetime must be above zero, e.g. \"5d\"",
            ));
        }
        Ok(())
    }
}

/// The authentication floor for MX hosts that no stronger rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Floor {
    /// The certificate must be WebPKI-valid for the MX host name.
    Verify,
    /// TLS is required but the certificate is not checked.
    Encrypt,
}

/// The `[dns]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers (`ip` or `ip:port`); empty means the system's `/etc/resolv.conf`.
    pub nameservers: Vec<NameServer>,
    /// File with the DNSSEC trust anchor as DNSKEY records; empty means the IANA root key.
    pub trust_anchor_file: Option<PathBuf>,
    /// Timeout of one query.
    pub timeout: HumanDuration,
    /// Tries per query.
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: vec![],
            trust_anchor_file: None,
            timeout: HumanDuration(Duration::from_secs(5)),
            attempts: 2,
        }
    }
}

/// A nameserver address; port 53 when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameServer(pub SocketAddr);

impl<'de> Deserialize<'de> for NameServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(NameServer(sa));
        }
        s.parse::<IpAddr>()
            .map(|ip| NameServer(SocketAddr::new(ip, 53)))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a nameserver address; write an IP address, e.g. \"192.0.2.53\" or \"[2001:db8::53]:53\""
                ))
            })
    }
}

/// A client network in CIDR notation (a bare address means that one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub IpNet);

impl Network {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Network(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Network(IpNet::from(ip)))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a network; write CIDR notation, e.g. \"192.0.2.0/24\" or \"2001:db8::/32\""
                ))
            })
    }
}

/// A duration written for people: `30s`, `5m`, `4h`, `5d`, or `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// A duration that could not be read, with the form that would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a duration; write a number with a unit s, m, h or d, e.g. \"30s\", \"5m\", \"1h30m\"")]
pub struct DurationError(pub String);

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        let bad = || DurationError(s.to_string());
        let mut total = 0u64;
        let mut digits = String::new();
        let mut any = false;
        for ch in s.trim().chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let unit = match ch {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(bad()),
            };
            let n: u64 = digits.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            digits.clear();
            any = true;
        }
        if !digits.is_empty() || !any {
            return Err(bad());
        }
        Ok(HumanDuration(Duration::from_secs(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0 => write!(f, "0s"),
            s if s % 86400 == 0 => write!(f, "{}d", s / 86400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Written back as the text the configuration file takes (`--print`).
macro_rules! serialize_as_text {
    ($t:ty, $text:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                #[allow(clippy::redundant_closure_call)]
                s.collect_str(&($text)(self))
            }
        }
    };
}

serialize_as_text!(NameServer, |n: &NameServer| n.0.to_string());
serialize_as_text!(Network, |n: &Network| n.0.to_string());
serialize_as_text!(HumanDuration, |d: &HumanDuration| d.to_string());

/// A configuration that could not be used, with the file, the line and the fix.
#[derive(Debug)]
pub struct ConfigError {
    /// The file that was read (None for built-in defaults).
    pub file: Option<PathBuf>,
    /// The 1-based line of the offending key, where known.
    pub line: Option<usize>,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{}: {}", p.display(), l, self.message),
            (Some(p), None) => write!(f, "{}: {}", p.display(), self.message),
            (None, _) => write!(f, "configuration: {}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A rule that spans several keys, broken: the key to blame and the fix.
#[derive(Debug)]
struct Violation {
    /// The key whose line the error names.
    key: &'static str,
    /// What is wrong and what would be valid.
    message: String,
}

/// Shorthand for a broken rule.
fn violation(key: &'static str, message: impl Into<String>) -> Violation {
    Violation {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            line: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::parse(&text, Some(path))
    }

    /// Parses and checks configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            ConfigError {
                file: path.map(Path::to_owned),
                line,
                message: e.message().trim().to_string(),
            }
        })?;
        config.check().map_err(|v| ConfigError {
            file: path.map(Path::to_owned),
            line: find_key_line(text, v.key),
            message: v.message,
        })?;
        Ok(config)
    }

    /// Checks rules that span several keys.
    fn check(&self) -> Result<(), Violation> {
        self.server.check()?;
        self.delivery.check()?;
        self.warnings.check()?;
        if let Some(c) = &self.cluster {
            c.check()?;
        }
        if self.tls_rpt.dkim_key_file.is_some() && self.tls_rpt.dkim_selector.is_none() {
            return Err(violation(
                "dkim_key_file",
                "tls_rpt.dkim_key_file needs tls_rpt.dkim_selector (the s= of the DKIM record), e.g. \"tlsrpt2026\"",
            ));
        }
        if self.dns.attempts == 0 {
            return Err(violation("attempts", "dns.attempts must be at least 1"));
        }
        Ok(())
    }

    /// The name tlsrelay uses in EHLO when it delivers.
    pub fn helo_name(&self) -> &str {
        self.delivery
            .helo_name
            .as_deref()
            .unwrap_or(&self.server.hostname)
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The first line on which `key` is assigned, for errors found after parsing.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The machine's host name, or `localhost` when it cannot be read.
fn default_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            if !name.is_empty() {
                return name.to_string();
            }
        }
    }
    "localhost".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("30s", Some(30)),
            ("5m", Some(300)),
            ("1h30m", Some(5400)),
            ("5d", Some(432000)),
            ("0s", Some(0)),
            ("5", None),
            ("m", None),
            ("5x", None),
            ("", None),
            ("-1s", None),
        ];
        for (text, want) in cases {
            let got = text.parse::<HumanDuration>().ok().map(|d| d.0.as_secs());
            assert_eq!(got, want, "{text}");
        }
        assert_eq!(HumanDuration(Duration::from_secs(5400)).to_string(), "90m");
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:10025".parse().unwrap()]);
        assert!(c.server.relay_networks[0].contains("127.1.2.3".parse().unwrap()));
        assert!(!c.server.relay_networks[0].contains("192.0.2.1".parse().unwrap()));
        assert!(c.server.relay_networks[0].contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn errors_name_line_and_fix() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[server]\nlisten = [\"127.0.0.1:25\"]\nbogus = 1\n",
                3,
                "unknown field `bogus`",
            ),
            (
                "[server]\ncommand_timeout = \"5 minutes\"\n",
                2,
                "not a duration",
            ),
            (
                "[server]\nrelay_networks = [\"10.0.0.0/33\"]\n",
                2,
                "CIDR notation",
            ),
            ("[spool]\ndir = 5\n", 2, "invalid type"),
            (
                "[delivery]\nfloor = \"none\"\n",
                2,
                "unknown variant `none`",
            ),
            ("[server]\n\nmax_line_length = 100\n", 3, "512"),
            ("[server]\ntls_cert_file = \"a.pem\"\n", 2, "tls_key_file"),
            ("[nosuch]\n", 1, "unknown field `nosuch`"),
            ("[server]\nuser = \"root\"\n", 2, "unprivileged account"),
            (
                "[server]\n\nuser = \"mail user\"\n",
                3,
                "user name from /etc/passwd",
            ),
            ("[server]\nuser = \"\"\n", 2, "user name from /etc/passwd"),
            ("[warnings]\ntop_domains = 0\n", 2, "warnings.top_domains"),
            ("[warnings]\n\ninterval = \"0s\"\n", 3, "warnings.interval"),
            ("[warnings]\ninterval = \"daily\"\n", 2, "not a duration"),
            ("[cluster]\nredis = \"10.0.0.5\"\n", 2, "cluster.redis"),
            ("[cluster]\n\nredis = \"http://x\"\n", 3, "redis://"),
            (
                "[cluster]\nredis = \"redis://r\"\nnode = \"a b\"\n",
                3,
                "cluster.node",
            ),
            (
                "[cluster]\nredis = \"redis://r\"\ntls_ca_file = \"ca.pem\"\n",
                3,
                "rediss://",
            ),
            (
                "[cluster]\nredis = \"redis://r\"\nslot_ttl = \"0s\"\n",
                3,
                "longer than 0s",
            ),
        ];
        for (text, line, needle) in cases {
            let err = Config::parse(text, Some(Path::new("t.toml"))).unwrap_err();
            assert_eq!(err.line, Some(*line), "{text:?}: {err}");
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("t.toml:{line}: ")),
                "{err}"
            );
        }
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// `deploy/tlsrelay.toml` must parse and state exactly the defaults.
    #[test]
    fn deploy_example_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tlsrelay.toml");
        let mut example = Config::load(&path).unwrap();
        let defaults = Config::default();
        example.server.hostname = defaults.server.hostname.clone();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    /// `deploy/debian/tlsrelay.toml` (installed as /etc/tlsrelay/tlsrelay.toml)
    /// must parse and differ from the defaults only in the service's paths.
    #[test]
    fn packaged_config_differs_only_in_paths() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/debian/tlsrelay.toml");
        let mut packaged = Config::load(&path).unwrap();
        let defaults = Config::default();
        assert_eq!(packaged.spool.dir, Path::new("/var/spool/tlsrelay"));
        packaged.spool.dir = defaults.spool.dir.clone();
        assert_eq!(format!("{packaged:?}"), format!("{defaults:?}"));
    }
}
