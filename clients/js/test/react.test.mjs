// The React hooks (`@zero-pub-sub/client/react`) in a real browser (Debian's
// chromium through puppeteer-core) against the real gateway. test/fixtures/
// react-app.tsx is bundled with esbuild (React included) into a temp dir and
// served with a tiny static server; Node publishes through the gateway and
// drives a second client for presence. Fails when chromium is missing, unless
// ZPS_SKIP_BROWSER=1 is set explicitly.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createRealtimeClient } from '../dist/index.js';
import { launchBrowser, skip } from './e2e-helpers.mjs';
import { range, sleep, startGateway, waitFor, WebSocket } from './helpers.mjs';

const fixture = fileURLToPath(new URL('./fixtures/react-app.tsx', import.meta.url));

let gw;
let server;
let browser;
let base;
let outdir;
const pages = [];
const nodeClients = [];

before(async () => {
  browser = await launchBrowser();
  if (!browser) return; // ZPS_SKIP_BROWSER=1
  gw = await startGateway(['--allow-client-publish']);
  outdir = mkdtempSync(join(tmpdir(), 'zps-react-'));
  const { build } = await import('esbuild');
  await build({
    entryPoints: [fixture],
    outfile: join(outdir, 'react-app.js'),
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022'],
    jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"development"' },
    logLevel: 'warning',
  });
  const page = '<!doctype html><title>zps react</title><link rel="icon" href="data:,"><script type="module" src="/react-app.js"></script>';
  server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(page);
    if (path === '/react-app.js') return res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(join(outdir, 'react-app.js')));
    res.writeHead(404).end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(async () => {
  for (const c of nodeClients) await c.close();
  await browser?.close();
  server?.close();
  await gw?.stop();
  if (outdir) rmSync(outdir, { recursive: true, force: true });
});

/** A fresh page with `window.zps`; page errors and React's console errors fail the test at `check()`. */
async function openPage() {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console.${m.type()}: ${m.text()}`);
  });
  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.title === 'zps react ready');
  pages.push(page);
  const zps = (fn, ...args) => page.evaluate((fn, args) => window.zps[fn](...args), fn, args);
  const seqs = (sel) => page.$$eval(`${sel} li`, (els) => els.map((e) => Number(e.dataset.seq)));
  const texts = (sel) => page.$$eval(`${sel} li`, (els) => els.map((e) => e.textContent));
  const text = (sel) => page.$eval(sel, (e) => e.textContent);
  // On timeout, say what the page shows, what went wrong in it, and what each client reported.
  const explain = async (what, err) => {
    const state = await page.evaluate(() => ({ body: document.body.innerText, errors: window.zps.allErrors() })).catch(() => ({}));
    throw new Error(`timed out waiting for ${what}: ${err.message}\n${JSON.stringify({ ...state, problems }, null, 1)}`);
  };
  const waitText = (sel, want) =>
    page
      .waitForFunction((sel, want) => document.querySelector(sel)?.textContent === want, { timeout: 10_000 }, sel, want)
      .catch((e) => explain(`${sel} = ${want}`, e));
  const waitCount = (sel, n) =>
    page
      .waitForFunction((sel, n) => document.querySelectorAll(`${sel} li`).length === n, { timeout: 10_000 }, sel, n)
      .catch((e) => explain(`${n} × ${sel} li`, e));
  const check = async () => {
    assert.deepEqual(problems, [], 'no page errors or React warnings');
    for (const [name, errs] of Object.entries(await page.evaluate(() => window.zps.allErrors()))) assert.deepEqual(errs, [], `client ${name} reported no errors`);
  };
  return { page, zps, seqs, texts, text, waitText, waitCount, check, problems };
}

const publish = async (room, text) => {
  const r = await fetch(`${gw.http}/api/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ room, type: 'message.created', payload: { text } }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()).sequence;
};
const roomInfo = async (room) => (await fetch(`${gw.http}/api/v1/rooms/${encodeURIComponent(room)}`)).json();
const presenceOf = async (room) => (await (await fetch(`${gw.http}/api/v1/rooms/${encodeURIComponent(room)}/presence`)).json()).members.map((m) => m.userId).sort();

test('react useRoom: history then live events in sequence order, no duplicates, across offline/online', { skip }, async () => {
  const p = await openPage();
  const room = 'chat:react-room';
  for (let i = 1; i <= 3; i++) await publish(room, `m${i}`);
  await p.zps('client', 'a', { url: gw.url });
  await p.zps('mount', 'r', [['room', { client: 'a', room, options: { fromSequence: 0 } }]]);
  await p.waitCount('#r', 3);
  await p.waitText('#r .status', 'connected');
  for (let i = 4; i <= 8; i++) {
    await publish(room, `m${i}`);
    await p.waitCount('#r', i); // each event shows up as it is published
  }
  assert.equal(await p.text('#r .last'), '8');
  await p.zps('disconnect', 'a');
  await p.waitText('#r .status', 'offline');
  for (let i = 9; i <= 12; i++) await publish(room, `m${i}`);
  await sleep(200);
  assert.equal((await p.seqs('#r')).length, 8, 'nothing arrives while offline');
  await p.zps('connect', 'a');
  await p.waitCount('#r', 12);
  await p.waitText('#r .status', 'connected');
  for (let i = 13; i <= 15; i++) await p.zps('publish', 'a', room, `m${i}`); // published by the browser client itself
  await p.waitCount('#r', 15);
  await sleep(200);
  assert.deepEqual(await p.seqs('#r'), range(1, 15));
  assert.deepEqual(await p.texts('#r'), range(1, 15).map((i) => `m${i}`));
  assert.equal(await p.text('#r .discontinuity'), '');
  await p.check();
  await p.page.close();
});

test('react useRoom: live from mount, `max` keeps the newest, changing `max` keeps the subscription', { skip }, async () => {
  const p = await openPage();
  const room = 'chat:react-live';
  await publish(room, 'before mount');
  await p.zps('client', 'a', { url: gw.url });
  await p.zps('mount', 'r', [['room', { client: 'a', room, options: { max: 3 } }]]);
  await waitFor(async () => (await roomInfo(room)).subscribers === 1, 'the browser subscribed');
  await p.waitText('#r .status', 'connected');
  await sleep(100); // the subscription is confirmed
  for (let i = 2; i <= 6; i++) await publish(room, `m${i}`);
  await p.waitText('#r .last', '6');
  assert.deepEqual(await p.seqs('#r'), [4, 5, 6]);
  const subscribes = (await p.zps('sent', 'a')).filter((f) => f.type === 'subscribe').length;
  await p.zps('update', 'r', [['room', { client: 'a', room, options: { max: 5 } }]]);
  await publish(room, 'm7');
  await p.waitText('#r .last', '7');
  assert.deepEqual(await p.seqs('#r'), [4, 5, 6, 7], 'a new max keeps the events and the subscription');
  assert.equal((await p.zps('sent', 'a')).filter((f) => f.type === 'subscribe').length, subscribes, 'no resubscribe');
  await p.check();
  await p.page.close();
});

test('react useRoom: unmounting unsubscribes; changing room moves the subscription', { skip }, async () => {
  const p = await openPage();
  const [r1, r2] = ['chat:react-unmount-1', 'chat:react-unmount-2'];
  await p.zps('client', 'a', { url: gw.url });
  await p.zps('mount', 'r', [['room', { client: 'a', room: r1, options: { fromSequence: 0 } }]]);
  await waitFor(async () => (await roomInfo(r1)).subscribers === 1, 'subscribed to r1');
  await publish(r1, 'one');
  await p.waitCount('#r', 1);
  await p.zps('update', 'r', [['room', { client: 'a', room: r2, options: { fromSequence: 0 } }]]);
  await waitFor(async () => (await roomInfo(r1)).subscribers === 0, 'unsubscribed from r1');
  await waitFor(async () => (await roomInfo(r2)).subscribers === 1, 'subscribed to r2');
  await p.waitCount('#r', 0);
  await publish(r1, 'r1 after the switch');
  await publish(r2, 'two');
  await p.waitCount('#r', 1);
  await sleep(200);
  assert.deepEqual(await p.page.$$eval('#r li', (els) => els.map((e) => [e.dataset.room, e.textContent])), [[r2, 'two']]);
  await p.zps('unmount', 'r');
  await waitFor(async () => (await roomInfo(r2)).subscribers === 0, 'unsubscribed from r2 on unmount');
  const sent = await p.zps('sent', 'a');
  const lastOf = (room, types) => sent.filter((f) => types.includes(f.type) && f.rooms.includes(room)).pop()?.type;
  assert.equal(lastOf(r1, ['subscribe', 'unsubscribe']), 'unsubscribe');
  assert.equal(lastOf(r2, ['subscribe', 'unsubscribe']), 'unsubscribe');
  // Remounting subscribes again (a cleanup left nothing behind that refuses it).
  await p.zps('mount', 'r', [['room', { client: 'a', room: r2, options: { fromSequence: 0 } }]]);
  await p.waitCount('#r', 1);
  assert.equal((await roomInfo(r2)).subscribers, 1);
  await p.check();
  await p.page.close();
});

test('react useRoom: components on the same room share one subscription, each gets every event once', { skip }, async () => {
  const p = await openPage();
  const room = 'chat:react-shared';
  await publish(room, 'm1');
  await p.zps('client', 'a', { url: gw.url });
  // Two components mounted together both get the history.
  await p.zps('mount', 'xy', [
    ['room', { client: 'a', room, options: { fromSequence: 0 } }],
    ['room', { client: 'a', room, options: { fromSequence: 0, max: 2 } }],
  ]);
  await p.waitCount('#xy-0', 1);
  await p.waitCount('#xy-1', 1);
  await waitFor(async () => (await roomInfo(room)).subscribers === 1, 'subscribed');
  // One mounted later sees what is delivered from the moment its effect ran
  // (React runs it after the commit, possibly after m2 went by): a contiguous
  // run ending at the newest event, each once, in order.
  await p.zps('mount', 'z', [['room', { client: 'a', room, options: { fromSequence: 0 } }]]);
  for (let i = 2; i <= 5; i++) await publish(room, `m${i}`);
  await p.waitCount('#xy-0', 5);
  await p.zps('unmount', 'xy');
  await publish(room, 'm6');
  await waitFor(async () => (await p.seqs('#z-0')).at(-1) === 6, 'z sees m6');
  await sleep(200);
  const late = await p.seqs('#z-0');
  assert.ok(late[0] >= 2 && late[0] <= 5, `z started at ${late[0]}`);
  assert.deepEqual(late, range(late[0], 6));
  assert.equal((await roomInfo(room)).subscribers, 1, 'still subscribed for the remaining component');
  const subscribes = (await p.zps('sent', 'a')).filter((f) => f.type === 'subscribe');
  assert.equal(subscribes.length, 1, `one subscribe for three StrictMode components: ${JSON.stringify(subscribes)}`);
  await p.zps('unmount', 'z');
  await waitFor(async () => (await roomInfo(room)).subscribers === 0, 'unsubscribed after the last unmount');
  await p.check();
  await p.page.close();
});

test('react usePresence: members enter and leave; unmounting leaves and stops watching', { skip }, async () => {
  const p = await openPage();
  const room = 'chat:react-presence';
  await p.zps('client', 'a', { url: gw.url, subscriberId: 'browser-ann' });
  await p.zps('mount', 'watch', [['presence', { client: 'a', room }]]);
  await p.waitCount('#watch', 0);
  const bob = createRealtimeClient({ url: gw.url, WebSocket, subscriberId: 'node-bob' });
  nodeClients.push(bob);
  await bob.presence(room).enter({ name: 'Bob' });
  await p.waitCount('#watch', 1);
  assert.deepEqual(await p.texts('#watch'), ['Bob']);
  // A second component enters with metadata (the same client, the same room).
  await p.zps('mount', 'me', [['presence', { client: 'a', room, metadata: { name: 'Ann' } }]]);
  await p.waitCount('#watch', 2);
  await p.waitCount('#me', 2);
  assert.deepEqual((await p.texts('#me')).sort(), ['Ann', 'Bob']);
  assert.deepEqual(await presenceOf(room), ['browser-ann', 'node-bob']);
  await bob.presence(room).leave();
  await p.waitCount('#watch', 1);
  await p.waitCount('#me', 1);
  assert.deepEqual(await p.texts('#watch'), ['Ann']);
  // Unmounting the entering component leaves; the watcher sees it.
  await p.zps('unmount', 'me');
  await p.waitCount('#watch', 0);
  assert.deepEqual(await presenceOf(room), []);
  await bob.presence(room).enter({ name: 'Bob again' });
  await p.waitCount('#watch', 1);
  await p.zps('unmount', 'watch');
  const sent = (await p.zps('sent', 'a')).filter((f) => f.type.startsWith('presence_') && f.room === room).map((f) => f.type);
  assert.equal(sent.at(-1), 'presence_unsubscribe', `stops watching on unmount: ${sent.join(' ')}`);
  assert.equal(sent.filter((t) => t === 'presence_leave').length >= 1, true);
  await p.check();
  await p.page.close();
});

test('react usePresence: entering alone and unmounting leaves and stops presence changes', { skip }, async () => {
  const p = await openPage();
  const room = 'chat:react-presence-solo';
  await p.zps('client', 'a', { url: gw.url, subscriberId: 'browser-solo' });
  await p.zps('mount', 'me', [['presence', { client: 'a', room, metadata: { name: 'Solo' } }]]);
  await p.waitCount('#me', 1);
  assert.deepEqual(await presenceOf(room), ['browser-solo']);
  await p.zps('unmount', 'me');
  await waitFor(async () => (await presenceOf(room)).length === 0, 'left on unmount');
  const sent = (await p.zps('sent', 'a')).filter((f) => f.type.startsWith('presence_') && f.room === room).map((f) => f.type);
  assert.equal(sent.at(-1), 'presence_unsubscribe', `nothing keeps watching: ${sent.join(' ')}`);
  await p.check();
  await p.page.close();
});

test('react useConnectionState: connecting → connected → offline → connected → closed', { skip }, async () => {
  const p = await openPage();
  await p.zps('client', 'a', { url: gw.url });
  await p.zps('mount', 's', [['status', { client: 'a' }]]);
  await p.waitText('#s .status', 'connected');
  await p.zps('disconnect', 'a');
  await p.waitText('#s .status', 'offline');
  await p.zps('connect', 'a');
  await p.waitText('#s .status', 'connected');
  await p.zps('close', 'a');
  await p.waitText('#s .status', 'closed');
  await p.check();
  await p.page.close();
});

test('react useConnectionState: a change during the commit is not missed; a new client is shown at once', { skip }, async () => {
  const p = await openPage();
  await p.zps('client', 'a', { url: gw.url });
  await p.zps('client', 'b', { url: gw.url });
  // `a` goes offline in a layout effect: after the first render, before passive effects.
  await p.zps('mount', 's', [['status', { client: 'a' }], ['offlineOnCommit', { client: 'a' }]], false);
  await p.waitText('#s .status', 'offline');
  await sleep(300);
  assert.equal(await p.text('#s .status'), 'offline');
  // Switching to another (connected) client shows its state, not the old one's.
  await p.zps('update', 's', [['status', { client: 'b' }]]);
  await p.waitText('#s .status', 'connected');
  await p.check();
  await p.page.close();
});
