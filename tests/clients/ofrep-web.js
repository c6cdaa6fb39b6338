// Drives the real @openfeature/ofrep-web-provider@0.4.3 with @openfeature/web-sdk@1.10.0 under
// Node (the static-context provider: bulk POST /ofrep/v1/evaluate/flags with ETags, plus the SSE
// eventStreams path through the eventsource polyfill), for tests/ofrep.rs.
// Usage: node ofrep-web.js <baseUrl> <key>
// Prints {"step":"ready",...flags} once the provider is ready; then for each stdin line:
//   "same-context" -> sets a context with the same targetingKey and an extra, irrelevant attribute
//                     (the provider re-fetches with If-None-Match) and prints {"step":"same-context",...}
//   "new-context"  -> switches to another targetingKey and prints {"step":"new-context",...}
//   "exit"         -> exits.
// Every ConfigurationChanged event prints {"step":"configuration-changed","flagsChanged":[..],...flags}.
'use strict';
globalThis.EventSource = require('eventsource').EventSource;
const { OpenFeature, ProviderEvents } = require('@openfeature/web-sdk');
const { OFREPWebProvider } = require('@openfeature/ofrep-web-provider');
const readline = require('readline');

const [baseUrl, apiKey] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (msg) => { out({ step: 'error', message: String(msg && msg.stack || msg) }); process.exit(2); };
setTimeout(() => fail('timed out after 60 s'), 60000).unref();

const client = OpenFeature.getClient();
const flags = () => ({
  bool: client.getBooleanDetails('bool-flag', false),
  string: client.getStringDetails('string-flag', 'dflt'),
  float: client.getNumberDetails('float-flag', 0),
  object: client.getObjectDetails('object-flag', {}),
  disabled: client.getBooleanDetails('disabled-flag', true),
  missing: client.getBooleanDetails('no-such-flag', true),
});

(async () => {
  await OpenFeature.setContext({ targetingKey: 'user-1', email: 'ada@example.com' });
  await OpenFeature.setProviderAndWait(new OFREPWebProvider({
    baseUrl, headers: [['Authorization', `Bearer ${apiKey}`]], cacheMode: 'disabled',
  }));
  client.addHandler(ProviderEvents.ConfigurationChanged, (d) => {
    out({ step: 'configuration-changed', flagsChanged: d.flagsChanged || [], ...flags() });
  });
  out({ step: 'ready', ...flags() });
})().catch(fail);

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = line.trim();
  (async () => {
    if (cmd === 'same-context') {
      await OpenFeature.setContext({ targetingKey: 'user-1', email: 'ada@example.com', irrelevant: 'x' });
      out({ step: 'same-context', ...flags() });
    } else if (cmd === 'new-context') {
      await OpenFeature.setContext({ targetingKey: 'user-2', email: 'bob@other.org' });
      out({ step: 'new-context', ...flags() });
    } else if (cmd === 'exit') {
      process.exit(0);
    }
  })().catch(fail);
});
