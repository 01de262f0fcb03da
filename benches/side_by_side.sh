#!/bin/bash
# Side-by-side benchmark (issue 10): the same smtp-source load through a throw-away Postfix set up
# as the outbound gateway (verified TLS, connection reuse) and through tlsrelay, both delivering to
# the same STARTTLS sink, which refuses mail outside TLS and counts what it receives.
#
#   sudo bash benches/side_by_side.sh          # needs root; 2-4 minutes on 2 cores
#
# What runs (all on 127.0.0.0/8, every server started here and stopped on exit):
#   - DNS: the shared test bed's knot (signed fake root . -> test. -> example.test.) via
#     $TESTBED/setup-dns.sh, on free ports of this run; tlsrelay validates DNSSEC itself against
#     it (trust anchor = the fake root's DNSKEY). The test bed's PKI ($TESTBED/setup-pki.sh)
#     gives the CA and the certificate of mx1.example.test.
#   - the sink: examples/tls_sink.rs on 127.0.0.10 (= mx1.example.test) on a free port, with that
#     certificate. It answers MAIL/RCPT/DATA outside TLS with 530 and counts them.
#   - Postfix (Debian package): relayhost [127.0.0.10]:PORT, smtp_tls_security_level = secure with
#     the test CA and match=mx1.example.test, smtp_tls_connection_reuse = yes (tlsproxy).
#   - tlsrelay (release build): MX lookup of example.test (DNSSEC-validated), no TLSA for the
#     sink's port, so the floor applies: certificate verified against the test CA (extra_roots)
#     and the name mx1.example.test. MTA-STS is off (Postfix does none either; the test bed's
#     HTTPS server is not started).
#
# Passes, in order:
#   0. the sink's own capacity: smtp_load with STARTTLS straight to the sink;
#   1. Postfix: smtp-source -s SESSIONS -m N -l SIZE; rate = N / (last message at the sink -
#      start of smtp-source), i.e. end to end;
#   2. tlsrelay: the same smtp-source run; the same end-to-end rate; VmHWM of the relay after it;
#   3. tlsrelay: examples/smtp_load.rs, SESSIONS sessions, N messages as fast as possible:
#      '.'->250 latency p50/p99 at peak;
#   4. tlsrelay: smtp_load paced at half of pass 2's rate: p50/p99 at half peak;
#   5. tlsrelay: fsyncs per message, counted by strace -f -c attached to the relay during a
#      separate smaller smtp-source run (STRACE_N messages, until the queue is empty): strace
#      slows the relay down, so its rate is not used.
# Every tlsrelay pass starts a fresh relay on a fresh spool. The last lines are a table.
#
# Env: N (5000), SESSIONS (20), SIZE (4096), STRACE_N (1000), MAXWAIT (seconds per pass, 300),
#      SMTP_SOURCE_OPTS (extra smtp-source options, e.g. -d to keep each session's connection;
#      default: none, a new connection per message as in the test bed's loadtest.sh),
#      TLSRELAY_BIN (default: cargo build --release), TESTBED (default ../shared/testbed),
#      KEEP_WORK=1 (keep the work directory and its logs; it is always kept after a failure).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TESTBED=${TESTBED:-$ROOT/../shared/testbed}
N=${N:-5000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
STRACE_N=${STRACE_N:-1000}
MAXWAIT=${MAXWAIT:-300}
SMTP_SOURCE_OPTS=${SMTP_SOURCE_OPTS:-}
T_START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '== %s\n' "$*"; }
die() { echo "ERROR: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "run as root (apt-get, Postfix, strace -p)"
for v in N SESSIONS SIZE STRACE_N MAXWAIT; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive number"
done
[[ -x $TESTBED/setup-dns.sh && -x $TESTBED/setup-pki.sh ]] || die "no test bed at $TESTBED (set TESTBED)"
TESTBED=$(cd "$TESTBED" && pwd)

# ---------------------------------------------------------------- packages
install_packages() {
  local pkgs=(postfix strace knot knot-dnsutils ldnsutils unbound dnsutils openssl)
  local c missing=0
  for c in postfix postconf smtp-source strace knotd keymgr kdig ldns-signzone unbound dig openssl; do
    command -v "$c" >/dev/null || missing=1
  done
  [[ $missing == 0 ]] && return 0
  log "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local tmp_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # no package may start its default service (postfix on :25, knot, unbound) while we install
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    tmp_policy=1
  fi
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string bench.test" | debconf-set-selections
  local rc=0
  # the current package lists first; one apt-get update only if that fails
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null; then
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } </dev/null || rc=$?
  fi
  [[ $tmp_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  return $rc
}
install_packages || die "installing packages failed"

# ---------------------------------------------------------------- binaries
if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then . "$HOME/.cargo/env"; fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
build=(--example tls_sink --example smtp_load)
[[ -n ${TLSRELAY_BIN:-} ]] || build+=(--bin tlsrelay)
log "cargo build --release ${build[*]}"
(cd "$ROOT" && nice -n 5 cargo build --release -q "${build[@]}") || die "cargo build failed"
BIN=${TLSRELAY_BIN:-$TARGET/release/tlsrelay}
SINK_BIN=$TARGET/release/examples/tls_sink
LOAD_BIN=$TARGET/release/examples/smtp_load
for b in "$BIN" "$SINK_BIN" "$LOAD_BIN"; do [[ -x $b ]] || die "missing $b"; done

# ---------------------------------------------------------------- state and cleanup
W=$(mktemp -d /tmp/tlsrelay-sbs.XXXXXX)
chmod 755 "$W"              # Postfix daemons (user postfix) must reach their queue and data dirs
export TB=$W/tb             # the test bed scripts' base folder
mkdir -p "$TB" "$W/logs"
PF=$W/postfix
PF_STARTED=0
RELAY_PID=
SINK_PID=
STRACE_PID=
LOADGEN_PID=

pf_master_pid() { [[ -s $PF/spool/pid/master.pid ]] && tr -d ' \n' < "$PF/spool/pid/master.pid" || true; }

stop_pid() { # pid signal seconds
  local pid=$1 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$2" "$pid" 2>/dev/null || true
  for ((i = 0; i < $3 * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

stop_postfix() {
  [[ $PF_STARTED == 1 ]] || return 0
  local mpid; mpid=$(pf_master_pid)
  postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
  if [[ -n $mpid ]]; then
    for _ in $(seq 100); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$mpid" 2>/dev/null && kill -KILL "$mpid" 2>/dev/null
  fi
  PF_STARTED=0
}

stop_relay() { stop_pid "$RELAY_PID" TERM 15; RELAY_PID=; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  stop_pid "$LOADGEN_PID" TERM 5
  stop_pid "$STRACE_PID" INT 10
  stop_relay
  stop_postfix
  stop_pid "$SINK_PID" TERM 5
  local f
  for f in "$TB/dns/run/knot.pid" "$TB/dns/run/unbound.pid"; do
    [[ -s $f ]] && stop_pid "$(tr -d ' \n' < "$f")" TERM 5
  done
  # kept after a failure (not after an interrupt), for its logs
  if [[ ${KEEP_WORK:-0} == 1 || ($rc != 0 && $rc != 130) ]]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "ERROR: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
udp_in_use() { ss -Huln 2>/dev/null | awk '{ print $4 }' | grep -qxF "$1:$2"; }
free_port() { # ip -> a port free for TCP and UDP there
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    port_in_use "$1" "$p" || udp_in_use "$1" "$p" || { echo "$p"; return 0; }
  done
  return 1
}
wait_port() { # ip port pid seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    port_in_use "$1" "$2" && return 0
    [[ -n $3 ]] && ! kill -0 "$3" 2>/dev/null && return 1
    sleep 0.1
  done
  return 1
}
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# ---------------------------------------------------------------- PKI and DNS (the shared test bed)
log "test bed PKI and DNS (knot + unbound) in $TB"
KNOT_PORT=$(free_port 127.0.0.1) || die "no free port"
UNBOUND_PORT=$(free_port 127.0.0.1) || die "no free port"
# setup-dns.sh also gives unbound a port-53 listener for glibc users; any free 127.x address does
RES53=
for a in 127.0.0.154 127.0.0.155 127.0.0.156 127.0.0.157; do
  udp_in_use "$a" 53 || port_in_use "$a" 53 || { RES53=$a; break; }
done
[[ -n $RES53 ]] || die "no free 127.0.0.x:53 for unbound's second listener"
timeout 120 "$TESTBED/setup-pki.sh" > "$W/logs/setup-pki.log" 2>&1 </dev/null ||
  { tail -n 20 "$W/logs/setup-pki.log"; die "setup-pki.sh failed"; }
AUTH_ADDR=127.0.0.1 AUTH_PORT=$KNOT_PORT RES_ADDR=127.0.0.1 RES_PORT=$UNBOUND_PORT RES53_ADDR=$RES53 \
  timeout 180 "$TESTBED/setup-dns.sh" > "$W/logs/setup-dns.log" 2>&1 </dev/null ||
  { tail -n 20 "$W/logs/setup-dns.log"; die "setup-dns.sh failed"; }
kdig @127.0.0.1 -p "$KNOT_PORT" +short +time=2 +retry=1 MX example.test | grep -q 'mx1.example.test' ||
  die "knot does not answer MX example.test"

# ---------------------------------------------------------------- the sink
SINK_IP=127.0.0.10           # mx1.example.test in the test bed's zone
SINK_PORT=$(free_port "$SINK_IP") || die "no free port"
SINK_STATUS=$W/sink.status
log "starting the STARTTLS sink on $SINK_IP:$SINK_PORT (certificate of mx1.example.test)"
"$SINK_BIN" --listen "$SINK_IP:$SINK_PORT" --cert "$TB/pki/mx-chain.pem" --key "$TB/pki/mx.key" \
  --status "$SINK_STATUS" --hostname mx1.example.test > "$W/logs/sink.out" 2>&1 &
SINK_PID=$!
wait_port "$SINK_IP" "$SINK_PORT" "$SINK_PID" 15 || die "the sink did not start"
sink() { awk -v k="$1" '$1 == k { print $2 }' "$SINK_STATUS"; }
wait_sink() { # count deadline(epoch s) -> waits until the sink has count messages
  while (( $(sink messages) < $1 )); do
    (( $(date +%s) < $2 )) || return 1
    sleep 0.05
  done
  sleep 0.15                 # let the status file catch up with the last message's time
}

# ---------------------------------------------------------------- load generators
SOURCE=(smtp-source -s "$SESSIONS" -l "$SIZE" -f sender@org.test -t rcpt@example.test -M loadgen.org.test)
# shellcheck disable=SC2206  # options are meant to be split
SOURCE+=($SMTP_SOURCE_OPTS)

# run_source label port count -> sets T0, T_INGEST, T_LAST, E2E_RATE, INGEST_RATE
run_source() {
  local label=$1 port=$2 count=$3 base deadline
  base=$(sink messages)
  deadline=$(( $(date +%s) + MAXWAIT ))
  T0=$(now)
  # in the background, so that a signal ends the run at once (bash runs traps between commands)
  timeout "$MAXWAIT" "${SOURCE[@]}" -m "$count" "127.0.0.1:$port" > "$W/logs/source-$label.out" 2>&1 &
  LOADGEN_PID=$!
  wait "$LOADGEN_PID" || { tail -n 5 "$W/logs/source-$label.out"; die "$label: smtp-source failed"; }
  LOADGEN_PID=
  T_INGEST=$(now)
  wait_sink $((base + count)) "$deadline" ||
    die "$label: only $(( $(sink messages) - base )) of $count messages reached the sink within ${MAXWAIT}s"
  T_LAST=$(sink last_message_unix)
  E2E_RATE=$(calc %.0f "$count / ($T_LAST - $T0)")
  INGEST_RATE=$(calc %.0f "$count / ($T_INGEST - $T0)")
  echo "   $label: $count messages; smtp-source done after $(calc %.2f "$T_INGEST - $T0") s ($INGEST_RATE msg/s);" \
       "last at the sink after $(calc %.2f "$T_LAST - $T0") s: $E2E_RATE msg/s end to end"
}

# run_load label count rate(0 = peak) -> sets LOAD_RESULT (the RESULT line) and LOAD_E2E
run_load() {
  local label=$1 count=$2 rate=$3 base deadline t0
  base=$(sink messages)
  deadline=$(( $(date +%s) + MAXWAIT ))
  t0=$(now)
  "$LOAD_BIN" --server "127.0.0.1:$RELAY_PORT" --sessions "$SESSIONS" --messages "$count" --size "$SIZE" \
    --rate "$rate" --from sender@org.test --to rcpt@example.test --timeout "$MAXWAIT" \
    > "$W/logs/load-$label.out" 2>&1 &
  LOADGEN_PID=$!
  wait "$LOADGEN_PID" || { tail -n 5 "$W/logs/load-$label.out"; die "$label: smtp_load failed"; }
  LOADGEN_PID=
  LOAD_RESULT=$(grep '^RESULT ' "$W/logs/load-$label.out")
  wait_sink $((base + count)) "$deadline" || die "$label: not every message reached the sink within ${MAXWAIT}s"
  LOAD_E2E=$(calc %.0f "$count / ($(sink last_message_unix) - $t0)")
  echo "   $label: $(head -n 1 "$W/logs/load-$label.out"); $LOAD_E2E msg/s end to end"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

# ---------------------------------------------------------------- pass 0: the sink alone
log "pass 0: the sink's capacity (smtp_load with STARTTLS straight to it, $SESSIONS sessions, $N messages)"
"$LOAD_BIN" --server "$SINK_IP:$SINK_PORT" --sessions "$SESSIONS" --messages "$N" --size "$SIZE" \
  --starttls-ca "$TB/pki/ca.pem" --sni mx1.example.test --timeout "$MAXWAIT" > "$W/logs/load-sink.out" 2>&1 ||
  { tail -n 5 "$W/logs/load-sink.out"; die "smtp_load to the sink failed"; }
SINK_RATE=$(field rate "$(grep '^RESULT ' "$W/logs/load-sink.out")")
echo "   $(head -n 1 "$W/logs/load-sink.out")"
# and it refuses mail outside TLS:
exec 3<>"/dev/tcp/$SINK_IP/$SINK_PORT"
printf 'EHLO probe.test\r\nMAIL FROM:<a@org.test>\r\nQUIT\r\n' >&3
probe=$(timeout 5 cat <&3 || true); exec 3<&-
sleep 0.3                    # the status file is rewritten every 100 ms
grep -q '^530 ' <<<"$probe" || die "the sink accepted MAIL outside TLS: $probe"
[[ $(sink plaintext_refused) == 1 ]] || die "the sink did not count the plaintext MAIL"

# ---------------------------------------------------------------- pass 1: Postfix
PF_PORT=$(free_port 127.0.0.1) || die "no free port"
log "pass 1: Postfix $(postconf -d -h mail_version) on 127.0.0.1:$PF_PORT -> [$SINK_IP]:$SINK_PORT (secure, CA + name, connection reuse)"
mkdir -p "$PF/etc" "$PF/spool" "$PF/data"
chown postfix:postfix "$PF/data"
cat > "$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
maillog_file = $PF/maillog
maillog_file_prefixes = /var, /dev/stdout, $W
syslog_name = postfix-bench
inet_protocols = ipv4
inet_interfaces = 127.0.0.1
myhostname = gateway.org.test
mydomain = org.test
myorigin = \$myhostname
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
# the outbound gateway: everything to the sink, certificate verified against the test CA and the
# name mx1.example.test (no DNS: a literal next hop, the name comes from the policy)
relayhost = [$SINK_IP]:$SINK_PORT
smtp_tls_security_level = secure
smtp_tls_CAfile = $TB/pki/ca.pem
smtp_tls_policy_maps = inline:{ { [$SINK_IP]:$SINK_PORT = secure match=mx1.example.test } }
smtp_tls_connection_reuse = yes
smtp_tls_loglevel = 1
EOF
cat > "$PF/etc/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
tlsproxy   unix  -       -       n       -       0       tlsproxy
postlog    unix-dgram n  -       n       -       1       postlogd
EOF
# postfix(1) prints its errors only to a tty, hence script(1) when it fails
if ! postfix -c "$PF/etc" check >/dev/null 2>&1; then
  script -qc "postfix -c $PF/etc check" /dev/null || true
  die "postfix check failed"
fi
PF_STARTED=1
postfix -c "$PF/etc" start >/dev/null 2>&1 || { script -qc "postfix -c $PF/etc start" /dev/null || true; die "postfix start failed"; }
wait_port 127.0.0.1 "$PF_PORT" "" 20 || die "Postfix did not listen on 127.0.0.1:$PF_PORT"
# one message first, so that the tlsproxy/tlsmgr start-up is not in the measurement
run_source postfix-warmup "$PF_PORT" 1 >/dev/null
run_source postfix "$PF_PORT" "$N"
PF_E2E=$E2E_RATE PF_INGEST=$INGEST_RATE
sleep 1                       # postlogd writes the last lines
PF_SENT=$(grep -c 'status=sent' "$PF/maillog" || true)
PF_VERIFIED=$(grep -cE 'Verified TLS connection (established|reused)' "$PF/maillog" || true)
PF_WEAK=$(grep -cE '(Untrusted|Anonymous|Trusted) TLS connection' "$PF/maillog" || true)
PF_HANDSHAKES=$(grep -c 'Verified TLS connection established' "$PF/maillog" || true)
echo "   Postfix maillog: status=sent $PF_SENT, Verified TLS $PF_VERIFIED (new handshakes $PF_HANDSHAKES), unverified $PF_WEAK"
((PF_SENT == N + 1 && PF_WEAK == 0 && PF_VERIFIED > 0)) || die "Postfix did not deliver every message over verified TLS"
stop_postfix

# ---------------------------------------------------------------- tlsrelay
RELAY_PORT=$(free_port 127.0.0.1) || die "no free port"
METRICS_PORT=$(free_port 127.0.0.1) || die "no free port"
RELAY_N=0
start_relay() { # label
  local d=$W/relay-$1
  mkdir -p "$d"
  CFG=$d/tlsrelay.toml
  cat > "$CFG" <<EOF
[server]
listen = ["127.0.0.1:$RELAY_PORT"]
hostname = "relay.org.test"
relay_networks = ["127.0.0.0/8"]

[spool]
dir = "$d/spool"

[delivery]
port = $SINK_PORT
# floor = "verify" (the default): the certificate must chain to a trusted root (here the test
# CA) and name the MX host, mx1.example.test
extra_roots = ["$TB/pki/ca.pem"]
# The sink listens on 127.0.0.10; tlsrelay refuses loopback destinations unless told.
allow_loopback_destinations = true

[mta_sts]
enabled = false

[metrics]
listen = "127.0.0.1:$METRICS_PORT"

[dns]
nameservers = ["127.0.0.1:$KNOT_PORT"]
trust_anchor_file = "$TB/dns/root-anchor.dnskey"
EOF
  "$BIN" config check "$CFG" > "$d/config-check.out" 2>&1 || { cat "$d/config-check.out"; die "config check failed"; }
  # run as root like everything here: serve refuses root without [server] user otherwise
  TLSRELAY_ALLOW_ROOT=1 NO_COLOR=1 "$BIN" serve --config "$CFG" </dev/null > "$d/tlsrelay.out" 2> "$d/tlsrelay.log" &
  RELAY_PID=$!
  RELAY_LOG=$d/tlsrelay.log
  wait_port 127.0.0.1 "$RELAY_PORT" "$RELAY_PID" 30 || { tail -n 20 "$d/tlsrelay.log"; die "tlsrelay did not start"; }
  # one message first: DNSSEC self-test, first lookups, first handshake
  run_source "relay-$1-warmup" "$RELAY_PORT" 1 >/dev/null
  RELAY_N=1
}
# The relay's own count of log flushes (one fdatasync each), from its metrics endpoint.
flushes() {
  python3 -c 'import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("tlsrelay_spool_flushes_total")))' \
    "http://127.0.0.1:$METRICS_PORT/metrics"
}
vm_hwm() { awk '$1 == "VmHWM:" { printf "%.1f", $2 / 1024 }' "/proc/$RELAY_PID/status"; }
queue_empty() { [[ $("$BIN" queue list --json --config "$CFG" 2>/dev/null | tr -d ' \n') == "[]" ]]; }
check_relay_log() { # expected deliveries
  local verified weak
  verified=$(grep -c 'tls=verify .*delivered=1 of=1 result=250' "$RELAY_LOG" || true)
  weak=$(grep -cE 'tls=(encrypt|refused)' "$RELAY_LOG" || true)
  ((verified == $1 && weak == 0)) || die "tlsrelay log: $verified verified deliveries of $1, $weak unverified or refused"
}

log "pass 2: tlsrelay ($BIN) on 127.0.0.1:$RELAY_PORT, the same smtp-source load"
start_relay source
for _ in $(seq 50); do queue_empty && break; sleep 0.1; done
F0=$(flushes)
run_source tlsrelay "$RELAY_PORT" "$N"
TR_E2E=$E2E_RATE TR_INGEST=$INGEST_RATE
for _ in $(seq 100); do queue_empty && break; sleep 0.1; done
FLUSH_PER_MSG=$(calc %.2f "($(flushes) - $F0) / $N")
TR_HWM=$(vm_hwm)
check_relay_log $((N + 1))
echo "   tlsrelay VmHWM ${TR_HWM} MiB; every delivery logged tls=verify; $FLUSH_PER_MSG log flushes (fdatasync) per message, by its metrics"
stop_relay

log "pass 3: tlsrelay, smtp_load, $SESSIONS sessions, $N messages as fast as possible ('.'->250 latency)"
start_relay peak
run_load peak "$N" 0
PEAK_RESULT=$LOAD_RESULT PEAK_E2E=$LOAD_E2E
check_relay_log $((N + 1))
stop_relay

HALF=$(calc %.0f "$TR_E2E / 2")
HALF_N=$(calc %.0f "($HALF * 15 < $N) ? ($HALF * 15 < 300 ? 300 : $HALF * 15) : $N")
log "pass 4: tlsrelay, smtp_load paced at $HALF msg/s (half of pass 2's $TR_E2E), $HALF_N messages"
start_relay half
run_load half "$HALF_N" "$HALF"
HALF_RESULT=$LOAD_RESULT
stop_relay

log "pass 5: fsyncs per message: strace -f -c on the relay, smtp-source with $STRACE_N messages"
start_relay strace
SYSCALLS=fsync,fdatasync,sync_file_range,syncfs,sync
strace -f -c -e "trace=$SYSCALLS" -o "$W/strace.txt" -p "$RELAY_PID" 2> "$W/logs/strace.err" &
STRACE_PID=$!
# attached once every thread of the relay has a tracer
for _ in $(seq 100); do
  ! grep -qs '^TracerPid:[[:space:]]*0$' /proc/"$RELAY_PID"/task/*/status && break
  sleep 0.1
done
kill -0 "$STRACE_PID" 2>/dev/null || { cat "$W/logs/strace.err"; die "strace could not attach to the relay"; }
S0=$(flushes)
run_source strace "$RELAY_PORT" "$STRACE_N"
for _ in $(seq 300); do queue_empty && break; sleep 0.1; done
queue_empty || die "the queue did not empty after the strace pass"
S1=$(flushes)
stop_pid "$STRACE_PID" INT 10
STRACE_PID=
# strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall
FSYNCS=$(awk -v list=",$SYSCALLS," 'index(list, "," $NF ",") { n += $4 } END { print n + 0 }' "$W/strace.txt")
FSYNC_PER_MSG=$(calc %.2f "$FSYNCS / $STRACE_N")
echo "   $FSYNCS calls of $SYSCALLS for $STRACE_N messages: $FSYNC_PER_MSG per message (the relay's counter: $(calc %.0f "$S1 - $S0") flushes)"
sed 's/^/   | /' "$W/strace.txt"
stop_relay

# ---------------------------------------------------------------- table
RATIO=$(calc %.2f "$TR_E2E / $PF_E2E")
yes_no() { if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "not met"; fi; }
echo
echo "Side by side, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average before: $LOAD_BEFORE"
echo "smtp-source -s $SESSIONS -m $N -l $SIZE ${SMTP_SOURCE_OPTS:-(new connection per message)}; verified TLS to the same sink"
row() { printf '| %-62s | %-12s | %-14s | %-18s |\n' "$@"; }
row "figure" "Postfix" "tlsrelay" "target (issue 10)"
row "---" "---" "---" "---"
row "end to end msg/s (first submitted -> last at the sink)" "$PF_E2E" "$TR_E2E" ">= 1000: $(yes_no "$TR_E2E >= 1000")"
row "ratio tlsrelay / Postfix" "" "$RATIO" ">= 5: $(yes_no "$RATIO >= 5")"
row "submission msg/s (smtp-source finished)" "$PF_INGEST" "$TR_INGEST" ""
row "'.'->250 ms p50 / p99 at peak (smtp_load, $SESSIONS sessions)" "-" "$(field p50_ms "$PEAK_RESULT") / $(field p99_ms "$PEAK_RESULT")" ""
row "  smtp_load's rate: accepted / end to end msg/s" "-" "$(calc %.0f "$(field rate "$PEAK_RESULT")") / $PEAK_E2E" ""
row "'.'->250 ms p50 / p99 at half peak ($HALF msg/s)" "-" "$(field p50_ms "$HALF_RESULT") / $(field p99_ms "$HALF_RESULT")" "p99 < 20: $(yes_no "$(field p99_ms "$HALF_RESULT") < 20")"
row "fdatasyncs per message at full speed (pass 2, relay's counter)" "-" "$FLUSH_PER_MSG" "< 1: $(yes_no "$FLUSH_PER_MSG < 1")"
row "fsyncs per message (strace -f -c, slowed pass, $STRACE_N msgs)" "-" "$FSYNC_PER_MSG" ""
row "relay memory VmHWM MiB (after pass 2)" "-" "$TR_HWM" ""
echo "The sink: $(calc %.0f "$SINK_RATE") msg/s with STARTTLS straight from smtp_load (pass 0); MAIL/RCPT/DATA refused outside TLS" \
     "in all passes: $(( $(sink plaintext_refused) - 1 )) (the probe's one not counted); TLS handshakes: $(sink tls_handshakes)."
echo "Postfix: $PF_HANDSHAKES TLS handshakes for $N messages (tlsproxy reuse). Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Took $(( $(date +%s) - T_START )) s in all."
