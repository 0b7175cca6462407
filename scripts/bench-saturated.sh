#!/usr/bin/env bash
# Saturated (unpaced) scenarios, shardmq against FlashMQ, one line per run: p2p 100 pairs,
# fan-in 16 -> 1 and fan-out 1 -> 100, QoS 0 and QoS 1, 4 s measured after 1 s warm-up.
# One shard against one FlashMQ worker thread, broker on CPU 0, harness on CPU 1.
#
#   cargo build --release -p shardmq -p bench-harness && scripts/bench-saturated.sh
#
# FLASHMQ_BIN: the FlashMQ binary (default: scripts/flashmq-build.sh's cached build).
# SHARDMQ: the shardmq binary (default: target/release/shardmq).
# QoS 0 unpaced means publishers write as fast as TCP lets them: both brokers drop QoS 0
# messages for subscribers that cannot keep up (allowed), so those figures depend on the
# harness; QoS 1 runs are closed-loop (in-flight windows) and lose nothing unless a broker
# drops QoS 1 messages at its queue bound (FlashMQ's max_qos_msg_pending_per_client).
set -uo pipefail
cd "$(dirname "$0")/.."
FL=${FLASHMQ_BIN:-$HOME/.cache/shardmq-bench/flashmq/v1.26.2/src/FlashMQBuildRelease/flashmq}
SH=${SHARDMQ:-target/release/shardmq}
H=target/release/bench-harness
CONF=$(mktemp)
trap 'rm -f "$CONF"' EXIT
run() { # broker scenario-args...
  b=$1; shift
  port=$((20000 + RANDOM % 500))
  if [ $b = flashmq ]; then
    cat > "$CONF" <<C
thread_count 1
allow_anonymous true
log_level error
rlimit_nofile $(ulimit -Hn)
listen {
    protocol mqtt
    inet_protocol ip4
    inet4_bind_address 127.0.0.1
    port $port
    tcp_nodelay true
}
C
    taskset -c 0 $FL --config-file "$CONF" >/dev/null 2>&1 & bp=$!
  else
    taskset -c 0 $SH --listen 127.0.0.1:$port --shards 1 --log-level warn >/dev/null 2>&1 & bp=$!
  fi
  sleep 0.7
  out=$(taskset -c 1 $H "$@" --port $port --broker-pid $bp --label $b --duration 4 --warmup 1 2>&1)
  tp=$(echo "$out" | grep -E "^throughput" | sed 's/.*out (delivered) \([0-9,]*\).*/\1/')
  cpu=$(echo "$out" | grep -E "^broker " | sed 's/.*= \([0-9.]*\) s per million.*/\1/')
  lost=$(echo "$out" | grep -E "^messages" | sed 's/.*lost \([0-9]*\).*/\1/')
  hc=$(echo "$out" | grep -E "^harness" | awk '{print $3}')
  echo "$* | $b | delivered/s $tp | cpu s/M $cpu | lost $lost | harness cpu $hc"
  kill $bp; wait $bp 2>/dev/null
}
# SAT_ARGS: the scenarios, one per line (default: the six below).
DEFAULT_ARGS="p2p --pubs 100 --qos 0
p2p --pubs 100 --qos 1
fanin --mode wildcard --pubs 16 --subs 1 --rate 0 --qos 0
fanin --mode wildcard --pubs 16 --subs 1 --rate 0 --qos 1
fanout --pubs 1 --subs 100 --rate 0 --qos 0
fanout --pubs 1 --subs 100 --rate 0 --qos 1"
while IFS= read -r args <&3; do
  [ -n "$args" ] || continue
  for b in shardmq flashmq; do
    if [ $b = flashmq ] && [ ! -x "$FL" ]; then echo "no FlashMQ at $FL: skipped"; continue; fi
    run $b $args
  done
done 3<<< "${SAT_ARGS:-$DEFAULT_ARGS}"
