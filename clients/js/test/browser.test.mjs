// The client in a real browser (Debian's chromium through puppeteer-core):
// the bundled dist/zps.min.js and the demo page against the real gateway.
// Fails when chromium is missing, unless ZPS_SKIP_BROWSER=1 is set explicitly.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { after, before, test } from 'node:test';
import { createRealtimeClient } from '../dist/index.js';
import { launchBrowser, root, skip } from './e2e-helpers.mjs';
import { range, startGateway, WebSocket } from './helpers.mjs';

let gw;
let server;
let browser;
let base;
const clients = [];

before(async () => {
  browser = await launchBrowser();
  if (!browser) return; // ZPS_SKIP_BROWSER=1
  gw = await startGateway(['--allow-client-publish']);
  // A tiny static server for dist/ and dist-demo/ (plus an empty page at /).
  const types = { '.js': 'text/javascript', '.html': 'text/html', '.json': 'application/json' };
  server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>zps test</title>');
    const file = normalize(join(root, path));
    if (!file.startsWith(root) || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' }).end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(async () => {
  for (const c of clients) await c.close();
  await browser?.close();
  server?.close();
  await gw?.stop();
});

test('browser: subscribe/publish round trip and offline/online catch-up with dist/zps.min.js', { skip }, async () => {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  await page.goto(`${base}/`);
  const result = await page.evaluate(async (url) => {
    const { createRealtimeClient } = await import('/dist/zps.min.js');
    const wait = async (cond, ms = 10000) => {
      const end = Date.now() + ms;
      while (!cond()) {
        if (Date.now() > end) throw new Error('timeout');
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const sub = createRealtimeClient({ url, reconnect: { minMs: 20, maxMs: 200 } }); // the browser's WebSocket
    const pub = createRealtimeClient({ url });
    const seqs = [];
    await sub.subscribe('chat:browser', (e) => seqs.push(e.sequence), { fromSequence: 0 }).ready;
    const published = [];
    for (let i = 0; i < 10; i++) published.push((await pub.publish('chat:browser', 'm', { i })).sequence);
    await wait(() => seqs.length >= 10);
    sub.disconnect();
    for (let i = 0; i < 15; i++) await pub.publish('chat:browser', 'm', { i });
    const whileOffline = seqs.length;
    sub.connect();
    await wait(() => seqs.length >= 25);
    await new Promise((r) => setTimeout(r, 100));
    const transport = sub.state.transport;
    await sub.close();
    await pub.close();
    return { seqs, published, whileOffline, transport, hasWebSocket: typeof WebSocket };
  }, gw.url);
  assert.deepEqual(result.published, range(1, 10));
  assert.equal(result.whileOffline, 10);
  assert.deepEqual(result.seqs, range(1, 25));
  assert.equal(result.transport, 'websocket');
  await page.close();
});

test('browser: SSE transport (native EventSource) receives events and publishes over HTTP', { skip }, async () => {
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  const result = await page.evaluate(async (http) => {
    const { createRealtimeClient } = await import('/dist/zps.min.js');
    const c = createRealtimeClient({ url: http, transport: 'sse' });
    const seqs = [];
    await c.subscribe('chat:browser-sse', (e) => seqs.push(e.sequence), { fromSequence: 0 }).ready;
    for (let i = 0; i < 5; i++) await c.publish('chat:browser-sse', 'm', { i });
    const end = Date.now() + 10000;
    while (seqs.length < 5 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    const transport = c.state.transport;
    await c.close();
    return { seqs, transport };
  }, gw.http);
  assert.equal(result.transport, 'sse');
  assert.deepEqual(result.seqs, range(1, 5));
  await page.close();
});

test('browser: the demo page shows messages with sequences, presence, and counts no gaps across offline/online', { skip }, async () => {
  const page = await browser.newPage();
  const room = 'chat:demo-test';
  await page.goto(`${base}/dist-demo/index.html?gateway=${encodeURIComponent(gw.url)}&room=${room}`);
  const text = (id) => page.$eval(`#${id}`, (e) => e.textContent);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected');
  await page.$eval('input[name=name]', (e) => (e.value = 'Tester'));
  await page.click('#burst');
  await page.waitForFunction(() => document.getElementById('delivered').textContent === '20');
  await page.waitForFunction(() => document.querySelectorAll('#members li').length === 1);
  await page.click('#toggle'); // go offline
  await page.waitForFunction(() => document.getElementById('status').textContent === 'offline');
  const pub = createRealtimeClient({ url: gw.url, WebSocket });
  clients.push(pub);
  for (let i = 0; i < 7; i++) await pub.publish(room, 'message.created', { name: 'node', text: `offline ${i}` });
  assert.equal(await text('delivered'), '20');
  await page.click('#toggle'); // back online
  await page.waitForFunction(() => document.getElementById('delivered').textContent === '27');
  assert.equal(await text('duplicates'), '0');
  assert.equal(await text('gaps'), '0');
  const seqs = await page.$$eval('#messages .seq', (els) => els.map((e) => Number(e.textContent.slice(1))));
  assert.deepEqual(seqs, range(1, 27));
  await page.close();
});
