#!/bin/bash
# MTA-STS interop test: tlsrelay's MTA-STS discovery and policy fetch against the shared loopback
# test bed (knot with a signed fake root, unbound, nginx serving the policies on 127.0.0.30:443
# with certificates from the test bed CA), compared domain by domain with an independent client,
# `mta-sts-query` from Debian's postfix-mta-sts-resolver.
#
# What it does:
#   1. sets up the parts of the test bed that MTA-STS needs (PKI, DNS, HTTPS; no Postfix) from the
#      scripts in $TESTBED into a fresh TB=$(mktemp -d), installing its Debian packages first if
#      any are missing;
#   2. for each test domain D runs
#        - `mta-sts-query D` in a private mount namespace whose /etc/resolv.conf is the test bed's
#          (unbound, validating) and with SSL_CERT_FILE=$TB/pki/ca.pem, and parses the printed
#          result: (<STSFetchResult.VALID: 1>, ('ID', {policy})) or NONE / FETCH_ERROR;
#        - `tlsrelay --config CFG check D --json` (tlsrelay validates DNSSEC itself against knot,
#          trust anchor = the fake root's DNSKEY; [mta_sts] and [delivery] extra_roots = the test
#          bed CA; a private spool, so the policy cache starts empty);
#   3. compares them: the same presence or absence of a policy (VALID <-> mta_sts_policy; NONE <->
#      no policy and no record id; FETCH_ERROR <-> no policy and an mta_sts_error), the same mode,
#      the same set of mx patterns (order-insensitive, lower case), the same max_age and the same
#      TXT id. It also asserts what tlsrelay makes of the policy per MX host: example.test
#      publishes TLSA for its MX hosts, so DANE takes precedence ("dane: ..."); unsigned.test is
#      insecure, so MTA-STS enforce applies ("mta-sts: ... WebPKI"); both deliverable. A second
#      `check example.test` must be answered from tlsrelay's policy cache with the same policy.
#   4. prints a table and, last, "<N> passed, <M> failed"; exits non-zero on any failure, after
#      dumping the raw outputs of the failing rows and the tails of the nginx/DNS logs.
#
# Everything started here is stopped on exit, also on failure (the test bed by its own
# teardown.sh for this TB), and TB is deleted (KEEP_WORK=1 keeps it).
#
# Needs root (apt-get, unshare/mount, ports 53/443 on 127.x). The test bed uses fixed loopback
# addresses, so only one test bed can run at a time: the script refuses to start when they are
# taken, and it queues on the same lock as dane_testbed.sh.
#
# Env: TESTBED (default <checkout>/../shared/testbed), TLSRELAY_BIN (default
#      <checkout>/target/debug/tlsrelay, built with `cargo build` when missing), KEEP_WORK=1,
#      TESTBED_VERIFY=1 (also run the test bed's own verify.sh; it needs Postfix, so this then
#      sets up Postfix too).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TESTBED=${TESTBED:-$HERE/../../../shared/testbed}
BIN=${TLSRELAY_BIN:-$ROOT/target/debug/tlsrelay}
# with MTA-STS (enforce): example.test, unsigned.test; without: the others
DOMAINS=(example.test unsigned.test notlsa.example.test dane-ta.example.test badcert.example.test
         notls.example.test broken.test expired.test)
T0=$(date +%s)

log() { printf '== %s\n' "$*"; }
die() { echo "ERROR: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "run as root (the test bed needs apt-get, mount namespaces and ports 53/443)"
[[ -d $TESTBED && -x $TESTBED/setup-dns.sh ]] || die "no test bed at $TESTBED (set TESTBED)"
TESTBED=$(cd "$TESTBED" && pwd)

# ---------------------------------------------------------------- one test bed at a time
# the same lock file as dane_testbed.sh: the two never overlap
exec 9>/tmp/tlsrelay-dane-testbed.lock
flock -w 300 9 || die "another test bed run (dane_testbed.sh / sts_testbed.sh) held the lock for 300 s"
port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
busy=()
for ap in 127.0.0.53:53 127.0.0.54:53 127.0.0.1:5353 127.0.0.10:25 127.0.0.11:25 127.0.0.12:25 \
          127.0.0.13:25 127.0.0.1:2525 127.0.0.1:2526 127.0.0.30:443; do
  port_in_use "${ap%:*}" "${ap#*:}" && busy+=("$ap")
done
((${#busy[@]} == 0)) || die "test bed addresses already in use (${busy[*]}): is another test bed running? Stop it with its teardown.sh first."

# ---------------------------------------------------------------- binary
if [[ ! -x $BIN ]]; then
  log "building $BIN (cargo build)"
  (cd "$ROOT" && cargo build) || die "cargo build failed"
fi
[[ -x $BIN ]] || die "no tlsrelay binary at $BIN"

# ---------------------------------------------------------------- state and cleanup
export TB
TB=$(mktemp -d /tmp/sts-testbed.XXXXXX)
chmod 755 "$TB"              # nginx (www-data) must reach its files
W=$TB/relay
mkdir -p "$TB/run" "$TB/logs" "$W"
TB_STARTED=0

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ $TB_STARTED == 1 ]]; then
    TB=$TB timeout 120 "$TESTBED/teardown.sh" $([[ ${KEEP_WORK:-0} == 1 ]] || echo --purge) > "$TB/logs/teardown.log" 2>&1 ||
      { echo "test bed teardown reported a problem:"; tail -n 20 "$TB/logs/teardown.log"; }
  fi
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work directory kept: $TB"; else rm -rf "$TB"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "ERROR: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

# ---------------------------------------------------------------- the test bed
need_pkgs=0
for c in knotd keymgr kdig ldns-signzone unbound unbound-control dig nginx curl openssl \
         mta-sts-query unshare python3; do
  command -v "$c" >/dev/null || { need_pkgs=1; break; }
done
if [[ ${TESTBED_VERIFY:-0} == 1 ]]; then
  for c in postfix swaks delv; do command -v "$c" >/dev/null || need_pkgs=1; done
fi
if [[ $need_pkgs == 1 ]]; then
  log "installing the test bed's packages ($TESTBED/install-packages.sh)"
  # current package lists first; one apt-get update only if that fails
  if ! SKIP_APT_UPDATE=1 timeout 900 "$TESTBED/install-packages.sh" > "$TB/logs/install.log" 2>&1 </dev/null; then
    timeout 900 "$TESTBED/install-packages.sh" > "$TB/logs/install.log" 2>&1 </dev/null ||
      { tail -n 30 "$TB/logs/install.log"; die "installing the test bed's packages failed"; }
  fi
fi
command -v mta-sts-query >/dev/null || die "mta-sts-query (postfix-mta-sts-resolver) is still missing"

log "setting up the test bed (PKI, DNS, HTTPS) from $TESTBED in TB=$TB"
TB_STARTED=1
steps=(setup-pki.sh setup-dns.sh start-https.sh)
[[ ${TESTBED_VERIFY:-0} == 1 ]] && steps=(setup-pki.sh setup-dns.sh setup-postfix.sh start-https.sh)
for step in "${steps[@]}"; do
  if ! timeout 180 "$TESTBED/$step" > "$TB/logs/$step.log" 2>&1 </dev/null; then
    echo "---- $TB/logs/$step.log"; tail -n 30 "$TB/logs/$step.log"
    die "test bed $step failed"
  fi
done
if [[ ${TESTBED_VERIFY:-0} == 1 ]]; then
  log "test bed verify.sh"
  timeout 180 "$TESTBED/verify.sh" > "$TB/logs/verify.log" 2>&1 </dev/null ||
    { grep -E '^(FAIL|==)' "$TB/logs/verify.log"; die "the test bed's verify.sh failed"; }
  tail -n 1 "$TB/logs/verify.log"
fi
for ap in 127.0.0.53:53 127.0.0.54:53 127.0.0.30:443; do
  port_in_use "${ap%:*}" "${ap#*:}" || die "test bed is not listening on $ap after setup"
done
[[ -s $TB/dns/root-anchor.dnskey && -s $TB/pki/ca.pem && -s $TB/dns/resolv.conf ]] ||
  die "test bed trust anchor, CA or resolv.conf missing"

# ---------------------------------------------------------------- tlsrelay configuration
CFG=$W/tlsrelay.toml
cat > "$CFG" <<EOF
[server]
listen = ["127.0.0.1:10025"]     # not used: only \`check\` runs, nothing listens
hostname = "relay.interop.test"
relay_networks = ["127.0.0.0/8"]

[spool]
# private spool: the MTA-STS policy cache (<spool>/mta-sts/) starts empty
dir = "$W/spool"

[delivery]
port = 25
# The test bed's MX hosts listen on 127.0.0.x.
allow_loopback_destinations = true
connect_timeout = "5s"
# floor = "verify" (the default); the test bed CA vouches for the MX hosts (MTA-STS needs WebPKI)
extra_roots = ["$TB/pki/ca.pem"]

[mta_sts]
https_port = 443
fetch_timeout = "10s"
# the policy hosts' certificates come from the test bed CA
extra_roots = ["$TB/pki/ca.pem"]

[dns]
# knot, authoritative for the whole fake tree; tlsrelay validates DNSSEC itself
nameservers = ["127.0.0.53:53"]
trust_anchor_file = "$TB/dns/root-anchor.dnskey"
timeout = "2s"
attempts = 2
EOF
"$BIN" config check "$CFG" > "$W/config-check.out" 2>&1 || { cat "$W/config-check.out"; die "tlsrelay config check rejected $CFG"; }

# ---------------------------------------------------------------- run both clients
# mta-sts-query resolves through glibc/c-ares (/etc/resolv.conf): give it the test bed's
# resolv.conf (unbound on 127.0.0.54) in a private mount namespace, and the test bed CA.
sts_query() { # domain
  timeout 30 env -u https_proxy -u HTTPS_PROXY -u http_proxy -u HTTP_PROXY -u all_proxy -u ALL_PROXY \
    unshare --mount --propagation private \
    sh -c 'mount --bind "$1/dns/resolv.conf" /etc/resolv.conf && SSL_CERT_FILE="$1/pki/ca.pem" exec mta-sts-query "$2"' \
    sh "$TB" "$1"
}
tlsrelay_check() { # domain tag
  local rc=0
  NO_COLOR=1 timeout 60 "$BIN" --config "$CFG" check "$1" --json </dev/null \
    > "$W/check-$2.json" 2> "$W/check-$2.err" || rc=$?
  echo "$rc" > "$W/check-$2.rc"
}
log "running mta-sts-query and tlsrelay check for ${#DOMAINS[@]} domains"
for d in "${DOMAINS[@]}"; do
  rc=0; sts_query "$d" > "$W/query-$d.out" 2> "$W/query-$d.err" </dev/null || rc=$?
  echo "$rc" > "$W/query-$d.rc"
  tlsrelay_check "$d" "$d"
done
# once more for example.test: now from tlsrelay's policy cache
tlsrelay_check example.test example.test.cached

# ---------------------------------------------------------------- compare
log "MTA-STS verdicts (mta-sts-query = postfix-mta-sts-resolver, the reference; tlsrelay = this build)"
python3 - "$W" "${DOMAINS[@]}" <<'PY' || die "the comparison crashed"
import ast, json, os, re, sys

w, domains = sys.argv[1], sys.argv[2:]

def slurp(p):
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""

def query_result(d):
    """mta-sts-query's verdict: ("VALID", id, policy) / ("NONE"|"FETCH_ERROR"|..., None, None) / ("?", why, None)."""
    rc, out = slurp(f"{w}/query-{d}.rc").strip(), slurp(f"{w}/query-{d}.out").strip()
    line = out.splitlines()[-1] if out else ""
    m = re.fullmatch(r"\(<STSFetchResult\.(\w+): \d+>, (.*)\)", line)
    if rc != "0" or not m:
        return ("?", f"exit {rc}, output {line!r}", None)
    status, rest = m.group(1), m.group(2)
    try:
        val = ast.literal_eval(rest)
    except (ValueError, SyntaxError) as e:
        return ("?", f"unparsable {rest!r}: {e}", None)
    if status == "VALID":
        if not (isinstance(val, tuple) and len(val) == 2 and isinstance(val[1], dict)):
            return ("?", f"VALID without (id, policy): {rest!r}", None)
        return ("VALID", str(val[0]), val[1])
    return (status, None, None)

def check_result(tag):
    rc, out = slurp(f"{w}/check-{tag}.rc").strip(), slurp(f"{w}/check-{tag}.json")
    if rc not in ("0", "1"):
        return None, f"tlsrelay check exited {rc}"
    try:
        r = json.loads(out)
    except ValueError as e:
        return None, f"tlsrelay check printed no JSON ({e})"
    if (rc == "0") != bool(r.get("deliverable")):
        return None, f"exit {rc} does not match deliverable={r.get('deliverable')}"
    return r, None

def pats(xs):
    return sorted({str(x).strip().lower().rstrip(".") for x in (xs or [])})

def show_query(q):
    status, qid, pol = q
    if status == "VALID":
        mx = pol.get("mx") if isinstance(pol.get("mx"), list) else [pol.get("mx")]
        return f"VALID id={qid} {pol.get('mode')} mx={','.join(pats(mx))} max_age={pol.get('max_age')}"
    return status if status != "?" else f"? ({qid})"

def show_check(r):
    p = r.get("mta_sts_policy")
    rec = r.get("mta_sts_record")
    if p:
        return (f"id={rec} {p.get('mode')} mx={','.join(pats(p.get('mx')))} max_age={p.get('max_age')}"
                f" ({p.get('source')})")
    s = "no policy" + (f", id={rec}" if rec else "")
    if r.get("mta_sts_error"):
        s += ", error"
    return s

def host_reqs(r):
    return [(h.get("host"), h.get("requirement") or "", h.get("usable")) for h in r.get("hosts") or []]

rows, notes, failed_tags = [], [], []
npass = nfail = 0

def row(label, qshow, cshow, extra, why, note, tags):
    global npass, nfail
    ok = not why
    if ok:
        npass += 1
    else:
        nfail += 1
        failed_tags.extend(tags)
    rows.append([label, qshow, cshow, extra, "PASS" if ok else "FAIL"])
    notes.append(f"{label:<26} {note}" + (("; " if note else "") + "FAILED: " + "; ".join(why) if why else ""))

for d in domains:
    why, extra = [], []
    q = query_result(d)
    r, err = check_result(d)
    qshow = show_query(q)
    cshow = show_check(r) if r else f"? ({err})"
    if q[0] == "?":
        why.append(f"mta-sts-query (reference) gave no usable result: {q[1]}")
    if r is None:
        why.append(err)
    note = ""
    if q[0] != "?" and r is not None:
        p, rec = r.get("mta_sts_policy"), r.get("mta_sts_record")
        if q[0] == "VALID":
            qpol, qid = q[2], q[1]
            qmx = qpol.get("mx") if isinstance(qpol.get("mx"), list) else [qpol.get("mx")]
            if not p:
                why.append(f"mta-sts-query found a valid policy, tlsrelay none (mta_sts_error: {r.get('mta_sts_error')})")
            else:
                if str(p.get("mode")).lower() != str(qpol.get("mode")).lower():
                    why.append(f"mode: tlsrelay {p.get('mode')}, mta-sts-query {qpol.get('mode')}")
                if qpol.get("mode") != "none" and pats(p.get("mx")) != pats(qmx):
                    why.append(f"mx patterns: tlsrelay {pats(p.get('mx'))}, mta-sts-query {pats(qmx)}")
                if str(p.get("max_age")) != str(qpol.get("max_age")):
                    why.append(f"max_age: tlsrelay {p.get('max_age')}, mta-sts-query {qpol.get('max_age')}")
                if p.get("source") != "fetched":
                    why.append(f"policy source {p.get('source')}, expected fetched (fresh cache)")
            if rec != qid:
                why.append(f"TXT id: tlsrelay {rec!r}, mta-sts-query {qid!r}")
            if r.get("mta_sts_error"):
                why.append(f"tlsrelay reported an MTA-STS problem: {r.get('mta_sts_error')}")
            note = "same policy"
        elif q[0] == "NONE":
            if p or rec:
                why.append(f"mta-sts-query: no MTA-STS; tlsrelay: policy {p}, record {rec!r}")
            if r.get("mta_sts_error"):
                why.append(f"tlsrelay reported an MTA-STS problem although there is no record: {r.get('mta_sts_error')}")
            note = "both: no MTA-STS"
        elif q[0] == "FETCH_ERROR":
            if p:
                why.append(f"mta-sts-query: fetch error; tlsrelay has a policy {p}")
            if not r.get("mta_sts_error"):
                why.append("mta-sts-query: fetch error; tlsrelay reported no MTA-STS problem")
            note = f"both: no policy, lookup failed (tlsrelay: {r.get('mta_sts_error')})"
        else:
            why.append(f"unexpected mta-sts-query result {q[0]}")
        # what tlsrelay makes of it per MX host
        hosts = host_reqs(r)
        if d == "example.test":
            if not hosts:
                why.append("tlsrelay listed no MX hosts")
            for h, req, usable in hosts:
                if not req.startswith("dane:") or not usable:
                    why.append(f"{h}: requirement {req!r} (usable {usable}), expected dane: (TLSA published, DANE before MTA-STS)")
            if r.get("deliverable") is not True:
                why.append(f"deliverable {r.get('deliverable')}, expected true")
            extra.append(f"{len(hosts)} hosts dane:, deliverable={str(r.get('deliverable')).lower()}")
            note += "; DANE takes precedence over MTA-STS for every MX host"
        elif d == "unsigned.test":
            if not hosts:
                why.append("tlsrelay listed no MX hosts")
            for h, req, usable in hosts:
                if not req.startswith("mta-sts:") or "WebPKI" not in req or not usable:
                    why.append(f"{h}: requirement {req!r} (usable {usable}), expected mta-sts: ... WebPKI (insecure zone, MTA-STS enforce)")
            if r.get("deliverable") is not True:
                why.append(f"deliverable {r.get('deliverable')}, expected true")
            extra.append(f"{len(hosts)} host(s) mta-sts:, deliverable={str(r.get('deliverable')).lower()}")
            note += "; MTA-STS enforce (WebPKI) decides: the zone is insecure, DANE cannot apply"
        else:
            mechs = sorted({req.split(":", 1)[0] for _, req, u in hosts if u})
            extra.append(f"hosts: {'/'.join(mechs) or 'none usable'}, deliverable={str(r.get('deliverable')).lower()}")
    row(d, qshow, cshow, "; ".join(extra), why, "" if why else note, [d])

# the second check of example.test must come from tlsrelay's cache, with the same policy
first, _ = check_result("example.test")
r, err = check_result("example.test.cached")
why = []
if r is None:
    why.append(err)
    cshow = f"? ({err})"
else:
    cshow = show_check(r)
    p = r.get("mta_sts_policy")
    if not p or p.get("source") != "cached":
        why.append(f"second check: policy {p}, expected one from the cache")
    if first and p and first.get("mta_sts_policy"):
        f = first["mta_sts_policy"]
        if (f.get("mode"), pats(f.get("mx")), f.get("max_age")) != (p.get("mode"), pats(p.get("mx")), p.get("max_age")):
            why.append(f"cached policy {p} differs from the fetched one {f}")
    if r.get("mta_sts_record") != (first or {}).get("mta_sts_record"):
        why.append("record id differs between the two checks")
    if r.get("deliverable") is not True:
        why.append(f"deliverable {r.get('deliverable')}, expected true")
row("example.test (2nd check)", "-", cshow, f"deliverable={str((r or {}).get('deliverable')).lower()}",
    why, "" if why else "tlsrelay answered from its policy cache (<spool>/mta-sts/)", ["example.test.cached"])

h = ["domain", "mta-sts-query (reference)", "tlsrelay check: record/policy (source)", "tlsrelay hosts", ""]
wd = [max(len(h[c]), *(len(x[c]) for x in rows)) for c in range(4)]
fmt = "  ".join(f"{{:<{n}}}" for n in wd) + "  {}"
print(fmt.format(*h))
print(fmt.format(*("-" * n for n in wd), "----"))
for x in rows:
    print(fmt.format(*x))
print()
for n in notes:
    print(n)
with open(f"{w}/counts", "w") as f:
    f.write(f"{npass} {nfail}\n")
with open(f"{w}/failed", "w") as f:
    f.write("\n".join(failed_tags) + ("\n" if failed_tags else ""))
PY
read -r PASS FAIL < "$W/counts"

# ---------------------------------------------------------------- diagnostics and summary
echo
echo "$("$BIN" --version 2>/dev/null || echo tlsrelay), $(dpkg-query -W -f='postfix-mta-sts-resolver ${Version}' postfix-mta-sts-resolver 2>/dev/null)" \
     "against the test bed in $TB; $(($(date +%s) - T0))s in all."
if ((FAIL > 0)); then
  while read -r tag; do
    [[ -n $tag ]] || continue
    echo "---- $tag"
    d=${tag%.cached}
    if [[ $tag == "$d" ]]; then
      echo "mta-sts-query $d: exit $(cat "$W/query-$d.rc" 2>/dev/null)"
      sed 's/^/  out: /' "$W/query-$d.out" 2>/dev/null; sed 's/^/  err: /' "$W/query-$d.err" 2>/dev/null | tail -n 15
    fi
    echo "tlsrelay check $d: exit $(cat "$W/check-$tag.rc" 2>/dev/null)"
    sed 's/^/  out: /' "$W/check-$tag.json" 2>/dev/null | head -n 80
    sed 's/^/  err: /' "$W/check-$tag.err" 2>/dev/null | tail -n 15
  done < "$W/failed"
  echo "---- tail of the nginx access log"; tail -n 20 "$TB/https/access.log" 2>/dev/null || true
  echo "---- tail of the nginx error log"; tail -n 10 "$TB/https/error.log" 2>/dev/null || true
  echo "---- DNS: kdig @127.0.0.53 _mta-sts TXT / mta-sts A"
  for d in example.test unsigned.test; do
    kdig @127.0.0.53 +short +time=2 +retry=1 TXT "_mta-sts.$d" 2>&1 | sed "s/^/  _mta-sts.$d TXT /"
    kdig @127.0.0.53 +short +time=2 +retry=1 A "mta-sts.$d" 2>&1 | sed "s/^/  mta-sts.$d A /"
  done
fi
echo "$PASS passed, $FAIL failed"
if ((FAIL > 0)); then exit 1; fi
