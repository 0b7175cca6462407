#!/usr/bin/env bash
# Smoke test with third-party clients: Mosquitto's mosquitto_pub / mosquitto_sub against a
# freshly built `shardmq` (2 shards, a free loopback port). Checks QoS 0/1/2 delivery, a
# retained message, a will (its client killed with SIGKILL), MQTT 5.0 pub/sub, a password file
# written by `shardmq passwd` and `mosquitto_passwd` (when installed) with an ACL file (-u/-P,
# refusals, ACL denials), and a clean exit on SIGTERM. Every step is bounded with `timeout`; any failure exits non-zero with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "smoke-mosquitto: FAIL: $*" >&2
    if [ -n "${LOG:-}" ] && [ -s "$LOG" ]; then
        echo "---- broker log (last 30 lines) ----" >&2
        tail -n 30 "$LOG" >&2
    fi
    exit 1
}

if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
    echo "== installing mosquitto-clients"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    timeout 300 $SUDO apt-get update -qq || fail "apt-get update failed"
    timeout 300 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients \
        || fail "cannot install mosquitto-clients"
fi

echo "== building shardmq"
timeout 1200 cargo build --bin shardmq || fail "cargo build failed"
BIN="${CARGO_TARGET_DIR:-target}/debug/shardmq"
[ -x "$BIN" ] || fail "$BIN not found"

WORK=$(mktemp -d)
LOG="$WORK/broker.log"
BROKER_PID=""
CHILDREN=()

cleanup() {
    local pid
    # TERM, not KILL: most children are `timeout`, which passes TERM on to its command.
    for pid in "${CHILDREN[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    fail "no free port found"
}

PORT=$(free_port)
echo "== starting shardmq on 127.0.0.1:$PORT with 2 shards"
"$BIN" --listen "127.0.0.1:$PORT" --shards 2 --log-level info >"$LOG" 2>&1 &
BROKER_PID=$!
for _ in $(seq 1 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || fail "shardmq exited at startup"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || fail "shardmq does not accept on port $PORT"

MQTT=(-h 127.0.0.1 -p "$PORT")

# deliver NAME EXPECTED SUB_ARGS... -- PUB_ARGS...
# Starts mosquitto_sub for one message (formatted with -F by the caller), publishes with
# mosquitto_pub every 200 ms until the subscriber has its message (it may not be subscribed yet
# when the first one goes out), and compares the subscriber's output with EXPECTED.
deliver() {
    local name=$1 expected=$2
    shift 2
    local sub_args=() pub_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do sub_args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    pub_args=("$@")
    timeout 15 mosquitto_sub "${MQTT[@]}" -C 1 -W 10 "${sub_args[@]}" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    local sub=$!
    CHILDREN+=("$sub")
    for _ in $(seq 1 40); do
        sleep 0.2
        kill -0 "$sub" 2>/dev/null || break
        timeout 5 mosquitto_pub "${MQTT[@]}" "${pub_args[@]}" 2>>"$WORK/$name.err" \
            || fail "$name: mosquitto_pub failed: $(cat "$WORK/$name.err")"
    done
    wait "$sub" || fail "$name: mosquitto_sub received nothing: $(cat "$WORK/$name.err")"
    local got
    got=$(cat "$WORK/$name.out")
    [ "$got" = "$expected" ] || fail "$name: expected '$expected', got '$got'"
    echo "ok: $name"
}

# retained_is TOPIC EXPECTED: a new subscriber gets EXPECTED ('%r %p': retain flag, payload) as
# its first message. Retried briefly: retained messages replicate to other shards
# asynchronously.
retained_is() {
    local topic=$1 expected=$2 got=""
    for _ in $(seq 1 25); do
        got=$(timeout 5 mosquitto_sub "${MQTT[@]}" -t "$topic" -C 1 -W 1 -F '%r %p' 2>/dev/null || true)
        [ "$got" = "$expected" ] && return 0
        sleep 0.2
    done
    fail "retained message on $topic: expected '$expected', got '$got'"
}

echo "== QoS 0/1/2"
for qos in 0 1 2; do
    deliver "qos$qos" "$qos smoke/qos$qos hello-$qos" \
        -t "smoke/qos$qos" -q "$qos" -F '%q %t %p' -- \
        -t "smoke/qos$qos" -q "$qos" -m "hello-$qos"
done
# A QoS 2 publish to a QoS 1 subscription arrives at QoS 1.
deliver "downgrade" "1 smoke/down" -t smoke/down -q 1 -F '%q %t' -- -t smoke/down -q 2 -m x

echo "== retained"
timeout 5 mosquitto_pub "${MQTT[@]}" -t smoke/retained -q 1 -r -m kept || fail "retained publish"
retained_is smoke/retained "1 kept"
echo "ok: retained message delivered to a new subscriber with retain = 1"
timeout 5 mosquitto_pub "${MQTT[@]}" -t smoke/retained -q 1 -r -n || fail "retained delete"
for _ in $(seq 1 25); do
    got=$(timeout 5 mosquitto_sub "${MQTT[@]}" -t smoke/retained -C 1 -W 1 -F '%p' 2>/dev/null || true)
    [ -z "$got" ] && break
    sleep 0.2
done
[ -z "$got" ] || fail "retained message still there after an empty retained publish: '$got'"
echo "ok: empty retained payload deletes it"

echo "== will"
# The will is retained, so it can be checked after the fact without racing a subscriber.
# No `timeout` wrapper here (-W bounds it instead): SIGKILL must hit mosquitto_sub itself.
mosquitto_sub "${MQTT[@]}" -i smoke-will-client -k 5 -W 60 -t smoke/will/ready \
    --will-topic smoke/will/gone --will-payload will-fired --will-qos 1 --will-retain \
    >"$WORK/will-ready.out" 2>"$WORK/will-ready.err" &
WILL_CLIENT=$!
CHILDREN+=("$WILL_CLIENT")
# Wait until the will client is connected and subscribed: it receives a message.
for _ in $(seq 1 50); do
    [ -s "$WORK/will-ready.out" ] && break
    kill -0 "$WILL_CLIENT" 2>/dev/null || fail "will client exited: $(cat "$WORK/will-ready.err")"
    timeout 5 mosquitto_pub "${MQTT[@]}" -t smoke/will/ready -m ready >/dev/null 2>&1 || true
    sleep 0.2
done
[ -s "$WORK/will-ready.out" ] || fail "the will client never got a message (not connected?)"
kill -KILL "$WILL_CLIENT"
wait "$WILL_CLIENT" 2>/dev/null || true
retained_is smoke/will/gone "1 will-fired"
echo "ok: will published when its client was killed with SIGKILL"

echo "== MQTT 5.0"
deliver "mqttv5" "1 smoke/v5 v5-hello" \
    -V mqttv5 -t smoke/v5 -q 1 -F '%q %t %p' -- \
    -V mqttv5 -t smoke/v5 -q 1 -m v5-hello
deliver "mqttv5-to-3.1.1" "2 smoke/mixed from-v5" \
    -V mqttv311 -t smoke/mixed -q 2 -F '%q %t %p' -- \
    -V mqttv5 -t smoke/mixed -q 2 -m from-v5

echo "== password file and ACL"
PORT2=$(free_port)
"$BIN" passwd -c -b "$WORK/passwd" alice alice-pw || fail "shardmq passwd -c -b"
if command -v mosquitto_passwd >/dev/null; then
    # mosquitto_passwd updates a file written by shardmq passwd; the broker reads both entries.
    mosquitto_passwd -b "$WORK/passwd" carol carol-pw || fail "mosquitto_passwd -b"
else
    "$BIN" passwd -b "$WORK/passwd" carol carol-pw || fail "shardmq passwd -b"
fi
cat >"$WORK/acl" <<'ACL'
user alice
topic readwrite a/#
user carol
topic read #
topic deny a/secret
ACL
LOG2="$WORK/broker-auth.log"
"$BIN" --listen "127.0.0.1:$PORT2" --shards 2 --password-file "$WORK/passwd" \
    --acl-file "$WORK/acl" >"$LOG2" 2>&1 &
AUTH_PID=$!
CHILDREN+=("$AUTH_PID")
for _ in $(seq 1 100); do
    kill -0 "$AUTH_PID" 2>/dev/null || fail "shardmq with a password file exited at startup: $(cat "$LOG2")"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT2") 2>/dev/null; then break; fi
    sleep 0.1
done
AUTH=(-h 127.0.0.1 -p "$PORT2")
if timeout 5 mosquitto_pub "${AUTH[@]}" -u alice -P wrong -t a/x -m x 2>"$WORK/wrong.err"; then
    fail "a wrong password was accepted"
fi
grep -qi "password" "$WORK/wrong.err" || fail "wrong password: unexpected error: $(cat "$WORK/wrong.err")"
echo "ok: wrong password refused ($(head -n1 "$WORK/wrong.err"))"
if timeout 5 mosquitto_pub "${AUTH[@]}" -t a/x -m x 2>"$WORK/anon.err"; then
    fail "an anonymous client was accepted"
fi
grep -qi "authori" "$WORK/anon.err" || fail "anonymous: unexpected error: $(cat "$WORK/anon.err")"
echo "ok: anonymous client refused ($(head -n1 "$WORK/anon.err"))"
grep -q "CONNECT refused: authentication failed" "$LOG2" || fail "no log line for the refusals"
echo "ok: refusals logged"
MQTT=("${AUTH[@]}" -u carol -P carol-pw)
# carol reads `#` but not a/secret: alice's a/secret (published first) must not reach her.
timeout 15 mosquitto_sub "${MQTT[@]}" -t '#' -C 1 -W 10 -F '%t %p' >"$WORK/acl.out" 2>"$WORK/acl.err" &
ACL_SUB=$!
CHILDREN+=("$ACL_SUB")
for _ in $(seq 1 40); do
    sleep 0.2
    kill -0 "$ACL_SUB" 2>/dev/null || break
    timeout 5 mosquitto_pub "${AUTH[@]}" -u alice -P alice-pw -t a/secret -q 1 -m secret \
        || fail "alice's publish to a/secret failed"
    timeout 5 mosquitto_pub "${AUTH[@]}" -u alice -P alice-pw -t a/open -q 1 -m open \
        || fail "alice's publish to a/open failed"
done
wait "$ACL_SUB" || fail "carol received nothing: $(cat "$WORK/acl.err")"
[ "$(cat "$WORK/acl.out")" = "a/open open" ] || fail "carol got '$(cat "$WORK/acl.out")', expected 'a/open open'"
echo "ok: a '#' subscriber does not get a topic the ACL denies it"
# alice may not publish to b/x: 3.1.1 acknowledges and drops it, 5.0 says 0x87.
timeout 5 mosquitto_pub "${AUTH[@]}" -u alice -P alice-pw -t b/x -q 1 -m x \
    || fail "3.1.1: a denied publish must still be acknowledged"
timeout 5 mosquitto_pub "${AUTH[@]}" -u alice -P alice-pw -V mqttv5 -t b/x -q 1 -m x -d \
    >"$WORK/v5deny.out" 2>&1 || true
grep -q "received PUBACK (Mid: 1, RC:135)" "$WORK/v5deny.out" \
    || fail "5.0: no PUBACK 0x87 for a denied publish: $(cat "$WORK/v5deny.out")"
echo "ok: denied publish acknowledged (3.1.1) / PUBACK 0x87 (5.0)"
for version in mqttv311 mqttv5; do
    timeout 5 mosquitto_sub "${AUTH[@]}" -u alice -P alice-pw -V "$version" -t 'b/#' -C 1 -W 2 \
        >"$WORK/subdeny.err" 2>&1 || true
    grep -q "denied" "$WORK/subdeny.err" \
        || fail "$version: alice's subscription to b/# was not denied: $(cat "$WORK/subdeny.err")"
done
echo "ok: denied subscription refused, 3.1.1 and 5.0 ($(head -n1 "$WORK/subdeny.err"))"
kill -TERM "$AUTH_PID"
wait "$AUTH_PID" || fail "shardmq with a password file did not exit cleanly"
MQTT=(-h 127.0.0.1 -p "$PORT")

echo "== SIGTERM stops the broker cleanly"
kill -TERM "$BROKER_PID"
status=0
for _ in $(seq 1 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$BROKER_PID" 2>/dev/null && fail "shardmq still running 10 s after SIGTERM"
wait "$BROKER_PID" || status=$?
BROKER_PID=""
[ "$status" -eq 0 ] || fail "shardmq exited with status $status after SIGTERM"
echo "ok: shardmq exited with status 0"

echo "smoke-mosquitto: all checks passed"
