#!/usr/bin/env bash
# Latency of established TLS clients while new TLS clients flood in: the bundled harness's
# `latency` scenario (10 pairs, 1,000 msg/s, QoS 1, over TLS) alone, then again while a second
# harness process opens 12,000 TLS connections at --conn-rate 1000 (each a full handshake).
# Broker on CPU 0, both harness processes on CPU 1 (the harness's own TLS handshakes cost
# ~0.5 ms each, so the flood also loads the harness core: compare brokers in the same run).
#
#   scripts/bench-tls-flood.sh shardmq      # SHARDMQ_BIN (target/release/shardmq), EXTRA="--tls-handshakes-per-pass 4"
#   scripts/bench-tls-flood.sh mosquitto    # mosquitto from PATH
set -euo pipefail
cd "$(dirname "$0")/.."
H=${HARNESS_BIN:-target/release/bench-harness}
BROKER="${1:?shardmq or mosquitto}"
PORT=${PORT:-28883}
D=$(mktemp -d /tmp/shardmq-flood.XXXXXX)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$D"' EXIT
chmod 755 "$D"
( cd "$D"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=ca \
      -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
      -keyout s.key -out s.csr 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > s.ext
  openssl x509 -req -in s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile s.ext -out s.pem 2>/dev/null
  # Mosquitto drops privileges: its user must read the key.
  chmod 644 ./* )
TLSARGS=(--tls --cafile "$D/ca.pem" --server-name localhost)
start() {
    if [ "$BROKER" = shardmq ]; then
        # shellcheck disable=SC2086
        taskset -c 0 "${SHARDMQ_BIN:-target/release/shardmq}" --shards 1 --log-level warn \
            --tls-listen "127.0.0.1:$PORT" --cert "$D/s.pem" --key "$D/s.key" \
            --listen 127.0.0.1:$((PORT + 1)) ${EXTRA:-} >"$D/broker.log" 2>&1 &
    else
        printf "listener %s 127.0.0.1\ncertfile %s/s.pem\nkeyfile %s/s.key\nallow_anonymous true\nset_tcp_nodelay true\n" \
            "$PORT" "$D" "$D" > "$D/m.conf"
        taskset -c 0 mosquitto -c "$D/m.conf" >"$D/broker.log" 2>&1 &
    fi
    PID=$!
    sleep 1
}
for mode in alone flood; do
    start
    CP=""
    if [ "$mode" = flood ]; then
        taskset -c 1 "$H" conn --clients 12000 --conn-rate 1000 --duration 12 --warmup 0 \
            --port "$PORT" "${TLSARGS[@]}" > "$D/conn.txt" 2>&1 &
        CP=$!
        sleep 1
    fi
    taskset -c 1 "$H" latency --pubs 10 --duration 8 --warmup 1 --port "$PORT" "${TLSARGS[@]}" \
        --broker-pid "$PID" 2>&1 | grep -E "^(throughput|latency)" | sed "s/^/$BROKER $mode: /"
    if [ -n "$CP" ]; then
        wait "$CP" || true
        grep -E "^connections" "$D/conn.txt" | sed "s/^/$BROKER flood: /"
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true
    PID=""
done
