// The ordering rule's shared state table (crates/zps-model/room_sync_table.json),
// which the Rust client runs too: same inputs, same hand-over, same requests.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { RoomTrack } from '../dist/room.js';

const ROOM = 'chat:1';
const table = JSON.parse(readFileSync(new URL('../../../crates/zps-model/room_sync_table.json', import.meta.url), 'utf8'));
const ev = (sequence) => ({
  id: `e${sequence}`,
  type: sequence % 2 === 0 ? 'even' : 'odd',
  room: ROOM,
  sequence,
  emittedAt: '2026-01-01T00:00:00Z',
  expiresAt: '2026-01-02T00:00:00Z',
  payload: null,
});

for (const c of table.cases) {
  test(`room table: ${c.name}`, () => {
    const items = [];
    const sink = { closed: false, full: () => false, accepts: () => true, push: (i) => items.push(i) };
    const room = new RoomTrack(ROOM, sink, false, table.tuning, 0, { sequence: 0, epoch: undefined });
    room.confirmed = true;
    let now = 0;
    let n = 0;
    let last;
    for (const step of c.steps) {
      if (step.at !== undefined) now = step.at;
      if (step.live !== undefined) room.onEvent(ev(step.live), now);
      else if ('poll' in step) {
        const got = room.pollReplay(now, () => `r${++n}`);
        const json = got ? { from: got.fromSequence, to: got.toSequence ?? null } : null;
        assert.deepEqual(json, step.poll, `poll at ${now}`);
        if (got) last = got;
      } else if (step.page) {
        assert.ok(
          room.onReplay(
            {
              type: 'replay',
              room: ROOM,
              events: step.page.events.map(ev),
              scannedTo: step.page.scannedTo,
              hasMore: step.page.hasMore,
              requestId: last.requestId,
            },
            now,
          ),
          'the page answers the request',
        );
      } else if (step.error) assert.ok(room.onReplayError(last.requestId, now));
      else if (step.discontinuity) {
        const d = step.discontinuity;
        room.onGap({ type: 'discontinuity', room: ROOM, reason: d.reason, epoch: d.epoch, earliestSequence: d.earliest }, now);
      } else if (step.delivered) {
        const got = items.splice(0).map((i) =>
          i.kind === 'event'
            ? i.event.sequence
            : { notice: [i.discontinuity.reason, i.discontinuity.lastDelivered, i.discontinuity.earliestSequence] },
        );
        assert.deepEqual(got, step.delivered, 'delivered');
      } else if (step.position !== undefined) assert.equal(room.position().sequence, step.position);
      else assert.ok(step.at !== undefined, `unknown step ${JSON.stringify(step)}`);
    }
  });
}
