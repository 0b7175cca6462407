#!/usr/bin/env bash
# Smoke test of every transport with third-party clients, against a freshly built `shardmq`:
#   - mosquitto_pub/mosquitto_sub over TLS (--cafile, -u/-P) and mutual TLS (--cert/--key, a
#     [[listener]] table with require_certificate and use_identity_as_username);
#   - refusals: wrong password, unknown user, no client certificate, a certificate from a CA the
#     broker does not trust; each must also leave a line in the broker's log;
#   - the ACL file over TLS: a denied topic delivers nothing while an allowed one does;
#   - MQTT.js (npm `mqtt` v5: ws and wss, MQTT 3.1.1 and 5.0) and paho-mqtt (Python, websockets
#     transport: ws and wss), through scripts/interop/.
# Certificates are made here with openssl (ECDSA P-256) in a temp dir. Everything is on loopback,
# every client call is bounded with `timeout`, and only the broker started here is stopped.
#
# Every check prints one PASS or FAIL line; the script goes on after a FAIL and exits 1 at the end
# if there was any. When npm or PyPI cannot be reached, the MQTT.js / paho checks print SKIP lines
# instead (never PASS) and the summary counts them; SMOKE_REQUIRE_INTEROP=1 makes a SKIP fail.
#
# Environment: SHARDMQ_BIN (use this binary, do not build), SMOKE_CACHE (where npm and pip put the
# interop clients; default $CARGO_TARGET_DIR/interop or target/interop, ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=smoke-tls
PASSED=0
FAILED=0
SKIPPED=()
WORK=""
LOG=""
BROKER_PID=""

pass() {
    PASSED=$((PASSED + 1))
    echo "PASS: $*"
}

# check_failed NAME DETAIL...: records a failed check and goes on (the summary exits 1).
check_failed() {
    FAILED=$((FAILED + 1))
    local name=$1
    shift
    echo "FAIL: $name: $*"
}

skip() {
    SKIPPED+=("$*")
    echo "SKIP: $*"
}

# die MESSAGE: a failure after which nothing else can be checked (no broker, no certificates).
die() {
    echo "$NAME: FAIL: $*" >&2
    show_log
    exit 1
}

show_log() {
    if [ -n "$LOG" ] && [ -s "$LOG" ]; then
        echo "---- broker log (last 40 lines) ----" >&2
        tail -n 40 "$LOG" >&2
    fi
}

cleanup() {
    # Only the broker this script started; clients are all under `timeout`.
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# apt_install PACKAGE...: installs Debian packages (a fresh machine may lack them).
APT_UPDATED=""
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "== installing $*"
    if [ -z "$APT_UPDATED" ]; then
        timeout 300 $sudo apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    timeout 600 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

ensure_tools() {
    if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
        apt_install mosquitto-clients || die "cannot install mosquitto-clients"
    fi
    if ! command -v openssl >/dev/null; then
        apt_install openssl || die "cannot install openssl"
    fi
    # The interop clients: a missing runtime is installed; if that fails, their checks are
    # skipped (with SKIP lines), not failed, as for an unreachable registry.
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm || echo "(could not install nodejs/npm)"
    fi
    if ! command -v python3 >/dev/null; then
        apt_install python3 python3-pip || echo "(could not install python3)"
    elif ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip || echo "(could not install python3-pip)"
    fi
}

build_broker() {
    if [ -n "${SHARDMQ_BIN:-}" ]; then
        BIN=$SHARDMQ_BIN
    else
        echo "== building shardmq"
        timeout 1200 cargo build --bin shardmq || die "cargo build failed"
        BIN="${CARGO_TARGET_DIR:-target}/debug/shardmq"
    fi
    [ -x "$BIN" ] || die "$BIN not found"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null && return
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

# make_certs: a CA, a server certificate for localhost / 127.0.0.1, a client certificate with
# CN alice (the mTLS listener takes it as the user name), and a second, untrusted CA with a
# client certificate of its own (must be refused). All ECDSA P-256, valid for 2 days.
make_certs() {
    local dir=$WORK/pki
    mkdir -p "$dir"
    # new_key FILE: a P-256 key (PKCS#8 PEM).
    new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    # new_ca NAME CN: a self-signed CA certificate NAME.pem with key NAME.key.
    new_ca() {
        new_key "$dir/$1.key"
        openssl req -x509 -new -key "$dir/$1.key" -sha256 -days 2 -subj "/CN=$2" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$dir/$1.pem"
    }
    # new_leaf NAME CN CA EXTENSIONS: NAME.pem / NAME.key, signed by CA.
    new_leaf() {
        new_key "$dir/$1.key"
        openssl req -new -key "$dir/$1.key" -subj "/CN=$2" -out "$dir/$1.csr"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$4" \
            >"$dir/$1.ext"
        openssl x509 -req -in "$dir/$1.csr" -CA "$dir/$3.pem" -CAkey "$dir/$3.key" \
            -CAcreateserial -sha256 -days 2 -extfile "$dir/$1.ext" -out "$dir/$1.pem" 2>/dev/null
    }
    new_ca ca "shardmq smoke CA"
    new_leaf server localhost ca $'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth'
    new_leaf client alice ca "extendedKeyUsage=clientAuth"
    new_ca rogue-ca "not trusted by the broker"
    new_leaf rogue alice rogue-ca "extendedKeyUsage=clientAuth"
    openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" "$dir/client.pem" >/dev/null \
        || die "the generated certificates do not verify"
    CA=$dir/ca.pem
    PKI=$dir
}

# wait_for_port PORT: until the broker accepts there (it exits: fatal).
wait_for_port() {
    for _ in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || die "shardmq exited at startup"
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "shardmq does not accept on port $1"
}

start_broker() {
    TLS_PORT=$(free_port)
    MTLS_PORT=$(free_port)
    WS_PORT=$(free_port)
    WSS_PORT=$(free_port)
    "$BIN" passwd -c -b "$WORK/passwd" alice alice-pw || die "shardmq passwd -c -b"
    "$BIN" passwd -b "$WORK/passwd" bob bob-pw || die "shardmq passwd -b"
    # alice owns smoke/#; bob reads it all but smoke/secret.
    cat >"$WORK/acl" <<'ACL'
user alice
topic readwrite smoke/#

user bob
topic read smoke/#
topic deny smoke/secret
ACL
    # The mTLS listener is a [[listener]] table (the flags' --cafile/--require-certificate would
    # apply to every TLS listener); its client certificate's CN is the user name.
    cat >"$WORK/shardmq.toml" <<TOML
shards = 2
password_file = "$WORK/passwd"
acl_file = "$WORK/acl"
# A failed login's refusal waits this much, doubling per failure from the address: about a
# dozen refusals from 127.0.0.1 here would otherwise reach the 5 s cap. 1 ms keeps the delayed
# refusal path in use at no cost.
failed_login_delay_ms = 1

[[listener]]
name = "mtls"
address = "127.0.0.1:$MTLS_PORT"
certfile = "$PKI/server.pem"
keyfile = "$PKI/server.key"
cafile = "$PKI/ca.pem"
require_certificate = true
use_identity_as_username = true
TOML
    "$BIN" check-config --config "$WORK/shardmq.toml" --tls-listen "127.0.0.1:$TLS_PORT" \
        --ws-listen "127.0.0.1:$WS_PORT" --wss-listen "127.0.0.1:$WSS_PORT" \
        --cert "$PKI/server.pem" --key "$PKI/server.key" >"$WORK/check-config.out" 2>&1 \
        || die "check-config refused the configuration: $(cat "$WORK/check-config.out")"
    echo "== starting shardmq: TLS :$TLS_PORT, mTLS :$MTLS_PORT, ws :$WS_PORT, wss :$WSS_PORT"
    # NO_COLOR: plain log lines for the grep checks below.
    NO_COLOR=1 "$BIN" --config "$WORK/shardmq.toml" --log-level info \
        --tls-listen "127.0.0.1:$TLS_PORT" --ws-listen "127.0.0.1:$WS_PORT" \
        --wss-listen "127.0.0.1:$WSS_PORT" --cert "$PKI/server.pem" --key "$PKI/server.key" \
        >"$LOG" 2>&1 &
    BROKER_PID=$!
    local port
    for port in "$TLS_PORT" "$MTLS_PORT" "$WS_PORT" "$WSS_PORT"; do wait_for_port "$port"; done
}

# Log lines written since a mark, so each refusal is matched to the line it caused.
log_mark() { wc -l <"$LOG"; }
log_since() { tail -n "+$(($1 + 1))" "$LOG" | sed 's/\x1b\[[0-9;]*m//g'; }

# expect_log NAME MARK PATTERN...: the broker logged, since MARK, a line matching every
# PATTERN (grep -E). Logging is asynchronous to the client's exit: retried for up to 3 s.
expect_log() {
    local name=$1 mark=$2
    shift 2
    local lines pattern matched
    for _ in $(seq 1 30); do
        lines=$(log_since "$mark")
        for pattern in "$@"; do lines=$(grep -E -- "$pattern" <<<"$lines" || true); done
        if [ -n "$lines" ]; then
            matched=$(head -n 1 <<<"$lines")
            pass "$name (log: ${matched:0:200})"
            return 0
        fi
        sleep 0.1
    done
    check_failed "$name" "no log line matching: $*"
}

TLS=()
MTLS=()
set_client_args() {
    # 127.0.0.1 rather than localhost: the server certificate has that IP in its SAN, and the
    # listeners are IPv4 only.
    TLS=(-h 127.0.0.1 -p "$TLS_PORT" --cafile "$CA")
    MTLS=(-h 127.0.0.1 -p "$MTLS_PORT" --cafile "$CA")
}

# round_trip NAME TOPIC SUB_ARGS... -- PUB_ARGS...: mosquitto_sub waits for one message on
# TOPIC (printed with -v), mosquitto_pub publishes "NAME-payload" every 200 ms until it arrives
# (the subscriber may not be subscribed when the first one goes out). PASS if the subscriber
# printed exactly "TOPIC NAME-payload".
round_trip() {
    local name=$1 topic=$2
    shift 2
    local sub_args=() pub_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do sub_args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    pub_args=("$@")
    local out=$WORK/$name.out err=$WORK/$name.err
    timeout 15 mosquitto_sub "${sub_args[@]}" -t "$topic" -q 1 -v -C 1 -W 10 >"$out" 2>"$err" &
    local sub=$! pub_ok=1
    for _ in $(seq 1 40); do
        sleep 0.2
        kill -0 "$sub" 2>/dev/null || break
        if ! timeout 5 mosquitto_pub "${pub_args[@]}" -t "$topic" -q 1 -m "$name-payload" 2>>"$err"; then
            pub_ok=0
            break
        fi
    done
    local status=0
    wait "$sub" || status=$?
    if [ "$pub_ok" -eq 0 ]; then
        check_failed "$name" "mosquitto_pub failed: $(tr '\n' ' ' <"$err")"
    elif [ "$status" -ne 0 ]; then
        check_failed "$name" "mosquitto_sub exited $status: $(tr '\n' ' ' <"$err")"
    elif [ "$(cat "$out")" != "$topic $name-payload" ]; then
        check_failed "$name" "expected '$topic $name-payload', got '$(cat "$out")'"
    else
        pass "$name"
    fi
}

# refused NAME REASON_REGEX CLIENT_ARGS...: mosquitto_pub with CLIENT_ARGS must exit non-zero
# with an error message matching REASON_REGEX (case-insensitive).
refused() {
    local name=$1 reason=$2
    shift 2
    local err=$WORK/$name.err
    if timeout 10 mosquitto_pub "$@" -t smoke/refused -q 1 -m x >"$err" 2>&1; then
        check_failed "$name" "mosquitto_pub succeeded; it must be refused"
    elif ! grep -Eqi -- "$reason" "$err"; then
        check_failed "$name" "refused, but not for /$reason/: $(tr '\n' ' ' <"$err")"
    else
        pass "$name (mosquitto_pub: $(head -n 1 "$err"))"
    fi
}

check_tls() {
    echo "== TLS (--cafile, -u/-P)"
    round_trip tls-round-trip smoke/tls "${TLS[@]}" -u alice -P alice-pw -- \
        "${TLS[@]}" -u alice -P alice-pw
    round_trip tls-round-trip-mqtt5 smoke/tls5 "${TLS[@]}" -u alice -P alice-pw -V mqttv5 -- \
        "${TLS[@]}" -u alice -P alice-pw -V mqttv5
    # A client that does not trust the broker's CA must not get through: the client side of the
    # certificate check works (the broker's certificate is really checked above).
    refused tls-untrusted-server "certificate|tls|ssl|protocol error" \
        -h 127.0.0.1 -p "$TLS_PORT" --cafile "$PKI/rogue-ca.pem" -u alice -P alice-pw

    echo "== refusals over TLS"
    local mark
    mark=$(log_mark)
    # 3.1.1 return code 4: mosquitto_pub says "bad user name or password".
    refused tls-wrong-password "user ?name or password" "${TLS[@]}" -u alice -P wrong
    expect_log log-wrong-password "$mark" "CONNECT refused: authentication failed" "username=\"?alice"
    mark=$(log_mark)
    refused tls-unknown-user "user ?name or password|not authori[sz]ed" "${TLS[@]}" -u mallory -P whatever
    expect_log log-unknown-user "$mark" "CONNECT refused: authentication failed" "username=\"?mallory"
    mark=$(log_mark)
    refused tls-wrong-password-mqtt5 "user ?name or password" "${TLS[@]}" -V mqttv5 -u alice -P wrong
    expect_log log-wrong-password-mqtt5 "$mark" "CONNECT refused: authentication failed" "username=\"?alice"
    mark=$(log_mark)
    refused tls-anonymous "not authori[sz]ed" "${TLS[@]}"
    expect_log log-anonymous "$mark" "CONNECT refused: authentication failed" "anonymous=true"
}

check_mtls() {
    echo "== mutual TLS ([[listener]] with require_certificate, use_identity_as_username)"
    # No -u: the certificate's CN (alice) is the user name, so the ACL lets it use smoke/#. An
    # anonymous client would be refused (a password file is set).
    round_trip mtls-round-trip smoke/mtls "${MTLS[@]}" --cert "$PKI/client.pem" --key "$PKI/client.key" -- \
        "${MTLS[@]}" --cert "$PKI/client.pem" --key "$PKI/client.key"
    local mark
    mark=$(log_mark)
    # TLS 1.3: the client may see its handshake complete before the broker rejects it, so the
    # error is either an alert or a lost connection.
    refused mtls-no-certificate "certificate|tls|ssl|connection (was )?lost|protocol error" "${MTLS[@]}"
    expect_log log-mtls-no-certificate "$mark" "closing a connection whose transport failed" "no certificate"
    mark=$(log_mark)
    refused mtls-untrusted-certificate "certificate|tls|ssl|connection (was )?lost|protocol error" \
        "${MTLS[@]}" --cert "$PKI/rogue.pem" --key "$PKI/rogue.key"
    expect_log log-mtls-untrusted-certificate "$mark" "closing a connection whose transport failed" "UnknownIssuer|unknown ?ca|invalid peer certificate"
}

check_acl() {
    echo "== ACL over TLS"
    # bob subscribes to smoke/secret (denied: either the SUBACK refuses it or nothing is
    # delivered) and to smoke/open (allowed), in two clients; alice publishes to both until
    # bob's allowed subscription has its message. alice's own subscription to smoke/secret shows
    # the secret messages really were published.
    local bob=("${TLS[@]}" -u bob -P bob-pw) alice=("${TLS[@]}" -u alice -P alice-pw)
    timeout 15 mosquitto_sub "${bob[@]}" -t smoke/secret -q 1 -v -W 4 >"$WORK/acl-denied.out" 2>"$WORK/acl-denied.err" &
    local denied=$!
    timeout 15 mosquitto_sub "${bob[@]}" -t smoke/open -q 1 -v -C 1 -W 10 >"$WORK/acl-open.out" 2>"$WORK/acl-open.err" &
    local open=$!
    timeout 15 mosquitto_sub "${alice[@]}" -t smoke/secret -q 1 -v -C 1 -W 10 >"$WORK/acl-alice.out" 2>"$WORK/acl-alice.err" &
    local control=$!
    local i
    for i in $(seq 1 20); do
        sleep 0.2
        timeout 5 mosquitto_pub "${alice[@]}" -t smoke/secret -q 1 -m "secret-$i" 2>/dev/null || true
        timeout 5 mosquitto_pub "${alice[@]}" -t smoke/open -q 1 -m "open-$i" 2>/dev/null || true
        if ! kill -0 "$open" 2>/dev/null && ! kill -0 "$control" 2>/dev/null; then break; fi
    done
    wait "$open" || true
    wait "$control" || true
    # mosquitto_sub -W exits non-zero on its timeout: the output is what counts.
    wait "$denied" || true
    if grep -q '^smoke/open open-' "$WORK/acl-open.out"; then
        pass "acl-allowed-topic-delivered ($(head -n 1 "$WORK/acl-open.out"))"
    else
        check_failed acl-allowed-topic-delivered "bob got nothing on smoke/open: $(cat "$WORK/acl-open.err")"
    fi
    if grep -q '^smoke/secret secret-' "$WORK/acl-alice.out"; then
        pass "acl-control-secret-published (alice got $(head -n 1 "$WORK/acl-alice.out"))"
    else
        check_failed acl-control-secret-published "alice got nothing on smoke/secret: $(cat "$WORK/acl-alice.err")"
    fi
    if [ -s "$WORK/acl-denied.out" ]; then
        check_failed acl-denied-topic-silent "bob received a denied topic: $(head -n 3 "$WORK/acl-denied.out")"
    else
        pass "acl-denied-topic-silent (bob's smoke/secret subscription: $(head -n 1 "$WORK/acl-denied.err" || true))"
    fi
}

# --- MQTT.js and paho-mqtt over ws / wss ---------------------------------------------------

# network_error FILE: prints the install log's first line saying the registry could not be
# reached, and fails if there is none (a real failure, such as a version that does not exist,
# must fail the run rather than be skipped).
network_error() {
    grep -Eim1 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|NewConnectionError|connection broken|Failed to establish a new connection|Temporary failure in name resolution|Max retries exceeded|Could not fetch URL|timed out' "$1" \
        | cut -c1-160
}

CACHE=""
# run_interop NAME INSTALL_FN RUN_FN: installs a client library (once: the cache dir keeps it;
# INSTALL_FN returns 3 when the language runtime itself is missing), then runs its script, which prints its own PASS/FAIL lines. The lines are counted here.
run_interop() {
    local name=$1 install=$2 run=$3 log=$WORK/$1-install.log status=0 reason
    "$install" >"$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        if [ "$status" -eq 3 ]; then
            skip "$name: every $name check over ws/wss ($(tail -n 1 "$log"))"
        elif reason=$(network_error "$log"); then
            skip "$name: every $name check over ws/wss (its package registry is unreachable: $reason)"
        else
            check_failed "$name-install" "$(tail -n 5 "$log" | tr '\n' ' ')"
        fi
        return 0
    fi
    local out=$WORK/$name.out
    "$run" >"$out" 2>&1 || status=$?
    cat "$out"
    local passes fails
    passes=$(grep -c '^PASS: ' "$out" || true)
    fails=$(grep -c '^FAIL: ' "$out" || true)
    PASSED=$((PASSED + passes))
    FAILED=$((FAILED + fails))
    # A crash, a timeout or no checks at all is a failure of its own.
    if [ "$status" -ne 0 ] && [ "$fails" -eq 0 ]; then
        check_failed "$name" "exited with status $status without a FAIL line"
    elif [ "$passes" -eq 0 ] && [ "$fails" -eq 0 ]; then
        check_failed "$name" "ran no check"
    fi
}

install_mqttjs() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "node and npm are not installed (apt-get failed)"
        return 3
    fi
    local dir=$CACHE/node
    if [ -f "$dir/node_modules/mqtt/package.json" ] \
        && node -e 'process.exit(require(process.argv[1]).version.startsWith("5.") ? 0 : 1)' \
            "$dir/node_modules/mqtt/package.json" 2>/dev/null; then
        return 0
    fi
    mkdir -p "$dir"
    # --prefix: node_modules goes to the cache dir, never into the repository.
    timeout 300 npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error 'mqtt@^5'
}

run_mqttjs() {
    INTEROP_NODE_MODULES="$CACHE/node" timeout 120 node scripts/interop/mqttjs.mjs \
        --ws "ws://127.0.0.1:$WS_PORT/mqtt" --wss "wss://127.0.0.1:$WSS_PORT/mqtt" \
        --ca "$CA" --username alice --password alice-pw
}

install_paho() {
    if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
        echo "python3 with pip is not installed (apt-get failed)"
        return 3
    fi
    local dir=$CACHE/python
    if PYTHONPATH="$dir" python3 -c 'import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith("2.") else 1)' 2>/dev/null; then
        return 0
    fi
    mkdir -p "$dir"
    # --target: a private directory, not the system's site-packages (no PEP 668 conflict).
    # PIP_ROOT_USER_ACTION: CI runs as root; the warning about it does not apply to --target.
    PIP_ROOT_USER_ACTION=ignore timeout 300 python3 -m pip install --disable-pip-version-check --target "$dir" 'paho-mqtt>=2,<3'
}

run_paho() {
    PYTHONPATH="$CACHE/python" timeout 120 python3 scripts/interop/paho_ws.py \
        --ws "127.0.0.1:$WS_PORT" --wss "127.0.0.1:$WSS_PORT" \
        --ca "$CA" --username alice --password alice-pw
}

check_interop() {
    CACHE=${SMOKE_CACHE:-${CARGO_TARGET_DIR:-target}/interop}
    CACHE=$(realpath -m "$CACHE")
    echo "== MQTT.js over ws and wss (cache: $CACHE/node)"
    run_interop mqttjs install_mqttjs run_mqttjs
    echo "== paho-mqtt (Python) over ws and wss (cache: $CACHE/python)"
    run_interop paho install_paho run_paho
}

stop_broker() {
    echo "== SIGTERM stops the broker cleanly"
    kill -TERM "$BROKER_PID"
    local status=0
    for _ in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        check_failed broker-sigterm "still running 10 s after SIGTERM"
        return
    fi
    wait "$BROKER_PID" || status=$?
    BROKER_PID=""
    if [ "$status" -eq 0 ]; then pass broker-sigterm; else check_failed broker-sigterm "exit status $status"; fi
}

main() {
    ensure_tools
    build_broker
    WORK=$(mktemp -d)
    LOG=$WORK/broker.log
    make_certs
    start_broker
    set_client_args
    check_tls
    check_mtls
    check_acl
    check_interop
    stop_broker

    if [ "$FAILED" -gt 0 ]; then show_log; fi
    local s
    for s in "${SKIPPED[@]}"; do echo "$NAME: SKIPPED: $s"; done
    echo "$NAME: $PASSED passed, $FAILED failed, ${#SKIPPED[@]} skipped"
    if [ "$FAILED" -gt 0 ]; then exit 1; fi
    if [ "${#SKIPPED[@]}" -gt 0 ] && [ "${SMOKE_REQUIRE_INTEROP:-0}" = 1 ]; then
        echo "$NAME: FAIL: checks were skipped and SMOKE_REQUIRE_INTEROP=1"
        exit 1
    fi
}

main "$@"
