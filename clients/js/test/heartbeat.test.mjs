// Heartbeat: the client pings every heartbeatMs and gives a silent connection
// up after 2 × heartbeatMs, reconnecting. Against a WebSocket server of this
// test's own (the `ws` package) that answers `init` with `ready` as the
// gateway does, then either stays silent or answers pings with pongs.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createRealtimeClient } from '../dist/index.js';
import { fakeGateway, sleep, waitFor, WebSocket } from './helpers.mjs';

const HEARTBEAT_MS = 200;

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

function client(url) {
  const states = [];
  const c = createRealtimeClient({ url, WebSocket, heartbeatMs: HEARTBEAT_MS, reconnect: { minMs: 20, maxMs: 50 } });
  c.on('state', (s) => states.push({ at: Date.now(), status: s.status }));
  c.on('error', () => {}); // the ConnectionError of the dropped connection
  cleanup.push(() => c.close());
  return { c, states };
}

test('heartbeat: a server that goes silent after ready is given up after ~2 × heartbeatMs and a new connection opens', async () => {
  const gw = await fakeGateway({ answerPings: false });
  cleanup.push(gw.close);
  const { c, states } = client(gw.url);
  await c.connected();
  const first = gw.conns[0];
  await waitFor(() => gw.conns.length >= 2 && gw.conns[1].ready, 'a second connection', 5 * HEARTBEAT_MS + 2000);
  const second = gw.conns[1];
  // The first connection was pinged, then closed by the client (4410) no sooner than 2 × heartbeatMs
  // of silence and no later than one more heartbeat period after that (plus scheduling slack).
  assert.ok(first.pings.length >= 1, `pinged before giving up: ${first.pings.length}`);
  await waitFor(() => first.closed, 'the first connection closed');
  assert.equal(first.closeCode, 4410);
  const silence = first.closed - first.ready;
  assert.ok(silence >= 2 * HEARTBEAT_MS, `gave up after ${silence} ms of silence, before 2 × heartbeatMs`);
  assert.ok(silence <= 3 * HEARTBEAT_MS + 400, `gave up only after ${silence} ms of silence`);
  assert.ok(second.opened - first.closed <= 500, `reconnected ${second.opened - first.closed} ms after giving up`);
  // The client left `connected` (reconnecting) and came back.
  const statuses = states.map((s) => s.status);
  const drop = statuses.indexOf('reconnecting', statuses.indexOf('connected'));
  assert.ok(drop > 0, `went through reconnecting: ${statuses.join(' ')}`);
  await waitFor(() => c.state.status === 'connected', 'connected again');
  assert.equal(c.state.connectionId, 'c2');
});

test('heartbeat: a server that answers pings keeps the one connection', async () => {
  const gw = await fakeGateway({ answerPings: true });
  cleanup.push(gw.close);
  const { c, states } = client(gw.url);
  await c.connected();
  await sleep(7 * HEARTBEAT_MS);
  assert.equal(gw.conns.length, 1, 'no second connection');
  assert.equal(gw.conns[0].closed, undefined, 'the connection stays open');
  assert.equal(c.state.status, 'connected');
  assert.deepEqual(states.map((s) => s.status), ['connected'], 'never left connected');
  // A ping every heartbeatMs.
  const pings = gw.conns[0].pings;
  assert.ok(pings.length >= 4 && pings.length <= 7, `${pings.length} pings in 7 × heartbeatMs`);
  for (let i = 1; i < pings.length; i++) {
    const gap = pings[i] - pings[i - 1];
    assert.ok(gap >= HEARTBEAT_MS - 20 && gap < 2 * HEARTBEAT_MS, `pings ${gap} ms apart`);
  }
});
