// MQTT.js (npm `mqtt`, v5) against shardmq over WebSocket: ws and wss (trusting the test CA),
// MQTT 3.1.1 and 5.0. For each combination: a subscriber and a publisher (separate clients, so
// routing between connections is exercised), QoS 0/1/2 delivered with their payload and QoS,
// MQTT 5.0 properties passed through, and a wrong password refused with the right code.
// Prints one PASS or FAIL line per check; exits 1 if any failed.
//
// Run by scripts/smoke-tls.sh:
//   INTEROP_NODE_MODULES=DIR node mqttjs.mjs --ws URL --wss URL --ca FILE --username U --password P
// DIR holds node_modules/mqtt (installed with `npm install --prefix DIR mqtt@^5`): the library
// is loaded from there so that no node_modules lives in the repository.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    ws: { type: 'string' },
    wss: { type: 'string' },
    ca: { type: 'string' },
    username: { type: 'string' },
    password: { type: 'string' },
  },
});
for (const key of ['ws', 'wss', 'ca', 'username', 'password']) {
  if (!args[key]) {
    console.error(`mqttjs.mjs: --${key} is required`);
    process.exit(2);
  }
}
const modules = process.env.INTEROP_NODE_MODULES;
if (!modules) {
  console.error('mqttjs.mjs: INTEROP_NODE_MODULES is not set');
  process.exit(2);
}
const require = createRequire(join(modules, 'package.json'));
const mqtt = require('mqtt');
const mqttVersion = require('mqtt/package.json').version;
const ca = readFileSync(args.ca);

let failures = 0;
const pass = (name, detail = '') => console.log(`PASS: mqttjs ${name}${detail ? ` (${detail})` : ''}`);
const fail = (name, detail) => {
  failures += 1;
  console.log(`FAIL: mqttjs ${name}: ${detail}`);
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Bounds a promise: a broker that never answers is a failure, not a hang.
function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function options(url, protocolVersion, clientId, password = args.password) {
  return {
    protocolVersion,
    clientId,
    username: args.username,
    password,
    clean: true,
    reconnectPeriod: 0, // a refused or lost connection must surface, not be retried
    connectTimeout: 5000,
    // Used for wss only: the broker's certificate must verify against the test CA.
    ca,
    rejectUnauthorized: true,
  };
}

// Waits for `count` messages matching `filter` on `client`; resolves with them.
function collect(client, filter, count, ms) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => {
      client.removeListener('message', onMessage);
      reject(new Error(`got ${got.length} of ${count} messages in ${ms} ms`));
    }, ms);
    function onMessage(topic, payload, packet) {
      if (!filter(topic)) return;
      got.push({ topic, payload: payload.toString(), qos: packet.qos, properties: packet.properties });
      if (got.length === count) {
        clearTimeout(timer);
        client.removeListener('message', onMessage);
        resolve(got);
      }
    }
    client.on('message', onMessage);
  });
}

async function roundTrip(transport, url, version) {
  const label = `${transport} mqtt${version === 5 ? '5.0' : '3.1.1'}`;
  const base = `smoke/mqttjs/${transport}/v${version}`;
  const id = `mqttjs-${transport}-v${version}-${process.pid}`;
  let sub;
  let pub;
  try {
    sub = await within(10000, mqtt.connectAsync(url, options(url, version, `${id}-sub`)), 'subscriber connect');
    pub = await within(10000, mqtt.connectAsync(url, options(url, version, `${id}-pub`)), 'publisher connect');
    pass(`${label} connect`);
  } catch (error) {
    fail(`${label} connect`, error.message);
    sub?.end(true);
    pub?.end(true);
    return;
  }
  try {
    const granted = await within(5000, sub.subscribeAsync(`${base}/#`, { qos: 2 }), 'subscribe');
    if (granted.length !== 1 || granted[0].qos !== 2) {
      throw new Error(`SUBACK ${JSON.stringify(granted)}, expected QoS 2 granted`);
    }
    // The subscription may reach the publisher's shard a little after the SUBACK: publish a
    // probe until one arrives, then the checked messages.
    const probe = collect(sub, (topic) => topic === `${base}/probe`, 1, 10000);
    let probed = false;
    probe.then(() => { probed = true; }, () => {});
    for (let i = 0; i < 40 && !probed; i += 1) {
      await within(5000, pub.publishAsync(`${base}/probe`, 'probe', { qos: 1 }), 'probe publish');
      await sleep(200);
    }
    await probe;

    const expected = [0, 1, 2].map((qos) => ({ topic: `${base}/q${qos}`, payload: `mqttjs-${transport}-v${version}-q${qos}`, qos }));
    const arriving = collect(sub, (topic) => /\/q[012]$/.test(topic), expected.length, 10000);
    for (const message of expected) {
      const publishOptions = { qos: message.qos };
      if (version === 5) {
        publishOptions.properties = { contentType: 'text/plain', userProperties: { check: `q${message.qos}` } };
      }
      await within(5000, pub.publishAsync(message.topic, message.payload, publishOptions), `publish QoS ${message.qos}`);
    }
    const received = await arriving;
    for (const message of expected) {
      const got = received.find((m) => m.topic === message.topic);
      const name = `${label} QoS ${message.qos}`;
      if (!got) {
        fail(name, `nothing on ${message.topic}`);
      } else if (got.payload !== message.payload || got.qos !== message.qos) {
        fail(name, `got payload '${got.payload}' at QoS ${got.qos}, expected '${message.payload}' at QoS ${message.qos}`);
      } else if (version === 5 && (got.properties?.contentType !== 'text/plain'
          || got.properties?.userProperties?.check !== `q${message.qos}`)) {
        fail(name, `MQTT 5.0 properties lost: ${JSON.stringify(got.properties)}`);
      } else {
        pass(name, version === 5 ? 'payload, QoS, content type and user property' : 'payload and QoS');
      }
    }
  } catch (error) {
    fail(`${label} pub/sub`, error.message);
  } finally {
    await Promise.allSettled([sub.endAsync(), pub.endAsync()]);
  }
}

// A wrong password: CONNACK return code 4 (3.1.1) or reason code 0x86 (5.0).
async function wrongPassword(transport, url, version) {
  const label = `${transport} mqtt${version === 5 ? '5.0' : '3.1.1'} wrong password refused`;
  const expectedCode = version === 5 ? 0x86 : 4;
  const client = mqtt.connect(url, options(url, version, `mqttjs-bad-${transport}-v${version}-${process.pid}`, 'not-the-password'));
  try {
    const outcome = await within(10000, new Promise((resolve) => {
      client.once('connect', () => resolve({ connected: true }));
      client.once('error', (error) => resolve({ error }));
    }), 'CONNACK');
    if (outcome.connected) {
      fail(label, 'connected with a wrong password');
    } else if (outcome.error.code !== expectedCode) {
      fail(label, `error code ${outcome.error.code} (${outcome.error.message}), expected ${expectedCode}`);
    } else {
      pass(label, outcome.error.message);
    }
  } catch (error) {
    fail(label, error.message);
  } finally {
    client.end(true);
  }
}

console.log(`mqttjs: MQTT.js ${mqttVersion} on node ${process.version}`);
for (const [transport, url] of [['ws', args.ws], ['wss', args.wss]]) {
  for (const version of [4, 5]) {
    await roundTrip(transport, url, version);
    await wrongPassword(transport, url, version);
  }
}
process.exit(failures === 0 ? 0 : 1);
