// Tokens: provider on every (re)connect, refresh on token_expiring, refusals.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createRealtimeClient, ServerError, UnauthorizedError } from '../dist/index.js';
import { collector, instrumentedWebSocket, range, signJwt, sleep, startGateway, waitFor, WebSocket } from './helpers.mjs';

const SECRET = 'js-client-test-secret';
let gw;
const clients = [];
const make = (opts = {}) => {
  const c = createRealtimeClient({ url: gw.url, WebSocket, reconnect: { minMs: 20, maxMs: 200 }, ...opts });
  clients.push(c);
  return c;
};
const token = (sub, ttlS = 3600, extra = {}) => signJwt(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + ttlS, ...extra });

before(async () => {
  gw = await startGateway(['--allow-client-publish', '--jwt-secret', SECRET]);
});
after(async () => {
  for (const c of clients) await c.close();
  await gw?.stop();
});

test('the token provider is called on connect and on every reconnect', async () => {
  let calls = 0;
  const inst = instrumentedWebSocket();
  const sub = make({ WebSocket: inst.WebSocket, token: async () => (calls++, token('user-1')) });
  const pub = make({ token: token('publisher') });
  const c = collector();
  await sub.subscribe('chat:auth', c.handler).ready;
  assert.equal(calls, 1);
  await pub.publish('chat:auth', 'm', {});
  await waitFor(() => c.seqs.length === 1, '1 event');
  inst.terminate();
  await pub.publish('chat:auth', 'm', {});
  await waitFor(() => c.seqs.length === 2, 'event after reconnect');
  assert.equal(calls, 2);
  inst.terminate();
  await pub.publish('chat:auth', 'm', {});
  await waitFor(() => c.seqs.length === 3, 'event after 2nd reconnect');
  assert.equal(calls, 3);
  assert.deepEqual(c.seqs, range(1, 3));
  const inits = inst.sent.filter((m) => m.type === 'init');
  assert.equal(inits.length, 3);
  assert.ok(inits.every((m) => typeof m.token === 'string' && m.token.length > 20));
});

test('token_expiring is answered with refresh_token from the provider, without reconnecting', async () => {
  let calls = 0;
  const inst = instrumentedWebSocket();
  // exp 32 s ahead: the gateway warns 30 s before expiry, so after ~2 s
  const c = make({ WebSocket: inst.WebSocket, token: () => (calls++, token('user-2', calls === 1 ? 32 : 3600)) });
  await c.connected();
  await waitFor(() => inst.sent.some((m) => m.type === 'refresh_token'), 'refresh_token sent', 8000);
  assert.equal(calls, 2);
  assert.equal(inst.sockets.length, 1, 'no reconnect');
  await sleep(200);
  assert.equal(c.state.status, 'connected');
});

test('a refused static token closes the client with UnauthorizedError', async () => {
  const c = make({ token: 'not-a-jwt' });
  await assert.rejects(c.connected(), UnauthorizedError);
  assert.equal(c.state.status, 'closed');
});

test('a provider whose tokens are refused is retried once, then the client closes', async () => {
  let calls = 0;
  const c = make({ token: () => (calls++, signJwt('wrong-secret', { sub: 'x', exp: 9999999999 })) });
  await assert.rejects(c.connected(), UnauthorizedError);
  assert.equal(calls, 2);
});

test('a room outside the token rooms claim is refused with 4408', async () => {
  const c = make({ token: token('user-3', 3600, { rooms: ['chat:allowed'] }) });
  const errors = [];
  const s = c.subscribe('chat:denied', () => {}, { onError: (e) => errors.push(e) });
  await assert.rejects(s.ready, (e) => e instanceof ServerError && e.code === '4408');
  assert.equal(errors.length, 1);
  await c.subscribe('chat:allowed', () => {}).ready; // the allowed room works
});

test('SSE with a token provider: stream and HTTP calls are authenticated', async () => {
  let calls = 0;
  const c = make({ transport: 'sse', token: async () => (calls++, token('sse-user')) });
  const got = collector();
  await c.subscribe('chat:sse-auth', got.handler, { fromSequence: 0 }).ready;
  const r = await c.publish('chat:sse-auth', 'm', { via: 'http' });
  assert.equal(r.sequence, 1);
  await waitFor(() => got.seqs.length === 1, 'event over SSE');
  assert.ok(calls >= 1);
});
