#!/usr/bin/env bash
# TLS and WebSocket figures for one broker, measured with bench-harness:
#   - TLS handshakes/s: an unpaced connection storm over TLS (every connection a full handshake,
#     no resumption), next to the same storm over plain TCP
#   - p2p QoS 1 throughput (and broker CPU per message) over TCP vs TLS, and over ws and wss
#   - broker RSS per idle TLS connection: 5,000 idle TLS connections on a fresh broker, RSS
#     after minus before, divided (and the same over TCP for comparison)
# Certificates (a CA, a server certificate for localhost / 127.0.0.1, a client certificate) are
# generated with openssl in a temporary directory. Every run gets a fresh broker pinned to
# --broker-cpu (default 0), the harness pinned to --harness-cpu (default 1), one thread.
#
#   scripts/bench-tls.sh mosquitto
#   scripts/bench-tls.sh shardmq                      # target/release/shardmq or SHARDMQ_BIN
#   BROKER=shardmq SHARDMQ_BIN=/path/shardmq scripts/bench-tls.sh
#   scripts/bench-tls.sh mosquitto --duration 3 --idle 5000 --out results.jsonl
#
# Flags:
#   --duration S      measured seconds of the p2p runs (default 5)
#   --warmup S        warm-up seconds of the p2p runs (default 1)
#   --pubs N          p2p publisher/subscriber pairs (default 10)
#   --storm N         connections of the handshake storms (default 2000)
#   --idle N          idle connections of the RSS runs (default 5000)
#   --key-type T      ec (P-256, default) or rsa (2048 bits) for the certificates
#   --client-cert     the broker requires a client certificate; the harness presents one
#   --runs LIST       comma-separated subset of storm-tcp,storm-tls,p2p-tcp,p2p-tls,p2p-ws,
#                     p2p-wss,idle-tcp,idle-tls (default all)
#   --port N          first of four ports: TCP N, TLS N+1, ws N+2, wss N+3 (default 27950)
#   --broker-cpu N    CPU for the broker (default 0)
#   --harness-cpu N   CPU for the harness (default 1)
#   --out FILE        also append the JSON result lines to FILE
#   --no-build        do not build the harness (HARNESS_BIN or target/release/bench-harness)
#
# Brokers:
#   mosquitto   `mosquitto` from PATH (MOSQUITTO_BIN), listeners from a generated config:
#               plain, TLS (certfile/keyfile/cafile), `protocol websockets`, and websockets
#               with certfile/keyfile; allow_anonymous true, set_tcp_nodelay true,
#               max_queued_messages 0. (Mosquitto's websockets listeners bind every address,
#               whatever the config says.)
#   shardmq     SHARDMQ_BIN (default target/release/shardmq) with --shards 1 --log-level warn
#               --listen, --tls-listen ADDR --cert --key [--cafile --require-certificate],
#               --ws-listen ADDR, --wss-listen ADDR (path /mqtt)
#
# Prints a markdown table at the end; exits non-zero if a run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

BROKER="${BROKER:-}"
DURATION=5 WARMUP=1 PUBS=10 STORM=2000 IDLE=5000 KEY_TYPE=ec CLIENT_CERT=0
RUNS="storm-tcp,storm-tls,p2p-tcp,p2p-tls,p2p-ws,p2p-wss,idle-tcp,idle-tls"
PORT_BASE=27950 BROKER_CPU=0 HARNESS_CPU=1 OUT="" BUILD=1

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        shardmq|mosquitto) BROKER="$1" ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --pubs) PUBS="$2"; shift ;;
        --storm) STORM="$2"; shift ;;
        --idle) IDLE="$2"; shift ;;
        --key-type) KEY_TYPE="$2"; shift ;;
        --client-cert) CLIENT_CERT=1 ;;
        --runs) RUNS="$2"; shift ;;
        --port) PORT_BASE="$2"; shift ;;
        --broker-cpu) BROKER_CPU="$2"; shift ;;
        --harness-cpu) HARNESS_CPU="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$BROKER" in
    shardmq|mosquitto) ;;
    "") echo "which broker? shardmq or mosquitto (argument or BROKER=)" >&2; exit 2 ;;
    *) echo "unknown broker $BROKER (shardmq or mosquitto)" >&2; exit 2 ;;
esac
case "$KEY_TYPE" in ec|rsa) ;; *) echo "--key-type: ec or rsa" >&2; exit 2 ;; esac

log() { echo "[bench-tls] $*" >&2; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HARNESS="${HARNESS_BIN:-$TARGET/release/bench-harness}"
SHARDMQ_BIN="${SHARDMQ_BIN:-$TARGET/release/shardmq}"
MOSQUITTO_BIN="${MOSQUITTO_BIN:-$(command -v mosquitto || true)}"
P_TCP=$PORT_BASE P_TLS=$((PORT_BASE + 1)) P_WS=$((PORT_BASE + 2)) P_WSS=$((PORT_BASE + 3))

if [ "$BUILD" = 1 ] && [ -z "${HARNESS_BIN:-}" ]; then
    log "building the harness (cargo build --release -p bench-harness)"
    cargo build --release -p bench-harness
fi
[ -x "$HARNESS" ] || { log "no harness at $HARNESS"; exit 1; }
case "$BROKER" in
    mosquitto)
        [ -n "$MOSQUITTO_BIN" ] || { log "mosquitto not found (apt-get install mosquitto)"; exit 1; } ;;
    shardmq)
        [ -x "$SHARDMQ_BIN" ] || { log "no shardmq at $SHARDMQ_BIN (cargo build --release)"; exit 1; }
        if ! "$SHARDMQ_BIN" --help 2>&1 | grep -q -- '--tls-listen'; then
            log "$SHARDMQ_BIN has no --tls-listen: this build has no TLS listeners"
            exit 1
        fi ;;
esac

WORK=$(mktemp -d /tmp/bench-tls.XXXXXX)
BROKER_PID=""
stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}
cleanup() {
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT

PIN_BROKER=(taskset -c "$BROKER_CPU")
PIN_HARNESS=(taskset -c "$HARNESS_CPU")
if ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then
    log "WARNING: taskset missing or fewer than 2 CPUs: running unpinned"
    PIN_BROKER=() PIN_HARNESS=()
fi
# The broker and the harness inherit the open-file limit (5,000 idle connections and more).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- certificates -------------------------------------------------------------------------
CERTS="$WORK/certs"
mkdir -p "$CERTS"
newkey() { # key file
    if [ "$KEY_TYPE" = rsa ]; then
        openssl genrsa -out "$1" 2048 2>/dev/null
    else
        openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null
    fi
}
(
    cd "$CERTS"
    newkey ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=bench-tls CA" -out ca.crt \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    newkey server.key
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
        "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
        -extfile server.ext -out server.crt 2>/dev/null
    newkey client.key
    openssl req -new -key client.key -subj "/CN=bench-client" -out client.csr
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
        "extendedKeyUsage=clientAuth" >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
        -extfile client.ext -out client.crt 2>/dev/null
)
# Mosquitto drops root privileges to its own user: it must be able to read the keys.
chmod 755 "$WORK" "$CERTS"
chmod 644 "$CERTS"/*
log "certificates ($KEY_TYPE) in $CERTS"

TLS_ARGS=(--tls --cafile "$CERTS/ca.crt" --server-name localhost)
if [ "$CLIENT_CERT" = 1 ]; then
    TLS_ARGS+=(--cert "$CERTS/client.crt" --key "$CERTS/client.key")
fi

# --- broker -------------------------------------------------------------------------------
MOSQUITTO_CONF="$WORK/mosquitto.conf"
{
    # As in bench-compare.sh (defaults, TCP_NODELAY), plus no limit on queued QoS 1/2 messages:
    # with the default 1000, Mosquitto silently drops a subscriber's messages once it is 1,000
    # behind (seen over wss at full speed), and the run fails on loss instead of measuring.
    echo "per_listener_settings false"
    echo "set_tcp_nodelay true"
    echo "max_queued_messages 0"
    echo "allow_anonymous true"
    echo "max_connections -1"
    echo "persistence false"
    echo "log_dest stderr"
    echo "log_type error"
    echo "log_type warning"
    echo "listener $P_TCP 127.0.0.1"
    echo "listener $P_TLS 127.0.0.1"
    echo "certfile $CERTS/server.crt"
    echo "keyfile $CERTS/server.key"
    echo "cafile $CERTS/ca.crt"
    [ "$CLIENT_CERT" = 1 ] && echo "require_certificate true"
    echo "listener $P_WS 127.0.0.1"
    echo "protocol websockets"
    echo "listener $P_WSS 127.0.0.1"
    echo "protocol websockets"
    echo "certfile $CERTS/server.crt"
    echo "keyfile $CERTS/server.key"
    echo "cafile $CERTS/ca.crt"
    [ "$CLIENT_CERT" = 1 ] && echo "require_certificate true"
    true
} >"$MOSQUITTO_CONF"

SHARDMQ_ARGS=(--shards 1 --log-level warn --listen "127.0.0.1:$P_TCP"
    --tls-listen "127.0.0.1:$P_TLS" --ws-listen "127.0.0.1:$P_WS" --wss-listen "127.0.0.1:$P_WSS"
    --cert "$CERTS/server.crt" --key "$CERTS/server.key")
if [ "$CLIENT_CERT" = 1 ]; then
    SHARDMQ_ARGS+=(--cafile "$CERTS/ca.crt" --require-certificate)
fi

listening() { # port
    if command -v ss >/dev/null; then
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

BLOG="$WORK/broker.log"
start_broker() {
    for p in $P_TCP $P_TLS $P_WS $P_WSS; do
        if listening "$p"; then
            log "port $p is already in use (--port to move)"
            return 1
        fi
    done
    case "$BROKER" in
        mosquitto) "${PIN_BROKER[@]}" "$MOSQUITTO_BIN" -c "$MOSQUITTO_CONF" >>"$BLOG" 2>&1 & ;;
        shardmq) "${PIN_BROKER[@]}" "$SHARDMQ_BIN" "${SHARDMQ_ARGS[@]}" >>"$BLOG" 2>&1 & ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            log "$BROKER exited at start-up; its log:"
            tail -n 20 "$BLOG" >&2 || true
            wait "$BROKER_PID" 2>/dev/null || true
            BROKER_PID=""
            return 1
        fi
        local up=1
        for p in $P_TCP $P_TLS $P_WS $P_WSS; do
            listening "$p" || up=0
        done
        [ "$up" = 1 ] && { sleep 0.2; return 0; }
        sleep 0.1
    done
    log "$BROKER did not listen on all four ports within 10 s; its log:"
    tail -n 20 "$BLOG" >&2 || true
    stop_broker
    return 1
}

# --- runs ---------------------------------------------------------------------------------
run_args() {
    local p2p=(p2p --pubs "$PUBS" --qos 1 --duration "$DURATION" --warmup "$WARMUP" --drain 3)
    local storm=(conn --clients "$STORM" --conn-rate 0 --max-pending 64 --duration 1 --warmup 0)
    local idle=(conn --clients "$IDLE" --conn-rate 2000 --duration 2 --warmup 1)
    case "$1" in
        storm-tcp) echo "${storm[*]} --port $P_TCP" ;;
        storm-tls) echo "${storm[*]} --port $P_TLS ${TLS_ARGS[*]}" ;;
        p2p-tcp) echo "${p2p[*]} --port $P_TCP" ;;
        p2p-tls) echo "${p2p[*]} --port $P_TLS ${TLS_ARGS[*]}" ;;
        p2p-ws) echo "${p2p[*]} --port $P_WS --ws --ws-path /mqtt" ;;
        p2p-wss) echo "${p2p[*]} --port $P_WSS --ws --ws-path /mqtt ${TLS_ARGS[*]}" ;;
        idle-tcp) echo "${idle[*]} --port $P_TCP" ;;
        idle-tls) echo "${idle[*]} --port $P_TLS ${TLS_ARGS[*]}" ;;
        *) return 1 ;;
    esac
}

JSONL="$WORK/results.jsonl"
: >"$JSONL"
FAILED=0
IFS=, read -r -a RUN_LIST <<<"$RUNS"
for run in "${RUN_LIST[@]}"; do
    if ! args=$(run_args "$run"); then
        log "unknown run $run"
        exit 2
    fi
    # A fresh broker per run: the idle runs measure RSS from a clean start, the others do not
    # inherit sessions or fragmentation.
    start_broker || { FAILED=1; break; }
    log "$run: bench-harness $args"
    # shellcheck disable=SC2086 # args are words built above (paths without spaces: mktemp)
    # The label is the broker alone (`bench-harness report` groups by it); the transport is in
    # the scenario name.
    if ! "${PIN_HARNESS[@]}" "$HARNESS" $args --threads 1 --broker-pid "$BROKER_PID" \
        --label "$BROKER" >"$WORK/$run.json" 2>"$WORK/$run.err"; then
        log "$run failed:"
        tail -n 15 "$WORK/$run.err" >&2 || true
        FAILED=1
    else
        grep -E '^(==|connections|throughput|broker|   +rss)' "$WORK/$run.err" >&2 || true
    fi
    cat "$WORK/$run.json" >>"$JSONL"
    stop_broker
done
[ -n "$OUT" ] && cat "$JSONL" >>"$OUT"

# --- summary ------------------------------------------------------------------------------
python3 - "$WORK" "$BROKER" "${RUN_LIST[@]}" <<'EOF'
import json, os, sys
work, broker, names = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = {}
for name in names:
    path = os.path.join(work, name + ".json")
    if os.path.exists(path):
        text = open(path).read().strip()
        if text:
            runs[name] = json.loads(text.splitlines()[-1])

def th(v):
    return "-" if v is None else f"{v:,.0f}"

def get(name, *keys):
    r = runs.get(name)
    for k in keys:
        if r is None:
            return None
        r = r.get(k) if isinstance(r, dict) else None
    return r

print(f"\n### {broker}\n")
print("| run | figure | value | broker CPU | harness CPU | ok |")
print("|---|---|---|---|---|---|")
for name in ["storm-tcp", "storm-tls"]:
    if name in runs:
        r = runs[name]
        c = r["connections"]
        what = "TLS handshakes/s (+ CONNECT)" if name.endswith("tls") else "TCP connections/s (+ CONNECT)"
        setup = get(name, "broker", "cpu_s_setup")
        per = f"{setup / c['ok'] * 1e6:,.0f} µs per connection" if setup and c["ok"] else "-"
        print(f"| {r['name']} | {what}, connect p50 {c['latency_us']['p50'] / 1000:.1f} ms | {th(c['rate_per_s'])} | {per} | {r['harness']['setup_cpu_percent']}% of 1 core | {r['ok']} |")
for name in ["p2p-tcp", "p2p-tls", "p2p-ws", "p2p-wss"]:
    if name in runs:
        r = runs[name]
        cpu = get(name, "broker", "cpu_s_per_million_delivered")
        pct = get(name, "broker", "cpu_percent")
        print(f"| {r['name']} | QoS 1 delivered msg/s, latency p50 {r['latency_us']['p50'] / 1000:.1f} ms | {th(r['delivered_per_s'])} | {cpu} s per million ({pct}% of 1 core) | {r['harness']['cpu_percent']}% | {r['ok']} |")
for name in ["idle-tcp", "idle-tls"]:
    if name in runs:
        r = runs[name]
        per = get(name, "broker", "rss_bytes_per_conn")
        ok = r["connections"]["ok"]
        before = get(name, "broker", "rss_kb_before")
        after = get(name, "broker", "rss_kb")
        print(f"| {r['name']} | broker RSS bytes per idle {name[5:].upper()} connection ({before:,} -> {after:,} KiB, {ok:,} connections) | {th(per)} | - | - | {r['ok']} |")
EOF
exit "$FAILED"
