#!/usr/bin/env bash
# Compares shardmq with Mosquitto and rumqttd on the same bench-harness scenarios, one broker at
# a time: each broker is started fresh for each scenario, pinned to one CPU (taskset -c 0), the
# harness to another (taskset -c 1). Writes bench-harness/results/<date>-<host>.md with tables,
# the shardmq/peer ratios (broker CPU per delivered message is the headline) and SVG charts,
# next to the raw JSON lines and logs.
#
#   scripts/bench-compare.sh --quick                  # ~3 s per run, small scales
#   scripts/bench-compare.sh --duration 30            # the full set
#   scripts/bench-compare.sh --brokers mosquitto      # only some brokers
#
# Flags:
#   --duration S      measured seconds per run (default 10; --quick: 3)
#   --warmup S        warm-up seconds per run (default 2; --quick: 1)
#   --quick           short runs at small scales
#   --qos N           QoS of every scenario (default 1, as in the Open MQTT Benchmark Suite)
#   --brokers LIST    comma-separated subset of shardmq,mosquitto,rumqttd (default all), plus
#                     shardmq-base: another shardmq build named by SHARDMQ_BASELINE=/path, for
#                     before/after comparisons in one run (not in the default list)
#   --scenarios LIST  comma-separated subset of conn,p2p-max,p2p-paced,fanout,fanin-wildcard,
#                     fanin-shared,latency (default all)
#   --port N          first TCP port to use (default 18900; each broker gets its own)
#   --broker-cpu N    CPU for the broker (default 0)
#   --harness-cpu N   CPU for the harness (default 1)
#   --no-install      do not install missing peers (apt-get / cargo install)
#   --no-build        use existing binaries instead of building
#   --out-dir DIR     where the report goes (default bench-harness/results)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION="" WARMUP="" QUICK=0 QOS=1
BROKERS="shardmq,mosquitto,rumqttd"
SCENARIOS="conn,p2p-max,p2p-paced,fanout,fanin-wildcard,fanin-shared,latency"
PORT_BASE=18900 BROKER_CPU=0 HARNESS_CPU=1 INSTALL=1 BUILD=1
OUT_DIR="$ROOT/bench-harness/results"

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --quick) QUICK=1 ;;
        --qos) QOS="$2"; shift ;;
        --brokers) BROKERS="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --port) PORT_BASE="$2"; shift ;;
        --broker-cpu) BROKER_CPU="$2"; shift ;;
        --harness-cpu) HARNESS_CPU="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        --out-dir) OUT_DIR="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown flag: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-3}; WARMUP=${WARMUP:-1}
    CONN_CLIENTS=2000 CONN_RATE=1000
    P2P_PUBS=20 PACED_PUBS=200 PACED_RATE=20
    FANOUT_SUBS=100 FANIN_PUBS=200
else
    DURATION=${DURATION:-10}; WARMUP=${WARMUP:-2}
    # conn-tcp-10K-2K, p2p-1K-1K-1K-20K, fanout-5-1000-5-250K, fan-in 1000 -> 5 at 10 msg/s.
    CONN_CLIENTS=10000 CONN_RATE=2000
    P2P_PUBS=100 PACED_PUBS=1000 PACED_RATE=20
    FANOUT_SUBS=1000 FANIN_PUBS=1000
fi

log() { echo "[bench-compare] $*" >&2; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HARNESS="$TARGET/release/bench-harness"
# SHARDMQ_BIN=/path/to/shardmq measures another build (e.g. a baseline for before/after runs).
SHARDMQ_BIN="${SHARDMQ_BIN:-$TARGET/release/shardmq}"
DATE=$(date +%Y-%m-%d)
HOST=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)
STEM="$DATE-$HOST"
mkdir -p "$OUT_DIR"
JSONL="$OUT_DIR/$STEM.jsonl"
LOG="$OUT_DIR/$STEM.log"
MACHINE="$OUT_DIR/$STEM-machine.txt"
REPORT="$OUT_DIR/$STEM.md"
WORK=$(mktemp -d /tmp/bench-compare.XXXXXX)
: >"$JSONL"
: >"$LOG"

BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Pinning needs two CPUs.
PIN_BROKER=(taskset -c "$BROKER_CPU")
PIN_HARNESS=(taskset -c "$HARNESS_CPU")
if ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then
    log "WARNING: taskset missing or fewer than 2 CPUs: running unpinned (figures are less comparable)"
    PIN_BROKER=() PIN_HARNESS=()
fi

# Limits: brokers and harness inherit them.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -l "$(ulimit -Hl)" 2>/dev/null || true

want() { [[ ",$BROKERS," == *",$1,"* ]]; }

# --- Build -------------------------------------------------------------------------------------
SHARDMQ_OK=1
if [ "$BUILD" = 1 ]; then
    log "building the harness (cargo build --release -p bench-harness)"
    cargo build --release -p bench-harness
    if want shardmq; then
        log "building shardmq (cargo build --release)"
        if ! cargo build --release; then
            log "shardmq did not build: its runs are skipped"
            SHARDMQ_OK=0
        fi
    fi
fi
[ -x "$HARNESS" ] || { log "no harness binary at $HARNESS"; exit 1; }
if want shardmq && [ ! -x "$SHARDMQ_BIN" ]; then
    log "no shardmq binary at $SHARDMQ_BIN: its runs are skipped"
    SHARDMQ_OK=0
fi

# --- Peers -------------------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
MOSQUITTO_BIN=$(command -v mosquitto || true)
[ -z "$MOSQUITTO_BIN" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO_BIN=/usr/sbin/mosquitto
if want mosquitto && [ -z "$MOSQUITTO_BIN" ] && [ "$INSTALL" = 1 ]; then
    log "installing mosquitto (apt-get)"
    if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; then
        MOSQUITTO_BIN=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    fi
fi
RUMQTTD_BIN=$(command -v rumqttd || true)
[ -z "$RUMQTTD_BIN" ] && [ -x "$HOME/.cargo/bin/rumqttd" ] && RUMQTTD_BIN="$HOME/.cargo/bin/rumqttd"
if want rumqttd && [ -z "$RUMQTTD_BIN" ] && [ "$INSTALL" = 1 ]; then
    log "installing rumqttd (cargo install rumqttd --locked; a few minutes)"
    # rumqttd 0.20.0's lock file pins metrics 0.22.1, which recent compilers reject (E0521):
    # then resolve its dependencies afresh (metrics 0.22.4 builds).
    if cargo install rumqttd --locked || {
        log "the locked build failed: retrying without --locked"
        cargo install rumqttd
    }; then
        RUMQTTD_BIN=$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")
    fi
fi

# --- Broker configurations ---------------------------------------------------------------------
port_of() {
    case "$1" in shardmq) echo "$PORT_BASE" ;; mosquitto) echo $((PORT_BASE + 1)) ;; rumqttd) echo $((PORT_BASE + 2)) ;; shardmq-base) echo $((PORT_BASE + 3)) ;; esac
}

MOSQUITTO_CONF="$WORK/mosquitto.conf"
cat >"$MOSQUITTO_CONF" <<EOF
# Defaults except: loopback listener, anonymous clients, TCP_NODELAY (as the other brokers).
listener $(port_of mosquitto) 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
log_type error
log_type warning
EOF

RUMQTTD_CONF="$WORK/rumqttd.toml"
cat >"$RUMQTTD_CONF" <<EOF
# Minimal rumqttd: one MQTT 3.1.1 (v4) server on loopback; defaults from rumqttd.toml otherwise.
id = 0

[router]
id = 0
max_connections = 30000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$(port_of rumqttd)"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF

listening() { # port
    if command -v ss >/dev/null; then
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Starts broker $1 pinned, sets BROKER_PID; returns 1 if it does not come up.
start_broker() {
    local name=$1 port
    port=$(port_of "$name")
    if listening "$port"; then
        log "port $port is already in use: cannot start $name"
        return 1
    fi
    local blog="$WORK/$name.log"
    case "$name" in
        shardmq) "${PIN_BROKER[@]}" "$SHARDMQ_BIN" --listen "127.0.0.1:$port" --shards 1 >>"$blog" 2>&1 & ;;
        shardmq-base) "${PIN_BROKER[@]}" "$SHARDMQ_BASELINE" --listen "127.0.0.1:$port" --shards 1 >>"$blog" 2>&1 & ;;
        mosquitto) "${PIN_BROKER[@]}" "$MOSQUITTO_BIN" -c "$MOSQUITTO_CONF" >>"$blog" 2>&1 & ;;
        rumqttd) "${PIN_BROKER[@]}" "$RUMQTTD_BIN" --quiet --config "$RUMQTTD_CONF" >>"$blog" 2>&1 & ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            log "$name exited at start-up; its log:"
            tail -n 20 "$blog" >&2 || true
            wait "$BROKER_PID" 2>/dev/null || true
            BROKER_PID=""
            return 1
        fi
        if listening "$port"; then
            return 0
        fi
        sleep 0.1
    done
    log "$name did not listen on $port within 10 s; its log:"
    tail -n 20 "$blog" >&2 || true
    stop_broker
    return 1
}

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

scenario_args() {
    case "$1" in
        conn) echo "conn --clients $CONN_CLIENTS --conn-rate $CONN_RATE" ;;
        p2p-max) echo "p2p --pubs $P2P_PUBS" ;;
        p2p-paced) echo "p2p --pubs $PACED_PUBS --rate $PACED_RATE" ;;
        fanout) echo "fanout --pubs 5 --subs $FANOUT_SUBS --rate 50" ;;
        fanin-wildcard) echo "fanin --mode wildcard --pubs $FANIN_PUBS --subs 5 --rate 10" ;;
        # MQTT 3.1.1 for every broker (rumqttd's v4 server); all three accept \$share there.
        fanin-shared) echo "fanin --mode shared --protocol 3.1.1 --pubs $FANIN_PUBS --subs 5 --rate 10" ;;
        latency) echo "latency --pubs 10 --total-rate 1000" ;;
        *) log "unknown scenario $1"; return 1 ;;
    esac
}

# --- Runs --------------------------------------------------------------------------------------
declare -A AVAILABLE
for b in shardmq shardmq-base mosquitto rumqttd; do
    want "$b" || continue
    case "$b" in
        shardmq) [ "$SHARDMQ_OK" = 1 ] && AVAILABLE[$b]=1 ;;
        shardmq-base) [ -x "${SHARDMQ_BASELINE:-}" ] && AVAILABLE[$b]=1 || log "SHARDMQ_BASELINE is not an executable: shardmq-base skipped" ;;
        mosquitto) [ -n "$MOSQUITTO_BIN" ] && AVAILABLE[$b]=1 || log "mosquitto not available: skipped" ;;
        rumqttd) [ -n "$RUMQTTD_BIN" ] && AVAILABLE[$b]=1 || log "rumqttd not available: skipped" ;;
    esac
done

SKIPPED=()
FAILED_RUNS=0
IFS=',' read -r -a SCENARIO_LIST <<<"$SCENARIOS"
# Scenario by scenario, every broker in turn: brokers compared with each other run minutes
# apart at most, so a change in the machine's load shows in all of them alike.
declare -A BROKEN
for s in "${SCENARIO_LIST[@]}"; do
    for b in shardmq shardmq-base mosquitto rumqttd; do
        [ -n "${AVAILABLE[$b]:-}" ] || continue
        [ -z "${BROKEN[$b]:-}" ] || continue
        args=$(scenario_args "$s")
        if ! start_broker "$b"; then
            if [ "$b" = shardmq ]; then
                log "SKIPPING shardmq: the binary did not start (see above); the report has no shardmq figures"
            else
                log "SKIPPING $b: it did not start"
            fi
            SKIPPED+=("$b")
            BROKEN[$b]=1
            continue
        fi
        warm=$WARMUP
        [ "$s" = conn ] && warm=0
        # shellcheck disable=SC2086
        cmd=("${PIN_HARNESS[@]}" "$HARNESS" $args --port "$(port_of "$b")" --qos "$QOS"
             --duration "$DURATION" --warmup "$warm" --broker-pid "$BROKER_PID" --label "$b")
        log "$b / $s: ${cmd[*]}"
        echo "\$ ${cmd[*]}" >>"$LOG"
        status=0
        timeout $(( ${DURATION%.*} + ${warm%.*} + 180 )) "${cmd[@]}" >>"$JSONL" 2>"$WORK/run.err" || status=$?
        cat "$WORK/run.err" >&2
        cat "$WORK/run.err" >>"$LOG"
        if [ "$status" != 0 ]; then
            log "$b / $s: harness exit status $status (failed checks are in the report)"
            FAILED_RUNS=$((FAILED_RUNS + 1))
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            log "$b died during $s"
            echo "broker $b died during $s" >>"$LOG"
        fi
        stop_broker
        cat "$WORK/$b.log" >>"$LOG" 2>/dev/null || true
        : >"$WORK/$b.log"
    done
done

# --- Report ------------------------------------------------------------------------------------
{
    echo "CPU model:   $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "CPUs:        $(nproc) online ($(lscpu | sed -n 's/^Core(s) per socket: *//p') core(s) per socket, $(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core, $(lscpu | sed -n 's/^Socket(s): *//p') socket(s))"
    echo "Kernel:      $(uname -srm)"
    echo "OS:          $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "Memory:      $(free -h | awk '/^Mem:/ {print $2}')"
    echo "Pinning:     broker on CPU ${PIN_BROKER[2]:-none}, harness on CPU ${PIN_HARNESS[2]:-none}"
    echo "shardmq:     $(git rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git status --porcelain 2>/dev/null)" ] && echo ' (uncommitted changes)')$( [ "$SHARDMQ_OK" = 1 ] || echo ' (not run)')"
    [ -n "$MOSQUITTO_BIN" ] && echo "mosquitto:   $("$MOSQUITTO_BIN" -h 2>/dev/null | head -1)"
    [ -n "$RUMQTTD_BIN" ] && echo "rumqttd:     $("$RUMQTTD_BIN" --version 2>/dev/null | head -1)"
    echo "Run:         $(date -u +%Y-%m-%dT%H:%M:%SZ), $DURATION s measured + $WARMUP s warm-up per run, QoS $QOS"
} >"$MACHINE"

NOTES="Each broker is started fresh for each scenario (so RSS per connection starts from an idle
broker), pinned with \`taskset -c $BROKER_CPU\`; the harness runs pinned with \`taskset -c $HARNESS_CPU\`
(one event-loop thread). Broker CPU is utime+stime from /proc/<pid>/stat over the measurement
window. Commands: see \`$STEM.log\`; results: \`$STEM.jsonl\`.

- shardmq: \`shardmq --listen 127.0.0.1:PORT --shards 1\`
- mosquitto: defaults plus \`set_tcp_nodelay true\` (default queue limits: max_queued_messages 1000,
  max_inflight_messages 20 — a subscriber that falls behind loses QoS 1 messages, which the harness reports)
- rumqttd: one v4 (MQTT 3.1.1) server, router defaults from its sample rumqttd.toml, max_inflight_count 100
- fan-in on shared subscriptions runs at MQTT 3.1.1 (\`\$share/bench/...\`) for every broker"
if [ ${#SKIPPED[@]} -gt 0 ]; then
    NOTES="$NOTES

Skipped (did not start): ${SKIPPED[*]}."
fi

"$HARNESS" report --input "$JSONL" --out "$REPORT" --machine "$MACHINE" --notes "$NOTES"
log "report: $REPORT"
log "$FAILED_RUNS run(s) failed their checks; skipped brokers: ${SKIPPED[*]:-none}"
