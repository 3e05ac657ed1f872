// Pure modules: ordering buffer, backoff, URL derivation, cursor stores (no gateway).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffDelay } from '../dist/backoff.js';
import { endpoints, localStorageCursorStore, memoryCursorStore } from '../dist/index.js';
import { SequenceTracker } from '../dist/sequence.js';

test('SequenceTracker: in order, duplicates, holes, skip', () => {
  const t = new SequenceTracker(0, 3);
  const e = (sequence) => ({ sequence });
  assert.equal(t.offer(e(1)), 'accepted');
  assert.equal(t.popReady().sequence, 1);
  assert.equal(t.offer(e(1)), 'duplicate');
  assert.equal(t.offer(e(3)), 'gap');
  assert.deepEqual(t.missing(), [2, 2]);
  assert.equal(t.offer(e(3)), 'duplicate');
  assert.equal(t.offer(e(4)), 'gap');
  assert.equal(t.offer(e(5)), 'gap');
  assert.equal(t.offer(e(6)), 'overflow');
  t.skipThrough(2);
  assert.deepEqual([t.popReady().sequence, t.popReady().sequence, t.popReady().sequence], [3, 4, 5]);
  assert.equal(t.lastDelivered, 5);
});

test('backoffDelay: full jitter within min(max, min*2^(n-1))', () => {
  assert.equal(backoffDelay(1, 250, 30000, () => 0.999), 249);
  assert.equal(backoffDelay(3, 250, 30000, () => 0.5), 500);
  assert.equal(backoffDelay(40, 250, 30000, () => 0.5), 15000);
  assert.equal(backoffDelay(2, 250, 30000, () => 0), 0);
});

test('endpoints: ws and http bases from any gateway URL', () => {
  assert.deepEqual(endpoints('ws://h:1/ws'), { ws: 'ws://h:1/ws', http: 'http://h:1' });
  assert.deepEqual(endpoints('https://h/rt/'), { ws: 'wss://h/rt/ws', http: 'https://h/rt' });
  assert.deepEqual(endpoints('http://h:2/events'), { ws: 'ws://h:2/ws', http: 'http://h:2' });
});

test('cursor stores: memory and localStorage-shaped storage', () => {
  const m = memoryCursorStore();
  m.save('chat:1', { sequence: 4, epoch: 'e' });
  assert.deepEqual(m.load('chat:1'), { sequence: 4, epoch: 'e' });
  const data = new Map();
  const storage = { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => void data.set(k, v), removeItem: (k) => void data.delete(k) };
  const s = localStorageCursorStore({ prefix: 'p:', storage });
  s.save('chat:1', { sequence: 9, epoch: 'x' });
  assert.equal(data.get('p:chat:1'), '{"sequence":9,"epoch":"x"}');
  assert.deepEqual(localStorageCursorStore({ prefix: 'p:', storage }).load('chat:1'), { sequence: 9, epoch: 'x' });
  data.set('p:bad', '{oops');
  assert.equal(s.load('bad'), undefined);
});
