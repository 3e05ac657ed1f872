// Token refresh in Debian's chromium (puppeteer-core) against the real gateway
// binary with --jwt-secret: the first token expires in ~32 s, the gateway sends
// token_expiring 30 s ahead, the client asks its provider again and refreshes
// on the same WebSocket. Its own file: it waits past the first expiry (~34 s).
// Fails when chromium is missing, unless ZPS_SKIP_BROWSER=1 is set explicitly.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createRealtimeClient } from '../dist/index.js';
import { range, signJwt, sleep, startGateway, WebSocket } from './helpers.mjs';
import { launchBrowser, skip, staticServer } from './e2e-helpers.mjs';

let browser;
const nodeClients = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  for (const c of nodeClients) await c.close();
  await browser?.close();
});

async function newPage() {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  return page;
}

test('e2e: token refresh (token_expiring) keeps the WebSocket open and delivery going', { skip, timeout: 60_000 }, async () => {
  const secret = 'e2e-secret-0123456789abcdef';
  const jgw = await startGateway(['--jwt-secret', secret, '--allow-client-publish']);
  const server = await staticServer();
  try {
    const base = server.base;
    const now = Math.floor(Date.now() / 1000);
    const shortExp = now + 32; // the gateway warns 30 s ahead: after ~2 s
    const short = signJwt(secret, { sub: 'alice', exp: shortExp });
    const long = signJwt(secret, { sub: 'alice', exp: now + 3600 });
    const room = 'chat:e2e-refresh';
    const pub = createRealtimeClient({ url: jgw.url, WebSocket, subscriberId: 'bob', token: signJwt(secret, { sub: 'bob', exp: now + 3600 }) });
    nodeClients.push(pub);

    const page = await newPage();
    await page.goto(`${base}/`);
    await page.evaluate(
      async ({ url, room, short, long }) => {
        const { createRealtimeClient } = await import('/dist/zps.min.js');
        const t = (window.__t = { calls: 0, opened: 0, connected: 0, seqs: [], errors: [] });
        class CountingWebSocket extends WebSocket {
          constructor(u, p) {
            super(u, p);
            t.opened++;
          }
        }
        const c = createRealtimeClient({
          url,
          subscriberId: 'alice#tab',
          WebSocket: CountingWebSocket,
          token: async () => (++t.calls === 1 ? short : long),
        });
        c.on('state', (s) => s.status === 'connected' && t.connected++);
        c.on('error', (e) => t.errors.push(e.message));
        window.__c = c;
        await c.subscribe(room, (e) => t.seqs.push(e.sequence), { fromSequence: 0 }).ready;
      },
      { url: jgw.url, room, short, long },
    );
    const t = () => page.evaluate(() => ({ ...window.__t, status: window.__c.state.status }));
    for (let i = 0; i < 3; i++) await pub.publish(room, 'm', { i });
    await page.waitForFunction(() => window.__t.seqs.length >= 3);
    await page.waitForFunction(() => window.__t.calls >= 2, { timeout: 10_000 }); // asked again on token_expiring
    // Past the first token's expiry: without the refresh the gateway would have closed the socket.
    await sleep(Math.max(0, shortExp * 1000 + 1500 - Date.now()));
    for (let i = 3; i < 6; i++) await pub.publish(room, 'm', { i });
    await page.waitForFunction(() => window.__t.seqs.length >= 6, { timeout: 10_000 });
    const s = await t();
    assert.equal(s.calls, 2, 'token provider calls');
    assert.equal(s.opened, 1, 'WebSockets opened');
    assert.equal(s.connected, 1, 'connected states');
    assert.equal(s.status, 'connected');
    assert.deepEqual(s.seqs, range(1, 6));
    assert.deepEqual(s.errors, [], 'client errors');
    await page.evaluate(() => window.__c.close());
    await page.close();
  } finally {
    server.close();
    await jgw.stop();
  }
});

