#!/usr/bin/env bash
# A consortium across five hosts on one machine, each a network namespace of its own.
#
#   operator      10.231.0.1   'operator serve' (TLS, SuperNode authentication),
#                              the ledger on the real PostgreSQL server (Unix socket)
#   university-a  10.231.0.11  'client enroll', admitted, 'client start'
#   university-b  10.231.0.12  the same
#   company-c     10.231.0.13  the same
#   rogue         10.231.0.14  enrolled but never admitted: must be refused
#
# The hosts hang off a bridge inside a sixth namespace (the switch), so no
# packet of the test touches the machine's own network. Each host has its own
# folder under WORK (the first argument, default: a new temporary folder) and
# runs the 'fedcommons' found on PATH. The operator runs a full policy with
# 'operator run'; then the checks: the run finished; participants reach the
# SuperLink port and nothing else on the operator host; no participant data
# and no plaintext update are in any operator file or the ledger's database;
# the rogue host was refused; 'audit verify --receipts' with the receipts
# gathered from the three hosts is intact.
#
# Exit 0: passed; 77: skipped (network namespaces cannot be created here, the
# reason printed); anything else: failed. Everything the script made
# (namespaces, processes in them, the ledger database) is removed when it
# ends, also on failure or Ctrl-C. Needs root (ip netns), PostgreSQL with
# its socket in $PGSOCKET (default /var/run/postgresql) and user $PGUSER
# (default postgres).
set -euo pipefail

FEDCOMMONS=$(command -v fedcommons) || { echo "netns-test: no 'fedcommons' on PATH" >&2; exit 2; }
PYTHON=$(head -n1 "$FEDCOMMONS" | sed 's/^#!//')  # the interpreter fedcommons runs in
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-$(mktemp -d -t fedcommons-netns.XXXXXX)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
PGSOCKET=${PGSOCKET:-/var/run/postgresql}
PGUSER=${PGUSER:-postgres}
ROUNDS=${NETNS_ROUNDS:-3}
ID=$(( $$ % 100000 ))
PREFIX="fc${ID}"
SUBNET=10.231.0
PORT=9092
DB="fedcommons_netns_${ID}"
LEDGER="postgresql://${PGUSER}@/${DB}?host=${PGSOCKET}"

declare -A ADDRESS=([operator]=1 [university-a]=11 [university-b]=12 [company-c]=13 [rogue]=14)
declare -A KIND=([university-a]=academia [university-b]=academia [company-c]=industry [rogue]=industry)
declare -A LICENCE=([university-a]=CC-BY-4.0 [university-b]=CC-BY-NC-4.0 [company-c]=CC-BY-4.0 [rogue]=CC-BY-4.0)
INSTITUTIONS=(university-a university-b company-c)
HOSTS=(operator "${INSTITUTIONS[@]}" rogue)
declare -A STARTED=()  # host name -> PID of its long-running command

say() { printf '[netns-test %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
ns() { echo "${PREFIX}-$1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
enter() {  # enter HOST CMD...: become CMD on HOST, in its folder, with its own Flower home
  local host=$1; shift
  exec ip netns exec "$(ns "$host")" env HOME="$WORK/$host" FLWR_HOME="$WORK/$host/flwr-home" \
    FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 \
    bash -c 'cd "$0" && exec "$@"' "$WORK/$host" "$@"
}
on() {  # run it and wait (in the background, so that Ctrl-C or SIGTERM cleans up at once)
  enter "$@" &
  wait $!
}  # 'enter HOST CMD &' starts a long-running one with $! its own PID
reachable() {  # reachable FROM-HOST ADDRESS PORT: a TCP connection succeeds
  ip netns exec "$(ns "$1")" timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null
}

# -- skip only where namespaces cannot be made --------------------------------
if ! command -v ip >/dev/null; then echo "SKIP: no 'ip' command (iproute2)"; exit 77; fi
if ! ip netns add "${PREFIX}-probe" 2>/dev/null; then
  echo "SKIP: cannot create network namespaces here (needs root with CAP_SYS_ADMIN)"; exit 77
fi
ip netns del "${PREFIX}-probe"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  say "cleaning up"
  for host in "${!STARTED[@]}"; do kill -TERM "${STARTED[$host]}" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local left=""
    for name in "${HOSTS[@]}"; do left+=$(ip netns pids "$(ns "$name")" 2>/dev/null || true); done
    [[ -z $left ]] && break
    sleep 0.2
  done
  for name in "${HOSTS[@]}"; do  # whatever is still in a namespace we made was started here
    for pid in $(ip netns pids "$(ns "$name")" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$(ns "$name")" 2>/dev/null || true
  done
  ip netns del "$(ns switch)" 2>/dev/null || true
  psql -q -h "$PGSOCKET" -U "$PGUSER" -d postgres -c "DROP DATABASE IF EXISTS ${DB}" >/dev/null 2>&1 || true
  [[ $status -eq 0 ]] && say "PASSED (work folder $WORK)" || say "exit $status (work folder $WORK, logs in $WORK/*/logs)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- the network --------------------------------------------------------------
say "building hosts ${HOSTS[*]} on ${SUBNET}.0/24 (namespaces ${PREFIX}-*)"
ip netns add "$(ns switch)"
ip -n "$(ns switch)" link add br0 type bridge
ip -n "$(ns switch)" link set br0 up
i=0
for name in "${HOSTS[@]}"; do
  i=$((i + 1))
  ip netns add "$(ns "$name")"
  ip link add eth0 netns "$(ns "$name")" type veth peer name "port$i" netns "$(ns switch)"
  ip -n "$(ns switch)" link set "port$i" master br0 up
  ip -n "$(ns "$name")" addr add "${SUBNET}.${ADDRESS[$name]}/24" dev eth0
  ip -n "$(ns "$name")" link set eth0 up
  ip -n "$(ns "$name")" link set lo up
  mkdir -p "$WORK/$name/logs"
done
OPERATOR_IP="${SUBNET}.${ADDRESS[operator]}"

# -- data: each institution's share on its own host, the operator's splits on its -----
say "writing the data"
"$FEDCOMMONS" demo --data-only --workdir "$WORK/data-source" >/dev/null
for name in "${INSTITUTIONS[@]}"; do
  mkdir -p "$WORK/$name/data"
  cp "$WORK/data-source/institutions/$name/data/"* "$WORK/$name/data/"
done
mkdir -p "$WORK/rogue/data" && cp "$WORK/data-source/institutions/company-c/data/"* "$WORK/rogue/data/"

# -- operator: ledger, init, serve ---------------------------------------------
psql -q -h "$PGSOCKET" -U "$PGUSER" -d postgres -c "CREATE DATABASE ${DB}" >/dev/null
OPDIR="$WORK/operator/consortium"
on operator "$FEDCOMMONS" operator init "$OPDIR" --name "netns consortium" \
  --superlink "${OPERATOR_IP}:${PORT}" --host "$OPERATOR_IP" --ledger "$LEDGER" >"$WORK/operator/logs/init.log"
mkdir -p "$OPDIR/data" && cp "$WORK/data-source/operator/data/"* "$OPDIR/data/"
cat >"$WORK/operator/policy.toml" <<EOF
[federation]
rounds = ${ROUNDS}
min-nodes = 3
round-timeout = 300.0
EOF
t0=$(now)
enter operator "$FEDCOMMONS" operator serve "$OPDIR" >"$WORK/operator/logs/serve.log" 2>&1 &
STARTED[operator]=$!
for _ in $(seq 1 600); do reachable operator "$OPERATOR_IP" "$PORT" && break; sleep 0.1; done
reachable operator "$OPERATOR_IP" "$PORT" || fail "the SuperLink did not listen (see $WORK/operator/logs/serve.log)"
SERVE_SECONDS=$(since "$t0")
say "operator serve listening on ${OPERATOR_IP}:${PORT} after ${SERVE_SECONDS}s"

# -- institutions: enrol, be admitted, start ----------------------------------
for name in "${INSTITUTIONS[@]}" rogue; do
  cp "$OPDIR/consortium.json" "$WORK/$name/consortium.json"  # what the operator publishes
  on "$name" "$FEDCOMMONS" client enroll --state "$WORK/$name/state" --institution "$name" \
    --kind "${KIND[$name]}" --data "$WORK/$name/data" --licence "${LICENCE[$name]}" \
    --consortium "$WORK/$name/consortium.json" >"$WORK/$name/logs/enroll.log"
done
mkdir -p "$WORK/operator/requests"
for name in "${INSTITUTIONS[@]}"; do  # the request travels by mail; the rogue's never arrives
  cp "$WORK/$name/state/enrolment-request.json" "$WORK/operator/requests/$name.json"
  on operator "$FEDCOMMONS" operator admit "$WORK/operator/requests/$name.json" --dir "$OPDIR" \
    >"$WORK/operator/logs/admit-$name.log"
done
declare -A T0=() START_SECONDS=()
for name in "${INSTITUTIONS[@]}" rogue; do
  T0[$name]=$(now)
  enter "$name" "$FEDCOMMONS" client start --state "$WORK/$name/state" >"$WORK/$name/logs/start.log" 2>&1 &
  STARTED[$name]=$!
done
for name in "${INSTITUTIONS[@]}"; do
  for _ in $(seq 1 600); do grep -q "SuperNode ID" "$WORK/$name/logs/start.log" && break; sleep 0.1; done
  grep -q "SuperNode ID" "$WORK/$name/logs/start.log" || fail "$name's SuperNode did not connect (see its start.log)"
  START_SECONDS[$name]=$(since "${T0[$name]}")
done
say "three SuperNodes connected"

# -- the unregistered fifth host is refused -------------------------------------
for _ in $(seq 1 900); do kill -0 "${STARTED[rogue]}" 2>/dev/null || break; sleep 0.1; done
if kill -0 "${STARTED[rogue]}" 2>/dev/null; then fail "the unregistered host's SuperNode is still running"; fi
set +e; wait "${STARTED[rogue]}"; ROGUE_STATUS=$?; set -e
unset 'STARTED[rogue]'
[[ $ROGUE_STATUS -ne 0 ]] || fail "the unregistered host's 'client start' exited 0"
grep -q "Failed to activate SuperNode" "$WORK/rogue/logs/start.log" || fail "the rogue host was not refused by the SuperLink"
say "the unregistered host was refused (exit $ROGUE_STATUS)"

on operator "$FEDCOMMONS" operator status --dir "$OPDIR" --format json >"$WORK/operator/status-before.json"

# -- the run ------------------------------------------------------------------
say "operator run: ${ROUNDS} rounds"
on operator "$FEDCOMMONS" operator run "$WORK/operator/policy.toml" --dir "$OPDIR" --format json \
  >"$WORK/operator/run-summary.json" 2>"$WORK/operator/logs/run.log" || fail "operator run failed (see $WORK/operator/logs/run.log)"
on operator "$FEDCOMMONS" operator status --dir "$OPDIR" --format json >"$WORK/operator/status-after.json"

# -- what a participant can reach on the operator host --------------------------
LISTENING=$(ip netns exec "$(ns operator)" ss -Htln | awk '{print $4}' | sed 's/.*://' | sort -un)
for port in $LISTENING 5432 22 80 443; do
  if reachable university-a "$OPERATOR_IP" "$port"; then
    [[ $port == "$PORT" ]] || fail "university-a reaches port $port on the operator host"
  else
    [[ $port != "$PORT" ]] || fail "university-a cannot reach the SuperLink port"
  fi
done
! reachable university-a 127.0.0.1 5432 || fail "a participant host reaches a database on its own loopback"
say "participants reach only the SuperLink port (operator listens on: $(echo $LISTENING))"

# -- stop the nodes and the SuperLink as their supervisors would ---------------
for name in "${INSTITUTIONS[@]}" operator; do
  kill -TERM "${STARTED[$name]}"
  set +e; wait "${STARTED[$name]}"; code=$?; set -e
  unset "STARTED[$name]"
  [[ $code -eq 0 ]] || fail "$name's command exited $code on SIGTERM (expected a clean stop)"
done
say "every role command stopped cleanly on SIGTERM"

# -- the auditor: receipts from the three hosts, the ledger, the operator's files -------
mkdir -p "$WORK/auditor/receipts"
for name in "${INSTITUTIONS[@]}"; do
  mkdir -p "$WORK/auditor/receipts/$name" && cp "$WORK/$name/state/receipts/"*.json "$WORK/auditor/receipts/$name/"
done
"$FEDCOMMONS" audit verify --ledger "$LEDGER" --operator-key "$WORK/university-a/consortium.json" --receipts "$WORK/auditor/receipts" --format json \
  >"$WORK/auditor/verify.json" || fail "audit verify --receipts failed (see $WORK/auditor/verify.json)"
pg_dump -h "$PGSOCKET" -U "$PGUSER" "$DB" >"$WORK/operator/ledger-dump.sql"
cat >"$WORK/timings.json" <<EOF
{"operator_serve_seconds": ${SERVE_SECONDS}, "client_start_seconds": {$(for n in "${INSTITUTIONS[@]}"; do printf '"%s": %s,' "$n" "${START_SECONDS[$n]}"; done | sed 's/,$//')}}
EOF
"$PYTHON" "$HERE/netns_checks.py" "$WORK" --consortium "$OPDIR" "${INSTITUTIONS[@]}"
