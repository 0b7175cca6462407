#!/usr/bin/env bash
# Figures for the durable store (issue 11), in one run, on release builds:
#
#   throughput  p2p QoS 1, 10 pairs, with bench-harness (clean sessions, as in every harness
#               scenario): shardmq in memory vs --data-dir with --sync interval vs --sync always
#   harness-persistent
#               p2p QoS 1 with persistent sessions through bench-harness (`p2p --persistent`:
#               clean session 0 under run-unique client ids, cleared at the end), so every
#               QoS 1 message to a subscriber is journaled and its PUBACK waits for the
#               journal: in memory vs --sync interval vs --sync always, for each --pairs count,
#               --repeat times (the modes interleaved), a fresh broker and directory per run
#   persistent  the same p2p QoS 1 with persistent sessions through 10 mosquitto_sub -c /
#               mosquitto_pub -l pairs, N messages each, wall time from the first publish to the
#               last delivery (client-bound); in memory, interval, always, and Mosquitto
#               (persistence true) for reference
#   disk        disk bytes per queued message: 100 persistent subscribers offline, N messages
#               published (QoS 1, acknowledged), `du` of the data directory before / after, / N;
#               again after a restart (shardmq compacts into a snapshot at start); Mosquitto's
#               mosquitto.db after its shutdown save
#   recovery    start-up time on a generated data directory of 100,000 sessions x 10 queued
#               messages and 1,000,000 retained messages: from exec to the first CONNACK,
#               first start (logs only) and second start (on the snapshot the first one wrote),
#               with the broker's RSS once up. The directory is written by a small generator
#               built against the store's own encoder (shardmq::store, a throw-away crate in the
#               work directory; the repository has no generator binary)
#   crash       kill -9 at seeded random moments (--rounds, default 5) while a publisher sends
#               numbered QoS 1 messages to a persistent subscriber that is offline; after each
#               restart the subscriber drains its queue: how many messages whose PUBACK the
#               publisher saw never arrive. shardmq --sync interval, --sync always, Mosquitto
#               (persistence true, autosave_interval at its default of 1800 s) and Mosquitto
#               with autosave_interval 1
#
# The clients of the persistent, disk and crash parts are a small MQTT 3.1.1 driver written to
# the work directory (Python 3, standard library only) and mosquitto_pub / mosquitto_sub.
# Brokers are started fresh for each run, pinned to --broker-cpu (default 0), the clients to
# --harness-cpu (default 1), as in scripts/bench-compare.sh; shardmq runs --shards 1
# --log-level warn unless --shards says otherwise.
#
#   scripts/bench-durability.sh                       # everything
#   scripts/bench-durability.sh --quick               # small sizes, ~2 minutes
#   scripts/bench-durability.sh --parts crash --brokers mosquitto
#
# Flags:
#   --parts LIST      comma-separated subset of throughput,harness-persistent,persistent,disk,
#                     recovery,crash (default all)
#   --brokers LIST    comma-separated subset of shardmq,mosquitto (default both; the parts
#                     without Mosquitto ignore it)
#   --quick           short runs and small sizes (throughput and harness-persistent 3 s, one run
#                     of 10 pairs each, persistent 5,000 messages per
#                     pair, disk 20,000 messages, recovery 10,000 sessions / 100,000 retained,
#                     crash 3 rounds)
#   --duration S      measured seconds of the harness runs (default 10)
#   --pairs LIST      publisher/subscriber pairs of the harness-persistent runs (default 10,100;
#                     --quick: 10)
#   --repeat N        runs per mode and pair count of the harness-persistent part (default 3;
#                     --quick: 1); the report gives each run and the median
#   --quiet-wait S    before each harness-persistent run, wait up to S seconds (default 0) for
#                     the other processes on the machine to use under 20% of a CPU over 1 s;
#                     either way each run records the CPU the other processes used during it
#   --messages N      messages per pair of the persistent runs (default 20000)
#   --disk-messages N messages of the disk runs (default 100000)
#   --payload N       payload bytes of the persistent, disk and crash runs (default 64)
#   --sessions N      sessions of the recovery directory (default 100000)
#   --queued N        queued messages per session there (default 10)
#   --retained N      retained messages there (default 1000000)
#   --rounds N        kill -9 rounds per broker in the crash part (default 5)
#   --seed N          seed of the kill moments (default 11)
#   --sync-interval-ms N  --sync-interval-ms of the interval runs (default: the broker's)
#   --shards N        shardmq shards (default 1)
#   --port N          TCP port for the brokers (default 27960)
#   --rt PRIO         run the broker and the harness under SCHED_FIFO priority PRIO (chrt -f;
#                     root): on a machine shared with other (niced) work, their wake-ups are
#                     then not delayed behind someone else's time slice (default: off)
#   --broker-cpu N    CPU for the broker (default 0)
#   --harness-cpu N   CPU for the harness and clients (default 1)
#   --data-root DIR   where data directories go (default: the work directory under /tmp; put
#                     it on the disk you want to measure: --sync always measures its fdatasync)
#   --no-build        use existing binaries (SHARDMQ_BIN, HARNESS_BIN or target/release/)
#   --no-install      do not apt-get install mosquitto / mosquitto-clients when missing
#   --out-dir DIR     where the report goes (default bench-harness/results)
#   --stem NAME       file name of the report without extension (default
#                     <date>-durability-<host>)
#
# Writes <out-dir>/<stem>.md, the raw JSON lines next to it (<stem>.jsonl) and the brokers'
# output with the exact harness commands (<stem>.log). A shardmq without --data-dir (the store
# not merged yet) is reported as such and only Mosquitto's figures are produced.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PARTS="throughput,harness-persistent,persistent,disk,recovery,crash"
BROKERS="shardmq,mosquitto"
QUICK=0 DURATION="" MESSAGES="" DISK_MESSAGES="" PAYLOAD=64 SESSIONS="" QUEUED=10 RETAINED=""
ROUNDS="" PAIRS="" REPEAT="" QUIET_WAIT=0 SEED=11 SYNC_INTERVAL_MS="" SHARDS=1 PORT=27960 BROKER_CPU=0 HARNESS_CPU=1
RT_PRIO="" DATA_ROOT="" BUILD=1 INSTALL=1 OUT_DIR="$ROOT/bench-harness/results" STEM_NAME=""

usage() { sed -n '2,86p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --parts) PARTS="$2"; shift ;;
        --brokers) BROKERS="$2"; shift ;;
        --quick) QUICK=1 ;;
        --duration) DURATION="$2"; shift ;;
        --pairs) PAIRS="$2"; shift ;;
        --repeat) REPEAT="$2"; shift ;;
        --quiet-wait) QUIET_WAIT="$2"; shift ;;
        --messages) MESSAGES="$2"; shift ;;
        --disk-messages) DISK_MESSAGES="$2"; shift ;;
        --payload) PAYLOAD="$2"; shift ;;
        --sessions) SESSIONS="$2"; shift ;;
        --queued) QUEUED="$2"; shift ;;
        --retained) RETAINED="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --seed) SEED="$2"; shift ;;
        --sync-interval-ms) SYNC_INTERVAL_MS="$2"; shift ;;
        --shards) SHARDS="$2"; shift ;;
        --port) PORT="$2"; shift ;;
        --rt) RT_PRIO="$2"; shift ;;
        --broker-cpu) BROKER_CPU="$2"; shift ;;
        --harness-cpu) HARNESS_CPU="$2"; shift ;;
        --data-root) DATA_ROOT="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --no-install) INSTALL=0 ;;
        --out-dir) OUT_DIR="$2"; shift ;;
        --stem) STEM_NAME="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    DURATION="${DURATION:-3}" MESSAGES="${MESSAGES:-5000}" DISK_MESSAGES="${DISK_MESSAGES:-20000}"
    SESSIONS="${SESSIONS:-10000}" RETAINED="${RETAINED:-100000}" ROUNDS="${ROUNDS:-3}"
    PAIRS="${PAIRS:-10}" REPEAT="${REPEAT:-1}"
else
    DURATION="${DURATION:-10}" MESSAGES="${MESSAGES:-20000}" DISK_MESSAGES="${DISK_MESSAGES:-100000}"
    SESSIONS="${SESSIONS:-100000}" RETAINED="${RETAINED:-1000000}" ROUNDS="${ROUNDS:-5}"
    PAIRS="${PAIRS:-10,100}" REPEAT="${REPEAT:-3}"
fi

log() { echo "[bench-durability] $*" >&2; }
part() { [[ ",$PARTS," == *",$1,"* ]]; }
want() { [[ ",$BROKERS," == *",$1,"* ]]; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HARNESS="${HARNESS_BIN:-$TARGET/release/bench-harness}"
SHARDMQ_BIN="${SHARDMQ_BIN:-$TARGET/release/shardmq}"

# --- tools and builds ---------------------------------------------------------------------------
if want mosquitto || part persistent || part disk || part crash; then
    if ! command -v mosquitto >/dev/null && [ -x /usr/sbin/mosquitto ]; then
        PATH="$PATH:/usr/sbin"
    fi
    if { ! command -v mosquitto >/dev/null || ! command -v mosquitto_pub >/dev/null; } && [ "$INSTALL" = 1 ]; then
        log "installing mosquitto and mosquitto-clients (apt-get)"
        if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
        "${SUDO[@]}" apt-get install -y mosquitto mosquitto-clients >&2 ||
            { "${SUDO[@]}" apt-get update >&2 && "${SUDO[@]}" apt-get install -y mosquitto mosquitto-clients >&2; }
        # The package starts a system-wide Mosquitto on 1883; the runs here use their own port.
    fi
fi
MOSQUITTO_BIN="${MOSQUITTO_BIN:-$(command -v mosquitto || true)}"
command -v python3 >/dev/null || { log "python3 is needed for the client driver"; exit 1; }

if [ "$BUILD" = 1 ]; then
    log "building (cargo build --release -p shardmq -p bench-harness)"
    cargo build --release -p shardmq -p bench-harness >&2
fi
HAVE_SHARDMQ=0 HAVE_STORE=0
if want shardmq; then
    if [ -x "$SHARDMQ_BIN" ]; then
        HAVE_SHARDMQ=1
        if "$SHARDMQ_BIN" --help 2>&1 | grep -q -- '--data-dir'; then
            HAVE_STORE=1
        else
            log "$SHARDMQ_BIN has no --data-dir: the durable store is not in this build; shardmq's durable figures are skipped"
        fi
    else
        log "no shardmq at $SHARDMQ_BIN (cargo build --release -p shardmq)"
    fi
fi
HAVE_MOSQUITTO=0
if want mosquitto; then
    if [ -n "$MOSQUITTO_BIN" ] && command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null; then
        HAVE_MOSQUITTO=1
    else
        log "mosquitto or its clients missing (apt-get install mosquitto mosquitto-clients): Mosquitto's figures are skipped"
    fi
fi

WORK=$(mktemp -d /tmp/bench-durability.XXXXXX)
DATA_ROOT="${DATA_ROOT:-$WORK/data}"
mkdir -p "$DATA_ROOT"
BROKER_PID=""
stop_broker() { # [signal]: TERM (default) with a 10 s grace, then KILL
    [ -n "$BROKER_PID" ] || return 0
    kill "-${1:-TERM}" "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}
cleanup() {
    stop_broker KILL
    # The brokers' output (warnings, errors, recovery lines) is part of the result.
    if [ -s "${BLOG:-}" ]; then mkdir -p "$OUT_DIR" && cp "$BLOG" "$STEM.log"; fi
    rm -rf "$WORK"
    [[ "$DATA_ROOT" == "$WORK"/* ]] || rm -rf "$DATA_ROOT"/bench-durability-*
}
trap cleanup EXIT

PIN_BROKER=(taskset -c "$BROKER_CPU")
PIN_CLIENT=(taskset -c "$HARNESS_CPU")
if ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then
    log "WARNING: taskset missing or fewer than 2 CPUs: running unpinned"
    PIN_BROKER=() PIN_CLIENT=()
fi
if [ -n "$RT_PRIO" ]; then
    chrt -f "$RT_PRIO" true || { log "chrt -f $RT_PRIO failed (root needed)"; exit 1; }
    PIN_BROKER=(chrt -f "$RT_PRIO" "${PIN_BROKER[@]}") PIN_CLIENT=(chrt -f "$RT_PRIO" "${PIN_CLIENT[@]}")
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

listening() { # port
    if command -v ss >/dev/null; then
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# --- broker command lines -------------------------------------------------------------------------
# A variant is a name: memory, interval, always (shardmq), mosquitto, mosquitto-autosave1.
# broker_cmd VARIANT DATA_DIR -> BROKER_CMD (array)
broker_cmd() {
    local variant=$1 dir=$2
    case "$variant" in
        memory|interval|always)
            BROKER_CMD=("$SHARDMQ_BIN" --shards "$SHARDS" --log-level warn --listen "127.0.0.1:$PORT"
                --max-queued-messages 0)
            if [ "$variant" != memory ]; then
                BROKER_CMD+=(--data-dir "$dir" --sync "$variant")
                if [ "$variant" = interval ] && [ -n "$SYNC_INTERVAL_MS" ]; then
                    BROKER_CMD+=(--sync-interval-ms "$SYNC_INTERVAL_MS")
                fi
            fi ;;
        mosquitto|mosquitto-autosave1)
            mkdir -p "$dir"
            {
                echo "listener $PORT 127.0.0.1"
                echo "allow_anonymous true"
                echo "set_tcp_nodelay true"
                echo "max_queued_messages 0"
                echo "max_inflight_messages 20"
                echo "persistence true"
                echo "persistence_location $dir/"
                [ "$variant" = mosquitto-autosave1 ] && echo "autosave_interval 1"
                # As root Mosquitto drops to the mosquitto user, which cannot write here.
                [ "$(id -u)" = 0 ] && echo "user root"
                true
            } >"$dir.conf"
            BROKER_CMD=("$MOSQUITTO_BIN" -c "$dir.conf") ;;
        *) log "unknown variant $variant"; return 1 ;;
    esac
}

BLOG="$WORK/broker.log"
STEM="$OUT_DIR/${STEM_NAME:-$(date -u +%F)-durability-$(hostname -s 2>/dev/null || echo host)}"
start_broker() { # variant data-dir
    broker_cmd "$1" "$2"
    if listening "$PORT"; then
        log "port $PORT is already in use (--port to move)"
        return 1
    fi
    echo "=== $(date -u +%FT%TZ) ${BROKER_CMD[*]}" >>"$BLOG"
    "${PIN_BROKER[@]}" "${BROKER_CMD[@]}" >>"$BLOG" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 600); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            log "$1 exited at start-up; its log:"
            tail -n 20 "$BLOG" >&2 || true
            wait "$BROKER_PID" 2>/dev/null || true
            BROKER_PID=""
            return 1
        fi
        if listening "$PORT"; then
            # Listening is not serving (shardmq binds before it loads its data directory).
            python3 "$DRIVER" ready --port "$PORT" --timeout 120 >/dev/null && return 0
            log "$1 listens but gave no CONNACK within 120 s"
            stop_broker KILL
            return 1
        fi
        sleep 0.1
    done
    log "$1 did not listen on $PORT within 60 s"
    stop_broker KILL
    return 1
}

# The variants a part runs, in order, with what this machine has.
variants() { # with-memory(0/1) with-autosave1(0/1)
    local out=()
    if [ "$HAVE_SHARDMQ" = 1 ] && [ "$1" = 1 ]; then out+=(memory); fi
    if [ "$HAVE_STORE" = 1 ]; then out+=(interval always); fi
    if [ "$HAVE_MOSQUITTO" = 1 ]; then
        out+=(mosquitto)
        [ "$2" = 1 ] && out+=(mosquitto-autosave1)
    fi
    echo "${out[@]}"
}

JSONL="$WORK/results.jsonl"
: >"$JSONL"
record() { echo "$1" >>"$JSONL"; }

# --- the MQTT 3.1.1 driver --------------------------------------------------------------------------
DRIVER="$WORK/driver.py"
cat >"$DRIVER" <<'PYEOF'
#!/usr/bin/env python3
"""bench-durability's MQTT 3.1.1 client: standard library only, one blocking socket each.

  driver.py fill  --port P --subs K --messages N --payload B
      K persistent subscribers (clean session 0, QoS 1) on fill/<k> go offline, then N QoS 1
      messages round robin, each acknowledged (20 in flight). Prints JSON.
  driver.py crash --port P --rounds R --seed S --payload B --log FILE -- BROKER COMMAND...
      Starts the broker (its own process, ended by pid), makes a persistent QoS 1 subscriber
      and lets it go offline; then per round: a publisher sends numbered QoS 1 messages (20 in
      flight) for a seeded random 0.5-1.5 s, the broker gets SIGKILL, is started again, and
      the subscriber drains its queue. Prints JSON: acknowledged, received, lost.
  driver.py ready --port P --timeout S
      Waits until 127.0.0.1:P answers an MQTT CONNECT with a CONNACK; prints the seconds it
      took.
"""
import argparse, json, os, random, signal, socket, struct, subprocess, sys, time


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind, flags, body):
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def string(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


class Closed(Exception):
    pass


class Conn:
    def __init__(self, port, client_id, clean, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        body = string("MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack("!H", 60)
        self.sock.sendall(packet(1, 0, body + string(client_id)))
        kind, _, body = self.read()
        if kind != 2 or body[1] != 0:
            raise RuntimeError(f"CONNACK expected, got type {kind} {bytes(body)!r}")
        self.session_present = bool(body[0] & 1)

    def read(self, timeout=None):
        """The next packet (type, flags, body); socket.timeout if none within timeout."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                length, mult, i = 0, 1, 1
                while i < len(self.buf):
                    byte = self.buf[i]
                    length += (byte & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not byte & 0x80:
                        break
                else:
                    i = None
                if i is not None and len(self.buf) >= i + length:
                    first = self.buf[0]
                    body = bytes(self.buf[i:i + length])
                    del self.buf[:i + length]
                    return first >> 4, first & 0x0F, body
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                raise Closed()
            if not data:
                raise Closed()
            self.buf += data

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            raise Closed()

    def subscribe(self, topic, qos=1):
        self.send(packet(8, 2, struct.pack("!H", 1) + string(topic) + bytes([qos])))
        while True:
            kind, _, body = self.read(10.0)
            if kind == 9:
                if body[2] > 2:
                    raise RuntimeError(f"subscription to {topic} refused")
                return

    def publish(self, topic, payload, pid):
        self.send(packet(3, 2, string(topic) + struct.pack("!H", pid) + payload))

    def close(self):
        try:
            self.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()


def wait_ready(port, timeout):
    """Seconds until a clean MQTT CONNECT on 127.0.0.1:port gets its CONNACK. shardmq binds its
    listening sockets before it loads the data directory, so an accepted TCP connection (or
    a LISTEN socket) says nothing about recovery: the kernel queues the connection until the
    broker gets round to it."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            left = max(1.0, timeout - (time.monotonic() - start))
            Conn(port, "bench-durability-ready", clean=True, timeout=left).close()
            return time.monotonic() - start
        except (OSError, Closed, RuntimeError):
            time.sleep(0.005)
    raise RuntimeError(f"no CONNACK on {port} after {timeout} s")


def publish_numbered(conn, topic, first, count, payload_len, acked, until=None, window=20):
    """Sends QoS 1 messages numbered first.. (at most `count`) with `window` in flight and adds
    the acknowledged numbers to `acked`, until all `count` are acknowledged, or `until`
    (monotonic) has passed, or the connection closes. Returns (next number, {packet id:
    number} of those still unacknowledged)."""
    outstanding = {}
    pid = 0
    n = first
    try:
        while True:
            stop = until is not None and time.monotonic() >= until
            while not stop and n < first + count and len(outstanding) < window:
                pid = pid % 65535 + 1
                text = str(n).encode()
                conn.publish(topic(n), text + b" " * max(0, payload_len - len(text)), pid)
                outstanding[pid] = n
                n += 1
            if stop or (not outstanding and n >= first + count):
                return n, outstanding
            try:
                kind, _, body = conn.read(0.05)
            except socket.timeout:
                continue
            if kind == 4:
                (done,) = struct.unpack("!H", body[:2])
                if done in outstanding:
                    acked.add(outstanding.pop(done))
    except Closed:
        return n, outstanding


def drain(conn, idle=1.0):
    """Receives PUBLISHes (acknowledging QoS 1) until `idle` seconds pass without one."""
    got = []
    while True:
        try:
            kind, flags, body = conn.read(idle)
        except (socket.timeout, Closed):
            return got
        if kind != 3:
            continue
        qos = (flags >> 1) & 3
        (tlen,) = struct.unpack("!H", body[:2])
        at = 2 + tlen
        if qos:
            (pid,) = struct.unpack("!H", body[at:at + 2])
            at += 2
            conn.send(packet(4, 0, struct.pack("!H", pid)))
        got.append(body[at:].split(b" ", 1)[0].decode())


def fill(args):
    for k in range(args.subs):
        sub = Conn(args.port, f"fill-sub-{k}", clean=False)
        sub.subscribe(f"fill/{k}", 1)
        sub.close()
    time.sleep(0.2)
    pub = Conn(args.port, "fill-pub", clean=True)
    acked = set()
    start = time.monotonic()
    publish_numbered(pub, lambda n: f"fill/{n % args.subs}", 0, args.messages, args.payload, acked)
    took = time.monotonic() - start
    pub.close()
    print(json.dumps({"messages": args.messages, "acked": len(acked), "seconds": round(took, 3)}))
    return 0 if len(acked) == args.messages else 1


def crash(args):
    rng = random.Random(args.seed)
    logf = open(args.log, "ab")
    state = {"proc": None}

    def start():
        state["proc"] = subprocess.Popen(args.command, stdout=logf, stderr=subprocess.STDOUT)
        return wait_ready(args.port, 120)

    def kill():
        proc = state["proc"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    acked, received = set(), set()
    sessions_lost, restarts = 0, []
    start()
    topic = lambda n: "crash/t"
    try:
        sub = Conn(args.port, "crash-sub", clean=False)
        sub.subscribe("crash/t", 1)
        sub.close()
        time.sleep(0.2)
        n = 0
        for _ in range(args.rounds):
            pub = Conn(args.port, "crash-pub", clean=True)
            before = len(acked)
            until = time.monotonic() + rng.uniform(0.5, 1.5)
            n, outstanding = publish_numbered(pub, topic, n, 10**12, args.payload, acked, until=until)
            kill()
            # PUBACKs the broker sent before it died, already in the publisher's socket buffer,
            # were received: they count as acknowledged.
            try:
                while outstanding:
                    kind, _, body = pub.read(0.5)
                    if kind == 4:
                        (done,) = struct.unpack("!H", body[:2])
                        if done in outstanding:
                            acked.add(outstanding.pop(done))
            except (Closed, socket.timeout, OSError):
                pass
            pub.sock.close()
            restarts.append(round(start(), 3))
            sub = Conn(args.port, "crash-sub", clean=False)
            if not sub.session_present:
                sessions_lost += 1
                sub.subscribe("crash/t", 1)
            received.update(int(x) for x in drain(sub) if x.isdigit())
            sub.close()
            sys.stderr.write(f"round: {len(acked) - before} acknowledged, {len(acked - received)} lost so far\n")
        lost = acked - received
        print(json.dumps({
            "rounds": args.rounds, "acked": len(acked), "received_acked": len(acked & received),
            "lost": len(lost), "lost_percent": round(100.0 * len(lost) / max(1, len(acked)), 2),
            "sessions_lost": sessions_lost, "restart_s": restarts,
        }))
    finally:
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("fill")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--subs", type=int, default=100)
    p.add_argument("--messages", type=int, default=100000)
    p.add_argument("--payload", type=int, default=64)
    p = sub.add_parser("crash")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--log", required=True)
    p.add_argument("command", nargs="+")
    p = sub.add_parser("ready")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    if args.mode == "fill":
        return fill(args)
    if args.mode == "crash":
        return crash(args)
    print(f"{wait_ready(args.port, args.timeout):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
PYEOF

# --- the data-directory generator ---------------------------------------------------------------------
GEN_DIR="$WORK/generator"
build_generator() {
    mkdir -p "$GEN_DIR/src"
    cat >"$GEN_DIR/Cargo.toml" <<EOF
[package]
name = "durability-generator"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
shardmq = { path = "$ROOT", default-features = false }
bytes = "1"

[profile.release]
debug = false

[workspace]
EOF
    # The repository's lock file pins the same versions (cargo drops what is not used).
    cp "$ROOT/Cargo.lock" "$GEN_DIR/Cargo.lock"
    cat >"$GEN_DIR/src/main.rs" <<'RSEOF'
//! Writes a shardmq data directory with the store's own encoder: SESSIONS persistent MQTT 3.1.1
//! sessions (one QoS 1 subscription each, QUEUED messages queued, disconnected) on their home
//! shards and RETAINED retained messages on their topics' owner shards, one log segment per
//! shard.
//!
//!   durability-generator DIR SHARDS SESSIONS QUEUED RETAINED PAYLOAD
use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shardmq::codec::{QoS, SubscriptionOptions};
use shardmq::placement::{home_shard, topic_owner};
use shardmq::store::frame::encode_frame;
use shardmq::store::record::{generation, Delivery, MessageRecord, StoreRecord};
use shardmq::store::segment::{SegmentHeader, SegmentKind, SegmentName};
use shardmq::store::FORMAT_VERSION;

struct Shard {
    out: BufWriter<File>,
    salt: u32,
    next_id: u64,
    buf: Vec<u8>,
    records: u64,
}

impl Shard {
    fn put(&mut self, record: &StoreRecord) -> std::io::Result<()> {
        self.buf.clear();
        encode_frame(record, self.salt, &mut self.buf)
            .map_err(|e| std::io::Error::other(format!("encoding {record:?}: {e}")))?;
        self.records += 1;
        self.out.write_all(&self.buf)
    }

    fn message(&mut self, topic: &str, retain: bool, payload: &Bytes) -> std::io::Result<u64> {
        self.next_id += 1;
        let id = (1u64 << 40) | self.next_id;
        self.put(&StoreRecord::Message(MessageRecord {
            id,
            topic: topic.to_string(),
            publisher: "generator".into(),
            qos: QoS::AtLeastOnce,
            retain,
            properties: Bytes::new(),
            payload: payload.clone(),
            expires_at_ms: None,
        }))?;
        Ok(id)
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: {} DIR SHARDS SESSIONS QUEUED RETAINED PAYLOAD", args[0]);
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let number = |i: usize| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("not a number: {}", args[i]);
            std::process::exit(2)
        })
    };
    let (shards, sessions, queued, retained, payload) =
        (number(2) as usize, number(3), number(4), number(5), number(6) as usize);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("FORMAT"), format!("shardmq-data {FORMAT_VERSION}\n"))?;
    let mut files = Vec::new();
    for shard in 0..shards {
        let name = SegmentName {
            shard: shard as u16,
            sequence: 1,
            kind: SegmentKind::Log,
        };
        let header = SegmentHeader::new(name, shards as u16);
        let mut out = BufWriter::with_capacity(1 << 20, File::create(dir.join(name.file_name()))?);
        let mut head = Vec::new();
        header.encode(&mut head);
        out.write_all(&head)?;
        files.push(Shard {
            out,
            salt: header.salt,
            next_id: 0,
            buf: Vec::new(),
            records: 0,
        });
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let body = Bytes::from(vec![b'x'; payload]);
    let delivery = Delivery {
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
    };
    for i in 0..sessions {
        let client_id = format!("gen-{i:07}");
        let topic = format!("gen/{i}");
        let file = &mut files[home_shard(&client_id, shards)];
        let generation = generation(1, i + 1);
        file.put(&StoreRecord::SessionStarted {
            client_id: client_id.clone(),
            generation,
            username: None,
            protocol: 4,
            expiry_secs: None,
            at_ms: now,
        })?;
        file.put(&StoreRecord::Subscribed {
            client_id: client_id.clone(),
            generation,
            filter: topic.clone(),
            options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            subscription_id: 0,
        })?;
        for _ in 0..queued {
            let message = file.message(&topic, false, &body)?;
            file.put(&StoreRecord::Enqueued {
                client_id: client_id.clone(),
                generation,
                message,
                delivery: delivery.clone(),
            })?;
        }
        file.put(&StoreRecord::SessionDisconnected {
            client_id,
            generation,
            at_ms: now,
            expiry_secs: None,
        })?;
    }
    for r in 0..retained {
        let topic = format!("retained/{r}");
        let file = &mut files[topic_owner(&topic, shards)];
        let message = file.message(&topic, true, &body)?;
        file.put(&StoreRecord::RetainedSet {
            topic,
            version: generation(1, sessions + r + 1),
            message,
        })?;
    }
    let mut total = 0;
    for file in &mut files {
        file.out.flush()?;
        file.out.get_ref().sync_all()?;
        total += file.records;
    }
    println!("{total}");
    Ok(())
}
RSEOF
    log "building the data-directory generator (shardmq::store, release)"
    (cd "$GEN_DIR" && CARGO_TARGET_DIR="$TARGET" cargo build --release --quiet >&2)
    GEN_BIN="$TARGET/release/durability-generator"
}

du_bytes() { du -sb "$1" 2>/dev/null | awk '{print $1}'; }
# CPU time in clock ticks: of the whole machine (busy: all but idle, iowait and steal; steal:
# taken by the hypervisor), of a process
# (utime + stime), of this shell's reaped children (cutime + cstime: the harness once it ran).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
children_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }
# Waits up to $1 seconds until the other processes use under 20% of a CPU over one second
# (the broker $2 idles meanwhile); prints the seconds waited.
wait_quiet() {
    local limit=$1 pid=$2 waited=0 tck b0 p0 b1 p1
    tck=$(getconf CLK_TCK)
    while [ "$waited" -lt "$limit" ]; do
        b0=$(busy_ticks) p0=$(proc_ticks "$pid")
        sleep 1
        b1=$(busy_ticks) p1=$(proc_ticks "$pid")
        [ $(((b1 - b0) - (p1 - p0))) -lt $((tck / 5)) ] && break
        waited=$((waited + 1))
    done
    echo "$waited"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now_s() { date +%s.%N; }

# --- part: throughput (harness, clean sessions) ----------------------------------------------------------
if part throughput && [ "$HAVE_SHARDMQ" = 1 ]; then
    [ -x "$HARNESS" ] || { log "no harness at $HARNESS"; exit 1; }
    for variant in $(variants 1 0); do
        case "$variant" in memory|interval|always) ;; *) continue ;; esac
        dir="$DATA_ROOT/bench-durability-throughput-$variant"
        rm -rf "$dir"
        start_broker "$variant" "$dir" || continue
        log "throughput $variant: bench-harness p2p --pubs 10 --qos 1 --duration $DURATION"
        if "${PIN_CLIENT[@]}" "$HARNESS" p2p --pubs 10 --qos 1 --duration "$DURATION" --warmup 2 \
            --drain 3 --port "$PORT" --threads 1 --broker-pid "$BROKER_PID" \
            --label "shardmq-$variant" >"$WORK/throughput-$variant.json" 2>"$WORK/throughput-$variant.err"; then
            :
        else
            log "harness run failed:"; tail -n 15 "$WORK/throughput-$variant.err" >&2 || true
        fi
        if [ -s "$WORK/throughput-$variant.json" ]; then
            record "{\"part\":\"throughput\",\"variant\":\"$variant\",\"run\":$(tail -n 1 "$WORK/throughput-$variant.json")}"
        fi
        stop_broker
        rm -rf "$dir"
    done
fi

# --- part: harness-persistent (bench-harness p2p --persistent) ------------------------------------------------
if part harness-persistent && [ "$HAVE_SHARDMQ" = 1 ]; then
    [ -x "$HARNESS" ] || { log "no harness at $HARNESS"; exit 1; }
    modes=()
    for variant in $(variants 1 0); do
        case "$variant" in memory|interval|always) modes+=("$variant") ;; esac
    done
    for pairs in ${PAIRS//,/ }; do
        for run in $(seq 1 "$REPEAT"); do
            # The modes interleaved, so that a noisy minute on this machine hits all of them.
            for variant in "${modes[@]}"; do
                dir="$DATA_ROOT/bench-durability-hp-$variant"
                rm -rf "$dir"
                start_broker "$variant" "$dir" || continue
                cmd=("$HARNESS" p2p --persistent --pubs "$pairs" --qos 1 --duration "$DURATION"
                    --warmup 2 --drain 5 --port "$PORT" --threads 1 --broker-pid "$BROKER_PID"
                    --label "shardmq-$variant")
                log "harness-persistent $variant, $pairs pairs, run $run: ${cmd[*]}"
                echo "=== $(date -u +%FT%TZ) harness-persistent $variant $pairs pairs run $run (load $(cut -d' ' -f1-3 /proc/loadavg)): ${PIN_CLIENT[*]} ${cmd[*]}" >>"$BLOG"
                out="$WORK/hp-$variant-$pairs-$run"
                waited=0
                [ "$QUIET_WAIT" -gt 0 ] && waited=$(wait_quiet "$QUIET_WAIT" "$BROKER_PID")
                t0=$(now_s) m0=$(busy_ticks) k0=$(proc_ticks "$BROKER_PID") h0=$(children_ticks) s0=$(steal_ticks)
                if "${PIN_CLIENT[@]}" "${cmd[@]}" >"$out.json" 2>"$out.err"; then
                    :
                else
                    log "harness run failed:"; tail -n 15 "$out.err" >&2 || true
                fi
                t1=$(now_s) m1=$(busy_ticks) k1=$(proc_ticks "$BROKER_PID") h1=$(children_ticks) s1=$(steal_ticks)
                # Everything but the broker and the harness, in % of one CPU over the run.
                others=$(echo "(($m1 - $m0) - ($k1 - $k0) - ($h1 - $h0)) / $(getconf CLK_TCK) / ($t1 - $t0) * 100" | bc -l)
                others=$(printf %.0f "$others")
                [ "$others" -lt 0 ] && others=0
                steal=$(printf %.0f "$(echo "($s1 - $s0) / $(getconf CLK_TCK) / ($t1 - $t0) * 100" | bc -l)")
                # The harness's table goes into the log next to the broker's output.
                cat "$out.err" >>"$BLOG"
                disk=$(du_bytes "$dir" || true) # none in memory
                if [ -s "$out.json" ]; then
                    record "{\"part\":\"harness-persistent\",\"variant\":\"$variant\",\"pairs\":$pairs,\"repeat\":$run,\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"others_cpu_percent\":$others,\"steal_percent\":$steal,\"quiet_waited_s\":$waited,\"dir_bytes\":${disk:-null},\"run\":$(tail -n 1 "$out.json")}"
                fi
                stop_broker
                rm -rf "$dir"
            done
        done
    done
fi

# --- part: persistent p2p (mosquitto clients, clean session 0) -----------------------------------------------
if part persistent; then
    for variant in $(variants 1 0); do
        dir="$DATA_ROOT/bench-durability-persistent-$variant"
        rm -rf "$dir" "$dir.conf"
        start_broker "$variant" "$dir" || continue
        for k in $(seq 0 9); do
            "${PIN_CLIENT[@]}" mosquitto_sub -p "$PORT" -h 127.0.0.1 -c -i "psub-$k" -q 1 -t "p2p/$k" -E
        done
        seq -f "%0${PAYLOAD}.0f" 1 "$MESSAGES" >"$WORK/lines"
        # A subscriber short of its count gives up after this long (-W) rather than 600 s.
        SUB_TIMEOUT=$((60 + MESSAGES / 100))
        subs=()
        for k in $(seq 0 9); do
            "${PIN_CLIENT[@]}" mosquitto_sub -p "$PORT" -h 127.0.0.1 -c -i "psub-$k" -q 1 -t "p2p/$k" \
                -C "$MESSAGES" -W "$SUB_TIMEOUT" >"$WORK/sub-$k.out" &
            subs+=($!)
        done
        sleep 0.5
        cpu0=$(awk '{print $14 + $15}' "/proc/$BROKER_PID/stat")
        t0=$(now_s)
        pubs=()
        for k in $(seq 0 9); do
            "${PIN_CLIENT[@]}" mosquitto_pub -p "$PORT" -h 127.0.0.1 -i "ppub-$k" -q 1 -t "p2p/$k" -l <"$WORK/lines" &
            pubs+=($!)
        done
        ok=1
        for p in "${pubs[@]}" "${subs[@]}"; do wait "$p" || ok=0; done
        t1=$(now_s)
        cpu1=$(awk '{print $14 + $15}' "/proc/$BROKER_PID/stat")
        got=$(cat "$WORK"/sub-*.out | wc -l)
        secs=$(echo "$t1 - $t0" | bc -l)
        tck=$(getconf CLK_TCK)
        rate=$(echo "$got / $secs" | bc -l)
        cpu_per_m=$(echo "($cpu1 - $cpu0) / $tck / $got * 1000000" | bc -l)
        log "persistent $variant: $got messages in ${secs}s"
        record "{\"part\":\"persistent\",\"variant\":\"$variant\",\"pairs\":10,\"messages\":$((MESSAGES * 10)),\"delivered\":$got,\"seconds\":$(printf %.3f "$secs"),\"delivered_per_s\":$(printf %.0f "$rate"),\"broker_cpu_s_per_million\":$(printf %.2f "$cpu_per_m"),\"ok\":$([ "$ok" = 1 ] && echo true || echo false)}"
        stop_broker
        rm -rf "$dir" "$dir.conf" "$WORK"/sub-*.out
    done
fi

# --- part: disk bytes per queued message ----------------------------------------------------------------------
if part disk; then
    for variant in $(variants 0 0); do
        dir="$DATA_ROOT/bench-durability-disk-$variant"
        rm -rf "$dir" "$dir.conf"
        start_broker "$variant" "$dir" || continue
        sleep 0.5
        before=$(du_bytes "$dir")
        log "disk $variant: 100 offline subscribers, $DISK_MESSAGES messages"
        # fill exits 1 when not every message was acknowledged: record it, do not end the run
        # (set -e) with a broker still up.
        "${PIN_CLIENT[@]}" python3 "$DRIVER" fill --port "$PORT" --subs 100 --messages "$DISK_MESSAGES" \
            --payload "$PAYLOAD" >"$WORK/fill.json" ||
            log "disk $variant: not every message was acknowledged: $(cat "$WORK/fill.json" 2>/dev/null)"
        [ -s "$WORK/fill.json" ] || echo null >"$WORK/fill.json"
        sleep 1.5 # the interval mode's last write, Mosquitto's nothing (it saves at shutdown)
        running=$(du_bytes "$dir")
        rss=$(rss_kb "$BROKER_PID")
        stop_broker
        stopped=$(du_bytes "$dir")
        restarted=""
        case "$variant" in
            interval|always)
                # The next start replays and compacts into a snapshot.
                start_broker "$variant" "$dir" && { sleep 1; restarted=$(du_bytes "$dir"); stop_broker; } ;;
        esac
        record "{\"part\":\"disk\",\"variant\":\"$variant\",\"messages\":$DISK_MESSAGES,\"payload\":$PAYLOAD,\"fill\":$(cat "$WORK/fill.json"),\"bytes_before\":${before:-0},\"bytes_running\":${running:-0},\"bytes_stopped\":${stopped:-0},\"bytes_after_restart\":${restarted:-null},\"rss_kb\":${rss:-0}}"
        rm -rf "$dir" "$dir.conf"
    done
fi

# --- part: recovery time ---------------------------------------------------------------------------------------
if part recovery && [ "$HAVE_STORE" = 1 ]; then
    build_generator
    dir="$DATA_ROOT/bench-durability-recovery"
    rm -rf "$dir"
    log "recovery: generating $SESSIONS sessions x $QUEUED queued + $RETAINED retained ($SHARDS shards)"
    t0=$(now_s)
    records=$("$GEN_BIN" "$dir" "$SHARDS" "$SESSIONS" "$QUEUED" "$RETAINED" "$PAYLOAD")
    gen_s=$(echo "$(now_s) - $t0" | bc -l)
    size=$(du_bytes "$dir")
    sync
    for attempt in first second; do
        size=$(du_bytes "$dir") # the second start reads what the first one left
        broker_cmd interval "$dir"
        echo "=== $(date -u +%FT%TZ) recovery $attempt: ${BROKER_CMD[*]}" >>"$BLOG"
        t0=$(now_s)
        "${PIN_BROKER[@]}" "${BROKER_CMD[@]}" >>"$BLOG" 2>&1 &
        BROKER_PID=$!
        if python3 "$DRIVER" ready --port "$PORT" --timeout 900 >/dev/null; then
            up_s=$(echo "$(now_s) - $t0" | bc -l)
            sleep 1
            rss=$(rss_kb "$BROKER_PID")
            files=$(find "$dir" -maxdepth 1 -type f -printf '%f ')
            log "recovery $attempt start: listening after ${up_s}s, RSS ${rss} KiB"
            record "{\"part\":\"recovery\",\"start\":\"$attempt\",\"sessions\":$SESSIONS,\"queued\":$QUEUED,\"retained\":$RETAINED,\"records\":$records,\"bytes\":$size,\"generate_s\":$(printf %.2f "$gen_s"),\"listening_s\":$(printf %.3f "$up_s"),\"rss_kb\":${rss:-0},\"files_after\":\"$files\"}"
        else
            log "recovery $attempt start: shardmq did not listen within 900 s"
            tail -n 20 "$BLOG" >&2 || true
        fi
        stop_broker
    done
    rm -rf "$dir"
fi

# --- part: kill -9 ------------------------------------------------------------------------------------------------
if part crash; then
    for variant in $(variants 0 1); do
        dir="$DATA_ROOT/bench-durability-crash-$variant"
        rm -rf "$dir" "$dir.conf"
        broker_cmd "$variant" "$dir"
        if listening "$PORT"; then log "port $PORT is already in use"; exit 1; fi
        log "crash $variant: $ROUNDS rounds of kill -9"
        echo "=== $(date -u +%FT%TZ) crash $variant ($ROUNDS rounds): ${PIN_BROKER[*]} ${BROKER_CMD[*]}" >>"$BLOG"
        if "${PIN_CLIENT[@]}" python3 "$DRIVER" crash --port "$PORT" --rounds "$ROUNDS" --seed "$SEED" \
            --payload "$PAYLOAD" --log "$BLOG" -- "${PIN_BROKER[@]}" "${BROKER_CMD[@]}" >"$WORK/crash.json"; then
            record "{\"part\":\"crash\",\"variant\":\"$variant\",\"seed\":$SEED,\"result\":$(cat "$WORK/crash.json")}"
        else
            log "crash $variant: the driver failed"
        fi
        rm -rf "$dir" "$dir.conf"
    done
fi

# --- report --------------------------------------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
cp "$JSONL" "$STEM.jsonl"
python3 - "$JSONL" "$STEM.md" "$HAVE_STORE" "$SHARDS" "$(uname -r)" "$(nproc)" \
    "$("$SHARDMQ_BIN" --version 2>/dev/null || echo 'shardmq: none')" \
    "$({ "$MOSQUITTO_BIN" -h 2>/dev/null || true; } | head -n 1)" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$DATA_ROOT" <<'EOF'
import json, sys
src, out, have_store, shards, kernel, cpus, shardmq, mosquitto, commit, data_root = sys.argv[1:]
runs = [json.loads(line) for line in open(src) if line.strip()]
by = lambda part: [r for r in runs if r["part"] == part]
num = lambda v, f="{:,.0f}": "-" if v is None else f.format(v)
lines = ["# Durability figures (issue 11)", ""]
lines.append(f"shardmq {shardmq} at {commit} ({shards} shard(s)), {mosquitto or 'Mosquitto: none'}; "
             f"Linux {kernel}, {cpus} CPUs; data directories under {data_root}. "
             "Produced by scripts/bench-durability.sh; raw figures in the .jsonl next to this file.")
lines.append("")
if have_store != "1":
    lines += ["**This shardmq has no --data-dir**: the durable store was not in the build, so "
              "only the in-memory and Mosquitto figures are here.", ""]

rows = by("throughput")
if rows:
    lines += ["## p2p QoS 1 throughput (bench-harness, 10 pairs, clean sessions)", "",
              "| mode | delivered msg/s | latency p50 / p99 ms | broker CPU s per million | lost | ok |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        run = r["run"]
        lat = run.get("latency_us", {})
        cpu = (run.get("broker") or {}).get("cpu_s_per_million_delivered")
        lines.append(f"| {r['variant']} | {num(run.get('delivered_per_s'))} | "
                     f"{num(lat.get('p50', 0) / 1000, '{:.2f}')} / {num(lat.get('p99', 0) / 1000, '{:.2f}')} | "
                     f"{num(cpu, '{:.2f}')} | {run['messages'].get('lost')} | {run.get('ok')} |")
    lines += ["", "Clean sessions: nothing of this traffic is durable, so this is the cost of having "
              "the store on, not of writing to it; the next table is the durable path.", ""]

rows = by("harness-persistent")
if rows:
    import statistics
    med = lambda xs: statistics.median(xs) if xs else None
    def fig(r):
        run = r["run"]
        lat = run.get("latency_us") or {}
        b = run.get("broker") or {}
        h = run.get("harness") or {}
        return {
            "rate": run.get("delivered_per_s") or 0,
            "p50": (lat.get("p50") or 0) / 1000, "p99": (lat.get("p99") or 0) / 1000,
            "cpu_m": b.get("cpu_s_per_million_delivered"),
            "bcpu": b.get("cpu_percent"), "hcpu": h.get("cpu_percent"),
            "sat": h.get("saturated"), "lost": run["messages"].get("lost"),
            "ok": run.get("ok"), "cleared": (run.get("connections") or {}).get("sessions_cleared"),
            "attempted": (run.get("connections") or {}).get("attempted"),
            "ctx": ((b.get("counters") or {}).get("ctx_switches_per_unit")),
        }
    pairs_list = sorted({r["pairs"] for r in rows})
    modes = [m for m in ("memory", "interval", "always") if any(r["variant"] == m for r in rows)]
    lines += ["## p2p QoS 1 with persistent sessions (bench-harness `p2p --persistent`)", "",
              "Medians over the runs of each mode (every run is in the next table). Ratio: of the "
              "in-memory median with the same pairs.", "",
              "| pairs | mode | runs | delivered msg/s | vs memory | latency p50 / p99 ms | "
              "broker CPU s per million | broker CPU % | harness CPU % | lost | ok |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pairs in pairs_list:
        base = None
        for mode in modes:
            fs = [fig(r) for r in rows if r["pairs"] == pairs and r["variant"] == mode]
            if not fs:
                continue
            rate = med([f["rate"] for f in fs])
            if mode == "memory":
                base = rate
            ratio = f"{rate / base:.2f}" if base else "-"
            cpu = [f["cpu_m"] for f in fs if f["cpu_m"] is not None]
            lines.append(
                f"| {pairs} | {mode} | {len(fs)} | {num(rate)} | {ratio} | "
                f"{med([f['p50'] for f in fs]):.2f} / {med([f['p99'] for f in fs]):.2f} | "
                f"{num(med(cpu), '{:.2f}')} | {num(med([f['bcpu'] or 0 for f in fs]), '{:.0f}')} | "
                f"{num(med([f['hcpu'] or 0 for f in fs]), '{:.0f}')} | "
                f"{sum(f['lost'] or 0 for f in fs)} | {all(f['ok'] for f in fs)} |")
    lines += ["", "Every run:", "",
              "| pairs | mode | run | load (1/5/15 min) | other processes' CPU % | steal % | delivered msg/s | p50 / p99 ms | "
              "broker CPU s/M | broker CPU % | harness CPU % (saturated) | ctx switches per msg | "
              "lost | sessions cleared | data dir after | ok |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = fig(r)
        lines.append(
            f"| {r['pairs']} | {r['variant']} | {r['repeat']} | {r.get('loadavg', '-')} | "
            f"{r.get('others_cpu_percent', '-')} (waited {r.get('quiet_waited_s', 0)} s) | "
            f"{r.get('steal_percent', '-')} | "
            f"{num(f['rate'])} | {f['p50']:.2f} / {f['p99']:.2f} | {num(f['cpu_m'], '{:.2f}')} | "
            f"{num(f['bcpu'], '{:.0f}')} | {num(f['hcpu'], '{:.0f}')} ({f['sat']}) | "
            f"{num(f['ctx'], '{:.2f}')} | {f['lost']} | {f['cleared']} / {f['attempted']} | "
            f"{num(r.get('dir_bytes'))} B | {f['ok']} |")
    lines += ["", "Publishers and subscribers connect with clean session 0 under client ids "
              "unique to the run; every QoS 1 message to a subscriber is a durable delivery "
              "(enqueued, in flight, acknowledged records) and the publisher's PUBACK waits for "
              "them. At the end the harness connects every client id again with a clean session "
              "to discard the sessions. 64 in flight per publisher, one harness thread. "
              "Other processes' CPU: the machine's busy time during the run minus the broker's "
              "and the harness's, in % of one CPU (of 2): what other work on the machine took "
              "while the broker and the harness ran. Steal: time the hypervisor gave another guest, "
              "in % of one CPU.", ""]

rows = by("persistent")
if rows:
    lines += ["## p2p QoS 1 with persistent sessions (10 mosquitto_sub -c / mosquitto_pub -l pairs)", "",
              "| broker / mode | messages | seconds | delivered msg/s | broker CPU s per million | ok |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {num(r['delivered'])} / {num(r['messages'])} | {r['seconds']} | "
                     f"{num(r['delivered_per_s'])} | {r['broker_cpu_s_per_million']} | {r['ok']} |")
    lines += ["", "The clients (C, libmosquitto, 20 in flight each) may bound the in-memory figure.", ""]

rows = by("disk")
if rows:
    lines += ["## Disk bytes per queued message (100 offline persistent subscribers, QoS 1)", "",
              "| broker / mode | messages x payload | while running | after stop | after restart | per message (running / stopped / restarted) |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        n = r["messages"]
        per = lambda b: "-" if b is None else f"{(b - r['bytes_before']) / n:,.0f}"
        lines.append(f"| {r['variant']} | {num(n)} x {r['payload']} B | {num(r['bytes_running'])} B | "
                     f"{num(r['bytes_stopped'])} B | {num(r['bytes_after_restart'])} B | "
                     f"{per(r['bytes_running'])} / {per(r['bytes_stopped'])} / {per(r['bytes_after_restart'])} B |")
    lines += ["", "`du -sb` of the data directory (Mosquitto: its persistence directory; it writes "
              "mosquitto.db at shutdown or autosave only), minus the empty directory, over the messages.", ""]

rows = by("recovery")
if rows:
    lines += ["## Recovery time", "",
              "| start | sessions x queued | retained | records | directory bytes | exec to first CONNACK | RSS once up |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['start']} | {num(r['sessions'])} x {r['queued']} | {num(r['retained'])} | "
                     f"{num(r['records'])} | {num(r['bytes'])} | {r['listening_s']} s | {num(r['rss_kb'])} KiB |")
    lines += ["", "First start: the generated log segments (one per shard, written with the store's "
              "encoder); second start: whatever the first start left (its snapshot).", ""]

rows = by("crash")
if rows:
    lines += ["## kill -9 while publishing: acknowledged messages lost", "",
              "| broker / mode | rounds | acknowledged | lost | lost % | sessions lost | restart s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["result"]
        lines.append(f"| {r['variant']} | {c['rounds']} | {num(c['acked'])} | {num(c['lost'])} | "
                     f"{c['lost_percent']} | {c['sessions_lost']} | {', '.join(str(s) for s in c['restart_s'])} |")
    lines += ["", "A persistent QoS 1 subscriber (clean session 0) offline; a publisher sends numbered "
              "QoS 1 messages (20 in flight) for a seeded random 0.5-1.5 s, the broker gets SIGKILL and "
              "is restarted on its data; the subscriber drains its queue. Lost = PUBACKed by the broker "
              "but never delivered. Mosquitto saves its state at shutdown and every autosave_interval "
              "seconds (default 1800); a session it never saved comes back absent and is subscribed again.", ""]

open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
log "report: $STEM.md"
