/**
 * The SSE transport, for networks that block WebSockets. It speaks the same
 * protocol messages as the WebSocket link, translated:
 *
 * - `subscribe` opens an `EventSource` on `/events` (one per epoch among the
 *   rooms of the request, so each carries an exact `fromSequence` + `epoch`);
 *   its `subscribed`, event, `discontinuity`, `error`, `ephemeral` and
 *   `presence` records become the usual messages;
 * - `replay_request` reads one page from `GET /api/v1/rooms/{room}/events`;
 * - publish, ack, presence and ephemeral go over HTTP (`/api/v1/...`) with
 *   `Authorization: Bearer <token>`; answers become `published`, `ack`,
 *   `presence_state` or `error` (with the request's `requestId`).
 *
 * When any stream fails, the link closes and the client reconnects with its
 * backoff and the current per-room positions. The browser's own
 * `Last-Event-ID` retry is not used: it carries one room's position, the
 * rebuilt URL carries every room's.
 */
import type { ServerError } from './errors.js';
import type { tokenSubject } from './jwt.js';
import type { Link, LinkEvents } from './link.js';
import type { ClientMessage, ReplayRequest, ServerMessage } from './protocol.js';
import type { RealtimeEvent } from './types.js';

/** The part of the WHATWG EventSource API the client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  // Handler parameters are `never` so that the DOM's richer event types are accepted.
  onopen: ((ev: never) => void) | null;
  onmessage: ((ev: never) => void) | null;
  onerror: ((ev: never) => void) | null;
  addEventListener(type: string, listener: (ev: { data: string }) => void): void;
  close(): void;
}

/** An EventSource constructor (`globalThis.EventSource`, or a polyfill). */
export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** The part of `fetch` the client uses. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<{ status: number; ok: boolean; text(): Promise<string> }>;

/** SSE link settings. */
export interface SseConfig {
  /** `http(s)://host[:port][/prefix]`: `/events` and `/api/v1` hang below it. */
  baseUrl: string;
  EventSource: EventSourceConstructor;
  fetch: FetchLike;
  timeoutMs: number;
  // From the core bundle: this lazily loaded chunk imports nothing from it at run time,
  // so the core needs no shared chunk (and `instanceof ServerError` holds for users).
  ServerError: typeof ServerError;
  tokenSubject: typeof tokenSubject;
}

interface Stream {
  es: EventSourceLike;
  /** Rooms and patterns whose durable events this stream delivers. */
  durable: Set<string>;
  /** Rooms and patterns it carries for ephemeral events (`kind` `e`) or presence (`p`) only. */
  carrier: Set<string>;
  /** `e`: opened with `ephemeral=1`; `p`: with `presence=1`. */
  kind?: 'e' | 'p' | undefined;
  connectionId?: string;
  waiters: ((id: string | undefined) => void)[];
}

const matches = (targets: Set<string>, room: string): boolean =>
  targets.has(room) || targets.has(`${room.slice(0, room.indexOf(':'))}:*`);

const parse = (data: string): Record<string, unknown> | undefined => {
  try {
    return JSON.parse(data) as Record<string, unknown>;
  } catch {
    return undefined;
  }
};

/** Whether user `sub` owns subscriber id `id` (`sub`, or `sub#device` with a non-empty device). */
const ownsSubscriber = (sub: string, id: string): boolean => {
  const i = id.indexOf('#');
  return i < 0 ? id === sub : id.slice(0, i) === sub && i < id.length - 1;
};

/** Opens an SSE link. */
export function openSse(cfg: SseConfig, on: LinkEvents): Link {
  const { ServerError, tokenSubject } = cfg;
  /** Reads an HTTP error body: `{"error":{"code","message"}}`, or the flat `{"code","message"}` of `/events`. */
  const httpError = async (res: { status: number; text(): Promise<string> }, room?: string, requestId?: string): Promise<ServerError> => {
    const body = parse(await res.text().catch(() => '')) ?? {};
    const e = (body.error ?? body) as { code?: unknown; message?: unknown; room?: unknown };
    const fallback = res.status === 401 ? '4401' : res.status === 403 ? '4403' : res.status === 404 ? '4501' : res.status >= 500 ? '4503' : '4400';
    return new ServerError(
      typeof e.code === 'string' ? e.code : fallback,
      typeof e.message === 'string' ? e.message : `HTTP ${res.status}`,
      typeof e.room === 'string' ? e.room : room,
      requestId,
    );
  };
  let subscriberId = '';
  let token: string | undefined;
  let closed = false;
  let acksRefused = false;
  const streams: Stream[] = [];
  /** Room tokens of the rooms subscribed with one: a `roomToken` parameter of each stream carrying them. */
  const roomTokens = new Map<string, string>();
  /** Rooms whose acks the API refused (`4408`: e.g. opened by a room token, which HTTP calls do not carry). */
  const acksDenied = new Set<string>();
  let batch: { rooms: string[]; positions: Record<string, number>; epochs: Record<string, string> } | undefined;

  const emit = (msg: ServerMessage) => {
    if (!closed) on.message(msg);
  };
  const fail = (e: unknown, room?: string, requestId?: string) => {
    const err = e instanceof ServerError ? e : new ServerError('4503', `HTTP request failed: ${String(e)}`);
    const msg: ServerMessage = { type: 'error', code: err.code, message: err.message };
    if (room ?? err.room) msg.room = room ?? err.room!;
    if (requestId) msg.requestId = requestId;
    emit(msg);
  };
  const lost = (code: number, reason: string, refusal?: ServerError) => {
    if (closed) return;
    shutdown();
    on.close(refusal ? { code, reason, opened: true, refusal } : { code, reason, opened: true });
  };
  const shutdown = () => {
    closed = true;
    for (const s of streams) s.es.close();
    streams.length = 0;
  };

  const http = async (method: string, path: string, body: unknown, room?: string, requestId?: string): Promise<unknown> => {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const init: Parameters<FetchLike>[1] = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const res = await cfg.fetch(`${cfg.baseUrl}/api/v1${path}`, init);
    if (!res.ok) throw await httpError(res, room, requestId);
    const text = res.status === 204 ? '' : await res.text();
    return text ? JSON.parse(text) : undefined;
  };

  const url = (rooms: string[], from?: number, epoch?: string, kind?: 'e' | 'p'): string => {
    const q = new URLSearchParams();
    for (const r of rooms) q.append('room', r);
    if (kind) q.set(kind === 'e' ? 'ephemeral' : 'presence', '1');
    if (from !== undefined) q.set('fromSequence', String(from));
    if (epoch !== undefined) q.set('epoch', epoch);
    q.set('subscriberId', subscriberId);
    if (token) q.set('token', token);
    for (const r of rooms) {
      const t = roomTokens.get(r);
      if (t !== undefined) q.append('roomToken', t);
    }
    return `${cfg.baseUrl}/events?${q}`;
  };

  /** The stream that delivers ephemeral events (`e`, rooms or patterns) or presence (`p`, exact rooms) of `room`: the oldest. */
  const owner = (room: string, kind: 'e' | 'p'): Stream | undefined =>
    streams.find((s) => s.kind === kind && (kind === 'e' ? matches(s.carrier, room) : s.carrier.has(room)));

  /** After a failed start, asks the same URL once more to learn why (EventSource hides HTTP statuses). */
  const diagnose = async (href: string, rooms: string[]) => {
    const ctl = new AbortController();
    try {
      const res = await cfg.fetch(href, { method: 'GET', headers: { accept: 'text/event-stream' }, signal: ctl.signal });
      if (!res.ok) {
        const err = await httpError(res);
        if (res.status === 401) return lost(4401, err.message, err);
        // 403 `4403` about no room: the subscriber id is not the token's `sub` (or `sub#device`),
        // else a subscriber banned for a while (retried with backoff, as close 4403 on WebSocket).
        const sub = tokenSubject(token);
        if (res.status === 403 && err.code === '4403' && !err.room && sub !== undefined && !ownsSubscriber(sub, subscriberId)) {
          return lost(4401, err.message, err);
        }
        if (err.room) fail(err);
        else if (err.code === '4408') {
          // A refused room token (the stream's error names no room): refuse the rooms that carried one.
          for (const r of rooms) if (roomTokens.has(r)) fail(err, r);
        }
      }
    } catch {
      // unreachable: the generic loss below covers it
    } finally {
      ctl.abort();
    }
    lost(1006, 'event stream failed');
  };

  const open = (durable: string[], carrier: string[], from?: number, epoch?: string, kind?: 'e' | 'p'): Stream => {
    const href = url([...durable, ...carrier], from, epoch, kind);
    const es = new cfg.EventSource(href);
    const s: Stream = { es, durable: new Set(durable), carrier: new Set(carrier), kind, waiters: [] };
    let opened = false;
    streams.push(s);
    const record = (name: string, fn: (m: Record<string, unknown>) => void) =>
      es.addEventListener(name, (ev) => {
        const m = parse(ev.data);
        if (m && !closed && streams.includes(s)) fn(m);
      });
    es.onopen = () => {
      opened = true;
    };
    es.onmessage = (ev: { data: string }) => {
      const data = parse(ev.data) as RealtimeEvent | undefined;
      if (data && !closed && streams.includes(s) && matches(s.durable, data.room)) emit({ type: 'event', data });
    };
    record('subscribed', (m) => {
      if (matches(s.durable, String(m.room))) emit(m as unknown as ServerMessage);
    });
    record('discontinuity', (m) => {
      if (matches(s.durable, String(m.room))) emit(m as unknown as ServerMessage);
    });
    record('error', (m) => emit({ ...(m as object), type: 'error' } as ServerMessage));
    record('ready', (m) => {
      s.connectionId = typeof m.connectionId === 'string' ? m.connectionId : undefined;
      for (const w of s.waiters.splice(0)) w(s.connectionId);
    });
    record('ephemeral', (m) => {
      const data = (m.type === 'ephemeral' ? m.data : m) as { room: string };
      if (data && owner(data.room, 'e') === s) emit({ type: 'ephemeral', data } as ServerMessage);
    });
    // Changes only: the member lists come from the HTTP answers (a stream's own
    // `presence_state` would otherwise be taken for the answer to an enter).
    record('presence', (m) => {
      if (owner(String(m.room), 'p') === s) emit({ ...(m as object), type: 'presence' } as ServerMessage);
    });
    es.onerror = (ev: { data?: unknown }) => {
      // A server `event: error` record is a message (handled above), not a failure of the stream.
      if (typeof ev?.data === 'string' || closed || !streams.includes(s)) return;
      es.close();
      if (opened) lost(1006, 'event stream interrupted');
      else void diagnose(href, [...durable, ...carrier]);
    };
    return s;
  };

  /** Stops delivering `rooms` from existing streams (a re-subscribe moves them to a new one). */
  const release = (rooms: string[], kind?: 'e' | 'p') => {
    for (const s of [...streams]) {
      for (const r of rooms) (!kind ? s.durable : s.kind === kind ? s.carrier : undefined)?.delete(r);
      if (s.durable.size + s.carrier.size === 0) {
        s.es.close();
        streams.splice(streams.indexOf(s), 1);
      }
    }
  };

  /** Opens the batched subscribes: one stream per epoch, from the lowest position in it. */
  const flush = () => {
    const b = batch;
    batch = undefined;
    if (!b || closed) return;
    const groups = new Map<string, { rooms: string[]; from?: number; epoch?: string }>();
    for (const room of b.rooms) {
      const pos = b.positions[room];
      const epoch = b.epochs[room];
      const key = pos === undefined ? '' : `@${epoch ?? ''}`;
      let g = groups.get(key);
      if (!g) {
        g = {rooms: []};
        if (epoch !== undefined) g.epoch = epoch;
        groups.set(key, g);
      }
      g.rooms.push(room);
      if (pos !== undefined) g.from = Math.min(g.from ?? pos, pos);
    }
    for (const g of groups.values()) open(g.rooms, [], g.from, g.epoch);
  };

  /** A replay page from the HTTP API (`GET /rooms/{room}/events`), answered as a `replay` message. */
  const replay = (r: ReplayRequest) => {
    const q = new URLSearchParams({ fromSequence: String(r.fromSequence), limit: String(r.limit) });
    if (r.toSequence !== undefined) q.set('toSequence', String(r.toSequence));
    http('GET', `/rooms/${encodeURIComponent(r.room)}/events?${q}`, undefined, r.room, r.requestId).then(
      (p) => {
        const page = p as { events: RealtimeEvent[]; hasMore: boolean; scannedTo: number };
        emit({ type: 'replay', room: r.room, events: page.events, hasMore: page.hasMore, scannedTo: page.scannedTo, requestId: r.requestId });
      },
      (e) => fail(e, r.room, r.requestId),
    );
  };

  const send = (msg: ClientMessage): void => {
    if (closed) return;
    switch (msg.type) {
      case 'init':
        subscriberId = msg.subscriberId;
        token = msg.token;
        queueMicrotask(() => emit({ type: 'ready', subscriberId }));
        return;
      case 'subscribe': {
        release(msg.rooms);
        for (const r of msg.rooms) {
          if (msg.roomToken !== undefined) roomTokens.set(r, msg.roomToken);
          else roomTokens.delete(r);
        }
        batch ??= { rooms: [], positions: {}, epochs: {} };
        batch.rooms.push(...msg.rooms);
        Object.assign(batch.positions, msg.positions);
        Object.assign(batch.epochs, msg.epochs);
        setTimeout(flush, 0);
        return;
      }
      case 'unsubscribe':
      case 'unsubscribe_ephemeral': {
        const eph = msg.type === 'unsubscribe_ephemeral';
        if (!eph && batch) batch.rooms = batch.rooms.filter((r) => !msg.rooms.includes(r));
        if (!eph) for (const r of msg.rooms) roomTokens.delete(r);
        release(msg.rooms, eph ? 'e' : undefined);
        for (const room of msg.rooms) emit({ type: 'unsubscribed', room });
        return;
      }
      case 'subscribe_ephemeral': {
        const fresh = msg.rooms.filter((r) => !owner(r, 'e'));
        if (fresh.length) open([], fresh, undefined, undefined, 'e');
        for (const room of msg.rooms) emit({ type: 'subscribed_ephemeral', room });
        return;
      }
      case 'replay_request':
        return replay(msg);
      case 'publish': {
        const { requestId, event } = msg;
        const room = String(event.room);
        http('POST', '/publish', event, room, requestId).then(
          (p) => emit({ ...(p as object), type: 'published', requestId } as ServerMessage),
          (e) => fail(e, room, requestId),
        );
        return;
      }
      case 'ack':
        // The API moves a subscriber's cursor only for the token's own `sub`: anonymous or
        // mismatched callers keep their position in the client (and its cursor store) only.
        if (!token || acksRefused || acksDenied.has(msg.room)) return;
        http(
          'PUT',
          `/subscribers/${encodeURIComponent(subscriberId)}/cursors/${encodeURIComponent(msg.room)}`,
          { sequence: msg.sequence },
          msg.room,
        ).then(
          (a) => emit({ type: 'ack', room: msg.room, sequence: (a as { sequence?: number } | undefined)?.sequence ?? msg.sequence }),
          (e) => {
            if (e instanceof ServerError && e.code === '4403') acksRefused = true;
            else {
              if (e instanceof ServerError && e.code === '4408') acksDenied.add(msg.room); // reported once
              fail(e, msg.room);
            }
          },
        );
        return;
      case 'publish_ephemeral':
        http('POST', '/ephemeral', { room: msg.room, type: msg.eventType, payload: msg.payload }, msg.room, msg.requestId).catch((e) =>
          fail(e, msg.room, msg.requestId),
        );
        return;
      case 'presence_enter':
      case 'presence_leave': {
        const { room } = msg;
        const enter = msg.type === 'presence_enter';
        // Entering watches the room's changes too (as on a WebSocket): the `presence=1` stream's connection enters.
        const stream = owner(room, 'p') ?? open([], [room], undefined, undefined, 'p');
        new Promise<string | undefined>((resolve) => {
          if (stream.connectionId) return resolve(stream.connectionId);
          stream.waiters.push(resolve);
          setTimeout(() => resolve(undefined), cfg.timeoutMs);
        })
          .then((cid) => {
            if (!cid) throw new ServerError('4501', 'the gateway did not announce a connection id (SSE `ready` record)', room);
            const path = `/rooms/${encodeURIComponent(room)}/presence/${encodeURIComponent(cid)}`;
            return enter ? http('PUT', path, { metadata: msg.type === 'presence_enter' ? (msg.metadata ?? {}) : {} }, room) : http('DELETE', path, undefined, room);
          })
          .then(
            (p) => {
              const members = (p as { members?: [] } | undefined)?.members;
              emit(enter && members ? { type: 'presence_state', room, members } : { type: 'presence_state', room });
            },
            (e) => {
              if (streams.includes(stream)) fail(e, room);
            },
          );
        return;
      }
      case 'presence_subscribe': {
        // A `presence=1` stream sends the changes; the members come from the HTTP answer.
        const { room } = msg;
        if (!owner(room, 'p')) open([], [room], undefined, undefined, 'p');
        http('GET', `/rooms/${encodeURIComponent(room)}/presence`, undefined, room).then(
          (p) => emit({ type: 'presence_state', room, members: (p as { members: [] }).members }),
          (e) => fail(e, room),
        );
        return;
      }
      case 'presence_unsubscribe':
        release([msg.room], 'p');
        return emit({ type: 'unsubscribed', room: msg.room });
      case 'refresh_token':
        token = msg.token;
        emit({ type: 'token_refreshed' });
        return;
      case 'ping':
        return fail(new ServerError('4501', 'ping is not available over SSE'), undefined, msg.id);
    }
  };

  queueMicrotask(() => {
    if (!closed) on.open();
  });
  return {
    kind: 'sse',
    send,
    close() {
      shutdown();
    },
  };
}
