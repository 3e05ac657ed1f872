// Discontinuities, presence, ephemeral events, compact frames, state events.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createRealtimeClient } from '../dist/index.js';
import { collector, instrumentedWebSocket, range, sleep, startGateway, waitFor, WebSocket } from './helpers.mjs';

let gw;
const clients = [];
const make = (opts = {}) => {
  const c = createRealtimeClient({ url: gw.url, WebSocket, reconnect: { minMs: 20, maxMs: 200 }, ...opts });
  clients.push(c);
  return c;
};

before(async () => {
  // Only 10 events are retained per room: older positions are expired.
  gw = await startGateway(['--allow-client-publish', '--memory-max-events-per-room', '10']);
});
after(async () => {
  for (const c of clients) await c.close();
  await gw?.stop();
});

test('fromSequence older than retained history raises onDiscontinuity, then delivers the rest in order', async () => {
  const pub = make();
  for (let i = 0; i < 25; i++) await pub.publish('chat:expired', 'm', {});
  const sub = make();
  const c = collector();
  const seen = [];
  await sub.subscribe('chat:expired', c.handler, {
    fromSequence: 2,
    onDiscontinuity: (d) => seen.push({ d, deliveredBefore: c.seqs.length }),
  }).ready;
  await waitFor(() => c.seqs.length >= 10, '10 retained events');
  await sleep(100);
  assert.equal(seen.length, 1);
  const { d, deliveredBefore } = seen[0];
  assert.equal(d.recovered, false);
  assert.equal(d.reason, 'position_expired');
  assert.equal(d.room, 'chat:expired');
  assert.equal(d.earliestSequence, 16);
  assert.equal(d.lastDelivered, 2);
  assert.equal(deliveredBefore, 0, 'the discontinuity comes before the first event of the new range');
  assert.deepEqual(c.seqs, range(16, 25));
});

test('an offline subscriber that fell behind retained history gets a discontinuity on reconnect', async () => {
  const sub = make();
  const pub = make();
  const c = collector();
  const seen = [];
  await sub.subscribe('chat:behind', c.handler, { fromSequence: 0, onDiscontinuity: (d) => seen.push(d) }).ready;
  for (let i = 0; i < 3; i++) await pub.publish('chat:behind', 'm', {});
  await waitFor(() => c.seqs.length === 3, '3 events');
  sub.disconnect();
  for (let i = 0; i < 20; i++) await pub.publish('chat:behind', 'm', {}); // 4..23; only 14..23 retained
  sub.connect();
  await waitFor(() => c.seqs.length >= 13, 'retained events');
  await sleep(100);
  assert.deepEqual(c.seqs, [1, 2, 3, ...range(14, 23)]);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].reason, 'position_expired');
  assert.equal(seen[0].lastDelivered, 3);
  assert.equal(seen[0].earliestSequence, 14);
});

test('an epoch mismatch is reported as stream_reset', async () => {
  const pub = make();
  for (let i = 0; i < 3; i++) await pub.publish('chat:epoch', 'm', {});
  const sub = make();
  const c = collector();
  const seen = [];
  await sub.subscribe('chat:epoch', c.handler, { fromSequence: 1, epoch: 'some-older-epoch', onDiscontinuity: (d) => seen.push(d) }).ready;
  await waitFor(() => c.seqs.length >= 3, '3 events');
  assert.equal(seen.length, 1);
  assert.equal(seen[0].reason, 'stream_reset');
  assert.deepEqual(c.seqs, [1, 2, 3]);
});

test('without onDiscontinuity the discontinuity is reported on client.on("error")', async () => {
  const pub = make();
  for (let i = 0; i < 12; i++) await pub.publish('chat:noted', 'm', {});
  const sub = make();
  const errors = [];
  sub.on('error', (e) => errors.push(e));
  await sub.subscribe('chat:noted', () => {}, { fromSequence: 0 }).ready;
  await waitFor(() => errors.some((e) => e.code === 'discontinuity'), 'discontinuity error');
});

test('presence: enter, members, onChange, leave across two clients', async () => {
  const alice = make({ subscriberId: 'alice' });
  const bob = make({ subscriberId: 'bob' });
  const members = await alice.presence('chat:p').enter({ name: 'Alice' });
  assert.deepEqual(members.map((m) => m.userId), ['alice']);
  assert.deepEqual(members[0].metadata, { name: 'Alice' });

  const changes = [];
  let current = [];
  const off = bob.presence('chat:p').onChange((list, change) => {
    current = list.map((m) => m.userId).sort();
    changes.push(change.kind);
  });
  await waitFor(() => current.length === 1, 'bob sees alice');
  await bob.presence('chat:p').enter({ name: 'Bob' });
  await waitFor(() => current.join() === 'alice,bob', 'bob sees both');
  // alice is entered, so her member list follows changes
  await waitFor(async () => (await alice.presence('chat:p').members()).map((m) => m.userId).sort().join() === 'alice,bob', 'alice sees bob');

  await alice.presence('chat:p').leave();
  await waitFor(() => current.join() === 'bob', 'alice left');
  assert.ok(changes.includes('left'));
  off();
  // a third client reads the members without watching
  const carol = make({ subscriberId: 'carol' });
  assert.deepEqual((await carol.presence('chat:p').members()).map((m) => m.userId), ['bob']);
});

test('presence: entering then leaving without watching also stops the changes', async () => {
  const ws = instrumentedWebSocket();
  const c = make({ WebSocket: ws.WebSocket, subscriberId: 'erin' });
  await c.presence('chat:p3').enter({ name: 'Erin' });
  await c.presence('chat:p3').leave();
  await sleep(100);
  const frames = ws.sent.filter((f) => f.type.startsWith('presence_')).map((f) => f.type);
  assert.deepEqual(frames, ['presence_enter', 'presence_leave', 'presence_unsubscribe']);
});

test('presence is restored after a reconnect', async () => {
  const dave = make({ subscriberId: 'dave' });
  const watcher = make({ subscriberId: 'watcher' });
  await dave.presence('chat:p2').enter({ name: 'Dave' });
  dave.disconnect();
  await waitFor(async () => (await watcher.presence('chat:p2').members()).length === 0, 'dave gone');
  dave.connect();
  await waitFor(async () => (await watcher.presence('chat:p2').members()).length === 1, 'dave back');
});

test('ephemeral events reach ephemeral subscribers, are filtered by type, and are not stored', async () => {
  const a = make();
  const b = make();
  const got = [];
  b.subscribeEphemeral('chat:eph', (e) => got.push(e), { types: ['typing'] });
  const durable = collector();
  await b.subscribe('chat:eph', durable.handler, { fromSequence: 0 }).ready;
  await b.connected();
  await a.connected();
  await sleep(50);
  await a.publishEphemeral('chat:eph', 'typing', { user: 'a' });
  await a.publishEphemeral('chat:eph', 'cursor', { x: 1 });
  await waitFor(() => got.length >= 1, 'ephemeral event');
  await sleep(100);
  assert.equal(got.length, 1);
  assert.equal(got[0].type, 'typing');
  assert.deepEqual(got[0].payload, { user: 'a' });
  assert.equal(got[0].sequence, undefined);
  assert.equal(durable.seqs.length, 0, 'not stored or delivered as a durable event');
});

test('compact encoding delivers the same events', async () => {
  const pub = make();
  const sub = make({ encoding: 'compact' });
  const c = collector();
  await sub.subscribe('chat:compact', c.handler, { fromSequence: 0 }).ready;
  for (let i = 1; i <= 5; i++) await pub.publish('chat:compact', 'm', { i, text: 'héllo' }, { metadata: { t: i } });
  await waitFor(() => c.seqs.length === 5, '5 events');
  assert.deepEqual(c.seqs, range(1, 5));
  assert.deepEqual(c.events[4].payload, { i: 5, text: 'héllo' });
  assert.deepEqual(c.events[4].metadata, { t: 5 });
  assert.match(c.events[0].emittedAt, /^\d{4}-\d\d-\d\dT/);
});

test('state events: connecting, connected, offline, closed', async () => {
  const c = make();
  const states = [];
  c.on('state', (s) => states.push(s.status));
  await c.connected();
  assert.equal(c.state.status, 'connected');
  assert.match(c.state.connectionId, /.+/);
  c.disconnect();
  await c.close();
  assert.deepEqual(states.slice(-2), ['offline', 'closed']);
  await assert.rejects(c.publish('chat:x', 'm', {}), /client closed/);
});
