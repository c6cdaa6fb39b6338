// Drives the real featureflow-node-sdk@0.6.7 against a relay, for tests/real_sdks.rs.
// Usage: node featureflow-node-sdk.js <baseUrl> <serverKey> <featureKey>
// Prints one JSON line per step on stdout:
//   {"step":"ready", "pvt_user": <variant>, "plain": <variant>, "all": {...}}
// then, after a line "changed <variant>" arrives on stdin, polls (the SDK polls every 6 s)
// until the pvt_user evaluation equals <variant>, and prints {"step":"changed","pvt_user":...}.
'use strict';
const Featureflow = require('featureflow-node-sdk');
const readline = require('readline');

const [baseUrl, apiKey, featureKey] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (msg) => { out({ step: 'error', message: String(msg) }); process.exit(2); };
setTimeout(() => fail('timed out after 60 s'), 60000).unref();

const pvt = new Featureflow.UserBuilder('pvt-1').withAttributes('user_role', ['pvt_user', 'staff']).build();
const plain = new Featureflow.UserBuilder('plain-1').withAttribute('user_role', 'customer').build();

const client = new Featureflow.Client({
  apiKey, baseUrl, eventsUrl: baseUrl, interval: 6, disableEvents: false,
}, (err, ff) => {
  if (err) fail(err);
});
client.ready(() => {
  out({
    step: 'ready',
    pvt_user: client.evaluate(featureKey, pvt).value(),
    plain: client.evaluate(featureKey, plain).value(),
    anonymous: client.evaluate(featureKey, 'anonymous').value(),
  });
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [cmd, want] = line.trim().split(/\s+/);
  if (cmd !== 'changed') return;
  const check = () => {
    const v = client.evaluate(featureKey, pvt).value();
    if (v === want) {
      out({ step: 'changed', pvt_user: v, plain: client.evaluate(featureKey, plain).value() });
      process.exit(0);
    }
    setTimeout(check, 100);
  };
  check();
});
