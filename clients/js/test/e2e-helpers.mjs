// Shared by the browser tests (browser, react, e2e*.test.mjs) and pack.test.mjs:
// the one chromium launcher (puppeteer-core), a static server for dist/,
// publishing over HTTP.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { range } from './helpers.mjs';

export const CHROMIUM = process.env.ZPS_CHROMIUM || '/usr/bin/chromium';
export const SKIP = process.env.ZPS_SKIP_BROWSER === '1';
/** The `skip` option of a browser test. */
export const skip = SKIP && 'ZPS_SKIP_BROWSER=1';
export const root = fileURLToPath(new URL('..', import.meta.url));

/**
 * Launches headless chromium (ZPS_CHROMIUM, default /usr/bin/chromium). Throws, with what to do,
 * when the binary is missing or does not start. Undefined with ZPS_SKIP_BROWSER=1.
 */
export async function launchBrowser() {
  if (SKIP) return undefined;
  const help = 'apt-get install -y chromium (or set ZPS_CHROMIUM to a working binary), or set ZPS_SKIP_BROWSER=1 to skip the browser tests';
  if (!existsSync(CHROMIUM)) throw new Error(`chromium not found at ${CHROMIUM}: ${help}`);
  const { default: puppeteer } = await import('puppeteer-core');
  let browser;
  try {
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  } catch (e) {
    throw new Error(`could not start chromium at ${CHROMIUM}: ${String(e?.message ?? e).trim()}; ${help}`, { cause: e });
  }
  const newPage = browser.newPage.bind(browser);
  browser.newPage = async (...args) => intervalPolling(await newPage(...args));
  return browser;
}

/**
 * Makes `page.waitForFunction` poll every 50 ms. Its default polls on
 * requestAnimationFrame, which never runs in a tab behind another: a wait on such a
 * page would only ever see its first check (and time out when that came too early).
 */
function intervalPolling(page) {
  const wait = page.waitForFunction.bind(page);
  page.waitForFunction = (fn, options = {}, ...args) => wait(fn, { polling: 50, ...options }, ...args);
  return page;
}

// A page that starts a client from its query (?url=…&room=…) on load, with
// positions in localStorage: window.__seqs, window.__ready, window.__error.
const RESUME_PAGE = `<!doctype html><title>zps resume</title><link rel="icon" href="data:,">
<script type="module">
import { createRealtimeClient, localStorageCursorStore } from '/dist/zps.min.js';
const q = new URLSearchParams(location.search);
window.__seqs = [];
const c = createRealtimeClient({ url: q.get('url'), cursorStore: localStorageCursorStore(), ackIntervalMs: 20 });
window.__client = c;
c.subscribe(q.get('room'), (e) => window.__seqs.push(e.sequence)).ready.then(
  () => (window.__ready = true),
  (e) => (window.__error = String(e)),
);
</script>`;

/**
 * A static server on its own port (its own origin) for dist/, an empty page at
 * / and /resume.html; resolves { base, close() }.
 */
export async function staticServer() {
  const types = { '.js': 'text/javascript', '.html': 'text/html', '.json': 'application/json' };
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>zps e2e</title><link rel="icon" href="data:,">');
    if (path === '/resume.html') return res.writeHead(200, { 'content-type': 'text/html' }).end(RESUME_PAGE);
    const file = normalize(join(root, path));
    if (!file.startsWith(join(root, 'dist')) || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' }).end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { base: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

/**
 * Publishes events from..to (payload { name, text, i }) to `room` through
 * `POST /api/v1/publish` (anonymous: the gateway runs with --allow-client-publish),
 * in ordered batches; resolves their sequences.
 */
export async function publishHttp(http, room, from, to, batch = 250) {
  const sequences = [];
  for (let start = from; start <= to; start += batch) {
    const events = range(start, Math.min(to, start + batch - 1)).map((i) => ({ room, type: 'message.created', payload: { name: 'node', text: `event ${i}`, i } }));
    const res = await fetch(`${http}/api/v1/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ events }) });
    const body = await res.text();
    assert.ok(res.status === 200 || res.status === 207, `publish answered ${res.status}: ${body}`); // a batch answers 207
    for (const r of JSON.parse(body).results) {
      assert.equal(typeof r.sequence, 'number', `publish failed: ${JSON.stringify(r)}`);
      sequences.push(r.sequence);
    }
  }
  return sequences;
}
