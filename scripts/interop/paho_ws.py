#!/usr/bin/env python3
"""paho-mqtt (Python, 2.x) against shardmq over WebSocket: ws and wss (trusting the test CA),
MQTT 3.1.1 and 5.0, websockets transport with the path /mqtt.

For each combination: a subscriber and a publisher (separate clients), QoS 0/1/2 delivered with
their payload and QoS, and a wrong password refused. Prints one PASS or FAIL line per check and
exits 1 if any failed.

Run by scripts/smoke-tls.sh (paho-mqtt installed with `pip install --target DIR`):
    PYTHONPATH=DIR python3 paho_ws.py --ws HOST:PORT --wss HOST:PORT --ca FILE \
        --username U --password P
"""

import argparse
import os
import queue
import sys
import threading
import time

import paho.mqtt
import paho.mqtt.client as mqtt

FAILURES = 0


def report_pass(name, detail=""):
    print(f"PASS: paho {name}" + (f" ({detail})" if detail else ""), flush=True)


def report_fail(name, detail):
    global FAILURES
    FAILURES += 1
    print(f"FAIL: paho {name}: {detail}", flush=True)


class Client:
    """A paho client on its network thread, with its CONNACK and messages as events/queues."""

    def __init__(self, address, secure, version, client_id, args, password=None):
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.connected = threading.Event()
        self.connack = None
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            transport="websockets",
            protocol=version,
        )
        self.client.ws_set_options(path="/mqtt")
        if secure:
            # Verifies the broker's certificate (and its name, 127.0.0.1) against the test CA.
            self.client.tls_set(ca_certs=args.ca)
        self.client.username_pw_set(args.username, password if password is not None else args.password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties):
        self.connack = reason_code
        self.connected.set()

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties):
        self.subacks.put(reason_codes)

    def _on_message(self, _client, _userdata, message):
        self.messages.put((message.topic, message.payload.decode(), message.qos))

    def connect(self, timeout=10):
        """Connects and waits for the CONNACK; returns its reason code (raises on timeout)."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"no CONNACK within {timeout} s")
        return self.connack

    def close(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def wait_for(messages, predicate, count, timeout):
    """Takes messages matching predicate from the queue until count arrived or timeout."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            message = messages.get(timeout=remaining)
        except queue.Empty:
            break
        if predicate(message[0]):
            got.append(message)
    return got


def round_trip(transport, address, version, args):
    label = f"{transport} mqtt{'5.0' if version == mqtt.MQTTv5 else '3.1.1'}"
    vname = "v5" if version == mqtt.MQTTv5 else "v4"
    base = f"smoke/paho/{transport}/{vname}"
    client_id = f"paho-{transport}-{vname}-{os.getpid()}"
    secure = transport == "wss"
    sub = Client(address, secure, version, f"{client_id}-sub", args)
    pub = Client(address, secure, version, f"{client_id}-pub", args)
    try:
        for client in (sub, pub):
            reason = client.connect()
            if reason.is_failure:
                report_fail(f"{label} connect", f"CONNACK {reason}")
                return
        report_pass(f"{label} connect")

        sub.client.subscribe(f"{base}/#", qos=2)
        granted = sub.subacks.get(timeout=5)
        if len(granted) != 1 or granted[0].is_failure or granted[0].value != 2:
            report_fail(f"{label} subscribe", f"SUBACK {granted}, expected QoS 2 granted")
            return

        # The subscription may reach the publisher's shard a little after the SUBACK: publish a
        # probe until one arrives, then the checked messages.
        probed = []
        for _ in range(40):
            pub.client.publish(f"{base}/probe", "probe", qos=1).wait_for_publish(5)
            probed = wait_for(sub.messages, lambda t: t == f"{base}/probe", 1, 0.2)
            if probed:
                break
        if not probed:
            report_fail(f"{label} pub/sub", "the probe message never arrived")
            return
        time.sleep(0.3)  # later probes still in flight are drained below by topic

        expected = {f"{base}/q{qos}": (f"paho-{transport}-{vname}-q{qos}", qos) for qos in (0, 1, 2)}
        for topic, (payload, qos) in expected.items():
            pub.client.publish(topic, payload, qos=qos).wait_for_publish(5)
        received = wait_for(sub.messages, lambda t: t in expected, len(expected), 10)
        by_topic = {topic: (payload, qos) for topic, payload, qos in received}
        for topic, (payload, qos) in expected.items():
            name = f"{label} QoS {qos}"
            if topic not in by_topic:
                report_fail(name, f"nothing on {topic}")
            elif by_topic[topic] != (payload, qos):
                report_fail(name, f"got {by_topic[topic]}, expected {(payload, qos)}")
            else:
                report_pass(name, "payload and QoS")
    except Exception as error:  # a transport or TLS error is this check's failure
        report_fail(f"{label} pub/sub", f"{type(error).__name__}: {error}")
    finally:
        sub.close()
        pub.close()


def wrong_password(transport, address, version, args):
    label = f"{transport} mqtt{'5.0' if version == mqtt.MQTTv5 else '3.1.1'} wrong password refused"
    vname = "v5" if version == mqtt.MQTTv5 else "v4"
    client = Client(address, transport == "wss", version, f"paho-bad-{transport}-{vname}-{os.getpid()}",
                    args, password="not-the-password")
    try:
        reason = client.connect()
        # paho 2 reports 3.1.1's return code 4 as the 5.0 reason code 0x86.
        if not reason.is_failure:
            report_fail(label, "connected with a wrong password")
        elif reason.value != 0x86:
            report_fail(label, f"CONNACK {reason} ({reason.value}), expected 0x86 bad user name or password")
        else:
            report_pass(label, str(reason))
    except Exception as error:
        report_fail(label, f"{type(error).__name__}: {error}")
    finally:
        client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option in ("--ws", "--wss", "--ca", "--username", "--password"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    print(f"paho: paho-mqtt {paho.mqtt.__version__} on Python {sys.version.split()[0]}", flush=True)
    for transport, address in (("ws", args.ws), ("wss", args.wss)):
        for version in (mqtt.MQTTv311, mqtt.MQTTv5):
            round_trip(transport, address, version, args)
            wrong_password(transport, address, version, args)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
