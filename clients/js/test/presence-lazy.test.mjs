// Presence is a chunk loaded on first use: `client.presence(room)` still
// answers at once, calls made before the load run after it in order, an
// `off()` before the load is honoured, and close() fails what waits. Against
// a stand-in gateway (helpers.mjs `fakeGateway`) that answers presence frames.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ClientClosedError, createRealtimeClient } from '../dist/index.js';
import { fakeGateway, sleep, waitFor, WebSocket } from './helpers.mjs';

const members = new Map(); // room → [{ userId, metadata }]
const gw = await fakeGateway({
  onFrame(m, send) {
    const list = members.get(m.room) ?? [];
    if (m.type === 'presence_enter') {
      members.set(m.room, [...list.filter((x) => x.userId !== 'me'), { userId: 'me', metadata: m.metadata }]);
      send({ type: 'presence_state', room: m.room, members: members.get(m.room) });
    } else if (m.type === 'presence_subscribe') send({ type: 'presence_state', room: m.room, members: list });
    else if (m.type === 'presence_leave') members.set(m.room, list.filter((x) => x.userId !== 'me'));
  },
});
const clients = [];
after(async () => {
  for (const c of clients) await c.close();
  await gw.close();
});
const make = () => {
  const c = createRealtimeClient({ url: gw.url, WebSocket, subscriberId: 'me', reconnect: { minMs: 20, maxMs: 50 } });
  clients.push(c);
  return c;
};
/** Presence frames the client sent, as `type room`. */
const presenceFrames = () => gw.conns.flatMap((c) => c.frames).filter((f) => f.type.startsWith('presence_')).map((f) => `${f.type} ${f.room}`);

test('presence (lazy): the handle is synchronous; calls made before the chunk loads run after it, in order', async () => {
  const c = make();
  const p = c.presence('chat:lazy'); // before connecting, before the chunk
  assert.deepEqual(Object.keys(p).sort(), ['enter', 'leave', 'members', 'onChange']);
  const entered = p.enter({ name: 'Me' });
  const seen = [];
  const off = p.onChange((list, change) => seen.push(`${change.kind}:${list.map((m) => m.userId).join()}`));
  assert.deepEqual((await entered).map((m) => m.userId), ['me']);
  await waitFor(() => seen.length >= 1, 'the listener called');
  assert.deepEqual(seen, ['members:me']);
  await p.leave();
  off();
  await sleep(50);
  // The calls in the order made (entering also watches, so no presence_subscribe; the last off() stops it).
  assert.deepEqual(presenceFrames(), ['presence_enter chat:lazy', 'presence_leave chat:lazy', 'presence_unsubscribe chat:lazy']);
});

test('presence (lazy): an off() made before the load is honoured: the listener is never called', async () => {
  const c = make();
  await c.connected();
  const before = presenceFrames().length;
  const calls = [];
  const off = c.presence('chat:off-early').onChange((list) => calls.push(list));
  off();
  off(); // twice: harmless
  assert.deepEqual((await c.presence('chat:off-early').members()).map((m) => m.userId), []);
  await sleep(50);
  assert.deepEqual(calls, []);
  assert.deepEqual(presenceFrames().slice(before), [
    'presence_subscribe chat:off-early',
    'presence_unsubscribe chat:off-early',
    'presence_subscribe chat:off-early',
    'presence_unsubscribe chat:off-early',
  ]);
});

test('presence (lazy): close() while the chunk is loading rejects the waiting calls with ClientClosedError', async () => {
  const c = createRealtimeClient({ url: gw.url, WebSocket, subscriberId: 'me', requestTimeoutMs: 5000 });
  const pending = c.presence('chat:closing').enter({});
  await c.close();
  await assert.rejects(pending, ClientClosedError);
});

test('presence: enter after a watch resolves with the answer to the enter (the caller listed), not the watch', async () => {
  const c = make();
  await c.connected();
  const p = c.presence('chat:order');
  const seen = [];
  const off = p.onChange((list) => seen.push(list.map((m) => m.userId).join()));
  // The watch's presence_subscribe goes first; its answer (no one yet) must not settle the enter.
  const entered = await p.enter({ name: 'Me' });
  assert.deepEqual(entered.map((m) => m.userId), ['me']);
  await waitFor(() => seen.includes('me'));
  assert.equal(seen[0], '', 'the watch saw the empty room first');
  off();
  await p.leave();
});
