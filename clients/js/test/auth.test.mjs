// Tokens: provider on every (re)connect, refresh on token_expiring, refusals; the subscriber id
// bound to the token's `sub` (`sub` or `sub#device`); room tokens (`zps_room`) on subscribe.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ClientClosedError, createRealtimeClient, ServerError, UnauthorizedError } from '../dist/index.js';
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
/** A room token: opens `room` for `actions` (to `sub` only, when given). */
const roomToken = (room, { sub, actions = ['subscribe'], ttlS = 3600 } = {}) =>
  signJwt(SECRET, { exp: Math.floor(Date.now() / 1000) + ttlS, ...(sub ? { sub } : {}), zps_room: { room, actions } });
/** `p`, or a rejection after `ms`: a refusal must end the client, never leave it waiting. */
const within = (p, ms, what) => {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`${what}: still pending after ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
};

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
  const sub = make({ WebSocket: inst.WebSocket, subscriberId: 'user-1#tab-1', token: async () => (calls++, token('user-1')) });
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
  assert.ok(inits.every((m) => m.subscriberId === 'user-1#tab-1'));
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
  const c = make({ subscriberId: 'user-3', token: token('user-3', 3600, { rooms: ['chat:allowed'] }) });
  const errors = [];
  const s = c.subscribe('chat:denied', () => {}, { onError: (e) => errors.push(e) });
  await assert.rejects(s.ready, (e) => e instanceof ServerError && e.code === '4408');
  assert.equal(errors.length, 1);
  await c.subscribe('chat:allowed', () => {}).ready; // the allowed room works
});

test('SSE with a token provider: stream and HTTP calls are authenticated', async () => {
  let calls = 0;
  const c = make({ transport: 'sse', subscriberId: 'sse-user#laptop', token: async () => (calls++, token('sse-user')) });
  const got = collector();
  await c.subscribe('chat:sse-auth', got.handler, { fromSequence: 0 }).ready;
  const r = await c.publish('chat:sse-auth', 'm', { via: 'http' });
  assert.equal(r.sequence, 1);
  await waitFor(() => got.seqs.length === 1, 'event over SSE');
  assert.ok(calls >= 1);
});

test('without a subscriberId, the id is a device of the token sub (static token and provider)', async () => {
  const a = make({ token: token('user-4') });
  assert.match(a.subscriberId, /^user-4#zps-js-./);
  await a.connected();
  await a.subscribe('chat:default-id', () => {}).ready;
  const inst = instrumentedWebSocket();
  const b = make({ WebSocket: inst.WebSocket, token: async () => token('user-5') });
  await b.connected();
  assert.match(b.subscriberId, /^user-5#zps-js-./);
  assert.equal(inst.sent.find((m) => m.type === 'init').subscriberId, b.subscriberId);
  inst.terminate();
  await waitFor(() => inst.sent.filter((m) => m.type === 'init').length === 2 && b.state.status === 'connected', 'reconnected');
  assert.equal(inst.sent.filter((m) => m.type === 'init')[1].subscriberId, b.subscriberId, 'the same id after a reconnect');
});

test('a subscriberId the token does not own ends in UnauthorizedError (4403), at once, without a retry', async () => {
  for (const subscriberId of ['someone-else', 'user-6#', 'user-6x', 'other#user-6']) {
    let calls = 0;
    const errors = [];
    const states = [];
    const c = make({ subscriberId, token: () => (calls++, token('user-6')) });
    c.on('error', (e) => errors.push(e));
    c.on('state', (s) => states.push(s.status));
    const s = c.subscribe('chat:not-mine', () => {});
    const p = c.publish('chat:not-mine', 'm', {});
    const isRefusal = (e) => e instanceof UnauthorizedError && e.refusal?.code === '4403' && e.message.includes(subscriberId);
    await within(assert.rejects(c.connected(), isRefusal), 5000, `connected() with ${subscriberId}`);
    await within(assert.rejects(s.ready, isRefusal), 1000, `subscribe().ready with ${subscriberId}`);
    await within(assert.rejects(p, isRefusal), 1000, `publish() with ${subscriberId}`);
    assert.equal(c.state.status, 'closed');
    assert.ok(isRefusal(c.state.error), `${subscriberId}: the closed state carries the refusal`);
    assert.equal(calls, 1, `${subscriberId}: another token cannot fix the id, so no retry`);
    assert.ok(!states.includes('reconnecting'), `${subscriberId}: no reconnect`);
    assert.ok(errors.some((e) => e instanceof ServerError && e.code === '4403'), 'the init refusal is reported');
    assert.throws(() => c.subscribe('chat:x', () => {}), ClientClosedError);
  }
  // The same user's own ids are fine.
  for (const subscriberId of ['user-6', 'user-6#phone', 'user-6#phone#2']) {
    await within(make({ subscriberId, token: token('user-6') }).connected(), 5000, subscriberId);
  }
});

test('over SSE, a subscriberId the token does not own ends in UnauthorizedError too', async () => {
  const c = make({ transport: 'sse', subscriberId: 'not-sse-user-2', token: token('sse-user-2') });
  const s = c.subscribe('chat:sse-not-mine', () => {}, { fromSequence: 0 });
  await within(assert.rejects(s.ready, (e) => e instanceof UnauthorizedError && e.refusal?.code === '4403'), 5000, 'SSE refusal');
  assert.equal(c.state.status, 'closed');
  // Omitted over SSE the gateway would default it to the sub; the client sends its default, a device of the sub.
  const ok = make({ transport: 'sse', token: token('sse-user-2') });
  await within(ok.subscribe('chat:sse-mine', () => {}, { fromSequence: 0 }).ready, 5000, 'SSE default id');
  assert.match(ok.subscriberId, /^sse-user-2#zps-js-/);
});

test('a token without sub, or with # in its sub, is refused with 4401', async () => {
  const noSub = make({ token: signJwt(SECRET, { exp: Math.floor(Date.now() / 1000) + 3600 }) });
  await within(assert.rejects(noSub.connected(), (e) => e instanceof UnauthorizedError && e.refusal?.code === '4401'), 5000, 'no sub');
  const hashSub = make({ subscriberId: 'a#b', token: token('a#b') });
  await within(assert.rejects(hashSub.connected(), (e) => e instanceof UnauthorizedError && e.refusal?.code === '4401'), 5000, '# in sub');
});

test('a room token opens one room beyond the token rooms claim, and is sent again on every resubscribe', async () => {
  const inst = instrumentedWebSocket();
  const c = make({ WebSocket: inst.WebSocket, subscriberId: 'user-7#desk', token: token('user-7', 3600, { rooms: ['chat:*'] }) });
  const pub = make({ token: token('publisher') });
  // Without a room token: outside the rooms claim.
  await assert.rejects(c.subscribe('private:7', () => {}).ready, (e) => e instanceof ServerError && e.code === '4408');
  // Room tokens for another room, or issued to another user, are refused.
  await assert.rejects(
    c.subscribe('private:7', () => {}, { roomToken: roomToken('private:8', { sub: 'user-7' }) }).ready,
    (e) => e instanceof ServerError && e.code === '4408' && e.room === 'private:7',
  );
  await assert.rejects(
    c.subscribe('private:7', () => {}, { roomToken: roomToken('private:7', { sub: 'user-8' }) }).ready,
    (e) => e instanceof ServerError && e.code === '4408',
  );
  assert.throws(() => c.subscribe('private:*', () => {}, { roomToken: roomToken('private:7') }), /one exact room/);
  // With it: subscribed, alongside rooms of the claim.
  const got = collector();
  const rt = roomToken('private:7', { sub: 'user-7' });
  await c.subscribe('private:7', got.handler, { roomToken: rt, fromSequence: 0 }).ready;
  await c.subscribe('chat:beside-private', () => {}).ready;
  await pub.publish('private:7', 'm', { n: 1 });
  await waitFor(() => got.seqs.length === 1, 'event of the room-token room');
  // Forced reconnects: the resubscribe carries the room token again, and delivery resumes.
  for (let i = 2; i <= 3; i++) {
    inst.terminate();
    await pub.publish('private:7', 'm', { n: i });
    await waitFor(() => got.seqs.length === i, `event ${i} after reconnect`);
  }
  assert.deepEqual(got.seqs, range(1, 3));
  const frames = inst.sent.filter((m) => m.type === 'subscribe' && m.rooms.includes('private:7'));
  const withToken = frames.filter((m) => m.roomToken === rt);
  assert.equal(withToken.length, 3, 'first subscribe + two resubscribes');
  assert.ok(withToken.every((m) => m.rooms.length === 1), 'a room token rides alone');
  const others = inst.sent.filter((m) => m.type === 'subscribe' && m.rooms.includes('chat:beside-private'));
  assert.ok(others.length >= 3 && others.every((m) => m.roomToken === undefined));
});

test('a room token provider is asked again for every resubscribe', async () => {
  const inst = instrumentedWebSocket();
  const c = make({ WebSocket: inst.WebSocket, subscriberId: 'user-11#a', token: token('user-11', 3600, { rooms: ['chat:*'] }) });
  const pub = make({ token: token('publisher') });
  const issued = [];
  const provider = async () => {
    const t = roomToken('private:11', { sub: 'user-11', ttlS: 60 + issued.length });
    issued.push(t);
    return t;
  };
  const got = collector();
  await c.subscribe('private:11', got.handler, { roomToken: provider, fromSequence: 0 }).ready;
  await pub.publish('private:11', 'm', {});
  await waitFor(() => got.seqs.length === 1, 'first event');
  inst.terminate();
  await pub.publish('private:11', 'm', {});
  await waitFor(() => got.seqs.length === 2, 'event after reconnect');
  assert.deepEqual(got.seqs, range(1, 2));
  assert.equal(issued.length, 2);
  const sent = inst.sent.filter((m) => m.type === 'subscribe' && m.rooms.includes('private:11')).map((m) => m.roomToken);
  assert.deepEqual(sent, issued, 'each subscribe carries the token asked for it');
});

test('a room token without sub opens the room to any holder; over SSE it is a roomToken parameter', async () => {
  const urls = [];
  const fetchSpy = (url, init) => (urls.push(url), fetch(url, init));
  const c = make({ transport: 'sse', fetch: fetchSpy, subscriberId: 'user-9', token: token('user-9', 3600, { rooms: ['chat:*'] }) });
  const pub = make({ token: token('publisher') });
  await assert.rejects(c.subscribe('private:7', () => {}, { fromSequence: 0 }).ready, (e) => e instanceof ServerError && e.code === '4408');
  await assert.rejects(
    c.subscribe('private:7', () => {}, { fromSequence: 0, roomToken: roomToken('private:7', { sub: 'user-10' }) }).ready,
    (e) => e instanceof ServerError && e.code === '4408' && e.room === 'private:7',
  );
  const got = collector();
  const rt = roomToken('private:7');
  await c.subscribe('private:7', got.handler, { fromSequence: 0, roomToken: rt }).ready;
  const { sequence } = await pub.publish('private:7', 'm', { sse: true });
  await waitFor(() => got.seqs.at(-1) === sequence, 'history and live events of private:7 over SSE');
  const streamsTo7 = () => urls.filter((u) => u.includes('/events?') && new URL(u).searchParams.getAll('room').includes('private:7'));
  const opened = streamsTo7().length;
  assert.deepEqual(new URL(streamsTo7().at(-1)).searchParams.getAll('roomToken'), [rt]);
  // Offline, then back: the rebuilt stream URL carries the room token again.
  c.disconnect();
  const offline = await pub.publish('private:7', 'm', { offline: true });
  c.connect();
  await waitFor(() => got.seqs.at(-1) === offline.sequence, 'the event published while offline');
  assert.deepEqual(got.seqs, range(1, offline.sequence));
  assert.ok(streamsTo7().length > opened, 'a new stream');
  assert.deepEqual(new URL(streamsTo7().at(-1)).searchParams.getAll('roomToken'), [rt]);
});
