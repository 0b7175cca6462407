#!/usr/bin/env bash
# What metrics cost, on the release build, one shard on CPU 0, load on CPU 1:
#  1. p2p QoS 1 throughput (100 pairs, unpaced) without a metrics listener and with
#     `--metrics-listen` scraped once a second, interleaved, RUNS runs each (default 5), means and medians;
#  2. broker CPU per scrape of /metrics with 10,000 idle connections open (SCRAPES scrapes,
#     default 2000, back to back; the idle CPU of the same broker over the same time is
#     subtracted).
# The counters themselves (plain integers on the shard) cannot be turned off; (1) measures the
# exporter and its snapshots on top of them.
#
#   cargo build --release -p shardmq -p bench-harness && scripts/bench-metrics.sh
set -uo pipefail
cd "$(dirname "$0")/.."
SH=${SHARDMQ:-target/release/shardmq}
H=target/release/bench-harness
RUNS=${RUNS:-5}
SCRAPES=${SCRAPES:-2000}
# CPU time of every thread of a process, in ns (schedstat: finer than /proc/PID/stat's ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d", s}'; }

p2p() { # with_metrics (0|1)
  local port=$((21000 + RANDOM % 500)) mport=$((21600 + RANDOM % 300)) extra="" sp
  [ "$1" = 1 ] && extra="--metrics-listen 127.0.0.1:$mport"
  # shellcheck disable=SC2086
  taskset -c 0 "$SH" --listen 127.0.0.1:$port --shards 1 --log-level warn $extra >/dev/null 2>&1 &
  local bp=$!
  sleep 0.7
  # The same scraping loop in both cases (without a listener it hits a closed port), so the
  # harness on CPU 1 sees the same disturbance.
  (while kill -0 $bp 2>/dev/null; do
     taskset -c 1 curl -s -o /dev/null "http://127.0.0.1:$mport/metrics"; sleep 1
   done) &
  sp=$!
  local out
  out=$(taskset -c 1 "$H" p2p --pubs 100 --qos 1 --port $port --broker-pid $bp \
        --duration 4 --warmup 1 2>&1)
  kill $bp; wait $bp 2>/dev/null
  kill $sp 2>/dev/null; wait $sp 2>/dev/null
  echo "$out" | grep -E "^throughput" | sed 's/.*out (delivered) \([0-9,]*\).*/\1/' | tr -d ,
}

echo "== p2p QoS 1, 100 pairs: delivered/s without and with metrics (scraped every second)"
without=(); with=()
for i in $(seq "$RUNS"); do
  a=$(p2p 0); b=$(p2p 1)
  echo "run $i: without $a, with $b"
  without+=("$a"); with+=("$b")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
mw=$(median "${without[@]}"); mm=$(median "${with[@]}")
mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%d", s / NR}'; }
aw=$(mean "${without[@]}"); am=$(mean "${with[@]}")
awk -v a="$mw" -v b="$mm" -v c="$aw" -v d="$am" 'BEGIN { printf "median: without %d, with %d: %+.1f%%; mean: without %d, with %d: %+.1f%%\n", a, b, (b - a) * 100 / a, c, d, (d - c) * 100 / c }'

echo "== scrape cost with 10,000 idle connections"
port=$((22000 + RANDOM % 500)); mport=$((22600 + RANDOM % 300))
taskset -c 0 "$SH" --listen 127.0.0.1:$port --shards 1 --log-level warn \
  --metrics-listen 127.0.0.1:$mport >/dev/null 2>&1 &
bp=$!
sleep 0.7
taskset -c 1 "$H" conn --clients 10000 --conn-rate 5000 --port $port --duration 60 --warmup 0 \
  >/dev/null 2>&1 &
hp=$!
for _ in $(seq 100); do
  n=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '/^shardmq_connections /{print $2}')
  [ "${n:-0}" -ge 10000 ] 2>/dev/null && break
  sleep 0.2
done
echo "connections: ${n:-?}"
sleep 1
t0=$(cpu_ns $bp); s0=$(date +%s.%N); sleep 5; t1=$(cpu_ns $bp); s1=$(date +%s.%N)
idle=$(awk -v t="$((t1 - t0))" -v a="$s0" -v b="$s1" 'BEGIN { print t / 1e9 / (b - a) }')
bytes=$(curl -s "http://127.0.0.1:$mport/metrics" | wc -c)
t0=$(cpu_ns $bp); s0=$(date +%s.%N)
taskset -c 1 python3 - "$mport" "$SCRAPES" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    r = c.getresponse(); r.read(); c.close()
PY
t1=$(cpu_ns $bp); s1=$(date +%s.%N)
awk -v t="$((t1 - t0))" -v a="$s0" -v e="$s1" -v idle="$idle" -v n="$SCRAPES" -v b="$bytes" 'BEGIN {
  d = e - a
  busy = t / 1e9 - idle * d
  printf "%d scrapes in %.2f s (%.2f ms each, %d bytes): broker CPU %.1f us per scrape (idle CPU %.4f cores subtracted)\n", n, d, d * 1000 / n, b, busy * 1e6 / n, idle
}'
kill $hp 2>/dev/null; wait $hp 2>/dev/null
kill $bp; wait $bp 2>/dev/null
