// The delivery state machine without a gateway: RoomTrack (one room: order,
// holes, replays, discontinuities) and SubscriptionSet (frames, reconnects,
// acks) driven by hand-made server messages, a fake Io and a fake clock.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';
import { memoryCursorStore } from '../dist/cursor-store.js';
import { RoomTrack } from '../dist/room.js';
import { SubscriptionSet } from '../dist/subscriptions.js';

const ROOM = 'chat:1';
const TUNE = { throttleMs: 100, pageSize: 500, timeoutMs: 10_000, maxBuffer: 1000 };
const ev = (sequence, room = ROOM) => ({
  id: `e${sequence}`,
  type: 'm',
  room,
  sequence,
  emittedAt: '2026-01-01T00:00:00Z',
  expiresAt: '2026-01-02T00:00:00Z',
  payload: { sequence },
});

/** A RoomSink that records what the room hands over: `e3` for event 3, `reset@1` for a discontinuity. */
function sink() {
  const items = [];
  return {
    items,
    closed: false,
    full: () => false,
    accepts: () => true,
    push: (item) => items.push(item),
    /** The hand-over, compactly. */
    log: () => items.map((i) => (i.kind === 'event' ? `e${i.event.sequence}` : i.kind === 'discontinuity' ? `${i.discontinuity.reason}@${i.discontinuity.earliestSequence}` : i.kind)),
  };
}

/** A confirmed room at `after` in epoch e1, as after `subscribe` with that position. */
function confirmedRoom(after = 0, now = 0) {
  const s = sink();
  const t = new RoomTrack(ROOM, s, false, TUNE, now, { sequence: after, epoch: 'e1' });
  t.sentPosition = after;
  t.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e1', lastSequence: after, recovered: true }, now);
  return { t, s };
}

/** Every replay request the room would send from `from` to `to` ms, polled each ms. */
function pollAll(t, from, to) {
  const reqs = [];
  let n = 0;
  for (let now = from; now <= to; now++) {
    const r = t.pollReplay(now, () => `r${++n}`);
    if (r) reqs.push({ at: now, ...r });
  }
  return reqs;
}

test('room: a late event fills the hole inside the reorder window: delivered once, in order, no replay request', () => {
  const { t, s } = confirmedRoom();
  t.onEvent(ev(1), 0);
  t.onEvent(ev(3), 10);
  t.onEvent(ev(4), 20);
  assert.deepEqual(s.log(), ['e1'], '3 and 4 wait behind the hole');
  assert.equal(t.deadline(), 110, 'a request is due one throttle after the hole appeared');
  assert.deepEqual(pollAll(t, 10, 60), [], 'nothing asked inside the window');
  t.onEvent(ev(2), 60); // the reordered event arrives
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4']);
  assert.deepEqual(pollAll(t, 60, 1000), [], 'the due request is dropped: nothing is missing');
  assert.equal(t.wantsTimer(), false);
  t.onEvent(ev(2), 70);
  t.onEvent(ev(3), 71);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4'], 'late copies are not delivered again');
  assert.deepEqual(t.position(), { sequence: 4, epoch: 'e1' });
});

test('room: a hole asked for, then filled live before the answer: the page adds nothing, no second request', () => {
  const { t, s } = confirmedRoom();
  t.onEvent(ev(1), 0);
  t.onEvent(ev(4), 0);
  const [req, ...more] = pollAll(t, 0, 100);
  assert.deepEqual(more, []);
  assert.deepEqual(req, { at: 100, type: 'replay_request', room: ROOM, fromSequence: 1, toSequence: 3, limit: 500, requestId: 'r1' });
  t.onEvent(ev(2), 120);
  t.onEvent(ev(3), 130);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4'], 'delivered as soon as the hole closed');
  // The answer comes anyway, overlapping what was delivered: nothing twice, nothing asked again.
  assert.equal(t.onReplay({ type: 'replay', room: ROOM, events: [ev(2), ev(3)], hasMore: false, scannedTo: 3, requestId: 'r1' }, 140), true);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4']);
  assert.deepEqual(pollAll(t, 140, 1000), []);
  t.onEvent(ev(5), 1000);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4', 'e5']);
});

test('room: a hole nobody fills is asked for once and delivered from the replay page in order', () => {
  const { t, s } = confirmedRoom();
  t.onEvent(ev(1), 0);
  t.onEvent(ev(5), 5);
  t.onEvent(ev(6), 6);
  const reqs = pollAll(t, 5, 2000);
  assert.deepEqual(reqs.map((r) => [r.at, r.fromSequence, r.toSequence]), [[105, 1, 4]], 'one request, for exactly the hole');
  assert.equal(t.onReplay({ type: 'replay', room: ROOM, events: [ev(2), ev(3), ev(4)], hasMore: false, scannedTo: 4, requestId: 'r1' }, 150), true);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4', 'e5', 'e6']);
  assert.equal(t.onReplay({ type: 'replay', room: ROOM, events: [ev(2)], hasMore: false, scannedTo: 4, requestId: 'r1' }, 160), false, 'an answer to no outstanding request is not taken');
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4', 'e5', 'e6']);
});

test('room: duplicate frames (same sequence twice, live and from a page) are delivered once', () => {
  const { t, s } = confirmedRoom();
  for (const seq of [1, 1, 2, 2, 2, 3, 1]) t.onEvent(ev(seq), 0);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3']);
  // Twice ahead of a hole: buffered once.
  t.onEvent(ev(5), 1);
  t.onEvent(ev(5), 2);
  t.onEvent(ev(4), 3);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4', 'e5']);
  assert.deepEqual(pollAll(t, 3, 1000), []);
});

test('room: an epoch change mid-stream is a stream_reset discontinuity before the new history', () => {
  const { t, s } = confirmedRoom();
  for (const seq of [1, 2, 3]) t.onEvent(ev(seq), 0);
  t.onEvent(ev(5), 1); // buffered behind a hole of the old history: dropped by the reset
  t.onGap({ type: 'discontinuity', room: ROOM, reason: 'stream_reset', epoch: 'e2', earliestSequence: 1 }, 2);
  for (const seq of [1, 2]) t.onEvent(ev(seq), 3);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'stream_reset@1', 'e1', 'e2']);
  assert.deepEqual(s.items[3].discontinuity, { room: ROOM, recovered: false, reason: 'stream_reset', epoch: 'e2', earliestSequence: 1, lastDelivered: 3 });
  assert.deepEqual(t.position(), { sequence: 2, epoch: 'e2' });
  assert.deepEqual(pollAll(t, 3, 1000), [], 'the old hole is not asked for in the new epoch');
});

test('room: an unknown reset reason is reported as stream_reset (the stronger statement)', () => {
  const { t, s } = confirmedRoom();
  t.onEvent(ev(1), 0);
  t.onGap({ type: 'discontinuity', room: ROOM, reason: 'store_wiped', epoch: 'e9', earliestSequence: 7 }, 1);
  t.onEvent(ev(7), 2);
  assert.deepEqual(s.log(), ['e1', 'stream_reset@7', 'e7']);
});

test('room: reconnect resumes from the last delivered position; the resubscribe answer decides', () => {
  const { t, s } = confirmedRoom();
  for (const seq of [1, 2, 3]) t.onEvent(ev(seq), 0);
  t.onEvent(ev(5), 0); // held behind the hole when the connection drops
  t.onDisconnect();
  assert.deepEqual(t.resumePosition(), { sequence: 3, epoch: 'e1' }, 'resume after the last delivered, not the last seen');
  t.sentPosition = 3;
  t.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e1', lastSequence: 6, recovered: true }, 2);
  for (const seq of [4, 5, 6]) t.onEvent(ev(seq), 3); // the catch-up after position 3
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4', 'e5', 'e6'], 'no duplicate, no gap');
});

test('room: an epoch change found on reconnect (recovered:false) is a discontinuity, never silent', () => {
  const { t, s } = confirmedRoom();
  for (const seq of [1, 2, 3, 4]) t.onEvent(ev(seq), 0);
  t.onDisconnect();
  t.sentPosition = 4;
  t.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e2', lastSequence: 2, recovered: false, reason: 'stream_reset', earliestSequence: 1 }, 1);
  for (const seq of [1, 2]) t.onEvent(ev(seq), 2);
  assert.deepEqual(s.log(), ['e1', 'e2', 'e3', 'e4', 'stream_reset@1', 'e1', 'e2']);
  assert.deepEqual(s.items[4].discontinuity, { room: ROOM, recovered: false, reason: 'stream_reset', epoch: 'e2', earliestSequence: 1, lastDelivered: 4 });
  assert.deepEqual(t.position(), { sequence: 2, epoch: 'e2' });
});

test('room: a position older than the retained history is position_expired, continuing at the earliest', () => {
  const { t, s } = confirmedRoom(3);
  t.onDisconnect();
  t.sentPosition = 3;
  t.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e1', recovered: false, reason: 'position_expired', earliestSequence: 8 }, 1);
  t.onEvent(ev(8), 2);
  t.onEvent(ev(9), 2);
  assert.deepEqual(s.log(), ['position_expired@8', 'e8', 'e9']);
  assert.equal(s.items[0].discontinuity.lastDelivered, 3);
});

test('room: a wildcard room whose history restarted while offline reports stream_reset', () => {
  const s = sink();
  const t = new RoomTrack(ROOM, s, true, TUNE, 0);
  for (const seq of [7, 8, 9]) t.onEvent(ev(seq), 0);
  t.onDisconnect();
  // Wildcards resubscribe live only: a first event at or below the last delivered is a new history.
  t.onEvent(ev(2), 1);
  t.onEvent(ev(1), 1);
  assert.deepEqual(s.log(), ['e7', 'e8', 'e9', 'stream_reset@1', 'e1', 'e2']);
});

// ---- SubscriptionSet: frames sent and handler calls, with a fake Io and clock ----

let clock;
const realNow = Date.now;
beforeEach(() => {
  clock = 1_000;
  Date.now = () => clock;
});
afterEach(() => {
  Date.now = realNow;
});

/** Lets the subscriptions' microtask queues run the handlers. */
const settle = () => new Promise((r) => setImmediate(r));

function harness() {
  const sent = [];
  const errors = [];
  const io = {
    online: () => io.up,
    up: true,
    send: (m) => sent.push(m),
    store: memoryCursorStore(),
    tune: TUNE,
    ackMs: 100,
    report: (e) => errors.push(e),
    wake: () => {},
  };
  const set = new SubscriptionSet(io);
  /** Advances the clock, running the set's timers every ms. */
  const advance = (ms) => {
    for (let i = 0; i < ms; i++) {
      clock++;
      set.tick(clock);
    }
  };
  const frames = (type) => sent.filter((m) => m.type === type);
  return { io, set, sent, errors, advance, frames };
}

test('subscriptions: reorder healed live sends no replay_request; acks the last delivered once', async () => {
  const { set, advance, frames } = harness();
  const got = [];
  set.subscribe(ROOM, (e) => void got.push(e.sequence), { fromSequence: 0 });
  assert.deepEqual(frames('subscribe'), [{ type: 'subscribe', rooms: [ROOM], positions: { [ROOM]: 0 } }]);
  set.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e1', lastSequence: 0, recovered: true });
  set.onEvent(ev(1));
  set.onEvent(ev(3));
  advance(50);
  set.onEvent(ev(2));
  set.onEvent(ev(2));
  advance(500);
  await settle();
  advance(200);
  assert.deepEqual(got, [1, 2, 3]);
  assert.deepEqual(frames('replay_request'), []);
  assert.deepEqual(frames('ack'), [{ type: 'ack', room: ROOM, sequence: 3 }]);
});

test('subscriptions: reconnect resubscribes from the last delivered sequence and epoch; the catch-up is delivered without duplicate or gap', async () => {
  const { io, set, sent, advance, frames } = harness();
  const got = [];
  const resets = [];
  const sub = set.subscribe(ROOM, (e) => void got.push(e.sequence), { fromSequence: 0, onDiscontinuity: (d) => resets.push(d) });
  set.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e1', lastSequence: 0, recovered: true });
  await sub.ready;
  for (const seq of [1, 2, 3]) set.onEvent(ev(seq));
  await settle();
  // The connection drops; the dead socket's last frames still trickle in.
  io.up = false;
  set.onDisconnect();
  set.onEvent(ev(4));
  advance(1000);
  io.up = true;
  sent.length = 0;
  set.onReady();
  assert.deepEqual(frames('subscribe'), [{ type: 'subscribe', rooms: [ROOM], positions: { [ROOM]: 3 }, epochs: { [ROOM]: 'e1' } }]);
  set.onEvent(ev(4)); // before this connection's `subscribed`: the catch-up will carry it
  set.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e1', lastSequence: 6, recovered: true });
  for (const seq of [3, 4, 5, 6]) set.onEvent(ev(seq)); // an overlapping catch-up
  advance(1000);
  await settle();
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(resets, []);
  assert.deepEqual(frames('replay_request'), []);
  assert.deepEqual(sub.position(), { sequence: 6, epoch: 'e1' });
});

test('subscriptions: a reset on reconnect reaches onDiscontinuity before the new epoch, and the next resume uses it', async () => {
  const { io, set, sent, advance, frames } = harness();
  const log = [];
  set.subscribe(ROOM, (e) => void log.push(e.sequence), { fromSequence: 0, onDiscontinuity: (d) => log.push(d) });
  set.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e1', lastSequence: 0, recovered: true });
  for (const seq of [1, 2, 3, 4, 5]) set.onEvent(ev(seq));
  await settle();
  io.up = false;
  set.onDisconnect();
  io.up = true;
  set.onReady();
  set.onSubscribed({ type: 'subscribed', room: ROOM, epoch: 'e2', lastSequence: 2, recovered: false, reason: 'stream_reset', earliestSequence: 1 });
  set.onEvent(ev(1));
  set.onEvent(ev(2));
  await settle();
  assert.deepEqual(log, [1, 2, 3, 4, 5, { room: ROOM, recovered: false, reason: 'stream_reset', epoch: 'e2', earliestSequence: 1, lastDelivered: 5 }, 1, 2]);
  // A mid-stream reset on the new connection: reported too, then the next reconnect resumes in epoch e3.
  set.onDiscontinuityMessage({ type: 'discontinuity', room: ROOM, reason: 'stream_reset', epoch: 'e3', earliestSequence: 1 });
  set.onEvent(ev(1));
  await settle();
  assert.deepEqual(log.slice(8), [{ room: ROOM, recovered: false, reason: 'stream_reset', epoch: 'e3', earliestSequence: 1, lastDelivered: 2 }, 1]);
  io.up = false;
  set.onDisconnect();
  io.up = true;
  sent.length = 0;
  set.onReady();
  advance(1);
  assert.deepEqual(frames('subscribe'), [{ type: 'subscribe', rooms: [ROOM], positions: { [ROOM]: 1 }, epochs: { [ROOM]: 'e3' } }]);
});
