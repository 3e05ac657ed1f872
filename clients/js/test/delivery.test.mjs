// Delivery guarantees against the real gateway: order, exactly once, reconnect
// catch-up, gap repair, discontinuities, cursor persistence.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createRealtimeClient, localStorageCursorStore } from '../dist/index.js';
import { collector, instrumentedWebSocket, range, sleep, startGateway, waitFor, WebSocket } from './helpers.mjs';

let gw;
const clients = [];
const make = (opts = {}) => {
  const c = createRealtimeClient({ url: gw.url, WebSocket, reconnect: { minMs: 20, maxMs: 200 }, ...opts });
  clients.push(c);
  return c;
};

before(async () => {
  gw = await startGateway(['--allow-client-publish']);
});
after(async () => {
  for (const c of clients) await c.close();
  await gw?.stop();
});

test('publish then subscribe from 0 delivers sequences 1..N exactly once, in order', async () => {
  const pub = make();
  const results = [];
  for (let i = 1; i <= 30; i++) results.push(await pub.publish('chat:order', 'message.created', { i }));
  assert.deepEqual(results.map((r) => r.sequence), range(1, 30));
  assert.ok(results.every((r) => r.duplicate === false && r.room === 'chat:order'));

  const sub = make();
  const c = collector();
  const s = sub.subscribe('chat:order', c.handler, { fromSequence: 0 });
  await s.ready;
  // live events follow the history without a gap
  await Promise.all(range(31, 50).map((i) => pub.publish('chat:order', 'message.created', { i })));
  await waitFor(() => c.seqs.length >= 50, '50 events');
  await sleep(100);
  assert.deepEqual(c.seqs, range(1, 50));
  assert.deepEqual(c.events.map((e) => e.payload.i).slice(0, 30), range(1, 30));
  assert.equal(s.position().sequence, 50);
  assert.match(s.position().epoch, /.+/);
});

test('publish with an existing id answers duplicate: true and stores once', async () => {
  const pub = make();
  const a = await pub.publish('chat:dup', 'm', { n: 1 }, { id: 'same-id' });
  const b = await pub.publish('chat:dup', 'm', { n: 2 }, { id: 'same-id' });
  assert.equal(a.duplicate, false);
  assert.equal(b.duplicate, true);
  assert.equal(b.sequence, a.sequence);
  assert.equal(b.id, 'same-id');
});

test('a subscriber whose socket is killed repeatedly sees every sequence exactly once, in order', async () => {
  const inst = instrumentedWebSocket();
  const sub = make({ WebSocket: inst.WebSocket });
  const states = [];
  sub.on('state', (s) => states.push(s.status));
  const c = collector();
  await sub.subscribe('chat:reconnect', c.handler).ready; // live only: starts at 0 (empty room)
  const pub = make();
  const N = 150;
  const publishing = (async () => {
    for (let i = 1; i <= N; i++) {
      await pub.publish('chat:reconnect', 'm', { i });
      if (i % 10 === 0) await sleep(5);
    }
  })();
  for (const at of [30, 70, 110]) {
    await waitFor(() => c.seqs.length >= at, `${at} events`);
    inst.terminate();
    await sleep(30); // publishing continues while the subscriber is offline
  }
  await publishing;
  await waitFor(() => c.seqs.length >= N, `${N} events`, 20_000);
  await sleep(200);
  assert.deepEqual(c.seqs, range(1, N));
  assert.ok(inst.sockets.length >= 4, `reconnected (${inst.sockets.length} sockets)`);
  assert.ok(states.filter((s) => s === 'reconnecting').length >= 3, `states: ${states}`);
  // every resubscribe carried the last delivered position
  const resubs = inst.sent.filter((m) => m.type === 'subscribe' && m.positions);
  assert.ok(resubs.length >= 3);
});

test('disconnect / connect catches up what was published offline without gaps', async () => {
  const sub = make();
  const pub = make();
  const c = collector();
  await sub.subscribe('chat:offline', c.handler, { fromSequence: 0 }).ready;
  for (let i = 0; i < 5; i++) await pub.publish('chat:offline', 'm', {});
  await waitFor(() => c.seqs.length === 5, '5 events');
  sub.disconnect();
  assert.equal(sub.state.status, 'offline');
  for (let i = 0; i < 20; i++) await pub.publish('chat:offline', 'm', {});
  await sleep(100);
  assert.equal(c.seqs.length, 5, 'nothing delivered while offline');
  sub.connect();
  await waitFor(() => c.seqs.length >= 25, '25 events');
  await sleep(100);
  assert.deepEqual(c.seqs, range(1, 25));
});

test('a gap in the live stream is repaired with a replay request', async () => {
  const inst = instrumentedWebSocket();
  const sub = make({ WebSocket: inst.WebSocket, replayThrottleMs: 30 });
  const pub = make();
  const c = collector();
  await sub.subscribe('chat:gap', c.handler).ready;
  for (const s of [4, 5, 6, 12]) inst.dropSequences.add(s); // lost on the way
  for (let i = 1; i <= 15; i++) await pub.publish('chat:gap', 'm', { i });
  await waitFor(() => c.seqs.length >= 15, '15 events');
  await sleep(100);
  assert.deepEqual(c.seqs, range(1, 15));
  const replays = inst.sent.filter((m) => m.type === 'replay_request');
  assert.ok(replays.length >= 1, 'sent replay_request');
  assert.equal(replays[0].fromSequence, 3);
});

test('a gap at the end of the stream is found on the next event', async () => {
  const inst = instrumentedWebSocket();
  const sub = make({ WebSocket: inst.WebSocket, replayThrottleMs: 30 });
  const pub = make();
  const c = collector();
  await sub.subscribe('chat:tail', c.handler).ready;
  inst.dropSequences.add(3);
  for (let i = 1; i <= 3; i++) await pub.publish('chat:tail', 'm', {});
  await sleep(150);
  assert.deepEqual(c.seqs, [1, 2]);
  await pub.publish('chat:tail', 'm', {});
  await waitFor(() => c.seqs.length >= 4, '4 events');
  assert.deepEqual(c.seqs, [1, 2, 3, 4]);
});

test('wildcard subscription delivers each room in order', async () => {
  const sub = make();
  const pub = make();
  const got = new Map();
  await sub.subscribe('wild:*', (e) => {
    if (!got.has(e.room)) got.set(e.room, []);
    got.get(e.room).push(e.sequence);
  }).ready;
  for (let i = 0; i < 5; i++) {
    await pub.publish('wild:a', 'm', {});
    await pub.publish('wild:b', 'm', {});
  }
  await waitFor(() => got.get('wild:a')?.length === 5 && got.get('wild:b')?.length === 5, '10 events');
  assert.deepEqual(got.get('wild:a'), range(1, 5));
  assert.deepEqual(got.get('wild:b'), range(1, 5));
});

test('types filter is applied locally and the position still advances', async () => {
  const sub = make();
  const pub = make();
  const c = collector();
  const s = sub.subscribe('chat:types', c.handler, { fromSequence: 0, types: ['keep'] });
  await s.ready;
  for (const t of ['keep', 'skip', 'keep', 'skip', 'keep']) await pub.publish('chat:types', t, {});
  await waitFor(() => s.position().sequence === 5, 'position 5');
  assert.deepEqual(c.seqs, [1, 3, 5]);
});

test('manual ack mode: the cursor store only moves on ack()', async () => {
  const saved = new Map();
  const store = { load: () => undefined, save: (room, p) => void saved.set(room, p) };
  const sub = make({ cursorStore: store, ackIntervalMs: 10 });
  const pub = make();
  const c = collector();
  const s = sub.subscribe('chat:manual', c.handler, { fromSequence: 0, ackMode: 'manual' });
  await s.ready;
  for (let i = 0; i < 3; i++) await pub.publish('chat:manual', 'm', {});
  await waitFor(() => c.seqs.length === 3, '3 events');
  await sleep(50);
  assert.equal(saved.get('chat:manual'), undefined);
  s.ack(2);
  await waitFor(() => saved.get('chat:manual')?.sequence === 2, 'saved ack');
});

test('cursor store: a second client instance resumes where the first one stopped', async () => {
  const data = new Map();
  const storage = { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => void data.set(k, v), removeItem: (k) => void data.delete(k) };
  const pub = make();
  for (let i = 0; i < 5; i++) await pub.publish('chat:cursor', 'm', {});

  const first = make({ cursorStore: localStorageCursorStore({ prefix: 't:', storage }) });
  const a = collector();
  await first.subscribe('chat:cursor', a.handler, { fromSequence: 0 }).ready;
  await waitFor(() => a.seqs.length === 5, '5 events');
  await first.close();
  assert.equal(JSON.parse(data.get('t:chat:cursor')).sequence, 5);

  for (let i = 0; i < 5; i++) await pub.publish('chat:cursor', 'm', {});
  // a "reloaded page": new client, new subscriber id, same storage
  const second = make({ cursorStore: localStorageCursorStore({ prefix: 't:', storage }) });
  const b = collector();
  await second.subscribe('chat:cursor', b.handler).ready;
  await waitFor(() => b.seqs.length >= 5, '5 more events');
  await sleep(100);
  assert.deepEqual(b.seqs, range(6, 10));
});

test('publishes made while offline are sent after reconnecting, once', async () => {
  const pub = make();
  await pub.connected();
  pub.disconnect();
  const p = Promise.all([1, 2, 3].map((i) => pub.publish('chat:queued', 'm', { i })));
  await sleep(50);
  pub.connect();
  const r = await p;
  assert.deepEqual(r.map((x) => x.sequence), [1, 2, 3]);
});

test('subscribing twice to one room fails; unsubscribe stops delivery', async () => {
  const sub = make();
  const pub = make();
  const c = collector();
  const s = sub.subscribe('chat:unsub', c.handler);
  assert.throws(() => sub.subscribe('chat:unsub', () => {}), /already subscribed/);
  await s.ready;
  await pub.publish('chat:unsub', 'm', {});
  await waitFor(() => c.seqs.length === 1, '1 event');
  s.unsubscribe();
  await pub.publish('chat:unsub', 'm', {});
  await sleep(150);
  assert.deepEqual(c.seqs, [1]);
});

test('unsubscribe then subscribe again at once (a React StrictMode remount) delivers each event once', async () => {
  const pub = make();
  for (let i = 0; i < 5; i++) await pub.publish('chat:resub', 'm', {});
  const sub = make();
  await sub.connected();
  const first = collector();
  sub.subscribe('chat:resub', first.handler, { fromSequence: 0 }).unsubscribe();
  const c = collector();
  await sub.subscribe('chat:resub', c.handler, { fromSequence: 0 }).ready;
  await waitFor(() => c.seqs.length >= 5, '5 events');
  for (let i = 0; i < 3; i++) await pub.publish('chat:resub', 'm', {});
  await waitFor(() => c.seqs.length >= 8, '8 events');
  await sleep(200);
  assert.deepEqual(c.seqs, range(1, 8));
  assert.deepEqual(first.seqs, []);
});

test('unsubscribing before the subscription was sent tells the gateway nothing (no 4404 error)', async () => {
  const ws = instrumentedWebSocket();
  const sub = make({ WebSocket: ws.WebSocket });
  await sub.connected();
  const errors = [];
  sub.on('error', (e) => errors.push(e));
  sub.subscribe('chat:never', () => {}).unsubscribe(); // live: the cursor store is read first
  await sleep(200);
  assert.deepEqual(ws.sent.filter((f) => f.type === 'subscribe' || f.type === 'unsubscribe'), []);
  assert.deepEqual(errors, []);
});
