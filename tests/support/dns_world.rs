//! A signed DNS world for integration tests.
//!
//! `DnsWorld` runs an authoritative hickory-server on 127.0.0.1 (UDP and TCP,
//! one ephemeral port) that serves a signed test root `.`, the TLD of every
//! declared zone (signed, unless declared otherwise), and the declared zones.
//! Each zone is delegated from its nearest enclosing zone, with a DS record
//! there when the zone is meant to be signed. The root's key is the trust
//! anchor that `world.dns()` validates with.
//!
//! ```ignore
//! let world = DnsWorld::builder()
//!     .zone("example.test", ZoneKind::Signed)
//!     .mx("example.test", 10, "mx1.example.test")
//!     .a("mx1.example.test", "127.0.0.2")
//!     .start()
//!     .await;
//! let dns = world.dns();
//! ```
//!
//! Pitfalls of hickory-server 0.26 handled here: DS queries are answered from
//! the parent zone (the `Router` below picks the zone per query); NSEC, not
//! NSEC3; a signed root instead of a self-anchored child.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_server::proto::dnssec::rdata::{DNSSECRData, DNSKEY, DS, RRSIG};
use hickory_server::proto::dnssec::{DigestType, DnssecSigner, SigningKey, TBS};
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{CNAME, MX, NS, SOA, TLSA, TXT};
pub use hickory_server::proto::rr::RecordType;
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, SerialNumber};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use hickory_server::Server;
use rustls_pki_types::PrivatePkcs8KeyDer;
use tlsrelay::resolve::dns::{Dns, DnsSettings};

/// TTL of every record the builder makes.
const TTL: u32 = 60;
/// How long RRSIGs of good zones are valid.
const SIG_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

/// How a zone is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneKind {
    /// Signed, DS in the parent: answers validate as Secure.
    Signed,
    /// Not signed, no DS in the parent: answers validate as Insecure.
    Unsigned,
    /// Signed with a DS in the parent, but every RRSIG (except the DNSKEY RRset's) is corrupted: Bogus.
    BadSignatures,
    /// Signed with a DS in the parent, but every RRSIG expired 29 days ago: Bogus.
    ExpiredSignatures,
}

impl ZoneKind {
    fn signed(self) -> bool {
        self != ZoneKind::Unsigned
    }
}

/// What the server does with one name/type instead of answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer SERVFAIL.
    ServFail,
    /// Never answer.
    Drop,
}

/// Builder for a [`DnsWorld`]; all names may be given with or without the trailing dot.
#[derive(Default)]
pub struct DnsWorldBuilder {
    zones: Vec<(Name, ZoneKind)>,
    records: Vec<Record>,
    faults: Vec<(LowerName, RecordType, Fault)>,
}

/// A running signed DNS world; the server stops when this is dropped.
pub struct DnsWorld {
    addr: SocketAddr,
    anchor_text: String,
    anchor_path: PathBuf,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    _dir: tempfile::TempDir,
    _server: Server<Router>,
}

/// Parses a name as absolute, panicking with the name on error.
fn abs(name: &str) -> Name {
    let mut n = Name::from_str(name).unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}"));
    n.set_fqdn(true);
    n
}

fn record(name: &str, rdata: RData) -> Record {
    Record::from_rdata(abs(name), TTL, rdata)
}

impl DnsWorld {
    /// Starts describing a world.
    pub fn builder() -> DnsWorldBuilder {
        DnsWorldBuilder::default()
    }

    /// The server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A file holding the root DNSKEY in zone-file syntax.
    pub fn anchor_path(&self) -> &Path {
        &self.anchor_path
    }

    /// The root DNSKEY in zone-file syntax.
    pub fn anchor_text(&self) -> &str {
        &self.anchor_text
    }

    /// Settings for a `Dns` that asks this server with this anchor (1 s timeout, 1 attempt).
    pub fn dns_settings(&self) -> DnsSettings {
        DnsSettings {
            nameservers: vec![self.addr],
            trust_anchor: Some(self.anchor_path.clone()),
            timeout: Duration::from_secs(1),
            attempts: 1,
        }
    }

    /// A validating client for this world.
    pub fn dns(&self) -> Dns {
        Dns::new(&self.dns_settings()).expect("Dns for the test world")
    }

    /// Every query the server received so far, as (name without trailing dot, type).
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.queries.lock().unwrap().clone()
    }
}

/// A forwarding resolver in front of a world that removes every RRSIG from the
/// answers (UDP, 127.0.0.1), as a middlebox or an old forwarder does: DNSSEC
/// cannot validate through it. It stops when dropped.
pub struct StrippingResolver {
    addr: SocketAddr,
    stripped: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl StrippingResolver {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> StrippingResolver {
        let socket = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind udp"),
        );
        let addr = socket.local_addr().expect("udp local addr");
        let stripped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = stripped.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, client)) = socket.recv_from(&mut buf).await {
                let query = buf[..n].to_vec();
                let (socket, count) = (socket.clone(), count.clone());
                tokio::spawn(async move {
                    if let Some(answer) = forward_stripped(&query, upstream, &count).await {
                        let _ = socket.send_to(&answer, client).await;
                    }
                });
            }
        });
        StrippingResolver {
            addr,
            stripped,
            task,
        }
    }

    /// Where it listens (UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many RRSIG records it has removed so far.
    pub fn stripped(&self) -> usize {
        self.stripped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for StrippingResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One query upstream; the answer without its RRSIGs.
async fn forward_stripped(
    query: &[u8],
    upstream: SocketAddr,
    count: &std::sync::atomic::AtomicUsize,
) -> Option<Vec<u8>> {
    let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    up.send_to(query, upstream).await.ok()?;
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(Duration::from_secs(2), up.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let mut msg = hickory_server::proto::op::Message::from_vec(&buf[..n]).ok()?;
    for section in [&mut msg.answers, &mut msg.authorities, &mut msg.additionals] {
        let before = section.len();
        section.retain(|r| r.record_type() != RecordType::RRSIG);
        count.fetch_add(before - section.len(), std::sync::atomic::Ordering::SeqCst);
    }
    msg.to_vec().ok()
}

/// A DNSKEY for a fresh key that is not part of any world, in zone-file syntax (for wrong-anchor tests).
pub fn foreign_anchor_text() -> String {
    let key = ZoneKey::generate();
    key.anchor_text()
}

/// An Ed25519 zone key; kept as PKCS#8 so several signers can be made from it.
struct ZoneKey {
    pkcs8: Vec<u8>,
}

impl ZoneKey {
    fn generate() -> ZoneKey {
        let der = Ed25519SigningKey::generate_pkcs8().expect("generate Ed25519 key");
        ZoneKey {
            pkcs8: der.secret_pkcs8_der().to_vec(),
        }
    }

    fn signing_key(&self) -> Ed25519SigningKey {
        Ed25519SigningKey::from_pkcs8(&PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
            .expect("load Ed25519 key")
    }

    fn dnskey(&self) -> DNSKEY {
        DNSKEY::from_key(&self.signing_key().to_public_key().expect("public key"))
    }

    fn signer(&self, origin: &Name, validity: Duration) -> DnssecSigner {
        DnssecSigner::new(
            self.dnskey(),
            Box::new(self.signing_key()),
            origin.clone(),
            validity,
        )
    }

    fn ds(&self, origin: &Name) -> DS {
        DS::from_key(
            &self.signing_key().to_public_key().expect("public key"),
            origin,
            DigestType::SHA256,
        )
        .expect("DS from key")
    }

    fn anchor_text(&self) -> String {
        let rec = Record::from_rdata(
            Name::root(),
            3600,
            RData::DNSSEC(DNSSECRData::DNSKEY(self.dnskey())),
        );
        format!("{rec}\n")
    }
}

impl DnsWorldBuilder {
    /// Declares a zone, delegated from its nearest enclosing zone (the TLD zone is made if needed).
    pub fn zone(mut self, origin: &str, kind: ZoneKind) -> Self {
        let name = abs(origin);
        assert!(!name.is_root(), "the root zone is always there and signed");
        self.zones.retain(|(n, _)| n != &name);
        self.zones.push((name, kind));
        self
    }

    /// Adds records written in zone-file syntax (one or more lines); relative names are under `origin`.
    pub fn record(mut self, origin: &str, text: &str) -> Self {
        let input = format!("$TTL {TTL}\n{text}\n");
        let (_, sets) = Parser::new(input, None, Some(abs(origin)))
            .parse()
            .unwrap_or_else(|e| panic!("bad zone-file text {text:?}: {e}"));
        for set in sets.into_values() {
            self.records
                .extend(set.records_without_rrsigs().cloned().collect::<Vec<_>>());
        }
        self
    }

    /// Adds one MX record.
    pub fn mx(mut self, domain: &str, preference: u16, host: &str) -> Self {
        self.records
            .push(record(domain, RData::MX(MX::new(preference, abs(host)))));
        self
    }

    /// Adds the RFC 7505 null MX (`MX 0 .`).
    pub fn null_mx(mut self, domain: &str) -> Self {
        self.records
            .push(record(domain, RData::MX(MX::new(0, Name::root()))));
        self
    }

    /// Adds an A record.
    pub fn a(mut self, host: &str, addr: &str) -> Self {
        let ip: Ipv4Addr = addr.parse().expect("IPv4 address");
        self.records.push(record(host, RData::A(ip.into())));
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(mut self, host: &str, addr: &str) -> Self {
        let ip: Ipv6Addr = addr.parse().expect("IPv6 address");
        self.records.push(record(host, RData::AAAA(ip.into())));
        self
    }

    /// Adds an A or AAAA record for `ip`.
    pub fn addr(self, host: &str, ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => self.a(host, &v4.to_string()),
            IpAddr::V6(v6) => self.aaaa(host, &v6.to_string()),
        }
    }

    /// Adds a TLSA record at `_<port>._tcp.<host>`.
    pub fn tlsa(
        mut self,
        port: u16,
        host: &str,
        usage: u8,
        selector: u8,
        matching: u8,
        data: &[u8],
    ) -> Self {
        let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        let rdata = TLSA::new(
            usage.into(),
            selector.into(),
            matching.into(),
            data.to_vec(),
        );
        self.records.push(record(&name, RData::TLSA(rdata)));
        self
    }

    /// Adds a TXT record made of the given character-strings.
    pub fn txt(mut self, name: &str, strings: &[&str]) -> Self {
        let rdata = TXT::new(strings.iter().map(|s| s.to_string()).collect());
        self.records.push(record(name, RData::TXT(rdata)));
        self
    }

    /// Adds a TXT record made of the given binary character-strings.
    pub fn txt_bytes(mut self, name: &str, strings: &[&[u8]]) -> Self {
        let rdata = TXT::from_bytes(strings.to_vec());
        self.records.push(record(name, RData::TXT(rdata)));
        self
    }

    /// Adds a CNAME from `alias` to `target`.
    pub fn cname(mut self, alias: &str, target: &str) -> Self {
        self.records
            .push(record(alias, RData::CNAME(CNAME(abs(target)))));
        self
    }

    /// The server answers SERVFAIL for this name and type.
    pub fn servfail(mut self, name: &str, rtype: RecordType) -> Self {
        self.faults
            .push((LowerName::new(&abs(name)), rtype, Fault::ServFail));
        self
    }

    /// The server never answers this name and type.
    pub fn timeout(mut self, name: &str, rtype: RecordType) -> Self {
        self.faults
            .push((LowerName::new(&abs(name)), rtype, Fault::Drop));
        self
    }

    /// Builds and signs the zones and starts the server.
    pub async fn start(self) -> DnsWorld {
        // The zone tree: root, every declared zone, and their TLDs.
        let mut kinds: BTreeMap<Name, ZoneKind> = BTreeMap::new();
        kinds.insert(Name::root(), ZoneKind::Signed);
        for (name, _) in &self.zones {
            let mut tld = name.clone();
            while tld.num_labels() > 1 {
                tld = tld.base_name();
            }
            kinds.insert(tld, ZoneKind::Signed);
        }
        for (name, kind) in &self.zones {
            kinds.insert(name.clone(), *kind);
        }
        let keys: BTreeMap<Name, ZoneKey> = kinds
            .iter()
            .filter(|(_, k)| k.signed())
            .map(|(n, _)| (n.clone(), ZoneKey::generate()))
            .collect();
        let origins: Vec<Name> = kinds.keys().cloned().collect();
        let zone_of = |name: &Name, skip: Option<&Name>| -> Name {
            origins
                .iter()
                .filter(|z| z.zone_of(name) && Some(*z) != skip)
                .max_by_key(|z| z.num_labels())
                .cloned()
                .expect("the root encloses every name")
        };

        // Records per zone: SOA and NS at the apex, then delegations, then the caller's.
        let mut contents: BTreeMap<Name, Vec<Record>> = BTreeMap::new();
        for origin in &origins {
            let ns = ns_name(origin);
            let soa = SOA::new(
                ns.clone(),
                abs(&format!("hostmaster.{}", origin_text(origin))),
                1,
                3600,
                600,
                86_400,
                TTL,
            );
            let apex = contents.entry(origin.clone()).or_default();
            apex.push(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)));
            apex.push(Record::from_rdata(origin.clone(), TTL, RData::NS(NS(ns))));
            if origin.is_root() {
                continue;
            }
            let parent = zone_of(origin, Some(origin));
            let cut = contents.entry(parent).or_default();
            cut.push(Record::from_rdata(
                origin.clone(),
                TTL,
                RData::NS(NS(ns_name(origin))),
            ));
            if let Some(key) = keys.get(origin) {
                cut.push(Record::from_rdata(
                    origin.clone(),
                    TTL,
                    RData::DNSSEC(DNSSECRData::DS(key.ds(origin))),
                ));
            }
        }
        for rec in self.records {
            contents
                .entry(zone_of(&rec.name, None))
                .or_default()
                .push(rec);
        }

        // Zone handlers, each in its own catalog so the router can pick parent or child.
        let mut zones = Vec::new();
        for (origin, records) in contents {
            let kind = kinds[&origin];
            let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
                origin.clone(),
                ZoneType::Primary,
                AxfrPolicy::Deny,
                Some(NxProofKind::Nsec),
            );
            for rec in records {
                let text = rec.to_string();
                assert!(handler.upsert_mut(rec, 1), "record not accepted: {text}");
            }
            if let Some(key) = keys.get(&origin) {
                handler
                    .add_zone_signing_key_mut(key.signer(&origin, SIG_VALIDITY))
                    .expect("add zone signing key");
                handler.secure_zone_mut().expect("sign zone");
                match kind {
                    ZoneKind::BadSignatures => corrupt_signatures(&mut handler),
                    ZoneKind::ExpiredSignatures => expire_signatures(&mut handler, key),
                    ZoneKind::Signed | ZoneKind::Unsigned => {}
                }
            }
            let mut catalog = Catalog::new();
            catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
            zones.push((LowerName::new(&origin), catalog));
        }
        zones.sort_by_key(|(origin, _)| std::cmp::Reverse(origin.num_labels()));

        let queries = Arc::new(Mutex::new(Vec::new()));
        let router = Router {
            zones,
            faults: self.faults,
            queries: queries.clone(),
        };
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp local addr");
        let mut server = Server::new(router);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);

        let anchor_text = keys[&Name::root()].anchor_text();
        let dir = tempfile::tempdir().expect("tempdir for the trust anchor");
        let anchor_path = dir.path().join("root.key");
        std::fs::write(&anchor_path, &anchor_text).expect("write trust anchor");

        DnsWorld {
            addr,
            anchor_text,
            anchor_path,
            queries,
            _dir: dir,
            _server: server,
        }
    }
}

fn origin_text(origin: &Name) -> String {
    if origin.is_root() {
        String::new()
    } else {
        origin.to_ascii()
    }
}

fn ns_name(origin: &Name) -> Name {
    if origin.is_root() {
        abs("a.root-servers.test")
    } else {
        abs(&format!("ns1.{}", origin.to_ascii()))
    }
}

/// UDP and TCP sockets on the same ephemeral port of 127.0.0.1.
async fn bind_pair() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp");
        let addr = udp.local_addr().expect("udp addr");
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// Replaces each RRSIG (except over DNSKEY) by one whose signature bytes are flipped.
fn corrupt_signatures(handler: &mut InMemoryZoneHandler<TokioRuntimeProvider>) {
    for rrset in handler.records_get_mut().values_mut() {
        if rrset.record_type() == RecordType::DNSKEY {
            continue;
        }
        let rrset = Arc::make_mut(rrset);
        let sigs: Vec<Record> = rrset.rrsigs().to_vec();
        rrset.clear_rrsigs();
        for mut sig in sigs {
            if let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &sig.data {
                let mut bytes = rrsig.sig().to_vec();
                for b in bytes.iter_mut() {
                    *b ^= 0x5a;
                }
                let bad = RRSIG::from_sig(rrsig.input().clone(), bytes);
                sig.data = RData::DNSSEC(DNSSECRData::RRSIG(bad));
            }
            rrset.insert_rrsig(sig);
        }
    }
}

/// Re-signs every RRset with signatures valid from 30 days ago until 29 days ago.
fn expire_signatures(handler: &mut InMemoryZoneHandler<TokioRuntimeProvider>, key: &ZoneKey) {
    let signing_key = key.signing_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as u32;
    let day = 86_400;
    for rrset in handler.records_get_mut().values_mut() {
        let rrset = Arc::make_mut(rrset);
        let sigs: Vec<Record> = rrset.rrsigs().to_vec();
        rrset.clear_rrsigs();
        for mut sig in sigs {
            if let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &sig.data {
                let mut input = rrsig.input().clone();
                input.sig_inception = SerialNumber::new(now - 30 * day);
                input.sig_expiration = SerialNumber::new(now - 29 * day);
                let tbs = TBS::from_input(
                    rrset.name(),
                    DNSClass::IN,
                    &input,
                    rrset.records_without_rrsigs(),
                )
                .expect("to-be-signed data");
                let bytes = signing_key.sign(&tbs).expect("sign");
                sig.data = RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, bytes)));
            }
            rrset.insert_rrsig(sig);
        }
    }
}

/// Sends each query to the zone that should answer it: the deepest enclosing zone, except that a
/// DS query at a zone apex goes to the parent. Faults are applied first.
struct Router {
    /// Deepest origins first.
    zones: Vec<(LowerName, Catalog)>,
    faults: Vec<(LowerName, RecordType, Fault)>,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
}

impl Router {
    fn pick(&self, name: &LowerName, rtype: RecordType) -> &Catalog {
        self.zones
            .iter()
            .find(|(origin, _)| {
                origin.zone_of(name)
                    && !(rtype == RecordType::DS && origin == name && !name.is_root())
            })
            .map(|(_, catalog)| catalog)
            .unwrap_or(&self.zones.last().expect("root zone").1)
    }

    async fn route<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let Ok(info) = request.request_info() else {
            let root = &self.zones.last().expect("root zone").1;
            return root.handle_request::<R, T>(request, response_handle).await;
        };
        let name = info.query.name().clone();
        let rtype = info.query.query_type();
        {
            let shown = Name::from(name.clone()).to_ascii();
            let shown = shown.trim_end_matches('.').to_string();
            self.queries.lock().unwrap().push((shown, rtype));
        }
        let fault = self
            .faults
            .iter()
            .find(|(n, t, _)| *n == name && *t == rtype)
            .map(|(_, _, f)| *f);
        match fault {
            Some(Fault::ServFail) => {
                let response = MessageResponseBuilder::new(&request.queries, None)
                    .error_msg(&request.metadata, ResponseCode::ServFail);
                match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(_) => servfail_info(request),
                }
            }
            Some(Fault::Drop) => servfail_info(request),
            None => {
                self.pick(&name, rtype)
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
        }
    }
}

fn servfail_info(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

// `RequestHandler` is declared with `async_trait`; this is its expanded form, so the tests need no
// extra dependency.
impl RequestHandler for Router {
    fn handle_request<'a, 'b, 'f, R, T>(
        &'a self,
        request: &'b Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'f>>
    where
        R: ResponseHandler + 'f,
        T: Time + 'f,
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(self.route::<R, T>(request, response_handle))
    }
}
