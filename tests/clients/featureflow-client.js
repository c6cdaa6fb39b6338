// Drives the real featureflow-client@2.1.0 (the browser thin client) against a relay, for
// tests/thin_client.rs. XMLHttpRequest comes from the xhr2 polyfill (no CORS, no localStorage).
// Usage: node featureflow-client.js <baseUrl> <clientKey> <featureKey,featureKey,...>
// With FF_EMAIL set, the pvt and alpha users also carry that `email` attribute.
// Prints one JSON line per user on stdout:
//   {"step":"user","who":"pvt"|"alpha"|"anonymous","id":<user id>,"variants":{key: variant},"features":<getFeatures()>}
// then {"step":"done"}, and keeps running (the client posts its evaluate events after 2 s) until
// a line "exit" arrives on stdin.
'use strict';
global.XMLHttpRequest = require('xhr2');
const Featureflow = require('featureflow-client');
const readline = require('readline');

const [baseUrl, apiKey, keyList] = process.argv.slice(2);
const keys = keyList.split(',');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (msg) => { out({ step: 'error', message: String(msg && msg.stack || msg) }); process.exit(2); };
setTimeout(() => fail('timed out after 60 s'), 60000).unref();

const email = process.env.FF_EMAIL ? { email: process.env.FF_EMAIL } : {};
const users = [
  ['pvt', { id: 'pvt-1', attributes: { user_role: ['pvt_user', 'staff'], ...email } }],
  ['alpha', { id: 'alpha-1', attributes: { user_role: 'alpha_role', tier: 'gold', ...email } }],
  ['anonymous', null],
];

(async () => {
  const config = { baseUrl, eventsUrl: baseUrl };
  for (const [who, user] of users) {
    const ff = user ? await Featureflow.init(apiKey, user, config) : await Featureflow.init(apiKey, config);
    const variants = {};
    for (const k of keys) variants[k] = ff.evaluate(k).value();
    out({ step: 'user', who, id: ff.getUser().id, variants, features: ff.getFeatures() });
  }
  out({ step: 'done' });
})().catch(fail);

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'exit') process.exit(0);
});
