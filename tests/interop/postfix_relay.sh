#!/bin/bash
# Interop test: a real Postfix (relayhost = tlsrelay, smtp_tls_security_level = encrypt) hands N
# messages to a running tlsrelay over STARTTLS; every message must end up in tlsrelay's spool
# byte-identical. swaks also talks to tlsrelay directly with STARTTLS and certificate verification.
#
# Self-contained and idempotent: everything lives in a fresh temporary directory, Postfix and tlsrelay
# listen on free 127.0.0.1 ports and are stopped by PID on exit (also on failure). /etc/postfix and
# the system's default Postfix instance are never touched or started.
#
# Env: N (messages through Postfix, default 50), TLSRELAY_BIN (default target/release/tlsrelay,
#      built when missing), WAIT_TIMEOUT (seconds, default 60), KEEP_WORK=1 (keep the temp dir).
# Output: PASS/FAIL lines, a summary, and a last line "<passed> passed, <failed> failed".
# Exit status: 0 only when every check passed.
set -euo pipefail

N=${N:-50}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${TLSRELAY_BIN:-$ROOT/target/release/tlsrelay}
T0=$(date +%s)

[[ $N =~ ^[0-9]+$ && $N -ge 3 ]] || { echo "N must be a number >= 3" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root (needs apt-get and postfix)" >&2; exit 2; }

log() { printf '== %s\n' "$*"; }

# ---------------------------------------------------------------- packages
install_packages() {
  local pkgs=(postfix swaks libio-socket-ssl-perl libnet-ssleay-perl openssl)
  if command -v postfix >/dev/null && command -v postconf >/dev/null && command -v swaks >/dev/null &&
     command -v openssl >/dev/null && perl -MIO::Socket::SSL -MNet::SSLeay -MJSON::PP -e1 2>/dev/null; then
    return 0
  fi
  log "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local tmp_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # no package may start its default service (postfix on :25) while we install
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    tmp_policy=1
  fi
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string interop.test" | debconf-set-selections
  local rc=0
  # try with the current package lists first; run apt-get update once only if that fails
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null; then
    apt-get update -q </dev/null && apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null || rc=$?
  fi
  [[ $tmp_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  return $rc
}
install_packages

if [[ ! -x $BIN ]]; then
  log "building $BIN (cargo build --release)"
  (cd "$ROOT" && cargo build --release)
fi
[[ -x $BIN ]] || { echo "no tlsrelay binary at $BIN" >&2; exit 2; }

# ---------------------------------------------------------------- state and cleanup
W=$(mktemp -d /tmp/tlsrelay-interop.XXXXXX)
chmod 755 "$W"   # Postfix daemons run as user postfix and must reach their queue and data dirs
PF=$W/postfix
PFETC=$PF/etc
RELAY_PID=
PF_STARTED=0
PASS=0
FAIL=0
FAILED_CHECKS=()

pf_master_pid() { [[ -s $PF/spool/pid/master.pid ]] && tr -d ' \n' < "$PF/spool/pid/master.pid" || true; }

cleanup() {
  local rc=$?
  set +e
  if [[ $PF_STARTED == 1 ]]; then
    local mpid; mpid=$(pf_master_pid)
    postfix -c "$PFETC" stop >/dev/null 2>&1
    if [[ -n $mpid ]]; then
      for _ in $(seq 50); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$mpid" 2>/dev/null && kill -KILL "$mpid" 2>/dev/null
    fi
  fi
  if [[ -n $RELAY_PID ]] && kill -0 "$RELAY_PID" 2>/dev/null; then
    kill -TERM "$RELAY_PID"
    for _ in $(seq 100); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$RELAY_PID" 2>/dev/null && { echo "tlsrelay did not stop on SIGTERM; killing it" >&2; kill -KILL "$RELAY_PID"; }
    wait "$RELAY_PID" 2>/dev/null
  fi
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dump_logs() {
  echo "---- tail of the Postfix maillog ($PF/maillog)"
  tail -n 40 "$PF/maillog" 2>/dev/null || true
  echo "---- tail of tlsrelay's stderr"
  tail -n 40 "$W/tlsrelay.log" 2>/dev/null || true
  echo "----"
}

fatal() { # a failure that makes the remaining checks pointless
  echo "FATAL: $*"
  dump_logs
  echo "$PASS passed, $((FAIL + 1)) failed"
  exit 1
}

check() { # ok(0/1) description
  if [[ $1 == 0 ]]; then PASS=$((PASS + 1)); echo "PASS  $2"
  else FAIL=$((FAIL + 1)); FAILED_CHECKS+=("$2"); echo "FAIL  $2"; fi
}

ok() { if "$@" >/dev/null 2>&1; then echo 0; else echo 1; fi; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # prints a port nobody listens on (and that is not in "$@")
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    [[ " $* " == *" $p "* ]] && continue
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  return 1
}
wait_port() { # port pid-or-empty seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_in_use "$1" && return 0
    [[ -n $2 ]] && ! kill -0 "$2" 2>/dev/null && return 1
    sleep 0.1
  done
  return 1
}

RELAY_PORT=$(free_port)
PF_PORT=$(free_port "$RELAY_PORT")
RUN=$(date +%s)-$$

# ---------------------------------------------------------------- PKI
log "test CA and server certificate in $W/pki"
mkdir -p "$W/pki"
(
  cd "$W/pki"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=tlsrelay interop test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req "${ec[@]}" -keyout relay.key -out relay.csr -subj "/CN=relay.interop.test" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:relay.interop.test,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > leaf.ext
  openssl x509 -req -in relay.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext \
    -out relay.pem 2>/dev/null
  # an unrelated CA, for the negative verification check
  openssl req -x509 "${ec[@]}" -keyout other-ca.key -out other-ca.pem -days 2 -subj "/CN=some other CA" 2>/dev/null
  chmod 644 ca.pem relay.pem other-ca.pem
) || fatal "openssl could not make the test certificates"

# ---------------------------------------------------------------- tlsrelay
log "starting tlsrelay ($BIN) on 127.0.0.1:$RELAY_PORT"
mkdir -p "$W/relay"
cat > "$W/relay/tlsrelay.toml" <<EOF
[server]
listen = ["127.0.0.1:$RELAY_PORT"]
hostname = "relay.interop.test"
relay_networks = ["127.0.0.0/8"]
tls_cert_file = "$W/pki/relay.pem"
tls_key_file = "$W/pki/relay.key"

[spool]
dir = "$W/relay/spool"

# keep every message queued: this test is about the inbound side, and must not look up example.test
[delivery]
enabled = false
EOF
RCFG=$W/relay/tlsrelay.toml
"$BIN" config check "$RCFG" >/dev/null || fatal "tlsrelay config check rejected $RCFG"
NO_COLOR=1 "$BIN" serve --config "$RCFG" </dev/null 2> "$W/tlsrelay.log" &
RELAY_PID=$!
wait_port "$RELAY_PORT" "$RELAY_PID" 15 || fatal "tlsrelay did not start listening on 127.0.0.1:$RELAY_PORT"

# ---------------------------------------------------------------- Postfix
log "starting Postfix (config $PFETC) on 127.0.0.1:$PF_PORT, relayhost [127.0.0.1]:$RELAY_PORT"
mkdir -p "$PFETC" "$PF/spool" "$PF/data"
chown postfix:postfix "$PF/data"
cat > "$PFETC/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
maillog_file = $PF/maillog
maillog_file_prefixes = /var, /dev/stdout, $W
syslog_name = postfix-interop
inet_protocols = ipv4
inet_interfaces = 127.0.0.1
myhostname = org-mta.interop.test
mydomain = interop.test
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
smtpd_tls_security_level = none
relayhost = [127.0.0.1]:$RELAY_PORT
smtp_tls_security_level = encrypt
smtp_tls_CAfile = $W/pki/ca.pem
smtp_tls_loglevel = 1
smtp_tls_session_cache_database = btree:\${data_directory}/smtp_scache
# retry quickly, so that a transient failure shows up as a deferral, not as a timeout
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
EOF
cat > "$PFETC/master.cf" <<EOF
# service  type  private unpriv  chroot  wakeup  maxproc command
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
# postfix(1) prints errors to stderr only when stderr is a tty, hence script(1) on failure
if ! postfix -c "$PFETC" check >/dev/null 2>&1; then
  script -qc "postfix -c $PFETC check" /dev/null || true
  fatal "postfix check failed"
fi
PF_STARTED=1
postfix -c "$PFETC" start >/dev/null 2>&1 || { script -qc "postfix -c $PFETC status" /dev/null || true; fatal "postfix start failed"; }
wait_port "$PF_PORT" "" 15 || fatal "Postfix did not start listening on 127.0.0.1:$PF_PORT"
log "Postfix master PID $(pf_master_pid), tlsrelay PID $RELAY_PID"

# ---------------------------------------------------------------- messages
# For each i: msg/i.eml (the message, CRLF), msg/i.wire (dot-stuffed DATA for swaks --no-data-fixup),
# msg/i.body (the part after the header/body separator) and one manifest line
# "i <TAB> message-id <TAB> sender <TAB> recipients(comma)".
log "writing $N test messages"
mkdir -p "$W/msg"
RUN="$RUN" N="$N" perl -e '
  use strict; use warnings;
  my ($n, $run, $dir) = ($ENV{N}, $ENV{RUN}, $ARGV[0]);
  open(my $man, ">", "$dir/manifest") or die;
  sub write_file { my ($p, $d) = @_; open(my $f, ">:raw", $p) or die "$p: $!"; print $f $d; close $f or die; }
  sub make { # name sender rcpts(arrayref) msgid headers-extra body-lines(arrayref)
    my ($name, $from, $rcpts, $msgid, $extra, $lines) = @_;
    my @h = ("From: Interop Sender <$from>", "To: " . join(", ", map { "<$_>" } @$rcpts),
             "Subject: tlsrelay interop $name", "Date: Sat, 28 Nov 2026 12:00:00 +0000",
             "Message-ID: <$msgid>", @$extra);
    my $msg = join("\r\n", @h) . "\r\n\r\n" . join("", map { "$_\r\n" } @$lines);
    my $body = join("", map { "$_\r\n" } @$lines);
    (my $wire = $msg) =~ s/^\./../mg;           # RFC 5321 4.5.2 transparency
    $wire .= ".";                               # swaks appends the final CRLF
    write_file("$dir/$name.eml", $msg); write_file("$dir/$name.body", $body); write_file("$dir/$name.wire", $wire);
    print $man join("\t", $name, $msgid, $from, join(",", @$rcpts)), "\n";
  }
  my @utf8 = ("MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit");
  for my $i (1 .. $n, "direct") {
    my $marker = sprintf("MARKER-%s-%s-%08x", $run, $i, int(rand(2**32)));
    my @lines = ("Interop test message $i of $n.", "marker: $marker", "", "  indented line, trailing space ");
    my @extra = ("X-Interop-Marker: $marker");
    if ($i eq "direct" or $i % 3 == 0) {
      push @extra, @utf8;
      push @lines, "UTF-8: Gr\x{c3}\x{bc}\x{c3}\x{9f}e, na\x{c3}\x{af}ve caf\x{c3}\x{a9} \x{e2}\x{80}\x{94} \x{e6}\x{97}\x{a5}\x{e6}\x{9c}\x{ac}\x{e8}\x{aa}\x{9e} \x{e2}\x{9c}\x{93}";
    }
    if ($i eq "direct" or $i % 4 == 1) {
      push @lines, ".a line starting with a dot", "..two dots", ".", "From the body, not an mbox separator";
    }
    if ($i eq "2") {                              # one big message: ~100 KB, and a 990-octet line
      push @lines, sprintf("%05d %s", $_, "0123456789abcdefghijklmnopqrstuvwxyz" x 2) for 1 .. 1300;
      push @lines, "x" x 990;
    }
    push @lines, "end of message $i ($marker)";
    my @rcpts = ("rcpt-$i\@example.test");
    push @rcpts, "second-$i\@example.net" if $i ne "direct" and $i % 5 == 0;
    make($i, "sender-$i\@interop.test", \@rcpts, "interop-$run-$i\@interop.test", \@extra, \@lines);
  }
' "$W/msg"

SWAKS_COMMON=(--no-data-fixup --timeout 30)
log "submitting $N messages to Postfix (swaks, plain SMTP on 127.0.0.1:$PF_PORT)"
submit_fail=0
while IFS=$'\t' read -r name msgid from rcpts; do
  [[ $name == direct ]] && continue
  if ! swaks --server "127.0.0.1:$PF_PORT" "${SWAKS_COMMON[@]}" --helo client.interop.test --from "$from" --to "$rcpts" \
       --data "@$W/msg/$name.wire" > "$W/msg/$name.swaks" 2>&1 </dev/null; then
    submit_fail=$((submit_fail + 1)); echo "swaks failed for message $name:"; tail -n 5 "$W/msg/$name.swaks"
  fi
done < "$W/msg/manifest"
check $((submit_fail != 0)) "Postfix accepted all $N submissions ($submit_fail failed)"

# ---------------------------------------------------------------- wait
relay_count() { "$BIN" queue list --json --config "$RCFG" 2>/dev/null | perl -MJSON::PP -0777 -ne 'print scalar @{decode_json($_)}' || echo 0; }
pf_count() { find "$PF/spool/maildrop" "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" "$PF/spool/hold" -type f 2>/dev/null | wc -l; }
log "waiting (at most ${WAIT_TIMEOUT}s) for Postfix's queue to drain and tlsrelay to hold $N messages"
deadline=$(( $(date +%s) + WAIT_TIMEOUT ))
t_wait=$(date +%s)
while :; do
  pfc=$(pf_count); rc=$(relay_count)
  [[ $pfc == 0 && $rc -ge $N ]] && break
  (( $(date +%s) >= deadline )) && break
  sleep 0.5
done
echo "   after $(( $(date +%s) - t_wait ))s: Postfix queue $pfc, tlsrelay queue $rc"
check $((pfc != 0)) "Postfix queue is empty ($pfc left)"
check $((rc != N)) "tlsrelay queue holds exactly $N messages ($rc)"

# ---------------------------------------------------------------- direct STARTTLS submission
log "swaks straight to tlsrelay with STARTTLS and --tls-verify against the test CA"
IFS=$'\t' read -r _ d_msgid d_from d_rcpts < <(grep -P '^direct\t' "$W/msg/manifest")
set +e
swaks --server "127.0.0.1:$RELAY_PORT" "${SWAKS_COMMON[@]}" --helo direct.interop.test --from "$d_from" --to "$d_rcpts" \
  --tls --tls-verify --tls-ca-path "$W/pki/ca.pem" --tls-sni relay.interop.test \
  --data "@$W/msg/direct.wire" > "$W/msg/direct.swaks" 2>&1 </dev/null
d_rc=$?
set -e
check $((d_rc != 0)) "swaks --tls --tls-verify to tlsrelay exits 0 (exit $d_rc)"
check "$(ok grep -q '^=== TLS started with cipher TLSv1\.3' "$W/msg/direct.swaks")" "swaks negotiated TLSv1.3 ($(grep -m1 -o 'TLS started with cipher .*' "$W/msg/direct.swaks" || echo none))"
grep -q '^ \*\*\* \|^\*\*\*' "$W/msg/direct.swaks" && { echo "swaks output:"; tail -n 20 "$W/msg/direct.swaks"; }

# wrong CA: swaks must refuse to go on (proves --tls-verify really verifies)
set +e
swaks --server "127.0.0.1:$RELAY_PORT" "${SWAKS_COMMON[@]}" --helo wrongca.interop.test --from "$d_from" --to "$d_rcpts" \
  --tls --tls-verify --tls-ca-path "$W/pki/other-ca.pem" --data "@$W/msg/direct.wire" > "$W/msg/wrongca.swaks" 2>&1 </dev/null
w_rc=$?
set -e
check $((w_rc == 0)) "swaks --tls-verify with an unrelated CA fails (exit $w_rc)"
# swaks --tls-verify checks the chain only, not the name: check the name with openssl
set +e
openssl s_client -connect "127.0.0.1:$RELAY_PORT" -starttls smtp -name relay.interop.test -servername relay.interop.test \
  -CAfile "$W/pki/ca.pem" -verify_hostname relay.interop.test -verify_return_error </dev/null > "$W/s_client.out" 2>&1
s_rc=$?
set -e
check "$( [[ $s_rc == 0 ]] && ok grep -q 'Verify return code: 0 (ok)' "$W/s_client.out" || echo 1)" "openssl s_client -starttls smtp verifies chain and name relay.interop.test"

# ---------------------------------------------------------------- per-message checks
log "checking every message in tlsrelay's spool"
mkdir -p "$W/show"
"$BIN" queue list --json --config "$RCFG" > "$W/queue.json"
mkdir -p "$W/raw"
for id in $(perl -MJSON::PP -0777 -ne 'print "$_->{id}\n" for @{decode_json($_)}' "$W/queue.json"); do
  "$BIN" queue show "$id" --json --config "$RCFG" > "$W/show/$id.json"
  # the stored bytes, through the running server (the spool is a log, not a file per message)
  "$BIN" queue show "$id" --raw --config "$RCFG" > "$W/raw/$id.msg"
done
# prints "0|1 <TAB> description" per check
perl -MJSON::PP -e '
  use strict; use warnings;
  my ($w, $spool) = @ARGV;
  sub slurp { my $p = shift; open(my $f, "<:raw", $p) or return undef; local $/; my $d = <$f>; close $f; $d }
  my $list = decode_json(slurp("$w/queue.json"));
  my (%by_msgid, %entry);
  for my $e (@$list) {
    my $raw = slurp("$w/raw/$e->{id}.msg");
    next unless defined $raw;
    my ($hdr) = split /\r\n\r\n/, $raw, 2;
    my @ids = $hdr =~ /^Message-ID:[ \t]*(<[^>\r\n]*>)/mgi;
    push @{$by_msgid{$_}}, $e->{id} for @ids;
    $entry{$e->{id}} = $e;
  }
  sub out { my ($ok, $d) = @_; print(($ok ? 0 : 1), "\t", $d, "\n"); }
  open(my $man, "<", "$w/msg/manifest") or die;
  while (my $line = <$man>) {
    chomp $line;
    my ($name, $msgid, $from, $rcpts) = split /\t/, $line;
    my $hop = $name eq "direct" ? "direct" : "via Postfix";
    my $ids = $by_msgid{"<$msgid>"} || [];
    my $tag = "msg $name ($hop)";
    if (@$ids != 1) { out(0, "$tag: exactly one queued message with Message-ID <$msgid> (found " . scalar(@$ids) . ")"); next; }
    my $id = $ids->[0]; my $e = $entry{$id};
    my @want = split /,/, $rcpts;
    # Postfix may hand over the recipients of one message in another order: compare as sets
    my $env_ok = $e->{sender} eq $from && join(",", sort @{$e->{recipients}}) eq join(",", sort @want);
    out($env_ok, "$tag: queued as $id with sender <$from> and recipients " . join(" ", map {"<$_>"} @want)
        . ($env_ok ? "" : " (got <$e->{sender}> " . join(" ", map {"<$_>"} @{$e->{recipients}}) . ")"));
    my $raw = slurp("$w/raw/$id.msg");
    my $sent = slurp("$w/msg/$name.eml");
    my $sent_body = slurp("$w/msg/$name.body");
    # strip the one Received header tlsrelay added (first line + TAB continuation lines)
    my $received = $raw =~ s/\A(Received: [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*)// ? $1 : "";
    my $has_received_tls = $received =~ /^\tby relay\.interop\.test \(tlsrelay\) with ESMTPS id \Q$id\E\r\n\t\(version=TLSv1\.[23] cipher=/m;
    out($has_received_tls && $e->{size} == length($received) + length($raw),
        "$tag: starts with one tlsrelay Received header recording TLS, size field matches the file");
    my ($hdr, $body) = split /\r\n\r\n/, $raw, 2;
    $body //= "";
    my ($mid) = $hdr =~ /^Message-ID:[ \t]*(<[^>\r\n]*>)/mi;
    out(defined $mid && $mid eq "<$msgid>", "$tag: Message-ID header is <$msgid>");
    my $same = $body eq $sent_body;
    my $detail = "";
    unless ($same) {
      my $i = 0; $i++ while $i < length($body) && $i < length($sent_body) && substr($body, $i, 1) eq substr($sent_body, $i, 1);
      $detail = sprintf(" (sent %d octets, stored %d, first difference at octet %d: sent %s stored %s)", length($sent_body), length($body), $i,
        JSON::PP->new->allow_nonref->ascii->encode(substr($sent_body, $i, 40)), JSON::PP->new->allow_nonref->ascii->encode(substr($body, $i, 40)));
    }
    out($same, "$tag: body byte-identical to what was submitted (" . length($sent_body) . " octets)$detail");
    # the whole message: ours, unchanged, after the Received header(s) of the MTAs in between
    my $rest = $raw;
    if ($name ne "direct") { $rest =~ s/\AReceived: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*//; }
    out($rest eq $sent, "$tag: after " . ($name eq "direct" ? "our Received header" : "the tlsrelay and Postfix Received headers")
        . " the stored message equals the submitted one byte for byte");
    my $show = decode_json(slurp("$w/show/$id.json") // "{}");
    if ($name ne "direct" and $name % 3 == 0) {
      my $bt = $show->{envelope}{body} // "none";
      out($bt eq "eightbitmime", "$tag: 8-bit message relayed by Postfix with BODY=8BITMIME, not downgraded (envelope body: $bt)");
    }
    my $tls = $show->{envelope}{client}{tls} // "none";
    my $want_tls = $name eq "direct" ? qr/^TLSv1\.3/ : qr/^TLSv1\.[23]/;
    out($tls =~ $want_tls, "$tag: queue show records the inbound session as TLS: $tls");
  }
' "$W" "$W/relay/spool" > "$W/checks.tsv" || fatal "the spool checker crashed"
while IFS=$'\t' read -r ok desc; do
  if [[ $ok == 0 ]]; then PASS=$((PASS + 1)); else FAIL=$((FAIL + 1)); FAILED_CHECKS+=("$desc"); echo "FAIL  $desc"; fi
done < "$W/checks.tsv"
echo "   per-message checks: $(grep -c $'^0\t' "$W/checks.tsv" || true) passed, $(grep -c $'^1\t' "$W/checks.tsv" || true) failed (only failures are listed)"

# ---------------------------------------------------------------- Postfix's side of the relay hop
log "Postfix maillog: the hop to [127.0.0.1]:$RELAY_PORT"
ML=$PF/maillog
hop="127.0.0.1\[127.0.0.1\]:$RELAY_PORT"
hop_txt="127.0.0.1[127.0.0.1]:$RELAY_PORT"
n_rcpts=$(awk -F'\t' '$1 != "direct" { n += split($4, a, ",") } END { print n + 0 }' "$W/msg/manifest")
n_sent=$(grep -c "relay=$hop,.*status=sent" "$ML" || true)                 # one line per recipient
n_sent_msgs=$(grep "relay=$hop,.*status=sent" "$ML" | awk '{ print $6 }' | sort -u | wc -l)  # distinct queue ids
n_tls=$(grep -cE "(Trusted|Untrusted|Anonymous|Verified) TLS connection established to $hop" "$ML" || true)
n_trusted=$(grep -c "Trusted TLS connection established to $hop" "$ML" || true)
n_deferred=$(grep -c "status=deferred" "$ML" || true)
n_bounced=$(grep -cE "status=(bounced|expired)" "$ML" || true)
check $((n_sent_msgs != N || n_sent != n_rcpts)) "Postfix logged status=sent via $hop_txt for all $N messages ($n_sent_msgs) and $n_rcpts recipients ($n_sent)"
check $((n_tls == 0)) "Postfix logged TLS connections to $hop_txt ($n_tls): $(grep -m1 -oE '(Trusted|Untrusted|Anonymous|Verified) TLS connection established to .*' "$ML" || echo none)"
check $((n_trusted == 0 || n_trusted != n_tls)) "every TLS connection to tlsrelay was Trusted (chain verified with the test CA): $n_trusted of $n_tls"
check $((n_deferred != 0 || n_bounced != 0)) "no deferred or bounced deliveries ($n_deferred deferred, $n_bounced bounced)"
check $(grep -qE "warning|fatal|panic" "$ML" && echo 1 || echo 0) "no warning/fatal/panic in Postfix's maillog"
check $(grep -qE " (ERROR|WARN) " "$W/tlsrelay.log" && echo 1 || echo 0) "no ERROR/WARN in tlsrelay's log"

# ---------------------------------------------------------------- shutdown
kill -TERM "$RELAY_PID"
stopped=1
for _ in $(seq 100); do kill -0 "$RELAY_PID" 2>/dev/null || { stopped=0; break; }; sleep 0.1; done
relay_rc=0; [[ $stopped == 0 ]] && { wait "$RELAY_PID" || relay_rc=$?; }
check $((stopped != 0 || relay_rc != 0)) "tlsrelay stops cleanly on SIGTERM (exit ${relay_rc})"
[[ $stopped == 0 ]] && RELAY_PID=

# ---------------------------------------------------------------- summary
echo
echo "Summary: $N messages client -> Postfix 127.0.0.1:$PF_PORT -> (STARTTLS, encrypt) -> tlsrelay 127.0.0.1:$RELAY_PORT,"
echo "         plus 1 message swaks -> tlsrelay directly (STARTTLS, --tls-verify). $(( $(date +%s) - T0 ))s in all."
if (( FAIL > 0 )); then
  echo "Failed checks:"; printf '  - %s\n' "${FAILED_CHECKS[@]}"
  dump_logs
fi
echo "$PASS passed, $FAIL failed"
(( FAIL == 0 ))
