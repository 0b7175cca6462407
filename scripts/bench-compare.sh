#!/usr/bin/env bash
# Compares shardmq with Mosquitto, rumqttd and FlashMQ on the same bench-harness scenarios, one
# broker at a time: each broker is started fresh for each scenario, pinned to one CPU
# (taskset -c 0) and run with one shard / one worker thread, the harness pinned to another
# (taskset -c 1). Writes bench-harness/results/<date>-<host>.md with tables, the shardmq/peer
# ratios (broker CPU per delivered message is the headline), a "where the time goes" section
# (system calls and context switches per delivered message, from perf or /proc) and SVG charts,
# next to the raw JSON lines and logs.
#
#   scripts/bench-compare.sh --quick                  # ~3 s per run, small scales
#   scripts/bench-compare.sh --duration 30            # the full set
#   scripts/bench-compare.sh --brokers mosquitto      # only some brokers
#   scripts/bench-compare.sh --quick --scenarios quiet-1k,quiet-5k,storm,idle-15k
#
# Scenarios (the last four keep their scale with --quick: the scale is what they measure):
#   conn, p2p-max, p2p-paced, fanout, fanin-wildcard, fanin-shared, latency  (see scenario_args)
#   quiet-1k   1,000 publisher/subscriber pairs x 20 msg/s, QoS 1, 64 B payloads
#   quiet-5k   5,000 pairs x 2 msg/s, same (10,000 sockets in one harness process)
#   storm      unpaced connection storm: 10,000 connections, 64 handshakes in flight,
#              two harness processes (--workers 2); connections/s
#   idle-15k   15,000 idle connections (5,000/s), broker RSS per connection
#
# Flags:
#   --duration S      measured seconds per run (default 10; --quick: 3)
#   --warmup S        warm-up seconds per run (default 2; --quick: 1)
#   --quick           short runs at small scales
#   --qos N           QoS of every scenario (default 1, as in the Open MQTT Benchmark Suite)
#   --brokers LIST    comma-separated subset of shardmq,mosquitto,rumqttd,flashmq (default all),
#                     plus shardmq-base: another shardmq build named by SHARDMQ_BASELINE=/path,
#                     for before/after comparisons in one run (not in the default list)
#   --scenarios LIST  comma-separated subset of conn,p2p-max,p2p-paced,fanout,fanin-wildcard,
#                     fanin-shared,latency,quiet-1k,quiet-5k,storm,idle-15k (default all)
#   --port N          first TCP port to use (default 18900; each broker gets its own)
#   --broker-cpu N    CPU for the broker (default 0)
#   --harness-cpu N   CPU for the harness (default 1)
#   --no-install      do not install missing peers (apt-get / cargo install) nor FlashMQ's build
#                     dependencies (cmake g++ libssl-dev)
#   --no-build        use existing binaries instead of building (FlashMQ: PATH, FLASHMQ_BIN or
#                     an earlier build in the cache only)
#   --no-perf         do not count the brokers' system calls with perf (/proc counters only)
#   --out-dir DIR     where the report goes (default bench-harness/results)
#
# FlashMQ (in no package registry): `flashmq` from PATH, else FLASHMQ_BIN, else the pinned
# release (FLASHMQ_TAG, default v1.26.2) built by scripts/flashmq-build.sh from FLASHMQ_SRC (a
# source tree or a git repository with the tag) or from a clone into
# ~/.cache/shardmq-bench/flashmq; skipped with a message when none of these works. It runs with
# thread_count 1 (one worker thread against one shard).
#
# Where the time goes: when perf can count here (`perf stat -e raw_syscalls:sys_enter true`),
# every run is repeated on a fresh broker with the harness running `perf stat -p <broker>`
# enabled over the measurement window (connection scenarios: over the set-up); those counts go
# into "where the time goes", the headline figures come from the runs without perf (its
# tracing costs the broker CPU). Otherwise, or with --no-perf, /proc counters only, one run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION="" WARMUP="" QUICK=0 QOS=1
BROKERS="shardmq,mosquitto,rumqttd,flashmq"
SCENARIOS="conn,p2p-max,p2p-paced,fanout,fanin-wildcard,fanin-shared,latency,quiet-1k,quiet-5k,storm,idle-15k"
PORT_BASE=18900 BROKER_CPU=0 HARNESS_CPU=1 INSTALL=1 BUILD=1 PERF=1
OUT_DIR="$ROOT/bench-harness/results"

usage() { sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//'; }
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
        --no-perf) PERF=0 ;;
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
PERF_JSONL="$OUT_DIR/$STEM-perf.jsonl"
LOG="$OUT_DIR/$STEM.log"
MACHINE="$OUT_DIR/$STEM-machine.txt"
REPORT="$OUT_DIR/$STEM.md"
WORK=$(mktemp -d /tmp/bench-compare.XXXXXX)
: >"$JSONL"
: >"$PERF_JSONL"
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

FLASHMQ_BIN_FOUND=""
if want flashmq; then
    if [ "$BUILD" = 0 ] || [ "$INSTALL" = 0 ]; then
        # Only what exists: FLASHMQ_BIN, PATH or an earlier build in the cache.
        FLASHMQ_BIN_FOUND=$(FLASHMQ_SRC=/nonexistent scripts/flashmq-build.sh --no-install 2>/dev/null || true)
    fi
    if [ -z "$FLASHMQ_BIN_FOUND" ] && [ "$BUILD" = 1 ]; then
        fm_args=()
        [ "$INSTALL" = 1 ] || fm_args+=(--no-install)
        FLASHMQ_BIN_FOUND=$(scripts/flashmq-build.sh "${fm_args[@]}" || true)
    fi
    if [ -z "$FLASHMQ_BIN_FOUND" ]; then
        log "SKIPPING flashmq: not on PATH, no FLASHMQ_BIN, and it could not be built from FLASHMQ_SRC or a clone (see above)"
    fi
fi

# Where the time goes: perf if it can count system calls here.
PERF_ARGS=()
if [ "$PERF" = 1 ]; then
    if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
        PERF_ARGS=(--perf)
    else
        log "perf cannot count raw_syscalls:sys_enter here (install linux-perf, run as root or lower kernel.perf_event_paranoid): /proc counters only"
    fi
fi

# --- Broker configurations ---------------------------------------------------------------------
port_of() {
    case "$1" in shardmq) echo "$PORT_BASE" ;; mosquitto) echo $((PORT_BASE + 1)) ;; rumqttd) echo $((PORT_BASE + 2)) ;; shardmq-base) echo $((PORT_BASE + 3)) ;; flashmq) echo $((PORT_BASE + 4)) ;; esac
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

FLASHMQ_CONF="$WORK/flashmq.conf"
cat >"$FLASHMQ_CONF" <<EOF
# Defaults except: one worker thread (1 shard vs 1 thread), loopback IPv4 listener, anonymous
# clients, TCP_NODELAY (as the other brokers), no persistence (no storage_dir), errors only,
# the open-file limit the other brokers have.
thread_count 1
allow_anonymous true
log_level error
rlimit_nofile $(ulimit -Hn)
listen {
    protocol mqtt
    inet_protocol ip4
    inet4_bind_address 127.0.0.1
    port $(port_of flashmq)
    tcp_nodelay true
}
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
        shardmq) "${PIN_BROKER[@]}" "$SHARDMQ_BIN" --listen "127.0.0.1:$port" --shards 1 --log-level warn >>"$blog" 2>&1 & ;;
        shardmq-base) "${PIN_BROKER[@]}" "$SHARDMQ_BASELINE" --listen "127.0.0.1:$port" --shards 1 --log-level warn >>"$blog" 2>&1 & ;;
        mosquitto) "${PIN_BROKER[@]}" "$MOSQUITTO_BIN" -c "$MOSQUITTO_CONF" >>"$blog" 2>&1 & ;;
        rumqttd) "${PIN_BROKER[@]}" "$RUMQTTD_BIN" --quiet --config "$RUMQTTD_CONF" >>"$blog" 2>&1 & ;;
        flashmq) "${PIN_BROKER[@]}" "$FLASHMQ_BIN_FOUND" --config-file "$FLASHMQ_CONF" >>"$blog" 2>&1 & ;;
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
        # Many quiet connections: 10,000 sockets in one harness process (open-file limit 20,000).
        quiet-1k) echo "quiet --pubs 1000 --rate 20 --payload 64" ;;
        quiet-5k) echo "quiet --pubs 5000 --rate 2 --payload 64" ;;
        # Unpaced storm: as fast as 64 handshakes in flight allow, two harness processes.
        storm) echo "conn --clients 10000 --conn-rate 0 --max-pending 64 --workers 2" ;;
        idle-15k) echo "conn --clients 15000 --conn-rate 5000" ;;
        *) log "unknown scenario $1"; return 1 ;;
    esac
}

# --- Runs --------------------------------------------------------------------------------------
SKIPPED=()
BROKER_ORDER=(shardmq shardmq-base mosquitto rumqttd flashmq)
declare -A AVAILABLE
for b in "${BROKER_ORDER[@]}"; do
    want "$b" || continue
    case "$b" in
        shardmq) [ "$SHARDMQ_OK" = 1 ] && AVAILABLE[$b]=1 ;;
        shardmq-base) [ -x "${SHARDMQ_BASELINE:-}" ] && AVAILABLE[$b]=1 || log "SHARDMQ_BASELINE is not an executable: shardmq-base skipped" ;;
        mosquitto) [ -n "$MOSQUITTO_BIN" ] && AVAILABLE[$b]=1 || log "mosquitto not available: skipped" ;;
        rumqttd) [ -n "$RUMQTTD_BIN" ] && AVAILABLE[$b]=1 || log "rumqttd not available: skipped" ;;
        flashmq) [ -n "$FLASHMQ_BIN_FOUND" ] && AVAILABLE[$b]=1 || SKIPPED+=("flashmq (not available)") ;;
    esac
done

FAILED_RUNS=0
IFS=',' read -r -a SCENARIO_LIST <<<"$SCENARIOS"
# Scenario by scenario, every broker in turn: brokers compared with each other run minutes
# apart at most, so a change in the machine's load shows in all of them alike.
declare -A BROKEN
# With perf, every run is repeated with --perf on a fresh broker into $PERF_JSONL: perf's
# syscall tracing costs the broker CPU (measured: 1-2.5 µs per message on quiet-1k), so the
# headline figures come from the runs without it and "where the time goes" from the others.
PASSES=(main)
[ ${#PERF_ARGS[@]} -gt 0 ] && PASSES+=(perf)
for s in "${SCENARIO_LIST[@]}"; do
    for b in "${BROKER_ORDER[@]}"; do
      for pass in "${PASSES[@]}"; do
        [ -n "${AVAILABLE[$b]:-}" ] || continue
        [ -z "${BROKEN[$b]:-}" ] || continue
        args=$(scenario_args "$s")
        out="$JSONL" extra=()
        [ "$pass" = perf ] && out="$PERF_JSONL" extra=("${PERF_ARGS[@]}")
        if ! start_broker "$b"; then
            if [ "$b" = shardmq ]; then
                log "SKIPPING shardmq: the binary did not start (see above); the report has no shardmq figures"
            else
                log "SKIPPING $b: it did not start"
            fi
            SKIPPED+=("$b (did not start)")
            BROKEN[$b]=1
            continue
        fi
        warm=$WARMUP
        case "$s" in conn|storm|idle-15k) warm=0 ;; esac
        # shellcheck disable=SC2086
        cmd=("${PIN_HARNESS[@]}" "$HARNESS" $args --port "$(port_of "$b")" --qos "$QOS"
             --duration "$DURATION" --warmup "$warm" --broker-pid "$BROKER_PID" --label "$b"
             "${extra[@]}")
        log "$b / $s: ${cmd[*]}"
        echo "\$ ${cmd[*]}" >>"$LOG"
        status=0
        timeout $(( ${DURATION%.*} + ${warm%.*} + 180 )) "${cmd[@]}" >>"$out" 2>"$WORK/run.err" || status=$?
        cat "$WORK/run.err" >&2
        cat "$WORK/run.err" >>"$LOG"
        if [ "$status" != 0 ] && [ "$pass" = main ]; then
            log "$b / $s: harness exit status $status (failed checks are in the report)"
            FAILED_RUNS=$((FAILED_RUNS + 1))
        elif [ "$status" != 0 ]; then
            log "$b / $s (perf run): harness exit status $status"
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
    [ -n "$FLASHMQ_BIN_FOUND" ] && echo "flashmq:     $("$FLASHMQ_BIN_FOUND" --version 2>/dev/null | grep -Ei 'flashmq.*version' | head -1) ($FLASHMQ_BIN_FOUND)"
    echo "perf:        $(if [ ${#PERF_ARGS[@]} -gt 0 ]; then perf --version 2>/dev/null; else echo 'not used: /proc counters only'; fi)"
    echo "Run:         $(date -u +%Y-%m-%dT%H:%M:%SZ), $DURATION s measured + $WARMUP s warm-up per run, QoS $QOS"
} >"$MACHINE"

if [ ${#PERF_ARGS[@]} -gt 0 ]; then
    PERF_NOTE="\`perf stat -e raw_syscalls:sys_enter,context-switches -p <broker>\`, enabled by the harness over each window (\`--perf\`), in a second run of each scenario on a fresh broker (\`$STEM-perf.jsonl\`): the headline figures come from the runs without perf"
else
    PERF_NOTE="/proc counters only (perf unavailable or --no-perf)"
fi
NOTES="Each broker is started fresh for each scenario (so RSS per connection starts from an idle
broker), pinned with \`taskset -c $BROKER_CPU\`; the harness runs pinned with \`taskset -c $HARNESS_CPU\`
(one event-loop thread). Broker CPU is utime+stime from /proc/<pid>/stat over the measurement
window. Commands: see \`$STEM.log\`; results: \`$STEM.jsonl\`.

- shardmq: \`shardmq --listen 127.0.0.1:PORT --shards 1 --log-level warn\` (no log line per connection, as the peers)
- mosquitto: defaults plus \`set_tcp_nodelay true\` (default queue limits: max_queued_messages 1000,
  max_inflight_messages 20 — a subscriber that falls behind loses QoS 1 messages, which the harness reports)
- rumqttd: one v4 (MQTT 3.1.1) server, router defaults from its sample rumqttd.toml, max_inflight_count 100
- flashmq: \`thread_count 1\` (one worker thread against one shard), IPv4 loopback listener,
  \`allow_anonymous true\`, \`tcp_nodelay true\`, no persistence, otherwise defaults
  (max_qos_msg_pending_per_client 512)
- fan-in on shared subscriptions runs at MQTT 3.1.1 (\`\$share/bench/...\`) for every broker
- quiet-*: QoS $QOS, 64 B payloads, every pair on its own topic, publishers paced and spread
  evenly over each interval; what matters is broker CPU per delivered message and p99 latency
- connection storm (conn-tcp-10K-max): two harness processes (\`--workers 2\`), both on the
  harness CPU, 64 handshakes in flight; idle connections (conn-tcp-15K-5K): RSS per connection
  = (RSS after the hold - RSS of the fresh broker) / connections
- system calls and context switches: $PERF_NOTE"
if [ ${#SKIPPED[@]} -gt 0 ]; then
    NOTES="$NOTES

Skipped: ${SKIPPED[*]}."
fi

counters=()
[ -s "$PERF_JSONL" ] && counters=(--counters "$PERF_JSONL")
"$HARNESS" report --input "$JSONL" --out "$REPORT" --machine "$MACHINE" --notes "$NOTES" "${counters[@]}"
log "report: $REPORT"
log "$FAILED_RUNS run(s) failed their checks; skipped brokers: ${SKIPPED[*]:-none}"
