#!/usr/bin/env bash
# Soak test: `scripts/soak.sh MINUTES [soak.py options, e.g. --seed 7]`
#
# Builds the release broker (or uses $SHARDMQ_BIN), starts it on a free loopback port with 2
# shards, and runs scripts/soak.py against it for MINUTES (fractional allowed, e.g. 0.5): connect
# churn with wills and abrupt closes, takeovers and CONNECT bursts on shared client ids,
# subscription churn, QoS 0/1/2 and retained traffic, and persistent QoS 1/2 subscribers that
# reconnect and are taken over while sequence-numbered messages keep flowing. Checks: no
# acknowledged QoS 1/2 message lost for those sessions, no QoS 2 duplicate, wills, retained
# values, flat broker RSS (runs of 2 minutes or more), fds released, the broker alive throughout
# and exiting 0 on SIGTERM, no panic in its log. Prints a summary; exits 0 only if all passed.
# All traffic goes to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/soak.sh MINUTES [soak.py options]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
MINUTES=$1
shift
python3 -c 'import sys; m = float(sys.argv[1]); sys.exit(0 if 0 < m < 100000 else 1)' "$MINUTES" 2>/dev/null \
    || usage

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardmq-soak.XXXXXX")
LOG="$WORK/broker.log"
BROKER_PID=""
KEEP_WORK=0

log_tail() {
    if [ -s "$LOG" ]; then
        echo "---- broker log ($LOG, last 30 lines) ----" >&2
        tail -n 30 "$LOG" | sed -E 's/\x1b\[[0-9;]*m//g' >&2
        echo "---- end of broker log ----" >&2
    fi
}

fail() {
    echo "soak: FAIL: $*" >&2
    KEEP_WORK=1
    log_tail
    exit 1
}

# Stops the broker started here (and only it): TERM, up to 5 s, then KILL.
cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    if [ "$KEEP_WORK" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "soak: broker log kept in $LOG" >&2
    fi
}
trap cleanup EXIT

if [ -n "${SHARDMQ_BIN:-}" ]; then
    BIN=$SHARDMQ_BIN
    echo "== using SHARDMQ_BIN=$BIN (no build)"
else
    echo "== building shardmq (release)"
    cargo build --release --bin shardmq || fail "cargo build failed"
    BIN="${CARGO_TARGET_DIR:-target}/release/shardmq"
fi
[ -x "$BIN" ] || fail "$BIN is not an executable"

if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
    echo "== installing paho-mqtt"
    pip install --quiet 'paho-mqtt>=2,<3' || fail "cannot install paho-mqtt"
fi
python3 -c 'import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith("2.") else 1)' \
    || fail "paho-mqtt 2.x is required (found $(python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)'))"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== starting $BIN on 127.0.0.1:$PORT with 2 shards (log: $LOG)"
"$BIN" --listen "127.0.0.1:$PORT" --shards 2 --log-level warn >"$LOG" 2>&1 &
BROKER_PID=$!

accepts() {
    python3 - "$PORT" <<'EOF'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
EOF
}
for _ in $(seq 1 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || fail "shardmq exited at startup"
    accepts && break
    sleep 0.1
done
accepts || fail "shardmq does not accept on 127.0.0.1:$PORT after 10 s"

echo "== soak: $MINUTES minute(s)"
# The driver stops by itself after MINUTES plus a drain of at most ~30 s; `timeout` is only a
# safety net against a hang.
LIMIT=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 60) + 180)' "$MINUTES")
status=0
timeout --signal=TERM --kill-after=10 "$LIMIT" \
    python3 scripts/soak.py --port "$PORT" --minutes "$MINUTES" --broker-pid "$BROKER_PID" "$@" \
    || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "soak: FAIL: the driver did not finish within $LIMIT s" >&2
fi

echo "== stopping shardmq (SIGTERM)"
broker_ok=1
if kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "soak: FAIL: shardmq still running 10 s after SIGTERM; killing it" >&2
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        broker_ok=0
    fi
    broker_status=0
    wait "$BROKER_PID" || broker_status=$?
    BROKER_PID=""
    if [ "$broker_status" -eq 0 ]; then
        echo "shardmq exited with status 0 on SIGTERM"
    else
        echo "soak: FAIL: shardmq exited with status $broker_status on SIGTERM" >&2
        broker_ok=0
    fi
else
    broker_status=0
    wait "$BROKER_PID" || broker_status=$?
    BROKER_PID=""
    echo "soak: FAIL: shardmq died during the soak (exit status $broker_status)" >&2
    broker_ok=0
fi

# What the broker logged (at warn level and above), most frequent messages first.
CLEAN_LOG="$WORK/broker.plain.log"
sed -E 's/\x1b\[[0-9;]*m//g' "$LOG" >"$CLEAN_LOG" || true
n_warn=$(grep -cE '^[^ ]+ +WARN ' "$CLEAN_LOG" || true)
n_error=$(grep -cE '^[^ ]+ +ERROR ' "$CLEAN_LOG" || true)
echo "broker log: $n_warn WARN and $n_error ERROR lines ($(wc -l <"$CLEAN_LOG") lines in all)"
if [ "$((n_warn + n_error))" -gt 0 ]; then
    grep -E '^[^ ]+ +(WARN|ERROR) ' "$CLEAN_LOG" \
        | sed -E 's/^[^ ]+ +//; s/ [A-Za-z_.]+=[^ ]*//g' \
        | sort | uniq -c | sort -rn | head -n 8 | sed 's/^/  /'
fi

if grep -qi 'panic' "$CLEAN_LOG"; then
    echo "soak: FAIL: the broker log reports a panic:" >&2
    if grep -q 'panicked at' "$CLEAN_LOG"; then
        grep -A1 -m 3 'panicked at' "$CLEAN_LOG" | sed 's/^/  /' >&2
    else
        grep -i -m 5 'panic' "$CLEAN_LOG" | sed 's/^/  /' >&2
    fi
    broker_ok=0
fi

if [ "$status" -eq 0 ] && [ "$broker_ok" -eq 1 ]; then
    echo "soak: PASS"
    exit 0
fi
KEEP_WORK=1
log_tail
[ "$status" -ne 0 ] || status=1
echo "soak: FAIL (driver status $status)" >&2
exit "$status"
