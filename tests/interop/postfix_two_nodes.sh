#!/bin/bash
# Interop test: a real Postfix in front of two tlsrelay nodes that form one fleet (shared
# state in a real redis-server). Postfix hands mail to node 1 (relayhost) and falls back to
# node 2 (smtp_fallback_relay) when node 1 does not answer. Node 1 is stopped half-way: every
# message must still reach a tlsrelay spool, and `tlsrelay cluster status` must show node 1 gone.
# Then Redis is killed too: node 2 goes on alone (mail still accepted), says so in its log and in
# tlsrelay_cluster_redis_up 0, and back to 1 when Redis returns.
#
# Self-contained: a fresh temporary directory; Postfix, redis-server and both nodes listen on free
# 127.0.0.1 ports and are stopped by PID on exit. /etc/postfix and the system services are not used.
#
# Env: N (messages per phase, default 10), TLSRELAY_BIN (default target/debug/tlsrelay, built when
#      missing), WAIT_TIMEOUT (seconds, default 60), KEEP_WORK=1 (keep the temp dir).
# Output: PASS/FAIL lines and a last line "<passed> passed, <failed> failed"; exit 0 only when all pass.
set -euo pipefail

N=${N:-10}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${TLSRELAY_BIN:-$ROOT/target/debug/tlsrelay}
export TLSRELAY_ALLOW_ROOT=1 NO_COLOR=1

[[ $(id -u) == 0 ]] || { echo "run as root (needs apt-get and postfix)" >&2; exit 2; }
log() { printf '== %s\n' "$*"; }

if ! command -v postfix >/dev/null || ! command -v swaks >/dev/null || ! command -v redis-server >/dev/null; then
  log "installing postfix swaks redis-server"
  export DEBIAN_FRONTEND=noninteractive
  tmp_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; tmp_policy=1
  fi
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  apt-get install -y -q --no-install-recommends postfix swaks redis-server </dev/null ||
    { apt-get update -q </dev/null && apt-get install -y -q --no-install-recommends postfix swaks redis-server </dev/null; }
  [[ $tmp_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
fi
if [[ ! -x $BIN ]]; then (cd "$ROOT" && cargo build); fi

W=$(mktemp -d /tmp/tlsrelay-two-nodes.XXXXXX)
chmod 755 "$W"
PF=$W/postfix; PFETC=$PF/etc
PIDS=(); PF_STARTED=0; PASS=0; FAIL=0

cleanup() {
  local rc=$?
  set +e
  [[ $PF_STARTED == 1 ]] && postfix -c "$PFETC" stop >/dev/null 2>&1
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

check() { if [[ $1 == 0 ]]; then PASS=$((PASS + 1)); echo "PASS  $2"; else FAIL=$((FAIL + 1)); echo "FAIL  $2"; fi; }
fatal() {
  echo "FATAL: $*"; tail -n 30 "$PF/maillog" "$W"/node*.log 2>/dev/null || true
  echo "$PASS passed, $((FAIL + 1)) failed"; exit 1
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000)); [[ " $* " == *" $p "* ]] && continue
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  return 1
}
wait_port() { local i; for ((i = 0; i < $2 * 10; i++)); do port_in_use "$1" && return 0; sleep 0.1; done; return 1; }

REDIS_PORT=$(free_port); P1=$(free_port "$REDIS_PORT"); P2=$(free_port "$REDIS_PORT" "$P1")
PF_PORT=$(free_port "$REDIS_PORT" "$P1" "$P2")
M2=$(free_port "$REDIS_PORT" "$P1" "$P2" "$PF_PORT")

start_redis() {
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no >>"$W/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=($!)
  wait_port "$REDIS_PORT" 10 || fatal "redis-server did not listen"
}
log "redis-server on 127.0.0.1:$REDIS_PORT"
start_redis

# The configuration of node $1 on port $2: the README's two-node example, with test paths.
node_config() {
  mkdir -p "$W/node$1"
  cat > "$W/node$1/tlsrelay.toml" <<EOF
[server]
listen = ["127.0.0.1:$2"]
hostname = "relay$1.interop.test"
relay_networks = ["127.0.0.0/8"]

[spool]
dir = "$W/node$1/spool"

# This test is about the hand-over from Postfix: the mail stays queued.
[delivery]
enabled = false

[cluster]
redis = "redis://127.0.0.1:$REDIS_PORT/0"
node = "relay$1"
heartbeat_interval = "1s"
EOF
  [[ $1 == 2 ]] && printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$M2" >> "$W/node$1/tlsrelay.toml"
  "$BIN" config check "$W/node$1/tlsrelay.toml" >/dev/null || fatal "config check rejected node $1"
}
start_node() {
  "$BIN" serve --config "$W/node$1/tlsrelay.toml" </dev/null 2>>"$W/node$1.log" &
  NODE_PID[$1]=$!; PIDS+=($!)
  wait_port "$2" 15 || fatal "node $1 did not listen on $2"
}
declare -A NODE_PID
node_config 1 "$P1"; node_config 2 "$P2"
start_node 1 "$P1"; start_node 2 "$P2"

log "Postfix on 127.0.0.1:$PF_PORT: relayhost node 1 ($P1), smtp_fallback_relay node 2 ($P2)"
mkdir -p "$PFETC" "$PF/spool" "$PF/data"; chown postfix:postfix "$PF/data"
cat > "$PFETC/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
maillog_file = $PF/maillog
maillog_file_prefixes = /var, /dev/stdout, $W
syslog_name = postfix-two-nodes
inet_protocols = ipv4
inet_interfaces = 127.0.0.1
myhostname = org-mta.interop.test
mydomain = interop.test
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject
# The fleet: node 1 first, node 2 when node 1 does not answer.
relayhost = [127.0.0.1]:$P1
smtp_fallback_relay = [127.0.0.1]:$P2
smtp_connect_timeout = 5s
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
EOF
cat > "$PFETC/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
EOF
postfix -c "$PFETC" check >/dev/null 2>&1 || fatal "postfix check failed"
PF_STARTED=1
postfix -c "$PFETC" start >/dev/null 2>&1 || fatal "postfix start failed"
wait_port "$PF_PORT" 15 || fatal "Postfix did not listen"

count() { "$BIN" queue list --json --config "$W/node$1/tlsrelay.toml" 2>/dev/null | grep -o "\"id\"" | wc -l || true; }
pf_count() { find "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" "$PF/spool/maildrop" -type f 2>/dev/null | wc -l || true; }
submit() { # phase
  local i fails=0
  for i in $(seq "$N"); do
    swaks --server "127.0.0.1:$PF_PORT" --timeout 30 --helo client.interop.test --from "s@interop.test" \
      --to "rcpt-$1-$i@example.test" --header "Subject: two nodes $1 $i" >/dev/null 2>&1 </dev/null || fails=$((fails + 1))
  done
  check "$fails" "Postfix accepted all $N messages of phase $1 ($fails refused)"
}
wait_total() { # expected total; prints "node1 node2"
  local deadline=$(( $(date +%s) + WAIT_TIMEOUT )) a b
  while :; do
    a=${FROZEN1:-$(count 1)}; b=$(count 2)
    [[ $((a + b)) -ge $1 && $(pf_count) == 0 ]] && break
    (( $(date +%s) >= deadline )) && break
    sleep 0.5
  done
  echo "$a $b"
}

log "phase 1: both nodes up"
submit 1
read -r a b < <(wait_total "$N")
check $(( a + b != N )) "all $N messages reached the fleet (node 1: $a, node 2: $b)"
sleep 2
"$BIN" cluster status --config "$W/node1/tlsrelay.toml" > "$W/status1" 2>&1 || true
check "$(grep -q '^node relay1 up' "$W/status1" && grep -q '^node relay2 up' "$W/status1"; echo $?)" \
  "cluster status shows both nodes up: $(tr '\n' '|' < "$W/status1")"

log "phase 2: node 1 stopped"
kill -TERM "${NODE_PID[1]}"; wait "${NODE_PID[1]}" 2>/dev/null || true
FROZEN1=$a
submit 2
read -r a b < <(wait_total $((2 * N)))
check $(( a + b != 2 * N )) "with node 1 down all $((2 * N)) messages are in the fleet (node 1: $a, node 2: $b)"
check $(( b < N )) "node 2 took at least the $N messages of phase 2 ($b)"
grep -q "127.0.0.1\[127.0.0.1\]:$P2" "$PF/maillog"; check $? "Postfix's log shows delivery to the fallback node 2"
sleep 4
"$BIN" cluster status --config "$W/node2/tlsrelay.toml" > "$W/status2" 2>&1 || true
check "$(grep -q '^node relay1 gone' "$W/status2" && grep -q '^node relay2 up' "$W/status2"; echo $?)" \
  "cluster status shows node 1 gone, node 2 up: $(tr '\n' '|' < "$W/status2")"

log "phase 3: Redis stopped too: node 2 goes on alone"
kill -KILL "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
FROZEN1=$a
submit 3
read -r a b < <(wait_total $((3 * N)))
check $(( a + b != 3 * N )) "with Redis down all $((3 * N)) messages are in the fleet (node 1: $a, node 2: $b)"
redis_up() { curl -s "http://127.0.0.1:$M2/metrics" | grep -q "^tlsrelay_cluster_redis_up $1\$"; }
for _ in $(seq 50); do redis_up 0 && break; sleep 0.2; done
redis_up 0; check $? "node 2's /metrics says tlsrelay_cluster_redis_up 0"
grep -q 'msg="cluster: Redis unreachable' "$W/node2.log"; check $? "node 2 logged that Redis is unreachable"
start_redis
for _ in $(seq 50); do redis_up 1 && break; sleep 0.2; done
redis_up 1; check $? "Redis back: tlsrelay_cluster_redis_up 1"
grep -q 'msg="cluster: Redis reachable' "$W/node2.log"; check $? "node 2 logged that Redis is reachable again"

echo "$PASS passed, $FAIL failed"
[[ $FAIL == 0 ]]
