/**
 * Presence: enter/leave a room, read its members, watch changes. Entering and
 * watching are restored after every reconnect; the member list is kept up to
 * date from `presence_state` and `presence` messages.
 */
import type { ClientMessage } from './protocol.js';
import type { PresenceEvent, PresenceMember } from './types.js';

/** A presence change callback: the current members, and what changed. */
export type PresenceListener = (members: PresenceMember[], change: PresenceEvent) => void;

/** Presence of one room, from `client.presence(room)`. */
export interface Presence {
  /** Enters the room (metadata: display name, avatar…); resolves with the members. */
  enter(metadata?: Record<string, unknown>): Promise<PresenceMember[]>;
  /** Leaves the room. */
  leave(): Promise<void>;
  /** The current members (from the server, or the watched list). */
  members(): Promise<PresenceMember[]>;
  /** Calls `cb` with the member list now and on every change; returns a function that stops it. */
  onChange(cb: PresenceListener): () => void;
}

/** What presence needs from the client. */
export interface PresenceIo {
  send(msg: ClientMessage): void;
  online(): boolean;
  timeoutMs: number;
  /** The error of an unanswered request (a `TimeoutError`: passed in, so this chunk imports nothing from the core). */
  timeout(): Error;
}

interface RoomState {
  members: Map<string, PresenceMember>;
  entered: { metadata: Record<string, unknown> | undefined } | undefined;
  watchers: Set<PresenceListener>;
  /** Waiting calls; `skip`: answers to earlier requests still due before theirs. */
  waiters: { skip: number; resolve: (m: PresenceMember[]) => void; reject: (e: Error) => void }[];
  /** `presence_state` answers still due (one per subscribe or enter sent). */
  asked: number;
  synced: boolean;
}

/** Presence state of every room the client entered or watches. */
export class PresenceSet {
  private states = new Map<string, RoomState>();

  constructor(private readonly io: PresenceIo) {}

  private slot(room: string): RoomState {
    let s = this.states.get(room);
    if (!s) {
      s = { members: new Map(), entered: undefined, watchers: new Set(), waiters: [], asked: 0, synced: false };
      this.states.set(room, s);
    }
    return s;
  }

  private send(msg: ClientMessage): void {
    if (this.io.online()) this.io.send(msg);
  }

  /** Sends a request the gateway answers with a `presence_state`, counting it. */
  private ask(s: RoomState, msg: ClientMessage): void {
    if (!this.io.online()) return;
    s.asked++;
    this.io.send(msg);
  }

  private enterMsg(room: string, s: RoomState): ClientMessage {
    const msg: ClientMessage = { type: 'presence_enter', room };
    if (s.entered?.metadata) msg.metadata = s.entered.metadata;
    return msg;
  }

  /** Waits for the answer to the request sent next: earlier requests' answers
   * (a watch's list sent before an enter, without the caller) are skipped. */
  private wait(s: RoomState): Promise<PresenceMember[]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = s.waiters.indexOf(w);
        if (i < 0) return;
        // Its request went unanswered (refused): stop counting on that answer.
        s.waiters.splice(i, 1);
        s.asked = Math.max(0, s.asked - 1);
        for (const o of s.waiters) o.skip = Math.min(o.skip, s.asked);
        reject(this.io.timeout());
      }, this.io.timeoutMs);
      const w = {
        skip: s.asked,
        resolve: (m: PresenceMember[]) => (clearTimeout(timer), resolve(m)),
        reject: (e: Error) => (clearTimeout(timer), reject(e)),
      };
      s.waiters.push(w);
    });
  }

  private forget(room: string, s: RoomState): void {
    if (!s.entered && !s.watchers.size && !s.waiters.length) this.states.delete(room);
  }

  /** The handle of `room`. */
  handle(room: string): Presence {
    return {
      enter: (metadata) => {
        const s = this.slot(room);
        s.entered = { metadata };
        const p = this.wait(s);
        this.ask(s, this.enterMsg(room, s));
        return p;
      },
      leave: async () => {
        const s = this.slot(room);
        if (!s.entered) return;
        s.entered = undefined;
        this.send({ type: 'presence_leave', room });
        if (!s.watchers.size) {
          // Entering also watched the room's changes on the gateway: stop them too.
          if (!s.waiters.length) this.send({ type: 'presence_unsubscribe', room });
          s.synced = false;
          this.forget(room, s);
        }
      },
      members: async () => {
        const s = this.slot(room);
        if (s.synced) return [...s.members.values()];
        const p = this.wait(s);
        this.ask(s, s.entered ? this.enterMsg(room, s) : { type: 'presence_subscribe', room });
        try {
          return await p;
        } finally {
          if (!s.entered && !s.watchers.size) {
            s.synced = false;
            this.send({ type: 'presence_unsubscribe', room });
            this.forget(room, s);
          }
        }
      },
      onChange: (cb) => {
        const s = this.slot(room);
        s.watchers.add(cb);
        if (s.synced) cb([...s.members.values()], { kind: 'members', room, members: [...s.members.values()] });
        else if (!s.entered && s.watchers.size === 1) this.ask(s, { type: 'presence_subscribe', room });
        return () => {
          if (!s.watchers.delete(cb) || s.watchers.size || s.entered) return;
          s.synced = false;
          this.send({ type: 'presence_unsubscribe', room });
          this.forget(room, s);
        };
      },
    };
  }

  /** A connection became ready: re-enter and re-watch. */
  onReady(): void {
    for (const [room, s] of this.states) {
      const msg: ClientMessage | undefined = s.entered
        ? this.enterMsg(room, s)
        : s.watchers.size || s.waiters.length
          ? { type: 'presence_subscribe', room }
          : undefined;
      if (msg) s.asked++, this.io.send(msg);
    }
  }

  /** The connection dropped: the server forgot this connection's presence. */
  onDisconnect(): void {
    for (const s of this.states.values()) {
      // Requests in flight die with the connection; `onReady` asks again once.
      s.synced = false;
      s.asked = 0;
      for (const w of s.waiters) w.skip = 0;
    }
  }

  /** A `presence_state` answer: the full member list. */
  onState(room: string, members: PresenceMember[] | undefined): void {
    const s = this.states.get(room);
    if (!s || !members) return;
    s.members = new Map(members.map((m) => [m.userId, m]));
    s.synced = true;
    s.asked = Math.max(0, s.asked - 1);
    const list = [...s.members.values()];
    const due = s.waiters.filter((w) => w.skip-- <= 0);
    s.waiters = s.waiters.filter((w) => !due.includes(w));
    for (const w of due) w.resolve(list);
    for (const cb of s.watchers) cb(list, { kind: 'members', room, members: list });
  }

  /** A `presence` change. */
  onChangeMessage(room: string, action: string, userId: string, member: PresenceMember | undefined): void {
    const s = this.states.get(room);
    if (!s) return;
    const left = /removed|left|leave/.test(action);
    if (left) s.members.delete(userId);
    else s.members.set(userId, member ?? { userId });
    const change: PresenceEvent = left ? { kind: 'left', room, userId } : { kind: 'joined', room, userId, member };
    const list = [...s.members.values()];
    for (const cb of s.watchers) cb(list, change);
  }

  /** Fails waiting calls (the client closed). */
  close(err: Error): void {
    for (const s of this.states.values()) for (const w of s.waiters.splice(0)) w.reject(err);
    this.states.clear();
  }
}
