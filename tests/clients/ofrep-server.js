// Drives the real @openfeature/ofrep-provider@0.1.3 with @openfeature/server-sdk@1.23.0 (the
// dynamic-context OFREP provider: one POST /ofrep/v1/evaluate/flags/{key} per evaluation), for
// tests/ofrep.rs.
// Usage: node ofrep-server.js <baseUrl> <key>
// Prints {"step":"done","results":{<name>: <evaluation details>}} and exits.
'use strict';
const { OpenFeature } = require('@openfeature/server-sdk');
const { OFREPProvider } = require('@openfeature/ofrep-provider');

const [baseUrl, apiKey] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (msg) => { out({ step: 'error', message: String(msg && msg.stack || msg) }); process.exit(2); };
setTimeout(() => fail('timed out after 60 s'), 60000).unref();

(async () => {
  await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl, headers: [['X-API-Key', apiKey]] }));
  const c = OpenFeature.getClient();
  const ada = { targetingKey: 'user-1', email: 'ada@example.com' };
  const bob = { targetingKey: 'user-2', email: 'bob@other.org' };
  const results = {
    bool: await c.getBooleanDetails('bool-flag', false, ada),
    string_targeted: await c.getStringDetails('string-flag', 'dflt', ada),
    string_default: await c.getStringDetails('string-flag', 'dflt', bob),
    float: await c.getNumberDetails('float-flag', 0, ada),
    int: await c.getNumberDetails('int-flag', 0, ada),
    object: await c.getObjectDetails('object-flag', {}, ada),
    disabled: await c.getBooleanDetails('disabled-flag', true, ada),
    split: await c.getStringDetails('split-flag', 'dflt', ada),
    no_context: await c.getBooleanDetails('bool-flag', false),
    missing: await c.getBooleanDetails('no-such-flag', true, ada),
    type_mismatch: await c.getStringDetails('bool-flag', 'dflt', ada),
  };
  out({ step: 'done', results });
  await OpenFeature.close();
  process.exit(0);
})().catch(fail);
