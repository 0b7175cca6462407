#!/usr/bin/env python3
"""Soak driver for shardmq (run through scripts/soak.sh, which builds and starts the broker).

Concurrent workloads against one broker on 127.0.0.1:PORT for --minutes, then a bounded drain:

  checked   persistent subscribers (MQTT 3.1.1 clean_session=0 and MQTT 5 clean_start=0 with
            session expiry 300), one QoS 1 or QoS 2 topic each, fed by one publisher each with
            sequence numbers; the subscribers reconnect every 20-60 s (runs under 3 minutes:
            every duration/6 to duration/3) by DISCONNECT then CONNECT with the same id, or by a
            takeover from a second connection with the same id; the session must be present.
            Every acknowledged publish must be delivered: at least once for QoS 1, exactly once
            for QoS 2.
  churn     short-lived clients with random ids: paho clients that DISCONNECT, raw sockets that
            close abruptly (FIN, RST, in the middle of a packet, before CONNECT), MQTT 3.1, 3.1.1
            and 5, with and without wills (QoS 0/1, some retained on a bounded set of topics).
            A will whose client closed abruptly must arrive; one whose client sent DISCONNECT
            must not.
  storm     threads racing raw CONNECTs on a handful of shared client ids (clean and persistent,
            3.1.1 and 5), plus bursts of simultaneous CONNECTs on one id after which exactly one
            connection must remain. A racing CONNECT may lose with CONNACK "server busy" (0x89,
            3.x: 3); any other refusal, or a CONNACK missing for 10 s, is a failure.
  subs      subscription churn on wildcard and shared filters, QoS 0/1/2 traffic on soak/churn/...,
            retained publishes on soak/retained/<k> (checked at the end: a new subscriber gets
            the last value of every topic).
  sampler   broker RSS and open fds every 5 s, liveness every 0.5 s; RSS must stay flat (median
            of the last 20% of samples vs the 20-40% window: fail beyond +25% and +8 MiB; only a
            warning for runs under 2 minutes); with every client gone the broker's fd count must
            return to its value before the run.

Exit status 0 only when every check passed. Everything is bounded in time: every network wait
has a timeout and the drain after the run takes at most ~30 s.
"""

import argparse
import collections
import os
import random
import socket
import statistics
import struct
import sys
import threading
import time

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError:  # pragma: no cover
    sys.exit("soak.py needs paho-mqtt 2.x: pip install 'paho-mqtt>=2,<3'")

HOST = "127.0.0.1"
PORT = 0
STOP = threading.Event()  # end of the run: workloads stop
SHUTDOWN = threading.Event()  # the driver is tearing down: disconnects are expected
BROKER_DEAD = threading.Event()
MIB = 1024 * 1024

# Load knobs (modest: the machine's cores are shared with the broker).
CHECKED_CLIENTS = 8
CHECKED_RATE = 25.0  # msgs/s per checked publisher
CHURN_PUB_RATE = 250.0  # msgs/s on soak/churn/... (mostly QoS 0)
RETAINED_RATE = 20.0  # msgs/s on soak/retained/<k>
RETAINED_TOPICS = 100
RETAINED_WILL_TOPICS = 20
CHURN_THREADS = 2
STORM_THREADS = 3
STORM_IDS = ["soak-storm-%d" % i for i in range(6)]
BURST_IDS = ["soak-burst-%d" % i for i in range(4)]
SUBCHURN_CLIENTS = 3
CONNECT_TIMEOUT = 10.0  # CONNACK / SUBACK / PINGRESP waits


LOG_LOCK = threading.Lock()


def log(msg):
    with LOG_LOCK:
        print("[soak %7.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


T0 = time.monotonic()


# ---------------------------------------------------------------------------------------------
# statistics


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.failures = collections.Counter()
        self.fail_examples = collections.defaultdict(list)
        self.warnings = collections.Counter()
        self.warn_examples = collections.defaultdict(list)

    def inc(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def get(self, key):
        with self.lock:
            return self.c[key]

    def fail(self, kind, detail=""):
        if BROKER_DEAD.is_set() and kind != "broker process died":
            return  # consequences of the death, not findings of their own
        with self.lock:
            self.failures[kind] += 1
            first = self.failures[kind] == 1
            if len(self.fail_examples[kind]) < 3 and detail:
                self.fail_examples[kind].append(detail)
        if first:
            log("FAILURE: %s%s" % (kind, (": " + detail) if detail else ""))

    def warn(self, kind, detail=""):
        with self.lock:
            self.warnings[kind] += 1
            if len(self.warn_examples[kind]) < 3 and detail:
                self.warn_examples[kind].append(detail)


STATS = Stats()


# ---------------------------------------------------------------------------------------------
# raw MQTT over plain sockets (storm and abrupt churn)


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def mstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


def packet(header, body):
    return bytes([header]) + varint(len(body)) + body


def connect_packet(cid, level, clean, keepalive=30, session_expiry=0, will=None):
    """CONNECT for MQTT 3.1 (level 3), 3.1.1 (4) or 5. will: (topic, payload, qos, retain, delay)."""
    flags = 0x02 if clean else 0
    if will:
        topic, payload, qos, retain, delay = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
    name = b"MQIsdp" if level == 3 else b"MQTT"
    body = mstr(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if level == 5:
        props = b"\x11" + struct.pack("!I", session_expiry) if session_expiry else b""
        body += varint(len(props)) + props
    body += mstr(cid)
    if will:
        if level == 5:
            wprops = b"\x18" + struct.pack("!I", delay) if delay else b""
            body += varint(len(wprops)) + wprops
        body += mstr(topic) + mstr(payload)
    return packet(0x10, body)


def subscribe_packet(pid, level, topic_filter, qos):
    body = struct.pack("!H", pid)
    if level == 5:
        body += b"\x00"
    return packet(0x82, body + mstr(topic_filter) + bytes([qos]))


def publish_packet(level, topic, payload, qos=0, pid=1, retain=False):
    body = mstr(topic)
    if qos:
        body += struct.pack("!H", pid)
    if level == 5:
        body += b"\x00"
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def read_packet(s):
    first = recv_exact(s, 1)[0]
    length, mult = 0, 1
    for _ in range(4):
        b = recv_exact(s, 1)[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    body = recv_exact(s, length) if length else b""
    return first >> 4, first & 0x0F, body


class RawClient:
    """One raw TCP connection; connect() sends CONNECT and waits for CONNACK."""

    def __init__(self, cid, level, clean, session_expiry=0, will=None, keepalive=30):
        self.cid, self.level, self.clean = cid, level, clean
        self.session_expiry, self.will, self.keepalive = session_expiry, will, keepalive
        self.sock = None
        self.session_present = None

    def open(self):
        self.sock = socket.create_connection((HOST, PORT), timeout=5)
        self.sock.settimeout(CONNECT_TIMEOUT)

    def send_connect(self):
        self.sock.sendall(
            connect_packet(self.cid, self.level, self.clean, self.keepalive, self.session_expiry, self.will)
        )

    def read_connack(self):
        """Returns the CONNACK return/reason code; raises EOFError, socket.timeout, OSError."""
        while True:
            ptype, _, body = read_packet(self.sock)
            if ptype == 2:
                self.session_present = bool(body[0] & 1) if self.level != 3 else False
                return body[1]
            if ptype == 14:  # MQTT 5 server DISCONNECT before CONNACK
                raise EOFError("DISCONNECT 0x%02x before CONNACK" % (body[0] if body else 0))
            # nothing else may precede CONNACK
            raise ValueError("packet type %d before CONNACK" % ptype)

    def connect(self):
        self.open()
        self.send_connect()
        return self.read_connack()

    def close_graceful(self):
        try:
            self.sock.sendall(DISCONNECT)
        except OSError:
            pass
        self.close()

    def close_rst(self):
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def hold(self, seconds, rng):
        """Keeps the connection for `seconds`, answering some QoS 1 PUBLISHes.
        Returns 'ok', 'kicked' (server closed or sent DISCONNECT) or raises on a timeout."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "ok"
            self.sock.settimeout(left)
            try:
                ptype, flags, body = read_packet(self.sock)
            except socket.timeout:
                return "ok"
            except (EOFError, ConnectionError):
                return "kicked"
            finally:
                self.sock.settimeout(CONNECT_TIMEOUT)
            if ptype == 14:
                return "kicked"
            if ptype == 3:
                qos = (flags >> 1) & 3
                if qos:
                    tlen = struct.unpack("!H", body[:2])[0]
                    pid = body[2 + tlen : 4 + tlen]
                    if qos == 1 and rng.random() < 0.5:
                        try:
                            self.sock.sendall(b"\x40\x02" + pid)
                        except OSError:
                            return "kicked"

    def probe_alive(self, timeout=5.0):
        """PINGREQ: True when answered, False when the server closed the connection."""
        try:
            self.sock.sendall(PINGREQ)
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None  # neither answered nor closed
            self.sock.settimeout(left)
            try:
                ptype, _, _ = read_packet(self.sock)
            except socket.timeout:
                return None
            except (EOFError, OSError):
                return False
            if ptype == 13:
                return True
            if ptype == 14:
                return False


# ---------------------------------------------------------------------------------------------
# paho clients


class PahoConn:
    """A paho client with events for CONNACK / disconnect and waitable SUBACK / UNSUBACK."""

    def __init__(self, cid, proto, clean, workload, session_expiry=None, will=None, on_message=None):
        self.cid, self.proto, self.clean, self.workload = cid, proto, clean, workload
        self.session_expiry = session_expiry
        kwargs = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=proto,
            reconnect_on_failure=False,
        )
        if proto != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(**kwargs)
        self.client.suppress_exceptions = True
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_rc = None
        self.session_present = None
        self.disconnect_reason = None
        self.expect_down = False
        self.cond = threading.Condition()
        self.acks = {}  # mid -> list of reason code values (SUBACK / UNSUBACK)
        self.pub_reasons = {}  # mid -> PUBACK/PUBCOMP reason code value
        if will:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_ack
        c.on_unsubscribe = self._on_ack
        c.on_publish = self._on_publish
        if on_message:
            c.on_message = on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_rc = reason_code.value
        self.session_present = bool(flags.session_present)
        if reason_code.value == 0:
            self.connected.set()
        else:
            self.disconnected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = getattr(reason_code, "value", reason_code)
        self.connected.clear()
        self.disconnected.set()
        if not self.expect_down and not SHUTDOWN.is_set() and not BROKER_DEAD.is_set():
            STATS.fail(
                "%s: unexpected disconnect" % self.workload,
                "%s reason %s" % (self.cid, reason_code),
            )

    def _on_ack(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.acks[mid] = [getattr(rc, "value", rc) for rc in reason_codes]
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.pub_reasons[mid] = getattr(reason_code, "value", 0)

    def connect(self, timeout=CONNECT_TIMEOUT, start_loop=True):
        """Connects and waits for a successful CONNACK; raises on failure."""
        self.connected.clear()
        self.disconnected.clear()
        self.expect_down = False
        self.connack_rc = None
        self.session_present = None
        if self.proto == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry or 0
            self.client.connect(HOST, PORT, 30, clean_start=self.clean, properties=props)
        else:
            self.client.connect(HOST, PORT, 30)
        if start_loop:
            self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected.wait(0.1):
                return
            if self.disconnected.is_set():
                raise ConnectionError("CONNACK refused (%s) or connection closed" % self.connack_rc)
        raise TimeoutError("no CONNACK within %.0f s" % timeout)

    def wait_ack(self, mid, timeout=CONNECT_TIMEOUT):
        with self.cond:
            ok = self.cond.wait_for(lambda: mid in self.acks, timeout)
            return self.acks.pop(mid) if ok else None

    def subscribe(self, topic_filter, qos):
        """Returns the granted reason codes or None on a timeout / not connected."""
        rc, mid = self.client.subscribe(topic_filter, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return self.wait_ack(mid)

    def unsubscribe(self, topic_filter):
        rc, mid = self.client.unsubscribe(topic_filter)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return self.wait_ack(mid)

    def stop_loop(self, timeout=5.0):
        t = self.client._thread
        if t is None:
            return
        self.client._thread_terminate = True
        if t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                STATS.warn("paho network thread did not stop", self.cid)
        if t.is_alive() or not self.disconnected.is_set():
            # still connected (a failed connect, a thread that would not stop): drop the socket
            try:
                sock = self.client.socket()
                if sock:
                    sock.close()
            except OSError:
                pass

    def disconnect(self, timeout=5.0):
        self.expect_down = True
        if not self.disconnected.is_set() and self.client.is_connected() and not BROKER_DEAD.is_set():
            self.client.disconnect()
            if not self.disconnected.wait(timeout):
                STATS.warn("no disconnect callback after DISCONNECT", self.cid)
        self.stop_loop()


def published(info):
    """Whether a publish was acknowledged (is_published() raises for a failed publish)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def proto_name(proto):
    return {mqtt.MQTTv31: "3.1", mqtt.MQTTv311: "3.1.1", mqtt.MQTTv5: "5"}[proto]


def wait_or_stop(seconds):
    """Sleeps up to `seconds`; True if the run was stopped meanwhile."""
    return STOP.wait(max(0.0, seconds))


# ---------------------------------------------------------------------------------------------
# workload 1: checked persistent subscribers and their publishers


class CheckedSub:
    def __init__(self, i, seed, reconnect_range):
        self.i = i
        self.proto = mqtt.MQTTv311 if i % 2 == 0 else mqtt.MQTTv5
        self.qos = 1 if (i // 2) % 2 == 0 else 2
        self.cid = "soak-check-%d" % i
        self.topic = "soak/check/%d" % i
        self.rng = random.Random(seed * 1000 + i)
        self.reconnect_range = reconnect_range
        self.lock = threading.Lock()
        self.received = collections.Counter()  # seq -> deliveries
        self.wrong_qos = 0
        self.in_messages = None
        self.in_mutex = None
        self.conn = None
        self.reconnects = 0
        self.takeovers = 0
        self.sessions_lost = 0
        # publisher side
        self.acked = set()
        self.published = 0
        self.pending = []  # (seq, MQTTMessageInfo, conn) not acknowledged within the wait
        self.pub_conn = None

    def make_conn(self):
        conn = PahoConn(
            self.cid,
            self.proto,
            clean=False,
            workload="checked subscriber",
            session_expiry=300 if self.proto == mqtt.MQTTv5 else None,
            on_message=self.on_message,
        )
        # The QoS 2 messages this client has PUBREC'd but not yet seen PUBREL for are client
        # session state: share them between the connections of this client, so a PUBREL that
        # arrives on a new connection (after a takeover) releases the message to the application.
        if self.in_messages is None:
            self.in_messages = conn.client._in_messages
            self.in_mutex = conn.client._in_message_mutex
        else:
            conn.client._in_messages = self.in_messages
            conn.client._in_message_mutex = self.in_mutex
        return conn

    def on_message(self, client, userdata, msg):
        try:
            parts = msg.payload.split(b":", 2)
            seq = int(parts[1])
            with self.lock:
                self.received[seq] += 1
                if msg.qos != self.qos:
                    self.wrong_qos += 1
            STATS.inc("received_q%d" % msg.qos)
            if msg.topic != self.topic or int(parts[0]) != self.i:
                STATS.fail("checked subscriber got a foreign message", "%s on %s" % (self.cid, msg.topic))
        except Exception as e:  # noqa: BLE001
            STATS.fail("checked subscriber: bad payload", "%s: %r (%s)" % (self.cid, msg.payload[:40], e))

    def start(self):
        """Initial connect + subscribe (before the publisher starts)."""
        self.conn = self.make_conn()
        self.conn.connect()
        STATS.inc("connects_checked")
        codes = self.conn.subscribe(self.topic, self.qos)
        if codes is None or codes[0] != self.qos:
            raise RuntimeError("%s: SUBACK %s for QoS %d" % (self.cid, codes, self.qos))

    def check_session(self, conn, how):
        if not conn.session_present:
            self.sessions_lost += 1
            STATS.fail("persistent session not present after %s" % how, self.cid)
            codes = conn.subscribe(self.topic, self.qos)
            if codes is None:
                STATS.fail("checked subscriber: resubscribe failed", self.cid)

    def connect_with_retries(self, conn, how):
        for attempt in range(5):
            try:
                conn.connect()
                STATS.inc("connects_checked")
                self.check_session(conn, how)
                return True
            except Exception as e:  # noqa: BLE001
                STATS.fail("checked subscriber: %s failed" % how, "%s: %s" % (self.cid, e))
                conn.stop_loop()
                if BROKER_DEAD.is_set():
                    return False
                time.sleep(1)
        return False

    def graceful_cycle(self, offline):
        conn = self.conn
        conn.disconnect()
        time.sleep(offline)  # deliberately not interrupted by STOP: the session stays offline
        self.reconnects += 1
        self.connect_with_retries(conn, "reconnect")

    def takeover(self):
        old = self.conn
        old.expect_down = True
        new = self.make_conn()
        if not self.connect_with_retries(new, "takeover"):
            old.expect_down = False
            return
        self.takeovers += 1
        STATS.inc("takeovers_checked")
        if not old.disconnected.wait(CONNECT_TIMEOUT):
            STATS.fail("old connection still open after a takeover", self.cid)
        old.stop_loop()
        self.conn = new

    def run(self):
        lo, hi = self.reconnect_range
        while not STOP.is_set() and not BROKER_DEAD.is_set():
            deadline = time.monotonic() + self.rng.uniform(lo, hi)
            while time.monotonic() < deadline and not STOP.is_set():
                STOP.wait(0.5)
                if self.conn.disconnected.is_set() and not self.conn.expect_down and not BROKER_DEAD.is_set():
                    # dropped by the broker (already counted as a failure): come back
                    self.conn.stop_loop()
                    self.connect_with_retries(self.conn, "reconnect after a drop")
            if STOP.is_set() or BROKER_DEAD.is_set():
                break
            if self.rng.random() < 0.4:
                self.takeover()
            else:
                self.graceful_cycle(self.rng.uniform(0.2, 3.0))

    def ensure_connected(self):
        if not self.conn.connected.is_set():
            self.conn.stop_loop()
            self.connect_with_retries(self.conn, "reconnect for the drain")

    # publisher -------------------------------------------------------------------------------

    def publisher(self, seed):
        rng = random.Random(seed * 7919 + self.i)
        proto = mqtt.MQTTv5 if self.i % 4 in (1, 2) else mqtt.MQTTv311
        conn = PahoConn("soak-pub-%d" % self.i, proto, clean=True, workload="checked publisher")
        self.pub_conn = conn
        try:
            conn.connect()
            STATS.inc("connects_checked_pub")
        except Exception as e:  # noqa: BLE001
            STATS.fail("checked publisher: connect failed", "%s: %s" % (conn.cid, e))
            return
        interval = 1.0 / CHECKED_RATE
        next_t = time.monotonic()
        seq = 0
        while not STOP.is_set() and not BROKER_DEAD.is_set():
            if conn.disconnected.is_set():
                conn.stop_loop()
                try:
                    conn.connect()
                    STATS.inc("connects_checked_pub")
                except Exception as e:  # noqa: BLE001
                    STATS.fail("checked publisher: reconnect failed", "%s: %s" % (conn.cid, e))
                    time.sleep(1)
                    continue
            seq += 1
            payload = b"%d:%d:" % (self.i, seq) + b"x" * rng.randrange(0, 200)
            info = conn.client.publish(self.topic, payload, self.qos)
            self.published += 1
            STATS.inc("published_q%d" % self.qos)
            try:
                info.wait_for_publish(5.0)
            except (ValueError, RuntimeError):
                pass
            if published(info):
                self.record_ack(conn, seq, info.mid)
            else:
                STATS.warn("checked publish not acknowledged within 5 s", conn.cid)
                self.pending.append((seq, info, conn))
            self.sweep_pending()
            next_t += interval
            now = time.monotonic()
            if next_t > now:
                time.sleep(next_t - now)
            else:
                next_t = now

    def record_ack(self, conn, seq, mid):
        with conn.cond:
            reason = conn.pub_reasons.pop(mid, 0)
        if reason >= 0x80:
            STATS.fail("checked publish refused", "%s seq %d reason 0x%02x" % (conn.cid, seq, reason))
            return
        if reason == 0x10:
            STATS.fail("checked publish: no matching subscribers", "%s seq %d" % (conn.cid, seq))
        with self.lock:
            self.acked.add(seq)
        STATS.inc("acked_q%d" % self.qos)

    def sweep_pending(self):
        still = []
        for seq, info, conn in self.pending:
            if published(info):
                self.record_ack(conn, seq, info.mid)
            else:
                still.append((seq, info, conn))
        self.pending = still

    def missing(self):
        with self.lock:
            return [s for s in self.acked if self.received[s] == 0]

    def duplicates(self):
        with self.lock:
            return sum(1 for s, n in self.received.items() if n > 1)


# ---------------------------------------------------------------------------------------------
# workload 2: connect churn (random ids, wills, abrupt closes)


class WillBook:
    """Wills announced by churn clients; the monitor records what arrives."""

    def __init__(self):
        self.lock = threading.Lock()
        self.expected = {}  # cid -> qos (abrupt close: the will must fire)
        self.forbidden = set()  # cid (DISCONNECT: the will must not fire)
        self.received = collections.Counter()  # cid -> count
        self.unknown = 0

    def expect(self, cid, qos):
        with self.lock:
            self.expected[cid] = qos

    def forbid(self, cid):
        with self.lock:
            self.forbidden.add(cid)

    def on_message(self, client, userdata, msg):
        try:
            cid = msg.payload.split(b"|", 1)[0].decode()
        except Exception:  # noqa: BLE001
            cid = ""
        with self.lock:
            self.received[cid] += 1
        STATS.inc("will_received")
        STATS.inc("received_q%d" % msg.qos)

    def missing(self, qos):
        with self.lock:
            return [c for c, q in self.expected.items() if q == qos and self.received[c] == 0]

    def fired_forbidden(self):
        with self.lock:
            return [c for c in self.forbidden if self.received[c] > 0]


WILLS = WillBook()


def superseded(level, rc):
    """A CONNECT that lost a race for its client id to a newer one may be refused as busy:
    0x89 Server busy (MQTT 5) / 3 Server unavailable (3.x). Anything else is not expected."""
    return rc == (0x89 if level == 5 else 0x03)


def make_will(rng, cid, kind):
    qos = rng.choice((0, 1))
    retain = rng.random() < 0.3
    if retain:
        topic = "soak/will/ret/%d" % rng.randrange(RETAINED_WILL_TOPICS)
    else:
        topic = "soak/will/live/%s" % cid
    payload = ("%s|%s|q%d" % (cid, kind, qos)).encode()
    return topic, payload, qos, retain


def churn_main(t, seed):
    rng = random.Random(seed * 31 + t)
    n = 0
    variants = [
        ("paho", 0.2),
        ("raw_graceful", 0.15),
        ("raw_abrupt", 0.3),
        ("raw_rst", 0.15),
        ("raw_truncated", 0.12),
        ("raw_no_connect", 0.08),
    ]
    names = [v for v, _ in variants]
    weights = [w for _, w in variants]
    while not STOP.is_set() and not BROKER_DEAD.is_set():
        n += 1
        cid = "ch%d-%d" % (t, n)
        variant = rng.choices(names, weights)[0]
        try:
            if variant == "paho":
                churn_paho(rng, cid)
            elif variant == "raw_no_connect":
                s = socket.create_connection((HOST, PORT), timeout=5)
                if rng.random() < 0.5:
                    s.sendall(connect_packet(cid, 4, True)[:7])  # half a CONNECT
                s.close()
                STATS.inc("churn_no_connect")
            else:
                churn_raw(rng, cid, variant)
        except Exception as e:  # noqa: BLE001
            if not BROKER_DEAD.is_set():
                STATS.fail("churn: %s: %s" % (variant, type(e).__name__), "%s: %s" % (cid, e))
        wait_or_stop(rng.uniform(0.02, 0.12))


def churn_paho(rng, cid):
    proto = rng.choice((mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5))
    will = make_will(rng, cid, "graceful") if rng.random() < 0.5 else None
    conn = PahoConn(cid, proto, clean=True, workload="churn (paho)", will=will)
    try:
        conn.connect()
    except Exception:
        conn.stop_loop()
        raise
    STATS.inc("connects_churn_paho")
    if will:
        WILLS.forbid(cid)
    k = rng.randrange(20)
    if rng.random() < 0.5:
        codes = conn.subscribe("soak/churn/%d/x" % k, rng.choice((0, 1, 2)))
        if codes is None:
            STATS.fail("churn: SUBACK timeout", cid)
    for _ in range(rng.randrange(0, 4)):
        qos = rng.choice((0, 0, 1, 2))
        info = conn.client.publish("soak/churn/%d/y" % k, b"churn", qos)
        STATS.inc("published_q%d" % qos)
        if qos:
            try:
                info.wait_for_publish(5.0)
            except (ValueError, RuntimeError):
                pass
            if published(info):
                STATS.inc("acked_q%d" % qos)
            else:
                STATS.fail("churn: publish not acknowledged within 5 s", cid)
    time.sleep(rng.uniform(0, 0.3))
    conn.disconnect()


def churn_raw(rng, cid, variant):
    level = rng.choice((3, 4, 5))
    graceful = variant == "raw_graceful"
    will = None
    expiry, delay = 0, 0
    if rng.random() < (0.9 if graceful else 0.7):
        topic, payload, qos, retain = make_will(rng, cid, "graceful" if graceful else "abrupt")
        if level == 5 and rng.random() < 0.3:
            expiry, delay = 3, 1  # will delay 1 s, session kept 3 s
        will = (topic, payload, qos, retain, delay)
    c = RawClient(cid, level, clean=True, session_expiry=expiry, will=will)
    try:
        try:
            rc = c.connect()
        except socket.timeout:
            STATS.fail("churn: no CONNACK within %.0f s" % CONNECT_TIMEOUT, cid)
            return
        if rc != 0:
            STATS.fail("churn: CONNACK refused", "%s rc 0x%02x" % (cid, rc))
            return
        STATS.inc("connects_churn_raw")
        if will:
            if graceful:
                WILLS.forbid(cid)
            else:
                WILLS.expect(cid, will[2])
        if rng.random() < 0.3:
            c.sock.sendall(publish_packet(level, "soak/churn/%d/x" % rng.randrange(20), b"raw"))
            STATS.inc("published_q0")
        time.sleep(rng.uniform(0, 0.2))
        if graceful:
            c.close_graceful()
            STATS.inc("churn_graceful")
        elif variant == "raw_rst":
            c.close_rst()
            STATS.inc("churn_rst")
        elif variant == "raw_truncated":
            pkt = publish_packet(level, "soak/churn/t", b"y" * 50, qos=1, pid=7)
            c.sock.sendall(pkt[: rng.randrange(1, len(pkt) - 1)])
            c.close()
            STATS.inc("churn_truncated")
        else:
            c.close()
            STATS.inc("churn_abrupt")
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# workload 3: takeover storm


def storm_main(t, seed):
    rng = random.Random(seed * 131 + t)
    while not wait_or_stop(rng.uniform(0, 0.05)) and not BROKER_DEAD.is_set():
        cid = rng.choice(STORM_IDS)
        level = rng.choice((4, 5))
        clean = rng.random() < 0.4
        expiry = 30 if (level == 5 and not clean) else 0
        c = RawClient(cid, level, clean, session_expiry=expiry)
        try:
            c.open()
        except OSError as e:
            STATS.fail("storm: cannot open a connection", "%s: %s" % (cid, e))
            continue
        try:
            try:
                c.send_connect()
                rc = c.read_connack()
            except socket.timeout:
                STATS.fail("storm: no CONNACK within %.0f s" % CONNECT_TIMEOUT, cid)
                continue
            except (EOFError, ConnectionError):
                # taken over by a racing CONNECT before our CONNACK was sent
                STATS.inc("storm_kicked_before_connack")
                STATS.inc("takeovers_storm")
                continue
            if rc != 0:
                if superseded(level, rc):
                    STATS.inc("storm_refused_busy")
                    STATS.inc("takeovers_storm")
                else:
                    STATS.fail("storm: CONNACK refused", "%s rc 0x%02x" % (cid, rc))
                continue
            STATS.inc("connects_storm")
            if not clean and not c.session_present:
                try:
                    c.sock.sendall(subscribe_packet(1, level, "soak/storm/%s" % cid, 1))
                except OSError:
                    pass
            if c.hold(rng.uniform(0, 0.3), rng) == "kicked":
                STATS.inc("takeovers_storm")
                continue
            r = rng.random()
            if r < 0.4:
                c.close_graceful()
            elif r < 0.7:
                c.close_rst()
            else:
                c.close()
        except (OSError, EOFError) as e:
            if not BROKER_DEAD.is_set():
                STATS.warn("storm: socket error", "%s: %s" % (cid, e))
        finally:
            c.close()


def burst_main(seed):
    """Bursts of simultaneous CONNECTs on one client id: exactly one connection must remain."""
    rng = random.Random(seed * 977)
    while not wait_or_stop(rng.uniform(0.5, 2.0)) and not BROKER_DEAD.is_set():
        cid = rng.choice(BURST_IDS)
        clients = []
        for _ in range(rng.randrange(3, 7)):
            level = rng.choice((4, 5))
            clean = rng.random() < 0.5
            clients.append(RawClient(cid, level, clean, session_expiry=30 if level == 5 and not clean else 0))
        try:
            for c in clients:
                c.open()
            for c in clients:
                c.send_connect()
            STATS.inc("bursts")
            connacks = 0
            for c in clients:
                try:
                    rc = c.read_connack()
                    if rc == 0:
                        connacks += 1
                    elif superseded(c.level, rc):
                        STATS.inc("burst_refused_busy")
                    else:
                        STATS.fail("burst: CONNACK refused", "%s rc 0x%02x" % (cid, rc))
                except (EOFError, ConnectionError):
                    STATS.inc("burst_closed_before_connack")
                except socket.timeout:
                    STATS.fail("burst: connection neither answered nor closed", cid)
            STATS.inc("connects_burst", connacks)
            time.sleep(0.3)
            alive = []
            for c in clients:
                state = c.probe_alive()
                if state is None:
                    STATS.fail("burst: connection unresponsive to PINGREQ", cid)
                elif state:
                    alive.append(c)
            STATS.inc("takeovers_burst", len(clients) - 1)
            if len(alive) > 1:
                STATS.fail(
                    "burst: several live connections with one client id",
                    "%s: %d of %d still answer PINGREQ" % (cid, len(alive), len(clients)),
                )
            elif not alive:
                STATS.fail("burst: no connection left (the last CONNECT must win)", "%s: 0 of %d" % (cid, len(clients)))
            for c in alive:
                c.close_graceful()
        except OSError as e:
            if not BROKER_DEAD.is_set():
                STATS.fail("burst: socket error", "%s: %s" % (cid, e))
        finally:
            for c in clients:
                c.close()


# ---------------------------------------------------------------------------------------------
# workload 4: subscription churn, QoS 0/1/2 traffic, retained


def subchurn_main(t, seed):
    rng = random.Random(seed * 53 + t)
    gen = 0
    proto = mqtt.MQTTv5 if t % 2 else mqtt.MQTTv311

    def on_message(client, userdata, msg):
        STATS.inc("received_q%d" % msg.qos)
        if msg.retain:
            STATS.inc("subchurn_retained_received")

    def pick_filter():
        k = rng.randrange(20)
        choices = [
            "soak/churn/+/x",
            "soak/churn/%d/x" % k,
            "soak/churn/%d/#" % k,
            "soak/churn/#",
            "soak/churn/+/+",
            "+/churn/+/y",
            "soak/retained/+",
            "soak/retained/%d" % rng.randrange(RETAINED_TOPICS),
            "soak/will/#",
        ]
        if proto == mqtt.MQTTv5:
            choices.append("$share/g%d/soak/churn/+/x" % rng.randrange(3))
        if t < 2 and rng.random() < 0.05:
            return "soak/#"  # every message: only two clients ever hold it
        return rng.choice(choices)

    while not STOP.is_set() and not BROKER_DEAD.is_set():
        gen += 1
        cid = "soak-subs-%d-%d" % (t, gen)
        conn = PahoConn(cid, proto, clean=True, workload="subscription churn", on_message=on_message)
        try:
            conn.connect()
        except Exception as e:  # noqa: BLE001
            conn.stop_loop()
            if not BROKER_DEAD.is_set():
                STATS.fail("subscription churn: connect failed", "%s: %s" % (cid, e))
            wait_or_stop(1)
            continue
        STATS.inc("connects_subchurn")
        subs = set()
        life_end = time.monotonic() + rng.uniform(10, 30)
        while time.monotonic() < life_end and not STOP.is_set() and conn.connected.is_set():
            if subs and (rng.random() < 0.45 or "soak/#" in subs and rng.random() < 0.5):
                f = "soak/#" if "soak/#" in subs and rng.random() < 0.7 else rng.choice(sorted(subs))
                codes = conn.unsubscribe(f)
                STATS.inc("unsubscribes")
                subs.discard(f)
                if codes is None and conn.connected.is_set():
                    STATS.fail("subscription churn: no UNSUBACK", "%s %s" % (cid, f))
            else:
                f = pick_filter()
                codes = conn.subscribe(f, rng.choice((0, 1, 2)))
                STATS.inc("subscribes")
                subs.add(f)
                if codes is None:
                    if conn.connected.is_set():
                        STATS.fail("subscription churn: no SUBACK", "%s %s" % (cid, f))
                elif codes[0] >= 0x80:
                    STATS.fail("subscription churn: subscription refused", "%s %s 0x%02x" % (cid, f, codes[0]))
            wait_or_stop(rng.uniform(0.1, 0.6))
        conn.disconnect()


def churn_publisher_main(seed):
    """QoS 0/1/2 traffic on soak/churn/... and a little QoS 1 on the storm clients' topics."""
    rng = random.Random(seed * 17)
    conn = PahoConn("soak-churn-pub", mqtt.MQTTv311, clean=True, workload="churn publisher")
    conn.client.max_queued_messages_set(2000)
    try:
        conn.connect()
        STATS.inc("connects_other")
    except Exception as e:  # noqa: BLE001
        STATS.fail("churn publisher: connect failed", str(e))
        return
    pending = collections.deque()
    tick = 0.02
    per_tick = CHURN_PUB_RATE * tick
    carry = 0.0
    next_t = time.monotonic()
    while not STOP.is_set() and not BROKER_DEAD.is_set():
        if conn.disconnected.is_set():
            conn.stop_loop()
            try:
                conn.connect()
                STATS.inc("connects_other")
            except Exception as e:  # noqa: BLE001
                STATS.fail("churn publisher: reconnect failed", str(e))
                time.sleep(1)
                continue
        carry += per_tick
        while carry >= 1:
            carry -= 1
            r = rng.random()
            qos = 0 if r < 0.85 else (1 if r < 0.95 else 2)
            if rng.random() < 0.02:
                topic, qos = "soak/storm/%s" % rng.choice(STORM_IDS), 1
            else:
                topic = "soak/churn/%d/%s" % (rng.randrange(20), rng.choice("xy"))
            info = conn.client.publish(topic, b"c" * rng.randrange(0, 100), qos)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                STATS.warn("churn publisher: client queue full (broker slow)")
                continue
            STATS.inc("published_q%d" % qos)
            if qos:
                pending.append((qos, info))
        while pending and published(pending[0][1]):
            STATS.inc("acked_q%d" % pending.popleft()[0])
        next_t += tick
        now = time.monotonic()
        if next_t > now:
            time.sleep(next_t - now)
        else:
            next_t = now
    deadline = time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        if published(pending[0][1]):
            STATS.inc("acked_q%d" % pending.popleft()[0])
        else:
            time.sleep(0.05)
    if pending:
        STATS.warn("churn publisher: QoS 1/2 publishes unacknowledged at the end", str(len(pending)))
    conn.disconnect()


class RetainedPublisher:
    def __init__(self, seed):
        self.rng = random.Random(seed * 19)
        self.expected = {}  # k -> payload (b"" = deleted)
        self.uncertain = set()

    def run(self):
        rng = self.rng
        gen = 0
        interval = 1.0 / RETAINED_RATE
        n = 0
        while not STOP.is_set() and not BROKER_DEAD.is_set():
            gen += 1
            conn = PahoConn("soak-retained-pub-%d" % gen, mqtt.MQTTv5, clean=True, workload="retained publisher")
            try:
                conn.connect()
                STATS.inc("connects_other")
            except Exception as e:  # noqa: BLE001
                STATS.fail("retained publisher: connect failed", str(e))
                wait_or_stop(1)
                continue
            life_end = time.monotonic() + rng.uniform(15, 40)
            next_t = time.monotonic()
            while time.monotonic() < life_end and not STOP.is_set() and conn.connected.is_set():
                k = rng.randrange(RETAINED_TOPICS)
                n += 1
                payload = b"" if rng.random() < 0.05 else b"r%d:%d" % (k, n)
                info = conn.client.publish("soak/retained/%d" % k, payload, 1, retain=True)
                STATS.inc("published_q1")
                STATS.inc("retained_published")
                try:
                    info.wait_for_publish(5.0)
                except (ValueError, RuntimeError):
                    pass
                if published(info):
                    STATS.inc("acked_q1")
                    self.expected[k] = payload
                    self.uncertain.discard(k)
                else:
                    self.uncertain.add(k)
                    STATS.warn("retained publish not acknowledged within 5 s")
                next_t += interval
                now = time.monotonic()
                if next_t > now:
                    time.sleep(next_t - now)
                else:
                    next_t = now
            conn.disconnect()

    def check(self, deadline):
        """A new subscriber must get the last acknowledged value of every retained topic."""
        want = {k: v for k, v in self.expected.items() if k not in self.uncertain and v}
        attempt = 0
        while True:
            attempt += 1
            got = {}
            lock = threading.Lock()

            def on_message(client, userdata, msg):
                if msg.retain:
                    k = int(msg.topic.rsplit("/", 1)[1])
                    with lock:
                        got[k] = msg.payload

            conn = PahoConn("soak-retained-check-%d" % attempt, mqtt.MQTTv311, True, "retained check", on_message=on_message)
            try:
                conn.connect()
                conn.subscribe("soak/retained/+", 1)
                end = min(deadline, time.monotonic() + 3)
                while time.monotonic() < end:
                    with lock:
                        if len(got) >= len(want) and all(got.get(k) == v for k, v in want.items()):
                            break
                    time.sleep(0.1)
            except Exception as e:  # noqa: BLE001
                STATS.warn("retained check: connect failed", str(e))
            finally:
                conn.disconnect()
            with lock:
                wrong = [k for k, v in want.items() if got.get(k) != v]
                extra = [
                    k
                    for k in got
                    if k not in self.uncertain and k in self.expected and not self.expected[k]
                ]
            if (not wrong and not extra) or time.monotonic() >= deadline - 1 or attempt >= 3:
                return len(want), wrong, extra
            time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# workload 5: sampling


def read_proc(pid):
    """(rss bytes, open fds) of the broker, or None if it is gone / a zombie."""
    try:
        with open("/proc/%d/status" % pid) as f:
            status = f.read()
    except OSError:
        return None
    rss = None
    for line in status.splitlines():
        if line.startswith("State:") and ("Z" in line.split()[1] or "X" in line.split()[1]):
            return None
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    try:
        fds = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None
    if rss is None:
        return None
    return rss, fds


def cpu_seconds(pid):
    """User + system CPU time of the broker so far, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Sampler:
    def __init__(self, pid):
        self.pid = pid
        self.samples = []  # (t, rss, fds)
        self.lock = threading.Lock()

    def sample(self):
        r = read_proc(self.pid)
        if r is None:
            if not BROKER_DEAD.is_set():
                BROKER_DEAD.set()
                STATS.fail("broker process died", "pid %d" % self.pid)
                STOP.set()
            return None
        return r

    def run(self):
        next_sample = time.monotonic()
        while not STOP.is_set():
            r = self.sample()  # liveness every 0.5 s
            if r is None:
                return
            if time.monotonic() >= next_sample:
                next_sample += 5.0
                with self.lock:
                    self.samples.append((time.monotonic() - T0, r[0], r[1]))
            STOP.wait(0.5)


# ---------------------------------------------------------------------------------------------
# main


def median(xs):
    return statistics.median(xs) if xs else 0


def start_thread(name, target, *args):
    def guarded():
        try:
            target(*args)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            STATS.fail("driver error in thread %s" % name, repr(e))

    th = threading.Thread(target=guarded, name=name, daemon=True)
    th.start()
    return th


def main():
    global PORT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--broker-pid", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    PORT = args.port
    duration = max(5.0, args.minutes * 60.0)
    seed = args.seed
    pid = args.broker_pid
    random.seed(seed)

    if read_proc(pid) is None:
        print("soak: broker pid %d is not running" % pid, file=sys.stderr)
        return 1

    # fds of the broker with no client at all (lowest of a few samples)
    baseline = []
    for _ in range(3):
        r = read_proc(pid)
        if r is not None:
            baseline.append(r)
        time.sleep(0.2)
    if not baseline:
        print("soak: broker pid %d died before the run" % pid, file=sys.stderr)
        return 1
    baseline_fds = min(r[1] for r in baseline)
    baseline_rss = min(r[0] for r in baseline)

    lo = min(20.0, max(4.0, duration / 6))
    hi = min(60.0, max(8.0, duration / 3))
    log(
        "port %d, broker pid %d, %.0f s, seed %d; checked subscribers reconnect every %.0f-%.0f s"
        % (PORT, pid, duration, seed, lo, hi)
    )

    sampler = Sampler(pid)
    threads = [start_thread("sampler", sampler.run)]

    # will monitor first, then the checked subscribers (subscribed before their publishers start)
    will_monitor = PahoConn("soak-will-monitor", mqtt.MQTTv311, True, "will monitor", on_message=WILLS.on_message)
    checked = [CheckedSub(i, seed, (lo, hi)) for i in range(CHECKED_CLIENTS)]
    try:
        will_monitor.connect()
        STATS.inc("connects_other")
        codes = will_monitor.subscribe("soak/will/#", 1)
        if codes is None or codes[0] != 1:
            raise RuntimeError("will monitor SUBACK %s" % codes)
        for cs in checked:
            cs.start()
    except Exception as e:  # noqa: BLE001
        STATS.fail("setup failed", str(e))
        STOP.set()

    run_start = time.monotonic()
    cpu_start = cpu_seconds(pid)
    retained = RetainedPublisher(seed)
    if not STOP.is_set():
        for cs in checked:
            threads.append(start_thread("pub-%d" % cs.i, cs.publisher, seed))
            threads.append(start_thread("sub-%d" % cs.i, cs.run))
        for t in range(CHURN_THREADS):
            threads.append(start_thread("churn-%d" % t, churn_main, t, seed))
        for t in range(STORM_THREADS):
            threads.append(start_thread("storm-%d" % t, storm_main, t, seed))
        threads.append(start_thread("burst", burst_main, seed))
        for t in range(SUBCHURN_CLIENTS):
            threads.append(start_thread("subs-%d" % t, subchurn_main, t, seed))
        threads.append(start_thread("churn-pub", churn_publisher_main, seed))
        threads.append(start_thread("retained-pub", retained.run))

    end = run_start + duration
    next_progress = time.monotonic() + 15
    while not STOP.is_set():
        now = time.monotonic()
        if now >= end:
            break
        STOP.wait(min(1.0, end - now))
        if time.monotonic() >= next_progress and not STOP.is_set():
            next_progress += 15
            with sampler.lock:
                last = sampler.samples[-1] if sampler.samples else (0, 0, 0)
            log(
                "rss %.1f MiB, fds %d, published q0/q1/q2 %d/%d/%d, received %d/%d/%d, failures %d"
                % (
                    last[1] / MIB,
                    last[2],
                    STATS.get("published_q0"),
                    STATS.get("published_q1"),
                    STATS.get("published_q2"),
                    STATS.get("received_q0"),
                    STATS.get("received_q1"),
                    STATS.get("received_q2"),
                    sum(STATS.failures.values()),
                )
            )
    run_end = time.monotonic()
    cpu_end = cpu_seconds(pid)
    STOP.set()
    drain_deadline = run_end + 30
    log("run over (%.1f s); stopping the workloads and draining" % (run_end - run_start))

    # workloads stop within their bounded waits
    for th in threads:
        th.join(max(0.1, min(15.0, drain_deadline - 12 - time.monotonic())))
    stuck = [th.name for th in threads if th.is_alive()]
    if stuck:
        STATS.warn("workload threads still running at the drain", ", ".join(stuck))

    dead = BROKER_DEAD.is_set() or read_proc(pid) is None
    if dead and not BROKER_DEAD.is_set():
        BROKER_DEAD.set()
        STATS.fail("broker process died", "pid %d" % pid)

    retained_result = None
    if not dead:
        # every checked subscriber online, then wait for what was acknowledged to arrive
        for cs in checked:
            if cs.conn is not None:
                cs.ensure_connected()
        msg_deadline = min(drain_deadline - 8, time.monotonic() + 20)
        while True:
            for cs in checked:
                cs.sweep_pending()
            if all(not cs.missing() for cs in checked) and not WILLS.missing(1):
                break
            if time.monotonic() >= msg_deadline or read_proc(pid) is None:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates, QoS 0 wills
        retained_result = retained.check(min(drain_deadline - 3, time.monotonic() + 6))

    SHUTDOWN.set()
    # disconnect everything, then the broker's fds must be back to the no-client baseline
    for cs in checked:
        if cs.conn is not None:
            cs.conn.disconnect(timeout=2)
        pc = cs.pub_conn
        if pc is not None:
            pc.disconnect(timeout=2)
    will_monitor.disconnect(timeout=2)
    end_fds = None
    fd_deadline = time.monotonic() + 5
    while not dead and time.monotonic() < fd_deadline:
        r = read_proc(pid)
        if r is None:
            dead = True
            break
        end_fds = r[1]
        if end_fds <= baseline_fds + 2:
            break
        time.sleep(0.25)
    if not dead and read_proc(pid) is None:
        dead = True
    if dead and not BROKER_DEAD.is_set():
        BROKER_DEAD.set()
        STATS.fail("broker process died", "pid %d" % pid)
    drain_time = time.monotonic() - run_end

    # ---- checks -------------------------------------------------------------------------------
    with sampler.lock:
        samples = list(sampler.samples)
    run_samples = [s for s in samples if s[0] <= run_end - T0 + 0.5]
    rss = [s[1] for s in run_samples]
    fds = [s[2] for s in run_samples]
    n = len(rss)
    rss_verdict = "n/a"
    if n >= 5:
        warm = rss[int(n * 0.2) : max(int(n * 0.4), int(n * 0.2) + 1)]
        tail = rss[int(n * 0.8) :] or rss[-1:]
        warm_med, tail_med = median(warm), median(tail)
        growth = tail_med - warm_med
        pct = 100.0 * growth / warm_med if warm_med else 0.0
        grew = growth > 0.25 * warm_med and growth > 8 * MIB
        if not grew:
            rss_verdict = "flat"
        elif duration < 120:
            rss_verdict = "GREW (run shorter than 2 min: warning only)"
            STATS.warn("RSS grew (short run)", "%.1f -> %.1f MiB" % (warm_med / MIB, tail_med / MIB))
        else:
            rss_verdict = "GREW"
            STATS.fail("RSS not flat", "%.1f -> %.1f MiB (+%.0f%%)" % (warm_med / MIB, tail_med / MIB, pct))
    else:
        warm_med = tail_med = pct = 0.0
        rss_verdict = "too few samples (%d) for a trend" % n

    per_client = []
    total_lost = {1: 0, 2: 0}
    total_dup = {1: 0, 2: 0}
    for cs in checked:
        lost = cs.missing()
        dup = cs.duplicates()
        total_lost[cs.qos] += len(lost)
        total_dup[cs.qos] += dup
        per_client.append((cs, lost, dup))
        if lost and not dead:
            STATS.fail(
                "QoS %d messages lost" % cs.qos,
                "%s: %d acknowledged publishes never delivered (first seqs %s)"
                % (cs.cid, len(lost), sorted(lost)[:5]),
            )
        if cs.qos == 2 and dup:
            STATS.fail("QoS 2 duplicates", "%s: %d sequence numbers delivered more than once" % (cs.cid, dup))
        if cs.wrong_qos:
            STATS.fail("checked message at the wrong QoS", "%s: %d" % (cs.cid, cs.wrong_qos))

    will_missing_q1 = WILLS.missing(1)
    will_missing_q0 = WILLS.missing(0)
    will_forbidden = WILLS.fired_forbidden()
    if not dead:
        if will_missing_q1:
            STATS.fail("QoS 1 wills of abruptly closed clients missing", "%d, e.g. %s" % (len(will_missing_q1), will_missing_q1[:3]))
        if will_missing_q0:
            STATS.warn("QoS 0 wills of abruptly closed clients missing", "%d, e.g. %s" % (len(will_missing_q0), will_missing_q0[:3]))
    if will_forbidden:
        STATS.fail("will fired after a DISCONNECT", "%d, e.g. %s" % (len(will_forbidden), will_forbidden[:3]))

    if retained_result is not None:
        r_total, r_wrong, r_extra = retained_result
        if r_wrong:
            STATS.fail("retained: wrong or missing last value", "%d of %d topics, e.g. %s" % (len(r_wrong), r_total, r_wrong[:5]))
        if r_extra:
            STATS.fail("retained: deleted topic still retained", "%d, e.g. %s" % (len(r_extra), r_extra[:5]))

    fd_leak = None
    if end_fds is not None:
        fd_leak = end_fds - baseline_fds
        if fd_leak > 8:
            STATS.fail("broker fds not released", "%d with no clients at the start, %d at the end" % (baseline_fds, end_fds))

    # ---- summary --------------------------------------------------------------------------------
    c = STATS.c
    ok = not STATS.failures and not dead
    line = "=" * 78
    out = [line, "shardmq soak summary"]
    out.append(
        "duration        %.1f s run (%.2f min asked) + %.1f s drain; seed %d; port %d; broker pid %d"
        % (run_end - run_start, args.minutes, drain_time, seed, PORT, pid)
    )
    out.append(
        "connects        checked subs %d, checked pubs %d, churn %d (paho %d, raw %d), storm %d, burst %d, "
        "sub churn %d, other %d"
        % (
            c["connects_checked"],
            c["connects_checked_pub"],
            c["connects_churn_paho"] + c["connects_churn_raw"],
            c["connects_churn_paho"],
            c["connects_churn_raw"],
            c["connects_storm"],
            c["connects_burst"],
            c["connects_subchurn"],
            c["connects_other"],
        )
    )
    out.append(
        "churn closes    abrupt FIN %d, RST %d, mid-packet %d, DISCONNECT (raw) %d, no/half CONNECT %d"
        % (c["churn_abrupt"], c["churn_rst"], c["churn_truncated"], c["churn_graceful"], c["churn_no_connect"])
    )
    out.append(
        "takeovers       checked %d (plus %d DISCONNECT/reconnect cycles), storm kicks seen %d "
        "(%d closed before CONNACK, %d refused as busy), bursts %d (%d superseded connections: "
        "%d refused as busy, %d closed before CONNACK)"
        % (
            c["takeovers_checked"],
            sum(cs.reconnects for cs in checked),
            c["takeovers_storm"],
            c["storm_kicked_before_connack"],
            c["storm_refused_busy"],
            c["bursts"],
            c["takeovers_burst"],
            c["burst_refused_busy"],
            c["burst_closed_before_connack"],
        )
    )
    for q in (0, 1, 2):
        out.append(
            "messages q%d     published %d, acknowledged %s, received %d"
            % (q, c["published_q%d" % q], "-" if q == 0 else str(c["acked_q%d" % q]), c["received_q%d" % q])
        )
    out.append(
        "checked         lost q1 %d, q2 %d; duplicates q1 %d (allowed), q2 %d"
        % (total_lost[1], total_lost[2], total_dup[1], total_dup[2])
    )
    for cs, lost, dup in per_client:
        out.append(
            "  %-14s MQTT %-5s QoS %d  published %5d  acked %5d  delivered %5d  lost %d  dup %d  "
            "reconnects %d  takeovers %d"
            % (
                cs.cid,
                proto_name(cs.proto),
                cs.qos,
                cs.published,
                len(cs.acked),
                sum(1 for s in cs.received if cs.received[s]),
                len(lost),
                dup,
                cs.reconnects,
                cs.takeovers,
            )
        )
    with WILLS.lock:
        exp_q1 = sum(1 for q in WILLS.expected.values() if q == 1)
        exp_q0 = sum(1 for q in WILLS.expected.values() if q == 0)
        forb = len(WILLS.forbidden)
    out.append(
        "wills           abrupt q1 %d expected / %d missing; abrupt q0 %d / %d missing; "
        "after DISCONNECT %d, fired %d"
        % (exp_q1, len(will_missing_q1), exp_q0, len(will_missing_q0), forb, len(will_forbidden))
    )
    if retained_result is not None:
        out.append(
            "retained        %d publishes; %d topics checked: %d wrong, %d deleted-but-present; "
            "%d retained deliveries to churn subscribers"
            % (c["retained_published"], retained_result[0], len(retained_result[1]), len(retained_result[2]), c["subchurn_retained_received"])
        )
    out.append("subscriptions   %d SUBSCRIBEs, %d UNSUBSCRIBEs" % (c["subscribes"], c["unsubscribes"]))
    if rss:
        out.append(
            "RSS (MiB)       %d samples: min %.1f, median %.1f, max %.1f; no clients %.1f; first %.1f, last %.1f"
            % (n, min(rss) / MIB, median(rss) / MIB, max(rss) / MIB, baseline_rss / MIB, rss[0] / MIB, rss[-1] / MIB)
        )
        if n >= 5:
            out.append(
                "RSS trend       median 20-40%% %.1f MiB -> last 20%% %.1f MiB (%+.1f%%): %s"
                % (warm_med / MIB, tail_med / MIB, pct, rss_verdict)
            )
        else:
            out.append("RSS trend       %s" % rss_verdict)
    out.append(
        "fds             no clients %d; run first %s, max %s, last %s; after disconnecting all %s"
        % (
            baseline_fds,
            fds[0] if fds else "-",
            max(fds) if fds else "-",
            fds[-1] if fds else "-",
            end_fds if end_fds is not None else "-",
        )
    )
    if cpu_start is not None and cpu_end is not None and run_end > run_start:
        used = cpu_end - cpu_start
        out.append(
            "broker CPU      %.1f s during the run (%.0f%% of one core on average)"
            % (used, 100.0 * used / (run_end - run_start))
        )
    out.append("broker alive    %s" % ("no (DIED)" if dead else "yes"))
    if STATS.warnings:
        out.append("warnings:")
        for k, v in sorted(STATS.warnings.items()):
            ex = STATS.warn_examples.get(k)
            out.append("  %dx %s%s" % (v, k, (" (" + "; ".join(ex) + ")") if ex else ""))
    if STATS.failures:
        out.append("failures:")
        for k, v in sorted(STATS.failures.items()):
            ex = STATS.fail_examples.get(k)
            out.append("  %dx %s%s" % (v, k, (" (" + "; ".join(ex) + ")") if ex else ""))
    out.append("verdict         %s" % ("PASS" if ok else "FAIL"))
    out.append(line)
    print("\n".join(out), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # paho network threads are daemons; do not wait for them
