#!/usr/bin/env bash
# The whole test suite: what README calls "run all tests" and what CI runs after fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
# One full build, not an edit loop: incremental caches would only take disk (over a GiB).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== sans-I/O check: the codec and session build without the glommio runtime"
cargo check -p shardmq --lib --no-default-features

# Type-checked only: a bench-profile build of every dependency would double the disk the suite
# needs; scripts/bench-*.sh and `cargo bench` build them for real.
echo "== benches and the fuzz target still build"
cargo check --workspace --benches
cargo check --manifest-path fuzz/Cargo.toml

echo "== smoke test with third-party clients (mosquitto_pub/sub) against the built binary"
scripts/smoke-mosquitto.sh

echo "== smoke test over TLS, mutual TLS, ws and wss: mosquitto_pub/sub, MQTT.js and paho-mqtt"
scripts/smoke-tls.sh

echo "== workspace tests (unit, property, integration against the real broker)"
cargo test --workspace --lib --bins --tests
