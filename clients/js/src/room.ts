/**
 * One room's delivery state: where the application stands (last delivered
 * sequence and epoch), the out-of-order buffer, gap repair by
 * `replay_request`, discontinuities, and the hand-off to the subscription.
 * It follows the ordering rule's shared state table
 * (`crates/zps-model/room_sync_table.json`, run by `test/room-table.test.mjs`
 * here and by the Rust client's tests over `zps_model::RoomSync`).
 *
 * No I/O and no clock of its own: the client feeds it messages and the
 * current time (ms) and sends the replay requests it asks for. Hand-off never
 * waits: when the subscription's queue is full the room is "blocked", events
 * stay in the bounded buffer, and whatever overflows is re-read from history
 * once the handler catches up.
 */
import type { ServerError } from './errors.js';
import type { DiscontinuityMessage, ReplayMessage, ReplayRequest, SubscribedMessage } from './protocol.js';
import { SequenceTracker } from './sequence.js';
import type { Discontinuity, DiscontinuityReason, RealtimeEvent } from './types.js';

/** One item handed to a subscription, in order. */
export type Delivery =
  | { kind: 'event'; event: RealtimeEvent }
  | { kind: 'discontinuity'; discontinuity: Discontinuity }
  | { kind: 'refused'; room: string; error: ServerError };

/** The subscription side of a room. */
export interface RoomSink {
  /** The subscription is gone: stop delivering. */
  readonly closed: boolean;
  /** No room for another item right now (the room waits, bounded). */
  full(): boolean;
  /** Local event-type filter (filtered events still advance the position). */
  accepts(type: string): boolean;
  push(item: Delivery): void;
}

/** The settings rooms need. */
export interface Tuning {
  /** Reorder window before a hole is asked for, and spacing of a room's requests. */
  throttleMs: number;
  pageSize: number;
  timeoutMs: number;
  maxBuffer: number;
}

/** Where an exact-room subscription starts: undefined = the server decides (cursor, else live). */
export type StartAt = { sequence: number; epoch?: string | undefined } | undefined;


/** Delivery state of one room. */
export class RoomTrack {
  private t: SequenceTracker<RealtimeEvent>;
  /** The start point is known (false: a cursor resume, or a wildcard room before its first event). */
  private anchored = false;
  epoch: string | undefined;
  /** `subscribed` arrived on the current connection (events before it are stale). */
  confirmed: boolean;
  /** The position sent in this connection's pending `subscribe`. */
  sentPosition: number | undefined;
  /** Wildcard room after a reconnect: a first event at or below the last delivered means a reset. */
  private verifyReset = false;
  private notices: Delivery[] = [];
  /** Behind the server by an unknown amount: page until a page says nothing more exists. */
  private catchUp = false;
  /** Events were dropped (buffer full) since the last request went out. */
  private overflowed = false;
  private outstanding: { id: string; to: number | undefined; sent: number } | undefined;
  /** Answers in a row that did not move delivery (three: the hole in front is given up). */
  private stalledReads = 0;
  private due: number | undefined;
  private lastRequest: number | undefined;
  /** The subscription's queue is full; delivery resumes when it takes something. */
  blocked = false;
  /** The subscription is gone. */
  closed = false;
  lastSeen: number;

  constructor(
    readonly room: string,
    readonly sink: RoomSink,
    /** Tracked because a `scope:*` subscription saw it (no `subscribed` per room). */
    readonly viaWildcard: boolean,
    private readonly tune: Tuning,
    now: number,
    start?: StartAt,
  ) {
    this.t = new SequenceTracker(start?.sequence ?? 0, tune.maxBuffer);
    this.anchored = start !== undefined;
    this.epoch = start?.epoch;
    this.confirmed = viaWildcard;
    this.lastSeen = now;
  }

  /** What to send when (re)subscribing; undefined while the start point is unknown. */
  resumePosition(): { sequence: number; epoch: string | undefined } | undefined {
    return this.anchored ? { sequence: this.t.lastDelivered, epoch: this.epoch } : undefined;
  }

  /** Where the application stands (sequence 0 when unknown). */
  position(): { sequence: number; epoch: string | undefined } {
    return { sequence: this.anchored ? this.t.lastDelivered : 0, epoch: this.epoch };
  }

  /** The connection dropped: requests in flight are lost, buffered events stay (same epoch). */
  onDisconnect(): void {
    this.confirmed = this.viaWildcard;
    this.sentPosition = undefined;
    this.forgetRequests();
    if (this.viaWildcard && this.anchored) this.verifyReset = true;
  }

  /** Requests in flight and planned are dropped (their answers would be stale). */
  private forgetRequests(): void {
    this.outstanding = this.due = undefined;
    this.catchUp = this.overflowed = false;
    this.stalledReads = 0;
  }

  /** The answer to this connection's `subscribe`. */
  onSubscribed(s: SubscribedMessage, now: number): void {
    this.confirmed = true;
    const sent = this.sentPosition;
    this.sentPosition = undefined;
    if (s.recovered === false) {
      const earliest = Math.max(1, s.earliestSequence ?? 1);
      this.pushDiscontinuity(parseReason(s.reason), earliest, s.epoch);
      this.t.reset(earliest - 1);
      this.anchored = true;
    } else if (sent === undefined) {
      // The server chose the start (the subscriber's cursor, or live only); `startAfter` says
      // where (without it, the first event anchors: history arrives in order).
      const after = s.startAfter;
      this.anchored = after !== undefined;
      this.t.reset(after ?? 0);
    }
    if (s.epoch !== undefined) this.epoch = s.epoch;
    this.drain(now);
  }

  /** A live or catch-up event. */
  onEvent(e: RealtimeEvent, now: number): void {
    this.lastSeen = now;
    const seq = e.sequence;
    if (!this.anchored) {
      this.t.reset(seq - 1);
      this.anchored = true;
    }
    if (this.verifyReset) {
      this.verifyReset = false;
      if (seq <= this.t.lastDelivered) {
        // A wildcard resubscribe is live only, so an old sequence means a new history.
        this.pushDiscontinuity('stream_reset', 1);
        this.t.reset(0);
        this.epoch = undefined;
      }
    }
    switch (this.t.offer(e)) {
      case 'gap':
        this.schedule(now + this.tune.throttleMs);
        break;
      case 'overflow':
        this.overflowed = true;
        this.catchUp = true;
        this.schedule(now);
        break;
      default:
    }
    this.drain(now);
  }

  /** A mid-stream `discontinuity`: the history restarted at `earliestSequence`. */
  onGap(d: DiscontinuityMessage, now: number): void {
    if (!this.confirmed) return;
    this.pushDiscontinuity(parseReason(d.reason), d.earliestSequence, d.epoch);
    this.t.reset(Math.max(0, d.earliestSequence - 1));
    this.epoch = d.epoch;
    this.anchored = true;
    this.forgetRequests();
    this.drain(now);
  }

  /** A `replay` page; false when it does not answer this room's request. */
  onReplay(page: ReplayMessage, now: number): boolean {
    const o = this.outstanding;
    if (!o || page.requestId !== o.id) return false;
    const before = this.t.lastDelivered;
    this.outstanding = undefined;
    let overflowAt: number | undefined;
    for (const e of page.events) {
      if (e.sequence <= this.t.lastDelivered) continue;
      if (this.t.offer(e) === 'overflow') {
        overflowAt ??= e.sequence;
        this.overflowed = true;
      }
      this.drain(now);
      if (this.closed) return true;
    }
    // Every sequence up to `scannedTo` is final: in the page, expired, or never existing.
    this.settle(overflowAt === undefined ? page.scannedTo : Math.min(page.scannedTo, overflowAt - 1), now);
    if (page.hasMore) {
      if (o.to === undefined) this.catchUp = true;
      this.due = now;
    } else if (this.overflowed) {
      this.catchUp = true;
      this.schedule(now);
    } else {
      this.catchUp = false;
      const hole = this.t.missing();
      this.stalledReads = hole && !page.events.length && this.t.lastDelivered == before ? this.stalledReads + 1 : 0;
      if (hole && this.stalledReads > 2) {
        // History keeps not showing it: give it up, announced where delivery jumps.
        this.stalledReads = 0;
        this.pushDiscontinuity('position_expired', hole[1] + 1);
        this.settle(hole[1], now);
      } else if (hole) this.schedule(now + this.tune.throttleMs);
    }
    return true;
  }

  /** An `error` answering this room's replay request; false when it does not. */
  onReplayError(requestId: string, now: number): boolean {
    if (this.outstanding?.id !== requestId) return false;
    this.outstanding = undefined;
    // A refused replay waits at least a second before it is asked again.
    this.due = now + Math.max(this.tune.throttleMs, 1000);
    return true;
  }

  /** The next replay request, when one is due. */
  pollReplay(now: number, nextId: () => string): ReplayRequest | undefined {
    const o = this.outstanding;
    if (o) {
      if (now < o.sent + this.tune.timeoutMs) return undefined;
      // No answer (dropped by a rate limit, say): ask again.
      this.outstanding = undefined;
      this.catchUp = true;
      this.due = now;
    }
    if (this.due === undefined || now < this.due || !this.canRequest()) return undefined;
    this.due = undefined;
    let to: number | undefined;
    if (!(this.catchUp || this.overflowed)) {
      const hole = this.t.missing();
      if (!hole) return undefined;
      to = hole[1];
    }
    const id = nextId();
    this.outstanding = { id, to, sent: now };
    this.lastRequest = now;
    this.overflowed = false;
    const req: ReplayRequest = {
      type: 'replay_request',
      room: this.room,
      fromSequence: this.t.lastDelivered,
      limit: this.tune.pageSize,
      requestId: id,
    };
    if (to !== undefined) req.toSequence = to;
    return req;
  }

  /** When `pollReplay` next has something to do (undefined: nothing, or waiting for the handler). */
  deadline(): number | undefined {
    if (this.outstanding) return this.outstanding.sent + this.tune.timeoutMs;
    return this.canRequest() ? this.due : undefined;
  }

  /** Whether this room needs the replay timer. */
  wantsTimer(): boolean {
    return this.outstanding !== undefined || this.due !== undefined;
  }

  private canRequest(): boolean {
    return this.confirmed && this.anchored && !this.blocked && !this.closed;
  }

  /** Hands ready items to the subscription while its queue has room. */
  drain(now: number): void {
    if (this.closed) return;
    const wasBlocked = this.blocked;
    this.blocked = false;
    while (this.notices.length) {
      if (!this.reserve()) return;
      this.sink.push(this.notices.shift()!);
    }
    while (this.t.pendingLen > 0 && !this.t.missing()) {
      if (!this.reserve()) return;
      const event = this.t.popReady();
      if (!event) break;
      if (this.sink.accepts(event.type)) this.sink.push({ kind: 'event', event });
    }
    if (wasBlocked && (this.catchUp || this.overflowed || this.t.missing())) this.schedule(now);
  }

  /** Queues an item ahead of everything not yet delivered (a refused resubscribe). */
  pushNotice(item: Delivery, now: number): void {
    this.notices.push(item);
    this.drain(now);
  }

  private reserve(): boolean {
    if (this.sink.closed) this.closed = true;
    else if (this.sink.full()) this.blocked = true;
    else return true;
    return false;
  }

  private pushDiscontinuity(reason: DiscontinuityReason, earliestSequence: number, epoch?: string): void {
    this.notices.push({
      kind: 'discontinuity',
      discontinuity: {
        room: this.room,
        recovered: false,
        reason,
        epoch,
        earliestSequence,
        lastDelivered: this.anchored ? this.t.lastDelivered : 0,
      },
    });
  }

  /** Skips holes up to `limit` that history says will never be filled, delivering around them. */
  private settle(limit: number, now: number): void {
    for (;;) {
      if (this.closed) return;
      if (this.t.pendingLen === 0) {
        if (this.t.nextExpected <= limit) this.t.skipThrough(limit);
        return;
      }
      if (this.blocked) return;
      const hole = this.t.missing();
      if (!hole || hole[0] > limit) return;
      this.t.skipThrough(Math.min(hole[1], limit));
      this.drain(now);
    }
  }

  /** Asks for a replay no earlier than `earliest` and no sooner than `throttle` after the last one. */
  private schedule(earliest: number): void {
    if (this.outstanding) return; // its answer re-evaluates what is missing
    const spaced = this.lastRequest === undefined ? earliest : Math.max(earliest, this.lastRequest + this.tune.throttleMs);
    this.due = this.due === undefined ? spaced : Math.min(this.due, spaced);
  }
}

function parseReason(reason: string | undefined): DiscontinuityReason {
  // Unknown reasons are treated as the stronger statement.
  return reason === 'position_expired' ? 'position_expired' : 'stream_reset';
}
