// End-to-end in Debian's chromium (puppeteer-core) against the real gateway binary:
//  1. the demo page served by the gateway itself (/demo/): two pages, one goes
//     offline while 1 000 events are published, then catches up exactly once;
//     presence; a screenshot in test-artifacts/demo.png (kept by the CI);
//  2. a reload resumes from the localStorage cursor (no replay);
//  3. cross-origin SSE with --allowed-origins: an allowed origin receives, another fails.
// Token refresh: e2e-token.test.mjs; the packed tarball: pack.test.mjs.
// Fails when chromium is missing, unless ZPS_SKIP_BROWSER=1 is set explicitly.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { range, sleep, startGateway } from './helpers.mjs';
import { launchBrowser, publishHttp, root, skip, staticServer } from './e2e-helpers.mjs';

const artifacts = join(root, 'test-artifacts');
let gw; // --demo --allow-client-publish
let browser;
const servers = [];

before(async () => {
  browser = await launchBrowser();
  gw = await startGateway(['--demo', '--allow-client-publish']);
});

after(async () => {
  await browser?.close();
  for (const s of servers) s.close();
  await gw?.stop();
});

async function newPage() {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  return page;
}

/** A static server (own origin), closed after the tests; resolves its base URL. */
async function serve() {
  const s = await staticServer();
  servers.push(s);
  return s.base;
}

test('e2e: the gateway-served demo page: page B offline through 1 000 events catches up exactly once; presence; screenshot', { skip }, async () => {
  const room = 'chat:e2e-demo';
  const open = async () => {
    const page = await newPage();
    await page.setViewport({ width: 1100, height: 800 });
    await page.goto(`${gw.http}/demo/?room=${room}`); // served by the gateway binary, same origin as /ws
    await page.waitForFunction(() => document.getElementById('status').textContent === 'connected');
    return page;
  };
  const a = await open();
  const b = await open();
  const waitMembers = (p, n) => p.waitForFunction((n) => document.querySelectorAll('#members li').length === n, { timeout: 15_000 }, n);
  await waitMembers(a, 2);
  await waitMembers(b, 2);

  await b.click('#toggle'); // page B goes offline
  await b.waitForFunction(() => document.getElementById('status').textContent === 'offline');
  assert.deepEqual(await publishHttp(gw.http, room, 1, 1000), range(1, 1000));
  await a.waitForFunction(() => document.getElementById('delivered').textContent === '1000', { timeout: 30_000 });
  assert.equal(await b.$eval('#delivered', (e) => e.textContent), '0', 'page B received events while offline');

  await b.click('#toggle'); // back online: catches up from its position
  await b.waitForFunction(() => document.getElementById('delivered').textContent === '1000', { timeout: 30_000 });
  await sleep(300); // anything extra (a duplicate) would show up now
  for (const p of [a, b]) {
    const seqs = await p.$$eval('#messages .seq', (els) => els.map((e) => Number(e.textContent.slice(1))));
    assert.deepEqual(seqs, range(1, 1000));
    for (const id of ['duplicates', 'gaps', 'discontinuities']) assert.equal(await p.$eval(`#${id}`, (e) => e.textContent), '0', id);
    assert.equal(await p.$eval('#delivered', (e) => e.textContent), '1000');
  }
  await waitMembers(a, 2);
  await waitMembers(b, 2);
  const nameOf = (p) => p.$eval('input[name=name]', (e) => e.value);
  const memberNames = (p) => p.$$eval('#members li', (els) => els.map((e) => e.textContent).sort());
  const both = [await nameOf(a), await nameOf(b)].sort();
  assert.deepEqual(await memberNames(a), both);
  assert.deepEqual(await memberNames(b), both);

  mkdirSync(artifacts, { recursive: true });
  await a.bringToFront(); // a background tab never paints: the capture would hang
  await a.screenshot({ path: join(artifacts, 'demo.png') });
  assert.ok(readFileSync(join(artifacts, 'demo.png')).length > 1000, 'screenshot written');

  await b.close();
  await waitMembers(a, 1);
  assert.deepEqual(await memberNames(a), [await nameOf(a)]);
  await a.close();
});

test('e2e: a reloaded page resumes from its localStorage cursor (no replay of what it saw)', { skip }, async () => {
  const base = await serve();
  const room = 'chat:e2e-resume';
  const page = await newPage();
  await page.goto(`${base}/resume.html?url=${encodeURIComponent(gw.url)}&room=${room}`);
  await page.waitForFunction(() => window.__ready || window.__error);
  assert.equal(await page.evaluate(() => window.__error), undefined);
  await publishHttp(gw.http, room, 1, 5);
  await page.waitForFunction(() => window.__seqs.length >= 5);
  assert.deepEqual(await page.evaluate(() => window.__seqs), range(1, 5));
  // The position is saved when the client acks.
  await page.waitForFunction((key) => JSON.parse(localStorage.getItem(key) ?? '{}').sequence === 5, {}, `zps:cursor:${room}`);

  await page.reload();
  await page.waitForFunction(() => window.__ready || window.__error);
  assert.equal(await page.evaluate(() => window.__error), undefined);
  await sleep(300);
  assert.deepEqual(await page.evaluate(() => window.__seqs), [], 'replayed events the page had already seen');
  await publishHttp(gw.http, room, 6, 8);
  await page.waitForFunction(() => window.__seqs.length >= 3);
  await sleep(200);
  assert.deepEqual(await page.evaluate(() => window.__seqs), [6, 7, 8]);
  await page.close();
});

test('e2e: cross-origin SSE: an allowed origin receives events, another origin is refused', { skip }, async () => {
  const allowed = await serve();
  const other = await serve();
  const ogw = await startGateway(['--allowed-origins', allowed, '--allow-client-publish']);
  try {
    const room = 'chat:e2e-cors';
    const good = await newPage();
    await good.goto(`${allowed}/`);
    await good.evaluate(
      async ({ http, room }) => {
        const { createRealtimeClient } = await import('/dist/zps.min.js');
        const c = createRealtimeClient({ url: http, transport: 'sse' });
        window.__good = { c, seqs: [] };
        await c.subscribe(room, (e) => window.__good.seqs.push(e.sequence), { fromSequence: 0 }).ready;
      },
      { http: ogw.http, room },
    );

    const bad = await newPage();
    await bad.goto(`${other}/`);
    await bad.evaluate(
      ({ http, room }) => {
        const b = (window.__bad = { seqs: [], errors: [], esOpened: false, esError: false, esState: -1, subscribed: false });
        // A bare EventSource: the 403 makes it fail (error, CLOSED, never open).
        const es = new EventSource(`${http}/events?room=${room}&fromSequence=0`);
        es.onopen = () => (b.esOpened = true);
        es.onmessage = (e) => b.seqs.push(`raw:${e.data}`);
        es.onerror = () => {
          b.esError = true;
          b.esState = es.readyState;
          es.close();
        };
        // The client with transport 'sse' from the same origin.
        import('/dist/zps.min.js').then(({ createRealtimeClient }) => {
          const c = createRealtimeClient({ url: http, transport: 'sse', reconnect: { minMs: 100, maxMs: 300 } });
          b.c = c;
          c.on('error', (e) => b.errors.push(e.message));
          c.subscribe(room, (e) => b.seqs.push(e.sequence), { fromSequence: 0 }).ready.then(
            () => (b.subscribed = true),
            (e) => b.errors.push(`ready: ${e.message}`),
          );
        });
      },
      { http: ogw.http, room },
    );

    assert.deepEqual(await publishHttp(ogw.http, room, 1, 5), range(1, 5));
    await good.waitForFunction(() => window.__good.seqs.length >= 5, { timeout: 10_000 });
    await bad.waitForFunction(() => window.__bad.esError && window.__bad.errors.length > 0, { timeout: 10_000 });
    await sleep(1000);
    const g = await good.evaluate(() => ({ seqs: window.__good.seqs, transport: window.__good.c.state.transport }));
    assert.equal(g.transport, 'sse');
    assert.deepEqual(g.seqs, range(1, 5));
    const b = await bad.evaluate(() => {
      const { c, ...rest } = window.__bad;
      return rest;
    });
    assert.deepEqual(b.seqs, [], 'the refused origin received events');
    assert.equal(b.esOpened, false);
    assert.equal(b.esError, true);
    assert.equal(b.esState, 2, 'EventSource CLOSED after the 403');
    // (The SSE link itself may show 'connected' between retries: the room's stream is what fails.)
    assert.equal(b.subscribed, false, 'the refused origin got subscribed');
    assert.ok(b.errors.length > 0, 'no client error');

    // The gateway itself answers 403 to the other Origin and CORS-allows the listed one.
    const refused = await fetch(`${ogw.http}/events?room=${room}`, { headers: { origin: other } });
    assert.equal(refused.status, 403);
    await refused.body?.cancel();
    const preflight = await fetch(`${ogw.http}/api/v1/publish`, { method: 'OPTIONS', headers: { origin: allowed, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' } });
    assert.equal(preflight.headers.get('access-control-allow-origin'), allowed);
    await preflight.body?.cancel();
    await good.evaluate(() => window.__good.c.close());
    await bad.evaluate(() => window.__bad.c?.close());
    await good.close();
    await bad.close();
  } finally {
    await ogw.stop();
  }
});

