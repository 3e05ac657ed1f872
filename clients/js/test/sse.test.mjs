// The SSE transport: events from /events, publish/presence/replay over the HTTP API.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createRealtimeClient } from '../dist/index.js';
import { FetchEventSource } from '../dist/sse-reader.js';
import { collector, range, sleep, startGateway, waitFor, WebSocket } from './helpers.mjs';

let gw;
const clients = [];
const make = (opts = {}) => {
  const c = createRealtimeClient({ url: gw.http, reconnect: { minMs: 20, maxMs: 200 }, ...opts });
  clients.push(c);
  return c;
};

let streamsExtras = false;
before(async () => {
  gw = await startGateway(['--allow-client-publish']);
  // Whether this gateway binary carries presence (and ephemeral) on /events (`presence=1`).
  const ctl = new AbortController();
  try {
    const res = await fetch(`${gw.http}/events?room=chat%3Aprobe&presence=1&subscriberId=probe`, { signal: ctl.signal });
    const reader = res.body.getReader();
    let text = '';
    const deadline = Date.now() + 1500;
    while (Date.now() < deadline && !text.includes('presence_state')) {
      const r = await Promise.race([reader.read(), sleep(deadline - Date.now()).then(() => ({ done: true }))]);
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    streamsExtras = text.includes('presence_state');
  } catch {}
  ctl.abort();
});
// The gateway under test must stream ephemeral events and presence: a binary
// that does not is a failure, never a skip.
const needExtras = () => {
  assert.ok(streamsExtras, 'the gateway ignores ephemeral=1 / presence=1 on /events (stale ZPS_GATEWAY_BIN?)');
  return false;
};
after(async () => {
  for (const c of clients) await c.close();
  await gw?.stop();
});

test('SSE: history then live events in order; publish goes over HTTP', async () => {
  const ws = make({ WebSocket });
  for (let i = 0; i < 5; i++) await ws.publish('chat:sse', 'm', { i });
  const c = make({ transport: 'sse' });
  const got = collector();
  await c.subscribe('chat:sse', got.handler, { fromSequence: 0 }).ready;
  assert.equal(c.state.transport, 'sse');
  const results = [];
  for (let i = 5; i < 10; i++) results.push(await c.publish('chat:sse', 'm', { i }));
  assert.deepEqual(results.map((r) => r.sequence), range(6, 10));
  await waitFor(() => got.seqs.length >= 10, '10 events');
  await sleep(100);
  assert.deepEqual(got.seqs, range(1, 10));
  assert.deepEqual(got.events.map((e) => e.payload.i), range(0, 9));
});

test('SSE: going offline and back catches up without gaps', async () => {
  const pub = make({ WebSocket });
  const c = make({ transport: 'sse' });
  const got = collector();
  await c.subscribe('chat:sse-off', got.handler).ready;
  await pub.publish('chat:sse-off', 'm', {});
  await waitFor(() => got.seqs.length === 1, '1 event');
  c.disconnect();
  for (let i = 0; i < 10; i++) await pub.publish('chat:sse-off', 'm', {});
  c.connect();
  await waitFor(() => got.seqs.length >= 11, '11 events');
  await sleep(100);
  assert.deepEqual(got.seqs, range(1, 11));
});

test('SSE: a lost record is repaired from GET /api/v1/rooms/{room}/events', async () => {
  const drop = new Set([3, 4]);
  class Lossy extends FetchEventSource {
    constructor(url) {
      super(url);
      let inner = null;
      Object.defineProperty(this, 'onmessage', {
        get: () => inner,
        set: (fn) => {
          inner = fn && ((ev) => (drop.delete(JSON.parse(ev.data).sequence) ? undefined : fn(ev)));
        },
      });
    }
  }
  const pub = make({ WebSocket });
  const c = make({ transport: 'sse', EventSource: Lossy, replayThrottleMs: 30 });
  const got = collector();
  await c.subscribe('chat:sse-gap', got.handler).ready;
  for (let i = 0; i < 8; i++) await pub.publish('chat:sse-gap', 'm', {});
  await waitFor(() => got.seqs.length >= 8, '8 events');
  assert.equal(drop.size, 0, 'records were dropped');
  assert.deepEqual(got.seqs, range(1, 8));
});

test('SSE: presence enter/leave through the HTTP API with the stream connectionId', async () => {
  const watcher = make({ WebSocket, subscriberId: 'ws-watcher' });
  const c = make({ transport: 'sse', subscriberId: 'sse-member' });
  await c.subscribe('chat:sse-p', () => {}).ready;
  const members = await c.presence('chat:sse-p').enter({ name: 'S' });
  assert.deepEqual(members.map((m) => m.userId), ['sse-member']);
  assert.deepEqual((await watcher.presence('chat:sse-p').members()).map((m) => m.userId), ['sse-member']);
  assert.deepEqual((await c.presence('chat:sse-p').members()).map((m) => m.userId), ['sse-member']);
  await c.presence('chat:sse-p').leave();
  await waitFor(async () => (await watcher.presence('chat:sse-p').members()).length === 0, 'left');
});

test('SSE: publishEphemeral goes over HTTP to WebSocket ephemeral subscribers', async () => {
  const ws = make({ WebSocket });
  const got = [];
  ws.subscribeEphemeral('chat:sse-eph', (e) => got.push(e));
  await ws.connected();
  await sleep(50);
  const c = make({ transport: 'sse' });
  await c.connected();
  await c.publishEphemeral('chat:sse-eph', 'typing', { who: 'sse' });
  await waitFor(() => got.length === 1, 'ephemeral event');
  assert.deepEqual(got[0].payload, { who: 'sse' });
});

test('SSE: ephemeral subscriptions receive what a WebSocket client publishes (ephemeral=1)', async (t) => {
  if (needExtras(t)) return;
  const c = make({ transport: 'sse' });
  const got = [];
  c.subscribeEphemeral('chat:sse-eph-in', (e) => got.push(e));
  await c.connected();
  const ws = make({ WebSocket });
  await ws.connected();
  await waitFor(async () => {
    await ws.publishEphemeral('chat:sse-eph-in', 'typing', { who: 'ws' });
    await sleep(100);
    return got.length > 0;
  }, 'ephemeral event over SSE');
  assert.equal(got[0].room, 'chat:sse-eph-in');
  assert.equal(got[0].type, 'typing');
  assert.deepEqual(got[0].payload, { who: 'ws' });
});

test('SSE: presence onChange sees a WebSocket client enter and leave (presence=1)', async (t) => {
  if (needExtras(t)) return;
  const c = make({ transport: 'sse', subscriberId: 'sse-watch' });
  const lists = [];
  const changes = [];
  const off = c.presence('chat:sse-pw').onChange((members, change) => {
    lists.push(members.map((m) => m.userId));
    changes.push(change);
  });
  await waitFor(() => lists.length > 0, 'initial presence_state');
  assert.deepEqual(lists.at(-1), []);
  const ws = make({ WebSocket, subscriberId: 'ws-member' });
  await ws.presence('chat:sse-pw').enter({ name: 'W' });
  await waitFor(() => lists.at(-1)?.includes('ws-member'), 'member_added');
  assert.ok(changes.some((ch) => ch.kind === 'joined' && ch.userId === 'ws-member'));
  assert.deepEqual((await c.presence('chat:sse-pw').members()).map((m) => m.userId), ['ws-member']);
  await ws.presence('chat:sse-pw').leave();
  await waitFor(() => lists.at(-1)?.length === 0, 'member_removed');
  assert.ok(changes.some((ch) => ch.kind === 'left' && ch.userId === 'ws-member'));
  off();
});

test('transport auto falls back to SSE when the WebSocket never opens', async () => {
  class Broken {
    constructor() {
      this.readyState = 0;
      this.protocol = '';
      setTimeout(() => this.onclose?.({ code: 1006, reason: 'blocked' }), 5);
    }
    send() {}
    close() {}
  }
  const c = make({ WebSocket: Broken });
  const got = collector();
  const pub = make({ WebSocket });
  await c.subscribe('chat:fallback', got.handler, { fromSequence: 0 }).ready;
  assert.equal(c.state.transport, 'sse');
  await pub.publish('chat:fallback', 'm', {});
  await waitFor(() => got.seqs.length === 1, 'event via SSE');
});
