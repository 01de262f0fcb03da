#!/bin/bash
# Packaging test: the Debian package of tlsrelay, built, installed and run as a service.
#
# What it does:
#   1. builds the release binary, writes tlsrelay(8) with `tlsrelay manpage`, and builds the
#      package with `cargo deb --no-build` (cargo-deb is installed when missing);
#   2. installs it with `dpkg -i` and checks the installed files (owners, modes, conffile,
#      the tlsrelay system user, the man page);
#   3. `systemd-analyze verify` on the unit, and `systemd-analyze security --offline=true`:
#      the exposure score must be below 2.0;
#   4. as root, `/usr/bin/tlsrelay serve` (finding /etc/tlsrelay/tlsrelay.toml by itself)
#      must refuse to run;
#   5. sets up the shared loopback test bed (DNSSEC DNS + Postfix MX hosts with TLS, as
#      dane_testbed.sh does), points the installed configuration at it (as an administrator
#      would edit /etc/tlsrelay/tlsrelay.toml), and starts the unit's ExecStart the way systemd
#      would (PID 1 here is not systemd): as the unit's User/Group, with its UMask, no
#      capabilities, no new privileges, a clean environment, in /;
#   6. relays one message through it to user@example.test, and checks that it reached the MX's
#      Maildir over DANE-authenticated TLS, that the process runs as tlsrelay, that every spool
#      file belongs to tlsrelay with mode 0600 (directories 0700), and `tlsrelay queue list` as root;
#   7. prints PASS/FAIL lines and, last, "<N> passed, <M> failed"; exits non-zero on any failure.
#
# On exit, also on failure: the relay is stopped by PID, the package purged (dpkg --purge), and
# what it left (/etc/tlsrelay, /var/spool/tlsrelay, and the tlsrelay user and group if this
# script created them) removed, so that later tests running tlsrelay without -c do not pick up
# /etc/tlsrelay/tlsrelay.toml. The script refuses to run when tlsrelay is already installed.
#
# Needs root. Env: TESTBED (default <checkout>/../shared/testbed), WAIT_TIMEOUT (seconds for the
# delivery, default 60), KEEP_WORK=1 (keep the temporary directory).
# No `set -e`: each check records its result; steps the rest depends on die explicitly.
set -uo pipefail
exec </dev/null
export DEBIAN_FRONTEND=noninteractive

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TESTBED=${TESTBED:-$ROOT/../shared/testbed}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
UNIT=/usr/lib/systemd/system/tlsrelay.service
ETC=/etc/tlsrelay/tlsrelay.toml
SPOOL=/var/spool/tlsrelay
T0=$(date +%s)

log() { printf '== %s\n' "$*"; }
die() { echo "ERROR: $*" >&2; exit 2; }
PASS=0
FAIL=0
FAILED_CHECKS=()
check() { # rc description
  if [[ $1 == 0 ]]; then PASS=$((PASS + 1)); echo "PASS  $2"
  else FAIL=$((FAIL + 1)); FAILED_CHECKS+=("$2"); echo "FAIL  $2"; fi
}

[[ $(id -u) == 0 ]] || die "run as root (dpkg -i, apt-get, the test bed)"
[[ -x $TESTBED/setup-dns.sh ]] || die "no test bed at $TESTBED (set TESTBED)"
TESTBED=$(cd "$TESTBED" && pwd)
if dpkg-query -W -f '${Status}' tlsrelay 2>/dev/null | grep -q installed || [[ -e /etc/tlsrelay ]]; then
  die "tlsrelay is already installed (or /etc/tlsrelay exists): this test installs and purges it; remove it first"
fi

# ---------------------------------------------------------------- one test bed at a time
exec 9>/tmp/tlsrelay-dane-testbed.lock
flock -w 600 9 || die "another test bed run held the lock for 600 s"
port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
busy=()
for ap in 127.0.0.53:53 127.0.0.1:5353 127.0.0.10:25 127.0.0.11:25 127.0.0.1:2525 127.0.0.1:2526 127.0.0.30:443; do
  port_in_use "${ap%:*}" "${ap#*:}" && busy+=("$ap")
done
((${#busy[@]} == 0)) || die "test bed addresses already in use (${busy[*]}): is another test bed running? Stop it with its teardown.sh first."

# ---------------------------------------------------------------- state and cleanup
export TB
TB=$(mktemp -d /tmp/package-test.XXXXXX)
chmod 755 "$TB"
W=$TB/relay
mkdir -p "$TB/logs" "$W"
USER_EXISTED=0; getent passwd tlsrelay >/dev/null && USER_EXISTED=1
GROUP_EXISTED=0; getent group tlsrelay >/dev/null && GROUP_EXISTED=1
RELAY_PID=
TB_STARTED=0
INSTALLED=0

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
  if [[ $rc != 0 && -s $W/tlsrelay.log ]]; then
    echo "---- tail of tlsrelay's stderr"; tail -n 30 "$W/tlsrelay.log"; echo "----"
  fi
  stop_relay
  if [[ $INSTALLED == 1 ]]; then
    dpkg --purge tlsrelay > "$TB/logs/purge.log" 2>&1 || { echo "dpkg --purge tlsrelay failed:"; cat "$TB/logs/purge.log"; }
  fi
  # what purge keeps on purpose (the spool may hold mail; system users stay) is test mail here
  rm -rf /etc/tlsrelay "$SPOOL"
  [[ $USER_EXISTED == 1 ]] || userdel tlsrelay 2>/dev/null
  [[ $GROUP_EXISTED == 1 ]] || groupdel tlsrelay 2>/dev/null
  if [[ $TB_STARTED == 1 ]]; then
    TB=$TB timeout 120 "$TESTBED/teardown.sh" $([[ ${KEEP_WORK:-0} == 1 ]] || echo --purge) > "$TB/logs/teardown.log" 2>&1 ||
      { echo "test bed teardown reported a problem:"; tail -n 20 "$TB/logs/teardown.log"; }
  fi
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work directory kept: $TB"; else rm -rf "$TB"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- packages this script needs
need=()
for c in systemd-analyze:systemd adduser:adduser setpriv:util-linux gzip:gzip man:man-db readelf:binutils; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if ((${#need[@]})); then
  log "apt-get install ${need[*]}"
  apt-get install -y -q --no-install-recommends "${need[@]}" > "$TB/logs/apt.log" 2>&1 ||
    { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >> "$TB/logs/apt.log" 2>&1; } ||
    { tail -n 20 "$TB/logs/apt.log"; die "apt-get install ${need[*]} failed"; }
fi
need_pkgs=0
for c in knotd keymgr kdig ldns-signzone unbound unbound-control dig delv postfix swaks nginx curl openssl; do
  command -v "$c" >/dev/null || { need_pkgs=1; break; }
done
perl -MIO::Socket::SSL -MNet::SSLeay -MJSON::PP -e1 2>/dev/null || need_pkgs=1
if [[ $need_pkgs == 1 ]]; then
  log "installing the test bed's packages ($TESTBED/install-packages.sh)"
  if ! SKIP_APT_UPDATE=1 timeout 900 "$TESTBED/install-packages.sh" > "$TB/logs/install.log" 2>&1; then
    timeout 900 "$TESTBED/install-packages.sh" > "$TB/logs/install.log" 2>&1 ||
      { tail -n 30 "$TB/logs/install.log"; die "installing the test bed's packages failed"; }
  fi
fi

# ---------------------------------------------------------------- build the package
cd "$ROOT" || die "cannot cd to $ROOT"
if ! cargo deb --version >/dev/null 2>&1; then
  log "cargo install cargo-deb --locked"
  cargo install cargo-deb --locked > "$TB/logs/cargo-deb-install.log" 2>&1 ||
    { tail -n 20 "$TB/logs/cargo-deb-install.log"; die "cargo install cargo-deb failed"; }
fi
TARGET=$(cargo metadata --format-version 1 --no-deps | perl -MJSON::PP -e 'local $/; print decode_json(<STDIN>)->{target_directory}') ||
  die "cargo metadata failed"
log "cargo build --release (target directory $TARGET)"
cargo build --release --locked || die "cargo build --release failed"
"$TARGET/release/tlsrelay" manpage | gzip -9n > "$TARGET/release/tlsrelay.8.gz" || die "tlsrelay manpage failed"
log "cargo deb --no-build"
cargo deb --no-build --locked > "$TB/logs/cargo-deb.log" 2>&1 || { cat "$TB/logs/cargo-deb.log"; die "cargo deb failed"; }
DEB=$(grep -E '\.deb$' "$TB/logs/cargo-deb.log" | tail -n 1)
[[ -f $DEB ]] || { cat "$TB/logs/cargo-deb.log"; die "cargo deb did not say where the package is"; }
echo "   $DEB ($(du -h "$DEB" | cut -f1)); binary $(du -h "$TARGET/release/tlsrelay" | cut -f1)"
check 0 "cargo deb built $(basename "$DEB")"

# ---------------------------------------------------------------- install
log "dpkg -i $(basename "$DEB")"
INSTALLED=1
dpkg -i "$DEB" > "$TB/logs/dpkg-i.log" 2>&1; rc=$?
[[ $rc == 0 ]] || cat "$TB/logs/dpkg-i.log"
check $rc "dpkg -i installs the package"

expect_stat() { # path owner:group mode
  local got; got=$(stat -c '%U:%G %a' "$1" 2>&1)
  [[ $got == "$2 $3" ]]; check $? "$1 is $2 mode $3 (got: $got)"
}
expect_stat /usr/bin/tlsrelay root:root 755
expect_stat "$UNIT" root:root 644
expect_stat /usr/lib/sysusers.d/tlsrelay.conf root:root 644
expect_stat /usr/lib/tmpfiles.d/tlsrelay.conf root:root 644
expect_stat "$ETC" root:root 644
expect_stat /usr/share/man/man8/tlsrelay.8.gz root:root 644
expect_stat "$SPOOL" tlsrelay:tlsrelay 700
cmp -s "$ETC" "$ROOT/deploy/debian/tlsrelay.toml"; check $? "$ETC is deploy/debian/tlsrelay.toml"
dpkg-query -W -f '${Conffiles}\n' tlsrelay | grep -q "^ $ETC "; check $? "$ETC is a conffile"
pw=$(getent passwd tlsrelay || true)
IFS=: read -r _ _ TUID TGID _ THOME TSHELL <<<"$pw"
[[ -n $pw && $TUID -lt 1000 && $TUID -gt 0 && $TSHELL == */nologin ]]
check $? "tlsrelay is a system user with no login shell ($pw)"
readelf -S /usr/bin/tlsrelay > "$W/sections.txt" 2>&1 && ! grep -q '\.debug_info' "$W/sections.txt"
check $? "the installed binary has no debug info ($(du -h /usr/bin/tlsrelay | cut -f1))"
man_text=$(MANWIDTH=100 man -l /usr/share/man/man8/tlsrelay.8.gz 2>/dev/null || zcat /usr/share/man/man8/tlsrelay.8.gz)
grep -q -- '--config' <<<"$man_text" && grep -q 'TLSRELAY_CONFIG' <<<"$man_text" && grep -q "$ETC" <<<"$man_text"
check $? "tlsrelay(8) documents -c/--config, TLSRELAY_CONFIG and $ETC"

# ---------------------------------------------------------------- the unit
log "systemd-analyze verify $UNIT"
systemd-analyze verify "$UNIT" > "$TB/logs/verify.log" 2>&1; rc=$?
cat "$TB/logs/verify.log"
check $rc "systemd-analyze verify accepts the unit"
log "systemd-analyze security --offline=true $UNIT"
systemd-analyze security --offline=true --no-pager "$UNIT" > "$TB/logs/security.log" 2>&1 || true
grep -E '^(✗|→ Overall)|Overall exposure' "$TB/logs/security.log" || tail -n 20 "$TB/logs/security.log"
SCORE=$(sed -n 's/.*Overall exposure level for tlsrelay.service: \([0-9.]*\).*/\1/p' "$TB/logs/security.log")
[[ -n $SCORE ]] && awk -v s="$SCORE" 'BEGIN { exit !(s < 2.0) }'
check $? "systemd-analyze security: exposure ${SCORE:-unknown} is below 2.0"

env -u TLSRELAY_ALLOW_ROOT -u TLSRELAY_CONFIG /usr/bin/tlsrelay serve > "$W/root.out" 2>&1; rc=$?
[[ $rc == 2 ]] && grep -qF "refusing to run as root: set [server] user = \"tlsrelay\" in $ETC" "$W/root.out"
check $? "as root, tlsrelay serve (config found at $ETC) refuses to run: $(head -n 1 "$W/root.out")"

# ---------------------------------------------------------------- a destination: the test bed
log "setting up the test bed from $TESTBED in TB=$TB"
TB_STARTED=1
for step in setup-pki.sh setup-dns.sh setup-postfix.sh start-https.sh; do
  timeout 180 "$TESTBED/$step" > "$TB/logs/$step.log" 2>&1 ||
    { tail -n 30 "$TB/logs/$step.log"; die "test bed $step failed"; }
done
port_in_use 127.0.0.10 25 || die "the test bed MX (127.0.0.10:25) is not listening"
# The administrator's part: trust the test bed's DNSSEC root and CA, allow loopback MX hosts.
install -m 644 "$TB/dns/root-anchor.dnskey" /etc/tlsrelay/testbed-root-anchor.dnskey || die "no trust anchor"
install -m 644 "$TB/pki/ca.pem" /etc/tlsrelay/testbed-ca.pem || die "no test bed CA"
PORT=10025
port_in_use 127.0.0.1 $PORT && PORT=$((20000 + RANDOM % 40000))
perl -0pi -e "s/^\\[server\\]\\n/[server]\\nlisten = [\"127.0.0.1:$PORT\"]\\nhostname = \"relay.package.test\"\\n/m;
  s/^\\[delivery\\]\\n/[delivery]\\nallow_loopback_destinations = true\\nextra_roots = [\"\\/etc\\/tlsrelay\\/testbed-ca.pem\"]\\nretry_schedule = [\"1h\"]\\nqueue_scan_interval = \"1s\"\\nconnect_timeout = \"5s\"\\n/m" "$ETC" ||
  die "cannot edit $ETC"
printf '\n[dns]\nnameservers = ["127.0.0.53:53"]\ntrust_anchor_file = "/etc/tlsrelay/testbed-root-anchor.dnskey"\ntimeout = "2s"\n' >> "$ETC"
runuser -u tlsrelay -- /usr/bin/tlsrelay config check "$ETC" > "$W/config-check.out" 2>&1; rc=$?
cat "$W/config-check.out"
check $rc "tlsrelay config check $ETC (as tlsrelay, with the test bed settings)"

# ---------------------------------------------------------------- run the unit's ExecStart
unit_key() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }
EXEC=$(unit_key ExecStart); UUSER=$(unit_key User); UGROUP=$(unit_key Group); UMASK=$(unit_key UMask)
[[ -n $EXEC && -n $UUSER && -n $UMASK ]] || die "cannot read ExecStart/User/UMask from $UNIT"
log "starting '$EXEC' as $UUSER:$UGROUP with umask $UMASK (as systemd would; PID 1 is not systemd here)"
(
  cd /
  umask "$UMASK"
  # shellcheck disable=SC2086 # ExecStart is a command line
  exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    setpriv --reuid="$UUSER" --regid="$UGROUP" --init-groups --no-new-privs \
      --inh-caps=-all --bounding-set=-all -- $EXEC
) > "$W/tlsrelay.out" 2> "$W/tlsrelay.log" &
RELAY_PID=$!
for _ in $(seq 300); do
  port_in_use 127.0.0.1 $PORT && break
  kill -0 "$RELAY_PID" 2>/dev/null || break
  sleep 0.1
done
port_in_use 127.0.0.1 $PORT; check $? "the service listens on 127.0.0.1:$PORT"
uid_line=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$RELAY_PID/status" 2>/dev/null)
[[ $uid_line == "$TUID $TUID $TUID $TUID" ]]; check $? "the service runs as tlsrelay (uid $TUID; /proc says: $uid_line)"
grep -qF "msg=\"configuration file\" file=$ETC" "$W/tlsrelay.log"
check $? "serve logs the configuration it found: $(grep -m1 -o 'configuration file.*' "$W/tlsrelay.log")"

RUN=$(date +%s)-$$
swaks --server "127.0.0.1:$PORT" --helo client.test --from sender@package.test --to user@example.test \
      --timeout 15 --header "Subject: package test" --add-header "X-Package-Test: $RUN" > "$W/swaks.out" 2>&1
QID=$(sed -n 's/.*queued as \([A-Za-z0-9]*\).*/\1/p' "$W/swaks.out" | tail -n 1)
[[ -n $QID ]] || tail -n 5 "$W/swaks.out"
[[ -n $QID ]]; check $? "the service accepted a message for user@example.test (queued as ${QID:-nothing})"
/usr/bin/tlsrelay queue list > "$W/queue-list.out" 2>&1; rc=$?
cat "$W/queue-list.out"
check $rc "tlsrelay queue list as root (config and spool found without -c; through the control socket)"

log "waiting (at most ${WAIT_TIMEOUT}s) for the delivery to mx1.example.test"
MAILDIR=$TB/postfix/mx/mail/catchall/new
deadline=$(($(date +%s) + WAIT_TIMEOUT))
while ! grep -qs "^X-Package-Test: $RUN" "$MAILDIR"/*; do
  (($(date +%s) >= deadline)) && break
  sleep 0.5
done
grep -qs "^X-Package-Test: $RUN" "$MAILDIR"/*; check $? "the message reached the MX's Maildir ($MAILDIR)"
grep -hs "\"queue_id\":\"$QID\"" "$SPOOL"/outcomes/*.jsonl | grep -q '"tls_ok":true' &&
  grep -hs "\"queue_id\":\"$QID\"" "$SPOOL"/outcomes/*.jsonl | grep -q '"auth":"dane"'
check $? "tlsrelay's outcome record: delivered over TLS authenticated by DANE"
line=$(grep -F "msg=\"recipient delivered\" id=$QID " "$W/tlsrelay.log" | head -n 1)
[[ $line == *" mechanism=dane "* && $line == *" result=delivered "* && $line == *" tls_version=TLSv1."* ]]
check $? "the log has the recipient's line: ${line:-none}"

bad=$(find "$SPOOL" \( ! -user tlsrelay -o ! -group tlsrelay \) -printf '%p %u:%g\n')
[[ -z $bad && $(find "$SPOOL" | wc -l) -gt 3 ]]; check $? "every spool file belongs to tlsrelay ${bad:+(not: $bad)}"
bad=$(find "$SPOOL" \( -type d ! -perm 700 -o -type f ! -perm 600 -o -type s ! -perm 600 \) -printf '%p %m\n')
[[ -z $bad ]]; check $? "spool directories are 0700, files and sockets 0600 ${bad:+(not: $bad)}"

stop_relay_rc=0
kill -TERM "$RELAY_PID"; wait "$RELAY_PID" || stop_relay_rc=$?
RELAY_PID=
check $stop_relay_rc "the service stops cleanly on SIGTERM (exit $stop_relay_rc)"

# ---------------------------------------------------------------- purge
log "dpkg --purge tlsrelay"
dpkg --purge tlsrelay > "$TB/logs/purge.log" 2>&1; rc=$?
cat "$TB/logs/purge.log"
INSTALLED=0
[[ $rc == 0 && ! -e /usr/bin/tlsrelay && ! -e $ETC && ! -e $UNIT ]]
check $? "dpkg --purge removes the binary, the unit and $ETC"

echo "== package test: $(($(date +%s) - T0))s"
if ((FAIL)); then printf 'failed: %s\n' "${FAILED_CHECKS[@]}"; fi
echo "$PASS passed, $FAIL failed"
((FAIL == 0))
