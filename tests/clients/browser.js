// Drives headless Chromium (Debian's /usr/bin/chromium, through playwright-core@1.65.1) on a page
// served from ANOTHER origin than the relay, for tests/browser.rs: everything crosses origins,
// so CORS (preflights, exposed headers) is what the browser enforces.
// Usage: node browser.js <relayBaseUrl> <clientKey>
// Prints JSON lines on stdout:
//   {"step":"featureflow","value":..,"features":..}  the real featureflow-client@2.1.0 UMD bundle
//   {"step":"bulk","status":200,"etag":..,"flags":[..]} an OFREP bulk POST by fetch, ETag read
//   {"step":"revalidate","status":304}                 the same with If-None-Match
//   {"step":"ofrep-event","data":..}                   an OFREP eventStreams SSE message (EventSource)
//   {"step":"eval-event","type":..,"data":..}          a per-context stream event (EventSource)
//   {"step":"ready"}                                   both streams open
// and {"step":"error",...} on any failure. A line "exit" on stdin closes the browser and exits.
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const [relay, key] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (msg) => { out({ step: 'error', message: String(msg && msg.stack || msg) }); process.exit(2); };
setTimeout(() => fail('timed out after 90 s'), 90000).unref();

const bundle = fs.readFileSync(path.join(__dirname, 'node_modules/featureflow-client/dist/featureflow.umd.js'));
const user = { id: 'browser-1', attributes: { user_role: ['pvt_user'] } };
const page = `<!doctype html><meta charset="utf-8"><title>flagrelay browser test</title>
<script src="/featureflow.js"></script>
<script>
const relay = ${JSON.stringify(relay)}, key = ${JSON.stringify(key)}, user = ${JSON.stringify(user)};
const report = (o) => window.report(o);
(async () => {
  try {
    const ff = await Featureflow.init(key, user, { baseUrl: relay, eventsUrl: relay });
    report({ step: 'featureflow', value: ff.evaluate('alpha').value(), features: ff.getFeatures() });

    const body = JSON.stringify({ context: { targetingKey: user.id, user_role: user.attributes.user_role } });
    const headers = { 'Content-Type': 'application/json', 'Authorization': 'Bearer ' + key };
    const r = await fetch(relay + '/ofrep/v1/evaluate/flags', { method: 'POST', headers, body });
    const etag = r.headers.get('ETag');
    const bulk = await r.json();
    report({ step: 'bulk', status: r.status, etag, flags: bulk.flags, eventStreams: bulk.eventStreams || null });
    const again = await fetch(relay + '/ofrep/v1/evaluate/flags', { method: 'POST', headers: { ...headers, 'If-None-Match': etag }, body });
    report({ step: 'revalidate', status: again.status });

    let open = 0;
    const opened = () => { open += 1; if (open === 2) report({ step: 'ready' }); };
    const streams = bulk.eventStreams || [];
    if (!streams.length) throw new Error('the bulk answer advertises no eventStreams');
    const uri = streams[0].endpoint.requestUri;
    const url = uri.startsWith('http') ? uri : relay + uri;
    const ofrep = new EventSource(url);
    ofrep.onopen = opened;
    ofrep.onmessage = (e) => report({ step: 'ofrep-event', data: e.data });
    ofrep.onerror = () => report({ step: 'stream-error', which: 'ofrep', state: ofrep.readyState });

    const b64 = btoa(JSON.stringify(user));
    const ev = new EventSource(relay + '/api/v1/eval/stream/' + key + '/user/' + encodeURIComponent(b64));
    ev.onopen = opened;
    for (const type of ['features.evaluated', 'features.updated', 'features.deleted']) {
      ev.addEventListener(type, (e) => report({ step: 'eval-event', type, data: JSON.parse(e.data) }));
    }
    ev.onerror = () => report({ step: 'stream-error', which: 'eval', state: ev.readyState });
  } catch (e) {
    report({ step: 'error', message: String(e && e.stack || e) });
  }
})();
</script>`;

const server = http.createServer((req, res) => {
  if (req.url === '/featureflow.js') {
    res.writeHead(200, { 'Content-Type': 'application/javascript' });
    res.end(bundle);
  } else {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page);
  }
});

let browser;
server.listen(0, '127.0.0.1', async () => {
  try {
    const origin = `http://127.0.0.1:${server.address().port}`;
    browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
    const ctx = await browser.newContext();
    const tab = await ctx.newPage();
    await tab.exposeFunction('report', (o) => out(o));
    tab.on('pageerror', (e) => out({ step: 'error', message: 'page: ' + e.message }));
    tab.on('console', (m) => { if (m.type() === 'error') out({ step: 'console-error', text: m.text() }); });
    out({ step: 'page', origin });
    await tab.goto(origin + '/');
  } catch (e) {
    fail(e);
  }
});

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  if (line.trim() === 'exit') {
    if (browser) await browser.close();
    process.exit(0);
  }
});
