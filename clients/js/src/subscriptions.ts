/**
 * Durable subscriptions: the handler side (one ordered queue per
 * subscription, auto/manual acks, cursor-store saves) and the routing of
 * server messages to each room's `RoomTrack` (ordering, gap repair,
 * discontinuities). Knows nothing about sockets: it sends through `Io`.
 */
import type { CursorStore } from './cursor-store.js';
import { AlreadySubscribedError, ServerError, TokenError, ZpsError } from './errors.js';
import type { ClientMessage, DiscontinuityMessage, ErrorMessage, ReplayMessage, SubscribedMessage } from './protocol.js';
import { type Delivery, RoomTrack, type RoomSink, type StartAt, type Tuning } from './room.js';
import type { Discontinuity, RealtimeEvent, RoomPosition } from './types.js';

/** Options of `client.subscribe`. */
export interface SubscribeOptions {
  /** Start after this sequence (0: all retained history). Default: the cursor store's position, else live. */
  fromSequence?: number;
  /** The epoch `fromSequence` belongs to (a reset in between then raises a discontinuity). */
  epoch?: string;
  /** Only these event types reach the handler (filtered in the client, so gaps stay detectable). */
  types?: string[];
  /** `auto` (default): acked after the handler returns/resolves. `manual`: call `subscription.ack(seq)`. */
  ackMode?: 'auto' | 'manual';
  /** History between your position and `earliestSequence` is gone (reset or expired). */
  onDiscontinuity?: (d: Discontinuity) => void;
  /** The server refused the subscription (also reported on `client.on('error')`). */
  onError?: (err: ServerError) => void;
  /**
   * A room token (a JWT with a `zps_room` claim, minted by your backend) that opens this one
   * exact room beyond what the connection's token grants. Sent with the `subscribe` frame and
   * again with every resubscribe after a reconnect (SSE: a `roomToken` query parameter). A
   * function is asked for a token before each of those (room tokens are short-lived).
   */
  roomToken?: string | (() => string | Promise<string>);
}

/** A live subscription returned by `client.subscribe`. */
export interface Subscription {
  /** The room or `scope:*` pattern. */
  readonly target: string;
  /** Resolves once the server confirmed the subscription; rejects when it was refused. */
  readonly ready: Promise<void>;
  /** Acks `sequence` of `room` (default: the subscribed room) and saves it in the cursor store. */
  ack(sequence: number, room?: string): void;
  /** The last delivered position of `room` (default: the subscribed room). */
  position(room?: string): RoomPosition | undefined;
  /** Stops delivery and tells the server; pending acks are sent first. */
  unsubscribe(): void;
}

/** A handler of events; a returned promise is awaited before the next event. */
export type EventHandler = (event: RealtimeEvent) => void | Promise<void>;

/** What the subscription set needs from the client. */
export interface Io {
  send(msg: ClientMessage): void;
  online(): boolean;
  store: CursorStore;
  tune: Tuning;
  ackMs: number;
  report(err: Error): void;
  /** Timers may have changed: re-arm. */
  wake(): void;
}

const QUEUE_MAX = 256;
const TARGETS_PER_FRAME = 100;
const RESUBSCRIBE_MS = 1000;
const scopeOf = (room: string) => room.slice(0, room.indexOf(':'));

class Sub implements RoomSink, Subscription {
  readonly ready: Promise<void>;
  confirmed = false;
  closed = false;
  private queue: Delivery[] = [];
  private busy = false;
  private starved = false;
  private settle!: [() => void, (e: Error) => void];

  constructor(
    readonly target: string,
    private readonly handler: EventHandler,
    readonly opts: SubscribeOptions,
    private readonly owner: SubscriptionSet,
  ) {
    this.ready = new Promise((res, rej) => (this.settle = [res, rej]));
    this.ready.catch(() => {}); // a refusal is also reported; never an unhandled rejection
  }

  full(): boolean {
    if (this.queue.length < QUEUE_MAX) return false;
    this.starved = true;
    return true;
  }

  accepts(type: string): boolean {
    return !this.opts.types || this.opts.types.includes(type);
  }

  push(item: Delivery): void {
    this.queue.push(item);
    if (!this.busy) {
      this.busy = true;
      queueMicrotask(() => void this.run());
    }
  }

  confirm(): void {
    this.confirmed = true;
    this.settle[0]();
  }

  refuse(err: ServerError): void {
    this.settle[1](err);
    this.opts.onError?.(err);
  }

  /** The client closed: an unconfirmed `ready` rejects (a confirmed one stays resolved). */
  fail(err: Error): void {
    this.settle[1](err);
  }

  private async run(): Promise<void> {
    while (this.queue.length && !this.closed) {
      const item = this.queue.shift()!;
      try {
        if (item.kind === 'event') {
          const r = this.handler(item.event);
          if (r && typeof (r as Promise<void>).then === 'function') await r;
          if (this.opts.ackMode !== 'manual' && !this.closed) this.owner.ack(item.event.room, item.event.sequence);
        } else if (item.kind === 'discontinuity') {
          if (this.opts.onDiscontinuity) this.opts.onDiscontinuity(item.discontinuity);
          else this.owner.io.report(new ZpsError('discontinuity', `${item.discontinuity.room}: ${item.discontinuity.reason}, continuing at #${item.discontinuity.earliestSequence}`));
        } else {
          this.refuse(item.error);
        }
      } catch (e) {
        this.owner.io.report(e instanceof Error ? e : new Error(String(e)));
      }
      if (this.starved && this.queue.length < QUEUE_MAX / 2) {
        this.starved = false;
        this.owner.unblock(this);
      }
    }
    this.busy = false;
  }

  ack(sequence: number, room?: string): void {
    this.owner.ack(room ?? this.target, sequence);
  }

  position(room?: string): RoomPosition | undefined {
    return this.owner.tracks.get(room ?? this.target)?.position();
  }

  unsubscribe(): void {
    this.owner.remove(this);
  }
}

/** Every durable subscription of one client, and its rooms' delivery state. */
export class SubscriptionSet {
  readonly tracks = new Map<string, RoomTrack>();
  private readonly exact = new Map<string, Sub>();
  private readonly patterns = new Map<string, Sub>();
  private acks = new Map<string, number>();
  private ackDue: number | undefined;
  private resubscribeAt = new Map<string, number>();
  /**
   * `subscribe` frames of each exact room not answered yet on this connection. The gateway
   * answers them in order, so only the answer to the newest one is about the current
   * subscription: an unsubscribe + subscribe of the same room (React StrictMode, a remount)
   * must not take the old frame's `subscribed` (and its history) for the new one.
   */
  private awaiting = new Map<string, number>();
  /** Counts connections: a room token that arrives after its connection dropped is not sent. */
  private conn = 0;
  /** Rooms whose room token provider is being asked: their acks wait for the `subscribe` (the token opens the room). */
  private tokenWait = new Set<string>();
  private seq = 0;

  constructor(readonly io: Io) {}

  /** Registers a subscription (exact room, or `scope:*`). */
  subscribe(target: string, handler: EventHandler, opts: SubscribeOptions): Subscription {
    if (target.indexOf(':') < 1) throw new ZpsError('4422', `invalid room: ${target}`);
    const wildcard = target.endsWith(':*');
    if (wildcard && opts.roomToken !== undefined) throw new ZpsError('4400', `a room token opens one exact room, not ${target}`);
    if ((wildcard ? this.patterns.has(scopeOf(target)) : this.exact.has(target))) throw new AlreadySubscribedError(target);
    const sub = new Sub(target, handler, opts, this);
    if (wildcard) {
      this.patterns.set(scopeOf(target), sub);
      if (this.io.online()) this.sendSubscribe([target]);
      return sub;
    }
    this.exact.set(target, sub);
    const register = (start: StartAt) => {
      if (sub.closed) return;
      this.tracks.set(target, new RoomTrack(target, sub, false, this.io.tune, Date.now(), start));
      if (this.io.online()) this.sendSubscribe([target]);
    };
    if (opts.fromSequence !== undefined) register({ sequence: opts.fromSequence, epoch: opts.epoch });
    else {
      Promise.resolve()
        .then(() => this.io.store.load(target))
        .then(
          (p) => register(p ? { sequence: p.sequence, epoch: p.epoch } : undefined),
          () => register(undefined),
        );
    }
    return sub;
  }

  /**
   * Sends `subscribe` frames, each exact room with its resume position and epoch. A room
   * with a room token goes alone, with its token (one token opens one room).
   */
  private sendSubscribe(targets: string[]): void {
    const plain: string[] = [];
    for (const room of targets) {
      const sub = room.endsWith(':*') ? undefined : this.exact.get(room);
      const roomToken = sub?.opts.roomToken;
      if (typeof roomToken === 'string') this.sendFrame([room], roomToken);
      else if (roomToken) this.sendWithProvider(room, sub!, roomToken);
      else plain.push(room);
    }
    for (let i = 0; i < plain.length; i += TARGETS_PER_FRAME) this.sendFrame(plain.slice(i, i + TARGETS_PER_FRAME));
  }

  /** Asks the room token provider, then subscribes (if still wanted on the same connection). */
  private sendWithProvider(room: string, sub: Sub, provider: () => string | Promise<string>): void {
    const conn = this.conn;
    const current = () => !sub.closed && conn === this.conn && this.io.online() && this.tracks.get(room)?.sink === sub;
    this.tokenWait.add(room);
    Promise.resolve()
      .then(provider)
      .then(
        (token) => {
          if (conn === this.conn) this.tokenWait.delete(room);
          if (!current()) return;
          this.sendFrame([room], token);
          if (this.acks.has(room)) this.ackDue = Date.now();
          this.io.wake();
        },
        (e) => {
          if (conn === this.conn) this.tokenWait.delete(room);
          if (!current()) return;
          this.io.report(new TokenError(`room token provider failed for ${room}: ${String(e)}`));
          this.resubscribeAt.set(room, Date.now() + RESUBSCRIBE_MS);
          this.io.wake();
        },
      );
  }

  private sendFrame(rooms: string[], roomToken?: string): void {
    const positions: Record<string, number> = {};
    const epochs: Record<string, string> = {};
    let any = false;
    for (const room of rooms) {
      const t = this.tracks.get(room);
      if (!t || t.viaWildcard) continue;
      t.confirmed = false;
      t.sentPosition = undefined;
      const pos = t.resumePosition();
      if (pos) {
        any = true;
        positions[room] = pos.sequence;
        t.sentPosition = pos.sequence;
        if (pos.epoch !== undefined) epochs[room] = pos.epoch;
      }
    }
    for (const room of rooms) if (!room.endsWith(':*')) this.awaiting.set(room, (this.awaiting.get(room) ?? 0) + 1);
    const msg: ClientMessage = { type: 'subscribe', rooms };
    if (roomToken !== undefined) msg.roomToken = roomToken;
    if (any) {
      msg.positions = positions;
      if (Object.keys(epochs).length) msg.epochs = epochs;
    }
    this.io.send(msg);
  }

  /** A connection became ready: resubscribe everything from its position, send held acks. */
  onReady(): void {
    const targets = [...this.tracks.values()].filter((t) => !t.viaWildcard).map((t) => t.room);
    for (const scope of this.patterns.keys()) targets.push(`${scope}:*`);
    this.resubscribeAt.clear();
    if (targets.length) this.sendSubscribe(targets);
    if (this.acks.size) this.ackDue = Date.now();
    this.io.wake();
  }

  /** The connection dropped: requests in flight are lost, buffered events stay. */
  onDisconnect(): void {
    this.conn++;
    this.awaiting.clear();
    this.tokenWait.clear();
    for (const t of this.tracks.values()) t.onDisconnect();
  }

  onSubscribed(s: SubscribedMessage): void {
    if (s.room.endsWith(':*')) {
      this.patterns.get(scopeOf(s.room))?.confirm();
      return;
    }
    if (this.answered(s.room)) return; // an older frame's answer: the newest one follows
    const t = this.tracks.get(s.room);
    if (!t || t.viaWildcard) return;
    t.onSubscribed(s, Date.now());
    this.exact.get(s.room)?.confirm();
    this.after();
  }

  /** Counts an answer to a `subscribe` of exact `room`; true when a newer frame is still unanswered. */
  private answered(room: string): boolean {
    const n = this.awaiting.get(room) ?? 0;
    if (n > 1) this.awaiting.set(room, n - 1);
    else this.awaiting.delete(room);
    return n > 1;
  }

  onEvent(e: RealtimeEvent): void {
    const now = Date.now();
    let t = this.tracks.get(e.room);
    if (t) {
      if (!t.confirmed) return; // before this connection's `subscribed`: the catch-up re-sends it
    } else {
      const sub = this.patterns.get(scopeOf(e.room));
      if (!sub) return;
      t = new RoomTrack(e.room, sub, true, this.io.tune, now);
      this.tracks.set(e.room, t);
    }
    t.onEvent(e, now);
    this.after();
  }

  onReplay(page: ReplayMessage): void {
    this.tracks.get(page.room)?.onReplay(page, Date.now());
    this.after();
  }

  onDiscontinuityMessage(d: DiscontinuityMessage): void {
    this.tracks.get(d.room)?.onGap(d, Date.now());
    this.after();
  }

  /** An `error` about a subscription or a replay; false when it is about something else. */
  onErrorMessage(m: ErrorMessage): boolean {
    const now = Date.now();
    if (m.requestId) {
      for (const t of this.tracks.values()) if (t.onReplayError(m.requestId, now)) return this.after(), true;
    }
    if (!m.room || m.code === '4404') return false;
    const err = new ServerError(m.code, m.message, m.room, m.requestId);
    const pattern = m.room.endsWith(':*') ? this.patterns.get(scopeOf(m.room)) : undefined;
    const t = this.tracks.get(m.room);
    if (pattern && !pattern.confirmed) {
      pattern.refuse(err);
      this.remove(pattern, false);
      return true;
    }
    if (!pattern && this.answered(m.room)) return true; // refused an older `subscribe` frame
    if (!t || t.viaWildcard) return false;
    if (m.code === '4503' && t.confirmed) {
      // History could not be read while catching up: not subscribed; try again shortly.
      t.confirmed = false;
      this.resubscribeAt.set(t.room, now + RESUBSCRIBE_MS);
      this.io.wake();
      return true;
    }
    if (t.confirmed) return false;
    const sub = this.exact.get(m.room);
    if (sub && !sub.confirmed) {
      sub.refuse(err);
      this.remove(sub, false);
    } else if (sub) {
      t.pushNotice({ kind: 'refused', room: m.room, error: err }, now);
      this.remove(sub, false);
    }
    return true;
  }

  /** Records an ack (coalesced, sent within `ackIntervalMs`). */
  ack(room: string, sequence: number): void {
    if ((this.acks.get(room) ?? 0) >= sequence) return;
    this.acks.set(room, sequence);
    if (this.ackDue === undefined) {
      this.ackDue = Date.now() + this.io.ackMs;
      this.io.wake();
    }
  }

  /** Sends held acks (when online) and saves them in the cursor store. */
  flushAcks(): void {
    this.ackDue = undefined;
    if (!this.acks.size) return;
    const acks = this.acks;
    this.acks = new Map();
    for (const [room, sequence] of acks) {
      const t = this.tracks.get(room);
      if (t && !t.viaWildcard) void Promise.resolve(this.io.store.save(room, { sequence, epoch: t.epoch })).catch(() => {});
      if (this.io.online() && !this.tokenWait.has(room)) this.io.send({ type: 'ack', room, sequence });
      else this.acks.set(room, sequence);
    }
  }

  /** The subscription's queue has room again: hand over what its rooms hold. */
  unblock(sub: Sub): void {
    const now = Date.now();
    for (const t of this.tracks.values()) if (t.sink === sub && t.blocked) t.drain(now);
    this.after();
  }

  /** Removes a subscription; `tell` sends `unsubscribe`. */
  remove(sub: Sub, tell = true): void {
    if (sub.closed) return;
    this.flushAcks();
    sub.closed = true;
    const wildcard = sub.target.endsWith(':*');
    // An exact room registers once its cursor is loaded: before that, nothing was subscribed.
    if (!wildcard && this.tracks.get(sub.target)?.sink !== sub) tell = false;
    if (wildcard) this.patterns.delete(scopeOf(sub.target));
    else this.exact.delete(sub.target);
    for (const [room, t] of this.tracks) {
      if (t.sink === sub) {
        t.closed = true;
        this.tracks.delete(room);
      }
    }
    if (tell && this.io.online()) this.io.send({ type: 'unsubscribe', rooms: [sub.target] });
  }

  /** Every subscription, e.g. on close: a `ready` not yet settled rejects with `err`. */
  removeAll(err: Error): void {
    for (const s of [...this.exact.values(), ...this.patterns.values()]) {
      this.remove(s, false);
      s.fail(err);
    }
  }

  /** Runs due timers (replays, resubscribes, acks); returns the next deadline. */
  tick(now: number): number | undefined {
    let next: number | undefined;
    const at = (d: number | undefined) => {
      if (d !== undefined && (next === undefined || d < next)) next = d;
    };
    if (this.ackDue !== undefined && now >= this.ackDue) this.flushAcks();
    at(this.ackDue);
    if (!this.io.online()) return next;
    const again: string[] = [];
    for (const [room, when] of this.resubscribeAt) {
      if (now >= when) {
        this.resubscribeAt.delete(room);
        if (this.tracks.has(room)) again.push(room);
      } else at(when);
    }
    if (again.length) this.sendSubscribe(again);
    for (const t of this.tracks.values()) {
      const req = t.pollReplay(now, () => `zr${++this.seq}`);
      if (req) this.io.send(req);
      at(t.deadline());
    }
    return next;
  }

  private after(): void {
    this.io.wake();
  }
}
