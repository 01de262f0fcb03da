#!/bin/bash
# DANE interop test: tlsrelay against the shared loopback test bed (knot with a signed fake root,
# unbound, Postfix MX hosts on 127.0.0.10-13:25, and a reference Postfix DANE client), compared
# domain by domain with what Postfix's own DANE code (the test bed's `dane` instance) decides.
#
# What it does:
#   1. sets the test bed up from the scripts in $TESTBED into a fresh TB=$(mktemp -d)
#      (installing its Debian packages first if any are missing);
#   2. runs tlsrelay (validating DNSSEC itself against knot, trust anchor = the fake root's
#      DNSKEY, extra_roots = the test bed CA) and submits one message to user@D for each test
#      domain D, and the same message to the Postfix `dane` instance on 127.0.0.1:2526;
#   3. waits (bounded) until each tlsrelay message was delivered or had an attempt, and until
#      Postfix logged a status for each;
#   4. compares the verdicts: delivered / deferred, how tlsrelay authenticated (outcome records:
#      auth, result) and, for delivered mail, that it really reached the MX's Maildir (and, for
#      deferred mail, that it did not). Where tlsrelay is stricter than Postfix on purpose
#      (tlsrelay never falls back to unauthenticated TLS) the row says "differs by design: ..."
#      and passes only when tlsrelay's verdict is the stricter one it should be.
#   5. prints a table and, last, "<N> passed, <M> failed"; exits non-zero on any failure.
#
# Everything started here is stopped on exit, also on failure (tlsrelay by PID, the test bed
# by its own teardown.sh for this TB), and TB is deleted (KEEP_WORK=1 keeps it).
#
# Needs root (apt-get, Postfix, ports 25/53/443 on 127.x). The test bed uses fixed loopback
# addresses, so only one test bed can run at a time: the script refuses to start when they are
# taken, and two runs of this script queue on a lock.
#
# Env: TESTBED (default <checkout>/../shared/testbed), TLSRELAY_BIN (default
#      <checkout>/target/debug/tlsrelay, built with `cargo build` when missing),
#      WAIT_TIMEOUT (seconds for the deliveries, default 30), KEEP_WORK=1,
#      TESTBED_VERIFY=1 (also run the test bed's own verify.sh after setting it up).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TESTBED=${TESTBED:-$HERE/../../../shared/testbed}
BIN=${TLSRELAY_BIN:-$ROOT/target/debug/tlsrelay}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-30}
DOMAINS=(example.test dane-ta.example.test badcert.example.test notls.example.test
         notlsa.example.test unsigned.test broken.test expired.test)
T0=$(date +%s)

log() { printf '== %s\n' "$*"; }
die() { echo "ERROR: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "run as root (the test bed needs apt-get, Postfix and ports 25/53/443)"
[[ -d $TESTBED && -x $TESTBED/setup-dns.sh ]] || die "no test bed at $TESTBED (set TESTBED)"
TESTBED=$(cd "$TESTBED" && pwd)
[[ $WAIT_TIMEOUT =~ ^[0-9]+$ ]] || die "WAIT_TIMEOUT must be a number of seconds"

# ---------------------------------------------------------------- one test bed at a time
exec 9>/tmp/tlsrelay-dane-testbed.lock
flock -w 300 9 || die "another dane_testbed.sh run held the lock for 300 s"
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
TB=$(mktemp -d /tmp/dane-testbed.XXXXXX)
chmod 755 "$TB"              # Postfix (user postfix) and nginx (www-data) must reach their files
W=$TB/relay
mkdir -p "$TB/run" "$TB/logs" "$W"
RELAY_PID=
TB_STARTED=0
DUMPED=0

dump_relay_log() {
  [[ $DUMPED == 1 ]] && return 0
  DUMPED=1
  echo "---- tail of tlsrelay's stderr ($W/tlsrelay.log)"
  tail -n 40 "$W/tlsrelay.log" 2>/dev/null || true
  echo "----"
}

stop_relay() {
  [[ -n $RELAY_PID ]] || return 0
  if kill -0 "$RELAY_PID" 2>/dev/null; then
    kill -TERM "$RELAY_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$RELAY_PID" 2>/dev/null && { echo "tlsrelay did not stop on SIGTERM; killing it"; kill -KILL "$RELAY_PID" 2>/dev/null; }
  fi
  wait "$RELAY_PID" 2>/dev/null
  RELAY_PID=
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [[ $rc != 0 && -s $W/tlsrelay.log ]] && dump_relay_log
  stop_relay
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
for c in knotd keymgr kdig ldns-signzone unbound unbound-control dig delv postfix swaks nginx curl openssl; do
  command -v "$c" >/dev/null || { need_pkgs=1; break; }
done
perl -MIO::Socket::SSL -MNet::SSLeay -MJSON::PP -e1 2>/dev/null || need_pkgs=1
if [[ $need_pkgs == 1 ]]; then
  log "installing the test bed's packages ($TESTBED/install-packages.sh)"
  # current package lists first; one apt-get update only if that fails
  if ! SKIP_APT_UPDATE=1 timeout 900 "$TESTBED/install-packages.sh" > "$TB/logs/install.log" 2>&1 </dev/null; then
    timeout 900 "$TESTBED/install-packages.sh" > "$TB/logs/install.log" 2>&1 </dev/null ||
      { tail -n 30 "$TB/logs/install.log"; die "installing the test bed's packages failed"; }
  fi
fi

log "setting up the test bed from $TESTBED in TB=$TB"
TB_STARTED=1
for step in setup-pki.sh setup-dns.sh setup-postfix.sh start-https.sh; do
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
for ap in 127.0.0.53:53 127.0.0.10:25 127.0.0.11:25 127.0.0.12:25 127.0.0.13:25 127.0.0.1:2526; do
  port_in_use "${ap%:*}" "${ap#*:}" || die "test bed is not listening on $ap after setup"
done
[[ -s $TB/dns/root-anchor.dnskey && -s $TB/pki/ca.pem ]] || die "test bed trust anchor or CA missing"

# The two "floor" domains (no usable DANE): tlsrelay needs a WebPKI-valid certificate for the MX
# host name. Whether the test bed's MX certificate names that host decides the expected verdict.
mx_of() { kdig @127.0.0.53 +short +time=2 +retry=1 MX "$1" | awk 'NR==1 { sub(/\.$/, "", $2); print $2 }'; }
cert_names() { openssl x509 -in "$TB/pki/mx.pem" -noout -ext subjectAltName | grep -qiF "DNS:$1"; }
NOTLSA_MX=$(mx_of notlsa.example.test) || true
UNSIGNED_MX=$(mx_of unsigned.test) || true
[[ -n $NOTLSA_MX && -n $UNSIGNED_MX ]] || die "cannot read the MX of notlsa.example.test / unsigned.test from knot"
NOTLSA_NAMED=0; cert_names "$NOTLSA_MX" && NOTLSA_NAMED=1
UNSIGNED_NAMED=0; cert_names "$UNSIGNED_MX" && UNSIGNED_NAMED=1
echo "   MX of notlsa.example.test: $NOTLSA_MX ($( ((NOTLSA_NAMED)) && echo named || echo NOT named) in the MX certificate);" \
     "MX of unsigned.test: $UNSIGNED_MX ($( ((UNSIGNED_NAMED)) && echo named || echo NOT named))"

# ---------------------------------------------------------------- tlsrelay
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    port_in_use 127.0.0.1 "$p" || { echo "$p"; return 0; }
  done
  return 1
}
RELAY_PORT=$(free_port) || die "no free port"
CFG=$W/tlsrelay.toml
cat > "$CFG" <<EOF
[server]
listen = ["127.0.0.1:$RELAY_PORT"]
hostname = "relay.interop.test"
relay_networks = ["127.0.0.0/8"]

[spool]
dir = "$W/spool"

[delivery]
port = 25
# The test bed's MX hosts listen on 127.0.0.x.
allow_loopback_destinations = true
retry_schedule = ["1h"]
queue_scan_interval = "1s"
connect_timeout = "5s"
command_timeout = "30s"
data_timeout = "30s"
# floor = "verify" (the default): without DANE the MX certificate must be WebPKI-valid for the
# MX host name; the test bed's CA is the only root that can vouch for its hosts.
extra_roots = ["$TB/pki/ca.pem"]

[dns]
# knot, authoritative for the whole fake tree; tlsrelay validates DNSSEC itself
nameservers = ["127.0.0.53:53"]
trust_anchor_file = "$TB/dns/root-anchor.dnskey"
timeout = "2s"
attempts = 2
EOF
"$BIN" config check "$CFG" > "$W/config-check.out" 2>&1 || { cat "$W/config-check.out"; die "tlsrelay config check rejected $CFG"; }
log "starting tlsrelay on 127.0.0.1:$RELAY_PORT"
NO_COLOR=1 "$BIN" serve --config "$CFG" </dev/null > "$W/tlsrelay.out" 2> "$W/tlsrelay.log" &
RELAY_PID=$!
for _ in $(seq 150); do
  port_in_use 127.0.0.1 "$RELAY_PORT" && break
  kill -0 "$RELAY_PID" 2>/dev/null || break
  sleep 0.1
done
port_in_use 127.0.0.1 "$RELAY_PORT" || { dump_relay_log; die "tlsrelay did not start listening on 127.0.0.1:$RELAY_PORT"; }

# ---------------------------------------------------------------- submit
RUN=$(date +%s)-$$
submit() { # server domain who -> prints the queue id from "queued as ID"
  local out=$W/swaks-$3-$2.out
  swaks --server "$1" --helo client.test --from sender@interop.test --to "user@$2" --timeout 15 \
        --header "Subject: DANE interop $2 via $3" --add-header "X-Dane-Interop: $RUN $2 $3" \
        > "$out" 2>&1 </dev/null || true
  sed -n 's/.*queued as \([A-Za-z0-9]*\).*/\1/p' "$out" | tail -n 1
}
log "submitting one message per domain to tlsrelay (127.0.0.1:$RELAY_PORT) and to Postfix dane (127.0.0.1:2526)"
: > "$W/ids.tsv"
for d in "${DOMAINS[@]}"; do
  rid=$(submit "127.0.0.1:$RELAY_PORT" "$d" tlsrelay)
  pid=$(submit 127.0.0.1:2526 "$d" postfix)
  [[ -n $rid ]] || { tail -n 5 "$W/swaks-tlsrelay-$d.out"; echo "tlsrelay did not accept the message to user@$d"; }
  [[ -n $pid ]] || { tail -n 5 "$W/swaks-postfix-$d.out"; echo "Postfix dane did not accept the message to user@$d"; }
  printf '%s\t%s\t%s\n' "$d" "${rid:--}" "${pid:--}" >> "$W/ids.tsv"
done

# ---------------------------------------------------------------- wait
# done when every tlsrelay message is delivered (gone from the queue and an outcome with tls_ok)
# or has had an attempt, and Postfix logged a status for every message
ML=$TB/postfix/dane/maillog
all_done() {
  "$BIN" queue list --json --config "$CFG" > "$W/queue.json" 2>/dev/null || return 1
  perl -MJSON::PP -e '
    my ($w, $ml) = @ARGV;
    local $/; open(my $f, "<", "$w/queue.json") or exit 1; my $q = decode_json(<$f>); close $f;
    my %q = map { $_->{id} => $_ } @$q;
    my $oc = "";
    for my $p (glob("$w/spool/outcomes/*.jsonl")) { open(my $o, "<", $p) or next; $oc .= <$o>; close $o; }
    my %ok; for (split /\n/, $oc) { my $r = eval { decode_json($_) } or next; $ok{$r->{queue_id}} = 1 if $r->{tls_ok}; }
    my $log = ""; if (open(my $m, "<", $ml)) { $log = <$m>; close $m; }
    open(my $ids, "<", "$w/ids.tsv") or exit 1;
    for (split /\n/, <$ids>) {
      my ($d, $rid, $pid) = split /\t/;
      if ($rid ne "-") {
        if ($q{$rid}) { exit 1 if $q{$rid}{attempts} < 1 } else { exit 1 unless $ok{$rid} }
      }
      exit 1 if $pid ne "-" and $log !~ /\b\Q$pid\E: to=<[^>]*>,.* status=/;
    }
    exit 0;
  ' "$W" "$ML"
}
log "waiting (at most ${WAIT_TIMEOUT}s) for tlsrelay's attempts and Postfix's verdicts"
t_wait=$(date +%s)
deadline=$((t_wait + WAIT_TIMEOUT))
while ! all_done; do
  (($(date +%s) >= deadline)) && { echo "   timed out after ${WAIT_TIMEOUT}s; evaluating what there is"; break; }
  sleep 0.5
done
echo "   waited $(($(date +%s) - t_wait))s"
# delivered mail goes through the MX's own queue into its Maildir: give that a moment
MAILDIR=$TB/postfix/mx/mail/catchall/new
for _ in $(seq 20); do
  want=$(perl -MJSON::PP -ne 'BEGIN{$n=0} my $r = eval { decode_json($_) } or next; $n++ if $r->{tls_ok}; END{print $n}' "$W"/spool/outcomes/*.jsonl 2>/dev/null || echo 0)
  have=$(grep -l "^X-Dane-Interop: $RUN .* tlsrelay" "$MAILDIR"/* 2>/dev/null | wc -l)
  ((have >= want)) && break
  sleep 0.5
done
"$BIN" queue list --json --config "$CFG" > "$W/queue.json" 2>/dev/null || echo '[]' > "$W/queue.json"

# ---------------------------------------------------------------- compare
log "verdicts (Postfix = the test bed's reference DANE client; tlsrelay = this build)"
NOTLSA_MX=$NOTLSA_MX NOTLSA_NAMED=$NOTLSA_NAMED UNSIGNED_MX=$UNSIGNED_MX UNSIGNED_NAMED=$UNSIGNED_NAMED \
perl -MJSON::PP -e '
  use strict; use warnings;
  my ($w, $ml, $maildir, $run, $counts) = @ARGV;
  sub slurp { my $p = shift; open(my $f, "<", $p) or return ""; local $/; my $d = <$f>; close $f; $d }
  my %queue = map { $_->{id} => $_ } @{ decode_json(slurp("$w/queue.json") || "[]") };
  my %oc;    # queue id -> [outcome records]
  for my $p (sort glob("$w/spool/outcomes/*.jsonl")) {
    for (split /\n/, slurp($p)) { my $r = eval { decode_json($_) } or next; push @{ $oc{$r->{queue_id}} }, $r; }
  }
  my @ml = split /\n/, slurp($ml);
  my %in_maildir;    # "domain who" -> 1
  for my $f (glob("$maildir/*")) {
    my $t = slurp($f);
    $in_maildir{"$1 $2"} = 1 while $t =~ /^X-Dane-Interop: \Q$run\E (\S+) (\S+)\r?$/mg;
  }

  # Expected verdicts. pf: Postfix dane instance (README table); tr: tlsrelay.
  my $floor = sub {    # MX host, named in the MX certificate?
    my ($mx, $named) = @_;
    return $named ? { pf => "sent", tr => "delivered", auth => "verify", host => $mx }
                  : { pf => "sent", tr => "deferred", auth => "verify", result => "certificate-host-mismatch" };
  };
  my %exp = (
    "example.test"         => { pf => "sent", pf_tls => "Verified", tr => "delivered", auth => "dane", host => "mx1.example.test" },
    "dane-ta.example.test" => { pf => "sent", pf_tls => "Verified", tr => "delivered", auth => "dane", host => "mx2.example.test" },
    "badcert.example.test" => { pf => "deferred", tr => "deferred", auth => "dane", result => "validation-failure" },
    "notls.example.test"   => { pf => "deferred", tr => "deferred", auth => "dane", result => "starttls-not-supported" },
    "notlsa.example.test"  => $floor->($ENV{NOTLSA_MX}, $ENV{NOTLSA_NAMED}),
    "unsigned.test"        => $floor->($ENV{UNSIGNED_MX}, $ENV{UNSIGNED_NAMED}),
    "broken.test"          => { pf => "deferred", tr => "deferred", result => "dnssec-invalid" },
    "expired.test"         => { pf => "deferred", tr => "deferred", result => "dnssec-invalid" },
  );
  my %design = (
    "notlsa.example.test" => $ENV{NOTLSA_NAMED}
      ? "Postfix used opportunistic TLS (no TLSA for $ENV{NOTLSA_MX}; it logged \"%PFTLS% TLS\", the name is not checked); tlsrelay authenticated $ENV{NOTLSA_MX} with WebPKI (its floor)"
      : "Postfix fell back to opportunistic TLS (no TLSA for $ENV{NOTLSA_MX}, authenticated denial); tlsrelay never does: its floor needs a WebPKI-valid certificate for $ENV{NOTLSA_MX}, and the test bed certificate does not name it, so it defers with certificate-host-mismatch (stricter, as intended)",
    "unsigned.test" => ($ENV{UNSIGNED_NAMED}
      ? "Postfix used opportunistic TLS (insecure zone, its TLSA ignored; it logged \"%PFTLS% TLS\", the name is not checked); tlsrelay authenticated $ENV{UNSIGNED_MX} with WebPKI (test bed CA via extra_roots)"
      : "Postfix used opportunistic TLS (insecure zone, its TLSA ignored); tlsrelay never does: its floor needs WebPKI for $ENV{UNSIGNED_MX} and the certificate does not name it (stricter, as intended)")
      . ". The test bed publishes MTA-STS mode enforce for unsigned.test; tlsrelay does not implement MTA-STS yet, so its floor decided (MTA-STS would demand the same WebPKI check)",
  );

  my ($pass, $fail) = (0, 0);
  my @rows; my @notes;
  for my $line (split /\n/, slurp("$w/ids.tsv")) {
    my ($d, $rid, $pid) = split /\t/, $line;
    my $e = $exp{$d};
    my @why;
    # ---- Postfix
    my ($pf, $pf_show, $pf_tls) = ("none", "no status logged", "no");
    if ($pid ne "-") {
      my ($idx, $st, $detail, $spid, $relay);
      for my $i (0 .. $#ml) {
        next unless $ml[$i] =~ /smtp\[(\d+)\]: \Q$pid\E: to=<[^>]*>,(?:.*? relay=([^,]+),)?.* status=(\w+) \((.*)\)\s*$/;
        ($spid, $relay, $st, $detail, $idx) = ($1, $2, $3, $4, $i);
      }
      if (!defined $st) {    # e.g. a deferral logged by the queue manager or the error transport
        for my $i (0 .. $#ml) { ($st, $detail) = ($1, $2) if $ml[$i] =~ /\b\Q$pid\E: to=<[^>]*>,.* status=(\w+) \((.*)\)\s*$/; }
      }
      if (defined $st) {
        $pf = $st;
        my $tls = "";
        if (defined $idx) {
          for (my $i = $idx - 1; $i >= 0; $i--) {
            if ($ml[$i] =~ /smtp\[\Q$spid\E\]: (\w+) TLS connection established to (\S+?):\d+:/) { $tls = $1; last }
            last if $ml[$i] =~ /smtp\[\Q$spid\E\]: [0-9A-F]+: to=/;
          }
        }
        $pf_show = $st eq "sent" ? "sent (" . ($tls ? "$tls TLS" : "no TLS?") . ", " . (($relay // "") =~ s/\[.*//r) . ")"
                                 : "$st (" . (length($detail) > 48 ? substr($detail, 0, 45) . "..." : $detail) . ")";
        push @why, "Postfix: expected TLS $e->{pf_tls}, got " . ($tls || "none") if $e->{pf_tls} and $tls ne $e->{pf_tls};
        $pf_tls = $tls if $tls;
      }
    }
    push @why, "Postfix (reference) $pf, expected $e->{pf}" if $pf ne $e->{pf};
    # ---- tlsrelay
    my ($tr, $tr_show) = ("none", "-");
    my @o = $rid ne "-" ? @{ $oc{$rid} || [] } : ();
    my ($okrec) = grep { $_->{tls_ok} } @o;
    if ($rid eq "-") { $tr = "not accepted" }
    elsif (my $q = $queue{$rid}) {
      $tr = $q->{attempts} >= 1 ? "deferred" : "not attempted";
      $tr = "failed" if $q->{attempts} >= 1 && !@{ $q->{pending} };
    } else { $tr = $okrec ? "delivered" : "gone (bounced?)" }
    if ($tr eq "delivered") {
      $tr_show = ($okrec->{auth} // "-") . " $okrec->{mx_host}";
    } else {
      my @r = map { ($_->{auth} // "-") . "/" . ($_->{result} // "ok") . ($_->{mx_host} ne "" ? " $_->{mx_host}" : "") } @o;
      $tr_show = @r ? join("; ", @r) : ($queue{$rid} ? "no outcome record: " . ($queue{$rid}{last_reason} // "") : "-");
    }
    push @why, "tlsrelay $tr, expected $e->{tr}" if $tr ne $e->{tr};
    if ($tr eq "delivered" and $e->{tr} eq "delivered") {
      push @why, "tlsrelay authenticated with " . ($okrec->{auth} // "nothing") . ", expected $e->{auth}" if ($okrec->{auth} // "") ne $e->{auth};
      push @why, "tlsrelay delivered via $okrec->{mx_host}, expected $e->{host}" if $okrec->{mx_host} ne $e->{host};
      push @why, "tlsrelay message not found in the MX Maildir" unless $in_maildir{"$d tlsrelay"};
    }
    if ($tr eq "deferred" and $e->{tr} eq "deferred") {
      my @m = grep { !$_->{tls_ok} and ($_->{result} // "") eq $e->{result}
                     and (!$e->{auth} or ($_->{auth} // "") eq $e->{auth}) } @o;
      push @why, "tlsrelay recorded no " . ($e->{auth} ? "$e->{auth}/" : "") . "$e->{result} outcome" unless @m;
      push @why, "tlsrelay recorded an authenticated TLS session although it deferred" if $okrec;
      push @why, "tlsrelay message reached the MX Maildir although deferred" if $in_maildir{"$d tlsrelay"};
    }
    # ---- the comparison
    my $pf_v = $pf eq "sent" ? "delivered" : $pf;
    my $note = "";
    (my $design = $design{$d} // "") =~ s/%PFTLS%/$pf_tls/g;
    if ($pf_v ne $tr) {
      if ($pf eq "sent" and $tr eq "deferred" and $design and $e->{tr} eq "deferred") {
        $note = "differs by design: $design";
      } else {
        push @why, "tlsrelay ($tr) and Postfix ($pf) disagree, and not by design";
      }
    } elsif ($design) {
      $note = "same verdict; differs by design: $design";
    } else {
      $note = "agrees with Postfix";
    }
    my $ok = !@why;
    $ok ? $pass++ : $fail++;
    push @rows, [$d, $pf_show, $tr, $tr_show, $ok ? "PASS" : "FAIL"];
    push @notes, sprintf("%-21s %s%s", $d, $note, @why ? ($note ? "; " : "") . "FAILED: " . join("; ", @why) : "");
  }
  my @h = ("domain", "Postfix dane (reference)", "tlsrelay", "tlsrelay auth/result [mx]", "");
  my @wd = map { my $c = $_; my $m = length $h[$c]; for (@rows) { $m = length $_->[$c] if length $_->[$c] > $m } $m } 0 .. 3;
  my $fmt = join("  ", map { "%-${_}s" } @wd) . "  %s\n";
  printf $fmt, @h;
  printf $fmt, map { "-" x $_ } @wd, 4;
  printf $fmt, @$_ for @rows;
  print "\n";
  print "$_\n" for @notes;
  open(my $c, ">", $counts) or die; print $c "$pass $fail\n"; close $c;
' "$W" "$ML" "$MAILDIR" "$RUN" "$W/counts" || die "the comparison crashed"
read -r PASS FAIL < "$W/counts"

# ---------------------------------------------------------------- shutdown
stop_relay
echo
echo "$("$BIN" --version 2>/dev/null || echo tlsrelay) against the test bed in $TB; $(($(date +%s) - T0))s in all."
if ((FAIL > 0)); then
  dump_relay_log
  echo "---- tail of the Postfix dane maillog"
  tail -n 25 "$ML" 2>/dev/null || true
fi
echo "$PASS passed, $FAIL failed"
if ((FAIL > 0)); then exit 1; fi
