#!/usr/bin/env bash
# Smoke test of the demo workers WITHOUT dynsup: starts a private nats-server and etcd on
# 127.0.0.1 (free, non-default ports, temp dirs), starts the workers by hand with the environment
# dynsup would give them, and checks the behaviour end to end:
#   - a launch without NATS_SERVER, or with an unreachable one, exits non-zero with a clear message
#   - health is 503/200 as specified; workers register in etcd under dynsup-demo/<cluster>/<role>/
#   - completions go frontend -> decode -> prefill and are deterministic
#   - no prefill worker -> 503 no_prefill_worker; no decode worker -> 503 no_decode_worker
#   - a SIGKILLed decode worker is retried on another one, and its key expires with its lease
#   - SIGTERM deregisters at once and exits 0 within ~2s
#
#   scripts/demo/smoke.sh            # prints PASS or FAIL (with the worker logs) and exits 0/1
#   KEEP=1 scripts/demo/smoke.sh     # keep the temp dir (logs) afterwards
#
# Needs: node, nats-server, etcd, etcdctl, curl, jq.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEMO="$ROOT/scripts/demo"
CLUSTER=smoke
TMP=$(mktemp -d -t dynsup-demo-smoke.XXXXXX)
declare -A PID=()      # name -> pid of everything we started
declare -A EXITED=()   # names already reaped (killed and waited for by a step)

cleanup() {
  local name
  for name in "${!PID[@]}"; do
    [[ -n ${EXITED[$name]:-} ]] || kill -TERM "${PID[$name]}" 2>/dev/null || true
  done
  sleep 0.5
  for name in "${!PID[@]}"; do
    [[ -n ${EXITED[$name]:-} ]] || kill -KILL "${PID[$name]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ -n ${KEEP:-} ]]; then echo "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo "== $*"; }
ok() { echo "   ok: $*"; }
fail() {
  echo "FAIL: $*" >&2
  local f
  for f in "$TMP"/*.log; do
    [[ -e $f ]] || continue
    echo "---- $(basename "$f") (last 30 lines)" >&2
    tail -n 30 "$f" >&2
  done
  exit 1
}

# A port nobody listens on right now (the kernel picks it; small race, fine for a smoke test).
free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: polls COMMAND every 0.2s.
wait_until() {
  local timeout=$1 what=$2
  shift 2
  local end=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || fail "timed out after ${timeout}s waiting for: $what"
    sleep 0.2
  done
}

http_status() { curl -s -o /dev/null -w '%{http_code}' "$1" || true; }
status_is() { [[ $(http_status "$2") == "$1" ]]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

NATS_PORT=$(free_port)
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
DEAD_PORT=$(free_port) # nothing will listen here
FRONTEND_PORT=$(free_port)
PREFILL_PORT=$(free_port)
DECODE1_PORT=$(free_port)
DECODE2_PORT=$(free_port)
ETCDCTL=(env ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT")

# start_worker ROLE NAME PORT [VAR=VALUE...]: the environment dynsup gives a worker (overridable).
start_worker() {
  local role=$1 name=$2 port=$3
  shift 3
  env NATS_SERVER="nats://127.0.0.1:$NATS_PORT" ETCD_ENDPOINTS="http://127.0.0.1:$ETCD_PORT" \
    DYNSUP_CLUSTER=$CLUSTER DYNSUP_WORKER="$name" DYNSUP_GROUP="$role" DYNSUP_REPLICA_INDEX="${name##*-}" \
    DYNSUP_NODE=head DYNSUP_PORT="$port" CUDA_VISIBLE_DEVICES= "$@" \
    node "$DEMO/$role.mjs" >"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
}

# stop NAME SIGNAL: sends SIGNAL, waits for the exit, sets RC and TOOK (seconds).
stop() {
  local t0
  t0=$(now)
  kill -"$2" "${PID[$1]}"
  RC=0
  wait "${PID[$1]}" 2>/dev/null || RC=$?
  TOOK=$(elapsed "$t0")
  EXITED[$1]=1
}

keys() { "${ETCDCTL[@]}" get --prefix "dynsup-demo/$CLUSTER/" --keys-only | sed '/^$/d'; }
has_key() { keys | grep -qx "$1"; }
no_key() { ! has_key "$1"; }

# complete PROMPT MAX_TOKENS [MODEL]: POSTs a completion; sets CODE and BODY.
complete() {
  local body
  body=$(jq -nc --arg p "$1" --argjson n "$2" --arg m "${3:-demo}" '{model: $m, prompt: $p, max_tokens: $n}')
  BODY=$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$FRONTEND_PORT/v1/completions" \
    -H 'content-type: application/json' -d "$body")
  CODE=${BODY##*$'\n'}
  BODY=${BODY%$'\n'*}
}

# ---------------------------------------------------------------------------------------------
step "misconfigured launches fail loudly"
# Unreachable NATS takes ~10s to give up: run it in the background and check it at the end.
UNREACH_T0=$(now)
env NATS_SERVER="nats://127.0.0.1:$DEAD_PORT" ETCD_ENDPOINTS="http://127.0.0.1:$ETCD_PORT" \
  DYNSUP_CLUSTER=$CLUSTER DYNSUP_WORKER=prefill-unreachable DYNSUP_PORT="$(free_port)" \
  node "$DEMO/prefill.mjs" >"$TMP/unreachable.log" 2>&1 &
PID[unreachable]=$!

RC=0
env -u NATS_SERVER ETCD_ENDPOINTS="http://127.0.0.1:1" node "$DEMO/decode.mjs" >"$TMP/noenv.log" 2>&1 || RC=$?
((RC != 0)) || fail "worker without NATS_SERVER exited 0"
grep -q 'NATS_SERVER is not set' "$TMP/noenv.log" || fail "no clear message without NATS_SERVER"
ok "missing NATS_SERVER: exit $RC, '$(grep -o 'FATAL: .*' "$TMP/noenv.log" | cut -c1-60)...'"
RC=0
env -u ETCD_ENDPOINTS NATS_SERVER="nats://127.0.0.1:1" node "$DEMO/frontend.mjs" >"$TMP/noenv.log" 2>&1 || RC=$?
((RC != 0)) && grep -q 'ETCD_ENDPOINTS is not set' "$TMP/noenv.log" || fail "worker without ETCD_ENDPOINTS did not fail clearly"
ok "missing ETCD_ENDPOINTS: exit $RC"

# ---------------------------------------------------------------------------------------------
step "control plane: nats-server :$NATS_PORT, etcd :$ETCD_PORT (in $TMP)"
start_nats() {
  nats-server -a 127.0.0.1 -p "$NATS_PORT" >>"$TMP/nats-server.log" 2>&1 &
  PID[nats]=$!
  EXITED[nats]=
  wait_until 10 "nats-server port" port_open "$NATS_PORT"
}
start_etcd() { # DATA_DIR_NAME
  etcd --name smoke --data-dir "$TMP/$1" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "smoke=http://127.0.0.1:$ETCD_PEER_PORT" >>"$TMP/etcd.log" 2>&1 &
  PID[etcd]=$!
  EXITED[etcd]=
  wait_until 20 "etcd health" curl -sf "http://127.0.0.1:$ETCD_PORT/health"
}
start_nats
start_etcd etcd-data
ok "both up"

# ---------------------------------------------------------------------------------------------
step "decode + frontend, no prefill yet"
start_worker decode decode-1 "$DECODE1_PORT" CUDA_VISIBLE_DEVICES=0,1
start_worker frontend frontend-0 "$FRONTEND_PORT"
wait_until 15 "decode-1 health 200" status_is 200 "http://127.0.0.1:$DECODE1_PORT/health"
wait_until 15 "frontend health 200" status_is 200 "http://127.0.0.1:$FRONTEND_PORT/health"
ok "decode-1 and frontend-0 healthy"
val=$("${ETCDCTL[@]}" get "dynsup-demo/$CLUSTER/decode/decode-1" --print-value-only)
jq -e --arg s "dynsup-demo.$CLUSTER.decode.decode-1" \
  '.worker == "decode-1" and .node == "head" and .subject == $s and (.pid|type) == "number" and .gpus == ["0","1"]' \
  <<<"$val" >/dev/null || fail "unexpected etcd value for decode-1: $val"
ok "etcd dynsup-demo/$CLUSTER/decode/decode-1 = $val"
complete "hello world" 8
[[ $CODE == 503 ]] && jq -e '.error.code == "no_prefill_worker"' <<<"$BODY" >/dev/null ||
  fail "expected 503 no_prefill_worker, got $CODE $BODY"
ok "completion without prefill: $CODE $(jq -c .error <<<"$BODY")"

# ---------------------------------------------------------------------------------------------
step "prefill joins; completions"
start_worker prefill prefill-0 "$PREFILL_PORT"
wait_until 15 "prefill-0 health 200" status_is 200 "http://127.0.0.1:$PREFILL_PORT/health"
[[ $(keys | wc -l) == 3 ]] || fail "expected 3 keys in etcd, got: $(keys)"
ok "registered: $(keys | tr '\n' ' ')"

complete "hello world" 8
[[ $CODE == 200 ]] || fail "completion: HTTP $CODE $BODY"
jq -e '.object == "text_completion" and (.id|startswith("cmpl-")) and (.created|type) == "number" and .model == "demo"
  and (.choices|length) == 1 and .choices[0].index == 0 and .choices[0].finish_reason == "length"
  and (.choices[0].text|split(" ")|map(select(. != ""))|length) == 8
  and .usage == {prompt_tokens: 2, completion_tokens: 8, total_tokens: 10}
  and .dynsup == {frontend: "frontend-0", decode_worker: "decode-1", prefill_worker: "prefill-0"}' \
  <<<"$BODY" >/dev/null || fail "unexpected completion: $BODY"
TEXT=$(jq -r '.choices[0].text' <<<"$BODY")
ok "completion: $(jq -c '{text: .choices[0].text, usage, dynsup}' <<<"$BODY")"
complete "hello world" 8
[[ $CODE == 200 && $(jq -r '.choices[0].text' <<<"$BODY") == "$TEXT" ]] || fail "not deterministic: $BODY"
complete "hello there world" 8
[[ $CODE == 200 && $(jq -r '.choices[0].text' <<<"$BODY") != "$TEXT" ]] || fail "different prompt, same text: $BODY"
ok "deterministic per prompt, differs across prompts"

models=$(curl -s "http://127.0.0.1:$FRONTEND_PORT/v1/models")
jq -e '.object == "list" and .data[0].id == "demo"' <<<"$models" >/dev/null || fail "/v1/models: $models"
complete "hello" 4 other-model
[[ $CODE == 404 ]] || fail "unknown model: expected 404, got $CODE $BODY"
complete "hello" 0
[[ $CODE == 400 ]] || fail "max_tokens 0: expected 400, got $CODE $BODY"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FRONTEND_PORT/v1/completions" -d '{nope')
[[ $code == 400 ]] || fail "invalid JSON: expected 400, got $code"
ok "/v1/models, unknown model 404, bad max_tokens 400, bad JSON 400"
grep -q 'prefill {"subject":"dynsup-demo.smoke.prefill.prefill-0","tokens":2' "$TMP/prefill-0.log" ||
  fail "prefill-0 did not log its requests"
grep -q '"prefill_worker":"prefill-0"' "$TMP/decode-1.log" || fail "decode-1 did not log its requests"

# ---------------------------------------------------------------------------------------------
step "decode-1 crashes (SIGKILL) while decode-2 is up: retry, then lease expiry"
start_worker decode decode-2 "$DECODE2_PORT"
wait_until 15 "decode-2 health 200" status_is 200 "http://127.0.0.1:$DECODE2_PORT/health"
stop decode-1 KILL
KILLED_AT=$(now)
has_key "dynsup-demo/$CLUSTER/decode/decode-1" || fail "decode-1 key vanished at once after SIGKILL (no lease TTL?)"
for i in 1 2 3 4; do
  complete "request $i after crash" 5
  [[ $CODE == 200 ]] && jq -e '.dynsup.decode_worker == "decode-2"' <<<"$BODY" >/dev/null ||
    fail "completion $i after decode-1 crash: $CODE $BODY"
done
grep -q 'decode worker failed {"decode_worker":"decode-1"' "$TMP/frontend-0.log" ||
  fail "frontend never tried (and retried past) the dead decode-1"
ok "4/4 completions served by decode-2; frontend retried past dead decode-1"
wait_until 15 "decode-1 key to expire" no_key "dynsup-demo/$CLUSTER/decode/decode-1"
ok "decode-1 key expired $(elapsed "$KILLED_AT")s after SIGKILL (lease TTL 5s)"

# ---------------------------------------------------------------------------------------------
step "control plane restarts: NATS bounce, etcd comes back EMPTY (leases lost)"
stop nats KILL
wait_until 5 "decode-2 health 503 while NATS is down" status_is 503 "http://127.0.0.1:$DECODE2_PORT/health"
start_nats
wait_until 10 "decode-2 health 200 after NATS is back" status_is 200 "http://127.0.0.1:$DECODE2_PORT/health"
complete "after nats restart" 3
[[ $CODE == 200 ]] || fail "completion after NATS restart: $CODE $BODY"
ok "NATS down -> health 503; back -> reconnected, completion 200"
ETCD_KILLED_AT=$(now)
stop etcd KILL
start_etcd etcd-data-2 # a fresh, empty etcd on the same address
expected="dynsup-demo/$CLUSTER/decode/decode-2 dynsup-demo/$CLUSTER/frontend/frontend-0 dynsup-demo/$CLUSTER/prefill/prefill-0"
all_back() { [[ $(keys | tr '\n' ' ' | sed 's/ $//') == "$expected" ]]; }
wait_until 20 "workers to re-register in the new etcd" all_back
grep -q 'etcd lease lost, re-registering' "$TMP/decode-2.log" || fail "decode-2 did not log the lease loss"
ok "all 3 workers re-registered in the empty etcd $(elapsed "$ETCD_KILLED_AT")s after the old one was killed"
wait_until 10 "frontend health 200" status_is 200 "http://127.0.0.1:$FRONTEND_PORT/health"
complete "after etcd restart" 3
[[ $CODE == 200 ]] || fail "completion after etcd restart: $CODE $BODY"
ok "completion 200 again"

# ---------------------------------------------------------------------------------------------
step "graceful stops (SIGTERM)"
stop prefill-0 TERM
((RC == 0)) || fail "prefill-0 exited $RC on SIGTERM"
awk -v t="$TOOK" 'BEGIN { exit !(t < 2.5) }' || fail "prefill-0 took ${TOOK}s to stop"
no_key "dynsup-demo/$CLUSTER/prefill/prefill-0" || fail "prefill-0 key still there after SIGTERM"
ok "prefill-0: exit $RC in ${TOOK}s, key deleted at once"
complete "hello world" 8
[[ $CODE == 503 ]] && jq -e '.error.code == "no_prefill_worker"' <<<"$BODY" >/dev/null ||
  fail "expected 503 no_prefill_worker, got $CODE $BODY"
ok "completion without prefill: 503 again"

stop decode-2 TERM
((RC == 0)) || fail "decode-2 exited $RC on SIGTERM"
ok "decode-2: exit $RC in ${TOOK}s"
status_is 503 "http://127.0.0.1:$FRONTEND_PORT/health" || fail "frontend healthy without decode workers"
complete "hello world" 8
[[ $CODE == 503 ]] && jq -e '.error.code == "no_decode_worker"' <<<"$BODY" >/dev/null ||
  fail "expected 503 no_decode_worker, got $CODE $BODY"
ok "frontend health 503 and completion 503 no_decode_worker"

stop frontend-0 TERM
((RC == 0)) || fail "frontend-0 exited $RC on SIGTERM"
ok "frontend-0: exit $RC in ${TOOK}s"
[[ -z $(keys) ]] || fail "keys left in etcd: $(keys)"
ok "no keys left in etcd"

# ---------------------------------------------------------------------------------------------
step "unreachable NATS (started at the beginning)"
RC=0
wait "${PID[unreachable]}" || RC=$?
EXITED[unreachable]=1
((RC != 0)) || fail "worker with unreachable NATS exited 0"
grep -q 'FATAL: cannot reach NATS' "$TMP/unreachable.log" || fail "no clear message for unreachable NATS"
ok "exit $RC after $(elapsed "$UNREACH_T0")s: '$(grep -o 'FATAL: .*' "$TMP/unreachable.log" | cut -c1-90)...'"

echo "PASS"
